r"""How the latents of an autoencoder are normalised for the diffusion model on them.

:class:`ddpm_lib.LatentDiffusion` keeps either one global scale factor :math:`s` (LDM's rule:
:math:`z = s \cdot \mathcal{E}(x)`, :math:`s = 1 / \mathrm{std}(\mathcal{E}(x))`) or a shift and
a scale per latent channel (:math:`z_c = (\mathcal{E}(x)_c - \mathrm{shift}_c) \cdot
\mathrm{scale}_c`, SD3 / FLUX's shift factor taken per channel). This module holds the checks of
those numbers and the one pass over a dataset that measures them: per-channel sums in float64,
shifted by a pivot so that channels with a large offset lose no precision, from which both the
global and the per-channel standard deviations follow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch

from ddpm_lib._checks import is_real

__all__ = ["NORMALIZATIONS", "LatentMoments"]

NORMALIZATIONS = ("channel", "global")


def check_scale_factor(value: Any) -> float | None:
    """``value`` as a positive finite float, or ``None``."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if not is_real(value):
        raise TypeError(f"scale_factor must be a positive finite number or None; got "
                        f"{type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale_factor must be a positive finite number; got {value!r}")
    return float(value)


def check_channel_stats(name: str, value: Any, channels: int,
                        positive: bool) -> torch.Tensor | None:
    """``value`` as a float64 tensor ``(channels,)`` of finite numbers (positive ones when
    ``positive``), or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (torch.Tensor, Sequence)) or \
            isinstance(value, str):
        raise TypeError(f"{name} must be a sequence or tensor of {channels} numbers (one per "
                        f"latent channel) or None; got {type(value).__name__}")
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must hold numbers; got {value!r}") from None
    if tensor.numel() != channels:
        raise ValueError(f"{name} must have {channels} values (one per latent channel); got "
                         f"{tensor.numel()}")
    if not bool(torch.isfinite(tensor).all()) or (positive and not bool((tensor > 0).all())):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"{name} must hold {kind} numbers; got {tensor.tolist()}")
    return tensor.clone()


class LatentMoments(NamedTuple):
    """The first two moments of a set of unscaled latents: ``means`` and unbiased ``stds`` per
    channel (float64, ``(channels,)``) and the unbiased ``std`` over every element."""

    means: torch.Tensor
    stds: torch.Tensor
    std: float


def latent_moments(batches: Iterable[Any], encode: Callable[[Any], torch.Tensor],
                   channels: int, *, per_channel_stds: bool = True) -> LatentMoments:
    """The :class:`LatentMoments` of ``encode(batch)`` over ``batches`` (each encoded to
    ``(B, channels, h, w)``), accumulated in float64 around the first batch's channel means.

    A channel whose standard deviation is below ``1e-3`` times the global one (a dead channel)
    gets the global one, so that its scale stays finite. ``per_channel_stds=False`` leaves
    ``stds`` empty (only the global moments are wanted).

    Raises:
        ValueError: the latents hold a single value per channel, or the global standard
            deviation is zero or not finite (an autoencoder that collapses every image).
    """
    pivot = torch.zeros(channels, dtype=torch.float64)
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    per_channel = 0
    for batch in batches:
        z = encode(batch).double().cpu()
        if per_channel == 0:  # sums of z - pivot: no cancellation for offset channels
            pivot = z.mean(dim=(0, 2, 3))
        z = z - pivot.view(1, -1, 1, 1)
        total += z.sum(dim=(0, 2, 3))
        total_sq += z.square().sum(dim=(0, 2, 3))
        per_channel += z.numel() // channels
    # the global moments from the per-channel ones (each channel shifted by its pivot)
    means = pivot + total / max(per_channel, 1)
    scatter = (total_sq - total * total / max(per_channel, 1)).clamp_min(0)
    grand = means.mean()
    global_scatter = scatter.sum() + per_channel * (means - grand).square().sum()
    std = _std(global_scatter, per_channel * channels, "the latents")
    stds = torch.tensor([max(_std(scatter[c], per_channel, None), 1e-3 * std)
                         for c in range(channels)] if per_channel_stds else [],
                        dtype=torch.float64)
    return LatentMoments(means, stds, std)


def _std(scatter: torch.Tensor, count: int, what: str | None) -> float:
    """The unbiased standard deviation of ``count`` values from their sum of squared
    deviations; ``what`` names them in the errors (``None``: no check of a zero std)."""
    if count < 2:
        raise ValueError("the latents of one image hold a single value; cannot take a std")
    std = float((scatter / (count - 1)).clamp_min(0).sqrt())
    if what is not None and not (math.isfinite(std) and std > 0):
        raise ValueError(f"{what} have standard deviation {std}; the autoencoder "
                         "collapses every image to a constant and cannot be used")
    return std
