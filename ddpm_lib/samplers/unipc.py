"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) with a free corrector (UniC).

Data-prediction form, with the notation of ``ddpm_lib.samplers.dpm_solver``. A step of
order ``p`` from level ``s`` to ``t`` (``h = lambda_t - lambda_s``, the ``x0`` estimates
``m_0`` at ``s`` and ``m_k`` at the ``k``-th previous level, ``r_k = (lambda_{s_k} -
lambda_s) / h``, ``D_k = (m_k - m_0) / r_k``) is (Algorithm 2 of the paper, "B(h)" variants)

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m_0 - alpha_t B(h) sum_k rho_k D_k

with ``B(h) = -h`` ("bh1") or ``e^{-h} - 1`` ("bh2"), and ``rho`` solving ``R rho = b``:
``R_{jk} = r_k^(j-1)``, ``b_j = phi_{j+1}(-h) j! / B(h)`` (``rho = 1/2`` for ``p = 2``). The
corrector UniC re-does the step that produced ``x_t`` once the model has been called at
``x_t`` (that call is the next step's, so the corrector is free), with that output as one
more node: ``p`` weights ``rho^c`` solving the full ``p x p`` system (``1/2`` for ``p = 1``).
The final step (to ``sigma = 0``, no model call after it) is not corrected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._checks import check_choice
from .._deprecation import keyword_only_after
from ..schedule import NoiseSchedule
from .multistep import Levels, MultistepSampler

VARIANTS = ("bh1", "bh2")


def _unipc_system(h: float, ratios: list[float], order: int, variant: str
                  ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``(h phi_1, B(h), R, b)`` of UniPC for step ``h`` and node ratios (the last is 1)."""
    hh = -h  # data prediction
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    rks = np.array(ratios + [1.0])
    for j in range(1, order + 1):
        rows.append(rks ** (j - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, np.array(rows), np.array(b)


def unipc_predictor_weights(levels: Levels, i: int, order: int, variant: str
                            ) -> tuple[float, np.ndarray]:
    """``(a, w)`` of UniP from level ``i`` to ``i + 1``; ``w[k]`` weighs ``x0`` of level ``i - k``."""
    alpha_t, sigma_t = levels.alpha[i + 1], levels.sigma[i + 1]
    a = sigma_t / levels.sigma[i]
    if order == 1 and sigma_t == 0:
        return a, np.array([alpha_t])  # to sigma = 0: the x0 estimate
    lam = levels.lam
    h = lam[i + 1] - lam[i]
    basis = np.eye(order)
    ratios = [(lam[i - k] - lam[i]) / h for k in range(1, order)]
    h_phi_1, b_h, rows, b = _unipc_system(h, ratios, order, variant)
    w = -alpha_t * h_phi_1 * basis[0]
    if order >= 2:
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1])
        differences = [(basis[k] - basis[0]) / ratios[k - 1] for k in range(1, order)]
        w = w - alpha_t * b_h * sum(rho * d for rho, d in zip(rhos, differences))
    return a, w


def unipc_corrector_weights(levels: Levels, i: int, order: int, variant: str
                            ) -> tuple[float, np.ndarray]:
    """``(c, v)`` of UniC correcting ``x_i`` (made by an order-``order`` step from level
    ``i - 1``): ``c`` weighs ``x_{i-1}``, ``v[k]`` the ``x0`` of level ``i - k`` (``v[0]``: the
    new model output at ``x_i``)."""
    alpha_t, sigma_t = levels.alpha[i], levels.sigma[i]
    c = sigma_t / levels.sigma[i - 1]
    lam = levels.lam
    h = lam[i] - lam[i - 1]
    basis = np.eye(order + 1)  # m_i (new), m_{i-1}, ..., m_{i-order}
    ratios = [(lam[i - 1 - k] - lam[i - 1]) / h for k in range(1, order)]
    h_phi_1, b_h, rows, b = _unipc_system(h, ratios, order, variant)
    rhos = np.array([0.5]) if order == 1 else np.linalg.solve(rows, b)
    m0 = basis[1]
    correction = rhos[-1] * (basis[0] - m0)
    for k in range(1, order):
        correction = correction + rhos[k - 1] * (basis[k + 1] - m0) / ratios[k - 1]
    v = -alpha_t * h_phi_1 * m0 - alpha_t * b_h * correction
    return c, v


class UniPCSampler(MultistepSampler):
    """UniPC: UniP predictor of order 1-3 with the UniC corrector, one model call per step.

    Args:
        schedule: the forward process the model was trained with.
        num_steps: number of steps (model calls); default 10.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]`` (images); off for latents.
            Predictor and corrector read only ``x0`` and ``x_t`` (data prediction), so they are
            consistent with the clamped ``x0`` by construction (``use_clipped_model_output``
            is accepted and changes nothing).
        spacing: one of ``SPACINGS`` (``ddpm_lib.samplers.grids``).
        dynamic_threshold, learn_sigma, timesteps, use_clipped_model_output: see
            :class:`~ddpm_lib.samplers.base.Sampler`.
        order: the predictor's order, 1-3 (the corrector adds one); default 2.
        variant: ``"bh1"`` (``B(h) = h``, best for unconditional sampling in the paper) or
            ``"bh2"`` (``B(h) = e^h - 1``, guided sampling).
        final_step, lower_order_final: see :class:`~ddpm_lib.samplers.DPMSolverSampler`.

    Defaults: order 2, bh2, the log-SNR grid and a final solver step (measured best of the
    UniPC settings). With ``spacing="linspace"`` and ``final_step="denoise"`` the trajectory is
    that of diffusers' ``UniPCMultistepScheduler`` (``predict_x0=True``,
    ``lower_order_final=True``).
    """

    _uses_corrector = True
    default_num_steps = 10

    @keyword_only_after((
        "num_steps", "order", "variant", "prediction", "clip_denoised", "spacing", "final_step",
        "lower_order_final", "dynamic_threshold", "learn_sigma", "timesteps"
    ))
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int | None = None,
        *,
        order: int = 2,
        variant: str = "bh2",
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
        self.variant = check_choice("variant", variant, VARIANTS)
        super().__init__(
            schedule, num_steps, order=order, prediction=prediction, clip_denoised=clip_denoised,
            spacing=spacing, final_step=final_step, lower_order_final=lower_order_final,
            dynamic_threshold=dynamic_threshold, learn_sigma=learn_sigma, timesteps=timesteps,
            use_clipped_model_output=use_clipped_model_output,
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, variant={self.variant!r})"

    def _history(self, order: int) -> int:
        return order  # the corrector reads one more past output than the predictor

    def _predictor_weights(self, levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
        return unipc_predictor_weights(levels, i, order, self.variant)

    def _corrector_weights(self, levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
        return unipc_corrector_weights(levels, i, order, self.variant)
