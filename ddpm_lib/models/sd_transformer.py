"""The transformer block of Stable Diffusion's UNet (Rombach et al. 2022, Sec. 3.3 and the
``SpatialTransformer`` of its code; diffusers' ``Transformer2DModel`` with
``BasicTransformerBlock``), built from the attention layers of ``layers.py``.

Layout of :class:`SpatialTransformer` at a feature map ``x`` ``(B, C, H, W)``::

    h = GroupNorm(x)  (eps 1e-6)
    h = proj_in(h)    (1x1 convolution in SD 1.x, a linear layer on the tokens in SD 2.x)
    h: (B, HW, C) tokens
    depth x [ h = h + SelfAttention(LayerNorm(h))
              h = h + CrossAttention(LayerNorm(h), context)
              h = h + GEGLU feed-forward(LayerNorm(h)) ]
    out = x + proj_out(h)  (zero-initialised: the block starts as the identity)

The self-attention is :class:`~ddpm_lib.models.SelfAttention`, the cross-attention
:class:`~ddpm_lib.models.CrossAttention`, both without query/key/value biases as in Stable
Diffusion; the softmax runs in float32 (what SD 2.1's ``upcast_attention`` asks for).
:class:`ddpm_lib.UNet` builds it with ``text_attention="transformer"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention
from .layers import GroupNormAct, zero_module
from .transformer_layers import SelfAttention

__all__ = ["GEGLUFeedForward", "SpatialTransformer", "TransformerLayer"]


class GEGLUFeedForward(nn.Module):
    """The gated-GELU feed-forward layer (Shazeer 2020, "GLU Variants Improve Transformer"):
    ``out(a * GELU(g))`` with ``[a, g] = proj(h)`` split in two halves along the features;
    the GELU is the exact (erf) one.

    Args:
        dim: width ``D`` of the tokens.
        mult: the hidden width is ``mult * D`` (Stable Diffusion: 4).

    Call: ``(B, N, D)`` -> ``(B, N, D)``.
    """

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(h).chunk(2, dim=-1)  # (B, N, mult D) each
        if torch.is_grad_enabled():
            return self.out(a * F.gelu(gate))
        return self.out(a.mul_(F.gelu(gate)))  # inference: one (B, N, mult D) buffer less


class TransformerLayer(nn.Module):
    """One pre-norm layer of :class:`SpatialTransformer` (diffusers' ``BasicTransformerBlock``):
    ``h + SelfAttention(LN(h))``, then ``h + CrossAttention(LN(h), context)``, then
    ``h + GEGLU(LN(h))``; LayerNorms with affine parameters, eps 1e-5.

    Args:
        dim: width ``C`` of the tokens; ``num_heads`` must divide it.
        context_dim: width ``D`` of the context tokens (the text encoder's).
        num_heads: attention heads of both attentions.

    Call: ``layer(h, context, context_mask=None)``: ``h`` ``(B, N, C)``, ``context``
    ``(B, L, D)``, ``context_mask`` ``(B, L)`` bool or ``None`` -> ``(B, N, C)``.
    """

    def __init__(self, dim: int, context_dim: int, *, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"num_heads must divide the attention channels; got num_heads={num_heads} "
                f"for {dim} channels"
            )
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = SelfAttention(dim, num_heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = CrossAttention(dim, context_dim, num_heads=num_heads, qkv_bias=False)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = GEGLUFeedForward(dim)

    def forward(
        self, h: torch.Tensor, context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = h + self.attn1(self.norm1(h))
        h = h + self.attn2(self.norm2(h), context, context_mask).to(h.dtype)
        return h + self.ff(self.norm3(h))


class SpatialTransformer(nn.Module):
    """Stable Diffusion's transformer block over a feature map (see the module docstring).

    Args:
        channels: ``C`` of the feature map (also the tokens' width).
        context_dim: width ``D`` of the context tokens.
        num_heads: attention heads (SD 1.x: 8 at every level; SD 2.x: ``C / 64``).
        depth: transformer layers (diffusers' ``transformer_layers_per_block``; SD: 1).
        linear_projection: ``proj_in`` / ``proj_out`` are linear layers on the tokens (SD 2.x,
            diffusers' ``use_linear_projection``) instead of 1x1 convolutions (SD 1.x).
        norm_groups: groups of the input GroupNorm (eps 1e-6).

    Call: ``block(x, context, context_mask=None)``: ``x`` ``(B, C, H, W)``, ``context``
    ``(B, L, D)``, ``context_mask`` ``(B, L)`` bool (``True`` = real token) or ``None`` (every
    token attended, as Stable Diffusion does) -> ``(B, C, H, W)``.
    """

    def __init__(
        self, channels: int, context_dim: int, *, num_heads: int, depth: int = 1,
        linear_projection: bool = False, norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.channels, self.context_dim = channels, context_dim
        self.num_heads, self.depth = num_heads, depth
        self.linear_projection = linear_projection
        self.norm = GroupNormAct(norm_groups, channels, 1e-6)
        projection = (lambda: nn.Linear(channels, channels)) if linear_projection else (
            lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = projection()
        self.transformer_blocks = nn.ModuleList(
            TransformerLayer(channels, context_dim, num_heads=num_heads) for _ in range(depth)
        )
        self.proj_out = zero_module(projection())

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        if not self.linear_projection:
            h = self.proj_in(h)  # (B, C, H, W)
        h = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.linear_projection:
            h = self.proj_in(h)
        for layer in self.transformer_blocks:
            h = layer(h, context, context_mask)
        if self.linear_projection:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(b, c, height, width)  # (B, C, H, W)
        if not self.linear_projection:
            h = self.proj_out(h)
        return x + h.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, context_dim={self.context_dim}, "
                f"num_heads={self.num_heads}, depth={self.depth}, "
                f"linear_projection={self.linear_projection}")
