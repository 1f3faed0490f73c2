"""Consistency sampling (Song et al. 2023, Algorithm 1): one model call, or a few.

A consistency model maps any point of a probability-flow ODE trajectory to its clean end.
Here it is built from a network's ``x0`` estimate with the boundary parameterisation

    f(x_t, t) = c_skip(t) x_t / alpha_t + c_out(t) x0_theta(x_t, t)
    c_skip(t) = sigma_data^2 / ((s lambda_t)^2 + sigma_data^2)
    c_out(t)  = s lambda_t / sqrt((s lambda_t)^2 + sigma_data^2)

where ``lambda_t = sigma_t / alpha_t = sqrt((1 - abar_t) / abar_t)`` is the noise level of
``x_t / alpha_t = x0 + lambda_t eps`` (0 on clean data, so ``f(x, clean) = x`` exactly: the
boundary condition of eq. 3), ``s`` the ``timestep_scaling`` and ``sigma_data`` the data's
standard deviation (the form of latent consistency models, Luo et al. 2023, with the noise
level in place of the timestep index). ``x0_theta`` is read from the network's ``eps``,
``x0`` or ``v`` prediction.

Multistep sampling: ``x = f(x_T, tau_0)``; then for each later timestep ``tau_i``, re-noise
``x_{tau_i} = alpha x + sigma z`` and ``x = f(x_{tau_i}, tau_i)``. In the loop's terms, the
step at ``tau_i`` evaluates ``f`` and lands on the next timestep with fresh noise (on clean
data after the last one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_choice, check_real
from ..schedule import NoiseSchedule
from .base import SPACINGS, Sampler
from .loop import _DeviceTables

__all__ = ["ConsistencySampler", "consistency_coefficients"]


def consistency_coefficients(
    alphas_cumprod: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` of the boundary parameterisation at levels ``abar`` (module docstring).

    Args:
        alphas_cumprod: ``abar`` of the levels, any shape, in ``(0, 1]`` (1: clean data).
        sigma_data: the data's standard deviation (0.5 for images in ``[-1, 1]``).
        timestep_scaling: ``s``, how fast ``c_skip`` falls from 1 as the noise level grows.

    Returns:
        two tensors shaped like ``alphas_cumprod`` (its dtype): ``c_skip = 1, c_out = 0`` at
        ``abar = 1``.
    """
    abar = alphas_cumprod
    level = timestep_scaling * ((1 - abar) / abar).clamp(min=0).sqrt()
    c_skip = sigma_data**2 / (level**2 + sigma_data**2)
    c_out = level / (level**2 + sigma_data**2).sqrt()
    return c_skip, c_out


def check_consistency_options(sigma_data: Any, timestep_scaling: Any) -> tuple[float, float]:
    """``sigma_data`` and ``timestep_scaling`` as positive floats (else a named error)."""
    return (float(check_real("sigma_data", sigma_data, 0, open_min=True)),
            float(check_real("timestep_scaling", timestep_scaling, 0, open_min=True)))


class ConsistencySampler(Sampler):
    """Consistency-model sampling: ``num_steps`` model calls (1: one-step generation).

    Args:
        schedule: the forward process the model was distilled on.
        num_steps: model calls, ``1 <= num_steps <= T``; default 1.
        prediction: what the network predicts (its ``x0`` estimate enters ``f``).
        clip_denoised: clamp ``f`` (the clean estimate of each step) to ``[-1, 1]``.
        spacing: the grid of the timesteps ``tau_i`` (default ``"trailing"``: starts at
            ``T - 1``); or give ``timesteps=`` explicitly (a distilled student's levels).
        sigma_data, timestep_scaling: the boundary parameterisation (module docstring); they
            must be the ones the model was distilled with
            (:class:`ddpm_lib.ConsistencyDistillation`).
        dynamic_threshold, learn_sigma, timesteps: see :class:`~ddpm_lib.samplers.base.Sampler`.

    Step ``i`` at ``tau_i``: ``x0 = f(x, tau_i)``, then ``x <- alpha_{i+1} x0 + sigma_{i+1} z``
    (``alpha = 1``, ``sigma = 0`` after the last). With one step the run is deterministic.
    """

    _reads_eps = False
    default_num_steps = 1
    spacing: str

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int | None = None,
        *,
        prediction: str = "eps",
        clip_denoised: bool = True,
        spacing: str = "trailing",
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        dynamic_threshold: float | None = None,
        learn_sigma: bool = False,
        timesteps: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self.sigma_data, self.timestep_scaling = check_consistency_options(
            sigma_data, timestep_scaling)
        super().__init__(
            schedule, num_steps=num_steps, prediction=prediction, clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold, learn_sigma=learn_sigma, timesteps=timesteps,
        )
        self._uses_noise = self.num_steps > 1

    def __repr__(self) -> str:
        return (f"{super().__repr__()[:-1]}, sigma_data={self.sigma_data}, "
                f"timestep_scaling={self.timestep_scaling})")

    def _coefficient_table(self) -> torch.Tensor:
        abar = self.schedule.alphas_cumprod.cpu()[self._timesteps].double()
        abar_next = torch.cat([abar[1:], abar.new_ones(1)])  # the last step lands on clean data
        c_skip, c_out = consistency_coefficients(abar, self.sigma_data, self.timestep_scaling)
        # c_skip / alpha as one float64 constant: x_t / alpha alone is large at the first step
        return torch.stack([abar.sqrt(), (1 - abar).sqrt(), c_skip / abar.sqrt(), c_out,
                            abar_next.sqrt(), (1 - abar_next).sqrt()], dim=1)

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
        alpha, sigma, skip, c_out, alpha_next, sigma_next = coefficients
        x0_model, _ = self._split(model_output, x_t, alpha, sigma)
        x0 = self._process_x0(skip * x_t + c_out * x0_model)  # f(x_t, t), skip = c_skip / alpha
        x_next = alpha_next * x0
        if noise is not None:
            x_next = x_next + sigma_next * noise
        return x_next, x0, state
