r"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with NCSNv2's final denoising.

On the levels :math:`\sigma_1 > \dots > \sigma_L` (the VE ladder by default), with the score
:math:`s(x;\sigma) = (D(x;\sigma) - x)/\sigma^2` (EDM eq. 3), each level takes ``T`` Langevin
steps of size :math:`\alpha_i = \epsilon\,\sigma_i^2/\sigma_L^2`:

.. math:: x \leftarrow x + \tfrac{\alpha_i}{2}\, s(x;\sigma_i) + \sqrt{\alpha_i}\, z,
          \qquad z \sim N(0, I),

so that the ratio of the step to the noise level's variance is the same at every level
(Song & Ermon 2019, Sec. 4.3). NCSNv2 (Song & Ermon 2020, Sec. 3 and Appendix) ends with one
denoising step :math:`x \leftarrow x + \sigma_L^2 s(x;\sigma_L) = D(x;\sigma_L)` (Tweedie),
which removes the last level's noise (``denoise=True``, the default). ``L T`` (+1) model calls.
The run starts from :math:`x = \sigma_1 z` (NCSN starts from uniform noise; the Gaussian of
the largest level is the VE prior).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_bool, check_int, check_real
from ..noise_levels import EDMNoiseLevels, VENoiseLevels
from ..schedule import NoiseSchedule
from .levels import NoiseLevelSampler
from .loop import _DeviceTables
from .sde import _sqrt, _where


class AnnealedLangevinSampler(NoiseLevelSampler):
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1; NCSNv2's denoising step).

    Args:
        schedule: the levels' source: a :class:`~ddpm_lib.noise_levels.VENoiseLevels` (NCSN;
            the model is a denoiser, a score network through :class:`~ddpm_lib.ScoreDenoiser`),
            an :class:`~ddpm_lib.noise_levels.EDMNoiseLevels` (a denoiser) or a
            :class:`~ddpm_lib.NoiseSchedule` (a DDPM model through :class:`~ddpm_lib.VPDenoiser`).
        num_steps: ``L``, the levels (default: the ladder's own, else 18), placed geometrically
            between the source's smallest and largest level.
        steps_per_level: ``T`` (NCSN: 100), ``>= 1``.
        step_size: :math:`\epsilon` (NCSN on CIFAR-10: 2e-5), ``> 0``.
        denoise: end with NCSNv2's denoising step (one call more).
        sigmas, spacing, rho, prediction, sigma_lookup, clip_denoised, learn_sigma: see
            :class:`~ddpm_lib.samplers.levels.NoiseLevelSampler`.
    """

    _uses_noise = True
    default_spacing = "geometric"

    def __init__(
        self,
        schedule: NoiseSchedule | VENoiseLevels | EDMNoiseLevels,
        num_steps: int | None = None,
        *,
        steps_per_level: int = 100,
        step_size: float = 2e-5,
        denoise: bool = True,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        spacing: str | None = None,
        rho: float | None = None,
        prediction: str = "eps",
        sigma_lookup: str = "nearest",
        clip_denoised: bool = True,
        learn_sigma: bool = False,
    ) -> None:
        self.steps_per_level = check_int("steps_per_level", steps_per_level, 1)
        self.step_size = float(check_real("step_size", step_size, 0.0, open_min=True))
        self.denoise = check_bool("denoise", denoise)
        super().__init__(
            schedule, num_steps, sigmas=sigmas, spacing=spacing, rho=rho, prediction=prediction,
            sigma_lookup=sigma_lookup, clip_denoised=clip_denoised, learn_sigma=learn_sigma,
        )

    def __repr__(self) -> str:
        return (f"{super().__repr__()[:-1]}, steps_per_level={self.steps_per_level}, "
                f"step_size={self.step_size!r}, denoise={self.denoise})")

    def _calls(self) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.sigmas
        smallest = float(grid[-1])
        steps = self.step_size * (grid / smallest) ** 2  # alpha_i = eps sigma_i^2 / sigma_L^2
        levels = grid.repeat_interleave(self.steps_per_level)
        alphas = steps.repeat_interleave(self.steps_per_level)
        final = torch.zeros_like(levels)
        if self.denoise:
            levels = torch.cat([levels, grid[-1:]])
            alphas = torch.cat([alphas, alphas.new_zeros(1)])
            final = torch.cat([final, final.new_ones(1)])
        # columns: sigma, alpha (the step size), 1 on the denoising call
        return levels, torch.stack([levels, alphas, final], dim=1)

    def _update(
        self,
        coefficients: Sequence[Any],
        index: int | torch.Tensor,
        tables: _DeviceTables,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None,
        state: tuple[Any, ...],
        continuing: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, ...]]:
        sigma, alpha, final = coefficients
        if noise is None:
            raise RuntimeError("AnnealedLangevinSampler needs the step's noise")
        denoised = self._process_x0(model_output)
        score = (denoised - x_t) / (sigma * sigma)
        x_next = x_t + 0.5 * alpha * score + _sqrt(alpha) * noise
        return _where(final, denoised, x_next), denoised, state
