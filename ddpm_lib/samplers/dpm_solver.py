"""DPM-Solver++ 1S / 2M / 3M (Lu et al. 2022): multistep exponential integrators in ``x0`` form.

With ``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, the half log-SNR
``lambda_t = log(alpha_t / sigma_t)``, a step from level ``s`` to ``t`` with
``h = lambda_t - lambda_s`` and the model's (clipped) ``x0`` estimates ``m_0`` (at ``s``),
``m_1``, ``m_2`` (at the two previous levels, ``r_k = h_k / h`` their step ratios):

* order 1 (DDIM): ``x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m_0``
* order 2 (Algorithm 2): ``m_0`` replaced by ``m_0 + (m_0 - m_1) / (2 r_0)``
* order 3 (the 3M update, the same as diffusers' ``solver_order=3``)::

      D1_0 = (m_0 - m_1) / r_0,  D1_1 = (m_1 - m_2) / r_1
      D1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r_0 + r_1)
      x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m_0
            + alpha_t ((e^{-h} - 1) / h + 1) D1 - alpha_t ((e^{-h} - 1 + h) / h^2 - 1/2) D2

The weights are computed once per run in float64 (``ddpm_lib.samplers.multistep``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._deprecation import keyword_only_after
from ..schedule import NoiseSchedule
from .multistep import Levels, MultistepSampler


def dpm_solver_pp_weights(levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
    """``(a, w)`` of the DPM-Solver++ step from level ``i`` to ``i + 1``: ``w[k]`` weighs
    ``x0`` of level ``i - k`` (see the module docstring for the formulas)."""
    alpha_t, sigma_t = levels.alpha[i + 1], levels.sigma[i + 1]
    alpha_s, sigma_s = levels.alpha[i], levels.sigma[i]
    a = sigma_t / sigma_s
    # alpha_t (1 - e^{-h}), finite even for sigma_t = 0 (h = inf)
    phi = alpha_t - alpha_s * sigma_t / sigma_s
    if order == 1:
        return a, np.array([phi])
    lam = levels.lam
    h = lam[i + 1] - lam[i]
    r0 = (lam[i] - lam[i - 1]) / h
    if order == 2:
        return a, np.array([phi * (1 + 0.5 / r0), -phi * 0.5 / r0])
    r1 = (lam[i - 1] - lam[i - 2]) / h
    e0, e1, e2 = np.eye(3)
    d1_0, d1_1 = (e0 - e1) / r0, (e1 - e2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_1 = math.expm1(-h)
    w = (-alpha_t * phi_1 * e0 + alpha_t * (phi_1 / h + 1) * d1
         - alpha_t * ((phi_1 + h) / h**2 - 0.5) * d2)
    return a, w


class DPMSolverSampler(MultistepSampler):
    """DPM-Solver++ (Lu et al. 2022): the fast deterministic sampler, 1S / 2M / 3M.

    Args:
        schedule: the forward process the model was trained with.
        num_steps: number of steps (model calls); default 20.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]`` (images); off for latents.
            The update reads only ``x0`` and ``x_t`` (data prediction), so it is consistent
            with the clamped ``x0`` by construction (``use_clipped_model_output`` is accepted
            and changes nothing).
        spacing: one of ``SPACINGS`` (``ddpm_lib.samplers.grids``); default ``"logsnr"``
            (uniform in log-SNR, measured best from 10 calls up). ``"linspace"`` and
            ``"leading"`` give the timesteps of diffusers' ``DPMSolverMultistepScheduler``
            (``num_steps + 1`` points, the final 0 dropped); ``"logsnr"`` / ``"karras"`` those
            of its ``use_lu_lambdas`` / ``use_karras_sigmas`` (with ``final_step="denoise"``).
            ``spacing="linspace", final_step="denoise"`` is diffusers' default trajectory.
        dynamic_threshold, learn_sigma, timesteps, use_clipped_model_output: see
            :class:`~ddpm_lib.samplers.base.Sampler`.
        order: 1, 2 (2M, Algorithm 2) or 3 (3M).
        final_step: ``"solver"`` (default: a full-order step to the level of ``t = 0``; every
            call then advances the ODE) or ``"denoise"`` (the last step goes to ``sigma = 0``:
            the last call's ``x0``); see ``ddpm_lib.samplers.multistep``.
        lower_order_final: lower the order over the last steps (``min(order, N - i)``).

    The solver carries its previous ``x0`` estimates between steps; :meth:`step` remembers
    them between calls and starts afresh (first order) when a call does not follow the
    previous one.
    """

    default_num_steps = 20

    @keyword_only_after((
        "num_steps", "prediction", "clip_denoised", "spacing", "dynamic_threshold",
        "learn_sigma", "timesteps", "order", "final_step", "lower_order_final"
    ))
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int | None = None,
        *,
        prediction: str = "eps",
        clip_denoised: bool = True,
        spacing: str = "logsnr",
        dynamic_threshold: float | None = None,
        learn_sigma: bool = False,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        order: int = 2,
        final_step: str = "solver",
        lower_order_final: bool = True,
        use_clipped_model_output: bool = True,
    ) -> None:
        super().__init__(
            schedule, num_steps, order=order, prediction=prediction, clip_denoised=clip_denoised,
            spacing=spacing, final_step=final_step, lower_order_final=lower_order_final,
            dynamic_threshold=dynamic_threshold, learn_sigma=learn_sigma, timesteps=timesteps,
            use_clipped_model_output=use_clipped_model_output,
        )

    def _predictor_weights(self, levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
        return dpm_solver_pp_weights(levels, i, order)
