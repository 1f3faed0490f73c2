r"""Exact conversions between the formulations, as model adapters (Karras et al. 2022, Sec. 2).

A *denoiser* ``D(x, sigma, **model_kwargs)`` takes ``x = x_0 + sigma * eps`` (no scaling) and a
``(B,)`` float tensor of levels, and returns the estimate of :math:`x_0` (the minimiser of
:math:`E\lVert D(x_0 + \sigma\epsilon; \sigma) - x_0\rVert^2`, EDM eq. 2). The adapters:

====================== ======================================================================
:class:`VPDenoiser`    a DDPM / VP model ``model(x_t, t)`` (eps, x0 or v) as a denoiser:
                       :math:`D(x;\sigma) = x - \sigma\,\epsilon_\theta(\sqrt{\bar\alpha}\,x, t)`
:class:`VPModel`       a denoiser as a DDPM model ``model(x_t, t)`` of any prediction
:class:`ScoreDenoiser` a VE score model ``s(x, sigma)`` as a denoiser: :math:`D = x + \sigma^2 s`
:class:`DenoiserScore` a denoiser as a score model: :math:`s = (D - x) / \sigma^2`
:class:`EDMPrecond`    a network ``F(c_in x, c_noise)`` as a denoiser (EDM eq. 7)
:func:`as_denoiser`    one entry point over the formulations
====================== ======================================================================
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_choice, check_real, is_real
from .noise_levels import VENoiseLevels, schedule_sigmas, timesteps_for_sigmas
from .schedule import PREDICTION_TYPES, NoiseSchedule, gather

__all__ = ["DenoiserScore", "EDMPrecond", "ScoreDenoiser", "VPDenoiser", "VPModel", "as_denoiser"]

SIGMA_LOOKUPS = ("nearest", "linear")
SCORE_CONDITIONINGS = ("sigma", "index")
FORMULATIONS = ("eps", "x0", "v", "score", "denoiser")


def _levels(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` as a float64 ``(B,)`` tensor on ``x``'s device (a float broadcasts), all > 0."""
    if is_real(sigma):
        sigma = torch.full((x.shape[0],), float(sigma), dtype=torch.float64, device=x.device)
    if not isinstance(sigma, torch.Tensor) or not sigma.dtype.is_floating_point:
        raise TypeError(f"sigma must be a float or a float tensor of shape ({x.shape[0]},); "
                        f"got {type(sigma).__name__}")
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape ({x.shape[0]},); got {tuple(sigma.shape)}")
    if not torch.compiler.is_compiling() and not bool((sigma > 0).all()):
        raise ValueError(f"sigma must be > 0; got a minimum of {float(sigma.min())!r}")
    return sigma.to(device=x.device, dtype=torch.float64)


