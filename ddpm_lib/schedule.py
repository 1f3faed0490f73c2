r"""The forward (noising) process of a DDPM and the closed forms derived from it.

Notation (Ho et al. 2020, with 0-based timesteps ``t`` in ``[0, T-1]``; the paper's step
``t + 1``):

==========================  ================================================================
``betas[t]``                :math:`\beta_t`, the variance of :math:`q(x_t \mid x_{t-1})`
``alphas[t]``               :math:`\alpha_t = 1 - \beta_t`
``alphas_cumprod[t]``       :math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`
``alphas_cumprod_prev[t]``  :math:`\bar\alpha_{t-1}`, with :math:`\bar\alpha_{-1} = 1`
``posterior_variance[t]``   :math:`\tilde\beta_t = \beta_t (1 - \bar\alpha_{t-1}) / (1 - \bar\alpha_t)` (eq. 7)
``posterior_mean_coef1``    :math:`\sqrt{\bar\alpha_{t-1}}\, \beta_t / (1 - \bar\alpha_t)` (eq. 7)
``posterior_mean_coef2``    :math:`\sqrt{\alpha_t}\, (1 - \bar\alpha_{t-1}) / (1 - \bar\alpha_t)` (eq. 7)
``sigma[t]``                :math:`\sigma_t = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}`, the noise level of
                            :math:`x_t / \sqrt{\bar\alpha_t} = x_0 + \sigma_t \epsilon` (Karras et al. 2022)
==========================  ================================================================

Every array is computed once in float64 and cast to the input's dtype only when gathered,
through :func:`gather`, which never synchronises with the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from ._checks import (
    check_choice,
    check_floating,
    check_int,
    check_same_shape,
    check_timesteps,
)

PREDICTION_TYPES = ("eps", "x0", "v")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")


def default_variance(learn_sigma: bool, variance: str | None = None) -> str:
    """The reverse variance a model is sampled with: ``variance`` when given, else
    ``"learned_range"`` (Improved DDPM eq. 15) for a model that outputs its variance
    (``learn_sigma``) and ``"fixed_small"`` (DDPM's beta-tilde) otherwise."""
    if variance is not None:
        return check_choice("variance", variance, VARIANCE_TYPES)
    return "learned_range" if learn_sigma else "fixed_small"

_ARRAY_NAMES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sigma",
    "alphas_cumprod_next",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "log_betas",
    "fixed_large_variance",
    "fixed_large_log_variance",
)


class PosteriorPrediction(NamedTuple):
    """The model's reverse step ``p(x_{t-1} | x_t) = N(mean, variance)`` and what it came from.

    ``mean``, ``x0`` and ``eps`` are shaped like ``x_t``; ``variance`` and ``log_variance`` are
    ``(B, 1, ..., 1)`` for fixed variances and shaped like ``x_t`` for learned ones.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor


def gather(array: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Read ``array[t]`` and shape it to broadcast against ``like``.

    ``array`` is a float64 schedule table ``(T,)`` and ``t`` a ``(B,)`` long tensor. The values
    are gathered in float64 and then cast to ``like.dtype`` on ``like.device``; the result has
    shape ``(B, 1, ..., 1)`` with ``like.ndim`` dimensions. No host synchronisation happens.
    """
    values = array.to(t.device)[t].to(device=like.device, dtype=like.dtype)
    return values.reshape(values.shape[0], *((1,) * (like.ndim - 1)))


def linear_combination(a: Any, x: torch.Tensor, b: Any, y: torch.Tensor) -> torch.Tensor:
    """``a x + b y`` with coefficients that are python floats or tensors broadcasting against ``x``.

    With python floats it takes two passes over memory instead of three (``torch.add``'s
    ``alpha``): the samplers' eager steps read python floats from their tables.
    """
    if isinstance(a, float) and isinstance(b, float):
        return torch.add(x if a == 1.0 else x * a, y, alpha=b)
    return a * x + b * y


