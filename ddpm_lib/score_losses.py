r"""Score-matching losses beside the DDPM losses: NCSN's denoising score matching and EDM's loss.

Both follow the library's loss contract, ``loss_fn(model, x0, t=None, noise=None,
reduction="mean", generator=None, **model_kwargs)``: per-sample values (the mean over
dimensions) and then the reduction. Neither has a ``schedule`` or ``num_timesteps``, so the
:class:`~ddpm_lib.training.Trainer` hands them its per-rank loss ``generator`` and they draw
their own noise levels and noise from it (exact resume included). In one notation, with
:math:`x = x_0 + \sigma\,\epsilon` (EDM eq. 2 and Table 1):

* :class:`DenoisingScoreMatchingLoss`: :math:`\sigma` uniform over a VE ladder, per sample
  :math:`\sigma^2 \lVert s_\theta(x, \sigma) + \epsilon/\sigma \rVert^2`;
* :class:`EDMLoss`: :math:`\ln\sigma \sim N(P_{mean}, P_{std}^2)`, per sample
  :math:`\lambda(\sigma) \lVert D_\theta(x; \sigma) - x_0 \rVert^2`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._checks import check_choice, check_floating, check_real, check_same_shape, check_tensor
from .losses import REDUCTIONS, _mean_flat, _randn_like, _reduce
from .noise_levels import VENoiseLevels

__all__ = ["DenoisingScoreMatchingLoss", "EDMLoss"]

Model = Callable[..., torch.Tensor]


def _column(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(device=x.device, dtype=x.dtype).reshape(x.shape[0], *((1,) * (x.ndim - 1)))


def _noise(x0: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    if noise is None:
        return _randn_like(x0, generator)
    check_same_shape("noise", check_tensor("noise", noise), "x0", x0)
    return noise.to(x0.dtype)


class DenoisingScoreMatchingLoss:
    r"""NCSN's denoising score matching over a ladder of levels (Song & Ermon 2019, eqs. 5-6).

    A level index :math:`i` is drawn uniformly from the ladder, :math:`\tilde x = x_0 +
    \sigma_i z` and the score network is regressed on the score of the perturbation kernel,
    :math:`-(\tilde x - x_0)/\sigma_i^2 = -z/\sigma_i`, weighted by :math:`\lambda(\sigma) =
    \sigma^2`. Per sample (mean over dimensions; NCSN's factor 1/2 is left out, as in
    :class:`~ddpm_lib.SimpleLoss`):

    .. math:: \ell = \sigma_i^2 \,\big\lVert s_\theta(\tilde x, c_i) + z/\sigma_i \big\rVert^2
              = \big\lVert \sigma_i s_\theta(\tilde x, c_i) + z \big\rVert^2

    minimised by the score of the perturbed data, :math:`s^*(\tilde x;\sigma) =
    \nabla \log p_\sigma(\tilde x)`; for data :math:`N(\mu, s^2)` its value is
    :math:`s^2/(s^2 + \sigma^2)` per dimension.

    Args:
        levels: the :class:`~ddpm_lib.noise_levels.VENoiseLevels` ladder.
        conditioning: what the network is given as ``c_i``: ``"sigma"`` (the float ``(B,)``
            level, as the VE SDE's NCSN++) or ``"index"`` (the long ``(B,)`` index ``i``, as
            NCSN's noise-conditional network).
    """

    def __init__(self, levels: VENoiseLevels, conditioning: str = "sigma") -> None:
        if not isinstance(levels, VENoiseLevels):
            raise TypeError(f"levels must be a VENoiseLevels; got {type(levels).__name__}")
        self.levels = levels
        self.conditioning = check_choice("conditioning", conditioning, ("sigma", "index"))

    def __repr__(self) -> str:
        return f"DenoisingScoreMatchingLoss({self.levels!r}, conditioning={self.conditioning!r})"

    def __call__(
        self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None, reduction: str = "mean",
        generator: torch.Generator | None = None, **model_kwargs: Any,
    ) -> torch.Tensor:
        """The loss of the score network ``model(x, c, **model_kwargs)`` on clean ``x0`` ``(B, ...)``.

        ``t`` is the ``(B,)`` long ladder index (drawn first from ``generator`` when ``None``),
        ``noise`` the ``z`` shaped like ``x0`` (drawn second). Returns a scalar, or ``(B,)``
        for ``reduction="none"``.
        """
        check_choice("reduction", reduction, REDUCTIONS)
        check_floating("x0", x0)
        batch, num_levels = x0.shape[0], self.levels.num_levels
        if t is None:
            device = x0.device if generator is None else generator.device
            t = torch.randint(0, num_levels, (batch,), generator=generator, device=device)
        t = check_tensor("t", t).to(x0.device)
        if t.dtype.is_floating_point or t.shape != (batch,):
            raise ValueError(f"t must be a ({batch},) integer tensor of ladder indices; "
                             f"got dtype {t.dtype}, shape {tuple(t.shape)}")
        if not torch.compiler.is_compiling() and bool(((t < 0) | (t >= num_levels)).any()):
            raise ValueError(f"t must be ladder indices in [0, {num_levels - 1}]")
        z = _noise(x0, noise, generator)
        sigma = self.levels.sigmas.to(x0.device)[t]  # (B,) float64
        x_noisy = x0 + _column(sigma, x0) * z
        cond = t if self.conditioning == "index" else sigma.to(x0.dtype)
        score = check_tensor("model output", model(x_noisy, cond, **model_kwargs))
        check_same_shape("model output", score, "x0", x0)
        per_sample = _mean_flat((_column(sigma, x0) * score + z) ** 2)
        return _reduce(per_sample, reduction)


class EDMLoss:
    r"""EDM's training loss (Karras et al. 2022, eq. 8 and Table 1, "Training").

    :math:`\ln\sigma \sim N(P_{mean}, P_{std}^2)`, :math:`x = x_0 + \sigma\epsilon` and, per
    sample (mean over dimensions),

    .. math:: \ell = \lambda(\sigma)\,\lVert D_\theta(x;\sigma) - x_0 \rVert^2,\qquad
              \lambda(\sigma) = \frac{\sigma^2 + \sigma_{data}^2}{(\sigma\,\sigma_{data})^2}

    on a denoiser ``model(x, sigma, **model_kwargs)``, normally an
    :class:`~ddpm_lib.denoisers.EDMPrecond`. :math:`\lambda = 1/c_{out}^2`, so the network
    :math:`F_\theta` sees a unit-weight regression target; for data of standard deviation
    :math:`\sigma_{data}` the optimal denoiser's loss is exactly 1 at every :math:`\sigma`.

    Args:
        sigma_data: the data's standard deviation (0.5), ``> 0``.
        P_mean, P_std: the log-normal training distribution of :math:`\sigma` (-1.2, 1.2).
    """

    def __init__(self, sigma_data: float = 0.5, P_mean: float = -1.2, P_std: float = 1.2) -> None:
        self.sigma_data = float(check_real("sigma_data", sigma_data, 0.0, open_min=True))
        self.P_mean = float(check_real("P_mean", P_mean))
        self.P_std = float(check_real("P_std", P_std, 0.0, open_min=True))

    def __repr__(self) -> str:
        return f"EDMLoss(sigma_data={self.sigma_data!r}, P_mean={self.P_mean!r}, P_std={self.P_std!r})"

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        r""":math:`\lambda(\sigma) = (\sigma^2 + \sigma_{data}^2) / (\sigma\sigma_{data})^2`, float64."""
        sigma = sigma.double()
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(
        self, model: Model, x0: torch.Tensor, t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None, reduction: str = "mean",
        generator: torch.Generator | None = None, *, sigma: torch.Tensor | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """The loss of the denoiser ``model(x, sigma, **model_kwargs)`` on clean ``x0`` ``(B, ...)``.

        EDM has no timesteps: ``t`` must be ``None`` (pass the levels as ``sigma=``, a float
        ``(B,)`` tensor, else drawn first from ``generator``); ``noise`` is the ``eps`` shaped
        like ``x0`` (drawn second). Returns a scalar, or ``(B,)`` for ``reduction="none"``.
        """
        check_choice("reduction", reduction, REDUCTIONS)
        check_floating("x0", x0)
        if t is not None:
            raise ValueError("EDMLoss draws a continuous sigma and takes no t; pass sigma= "
                             f"(a float tensor of shape ({x0.shape[0]},)) instead; got t={t!r}")
        batch = x0.shape[0]
        if sigma is None:
            device = x0.device if generator is None else generator.device
            normal = torch.randn((batch,), generator=generator, device=device, dtype=torch.float64)
            sigma = (self.P_mean + self.P_std * normal).exp().to(x0.device)
        sigma = check_floating("sigma", sigma).to(x0.device)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must have shape ({batch},); got {tuple(sigma.shape)}")
        eps = _noise(x0, noise, generator)
        x = x0 + _column(sigma, x0) * eps
        denoised = check_tensor("model output", model(x, sigma.to(x0.dtype), **model_kwargs))
        check_same_shape("model output", denoised, "x0", x0)
        per_sample = self.weight(sigma).to(x0.dtype) * _mean_flat((denoised - x0) ** 2)
        return _reduce(per_sample, reduction)
