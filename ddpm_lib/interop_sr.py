"""Interoperability of super-resolution networks with diffusers.

:func:`sr_unet_from_diffusers` converts a diffusers ``UNet2DModel`` used as an SR3-style
upsampler (Saharia et al. 2021: its input is the noisy image and the upsampled low-resolution
image concatenated, ``in_channels = C + cond_channels``) into a
:class:`ddpm_lib.UNet` built with ``cond_channels``, with the same outputs::

    diffusers:  unet(cat([x_t, upsample(low_res)], dim=1), t, class_labels=noise_level).sample
    ddpm_lib:   sr(x_t, t, cond_image=low_res, noise_level=noise_level)

A ``UNet2DModel`` with ``class_embed_type="timestep"`` (the noise level embedded like the
timestep, the layout of noise-conditioning augmentation) converts with its embedding into the
UNet's ``noise_level_embed``; one without a class embedding converts to
``noise_level_embedding=False`` (plain SR3). The weights are copied by
:mod:`ddpm_lib.interop`'s converter. diffusers is imported only inside the function.

Stable Diffusion's x4 upscaler is a ``UNet2DConditionModel`` (cross-attention to text, the
noise level as a 1000-row class table); its blocks are not the DDPM family's, so it is not
converted here.
"""

from __future__ import annotations

from typing import Any

import torch

from .interop import _copy, _copy_unet_weights, _unet_kwargs, _unsupported, _unwrap_config
from .models.unet import UNet

__all__ = ["sr_unet_from_diffusers"]


def sr_unet_from_diffusers(unet2dmodel: Any, *, cond_channels: int | None = None,
                           cond_resize: str = "bilinear",
                           unet_class: type[UNet] = UNet) -> UNet:
    """Convert an SR3-style diffusers ``UNet2DModel`` into an image-conditioned :class:`UNet`.

    Args:
        unet2dmodel: a ``diffusers.UNet2DModel`` of the DDPM family (see
            :func:`ddpm_lib.interop.unet_from_diffusers`) whose input channels are the
            sample's followed by the condition's.
        cond_channels: the condition's channels (default: ``in_channels - out_channels``,
            ``C`` for an RGB SR3 model with ``2C`` inputs).
        cond_resize: how the converted model resizes ``cond_image`` (use the resizing the
            diffusers model was fed with; the outputs agree for an already upsampled
            condition whatever the mode).
        unet_class: the class to build.

    Raises:
        TypeError: not a ``UNet2DModel``.
        ValueError: an unsupported layout (the message names the setting), or
            ``cond_channels`` that leave no sample channels.
    """
    config = _unwrap_config(unet2dmodel)
    settings = dict(config)
    class_embed = settings.get("class_embed_type")
    if class_embed not in (None, "timestep"):
        raise _unsupported("class_embed_type", class_embed, "None or 'timestep'")
    if class_embed is None and settings.get("num_class_embeds") is not None:
        raise _unsupported("num_class_embeds", settings["num_class_embeds"],
                           "None (an upsampler conditioned on the image and noise level)")
    settings["class_embed_type"], settings["num_class_embeds"] = None, None
    kwargs = _unet_kwargs(settings)
    total, out = settings["in_channels"], settings.get("out_channels") or settings["in_channels"]
    if cond_channels is None:
        cond_channels = total - out
    if isinstance(cond_channels, bool) or not isinstance(cond_channels, int) or not (
            0 < cond_channels < total):
        raise ValueError(f"cond_channels must be an int in [1, {total - 1}] (in_channels="
                         f"{total} holds the sample's and the condition's); got {cond_channels!r}")
    kwargs.update(in_channels=total - cond_channels, cond_channels=cond_channels,
                  cond_resize=cond_resize, noise_level_embedding=class_embed == "timestep")
    kwargs["out_channels"] = None if out == total - cond_channels else out
    reference = next(unet2dmodel.parameters())
    unet = unet_class(**kwargs).to(dtype=reference.dtype, device=reference.device)
    _copy_unet_weights(unet, unet2dmodel)
    if unet.noise_level_embed is not None:
        target: Any = unet.noise_level_embed
        with torch.no_grad():
            _copy(target.linear_1, unet2dmodel.class_embedding.linear_1)
            _copy(target.linear_2, unet2dmodel.class_embedding.linear_2)
    return unet.train(unet2dmodel.training)
