"""The variational bound of a DDPM (Ho et al. 2020, eq. 5) in bits per dimension, and the
hybrid objective of Improved DDPM (Nichol & Dhariwal 2021): :class:`VLBLoss`,
:class:`HybridLoss`, and the closed forms they are built from, :func:`normal_kl` (the
Gaussian KL of ``L_{t-1}``) and :func:`discretized_gaussian_log_likelihood` (the decoder
``L_0``). The conventions (0-based timesteps, per-dimension units, at least float32) are those
of :mod:`ddpm_lib.losses`, which re-exports every name here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._checks import (
    check_bool,
    check_choice,
    check_floating,
    check_real,
    check_same_shape,
    check_timesteps,
)
from .losses import (
    Model,
    SimpleLoss,
    _as_tensors,
    _call_model,
    _check_output_channels,
    _compute_dtype,
    _DiffusionLoss,
    _mean_flat,
    _randn_like,
)
from .schedule import PREDICTION_TYPES, VARIANCE_TYPES, NoiseSchedule, gather

__all__ = [
    "HybridLoss",
    "VLBLoss",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
]

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")

_LN2 = math.log(2.0)
# Half the width of one of the 256 bins that cover [-1, 1] (pixel k sits at k / 127.5 - 1).
_HALF_BIN = 1.0 / 255.0
# Pixels 0 and 255 sit at -1 and +1; their bins extend to -inf and +inf.
_EDGE = 0.999


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
        self.vlb_weight = float(check_real("vlb_weight", vlb_weight, 0,
                                           expected="a finite float >= 0"))
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
