"""The guidance scale as a network input (Meng et al. 2023; latent consistency models): a
student distilled from a guided teacher reads ``w`` and serves every scale in one call.

:class:`~ddpm_lib.distillation.GuidanceConditionedUNet` is a :class:`ddpm_lib.UNet` whose conditioning embedding
(:meth:`ddpm_lib.UNet.embed`, the extension point) adds ``guidance_embed(w)``:
``w -> Linear(SiLU(Linear(sinusoid(w * guidance_embedding_scale))))``, the last layer
initialised to zero, so that a student copied from its teacher starts as the teacher.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.layers import sinusoidal_embedding, zero_module
from ..models.unet import UNet

__all__ = ["GuidanceConditionedUNet", "GuidanceEmbedding", "with_guidance_embedding"]


class GuidanceEmbedding(nn.Module):
    """``(B,)`` guidance scales -> ``(B, emb_channels)``, zero at initialisation.

    Args:
        channels: width of the sinusoidal embedding.
        emb_channels: output width (the UNet's embedding width).
        scale: ``w`` is embedded as the "timestep" ``scale * w`` (1000, as LCM).
    """

    def __init__(self, channels: int, emb_channels: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.channels, self.scale = channels, float(scale)
        self.linear_1 = nn.Linear(channels, emb_channels)
        self.linear_2 = zero_module(nn.Linear(emb_channels, emb_channels))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(w.float() * self.scale, self.channels)  # (B, C)
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(nn.functional.silu(self.linear_1(emb)))  # (B, E)


class GuidanceConditionedUNet(UNet):
    """A :class:`ddpm_lib.UNet` that also reads a guidance scale: ``model(x_t, t, y=...,
    guidance_scale=w)`` with ``w`` a ``(B,)`` tensor (or a float for the whole batch).

    Takes the arguments of :class:`ddpm_lib.UNet` and ``guidance_embedding_scale`` (see
    :class:`~ddpm_lib.distillation.GuidanceEmbedding`). ``guidance_scale=None`` adds nothing (the network then acts
    as the UNet it was copied from, until trained). Saved and loaded like a UNet.
    """

    def __init__(self, *args: Any, guidance_embedding_scale: float = 1000.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guidance_embed = GuidanceEmbedding(self.base_channels, self.emb_channels,
                                                guidance_embedding_scale)
        self.register_config(guidance_embedding_scale=float(guidance_embedding_scale))

    def embed(self, t: torch.Tensor, y: torch.Tensor | None = None,
              context_pooled: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The UNet's embedding plus ``guidance_embed(guidance_scale)``."""
        w = kwargs.pop("guidance_scale", None)
        emb = super().embed(t, y, context_pooled=context_pooled, **kwargs)
        if w is None:
            return emb
        w = torch.as_tensor(w, device=emb.device)
        if w.ndim == 0:
            w = w.expand(emb.shape[0])
        if w.shape != (emb.shape[0],):
            raise ValueError(f"guidance_scale must be a float or a ({emb.shape[0]},) tensor; "
                             f"got shape {tuple(w.shape)}")
        return emb + self.guidance_embed(w).to(emb.dtype)


def with_guidance_embedding(unet: UNet, **options: Any) -> GuidanceConditionedUNet:
    """A :class:`~ddpm_lib.distillation.GuidanceConditionedUNet` with ``unet``'s configuration and weights (its
    guidance embedding zero): the student of a guided distillation, initialised from the
    teacher. ``options``: ``guidance_embedding_scale``."""
    if not isinstance(unet, UNet):
        raise TypeError(f"unet must be a ddpm_lib.UNet; got {type(unet).__name__}")
    config = dict(unet.config)
    config.update(options)
    student = GuidanceConditionedUNet(**config)
    missing, unexpected = student.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not name.startswith("guidance_embed.") for name in missing):
        raise ValueError(f"unet's weights do not fit its configuration: missing {missing}, "
                         f"unexpected {unexpected}")
    parameter = next(unet.parameters())
    return student.to(device=parameter.device, dtype=parameter.dtype)
