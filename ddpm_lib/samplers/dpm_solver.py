"""DPM-Solver++ 2M (Lu et al. 2022, Algorithm 2): a second-order multistep ODE solver in x0 form.

With ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)`` and the half log-SNR
``lambda_t = log(alpha_t / sigma_t)``, one step from ``t_i`` to ``t_{i+1}`` with
``h_i = lambda_{t_{i+1}} - lambda_{t_i}`` is

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h_i) - 1) D_i
    D_i     = x0_i + (1 / (2 r_i)) (x0_i - x0_{i-1}),   r_i = h_{i-1} / h_i

where ``x0_i`` is the model's (clipped) estimate at ``(x_i, t_i)``. The first step (no
history) and the last one, which goes to ``sigma = 0`` and returns ``x0`` of the last
timestep, are first order (``D_i = x0_i``, i.e. a DDIM step) -- diffusers'
``DPMSolverMultistepScheduler`` with ``solver_order=2``, ``final_sigmas_type="zero"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_choice
from ..schedule import NoiseSchedule, linear_combination
from .base import SPACINGS, Sampler, _DeviceTables, spaced_timesteps


def dpm_solver_pp_2m_update(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor,
    sigma_ratio: Any,
    x0_weight: Any,
    history_weight: Any,
) -> torch.Tensor:
    """``sigma_ratio x_t + x0_weight (x0 + history_weight (x0 - x0_prev))`` (Algorithm 2).

    ``sigma_ratio = sigma_{i+1} / sigma_i``, ``x0_weight = alpha_{i+1} (1 - exp(-h_i))`` and
    ``history_weight = 1 / (2 r_i)`` (0 for a first-order step); floats or broadcastable tensors.
    """
    derivative = linear_combination(1.0 + history_weight, x0, -history_weight, x0_prev)
    return linear_combination(sigma_ratio, x_t, x0_weight, derivative)


def dpm_solver_pp_2m_coefficients(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The per-step constants for the descending levels ``alphas_cumprod`` (N,), float64.

    Returns ``(N, 5)``: ``alpha_i, sigma_i, sigma_ratio, x0_weight, history_weight``; the step
    after the last level goes to ``abar = 1`` (``sigma = 0``).
    """
    abar = alphas_cumprod.double()
    abar_next = torch.cat([abar[1:], abar.new_ones(1)])
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    alpha_next, sigma_next = abar_next.sqrt(), (1 - abar_next).sqrt()
    sigma_ratio = sigma_next / sigma
    # alpha_{i+1} (1 - exp(-h_i)) with exp(-h_i) = alpha_i sigma_{i+1} / (sigma_i alpha_{i+1}):
    # finite even for the last step, where sigma_{i+1} = 0 and h_i = inf
    x0_weight = alpha_next - alpha * sigma_ratio
    lambdas = torch.log(alpha) - torch.log(sigma)
    h = lambdas[1:] - lambdas[:-1]  # (N - 1,): the steps between levels; the last is infinite
    history_weight = torch.zeros_like(abar)
    # second order for steps 1 .. N - 2: 1 / (2 r_i) = h_i / (2 h_{i-1})
    history_weight[1:-1] = h[1:] / (2 * h[:-1])
    return torch.stack([alpha, sigma, sigma_ratio, x0_weight, history_weight], dim=1)


class DPMSolverSampler(Sampler):
    """DPM-Solver++ 2M: the fast deterministic sampler, good samples in 10-25 model calls.

    Args:
        schedule: the forward process the model was trained with.
        num_steps: number of steps (model calls).
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]`` (images); off for latents.
        spacing: ``"linspace"`` (default), ``"leading"`` or ``"trailing"``: the timesteps of
            diffusers' ``DPMSolverMultistepScheduler`` for that spacing (``linspace`` and
            ``leading`` space ``num_steps + 1`` points and drop the final 0).
        dynamic_threshold, learn_sigma: see :class:`~ddpm_lib.samplers.base.Sampler`.

    ``num_steps`` defaults to 20 (when ``timesteps`` is not given either).

    The solver carries the previous ``x0`` between steps; :meth:`step` remembers it between
    calls and starts afresh (first order) when a call does not follow the previous one.
    """

    default_num_steps = 20

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int | None = None,
        prediction: str = "eps",
        clip_denoised: bool = True,
        spacing: str = "linspace",
        dynamic_threshold: float | None = None,
        learn_sigma: bool = False,
        timesteps: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        super().__init__(
            schedule, num_steps=num_steps, prediction=prediction, clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold, learn_sigma=learn_sigma, timesteps=timesteps,
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, spacing={self.spacing!r})"

    def _make_timesteps(self) -> torch.Tensor:
        num_timesteps = self.schedule.num_timesteps
        if self.spacing not in ("linspace", "leading"):
            return super()._make_timesteps()
        if self.num_steps + 1 > num_timesteps:
            raise ValueError(
                f"num_steps must be <= {num_timesteps - 1} with spacing={self.spacing!r} "
                f"(it spaces num_steps + 1 points); got {self.num_steps}"
            )
        return spaced_timesteps(num_timesteps, self.num_steps + 1, self.spacing)[:-1]

    def _coefficient_table(self) -> torch.Tensor:
        return dpm_solver_pp_2m_coefficients(self.schedule.alphas_cumprod.cpu()[self._timesteps])

    def _initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.zeros_like(x),)  # x0 of the previous step (unused on the first)

    def _update(
        self,
        coefficients: Sequence[Any],
        index: int | torch.Tensor,
        tables: _DeviceTables,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None,
        state: tuple[torch.Tensor, ...],
        continuing: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        alpha, sigma, sigma_ratio, x0_weight, history_weight = coefficients
        (x0_prev,) = state
        x0, _ = self._split(model_output, x_t, alpha, sigma)
        x0 = self._process_x0(x0)
        x_next = dpm_solver_pp_2m_update(
            x_t, x0, x0_prev, sigma_ratio, x0_weight, history_weight * continuing
        )
        return x_next, x0, (x0,)
