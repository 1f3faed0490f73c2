r"""Noise conditioning augmentation of a super-resolution stage's low-resolution input.

A cascade's upsampler is trained on downsampled real images but sampled on the previous
stage's outputs, whose artefacts it has never seen. Ho et al. (2022, "Cascaded Diffusion
Models for High Fidelity Image Generation", section 4.3) corrupt the condition by the forward
process at a level ``s`` and tell the network ``s``; Imagen, DeepFloyd IF and Stable
Diffusion's x4 upscaler (``noise_level``) do the same::

    training:  s ~ U{0, ..., max_level}          (drawn from the Trainer's generator)
               z_s = sqrt(abar_s) z + sqrt(1 - abar_s) eps,   eps ~ N(0, I)    (DDPM eq. 4)
               model(x_t, t, cond_image=z_s, noise_level=s)
    sampling:  s = sample_level, a constant        (IF: 250 of 1000; SD x4: 20 of max 350)

``abar`` is the augmentation's own :class:`ddpm_lib.NoiseSchedule` (default DDPM's linear,
T = 1000, as the SD x4 upscaler's ``low_res_scheduler``). Two sampling variants (CDM 4.3):

* ``"non_truncated"``: the previous stage samples all the way to its ``x0``, which is then
  corrupted to ``z_s`` with fresh noise;
* ``"truncated"``: the previous stage's reverse process stops at step ``s`` and its ``x_s`` is
  the condition as it is (no extra noise, ``s`` fewer steps). This needs the previous stage to
  be a pixel model on the augmentation's schedule (the same ``abar``).

Training is the same for both.
"""

from __future__ import annotations

from typing import Any

import torch

from ._checks import check_choice, check_int
from .schedule import NoiseSchedule

__all__ = ["AUGMENTATION_VARIANTS", "DEFAULT_SAMPLE_LEVEL", "NoiseAugmentation"]

AUGMENTATION_VARIANTS = ("non_truncated", "truncated")

#: The default sampling level (of T = 1000), the best of the levels measured on
#: ``examples/super_resolution.py`` with ``benchmarks/bench_super_resolution.py --part level``
#: (the figures are in ``docs/guides/super_resolution.md``).
DEFAULT_SAMPLE_LEVEL = 100


class NoiseAugmentation:
    """The augmentation of a low-resolution condition: its schedule and its levels.

    Args:
        schedule: the forward process applied to the condition (default:
            ``NoiseSchedule.linear(1000)``).
        max_level: training levels are uniform on ``{0, ..., max_level}`` (default ``T - 1``,
            every level; the SD x4 upscaler uses 350).
        sample_level: the constant level ``s`` used at sampling (default
            :data:`DEFAULT_SAMPLE_LEVEL`, scaled to ``T``; at most ``max_level``).
        variant: ``"non_truncated"`` or ``"truncated"`` (see the module's docstring).

    Raises:
        ValueError: a level outside ``[0, T - 1]``, ``sample_level > max_level`` or an unknown
            variant.
    """

    def __init__(
        self,
        schedule: NoiseSchedule | None = None,
        *,
        max_level: int | None = None,
        sample_level: int | None = None,
        variant: str = "non_truncated",
    ) -> None:
        if schedule is None:
            schedule = NoiseSchedule.linear(1000)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        self.schedule = schedule
        last = schedule.num_timesteps - 1
        self.max_level = check_int("max_level", last if max_level is None else max_level, 0, last)
        if sample_level is None:
            sample_level = min(round(DEFAULT_SAMPLE_LEVEL * schedule.num_timesteps / 1000),
                               self.max_level)
        self.sample_level = self.check_level(sample_level, "sample_level")
        if self.sample_level > self.max_level:
            raise ValueError(f"sample_level must be at most max_level={self.max_level} (the "
                             f"model never saw higher levels); got {sample_level}")
        self.variant = check_choice("variant", variant, AUGMENTATION_VARIANTS)

    @property
    def num_timesteps(self) -> int:
        """``T`` of the augmentation's schedule."""
        return self.schedule.num_timesteps

    def check_level(self, level: Any, name: str = "noise_level") -> int:
        """``level`` as an int, raising ``ValueError`` unless it lies in ``[0, T - 1]``."""
        return check_int(name, level, 0, self.num_timesteps - 1)

    def draw_levels(self, batch: int, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """Training levels ``s ~ U{0, ..., max_level}``: a ``(batch,)`` long tensor."""
        return torch.randint(0, self.max_level + 1, (batch,), generator=generator, device=device)

    def augment(self, low_res: torch.Tensor, level: torch.Tensor | int,
                noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``z_s = sqrt(abar_s) low_res + sqrt(1 - abar_s) noise`` (shape of ``low_res``;
        ``noise`` is drawn from ``generator`` when not given). Level 0 is almost clean
        (``abar_0 = 1 - beta_0``), as in the SD x4 upscaler."""
        level = level if isinstance(level, torch.Tensor) else torch.full(
            (low_res.shape[0],), self.check_level(level), device=low_res.device)
        return self.schedule.q_sample(low_res, level.to(low_res.device), noise=noise,
                                      generator=generator)

    def with_sample_level(self, sample_level: int) -> NoiseAugmentation:
        """A copy that samples at ``sample_level`` (same schedule, range and variant)."""
        return NoiseAugmentation(self.schedule, max_level=self.max_level,
                                 sample_level=sample_level, variant=self.variant)

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        """A JSON description; :meth:`from_dict` rebuilds it."""
        return {"schedule": self.schedule.to_dict(), "max_level": self.max_level,
                "sample_level": self.sample_level, "variant": self.variant}

    @classmethod
    def from_dict(cls, data: Any) -> NoiseAugmentation:
        """Rebuild an augmentation written by :meth:`to_dict`."""
        if not isinstance(data, dict) or "schedule" not in data:
            raise ValueError(f"a noise augmentation must be a dict with a 'schedule'; got "
                             f"{data!r:.80}")
        return cls(NoiseSchedule.from_dict(data["schedule"]), max_level=data.get("max_level"),
                   sample_level=data.get("sample_level"),
                   variant=data.get("variant", "non_truncated"))

    def __repr__(self) -> str:
        return (f"NoiseAugmentation(T={self.num_timesteps}, max_level={self.max_level}, "
                f"sample_level={self.sample_level}, variant={self.variant!r})")
