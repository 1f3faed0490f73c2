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

All computations run in at least float32 (fp16/bf16 inputs and model outputs are upcast, as in
the diffusers training scripts): the bound's terms are small differences of large numbers. The
float64 schedule tables are cast to that dtype where they are read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ._checks import (
    check_bool,
    check_choice,
    check_floating,
    check_same_shape,
    check_tensor,
    check_timesteps,
)
from .schedule import PREDICTION_TYPES, VARIANCE_TYPES, NoiseSchedule, gather

__all__ = [
    "REDUCTIONS",
    "HybridLoss",
    "SimpleLoss",
    "VLBLoss",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
]

REDUCTIONS = ("mean", "sum", "none")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")

_LN2 = math.log(2.0)
# Half the width of one of the 256 bins that cover [-1, 1] (pixel k sits at k / 127.5 - 1).
_HALF_BIN = 1.0 / 255.0
# Pixels 0 and 255 sit at -1 and +1; their bins extend to -inf and +inf.
_EDGE = 0.999

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
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
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


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(d))`` for ``d <= 0``, accurate at both ends (Maechler 2012)."""
    return torch.where(d > -_LN2, torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


# ---------------------------------------------------------------------------- public math
def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` elementwise, in nats.

    ``0.5 * (logvar2 - logvar1 - 1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2))``

    Written in log variances so that tiny variances (``beta-tilde_1 ~ 1e-4``) never divide or
    underflow. Arguments broadcast against each other (floats are allowed for all but one); the
    result has their broadcast shape, in at least float32.
    """
    mean1, logvar1, mean2, logvar2 = _as_tensors(
        {"mean1": mean1, "logvar1": logvar1, "mean2": mean2, "logvar2": logvar2}
    )
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor | float
) -> torch.Tensor:
    """Log-probability (nats) of 8-bit data under a Gaussian discretized to 256 bins on [-1, 1].

    DDPM eq. 13: ``p(x0 | x_1) = prod_i int_{delta_-(x0_i)}^{delta_+(x0_i)} N(x; mean_i, scale^2)``
    with bins of width ``2/255`` centred on ``x0 = k / 127.5 - 1``; the first bin extends to
    ``-inf`` and the last to ``+inf`` (edge bins open), so the 256 probabilities sum to one.

    Args:
        x0: data on the 256-level grid of ``[-1, 1]``, shape ``(B, ...)``.
        mean: the decoder's mean, shaped like ``x0``.
        log_scale: log standard deviation (``0.5 * log variance``), broadcastable to ``x0``.

    Returns:
        The elementwise log-likelihood, shaped like ``x0``, in at least float32. Computed with
        ``log Phi`` and ``log(1 - exp(.))`` in the lower tail of the Gaussian, so it stays finite
        and accurate for bins far from the mean instead of clamping at ``log(1e-12)``.
    """
    check_floating("x0", x0)
    check_floating("mean", mean)
    check_same_shape("mean", mean, "x0", x0)
    x0, mean, log_scale = _as_tensors({"x0": x0, "mean": mean, "log_scale": log_scale})
    centered = x0 - mean
    inv_scale = torch.exp(-log_scale)
    plus_in = inv_scale * (centered + _HALF_BIN)  # upper bin edge, standardised
    min_in = inv_scale * (centered - _HALF_BIN)  # lower bin edge, standardised
    # Phi(plus) - Phi(min) cancels when both are near 1; reflect those bins into the lower tail,
    # where log Phi is accurate: Phi(plus) - Phi(min) = Phi(-min) - Phi(-plus).
    log_cdf_plus = torch.special.log_ndtr(plus_in)  # first bin: (-inf, -1 + 1/255]
    log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)  # last bin: [1 - 1/255, inf)
    upper = centered > 0
    log_cdf_high = torch.where(upper, log_one_minus_cdf_min, log_cdf_plus)  # log Phi(high)
    log_cdf_low = torch.special.log_ndtr(torch.where(upper, -plus_in, min_in))
    log_bin = log_cdf_high + _log1mexp(log_cdf_low - log_cdf_high)
    return torch.where(
        x0 < -_EDGE, log_cdf_plus, torch.where(x0 > _EDGE, log_one_minus_cdf_min, log_bin)
    )


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
            if isinstance(min_snr_gamma, bool) or not isinstance(min_snr_gamma, (int, float)):
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


