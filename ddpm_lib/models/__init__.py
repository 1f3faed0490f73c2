"""Networks: the DDPM :class:`UNet`, the latent-diffusion :class:`AutoencoderKL` and the blocks
they are built from (see ``layers``)."""

from .autoencoder import AutoencoderKL, AutoencoderOutput, DiagonalGaussian
from .discriminator import PatchDiscriminator
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
from .pretrained import PretrainedModel
from .unet import UNet, UNetLevel

__all__ = [
    "AttentionBlock",
    "AutoencoderKL",
    "AutoencoderOutput",
    "ClassEmbedding",
    "DiagonalGaussian",
    "Downsample",
    "GroupNormAct",
    "OutputHead",
    "PatchDiscriminator",
    "PretrainedModel",
    "ResAttnBlock",
    "ResBlock",
    "TimestepEmbedding",
    "UNet",
    "UNetLevel",
    "Upsample",
    "sinusoidal_embedding",
    "zero_module",
]
