"""Closed-form reference for Gaussian data, used to test losses, samplers and metrics.

For data ``x0 ~ N(mu, s^2 I)`` the noised ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` is
Gaussian too, and every optimal prediction is a conditional expectation with a closed form:

    eps*(x_t, t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)
    x0*(x_t, t)  = mu + sqrt(abar) s^2 (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)

and the smallest achievable simple loss (per dimension) is ``abar s^2 / (abar s^2 + 1 - abar)``.
Since every sampler step is affine in ``x_t`` and in the model output, a sampler driven by
this oracle produces Gaussian samples whose law can be computed exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_choice, check_timesteps
from .schedule import PREDICTION_TYPES, NoiseSchedule, gather


class GaussianOracle(nn.Module):
    """The exact minimiser of the simple loss for data ``N(mean, std^2)``.

    Args:
        schedule: the forward process.
        mean, std: the data's mean and standard deviation; floats or tensors that broadcast
            against one sample (without the batch dimension).
        prediction: what the oracle returns: ``"eps"``, ``"x0"`` or ``"v"``.

    Called as ``oracle(x_t, t)`` like any model; the output is shaped like ``x_t``.
    """

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(
        self,
        schedule: NoiseSchedule,
        mean: float | torch.Tensor = 0.0,
        std: float | torch.Tensor = 1.0,
        prediction: str = "eps",
    ) -> None:
        super().__init__()
        self.schedule = schedule
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64))
        if bool((self.std < 0).any()):
            raise ValueError(f"std must be >= 0; got {std!r}")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        t = check_timesteps(t, self.schedule.num_timesteps, x_t.shape[0], x_t.device)
        x = x_t.double()
        abar = gather(self.schedule.alphas_cumprod, t, x)
        mean, var = self.mean.to(x.device), self.std.to(x.device) ** 2
        residual = (x - abar.sqrt() * mean) / (abar * var + 1.0 - abar)
        eps = (1.0 - abar).sqrt() * residual
        x0 = mean + abar.sqrt() * var * residual
        if self.prediction == "eps":
            out = eps
        elif self.prediction == "x0":
            out = x0
        else:
            out = abar.sqrt() * eps - (1.0 - abar).sqrt() * x0
        return out.to(x_t.dtype)

    def marginal(self, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``x_t`` under ``q``: ``N(sqrt(abar) mu, abar s^2 + 1 - abar)``."""
        t = check_timesteps(t, self.schedule.num_timesteps, 1)
        abar = self.schedule.alphas_cumprod.to(t.device)[t].reshape(())
        return abar.sqrt() * self.mean, abar * self.std**2 + 1.0 - abar

    def min_simple_loss(self, t: torch.Tensor | int) -> torch.Tensor:
        """Per-dimension minimum of ``E||eps - eps_theta||^2``: ``abar s^2 / (abar s^2 + 1 - abar)``."""
        t = check_timesteps(t, self.schedule.num_timesteps, 1)
        abar = self.schedule.alphas_cumprod.to(t.device)[t].reshape(())
        var = self.std**2
        return abar * var / (abar * var + 1.0 - abar)
