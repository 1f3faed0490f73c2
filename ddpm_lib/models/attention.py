"""Attention blocks of the UNet: spatial self-attention (DDPM, Ho et al. 2020) and attention to
context tokens (the cross-attention of Latent Diffusion, Rombach et al. 2022), over one kernel.

* :func:`multi_head_attention` -- ``softmax(q k^T / sqrt(d) + mask) v`` per head in float32,
  with an optional boolean mask, through
  :func:`torch.nn.functional.scaled_dot_product_attention`;
* :class:`AttentionBlock` -- self-attention over the ``H * W`` positions, called ``block(x)``;
* :class:`CrossAttention`, :class:`CrossAttentionBlock` -- attention to ``(B, L, D)`` context
  tokens, padding masked by a ``(B, L)`` bool mask;
* :func:`masked_mean` -- the mean over the real tokens of a padded sequence.

Every name is re-exported by :mod:`ddpm_lib.models.layers`, where they used to live.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNormAct, zero_module

__all__ = [
    "AttentionBlock",
    "CrossAttention",
    "CrossAttentionBlock",
    "masked_mean",
    "multi_head_attention",
]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, C) -> (B, heads, N, C / heads)`` (a view)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def multi_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` for every head, in float32; the one attention
    kernel call of every attention layer here.

    Args:
        q: queries ``(B, heads, N, d)``.
        k, v: keys and values ``(B, heads, M, d)``.
        mask: ``None``, or a bool tensor broadcastable to ``(B, heads, N, M)``: ``True``
            where a query may attend to a key (the convention of
            :func:`torch.nn.functional.scaled_dot_product_attention`). Every query must keep
            at least one key.

    Returns:
        ``(B, N, heads * d)`` in the dtype of ``q``. The softmax runs in float32 even under
        autocast.
    """
    b, heads, n, d = q.shape
    dtype = q.dtype
    # (meta tensors, used to count flops without memory, have no autocast state)
    off = nullcontext() if q.device.type == "meta" else torch.autocast(q.device.type, enabled=False)
    with off:
        a = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return a.transpose(1, 2).reshape(b, n, heads * d).to(dtype)  # (B, N, heads * d)


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of token states ``(B, L, D)`` over their real tokens: ``mask`` ``(B, L)`` bool,
    ``True`` for real tokens (``None``: all are real). Returns ``(B, D)``; a row without any
    real token gives zeros. How text is pooled into one vector per prompt.
    """
    if mask is None:
        return states.mean(dim=1)
    weights = mask.to(states.dtype)[:, :, None]  # (B, L, 1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def _check_context(
    block: str, context: torch.Tensor | None, context_dim: int, batch: int
) -> torch.Tensor:
    if context is None:
        raise ValueError(
            f"{block} was built with context_dim={context_dim} and needs context, a tensor of "
            f"shape (B, L, {context_dim}); got None"
        )
    if not torch.compiler.is_compiling() and (
        context.ndim != 3 or context.shape[0] != batch or context.shape[2] != context_dim
    ):
        raise ValueError(
            f"context must have shape ({batch}, L, {context_dim}) for {block}; got "
            f"{tuple(context.shape)}"
        )
    return context


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels, with a residual connection; optionally
    joined by text tokens (GLIDE).

    ``q, k, v = Linear(GN(x))``; ``out = x + Linear(softmax(q k^T / sqrt(d)) v)`` computed by
    :func:`multi_head_attention`. The softmax runs in float32 even under autocast. The output
    projection starts at zero, so the block starts as the identity.

    With ``context_dim`` the block is GLIDE's text-conditioned attention (Nichol et al. 2022,
    the ``encoder_kv`` of its ``AttentionBlock``): the context tokens ``(B, L, context_dim)``
    are projected to extra keys and values that are put before the pixels' own, so every pixel
    attends to the ``L + HW`` keys of the text and the image at once; padding tokens are
    masked out.

    Args:
        channels: ``C``; ``num_heads`` must divide it (``d = C / num_heads``).
        context_dim: width ``D`` of the context tokens, or ``None`` for plain self-attention.

    Call: ``block(x)`` ``(B, C, H, W)`` -> ``(B, C, H, W)``; with ``context_dim``,
    ``block(x, context, context_mask)`` with ``context`` ``(B, L, D)`` and ``context_mask``
    ``(B, L)`` bool (``True`` = real token) or ``None`` (every token is real).
    """

    def __init__(
        self, channels: int, *, num_heads: int = 1, norm_groups: int = 32, norm_eps: float = 1e-6,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"num_heads must divide the attention channels; got num_heads={num_heads} "
                f"for {channels} channels"
            )
        self.channels, self.num_heads = channels, num_heads
        self.context_dim = context_dim
        self.norm = GroupNormAct(norm_groups, channels, norm_eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = None if context_dim is None else nn.Linear(context_dim, 2 * channels)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, height, width = x.shape
        heads = self.num_heads
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(h)  # (B, HW, 3C)
        qkv = qkv.view(b, height * width, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, d)
        mask = None
        if self.context_kv is not None:
            context = _check_context("AttentionBlock", context, self.context_dim or 0, b)
            length = context.shape[1]
            kv = self.context_kv(context.to(h.dtype))  # (B, L, 2C)
            kv = kv.view(b, length, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
            k = torch.cat([kv[0], k], dim=2)  # (B, heads, L + HW, d)
            v = torch.cat([kv[1], v], dim=2)
            if context_mask is not None:
                pixels = context_mask.new_ones(b, height * width)
                mask = torch.cat([context_mask, pixels], dim=1)[:, None, None, :]  # (B,1,1,L+HW)
        elif context is not None:
            raise ValueError(
                "context was given to an AttentionBlock built without context_dim; build it "
                "with context_dim=D to attend to context tokens"
            )
        a = multi_head_attention(q, k, v, mask)  # (B, HW, C)
        out = self.proj_out(a).transpose(1, 2).reshape(b, c, height, width)  # (B, C, H, W)
        return x + out.to(x.dtype)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens to context tokens (text), without normalisation or
    residual: the cross-attention of Latent Diffusion's and PixArt-alpha's blocks.

    ``q = Linear(h)``, ``k, v = Linear(context)``; ``out = Linear(softmax(q k^T / sqrt(d) +
    mask) v)`` computed by :func:`multi_head_attention` (float32 softmax), the mask removing
    padding tokens. The output projection ``proj_out`` starts at zero, so a residual branch
    ``h + CrossAttention(h, ...)`` starts as the identity and a fresh network's output does not
    depend on the context (PixArt-alpha zero-initialises the same projection).

    Args:
        channels: ``C`` of the query tokens; ``num_heads`` must divide it.
        context_dim: width ``D`` of the context tokens.
        qkv_bias: whether the query and key/value projections have a bias (Stable
            Diffusion's have none; the output projection always has one).

    Call: ``attn(h, context, context_mask=None)``: ``h`` ``(B, N, C)``, ``context``
    ``(B, L, D)``, ``context_mask`` ``(B, L)`` bool (``True`` = real token; ``None``: all
    real) -> ``(B, N, C)``.
    """

    def __init__(
        self, channels: int, context_dim: int, *, num_heads: int = 1, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"num_heads must divide the attention channels; got num_heads={num_heads} "
                f"for {channels} channels"
            )
        self.channels, self.num_heads, self.context_dim = channels, num_heads, context_dim
        self.q = nn.Linear(channels, channels, bias=qkv_bias)
        self.context_kv = nn.Linear(context_dim, 2 * channels, bias=qkv_bias)
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(
        self, h: torch.Tensor, context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, heads = h.shape[0], self.channels, self.num_heads
        context = _check_context(type(self).__name__, context, self.context_dim, b)
        length = context.shape[1]
        q = _split_heads(self.q(h), heads)  # (B, heads, N, d)
        kv = self.context_kv(context.to(h.dtype))  # (B, L, 2C)
        k, v = kv.view(b, length, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, L)
        return self.proj_out(multi_head_attention(q, k, v, mask))  # (B, N, C)


class CrossAttentionBlock(CrossAttention):
    """Cross-attention from the pixels to context tokens (text), with a residual connection:
    the conditioning layer of Latent Diffusion (Rombach et al. 2022, Sec. 3.3).

    ``out = x + CrossAttention(GN(x) as tokens, context, mask)`` (see :class:`CrossAttention`:
    float32 softmax, padding masked, output projection zero-initialised, so the block starts
    as the identity and the network's output at initialisation does not depend on the
    context).

    Args:
        channels: ``C`` of the feature map; ``num_heads`` must divide it.
        context_dim: width ``D`` of the context tokens.

    Call: ``block(x, context, context_mask=None)``: ``x`` ``(B, C, H, W)``, ``context``
    ``(B, L, D)``, ``context_mask`` ``(B, L)`` bool (``True`` = real token; ``None``: all
    real) -> ``(B, C, H, W)``.
    """

    def __init__(
        self, channels: int, context_dim: int, *, num_heads: int = 1, norm_groups: int = 32,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(channels, context_dim, num_heads=num_heads)
        self.norm = GroupNormAct(norm_groups, channels, norm_eps)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        out = super().forward(h, context, context_mask)  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, height, width).to(x.dtype)
