"""Validation of :class:`ddpm_lib.UNet`'s configuration, kept out of the network's file.

:func:`check_unet_arguments` checks each argument on its own (types and ranges);
:func:`unet_geometry` checks how they fit together (levels, resolutions, groups, heads) and
returns the derived layout. Every error names the argument, the value and what to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ddpm_lib._checks import (
    check_bool,
    check_choice,
    check_int,
    check_int_tuple,
    check_probability,
    check_real,
)

__all__ = ["TEXT_ATTENTION_CHOICES", "UNetGeometry", "check_unet_arguments", "unet_geometry"]

#: how the context tokens enter the attention layers (``UNet(text_attention=...)``)
TEXT_ATTENTION_CHOICES = ("cross", "joint", "transformer")


class UNetGeometry(NamedTuple):
    """The layout a valid configuration implies."""

    channel_mults: tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    resolutions: tuple[int, ...]  # side length at each level
    channels: tuple[int, ...]  # channels at each level
    attention_levels: tuple[int, ...]  # levels with self-attention


def check_unet_arguments(**arguments: Any) -> None:
    """Check the type and range of each :class:`ddpm_lib.UNet` argument (by keyword)."""
    a = arguments
    for name in ("in_channels", "base_channels", "num_res_blocks", "image_size", "num_heads",
                 "norm_groups"):
        check_int(name, a[name], 1)
    for name in ("out_channels", "num_classes", "head_channels", "emb_channels", "context_dim",
                 "cond_channels"):
        check_int(name, a[name], 1, allow_none=True)
    check_int_tuple("channel_mults", a["channel_mults"], 1)
    check_int_tuple("attention_resolutions", a["attention_resolutions"], 1, allow_empty=True)
    check_probability("dropout", a["dropout"])
    for name in ("learn_sigma", "gradient_checkpointing", "flip_sin_to_cos",
                 "noise_level_embedding"):
        check_bool(name, a[name])
    check_real("norm_eps", a["norm_eps"], 0, open_min=True)
    if a["downsample_padding"] not in (0, 1) or isinstance(a["downsample_padding"], bool):
        raise ValueError(f"downsample_padding must be 0 or 1; got {a['downsample_padding']!r}")
    check_real("freq_shift", a["freq_shift"])
    check_choice("text_attention", a["text_attention"], TEXT_ATTENTION_CHOICES)
    check_int("transformer_depth", a["transformer_depth"], 1)
    check_bool("transformer_linear_projection", a["transformer_linear_projection"])
    check_choice("cond_resize", a["cond_resize"], ("bilinear", "bicubic"))
    if a["base_channels"] // 2 - a["freq_shift"] == 0:
        raise ValueError(
            f"freq_shift={a['freq_shift']} equals base_channels // 2; the sinusoidal "
            "frequencies would divide by zero"
        )


def unet_geometry(
    channel_mults: Sequence[int], attention_resolutions: Sequence[int], image_size: int,
    base_channels: int, norm_groups: int, num_heads: int, head_channels: int | None,
) -> UNetGeometry:
    """Check that the (individually valid) arguments fit together; return the layout."""
    num_levels = len(channel_mults)
    factor = 2 ** (num_levels - 1)
    if image_size % factor:
        raise ValueError(
            f"image_size={image_size} must be divisible by 2^(levels - 1) = {factor} for "
            f"{num_levels} levels (channel_mults={tuple(channel_mults)}); change image_size or "
            "use fewer levels"
        )
    resolutions = tuple(image_size // 2**level for level in range(num_levels))
    for resolution in attention_resolutions:
        if resolution not in resolutions:
            raise ValueError(
                f"attention_resolutions contains {resolution}, which is not a resolution "
                f"of this network; with image_size={image_size} and {num_levels} levels "
                f"the resolutions are {list(resolutions)}"
            )
    channels = tuple(base_channels * mult for mult in channel_mults)
    # every channel count (levels, concatenations) is a multiple of base_channels
    if base_channels % norm_groups:
        raise ValueError(
            f"norm_groups={norm_groups} must divide every channel count, but "
            f"base_channels={base_channels} is not divisible by it; change norm_groups "
            "or base_channels"
        )
    attention_levels = tuple(
        level for level, res in enumerate(resolutions) if res in attention_resolutions
    )
    for level in sorted(set(attention_levels) | {num_levels - 1}):
        c = channels[level]
        if head_channels is not None and c % head_channels:
            raise ValueError(
                f"head_channels={head_channels} must divide the attention channels; level "
                f"{level} has {c} channels"
            )
        if head_channels is None and c % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide the attention channels; level {level} "
                f"has {c} channels"
            )
    return UNetGeometry(tuple(channel_mults), tuple(attention_resolutions), resolutions,
                        channels, attention_levels)

