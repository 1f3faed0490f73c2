"""Training objectives of a DDPM and its variational bound in bits per dimension.

The DDPM objective (Ho et al. 2020, eq. 5) is the variational bound

    L = L_T + sum_{t=2}^{T} L_{t-1} + L_0
      L_T     = KL(q(x_T | x0) || N(0, I))                           (prior, no parameters)
      L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))    (Gaussian KLs)
      L_0     = -log p_theta(x0 | x_1)                               (discretized decoder)

and its reweighted form, the simple loss ``L_simple = E ||eps - eps_theta(x_t, t)||^2`` (eq. 14).
Improved DDPM (Nichol & Dhariwal 2021) trains ``L_hybrid = L_simple + lambda L_vlb`` with a
learned variance. With our 0-based timesteps the paper's ``L_{t-1}`` (KL) is the term at index
``t >= 1``, ``L_0`` (decoder) the term at index ``0``, and the prior uses ``abar_{T-1}``.

Units: every value returned here is *per dimension*: the mean over all non-batch dimensions of
a squared error (simple loss) or of a log-likelihood / KL divergence converted to bits
(variational terms; ``bits = nats / ln 2``). Values are computed per sample and reduced last.
:class:`SimpleLoss` is defined here; the bound (:class:`VLBLoss`, :class:`HybridLoss`,
:func:`normal_kl`, :func:`discretized_gaussian_log_likelihood`) in ``ddpm_lib/vlb.py``, and
importable from here too.

All computations run in at least float32 (fp16/bf16 inputs and model outputs are upcast, as in
the diffusers training scripts): the bound's terms are small differences of large numbers. The
float64 schedule tables are cast to that dtype where they are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ._checks import check_choice, check_floating, check_tensor, check_timesteps, is_real
from .schedule import PREDICTION_TYPES, NoiseSchedule

__all__ = [
    "REDUCTIONS",
    "HybridLoss",  # noqa: F822  (vlb.py, re-exported below)
    "SimpleLoss",
    "VLBLoss",  # noqa: F822  (vlb.py, re-exported below)
    "discretized_gaussian_log_likelihood",  # noqa: F822  (vlb.py, re-exported below)
    "normal_kl",  # noqa: F822  (vlb.py, re-exported below)
]

REDUCTIONS = ("mean", "sum", "none")

Model = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------- helpers
def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 unless an input is float64: the dtype every loss is computed in."""
    dtype = torch.float32
    for other in dtypes:
        if other.is_floating_point:
            dtype = torch.promote_types(dtype, other)
    return dtype


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")


def _as_tensors(name_values: dict[str, Any]) -> list[torch.Tensor]:
    """Convert floats to tensors on the device of the first tensor, in the common compute dtype."""
    reference = next((v for v in name_values.values() if isinstance(v, torch.Tensor)), None)
    if reference is None:
        raise TypeError(
            f"at least one of {', '.join(name_values)} must be a torch.Tensor; got only "
            f"{', '.join(type(v).__name__ for v in name_values.values())}"
        )
    for name, value in name_values.items():
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor; got dtype {value.dtype}")
        elif not is_real(value):
            raise TypeError(f"{name} must be a tensor or a float; got {type(value).__name__}")
    dtype = _compute_dtype(*(v.dtype for v in name_values.values() if isinstance(v, torch.Tensor)))
    tensors = [
        torch.as_tensor(v, dtype=dtype, device=reference.device) for v in name_values.values()
    ]
    try:
        torch.broadcast_shapes(*(x.shape for x in tensors))
    except RuntimeError as error:
        shapes = ", ".join(f"{n} {tuple(x.shape)}" for n, x in zip(name_values, tensors))
        raise ValueError(
            f"the arguments must broadcast against each other; got {shapes}"
        ) from error
    return tensors


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device."""
    device = x.device if generator is None else generator.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# ---------------------------------------------------------------------------- losses
class _DiffusionLoss:
    """The shared call path: draw ``t`` and ``noise``, noise ``x0``, call the model, reduce.

    Subclasses implement :meth:`from_model_output`, the per-sample value for one model output.
    """

    def __init__(self, schedule: NoiseSchedule) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        self.schedule = schedule

    def __call__(
        self,
        model: Model,
        x0: torch.Tensor,
        t: torch.Tensor | int | None = None,
        noise: torch.Tensor | None = None,
        reduction: str = "mean",
        generator: torch.Generator | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """The loss of ``model`` on clean data ``x0``.

        Args:
            model: any callable ``model(x_t, t, **model_kwargs) -> Tensor``.
            x0: clean data ``(B, ...)`` in ``[-1, 1]``.
            t: timesteps ``(B,)`` (or one int); drawn uniformly from ``[0, T-1]`` when ``None``.
            noise: the ``eps`` of ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, shaped like
                ``x0``; drawn when ``None``.
            reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for the ``(B,)``
                per-sample values.
            generator: source of the drawn ``t`` (first) and ``noise`` (second).
            **model_kwargs: passed to the model (class labels ``y=...``, ...).

        Returns:
            A scalar, or ``(B,)`` for ``reduction="none"``, in at least float32.
        """
        check_choice("reduction", reduction, REDUCTIONS)
        check_floating("x0", x0)
        batch_size = x0.shape[0]
        num_timesteps = self.schedule.num_timesteps
        if t is None:
            device = x0.device if generator is None else generator.device
            t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device=device)
        t = check_timesteps(t, num_timesteps, batch_size, x0.device)
        if noise is None:
            noise = _randn_like(x0, generator)
        x_t = self.schedule.q_sample(x0, t, noise=noise)
        model_output = _call_model(model, x_t, t, model_kwargs)
        per_sample = self.from_model_output(model_output, x0, x_t, t, noise)
        return _reduce(per_sample, reduction)

    def from_model_output(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample loss ``(B,)`` for a model output computed elsewhere (for custom loops)."""
        raise NotImplementedError


