"""Learned fast sampling: progressive distillation and consistency distillation.

- :class:`~ddpm_lib.distillation.ProgressiveDistillation` (Salimans & Ho 2022): the loss of one round, a student
  that takes one DDIM step for two of its teacher's; :func:`~ddpm_lib.distillation.distill_progressive` runs the
  rounds ``N -> N/2 -> ... -> 1`` through the :class:`ddpm_lib.Trainer`.
- :class:`~ddpm_lib.distillation.ConsistencyDistillation` (Song et al. 2023): the loss of consistency distillation
  (boundary parameterisation, EMA target network, a solver step of the teacher, a distance);
  :func:`~ddpm_lib.distillation.distill_consistency` trains it; :class:`ddpm_lib.ConsistencySampler` samples the
  student in one step or a few.
- :class:`~ddpm_lib.distillation.GuidanceConditionedUNet`: a UNet that reads the guidance scale, for guided
  distillation (Meng et al. 2023; latent consistency models, Luo et al. 2023).

Modules: ``progressive``, ``consistency``, ``guidance``, ``rounds`` (the drivers) and
``_common`` (the guided teacher, the grids, the student check).
"""

from .consistency import DISTANCES, ConsistencyDistillation, pseudo_huber  # noqa: F401
from .guidance import GuidanceConditionedUNet, GuidanceEmbedding, with_guidance_embedding
from .progressive import WEIGHTINGS, ProgressiveDistillation, two_step_target  # noqa: F401
from .rounds import (  # noqa: F401 (DISTILL_TRAINER_DEFAULTS: importable, not API-paged)
    DISTILL_TRAINER_DEFAULTS,
    DistillationRun,
    distill_consistency,
    distill_progressive,
)

__all__ = [
    "ConsistencyDistillation",
    "DistillationRun",
    "GuidanceConditionedUNet",
    "GuidanceEmbedding",
    "ProgressiveDistillation",
    "distill_consistency",
    "distill_progressive",
    "pseudo_huber",
    "two_step_target",
    "with_guidance_embedding",
]
