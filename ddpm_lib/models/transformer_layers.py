"""Token-level transformer blocks of :class:`ddpm_lib.DiT`: patch embedding, fixed 2-D sin-cos
positions, self-attention, MLP, the adaLN-Zero block and the final adaLN layer.

Every block is a plain ``nn.Module`` on tokens ``(B, N, D)``; attention goes through
:func:`ddpm_lib.models.multi_head_attention` (``scaled_dot_product_attention``, float32
softmax) and text cross-attention is :class:`ddpm_lib.models.CrossAttention`, both from
``layers.py``. Names follow the original DiT code (``attn.qkv``, ``mlp.fc1``,
``adaLN_modulation.1``), so its checkpoints load almost key for key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import multi_head_attention
from .layers import zero_module

__all__ = [
    "DiTBlock",
    "DiTFinalLayer",
    "Mlp",
    "PatchEmbed",
    "SelfAttention",
    "sincos_position_embedding",
]


def sincos_position_embedding(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings of a ``height x width`` grid of tokens.

    Token ``(i, j)`` (row ``i``, column ``j``, index ``i * width + j``) gets
    ``[e(j), e(i)]`` where ``e(p) = [sin(p w_k), cos(p w_k)]_k`` with
    ``w_k = 10000^(-k / (dim / 4))``, ``k < dim / 4`` (the MAE / DiT embedding; the first half
    encodes the column). Computed in float64, returned as float32 ``(height * width, dim)``.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs a width divisible by 4; got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)

    def embed(positions: torch.Tensor) -> torch.Tensor:  # (M,) -> (M, dim / 2)
        angles = positions[:, None] * omega[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)  # i of each token
    cols = torch.arange(width, dtype=torch.float64).repeat(height)  # j of each token
    return torch.cat([embed(cols), embed(rows)], dim=1).float()  # (HW, dim)


def _modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``h * (1 + scale) + shift`` per sample: ``h`` ``(B, N, D)``, ``shift``/``scale``
    ``(B, D)``; one fused kernel."""
    return torch.addcmul(shift[:, None], h, scale[:, None] + 1)


class PatchEmbed(nn.Module):
    """Patchify: a ``p x p`` convolution of stride ``p`` (a linear map of each patch).

    Call: ``(B, C, H, W)`` -> ``(B, (H / p) (W / p), D)``, tokens in row-major order.
    """

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens with a fused ``qkv`` projection.

    ``q, k, v = qkv(h)``; ``out = proj(softmax(q k^T / sqrt(d)) v)`` by
    :func:`ddpm_lib.models.multi_head_attention` (``scaled_dot_product_attention``, float32
    softmax). ``qkv_bias=False`` drops the bias of ``qkv`` (Stable Diffusion's attention).
    Call: ``(B, N, D)`` -> ``(B, N, D)``.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, dim = h.shape
        qkv = self.qkv(h).view(b, n, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, d)
        return self.proj(multi_head_attention(q, k, v))  # (B, N, D)


class Mlp(nn.Module):
    """``fc2(GELU_tanh(fc1(h)))``, the transformer's feed-forward layer.
    Call: ``(B, N, D)`` -> ``(B, N, D)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class DiTBlock(nn.Module):
    """A transformer block conditioned by adaLN-Zero (DiT, Sec. 3.2), optionally with
    cross-attention to context tokens between attention and MLP (PixArt-alpha, Chen et al.
    2024).

    ``adaLN_modulation = Sequential(SiLU, Linear(D, 6D))`` regresses ``(shift, scale, gate)``
    for the attention and for the MLP from ``c``; it starts at zero, so every gate is zero and
    the block starts as the identity (with ``cross_attn``, whose output projection starts at
    zero too). The LayerNorms have no affine parameters.

    Args:
        attn, mlp: the token mixers, ``(B, N, D) -> (B, N, D)``.
        cross_attn: ``None`` or a :class:`ddpm_lib.models.CrossAttention` (called as
            ``cross_attn(h, context, context_mask)``).
        norm_eps, mlp_norm_eps: epsilons of the two LayerNorms (the original: 1e-6 both).

    Call: ``block(h, c)`` or ``block(h, c, context, context_mask)``: ``h`` ``(B, N, D)``,
    ``c`` ``(B, D)`` -> ``(B, N, D)``.
    """

    def __init__(
        self, hidden_size: int, attn: nn.Module, mlp: nn.Module,
        cross_attn: nn.Module | None = None, *, norm_eps: float = 1e-6,
        mlp_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.attn = attn
        self.cross_attn = cross_attn
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = mlp
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), zero_module(nn.Linear(hidden_size, 6 * hidden_size))
        )

    def forward(
        self, h: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        modulation = self.adaLN_modulation(c).to(h.dtype)  # (B, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=1)  # (B, D) each
        a = self.attn(_modulate(self.norm1(h), shift1, scale1))
        h = torch.addcmul(h, gate1[:, None], a.to(h.dtype))  # h + gate * attn
        if self.cross_attn is not None:
            h = h + self.cross_attn(h, context, context_mask).to(h.dtype)
        m = self.mlp(_modulate(self.norm2(h), shift2, scale2))
        return torch.addcmul(h, gate2[:, None], m.to(h.dtype))  # (B, N, D)


class DiTFinalLayer(nn.Module):
    """``linear(LayerNorm(h) * (1 + scale) + shift)`` with ``(shift, scale)`` regressed from
    ``c``; ``linear`` and the regression start at zero, so a fresh DiT predicts zero.

    Call: ``(h (B, N, D), c (B, D))`` -> ``(B, N, p * p * out_channels)``.
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=norm_eps)
        self.linear = zero_module(nn.Linear(hidden_size, patch_size * patch_size * out_channels))
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), zero_module(nn.Linear(hidden_size, 2 * hidden_size))
        )

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).to(h.dtype).chunk(2, dim=1)  # (B, D) each
        return self.linear(_modulate(self.norm_final(h), shift, scale))
