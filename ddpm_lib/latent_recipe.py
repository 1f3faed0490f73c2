"""The measured training recipe of a diffusion model on latents (issue 32).

On real data (scikit-learn's digits upscaled to 32x32, ``benchmarks/bench_latent.py --part d``)
a latent UNet trained with the pixel defaults (eps-prediction, Adam at 2e-4, no weighting) was
1.69x farther from the data than the pixel UNet at equal steps; v-prediction (Salimans & Ho
2022) with min-SNR-5 weighting (Hang et al. 2023) at a learning rate of 1e-3 brought it to
0.35x of the pixel model trained the same way (0.12x at equal CPU time). LDM's single scale
factor measured slightly better than the per-channel normalisation (SD3 / FLUX's shift
factor, per channel) over three seeds, so it stays the default; ``normalization="channel"``
is the option.
:class:`LatentRecipe` holds those choices in one place; the latent example,
``ddpm-lib train --autoencoder`` and the benchmark take their defaults from it. Pixel-space
defaults are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ddpm_lib._checks import check_choice, check_real

__all__ = ["LatentRecipe"]


@dataclass(frozen=True)
class LatentRecipe:
    r"""The recommended settings of a diffusion model trained on latents.

    The defaults are the best measured in the latent guide's digits benchmark:

    Args:
        prediction: what the network predicts, ``"v"`` (default), ``"eps"`` or ``"x0"``.
        min_snr_gamma: :math:`\gamma` of min-SNR loss weighting (default 5, the paper's), or
            ``None`` for none.
        lr: Adam's learning rate (default ``1e-3``).
        normalization: how :meth:`fit` normalises the latents: ``"global"`` (default: LDM's
            single scale factor) or ``"channel"`` (a shift and a scale per channel).

    Raises:
        ValueError: a choice outside those listed, or a non-positive ``lr`` / ``min_snr_gamma``.
        TypeError: a number of the wrong type.

    Example::

        recipe = LatentRecipe()
        recipe.fit(latents, images)                       # LDM's scale factor
        trainer = Trainer(unet, recipe.loss(schedule), latents.encode_dataset(images, "z"),
                          lr=recipe.lr, random_flip=False)
        sampler = recipe.sampler(DDIMSampler, schedule, 50)   # prediction="v", unclipped
    """

    prediction: str = "v"
    min_snr_gamma: float | None = 5.0
    lr: float = 1e-3
    normalization: str = "global"

    def __post_init__(self) -> None:
        from ddpm_lib.latent import NORMALIZATIONS
        from ddpm_lib.schedule import PREDICTION_TYPES

        check_choice("prediction", self.prediction, PREDICTION_TYPES)
        check_real("min_snr_gamma", self.min_snr_gamma, 0.0, open_min=True, allow_none=True)
        check_real("lr", self.lr, 0.0, open_min=True)
        check_choice("normalization", self.normalization, NORMALIZATIONS)

    def loss(self, schedule: Any) -> Any:
        """The training loss: ``SimpleLoss(schedule, prediction, min_snr_gamma)``."""
        from ddpm_lib.losses import SimpleLoss

        return SimpleLoss(schedule, prediction=self.prediction, min_snr_gamma=self.min_snr_gamma)

    def sampler(self, sampler_class: Any, schedule: Any, num_steps: int | None = None,
                **kwargs: Any) -> Any:
        """``sampler_class(schedule, num_steps, prediction=..., clip_denoised=False, **kwargs)``:
        any sampler of :mod:`ddpm_lib.samplers`, reading the network's prediction and never
        clamping (latents are unbounded). ``num_steps=None`` keeps the class's default."""
        if num_steps is not None:
            kwargs["num_steps"] = num_steps
        kwargs.setdefault("prediction", self.prediction)
        kwargs.setdefault("clip_denoised", False)
        return sampler_class(schedule, **kwargs)

    def fit(self, latent_diffusion: Any, dataset: Any, **kwargs: Any) -> float:
        """``latent_diffusion.fit_scale_factor(dataset, normalization=..., **kwargs)`` and
        ``latent_diffusion.prediction = prediction`` (saved with the model); returns the global
        scale factor."""
        scale = latent_diffusion.fit_scale_factor(dataset, normalization=self.normalization,
                                                  **kwargs)
        latent_diffusion.prediction = self.prediction
        return float(scale)
