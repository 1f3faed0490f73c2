"""Classifier-free guidance: the combination of the two predictions and its options.

:func:`apply_guidance` is what the loop of :class:`~ddpm_lib.samplers.Sampler` applies to the
conditional and unconditional halves of each batched model call; :func:`rescale_guidance` and
the interval of :class:`GuidanceOptions` modify it. The checks of ``guidance_scale``,
``guidance_rescale`` and ``guidance_interval`` live here too, once for every sampler.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .._checks import check_real, is_real


class GuidanceOptions(NamedTuple):
    """How classifier-free guidance is applied beyond its scale (see :meth:`Sampler.sample`).

    Attributes:
        rescale: ``phi`` of guidance rescale (Lin et al. 2024, Eq. 15-16); 0 turns it off.
        interval: ``(t_lo, t_hi)``: guide only at model timesteps ``t_lo <= t <= t_hi``
            (Kynkaanniemi et al. 2024); ``None``: at every step.
    """

    rescale: float = 0.0
    interval: tuple[float, float] | None = None


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale of Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", Eq. 15-16 (diffusers' ``rescale_noise_cfg``).

    ``rescaled = guided * std(cond) / std(guided)`` (Eq. 15), with standard deviations per
    sample over every non-batch dimension, then ``phi * rescaled + (1 - phi) * guided``
    (Eq. 16). It brings the guided prediction back to the conditional prediction's scale,
    which counters the over-exposure of large guidance scales.

    Args:
        guided: the guided prediction ``(B, ...)``.
        cond: the conditional prediction, same shape.
        phi: the mixing weight in ``[0, 1]``.
    """
    dims = tuple(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)  # (B, 1, ..., 1)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1.0 - phi) * guided


def apply_guidance(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    t: torch.Tensor,
    guidance_scale: float,
    options: GuidanceOptions | None = None,
) -> torch.Tensor:
    """Classifier-free guidance ``uncond + w (cond - uncond)`` (Ho & Salimans 2022), then the
    guidance rescale and interval of ``options``.

    Outside the interval the conditional prediction is returned unchanged. The interval test
    is a ``torch.where`` on ``t``, so nothing synchronises with the device and one compiled
    graph serves every step.

    Args:
        cond, uncond: the two predictions ``(B, ...)``.
        t: ``(B,)`` model timesteps of the step.
        guidance_scale: ``w``.
        options: rescale and interval; ``None`` for plain guidance.
    """
    guided = uncond + guidance_scale * (cond - uncond)
    if options is None:
        return guided
    if options.rescale:
        guided = rescale_guidance(guided, cond, options.rescale)
    if options.interval is not None:
        low, high = options.interval
        inside = ((t >= low) & (t <= high)).reshape(-1, *((1,) * (cond.ndim - 1)))  # (B, 1, ..)
        guided = torch.where(inside, guided, cond)
    return guided


def _check_guidance_scale(guidance_scale: Any) -> float | None:
    if guidance_scale is None:
        return None
    if not is_real(guidance_scale):
        raise TypeError(
            f"guidance_scale must be a float or None; got {type(guidance_scale).__name__}"
        )
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite; got {guidance_scale!r}")
    return float(guidance_scale)


def _check_guidance_options(
    guidance_scale: float | None, guidance_rescale: Any, guidance_interval: Any
) -> GuidanceOptions | None:
    """Validate ``guidance_rescale`` and ``guidance_interval``; ``None`` when both are off."""
    if not is_real(guidance_rescale):
        raise TypeError(
            f"guidance_rescale must be a float in [0, 1]; got {type(guidance_rescale).__name__}"
        )
    check_real("guidance_rescale", guidance_rescale, 0, 1)
    interval = None
    if guidance_interval is not None:
        if (
            not isinstance(guidance_interval, (tuple, list))
            or len(guidance_interval) != 2
            or not all(is_real(v) for v in guidance_interval)
        ):
            raise TypeError(
                "guidance_interval must be a pair (t_lo, t_hi) of model timesteps or None; "
                f"got {guidance_interval!r}"
            )
        low, high = (float(v) for v in guidance_interval)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"guidance_interval must be finite; got {tuple(guidance_interval)}")
        if low > high:
            raise ValueError(
                f"guidance_interval must have t_lo <= t_hi; got {tuple(guidance_interval)}"
            )
        interval = (low, high)
    if guidance_scale is None and (guidance_rescale or interval is not None):
        raise ValueError(
            "guidance_rescale and guidance_interval modify classifier-free guidance and need "
            f"guidance_scale; got guidance_scale=None with guidance_rescale={guidance_rescale!r}, "
            f"guidance_interval={guidance_interval!r}"
        )
    if not guidance_rescale and interval is None:
        return None
    return GuidanceOptions(float(guidance_rescale), interval)