def _call_model(
    model: Model, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: dict
) -> torch.Tensor:
    if not callable(model):
        raise TypeError(
            f"model must be callable as model(x_t, t, **kwargs); got {type(model).__name__}"
        )
    return check_tensor("model output", model(x_t, t, **model_kwargs))


def _check_output_channels(
    model_output: torch.Tensor, x0: torch.Tensor, learned: bool, owner: str
) -> None:
    """Raise a ValueError that says what the model should return, and which loss fits it."""
    if x0.ndim < 2 and learned:
        raise ValueError(
            f"{owner} with a learned variance needs x0 with a channel dimension (B, C, ...); "
            f"got shape {tuple(x0.shape)}"
        )
    expected = tuple(x0.shape) if not learned else (x0.shape[0], 2 * x0.shape[1], *x0.shape[2:])
    if tuple(model_output.shape) == expected:
        return
    hint = ""
    if not learned and x0.ndim >= 2 and model_output.shape[1:2] == (2 * x0.shape[1],):
        hint = (
            "; the model also predicts its variance: train it with HybridLoss or "
            "VLBLoss(variance='learned_range')"
        )
    what = "twice the channels of x0, prediction then variance" if learned else "shaped like x0"
    raise ValueError(
        f"model output must have shape {expected} ({what}) for {owner}; "
        f"got {tuple(model_output.shape)}{hint}"
    )


