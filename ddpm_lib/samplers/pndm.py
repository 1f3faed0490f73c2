"""PLMS / iPNDM (Liu et al. 2022; Zhang & Chen 2022): linear multistep on DDIM's transfer.

PNDM's pseudo linear multistep (PLMS) combines the last four ``eps`` estimates with the
Adams-Bashforth weights and moves with DDIM's transfer map ``phi`` (eq. 11 of Liu et al.):

    eps' = (55 eps_0 - 59 eps_1 + 37 eps_2 - 9 eps_3) / 24
    x_t  = phi(x_s, eps', s -> t) = alpha_t (x_s - sigma_s eps') / alpha_s + sigma_t eps'

PNDM starts the history with pseudo Runge-Kutta steps (three extra model calls per step);
the improved start of iPNDM (Zhang & Chen 2022, Sec. 5) uses the lower-order Adams-Bashforth
weights instead, ``eps_0``, ``(3 eps_0 - eps_1) / 2``, ``(23 eps_0 - 16 eps_1 + 5 eps_2) / 12``,
so that every step costs exactly one model call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._deprecation import keyword_only_after
from ..schedule import NoiseSchedule
from .multistep import Levels, MultistepSampler

#: Adams-Bashforth weights of orders 1-4 on eps_0 (newest), eps_1, ...
ADAMS_BASHFORTH = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def plms_weights(levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
    """``(a, w)`` of the PLMS step of ``order`` from level ``i`` to ``i + 1`` (``eps`` form)."""
    alpha_t, sigma_t = levels.alpha[i + 1], levels.sigma[i + 1]
    alpha_s, sigma_s = levels.alpha[i], levels.sigma[i]
    transfer = sigma_t - alpha_t * sigma_s / alpha_s  # the weight of eps' in phi
    return alpha_t / alpha_s, transfer * np.array(ADAMS_BASHFORTH[order - 1])


class PNDMSampler(MultistepSampler):
    """PLMS with the iPNDM start: Adams-Bashforth on DDIM's transfer, one model call per step.

    Args:
        schedule: the forward process the model was trained with.
        num_steps: number of steps (model calls); default 10.
        order: the Adams-Bashforth order, 1-4 (4 is PLMS).
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]`` (images); off for latents.
            The history then holds the ``eps`` of the clamped ``x0`` at ``x_t`` (``False``
            for ``use_clipped_model_output``: the model's ``eps``, diffusers-style).
        spacing: one of ``SPACINGS`` (``ddpm_lib.samplers.grids``).
        final_step: ``"denoise"`` (the last step lands on ``sigma = 0``: the last ``x0``) or
            ``"solver"`` (a full-order step to the level of ``t = 0``).
        lower_order_final: lower the order over the last steps.
        dynamic_threshold, learn_sigma, timesteps, use_clipped_model_output: see
            :class:`~ddpm_lib.samplers.base.Sampler`.

    The pseudo Runge-Kutta start of the original PNDM takes extra model calls at intermediate
    timesteps, which a one-call-per-step loop does not make; the iPNDM start replaces it.
    """

    _form = "eps"
    _reads_eps = True
    _max_order = 4
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
        order: int = 4,
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
        return plms_weights(levels, i, order)
