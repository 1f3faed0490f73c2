r"""EDM's samplers (Karras et al. 2022, Algorithm 2): Euler and Heun with stochastic churn.

On the grid :math:`\sigma_0 > \dots > \sigma_{N-1} > \sigma_N = 0` (EDM eq. 5 by default) each
level :math:`i` first *churns*: with :math:`\gamma_i = \min(S_{churn}/N, \sqrt 2 - 1)` where
:math:`S_{tmin} \le \sigma_i \le S_{tmax}` (else 0) and :math:`\hat\sigma_i = (1 + \gamma_i)
\sigma_i`,

.. math:: \hat x_i = x_i + \sqrt{\hat\sigma_i^2 - \sigma_i^2}\; S_{noise}\, z_i,

then takes an Euler step of the probability-flow ODE :math:`dx/d\sigma = (x - D(x;\sigma))/
\sigma` from :math:`\hat\sigma_i` to :math:`\sigma_{i+1}`, :math:`d_i = (\hat x_i - D(\hat x_i;
\hat\sigma_i))/\hat\sigma_i`, :math:`x_{i+1} = \hat x_i + (\sigma_{i+1} - \hat\sigma_i) d_i`,
and with Heun (``method="heun"``) the trapezoidal correction :math:`x_{i+1} = \hat x_i +
(\sigma_{i+1} - \hat\sigma_i)(d_i + d'_i)/2`, :math:`d'_i = (x_{i+1} - D(x_{i+1};
\sigma_{i+1}))/\sigma_{i+1}`, except on the last step to :math:`\sigma_N = 0` (Euler, which
lands exactly on :math:`D`). Euler makes ``N`` model calls, Heun ``2N - 1``; with
``S_churn = 0`` both are deterministic (EDM Algorithm 1).

In the one loop a position is one model call; the churn of level ``i + 1`` is added by the call
that completes level ``i`` (the churn of level 0 before the first call), so every call draws
one noise tensor when ``S_churn > 0``, after one drawn before the first call (the noise of a
call that completes no level, and a churn outside ``[S_tmin, S_tmax]``, is unused).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_choice, check_real
from ..noise_levels import EDMNoiseLevels, VENoiseLevels
from ..schedule import NoiseSchedule
from .levels import NoiseLevelSampler, level_range
from .loop import _DeviceTables, randn
from .sde import _where

EDM_METHODS = ("heun", "euler")


class EDMSampler(NoiseLevelSampler):
    r"""EDM's deterministic / stochastic sampler (Karras et al. 2022, Algorithms 1 and 2).

    Args:
        schedule: the levels' source: :class:`~ddpm_lib.noise_levels.EDMNoiseLevels` (the
            model is a denoiser ``D(x, sigma)``, e.g. :class:`~ddpm_lib.EDMPrecond`),
            :class:`~ddpm_lib.noise_levels.VENoiseLevels` (a denoiser, e.g. a VE score model
            through :class:`~ddpm_lib.ScoreDenoiser`) or a :class:`~ddpm_lib.NoiseSchedule`
            (a DDPM model, converted by :class:`~ddpm_lib.VPDenoiser`).
        num_steps: ``N``, the levels of the grid (18 by default: 35 Heun calls, EDM's CIFAR-10
            setting).
        method: ``"heun"`` (2nd order, ``2N - 1`` calls) or ``"euler"`` (``N`` calls).
        S_churn, S_tmin, S_tmax, S_noise: the stochasticity of Algorithm 2 (``S_churn = 0``:
            deterministic, the default); ``S_churn >= 0``, ``0 <= S_tmin <= S_tmax``,
            ``S_noise > 0`` (EDM's ImageNet-64 setting: 40, 0.05, 50, 1.003). On a DDPM model
            :math:`\hat\sigma_i` is capped at the schedule's largest level.
        sigmas, spacing, rho, prediction, sigma_lookup, clip_denoised, learn_sigma: see
            :class:`~ddpm_lib.samplers.levels.NoiseLevelSampler`; the grid is EDM eq. 5
            (``spacing="karras"``, ``rho`` 7 or the source's) by default.
    """

    default_num_steps = 18
    default_spacing = "karras"

    def __init__(
        self,
        schedule: NoiseSchedule | VENoiseLevels | EDMNoiseLevels,
        num_steps: int | None = None,
        *,
        method: str = "heun",
        S_churn: float = 0.0,
        S_tmin: float = 0.0,
        S_tmax: float = math.inf,
        S_noise: float = 1.0,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        spacing: str | None = None,
        rho: float | None = None,
        prediction: str = "eps",
        sigma_lookup: str = "nearest",
        clip_denoised: bool = True,
        learn_sigma: bool = False,
    ) -> None:
        self.method = check_choice("method", method, EDM_METHODS)
        self.S_churn = float(check_real("S_churn", S_churn, 0.0))
        self.S_tmin = float(check_real("S_tmin", S_tmin, 0.0))
        self.S_tmax = float(check_real("S_tmax", S_tmax, 0.0, finite=False))
        if self.S_tmin > self.S_tmax:
            raise ValueError(f"S_tmin must be <= S_tmax; got S_tmin={S_tmin!r}, S_tmax={S_tmax!r}")
        self.S_noise = float(check_real("S_noise", S_noise, 0.0, open_min=True))
        super().__init__(
            schedule, num_steps, sigmas=sigmas, spacing=spacing, rho=rho, prediction=prediction,
            sigma_lookup=sigma_lookup, clip_denoised=clip_denoised, learn_sigma=learn_sigma,
        )
        self._uses_noise = bool(any(row[4] > 0 for row in self._rows)) or self._churn[0] > 0

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, method={self.method!r}, S_churn={self.S_churn!r})"

    # ------------------------------------------------------------------ the table
    def _calls(self) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.sigmas.tolist()
        n = len(grid)
        gamma_max = min(self.S_churn / n, math.sqrt(2.0) - 1.0)
        gammas = [gamma_max if self.S_tmin <= s <= self.S_tmax else 0.0 for s in grid]
        hats = [s * (1.0 + g) for s, g in zip(grid, gammas)]
        if isinstance(self.noise_levels, NoiseSchedule):  # a DDPM model knows no higher level
            highest = level_range(self.noise_levels)[1]
            hats = [min(h, max(s, highest)) for s, h in zip(grid, hats)]
        # the churn noise's scale of each level, and 0 past the last one
        self._churn = [self.S_noise * math.sqrt(h * h - s * s) for s, h in zip(grid, hats)] + [0.0]
        levels, rows = [], []
        # columns: role (0: Euler evaluation, 1: Heun's second), h, completes the level,
        # churn scale of the next level, last (lands on D)
        for i in range(n):
            following = grid[i + 1] if i + 1 < n else 0.0
            h = following - hats[i]
            heun = self.method == "heun" and following > 0
            levels.append(hats[i])
            if heun:
                rows.append([0.0, h, 0.0, 0.0, 0.0])
                levels.append(following)
                rows.append([1.0, h, 1.0, self._churn[i + 1], 0.0])
            else:
                rows.append([0.0, h, 1.0, self._churn[i + 1], float(i == n - 1)])
        sigma_column = torch.tensor(levels, dtype=torch.float64)
        table = torch.cat([sigma_column[:, None], torch.tensor(rows, dtype=torch.float64)], 1)
        return sigma_column, table

    def _start(self, noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = noise * float(self.sigmas[0])
        if self._uses_noise:  # the churn of level 0, before the first call (drawn even at 0)
            x = x + self._churn[0] * randn(noise.shape, generator, noise.device, noise.dtype)
        return x

    def _initial_state(self, x: torch.Tensor) -> tuple[Any, ...]:
        return (torch.zeros_like(x), torch.zeros_like(x))  # x_hat and d of the Euler evaluation

    # ------------------------------------------------------------------ the update
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
        sigma, role, h, completes, churn, last = coefficients
        denoised = self._process_x0(model_output)
        d = (x_t - denoised) / sigma
        x_hat, d_first = state
        euler = x_t + h * d
        heun = x_hat + h * 0.5 * (d_first + d)
        done = _where(last, denoised, _where(role, heun, euler))
        if noise is not None:
            done = done + churn * noise
        x_next = _where(completes, done, euler)
        state = (_where(role, x_hat, x_t), _where(role, d_first, d))
        return x_next, denoised, state
