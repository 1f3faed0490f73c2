r"""A network trained in a score-based formulation (EDM or NCSN), as one saveable model.

:class:`ScoreBasedModel` wraps the network (our :class:`~ddpm_lib.UNet`, any
:class:`~ddpm_lib.models.pretrained.PretrainedModel`) with its formulation, so that a training
run, its checkpoints and its :class:`~ddpm_lib.DiffusionPipeline` bundle carry what sampling
needs, and every consumer of a DDPM model can use it:

* ``model(x, sigma)`` with a **float** ``(B,)`` ``sigma``: the trained formulation, what the
  loss trains: EDM's preconditioned denoiser :math:`D(x;\sigma)` (:class:`~ddpm_lib.EDMPrecond`,
  for :class:`~ddpm_lib.EDMLoss`), or NCSN's score :math:`s(x;\sigma) = F(x, \ln(\sigma)/4)/
  \sigma` (the output scaled by :math:`1/\sigma`, NCSNv2's technique 3; for
  :class:`~ddpm_lib.DenoisingScoreMatchingLoss` with ``conditioning="sigma"``);
* ``model(x_t, t)`` with an **integer** ``(B,)`` ``t``: the DDPM ``eps`` prediction over its VP
  ``schedule`` (:class:`~ddpm_lib.VPModel`), so that every DDPM sampler, the Trainer's sample
  grids and ``ddpm-lib sample / fid`` run on it;
* :meth:`ScoreBasedModel.denoiser` and ``ScoreBasedModel.noise_levels``: the denoiser and
  levels that the noise-level samplers (EDM, annealed Langevin, VE SDE) use directly, exact
  at every level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._checks import check_choice, check_int, check_real
from .denoisers import EDMPrecond, VPModel, _column, _levels
from .models.pretrained import PretrainedModel
from .models.registry import build_model, resolve_model_class
from .noise_levels import EDMNoiseLevels, VENoiseLevels
from .schedule import NoiseSchedule

__all__ = ["ScoreBasedModel"]

#: the formulations a ScoreBasedModel is trained in
OBJECTIVES = ("edm", "dsm")


class ScoreBasedModel(PretrainedModel):
    r"""A network with its score-based formulation (see the module docstring).

    Args:
        unet: the network ``F(x, c, **model_kwargs)`` (``c`` a float ``(B,)`` conditioning),
            or its saved configuration (a dict with ``"_class_name"``).
        objective: ``"edm"`` (EDM's preconditioning, :math:`c_{noise} = \ln(\sigma)/4`) or
            ``"dsm"`` (NCSN's score network).
        schedule: the VP schedule of the integer-``t`` view (a :class:`~ddpm_lib.NoiseSchedule`
            or its ``to_dict()``; default DDPM's linear, T = 1000).
        sigma_data: EDM's data standard deviation (0.5).
        sigma_min, sigma_max: the levels' range (EDM: 0.002, 80; NCSN ladder: 0.01, 50).
        rho: EDM's sampling grid exponent (7).
        num_levels: the NCSN ladder's size (10).
    """

    _vp: VPModel  # the integer-t view (in __dict__, outside the module tree)

    def __init__(
        self,
        unet: nn.Module | Mapping[str, Any],
        objective: str = "edm",
        *,
        schedule: NoiseSchedule | Mapping[str, Any] | None = None,
        sigma_data: float = 0.5,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        rho: float = 7.0,
        num_levels: int = 10,
    ) -> None:
        super().__init__()
        self.objective = check_choice("objective", objective, OBJECTIVES)
        if isinstance(unet, Mapping):
            cls = resolve_model_class(unet.get("_class_name", "UNet"), what="network")
            unet = build_model(cls, unet)
        if not isinstance(unet, nn.Module) or not callable(getattr(unet, "save_pretrained", None)):
            raise TypeError(f"unet must be a network with a config (a PretrainedModel such as "
                            f"ddpm_lib.UNet) or its config dict; got {type(unet).__name__}")
        if schedule is None:
            schedule = NoiseSchedule.linear(1000)
        elif isinstance(schedule, Mapping):
            schedule = NoiseSchedule.from_dict(dict(schedule))
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule or its to_dict(); got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule
        self.sigma_data = float(check_real("sigma_data", sigma_data, 0.0, open_min=True))
        self.rho = float(check_real("rho", rho, 0.0, open_min=True))
        self.num_levels = check_int("num_levels", num_levels, 1)
        edm = self.objective == "edm"
        low = sigma_min if sigma_min is not None else (0.002 if edm else 0.01)
        high = sigma_max if sigma_max is not None else (80.0 if edm else 50.0)
        self.noise_levels: EDMNoiseLevels | VENoiseLevels = (
            EDMNoiseLevels(low, high, self.rho, self.sigma_data) if edm
            else VENoiseLevels(low, high, self.num_levels))
        # the network is registered once: inside EDMPrecond for EDM, as itself for NCSN
        self.precond = EDMPrecond(unet, self.sigma_data) if edm else None
        self.network = None if edm else unet
        # the integer-t view; kept out of the module tree (it refers back to this model)
        self.__dict__["_vp"] = VPModel(_Denoiser(self), schedule)
        unet_config = {"_class_name": type(unet).__name__, **dict(getattr(unet, "config", {}))}
        self._config = {
            "unet": unet_config, "objective": self.objective, "schedule": schedule.to_dict(),
            "sigma_data": self.sigma_data, "sigma_min": float(low), "sigma_max": float(high),
            "rho": self.rho, "num_levels": self.num_levels,
        }

    @property
    def unet(self) -> nn.Module:
        """The wrapped network."""
        return self.precond.network if self.precond is not None else self.network  # type: ignore[return-value]

    @property
    def num_classes(self) -> int | None:
        """The network's number of classes (class-conditional), else ``None``."""
        return getattr(self.unet, "num_classes", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        """The formulation for float levels ``t``; the VP ``eps`` for integer timesteps."""
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point:
            return self._vp(x, torch.as_tensor(t, device=x.device), **model_kwargs)
        if self.precond is not None:
            return self.precond(x, t, **model_kwargs)
        return self.score(x, t, **model_kwargs)

    def score(self, x: torch.Tensor, sigma: Any, **model_kwargs: Any) -> torch.Tensor:
        r"""NCSN's score :math:`F(x, \ln(\sigma)/4)/\sigma` (``objective="dsm"``)."""
        levels = _levels(sigma, x)
        assert self.network is not None, "score() is the dsm objective's"
        out = self.network(x, (levels.log() / 4).to(x.dtype), **model_kwargs)
        return out / _column(levels, x)

    def denoiser(self, x: torch.Tensor, sigma: Any, **model_kwargs: Any) -> torch.Tensor:
        r""":math:`D(x;\sigma)`: EDM's, or Tweedie's :math:`x + \sigma^2 s(x;\sigma)` for NCSN."""
        if self.precond is not None:
            return self.precond(x, sigma, **model_kwargs)
        levels = _levels(sigma, x)
        return x + _column(levels**2, x) * self.score(x, levels, **model_kwargs)


class _Denoiser(nn.Module):
    """``ScoreBasedModel.denoiser`` as a callable for VPModel, without registering the model."""

    def __init__(self, model: ScoreBasedModel) -> None:
        super().__init__()
        self.__dict__["_model"] = model  # a plain reference: no cycle in the module tree

    def forward(self, x: torch.Tensor, sigma: Any, **model_kwargs: Any) -> torch.Tensor:
        return self.__dict__["_model"].denoiser(x, sigma, **model_kwargs)