def _column(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64 values shaped ``(B, 1, ..., 1)`` in ``x``'s dtype."""
    return values.to(x.dtype).reshape(x.shape[0], *((1,) * (x.ndim - 1)))


class VPDenoiser(nn.Module):
    r"""A DDPM / VP model as a denoiser (EDM Table 1, "VP"; k-diffusion's discrete eps wrapper).

    With :math:`\sigma_t = \sqrt{(1 - \bar\alpha_t)/\bar\alpha_t}` and
    :math:`\bar\alpha(\sigma) = 1 / (1 + \sigma^2)`, the model sees
    :math:`x_t = \sqrt{\bar\alpha(\sigma)}\, x` and

    * ``"eps"``: :math:`D(x;\sigma) = x - \sigma\,\epsilon_\theta(x_t, t)`;
    * ``"x0"``: :math:`D(x;\sigma) = x_{0,\theta}(x_t, t)`;
    * ``"v"``: :math:`D(x;\sigma) = \sqrt{\bar\alpha}\,x_t - \sqrt{1-\bar\alpha}\,v_\theta(x_t, t)`.

    These are exact at the schedule's own levels :math:`\sigma = \sigma_t`. Between two levels
    :math:`\sigma_t < \sigma < \sigma_{t+1}` (the model only knows integer ``t``):

    * ``sigma_lookup="nearest"`` (default): the timestep whose level is nearest in
      :math:`\log\sigma`; one model call;
    * ``sigma_lookup="linear"``: the model's outputs at ``t`` and ``t + 1`` blended with the
      weight of :func:`~ddpm_lib.noise_levels.timesteps_for_sigmas` (linear in
      :math:`\log\sigma`); two model calls (one at a grid level).

    In both the requested :math:`\sigma` is used for the input scaling and the output formula.
    A level outside :math:`[\sigma_0, \sigma_{T-1}]` raises ``ValueError``.

    Args:
        model: ``model(x_t, t, **model_kwargs)`` with ``t`` a ``(B,)`` long tensor.
        schedule: its forward process.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        sigma_lookup: ``"nearest"`` or ``"linear"``.
    """

    def __init__(
        self, model: nn.Module, schedule: NoiseSchedule, prediction: str = "eps",
        sigma_lookup: str = "nearest",
    ) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        self.sigma_lookup = check_choice("sigma_lookup", sigma_lookup, SIGMA_LOOKUPS)

    def forward(self, x: torch.Tensor, sigma: Any, **model_kwargs: Any) -> torch.Tensor:
        levels = _levels(sigma, x)
        t_low, t_high, weight = timesteps_for_sigmas(self.schedule, levels)
        abar = 1.0 / (1.0 + levels**2)
        x_t = x * _column(abar.sqrt(), x)
        if self.sigma_lookup == "nearest":
            t = torch.where(weight > 0.5, t_high, t_low)
            out = self.model(x_t, t, **model_kwargs)
        else:
            w = _column(weight, x)
            out = (1 - w) * self.model(x_t, t_low, **model_kwargs)
            out = out + w * self.model(x_t, t_high, **model_kwargs)
        if self.prediction == "eps":
            return x - _column(levels, x) * out
        if self.prediction == "x0":
            return out
        return _column(abar.sqrt(), x) * x_t - _column((1.0 - abar).sqrt(), x) * out


class VPModel(nn.Module):
    r"""A denoiser as a DDPM / VP model ``model(x_t, t)`` predicting eps, x0 or v.

    At timestep ``t`` with :math:`\sigma_t` (:func:`~ddpm_lib.noise_levels.schedule_sigmas`):
    :math:`x = x_t / \sqrt{\bar\alpha_t}`, :math:`\hat x_0 = D(x; \sigma_t)`,
    :math:`\hat\epsilon = (x - \hat x_0)/\sigma_t` and :math:`\hat v = \sqrt{\bar\alpha_t}\,
    \hat\epsilon - \sqrt{1 - \bar\alpha_t}\,\hat x_0`. The inverse of :class:`VPDenoiser` at the
    schedule's levels. Every DDPM sampler of the library runs on the result.

    Args:
        denoiser: ``denoiser(x, sigma, **model_kwargs)``, ``sigma`` a float ``(B,)`` tensor.
        schedule: the VP schedule whose timesteps the model is called with; every
            :math:`\bar\alpha_t` must be in (0, 1).
        prediction: ``"eps"`` (default), ``"x0"`` or ``"v"``.
    """

    def __init__(self, denoiser: nn.Module, schedule: NoiseSchedule, prediction: str = "eps") -> None:
        super().__init__()
        self.denoiser = denoiser
        self.schedule = schedule
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        sigmas = schedule_sigmas(schedule)
        if not bool(torch.isfinite(sigmas).all() & (sigmas > 0).all()):
            raise ValueError("schedule's alphas_cumprod must lie in (0, 1) for every t to "
                             "convert a denoiser (sigma_t finite and > 0)")
        self.sigmas = sigmas

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        abar = gather(self.schedule.alphas_cumprod, t, x_t.double())
        sigma = self.sigmas.to(t.device)[t]
        x = x_t / abar.sqrt().to(x_t.dtype)
        x0 = self.denoiser(x, sigma.to(x_t.device), **model_kwargs)
        eps = (x - x0) / _column(sigma, x)
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return abar.sqrt().to(x_t.dtype) * eps - (1.0 - abar).sqrt().to(x_t.dtype) * x0


class ScoreDenoiser(nn.Module):
    r"""A VE score model as a denoiser: :math:`D(x;\sigma) = x + \sigma^2 s_\theta(x, \sigma)`.

    Tweedie's formula (EDM eq. 3: :math:`\nabla_x \log p(x;\sigma) = (D(x;\sigma) - x)/\sigma^2`).

    Args:
        score_model: ``score_model(x, c, **model_kwargs)`` with ``c`` the float ``(B,)`` levels
            (``conditioning="sigma"``) or the long ``(B,)`` index into ``levels``
            (``"index"``, NCSN's noise-conditional network).
        levels: the :class:`~ddpm_lib.noise_levels.VENoiseLevels` ladder; needed for ``"index"``,
            where a level is mapped to the nearest rung in :math:`\log\sigma`.
        conditioning: ``"sigma"`` or ``"index"``.
    """

    def __init__(
        self, score_model: nn.Module, levels: VENoiseLevels | None = None,
        conditioning: str = "sigma",
    ) -> None:
        super().__init__()
        self.score_model = score_model
        self.conditioning = check_choice("conditioning", conditioning, SCORE_CONDITIONINGS)
        if self.conditioning == "index" and not isinstance(levels, VENoiseLevels):
            raise ValueError(f"conditioning='index' needs levels=VENoiseLevels(...); got {levels!r}")
        self.levels = levels

    def forward(self, x: torch.Tensor, sigma: Any, **model_kwargs: Any) -> torch.Tensor:
        levels = _levels(sigma, x)
        if self.conditioning == "index":
            assert self.levels is not None
            cond: torch.Tensor = self.levels.index_of(levels)
        else:
            cond = levels.to(x.dtype)
        return x + _column(levels**2, x) * self.score_model(x, cond, **model_kwargs)


class DenoiserScore(nn.Module):
    r"""A denoiser as a score model: :math:`s(x;\sigma) = (D(x;\sigma) - x) / \sigma^2` (EDM eq. 3).

    Called as ``score(x, sigma, **model_kwargs)`` with float levels; the inverse of
    :class:`ScoreDenoiser` with ``conditioning="sigma"``.
    """

    def __init__(self, denoiser: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: torch.Tensor, sigma: Any, **model_kwargs: Any) -> torch.Tensor:
        levels = _levels(sigma, x)
        return (self.denoiser(x, levels, **model_kwargs) - x) / _column(levels**2, x)


class EDMPrecond(nn.Module):
    r"""EDM's preconditioned denoiser (Karras et al. 2022, eq. 7 and Table 1):

    .. math:: D_\theta(x;\sigma) = c_{skip}(\sigma)\,x + c_{out}(\sigma)\,
              F_\theta\big(c_{in}(\sigma)\,x;\ c_{noise}(\sigma)\big)

    with :math:`c_{skip} = \sigma_{data}^2/(\sigma^2 + \sigma_{data}^2)`,
    :math:`c_{out} = \sigma\,\sigma_{data}/\sqrt{\sigma^2 + \sigma_{data}^2}`,
    :math:`c_{in} = 1/\sqrt{\sigma^2 + \sigma_{data}^2}` and :math:`c_{noise} = \ln(\sigma)/4`.

    Args:
        network: ``network(c_in * x, c_noise, **model_kwargs)`` with ``c_noise`` a float ``(B,)``
            tensor; returns a tensor shaped like ``x``. Any network of that contract (a UNet
            with a continuous time embedding, a small MLP).
        sigma_data: the data's standard deviation, ``> 0`` (0.5 for images in [-1, 1]).

    Called as ``denoiser(x, sigma, **model_kwargs)``.
    """

    def __init__(self, network: nn.Module, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.network = network
        self.sigma_data = float(check_real("sigma_data", sigma_data, 0.0, open_min=True))

    def coefficients(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` of EDM Table 1, each float64 ``(B,)``."""
        sigma = sigma.double()
        sd2 = self.sigma_data**2
        total = sigma**2 + sd2
        return sd2 / total, sigma * self.sigma_data / total.sqrt(), 1.0 / total.sqrt(), sigma.log() / 4

    def forward(self, x: torch.Tensor, sigma: Any, **model_kwargs: Any) -> torch.Tensor:
        levels = _levels(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(levels)
        out = self.network(x * _column(c_in, x), c_noise.to(x.dtype), **model_kwargs)
        return _column(c_skip, x) * x + _column(c_out, x) * out


def as_denoiser(
    model: nn.Module, formulation: str, *, schedule: NoiseSchedule | None = None,
    levels: VENoiseLevels | None = None, sigma_lookup: str = "nearest",
    score_conditioning: str = "sigma",
) -> nn.Module:
    """Any model of the library's formulations as a denoiser ``D(x, sigma, **model_kwargs)``.

    Args:
        model: the trained model.
        formulation: ``"eps"``, ``"x0"``, ``"v"`` (a VP model: needs ``schedule``; see
            :class:`VPDenoiser`), ``"score"`` (a VE score model; see :class:`ScoreDenoiser`) or
            ``"denoiser"`` (returned as it is, e.g. an :class:`EDMPrecond`).
        schedule, sigma_lookup: for the VP formulations.
        levels, score_conditioning: for ``"score"``.

    Raises ``ValueError`` for another formulation or one whose inputs are missing.
    """
    formulation = check_choice("formulation", formulation, FORMULATIONS)
    if formulation in PREDICTION_TYPES:
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"formulation={formulation!r} (a VP model) needs schedule="
                             f"NoiseSchedule(...); got {schedule!r}")
        return VPDenoiser(model, schedule, formulation, sigma_lookup)
    if formulation == "score":
        return ScoreDenoiser(model, levels, score_conditioning)
    return model