class VLBLoss(_DiffusionLoss):
    r"""The variational bound of a DDPM, one term ``L_t`` per sample, in bits per dimension.

    Per sample at timestep ``t`` (0-based):

    - ``t >= 1``: :math:`D_{\mathrm{KL}}(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t))` (DDPM eq. 5), both
      Gaussians, the true posterior from :meth:`NoiseSchedule.q_posterior` and the model's from
      :meth:`NoiseSchedule.p_mean_variance`;
    - ``t = 0``: :math:`-\log p_\theta(x_0 \mid x_1)` under the discretized Gaussian decoder (eq. 13, 256
      bins on ``[-1, 1]``, see :func:`discretized_gaussian_log_likelihood`).

    Each is averaged over the dimensions of one sample and divided by ``ln 2``. The prior term
    ``L_T`` has no parameters and is not included, so ``T`` times the mean over uniform ``t``
    estimates the bound without it; :meth:`bits_per_dim` computes the whole bound exactly.

    Args:
        schedule: the forward process.
        variance: the model's reverse variance: ``"fixed_small"`` (``beta-tilde_t``),
            ``"fixed_large"`` (``beta_t``), ``"learned"`` (the model outputs ``log sigma^2``) or
            ``"learned_range"`` (Improved DDPM eq. 15). For the learned types the model returns
            twice the channels of ``x0``: the prediction, then the variance values.
        prediction: what the model predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the model's x0 estimate to ``[-1, 1]`` before forming the mean.
            Leave it off for training (the clamp stops gradients); the evaluation code of DDPM
            and Improved DDPM turns it on when it reports bits/dim.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        variance: str = "fixed_small",
        prediction: str = "eps",
        clip_denoised: bool = False,
    ) -> None:
        super().__init__(schedule)
        self.variance = check_choice("variance", variance, VARIANCE_TYPES)
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        self.clip_denoised = check_bool("clip_denoised", clip_denoised)

    def __repr__(self) -> str:
        return (
            f"VLBLoss(variance={self.variance!r}, prediction={self.prediction!r}, "
            f"clip_denoised={self.clip_denoised}, num_timesteps={self.schedule.num_timesteps})"
        )

    def from_model_output(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample term ``L_t`` in bits/dim ``(B,)``: the KL for ``t >= 1``, decoder NLL at 0.

        ``noise`` is not needed (the true posterior depends on ``x0`` and ``x_t`` only).
        """
        return self._term(model_output, x0, x_t, t, "per_sample")

    def _term(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        which: str,
    ) -> torch.Tensor:
        """``which``: "kl", "decoder", or "per_sample" (chosen by ``t`` with a ``where``).

        :meth:`bits_per_dim` knows its one timestep in Python and asks for that term alone;
        training batches mix timesteps and compute both, selected without host sync.
        """
        check_floating("model_output", model_output)
        check_floating("x0", x0)
        check_same_shape("x_t", x_t, "x0", x0)
        learned = self.variance in LEARNED_VARIANCE_TYPES
        _check_output_channels(model_output, x0, learned=learned, owner=repr(self))
        dtype = _compute_dtype(model_output.dtype, x0.dtype)
        x0, x_t = x0.to(dtype), x_t.to(dtype)
        t = check_timesteps(t, self.schedule.num_timesteps, x0.shape[0], x0.device)
        model = self.schedule.p_mean_variance(
            model_output.to(dtype),
            x_t,
            t,
            prediction=self.prediction,
            variance=self.variance,
            clip_denoised=self.clip_denoised,
        )
        if which in ("kl", "per_sample"):
            true_mean, _, true_log_variance = self.schedule.q_posterior(x0, x_t, t)
            kl = normal_kl(true_mean, true_log_variance, model.mean, model.log_variance)
            kl = _mean_flat(kl) / _LN2  # (B,) bits/dim
            if which == "kl":
                return kl
        log_likelihood = discretized_gaussian_log_likelihood(
            x0, model.mean, 0.5 * model.log_variance
        )
        decoder_nll = -_mean_flat(log_likelihood) / _LN2  # (B,) bits/dim
        if which == "decoder":
            return decoder_nll
        # Both branches are finite everywhere (the t = 0 log variance is clipped), so the
        # unselected one never sends NaN gradients through the where.
        return torch.where(t == 0, decoder_nll, kl)

    def prior_bits_per_dim(self, x0: torch.Tensor) -> torch.Tensor:
        """The prior term ``L_T = KL(q(x_T | x0) || N(0, I))`` in bits/dim, ``(B,)``.

        ``q(x_T | x0) = N(sqrt(abar_{T-1}) x0, (1 - abar_{T-1}) I)`` with 0-based indices. It is
        about 1e-5 bits/dim for the DDPM linear schedule, and 0 for a zero terminal SNR one.
        """
        check_floating("x0", x0)
        dtype = _compute_dtype(x0.dtype)
        x0 = x0.to(dtype)
        last = torch.full((x0.shape[0],), self.schedule.num_timesteps - 1, device=x0.device)
        mean = gather(self.schedule.sqrt_alphas_cumprod, last, x0) * x0
        log_variance = gather(self.schedule.log_one_minus_alphas_cumprod, last, x0)
        return _mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / _LN2

    @torch.no_grad()
    def bits_per_dim(
        self,
        model: Model,
        x0: torch.Tensor,
        *,
        progress: bool = False,
        return_terms: bool = False,
        generator: torch.Generator | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The whole variational bound on ``-log p(x0)`` in bits/dim, every term computed.

        ``L = L_T + sum_{t=1}^{T-1} L_t + L_0`` (0-based ``t``): the prior, the KL at every
        timestep and the decoder, with one model call per timestep for the whole batch (``T``
        calls). This is the NLL that papers report (DDPM: <= 3.75 bits/dim on CIFAR-10).
        Gradients are not tracked; put the model in ``eval()`` mode yourself.

        Args:
            model: ``model(x_t, t, **model_kwargs)``, as for training.
            x0: data ``(B, ...)`` on the 256-level grid of ``[-1, 1]``.
            progress: show a tqdm progress bar over the ``T`` timesteps.
            return_terms: return every term instead of only the total.
            generator: source of the noise drawn for each timestep (``T`` draws, from
                ``t = T-1`` down to 0).
            **model_kwargs: passed to the model.

        Returns:
            ``(B,)`` bits/dim per sample (float32, or float64 for float64 input); with
            ``return_terms=True`` a dict with ``"total"`` ``(B,)``, ``"prior"`` ``(B,)``,
            ``"decoder"`` ``(B,)`` and ``"terms"`` ``(B, T)`` (``terms[:, 0]`` the decoder,
            ``terms[:, t]`` the KL at ``t``), all in bits/dim, with
            ``total = prior + terms.sum(1)``.
        """
        check_floating("x0", x0)
        if x0.numel() and (float(x0.min()) < -1.0 or float(x0.max()) > 1.0):
            raise ValueError(
                f"x0 must lie in [-1, 1] (8-bit data scaled to the decoder's 256 bins); got "
                f"values in [{float(x0.min()):.4g}, {float(x0.max()):.4g}]"
            )
        batch_size, num_timesteps = x0.shape[0], self.schedule.num_timesteps
        dtype = _compute_dtype(x0.dtype)
        terms = torch.empty((batch_size, num_timesteps), dtype=dtype, device=x0.device)
        steps = range(num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="bits/dim", total=num_timesteps, unit="step")
        for step in steps:
            t = torch.full((batch_size,), step, dtype=torch.long, device=x0.device)
            noise = _randn_like(x0, generator)
            x_t = self.schedule.q_sample(x0, t, noise=noise)
            model_output = _call_model(model, x_t, t, model_kwargs)
            which = "decoder" if step == 0 else "kl"
            terms[:, step] = self._term(model_output, x0, x_t, t, which)
        prior = self.prior_bits_per_dim(x0)
        total = prior + terms.sum(dim=1)
        if return_terms:
            return {"total": total, "prior": prior, "decoder": terms[:, 0].clone(), "terms": terms}
        return total


class HybridLoss(_DiffusionLoss):
    """Improved DDPM's hybrid objective for a model that learns its variance.

    Per sample: ``L_simple + vlb_weight * T * L_t``, where ``L_simple`` is :class:`SimpleLoss`
    on the prediction half of the output and ``L_t`` the :class:`VLBLoss` term (bits/dim) with
    the *mean's gradient stopped*: the prediction half enters the VLB term detached, so the VLB
    trains only the variance and ``L_simple`` alone trains the mean (Nichol & Dhariwal 2021,
    Sec. 3.1). ``T * L_t`` is the one-sample estimate of ``L_vlb = sum_t L_t``, so the default
    ``vlb_weight = 1e-3`` is the paper's ``lambda = 0.001`` (for ``T = 1000`` it adds ``L_t``
    itself, as improved-diffusion's code does).

    Args:
        schedule: the forward process.
        vlb_weight: ``lambda``, >= 0.
        prediction: what the first half of the output predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        variance: ``"learned_range"`` (Improved DDPM eq. 15, the default) or ``"learned"``.

    The model returns twice the channels of ``x0``: the prediction, then the variance values.
    :meth:`terms` gives the two parts separately, for logging.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        vlb_weight: float = 1e-3,
        prediction: str = "eps",
        variance: str = "learned_range",
    ) -> None:
        super().__init__(schedule)
        if isinstance(vlb_weight, bool) or not isinstance(vlb_weight, (int, float)):
            raise TypeError(f"vlb_weight must be a float; got {type(vlb_weight).__name__}")
        if not (math.isfinite(vlb_weight) and vlb_weight >= 0):
            raise ValueError(f"vlb_weight must be a finite float >= 0; got {vlb_weight!r}")
        self.vlb_weight = float(vlb_weight)
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        self.variance = check_choice("variance", variance, LEARNED_VARIANCE_TYPES)
        self.simple = SimpleLoss(schedule, prediction=prediction)
        self.vlb = VLBLoss(schedule, variance=variance, prediction=prediction)

    def __repr__(self) -> str:
        return (
            f"HybridLoss(vlb_weight={self.vlb_weight!r}, prediction={self.prediction!r}, "
            f"variance={self.variance!r}, num_timesteps={self.schedule.num_timesteps})"
        )

    def terms(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``{"simple": (B,), "vlb": (B,) bits/dim, "loss": (B,)}`` for one model output."""
        check_floating("model_output", model_output)
        _check_output_channels(model_output, x0, learned=True, owner=repr(self))
        prediction, variance_values = model_output.chunk(2, dim=1)  # (B, C, ...) each
        simple = self.simple.from_model_output(prediction, x0, x_t, t, noise)
        frozen = torch.cat([prediction.detach(), variance_values], dim=1)  # stop-grad on mean
        vlb = self.vlb.from_model_output(frozen, x0, x_t, t)
        loss = simple + (self.vlb_weight * self.schedule.num_timesteps) * vlb
        return {"simple": simple, "vlb": vlb, "loss": loss}

    def from_model_output(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample hybrid loss ``(B,)``; see :meth:`terms`."""
        return self.terms(model_output, x0, x_t, t, noise)["loss"]
