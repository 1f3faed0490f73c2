"""Networks: the DDPM :class:`UNet` and the blocks it is built from (see ``layers``)."""

from .layers import (
    AttentionBlock,
    ClassEmbedding,
    Downsample,
    GroupNormAct,
    OutputHead,
    ResAttnBlock,
    ResBlock,
    TimestepEmbedding,
    Upsample,
    sinusoidal_embedding,
    zero_module,
)
from .unet import UNet, UNetLevel

__all__ = [
    "AttentionBlock",
    "ClassEmbedding",
    "Downsample",
    "GroupNormAct",
    "OutputHead",
    "ResAttnBlock",
    "ResBlock",
    "TimestepEmbedding",
    "UNet",
    "UNetLevel",
    "Upsample",
    "sinusoidal_embedding",
    "zero_module",
]