def x0_eps_from_prediction(
    prediction: str,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha: torch.Tensor | float,
    sigma: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` from an ``eps``, ``x0`` or ``v`` prediction, where ``x_t = alpha x0 + sigma eps``.

    ``alpha = sqrt(abar_t)`` and ``sigma = sqrt(1 - abar_t)`` are python floats or tensors that
    broadcast against ``x_t`` (the samplers read them from per-step tables, with no gather):

    * eps: ``x0 = (x_t - sigma eps) / alpha``
    * x0:  ``eps = (x_t - alpha x0) / sigma``  (``eps = x_t`` at zero terminal SNR)
    * v:   ``x0 = alpha x_t - sigma v``, ``eps = sigma x_t + alpha v`` (Salimans & Ho 2022)

    The divisions come last: where ``abar_t`` is tiny (the end of the cosine schedule,
    ``1 / sqrt(abar) ~ 2e4``) ``x_t / alpha - (sigma / alpha) eps`` overflows in fp16 and cancels
    catastrophically in bf16, while ``x_t - sigma eps`` is a benign difference.
    """
    if prediction == "eps":
        return linear_combination(1.0, x_t, -sigma, model_output) / alpha, model_output
    if prediction == "x0":
        return model_output, linear_combination(1.0, x_t, -alpha, model_output) / sigma
    if prediction == "v":
        return (
            linear_combination(alpha, x_t, -sigma, model_output),
            linear_combination(sigma, x_t, alpha, model_output),
        )
    raise ValueError(f"prediction must be one of {PREDICTION_TYPES}; got {prediction!r}")


class NoiseSchedule:
    """Variance schedule ``beta_1..beta_T`` of the forward process and its derived arrays.

    Args:
        betas: any 1-D sequence of ``T`` values in ``(0, 1)``. The last value may be exactly 1
            (a zero terminal SNR schedule, see :meth:`rescale_zero_terminal_snr`).

    All derived arrays (see the module docstring) are float64 tensors of shape ``(T,)`` on
    :attr:`device`. Build the usual schedules with :meth:`linear`, :meth:`cosine`,
    :meth:`scaled_linear` and :meth:`sigmoid`.
    """

    def __init__(self, betas: Sequence[float] | torch.Tensor) -> None:
        if isinstance(betas, torch.Tensor):
            betas = betas.detach().to(device="cpu", dtype=torch.float64)
        else:
            try:
                betas = torch.as_tensor(betas, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as error:
                raise TypeError(
                    f"betas must be a 1-D sequence of floats; got {type(betas).__name__}"
                ) from error
        if betas.ndim != 1:
            raise ValueError(f"betas must be 1-D; got shape {tuple(betas.shape)}")
        if betas.numel() == 0:
            raise ValueError("betas must not be empty; got 0 values")
        inside = (betas > 0) & (betas < 1)
        inside[-1] = (betas[-1] > 0) & (betas[-1] <= 1)
        if not bool(inside.all()):
            bad = int((~inside).nonzero()[0])
            raise ValueError(
                f"betas must lie in (0, 1) (only the last may equal 1); got betas[{bad}] = "
                f"{float(betas[bad])!r}"
            )
        self._compute(betas)

    # ------------------------------------------------------------------ construction
    def _compute(self, betas: torch.Tensor) -> None:
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        one = betas.new_ones(1)
        self.betas = betas
        self.alphas = alphas
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = torch.cat([one, alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([alphas_cumprod[1:], betas.new_zeros(1)])
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = alphas_cumprod.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / alphas_cumprod - 1.0).sqrt()
        # the noise level of the EDM view (ddpm_lib.noise_levels): inf where abar_t = 0
        self.sigma = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
        # beta-tilde_t (eq. 7); 0 at t = 0, where the reverse step is deterministic.
        posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_variance = posterior_variance
        # log(0) at t = 0 is replaced by the t = 1 value, as in the DDPM code.
        if len(betas) > 1:
            clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        else:
            clipped = betas.clone()
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod)
        )
        self.log_betas = betas.log()
        # "fixed_large" uses sigma_t^2 = beta_t, with beta-tilde_1 at t = 0 so that the decoder
        # keeps a sensible variance (as in the DDPM and Improved DDPM code).
        self.fixed_large_variance = torch.cat([clipped[:1], betas[1:]])
        self.fixed_large_log_variance = self.fixed_large_variance.log()

    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """The DDPM paper's schedule: betas linear from ``beta_start`` to ``beta_end``."""
        num_timesteps = check_int("num_timesteps", num_timesteps, 1)
        _check_beta_range(beta_start, beta_end)
        return cls(torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64))

    @classmethod
    def scaled_linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> NoiseSchedule:
        """Linear in ``sqrt(beta)``, the latent-diffusion / Stable Diffusion schedule."""
        num_timesteps = check_int("num_timesteps", num_timesteps, 1)
        _check_beta_range(beta_start, beta_end)
        sqrt_betas = torch.linspace(
            math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64
        )
        return cls(sqrt_betas**2)

    @classmethod
    def sigmoid(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """Betas on a sigmoid from ``beta_start`` to ``beta_end`` (GeoDiff; diffusers' "sigmoid")."""
        num_timesteps = check_int("num_timesteps", num_timesteps, 1)
        _check_beta_range(beta_start, beta_end)
        ramp = torch.sigmoid(torch.linspace(-6.0, 6.0, num_timesteps, dtype=torch.float64))
        return cls(ramp * (beta_end - beta_start) + beta_start)

    @classmethod
    def cosine(
        cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
    ) -> NoiseSchedule:
        r"""Nichol & Dhariwal (2021) eq. 17: :math:`\bar\alpha(t) = \cos^2\left(\frac{t/T + s}{1 + s} \cdot \frac{\pi}{2}\right)`.

        :math:`\beta_t = 1 - \bar\alpha(t+1) / \bar\alpha(t)`, clipped at ``max_beta`` to avoid
        the singularity at the end of the chain.
        """
        num_timesteps = check_int("num_timesteps", num_timesteps, 1)
        if not s >= 0:
            raise ValueError(f"s must be >= 0; got {s!r}")
        if not 0 < max_beta < 1:
            raise ValueError(f"max_beta must be in (0, 1); got {max_beta!r}")
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
        return cls(betas.clamp(max=max_beta))

    def rescale_zero_terminal_snr(self) -> NoiseSchedule:
        """Return a new schedule whose last step has zero SNR (Lin et al. 2024, Algorithm 1).

        ``sqrt(abar)`` is shifted so that its last value is 0 and scaled so that its first value
        is unchanged. The last beta becomes 1: pair it with v- or x0-prediction, since an eps
        model cannot recover x0 from pure noise.
        """
        if self.num_timesteps < 2:
            raise ValueError(
                "rescale_zero_terminal_snr needs num_timesteps >= 2 (the first and last steps "
                f"must differ); got num_timesteps = {self.num_timesteps}"
            )
        sqrt_abar = self.sqrt_alphas_cumprod.clone()
        first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
        sqrt_abar = (sqrt_abar - last) * first / (first - last)
        alphas_cumprod = sqrt_abar**2
        alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
        # The constructor builds its tables on the CPU; keep the new schedule on our device.
        return type(self)(1.0 - alphas).to(self.device)

    # ------------------------------------------------------------------ properties
    @property
    def num_timesteps(self) -> int:
        """``T``, the number of diffusion steps."""
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        """Device that holds the float64 tables."""
        return self.betas.device

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_timesteps={self.num_timesteps}, "
            f"beta_first={float(self.betas[0]):.4g}, beta_last={float(self.betas[-1]):.4g})"
        )

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Move every table to ``device`` (in place, kept in float64) and return ``self``."""
        for name in _ARRAY_NAMES:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; :meth:`from_dict` rebuilds the same schedule."""
        return {"betas": self.betas.cpu().tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseSchedule:
        """Rebuild a schedule written by :meth:`to_dict`."""
        if not isinstance(data, dict) or "betas" not in data:
            raise ValueError(f"data must be a dict with a 'betas' list; got {data!r:.80}")
        return cls(data["betas"])

    # ------------------------------------------------------------------ forward process
    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        r"""Signal-to-noise ratio :math:`\bar\alpha_t / (1 - \bar\alpha_t)`, float64, shaped like ``t``."""
        t_tensor = torch.as_tensor(t)
        t_checked = check_timesteps(t_tensor, self.num_timesteps, max(t_tensor.numel(), 1))
        abar = self.alphas_cumprod.to(t_checked.device)[t_checked]
        return (abar / (1.0 - abar)).reshape(t_tensor.shape)

    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | int,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Draw :math:`x_t \sim q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I)` (eq. 4).

        Args:
            x0: clean data ``(B, ...)``.
            t: timesteps ``(B,)`` (or one int for the whole batch).
            noise: the standard normal noise ``eps``, shaped like ``x0``; drawn when ``None``.
            generator: source of randomness for the drawn noise.
        """
        check_floating("x0", x0)
        t = check_timesteps(t, self.num_timesteps, x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        else:
            check_floating("noise", noise)
            check_same_shape("noise", noise, "x0", x0)
        return (
            gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""The true posterior :math:`q(x_{t-1} \mid x_t, x_0) = \mathcal{N}(\tilde\mu_t, \tilde\beta_t I)` (eqs. 6-7).

        Returns ``(mean, variance, log_variance)``: the mean shaped like ``x_t``, the variance
        and its (clipped) log shaped ``(B, 1, ..., 1)`` to broadcast against it.
        """
        check_floating("x0", x0)
        check_floating("x_t", x_t)
        check_same_shape("x0", x0, "x_t", x_t)
        t = check_timesteps(t, self.num_timesteps, x_t.shape[0], x_t.device)
        mean = self._posterior_mean(x0, x_t, t)
        variance = gather(self.posterior_variance, t, x_t)
        log_variance = gather(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ conversions
    def _scales(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(abar_t), sqrt(1 - abar_t))`` shaped ``(B, 1, ..., 1)`` like ``like``."""
        return (
            gather(self.sqrt_alphas_cumprod, t, like),
            gather(self.sqrt_one_minus_alphas_cumprod, t, like),
        )

    def predict_x0_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\, \epsilon) / \sqrt{\bar\alpha_t}` (inverse of eq. 4)."""
        return self._split(eps, x_t, t, "eps", "eps")[0]

    def predict_eps_from_x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\epsilon = (x_t - \sqrt{\bar\alpha_t}\, x_0) / \sqrt{1 - \bar\alpha_t}`; :math:`\epsilon = x_t` where :math:`\bar\alpha_t = 0`."""
        return self._split(x0, x_t, t, "x0", "x0")[1]

    def predict_x0_from_v(
        self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`x_0 = \sqrt{\bar\alpha_t}\, x_t - \sqrt{1 - \bar\alpha_t}\, v`."""
        return self._split(v, x_t, t, "v", "v")[0]

    def predict_eps_from_v(
        self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\epsilon = \sqrt{1 - \bar\alpha_t}\, x_t + \sqrt{\bar\alpha_t}\, v`."""
        return self._split(v, x_t, t, "v", "v")[1]

    def get_v(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        r"""The v-prediction target :math:`v = \sqrt{\bar\alpha_t}\, \epsilon - \sqrt{1 - \bar\alpha_t}\, x_0` (Salimans & Ho 2022)."""
        t = self._check_pair(x0, t, "noise", noise, x_name="x0")
        alpha, sigma = self._scales(t, x0)
        return linear_combination(alpha, noise, -sigma, x0)

    def split_prediction(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        prediction: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn a model's ``eps``, ``x0`` or ``v`` prediction into the pair ``(x0, eps)``.

        The timestep form of :func:`x0_eps_from_prediction`, which holds the formulas.
        """
        check_choice("prediction", prediction, PREDICTION_TYPES)
        return self._split(model_output, x_t, t, prediction, "model_output")

    def _split(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        prediction: str,
        output_name: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self._check_pair(x_t, t, output_name, model_output)
        alpha, sigma = self._scales(t, x_t)
        return x0_eps_from_prediction(prediction, model_output, x_t, alpha, sigma)

    def score(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        prediction: str = "eps",
    ) -> torch.Tensor:
        """The model's score ``grad_x log q_t(x_t) = -eps / sqrt(1 - abar_t)`` (Song et al. 2021).

        Denoising score matching (Vincent 2011): the optimal noise predictor is
        ``E[eps | x_t] = -sqrt(1 - abar_t) grad log q_t(x_t)``, so a model trained with the
        simple loss is a score model up to this scale. ``model_output`` is an ``eps``, ``x0``
        or ``v`` prediction (``prediction``), shaped like ``x_t``; the result is shaped like
        ``x_t``. Undefined where ``abar_t = 1``.
        """
        check_choice("prediction", prediction, PREDICTION_TYPES)
        t = self._check_pair(x_t, t, "model_output", model_output)
        alpha, sigma = self._scales(t, x_t)
        eps = x0_eps_from_prediction(prediction, model_output, x_t, alpha, sigma)[1]
        return -eps / sigma

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        *,
        prediction: str = "eps",
        variance: str = "fixed_small",
        clip_denoised: bool = False,
    ) -> PosteriorPrediction:
        """The model's Gaussian reverse step ``p_theta(x_{t-1} | x_t)`` (eq. 1 and Sec. 3.2).

        Args:
            model_output: the network's output for ``(x_t, t)``; for ``variance="learned"`` or
                ``"learned_range"`` it has twice the channels of ``x_t`` (dim 1): the prediction,
                then the variance values.
            prediction: what the first half predicts: ``"eps"``, ``"x0"`` or ``"v"``.
            variance: ``"fixed_small"`` (beta-tilde_t), ``"fixed_large"`` (beta_t),
                ``"learned"`` (the output is log sigma^2) or ``"learned_range"`` (Improved DDPM
                eq. 15: the output v in [-1, 1] interpolates log beta_t and log beta-tilde_t).
            clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]`` before forming the mean.

        The mean is the posterior mean ``mu-tilde(x_t, x0_hat)`` of eq. 7. ``eps`` is the
        model's noise estimate (before any clipping of ``x0``).
        """
        check_choice("prediction", prediction, PREDICTION_TYPES)
        check_choice("variance", variance, VARIANCE_TYPES)
        check_floating("model_output", model_output)
        check_floating("x_t", x_t)
        t = check_timesteps(t, self.num_timesteps, x_t.shape[0], x_t.device)
        if variance in ("learned", "learned_range"):
            expected = (x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:]) if x_t.ndim > 1 else None
            if expected is None or tuple(model_output.shape) != expected:
                raise ValueError(
                    f"model_output must have shape {expected} (twice the channels of x_t) for "
                    f"variance={variance!r}; got {tuple(model_output.shape)}"
                )
            model_output, variance_values = model_output.chunk(2, dim=1)
            if variance == "learned":
                log_variance = variance_values
            else:
                fraction = (variance_values + 1) / 2
                log_variance = fraction * gather(self.log_betas, t, x_t) + (1 - fraction) * gather(
                    self.posterior_log_variance_clipped, t, x_t
                )
            model_variance = log_variance.exp()
        elif variance == "fixed_small":
            model_variance = gather(self.posterior_variance, t, x_t)
            log_variance = gather(self.posterior_log_variance_clipped, t, x_t)
        else:
            model_variance = gather(self.fixed_large_variance, t, x_t)
            log_variance = gather(self.fixed_large_log_variance, t, x_t)
        check_same_shape("model_output", model_output, "x_t", x_t)
        alpha, sigma = self._scales(t, x_t)
        x0, eps = x0_eps_from_prediction(prediction, model_output, x_t, alpha, sigma)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = self._posterior_mean(x0, x_t, t)
        return PosteriorPrediction(mean, model_variance, log_variance, x0, eps)

    def _posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``mu-tilde_t(x_t, x0) = coef1_t x0 + coef2_t x_t`` (eq. 7), for checked ``t``."""
        return linear_combination(
            gather(self.posterior_mean_coef1, t, x_t), x0, gather(self.posterior_mean_coef2, t, x_t), x_t
        )

    def _check_pair(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        other_name: str,
        other: torch.Tensor,
        x_name: str = "x_t",
    ) -> torch.Tensor:
        check_floating(x_name, x_t)
        check_floating(other_name, other)
        check_same_shape(other_name, other, x_name, x_t)
        return check_timesteps(t, self.num_timesteps, x_t.shape[0], x_t.device)


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1); got {value!r}")
