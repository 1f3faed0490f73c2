"""Exact predictors (oracles) for Gaussian and Gaussian-mixture data: closed-form references
used to test losses, samplers and metrics.

For data ``x0 ~ N(mu, s^2 I)`` the noised ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` is
Gaussian too, and every optimal prediction is a conditional expectation with a closed form:

    eps*(x_t, t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)
    x0*(x_t, t)  = mu + sqrt(abar) s^2 (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)

and the smallest achievable simple loss (per dimension) is ``abar s^2 / (abar s^2 + 1 - abar)``.
Since every sampler step is affine in ``x_t`` and in the model output, a sampler driven by
this oracle produces Gaussian samples whose law can be computed exactly.

:class:`GaussianMixtureOracle` does the same for a mixture of Gaussians (several modes with
different weights and spreads): the predictor is exact but no longer linear, so that only a
sampler's own error separates its samples from exact draws of the data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._checks import check_choice, check_int, check_timesteps
from .schedule import PREDICTION_TYPES, NoiseSchedule, gather

__all__ = ["GaussianMixtureOracle", "GaussianOracle"]


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


class GaussianMixtureOracle(nn.Module):
    r"""The exact noise predictor for data drawn from a mixture of Gaussians.

    Data ``x0 ~ sum_k w_k N(mu_k, diag(s_k^2))``. Then ``x_t = a x0 + s eps`` (``a = sqrt(abar_t)``,
    ``s = sqrt(1 - abar_t)``) is a mixture too, with components ``N(a mu_k, a^2 s_k^2 + s^2)``, and
    the optimal predictions are posterior averages over the components:

    .. math::

        r_k(x_t) \propto w_k \, \mathcal{N}(x_t; a\mu_k, a^2 s_k^2 + s^2), \quad
        \hat x_0 = \sum_k r_k \Big(\mu_k + \frac{a s_k^2 (x_t - a\mu_k)}{a^2 s_k^2 + s^2}\Big),
        \quad \hat\epsilon = \frac{x_t - a \hat x_0}{s} = -s \nabla \log q_t(x_t).

    Args:
        schedule: the forward process.
        weights: ``(K,)`` positive mixture weights (normalised here).
        means: ``(K, *event)`` the component means; ``event`` is the shape of one sample
            (e.g. ``(D,)``).
        stds: the components' standard deviations: ``(K,)`` (isotropic) or ``(K, *event)``
            (diagonal); positive.
        prediction: what the oracle returns: ``"eps"``, ``"x0"`` or ``"v"``.

    Called as ``oracle(x_t, t)`` with ``x_t`` of shape ``(B, *event)``; computed in float64 and
    returned in ``x_t``'s dtype.
    """

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    def __init__(
        self,
        schedule: NoiseSchedule,
        weights: torch.Tensor | list[float],
        means: torch.Tensor | list,
        stds: torch.Tensor | list,
        prediction: str = "eps",
    ) -> None:
        super().__init__()
        self.schedule = schedule
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if weights.ndim != 1 or weights.numel() < 1 or bool((weights <= 0).any()):
            raise ValueError(f"weights must be a 1-D sequence of positive numbers; got {weights}")
        components = weights.numel()
        if means.ndim < 2 or means.shape[0] != components:
            raise ValueError(
                f"means must have shape (K, *event) with K = {components} (len(weights)); "
                f"got {tuple(means.shape)}"
            )
        if stds.shape == (components,):
            stds = stds.reshape(components, *((1,) * (means.ndim - 1))).expand_as(means)
        if stds.shape != means.shape:
            raise ValueError(
                f"stds must have shape ({components},) or {tuple(means.shape)} (like means); "
                f"got {tuple(stds.shape)}"
            )
        if bool((stds <= 0).any()):
            raise ValueError("stds must be positive")
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("stds", stds.clone())

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self.means.shape[1:])

    def _responsibilities(
        self, x: torch.Tensor, abar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(r, mean, var)``: ``r`` ``(B, K)``; ``mean, var`` ``(B, K, *event)`` of ``q_t``'s
        components at ``abar`` ``(B,)``."""
        event_dims = (1,) * len(self.event_shape)
        a = abar.sqrt().reshape(-1, 1, *event_dims)
        mean = a * self.means.to(x.device)  # (B, K, *event)
        var = a**2 * self.stds.to(x.device) ** 2 + (1 - abar).reshape(-1, 1, *event_dims)
        diff = x.unsqueeze(1) - mean
        log_normal = -0.5 * (diff**2 / var + torch.log(2 * torch.pi * var))
        log_joint = torch.log(self.weights.to(x.device)) + log_normal.flatten(2).sum(-1)  # (B, K)
        return torch.softmax(log_joint, dim=1), mean, var

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        t = check_timesteps(t, self.schedule.num_timesteps, x_t.shape[0], x_t.device)
        self._check_event(x_t)
        x = x_t.double()
        abar = self.schedule.alphas_cumprod.to(x.device)[t]  # (B,)
        r, mean, var = self._responsibilities(x, abar)
        a = abar.sqrt().reshape(-1, 1, *((1,) * len(self.event_shape)))
        stds2 = self.stds.to(x.device) ** 2
        x0_k = self.means.to(x.device) + a * stds2 * (x.unsqueeze(1) - mean) / var
        r = r.reshape(*r.shape, *((1,) * len(self.event_shape)))
        x0 = (r * x0_k).sum(1)
        a, s = a[:, 0], (1 - abar).sqrt().reshape(-1, *((1,) * len(self.event_shape)))
        eps = (x - a * x0) / s
        if self.prediction == "eps":
            out = eps
        elif self.prediction == "x0":
            out = x0
        else:
            out = a * eps - s * x0
        return out.to(x_t.dtype)

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor | int | None = None) -> torch.Tensor:
        """``log q_t(x_t)`` ``(B,)``, the exact density of the noised data (``t=None``: the data)."""
        self._check_event(x_t)
        x = x_t.double()
        if t is None:
            abar = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        else:
            t = check_timesteps(t, self.schedule.num_timesteps, x.shape[0], x.device)
            abar = self.schedule.alphas_cumprod.to(x.device)[t]
        event_dims = (1,) * len(self.event_shape)
        a = abar.sqrt().reshape(-1, 1, *event_dims)
        var = a**2 * self.stds.to(x.device) ** 2 + (1 - abar).reshape(-1, 1, *event_dims)
        diff = x.unsqueeze(1) - a * self.means.to(x.device)
        log_normal = -0.5 * (diff**2 / var + torch.log(2 * torch.pi * var))
        log_joint = torch.log(self.weights.to(x.device)) + log_normal.flatten(2).sum(-1)
        return torch.logsumexp(log_joint, dim=1)

    def component(self, x0: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the most probable component of each clean sample (its mode)."""
        self._check_event(x0)
        ones = torch.ones(x0.shape[0], dtype=torch.float64, device=x0.device)
        r, _, _ = self._responsibilities(x0.double(), ones)
        return r.argmax(dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws of the data ``(n, *event)`` (float64), from ``generator``."""
        if check_int("n", n) < 1:
            raise ValueError(f"n must be a positive int; got {n!r}")
        index = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.event_shape), generator=generator, dtype=torch.float64)
        return self.means.cpu()[index] + self.stds.cpu()[index] * noise

    def _check_event(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, self.event_shape))}) (the mixture's "
                f"event shape); got {tuple(x.shape)}"
            )