def _simple_target(
    schedule: NoiseSchedule, prediction: str, x0: torch.Tensor, noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return schedule.get_v(x0, noise, t)
    raise ValueError(f"prediction must be one of {PREDICTION_TYPES}; got {prediction!r}")


class SimpleLoss(_DiffusionLoss):
    r"""The DDPM simple loss (Ho et al. 2020, eq. 14) and its x0 / v variants.

    Per sample, with :math:`x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon`:

    ========== ========================================================== ===========================================================
    prediction per-sample loss (mean over dimensions)                     min-SNR-:math:`\gamma` weight :math:`w_t`
    ========== ========================================================== ===========================================================
    ``"eps"``  :math:`\lVert \epsilon - \epsilon_\theta(x_t, t) \rVert^2` :math:`\min(\mathrm{SNR}_t, \gamma) / \mathrm{SNR}_t`
    ``"x0"``   :math:`\lVert x_0 - x_{0,\theta}(x_t, t) \rVert^2`         :math:`\min(\mathrm{SNR}_t, \gamma)`
    ``"v"``    :math:`\lVert v - v_\theta(x_t, t) \rVert^2`               :math:`\min(\mathrm{SNR}_t, \gamma) / (\mathrm{SNR}_t + 1)`
    ========== ========================================================== ===========================================================

    with :math:`v = \sqrt{\bar\alpha_t}\, \epsilon - \sqrt{1 - \bar\alpha_t}\, x_0` (Salimans & Ho
    2022) and :math:`\mathrm{SNR}_t = \bar\alpha_t / (1 - \bar\alpha_t)`. Min-SNR-:math:`\gamma`
    (Hang et al. 2023) weights the *x0* error by :math:`\min(\mathrm{SNR}_t, \gamma)`; since
    :math:`\lVert \epsilon - \hat\epsilon \rVert^2 = \mathrm{SNR}_t \lVert x_0 - \hat x_0 \rVert^2`
    and :math:`\lVert v - \hat v \rVert^2 = (\mathrm{SNR}_t + 1) \lVert x_0 - \hat x_0 \rVert^2`,
    the weights above make the three objectives the same function of the model's x0 estimate.
    The eps weight is evaluated as :math:`\min(1, \gamma / \mathrm{SNR}_t)`, which is 1 (not
    0/0) where :math:`\mathrm{SNR}_t = 0`.

    Args:
        schedule: the forward process.
        prediction: what the model predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        min_snr_gamma: ``gamma`` of min-SNR weighting (5 in the paper), or ``None`` for none.

    Called as ``loss_fn(model, x0, t=None, noise=None, reduction="mean", generator=None,
    **model_kwargs)``; see :meth:`__call__`.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        min_snr_gamma: float | None = None,
    ) -> None:
        super().__init__(schedule)
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        if min_snr_gamma is not None:
            if not is_real(min_snr_gamma):
                raise TypeError(
                    f"min_snr_gamma must be a positive float or None; got "
                    f"{type(min_snr_gamma).__name__}"
                )
            if not (math.isfinite(min_snr_gamma) and min_snr_gamma > 0):
                raise ValueError(
                    f"min_snr_gamma must be a positive finite float; got {min_snr_gamma!r}"
                )
            min_snr_gamma = float(min_snr_gamma)
        self.min_snr_gamma = min_snr_gamma

    def __repr__(self) -> str:
        return (
            f"SimpleLoss(prediction={self.prediction!r}, min_snr_gamma={self.min_snr_gamma!r}, "
            f"num_timesteps={self.schedule.num_timesteps})"
        )

    def snr_weight(self, t: torch.Tensor | int) -> torch.Tensor:
        """The min-SNR-gamma weight ``w_t`` of this objective, float64 ``(B,)`` (ones if off)."""
        t = check_timesteps(t, self.schedule.num_timesteps, torch.as_tensor(t).numel() or 1)
        if self.min_snr_gamma is None:
            return torch.ones(t.shape, dtype=torch.float64, device=t.device)
        abar = self.schedule.alphas_cumprod.to(t.device)[t]
        snr = abar / (1.0 - abar)
        gamma = self.min_snr_gamma
        if self.prediction == "eps":
            return (gamma / snr).clamp(max=1.0)  # min(SNR, gamma) / SNR, = 1 at SNR = 0
        if self.prediction == "x0":
            return snr.clamp(max=gamma)
        if self.prediction == "v":
            return snr.clamp(max=gamma) / (snr + 1.0)
        raise ValueError(f"prediction must be one of {PREDICTION_TYPES}; got {self.prediction!r}")

    def from_model_output(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample loss ``(B,)`` for ``model_output`` (shaped like ``x0``) at ``(x_t, t)``."""
        check_floating("model_output", model_output)
        _check_output_channels(model_output, x0, learned=False, owner="SimpleLoss")
        dtype = _compute_dtype(model_output.dtype, x0.dtype)
        x0, noise = x0.to(dtype), noise.to(dtype)
        target = _simple_target(self.schedule, self.prediction, x0, noise, t)
        per_sample = _mean_flat((target - model_output.to(dtype)) ** 2)  # (B,)
        if self.min_snr_gamma is not None:
            per_sample = per_sample * self.snr_weight(t).to(dtype)
        return per_sample


# ---------------------------------------------------------------------------- re-exports
# The variational bound (VLBLoss, HybridLoss and the Gaussian likelihoods) lives in vlb.py,
# which builds on the base class above: re-exported lazily (PEP 562), so that
# ``from ddpm_lib.losses import VLBLoss`` keeps working without an import cycle.
_VLB_NAMES = frozenset({
    "HybridLoss", "VLBLoss", "discretized_gaussian_log_likelihood", "normal_kl",
    "LEARNED_VARIANCE_TYPES",
})


def __getattr__(name: str) -> Any:
    if name in _VLB_NAMES:
        from . import vlb

        return getattr(vlb, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
