r"""The VE SDE's samplers (Song et al. 2021): reverse diffusion and predictor-corrector.

The variance-exploding SDE :math:`dx = \sqrt{d[\sigma^2]/dt}\, dW` perturbs data as
:math:`x = x_0 + \sigma(t)\epsilon` with :math:`\sigma(t) = \sigma_{min}(\sigma_{max}/
\sigma_{min})^t`; discretised on the levels :math:`\sigma_0 > \dots > \sigma_{N-1}` (the VE
ladder) and :math:`\sigma_N = 0`, its *reverse diffusion* predictor (Song et al. 2021, eq. 46
and Algorithm 2, "VE SDE") is

.. math:: \bar x = x + (\sigma_i^2 - \sigma_{i+1}^2)\, s(x;\sigma_i), \qquad
          x \leftarrow \bar x + \sqrt{\sigma_i^2 - \sigma_{i+1}^2}\; z,

with the score :math:`s = (D - x)/\sigma^2`; the last step (to :math:`\sigma_N = 0`) returns
:math:`\bar x = D(x;\sigma_{N-1})`, without noise, as Song et al.'s ``denoise=True``. The
corrector runs ``corrector_steps`` Langevin steps at each level *before* its predictor:
:math:`x \leftarrow x + e\, s + \sqrt{2e}\, z` with :math:`e = 2 (r \lVert z\rVert /
\lVert s\rVert)^2` (the norms averaged over the batch, as in Song et al.'s code and diffusers'
``ScoreSdeVeScheduler``; :math:`r` = ``snr``, 0.16 for CIFAR-10). ``N (corrector_steps + 1)``
model calls. On a DDPM model (a :class:`~ddpm_lib.NoiseSchedule`) this is the same process
in the scaled variable :math:`x_t / \sqrt{\bar\alpha_t}` (Karras et al. 2022, Sec. 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_choice, check_int, check_real
from ..noise_levels import EDMNoiseLevels, VENoiseLevels
from ..schedule import NoiseSchedule
from .levels import NoiseLevelSampler
from .loop import _DeviceTables
from .sde import _langevin, _where

VE_METHODS = ("reverse_diffusion", "predictor_corrector")


class VESDESampler(NoiseLevelSampler):
    r"""The VE SDE's reverse-diffusion predictor and predictor-corrector (Song et al. 2021).

    Args:
        schedule: the levels' source: :class:`~ddpm_lib.noise_levels.VENoiseLevels` (the
            model is a denoiser, e.g. a score network through :class:`~ddpm_lib.ScoreDenoiser`),
            :class:`~ddpm_lib.noise_levels.EDMNoiseLevels` (a denoiser) or a
            :class:`~ddpm_lib.NoiseSchedule` (a DDPM model).
        num_steps: ``N``, the levels (default: the ladder's own, else 18), geometric between
            the source's smallest and largest level.
        method: ``"reverse_diffusion"`` (``N`` calls) or ``"predictor_corrector"``
            (``N (corrector_steps + 1)`` calls).
        snr: the corrector's signal-to-noise ratio :math:`r`, ``>= 0``.
        corrector_steps: Langevin steps per level, ``>= 1`` (with ``"predictor_corrector"``).
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
        method: str = "predictor_corrector",
        snr: float = 0.16,
        corrector_steps: int = 1,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        spacing: str | None = None,
        rho: float | None = None,
        prediction: str = "eps",
        sigma_lookup: str = "nearest",
        clip_denoised: bool = True,
        learn_sigma: bool = False,
    ) -> None:
        self.method = check_choice("method", method, VE_METHODS)
        self.snr = float(check_real("snr", snr, 0.0))
        self.corrector_steps = check_int("corrector_steps", corrector_steps, 1)
        super().__init__(
            schedule, num_steps, sigmas=sigmas, spacing=spacing, rho=rho, prediction=prediction,
            sigma_lookup=sigma_lookup, clip_denoised=clip_denoised, learn_sigma=learn_sigma,
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, method={self.method!r}, snr={self.snr!r})"

    def _calls(self) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.sigmas.tolist()
        correctors = self.corrector_steps if self.method == "predictor_corrector" else 0
        rows = []
        # columns: sigma, corrector (1) / predictor (0), sigma_i^2 - sigma_{i+1}^2, its root,
        # last (the predictor to sigma = 0, without noise)
        for i, sigma in enumerate(grid):
            following = grid[i + 1] if i + 1 < len(grid) else 0.0
            variance = sigma * sigma - following * following
            rows += [[sigma, 1.0, 0.0, 0.0, 0.0]] * correctors
            rows.append([sigma, 0.0, variance, variance**0.5, float(i + 1 == len(grid))])
        table = torch.tensor(rows, dtype=torch.float64)
        return table[:, 0].clone(), table

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
        sigma, corrector, variance, scale, last = coefficients
        if noise is None:
            raise RuntimeError("VESDESampler needs the step's noise")
        denoised = self._process_x0(model_output)
        score = (denoised - x_t) / (sigma * sigma)
        mean = x_t + variance * score
        predicted = _where(last, mean, mean + scale * noise)
        if self.method == "reverse_diffusion":
            return predicted, denoised, state
        corrected = _langevin(x_t, score, noise, self.snr, 1.0)
        return _where(corrector, corrected, predicted), denoised, state
