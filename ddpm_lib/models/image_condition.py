"""Image conditioning by concatenation: the inputs of a super-resolution or inpainting network.

A network built with ``cond_channels=C`` (:class:`ddpm_lib.UNet`) reads a conditioning image
``cond_image`` ``(B, C, h, w)``, resizes it to the sample's ``(H, W)`` and concatenates it to
``x_t`` along the channels before its first convolution (SR3, Saharia et al. 2021; the
cascades of ADM, GLIDE, Imagen; Stable Diffusion's x4 upscaler and inpainting model)::

    x_t (B, in, H, W), cond_image (B, C, h, w) --resize--> (B, C, H, W)
    conv_in(cat([x_t, cond], dim=1))                       (B, in + C, H, W) -> (B, base, H, W)

``x_t`` comes first, then the condition, as in diffusers' upscaler and inpainting pipelines.
The resizing is bilinear with ``align_corners=False`` (ADM's and GLIDE's upsamplers) or
bicubic. A noise-augmented condition (Ho et al. 2022) also gives its level ``noise_level``,
embedded like the timestep and added to the time embedding; :func:`check_noise_level` reads it.
This module depends on nothing else in ddpm_lib but the argument checks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["COND_RESIZE_CHOICES", "check_noise_level", "resize_condition"]

#: how ``cond_image`` is resized to the sample's resolution (``UNet(cond_resize=...)``)
COND_RESIZE_CHOICES = ("bilinear", "bicubic")


def resize_condition(
    cond_image: Any, x: torch.Tensor, cond_channels: int, mode: str, model: str = "UNet"
) -> torch.Tensor:
    """``cond_image`` checked and resized to ``x``'s ``(H, W)``, in ``x``'s dtype and device.

    Args:
        cond_image: ``(B, cond_channels, h, w)`` float, with ``H / h == W / w`` a whole number
            (1 for inpainting, the stage's factor for super-resolution).
        x: the sample ``x_t`` ``(B, in_channels, H, W)``.
        cond_channels: the channels the network was built for.
        mode: ``"bilinear"`` or ``"bicubic"`` (``align_corners=False``).

    Returns:
        ``(B, cond_channels, H, W)``.
    """
    if not torch.compiler.is_compiling():
        if not isinstance(cond_image, torch.Tensor):
            raise TypeError(f"cond_image must be a torch.Tensor; got {type(cond_image).__name__}")
        if not cond_image.is_floating_point():
            raise TypeError(f"cond_image must be a floating-point tensor; got dtype "
                            f"{cond_image.dtype}")
        shape, (batch, _, height, width) = tuple(cond_image.shape), x.shape
        if cond_image.ndim != 4 or shape[1] != cond_channels or shape[0] != batch:
            raise ValueError(
                f"cond_image must have shape ({batch}, {cond_channels}, h, w) for this {model} "
                f"(cond_channels={cond_channels}, batch {batch}); got {shape}"
            )
        low_h, low_w = shape[2], shape[3]
        if height % low_h or width % low_w or height // low_h != width // low_w:
            raise ValueError(
                f"cond_image's size {(low_h, low_w)} must be x's size {(height, width)} divided "
                "by a whole factor (the same for height and width); resize the condition"
            )
    cond_image = cond_image.to(device=x.device, dtype=x.dtype)
    if cond_image.shape[-2:] == x.shape[-2:]:
        return cond_image
    if mode not in COND_RESIZE_CHOICES:
        raise ValueError(f"cond_resize must be one of {COND_RESIZE_CHOICES}; got {mode!r}")
    return F.interpolate(cond_image, size=x.shape[-2:], mode=mode, align_corners=False)


def check_noise_level(noise_level: Any, x: torch.Tensor) -> torch.Tensor:
    """The augmentation level ``s`` of the condition as a ``(B,)`` float tensor on ``x``'s
    device: a number or a 0-d tensor is broadcast, ``None`` means 0 (a clean condition)."""
    batch = x.shape[0]
    if noise_level is None:
        return torch.zeros(batch, device=x.device)
    if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float, torch.Tensor)):
        raise TypeError(f"noise_level must be a number or a (B,) tensor; got "
                        f"{type(noise_level).__name__}")
    if not isinstance(noise_level, torch.Tensor):
        return torch.full((batch,), float(noise_level), device=x.device)
    if not torch.compiler.is_compiling():
        if noise_level.dtype == torch.bool or noise_level.is_complex():
            raise TypeError(f"noise_level must hold real levels; got dtype {noise_level.dtype}")
        if noise_level.ndim > 1 or (noise_level.ndim == 1 and noise_level.shape[0] != batch):
            raise ValueError(f"noise_level must have shape ({batch},) to match x's batch; got "
                             f"{tuple(noise_level.shape)}")
    if noise_level.ndim == 0:
        noise_level = noise_level.expand(batch)
    return noise_level.to(x.device)
