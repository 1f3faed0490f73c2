"""DEIS (Zhang & Chen 2022): the exponential-integrator multistep sampler, "tAB" form.

In ``rho = sigma / alpha`` the probability-flow ODE is ``d(x / alpha) = eps(x, rho) d rho``.
DEIS integrates it exactly after replacing ``eps`` by the polynomial in ``log rho`` through
the last ``p`` outputs (Lagrange basis ``L_k``):

    x_t = alpha_t (x_s / alpha_s + sum_k eps_k int_{rho_s}^{rho_t} L_k(log rho) d rho)

(order 1 is DDIM). The integrals have closed forms (those of diffusers'
``DEISMultistepScheduler``, ``algorithm_type="deis"``); the ``eps`` are those of the
(clipped) ``x0`` estimates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._deprecation import keyword_only_after
from ..schedule import NoiseSchedule
from .multistep import Levels, MultistepSampler


def _log(value: float) -> float:
    return math.log(value)


def _integral_2(t: float, b: float, c: float) -> float:
    """Antiderivative of ``(log r - log c) / (log b - log c)`` in ``r``, at ``r = t``."""
    if t == 0:
        return 0.0  # t log t -> 0
    return t * (-_log(c) + _log(t) - 1) / (_log(b) - _log(c))


def _integral_3(t: float, b: float, c: float, d: float) -> float:
    """Antiderivative of ``(log r - log c)(log r - log d) / ((log b - log c)(log b - log d))``."""
    if t == 0:
        return 0.0  # t log^2 t -> 0
    lt, lc, ld = _log(t), _log(c), _log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((_log(b) - lc) * (_log(b) - ld))


def deis_weights(levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
    """``(a, w)`` of the DEIS step from level ``i`` to ``i + 1``: ``w[k]`` weighs ``eps`` of
    level ``i - k``."""
    alpha_t, sigma_t = levels.alpha[i + 1], levels.sigma[i + 1]
    alpha_s, sigma_s = levels.alpha[i], levels.sigma[i]
    a = alpha_t / alpha_s
    if order == 1:  # -sigma_t (e^h - 1), written to stay finite at sigma_t = 0
        return a, np.array([sigma_t - alpha_t * sigma_s / alpha_s])
    rho = levels.rho
    rho_t, r0, r1 = rho[i + 1], rho[i], rho[i - 1]
    if order == 2:
        coefficients = [
            _integral_2(rho_t, r0, r1) - _integral_2(r0, r0, r1),
            _integral_2(rho_t, r1, r0) - _integral_2(r0, r1, r0),
        ]
    else:
        r2 = rho[i - 2]
        coefficients = [
            _integral_3(rho_t, r0, r1, r2) - _integral_3(r0, r0, r1, r2),
            _integral_3(rho_t, r1, r2, r0) - _integral_3(r0, r1, r2, r0),
            _integral_3(rho_t, r2, r0, r1) - _integral_3(r0, r2, r0, r1),
        ]
    return a, alpha_t * np.array(coefficients)


class DEISSampler(MultistepSampler):
    """DEIS-tAB multistep sampler of order 1-3.

    Args:
        schedule: the forward process the model was trained with.
        num_steps: number of steps (model calls); default 10.
        order: 1 (DDIM), 2 or 3.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]`` (images); off for latents.
            The history then holds the ``eps`` of the clamped ``x0`` at ``x_t`` (``False``
            for ``use_clipped_model_output``: the model's ``eps``).
        spacing: one of ``SPACINGS`` (``ddpm_lib.samplers.grids``).
        final_step: ``"denoise"`` (the last step goes to ``sigma = 0``: the last ``x0``) or
            ``"solver"`` (to the level of ``t = 0``, as diffusers' ``DEISMultistepScheduler``).
        lower_order_final: lower the order over the last steps.
        dynamic_threshold, learn_sigma, timesteps, use_clipped_model_output: see
            :class:`~ddpm_lib.samplers.base.Sampler`.
    """

    _form = "eps"
    _reads_eps = True
    default_num_steps = 10

    @keyword_only_after((
        "num_steps", "order", "prediction", "clip_denoised", "spacing", "final_step",
        "lower_order_final", "dynamic_threshold", "learn_sigma", "timesteps"
    ))
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int | None = None,
        *,
        order: int = 3,
        prediction: str = "eps",
        clip_denoised: bool = True,
        spacing: str = "logsnr",
        final_step: str = "solver",
        lower_order_final: bool = True,
        dynamic_threshold: float | None = None,
        learn_sigma: bool = False,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        use_clipped_model_output: bool = True,
    ) -> None:
        super().__init__(
            schedule, num_steps, order=order, prediction=prediction, clip_denoised=clip_denoised,
            spacing=spacing, final_step=final_step, lower_order_final=lower_order_final,
            dynamic_threshold=dynamic_threshold, learn_sigma=learn_sigma, timesteps=timesteps,
            use_clipped_model_output=use_clipped_model_output,
        )

    def _predictor_weights(self, levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
        return deis_weights(levels, i, order)
