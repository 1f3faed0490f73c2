"""Networks: the DDPM :class:`UNet`, the blocks it is built from (see ``layers``) and the text
encoders of text-to-image models (see ``text``)."""

from .layers import (
    AttentionBlock,
    ClassEmbedding,
    CrossAttentionBlock,
    Downsample,
    GroupNormAct,
    OutputHead,
    ResAttnBlock,
    ResBlock,
    TimestepEmbedding,
    Upsample,
    multi_head_attention,
    sinusoidal_embedding,
    zero_module,
)
from .text import HFTextEncoder, TextConditionedUNet, TextEncoder, TextEncoding
from .unet import UNet, UNetLevel

__all__ = [
    "AttentionBlock",
    "ClassEmbedding",
    "CrossAttentionBlock",
    "Downsample",
    "GroupNormAct",
    "HFTextEncoder",
    "OutputHead",
    "ResAttnBlock",
    "ResBlock",
    "TextConditionedUNet",
    "TextEncoder",
    "TextEncoding",
    "TimestepEmbedding",
    "UNet",
    "UNetLevel",
    "Upsample",
    "multi_head_attention",
    "sinusoidal_embedding",
    "zero_module",
]
