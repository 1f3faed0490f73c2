"""Networks: the DDPM :class:`UNet`, the Diffusion Transformer :class:`DiT`, the
latent-diffusion :class:`AutoencoderKL`, the blocks they are built from (see ``layers``) and the
text encoders of text-to-image models (see ``text``)."""

from .attention import (
    AttentionBlock,
    CrossAttention,
    CrossAttentionBlock,
    masked_mean,
    multi_head_attention,
)
from .autoencoder import AutoencoderKL, AutoencoderOutput, DiagonalGaussian
from .discriminator import PatchDiscriminator
from .dit import DiT
from .guided import GuidedModel
from .hf_text import HFTextEncoder
from .layers import (
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
from .pretrained import PretrainedModel, register_model_class, resolve_model_class
from .sd_transformer import GEGLUFeedForward, SpatialTransformer, TransformerLayer
from .text import TextConditionedUNet, TextEncoder, TextEncoding
from .transformer_layers import (
    DiTBlock,
    DiTFinalLayer,
    Mlp,
    PatchEmbed,
    SelfAttention,
    sincos_position_embedding,
)
from .unet import UNet, UNetLevel

__all__ = [
    "AttentionBlock",
    "AutoencoderKL",
    "AutoencoderOutput",
    "ClassEmbedding",
    "CrossAttention",
    "CrossAttentionBlock",
    "DiT",
    "DiTBlock",
    "DiTFinalLayer",
    "DiagonalGaussian",
    "Downsample",
    "GEGLUFeedForward",
    "GroupNormAct",
    "GuidedModel",
    "HFTextEncoder",
    "Mlp",
    "OutputHead",
    "PatchDiscriminator",
    "PatchEmbed",
    "PretrainedModel",
    "ResAttnBlock",
    "ResBlock",
    "SelfAttention",
    "SpatialTransformer",
    "TextConditionedUNet",
    "TextEncoder",
    "TextEncoding",
    "TimestepEmbedding",
    "TransformerLayer",
    "UNet",
    "UNetLevel",
    "Upsample",
    "masked_mean",
    "multi_head_attention",
    "register_model_class",
    "resolve_model_class",
    "sincos_position_embedding",
    "sinusoidal_embedding",
    "zero_module",
]
