"""Networks: the DDPM :class:`UNet`, the latent-diffusion :class:`AutoencoderKL`, the blocks
they are built from (see ``layers``) and the text encoders of text-to-image models (see
``text``)."""

from .autoencoder import AutoencoderKL, AutoencoderOutput, DiagonalGaussian
from .discriminator import PatchDiscriminator
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
    masked_mean,
    multi_head_attention,
    sinusoidal_embedding,
    zero_module,
)
from .pretrained import PretrainedModel
from .text import HFTextEncoder, TextConditionedUNet, TextEncoder, TextEncoding
from .unet import UNet, UNetLevel

__all__ = [
    "AttentionBlock",
    "AutoencoderKL",
    "AutoencoderOutput",
    "ClassEmbedding",
    "CrossAttentionBlock",
    "DiagonalGaussian",
    "Downsample",
    "GroupNormAct",
    "HFTextEncoder",
    "OutputHead",
    "PatchDiscriminator",
    "PretrainedModel",
    "ResAttnBlock",
    "ResBlock",
    "TextConditionedUNet",
    "TextEncoder",
    "TextEncoding",
    "TimestepEmbedding",
    "UNet",
    "UNetLevel",
    "Upsample",
    "masked_mean",
    "multi_head_attention",
    "sinusoidal_embedding",
    "zero_module",
]
