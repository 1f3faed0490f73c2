"""Building blocks of the DDPM UNet: time embedding, residual block, resampling
(the attention blocks are in :mod:`ddpm_lib.models.attention` and importable from here).

Every block here is a plain ``nn.Module`` with a small, documented call signature, so that a
subclass of :class:`ddpm_lib.models.UNet` can swap one of them for its own:

* residual blocks are called as ``block(x, emb)``: ``x`` is ``(B, C_in, H, W)``, ``emb`` the
  conditioning embedding ``(B, E)``; they return ``(B, C_out, H, W)``;
* attention, down- and up-sampling blocks and the output head are called as ``block(x)``.

Paper references: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM), appendix B,
and the PixelCNN++ / Wide-ResNet backbone it builds on.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionBlock",  # noqa: F822  (attention.py, re-exported below)
    "ClassEmbedding",
    "CrossAttention",  # noqa: F822  (attention.py, re-exported below)
    "CrossAttentionBlock",  # noqa: F822  (attention.py, re-exported below)
    "Downsample",
    "GroupNormAct",
    "OutputHead",
    "ResAttnBlock",
    "ResBlock",
    "TimestepEmbedding",
    "Upsample",
    "masked_mean",  # noqa: F822  (attention.py, re-exported below)
    "multi_head_attention",  # noqa: F822  (attention.py, re-exported below)
    "sinusoidal_embedding",
    "zero_module",
]


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero in place and return it.

    Used on the last convolution of each residual branch and on the output convolution, so that
    every block starts as the identity (improved-diffusion's ``zero_module``; DDPM initialises
    the same layers with a scale of 1e-10).
    """
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


# ---------------------------------------------------------------------------------------------
# Time and class embeddings
# ---------------------------------------------------------------------------------------------
def _frequencies(
    dim: int, freq_shift: float, max_period: float, device: torch.device | None = None
) -> torch.Tensor:
    """``exp(-log(max_period) * i / (dim/2 - freq_shift))`` for ``i < dim/2``, in float32.

    Computed exactly as in the DDPM code (and diffusers' ``get_timestep_embedding``) so that a
    converted checkpoint sees bit-identical embeddings.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device)
    return torch.exp(exponent / (half - freq_shift))


def sinusoidal_embedding(
    t: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Transformer sinusoidal embedding of (possibly fractional) timesteps.

    ``emb[b] = [sin(t_b * f_0), ..., sin(t_b * f_{d/2-1}), cos(t_b * f_0), ...]`` with
    ``f_i = max_period ** (-i / (d/2 - freq_shift))``. DDPM uses ``freq_shift=1`` and sin
    first; diffusers' default is ``freq_shift=0`` with cos first (``flip_sin_to_cos``).

    Args:
        t: timesteps, shape ``(B,)``, any real dtype.
        dim: embedding width ``d`` (an odd ``d`` is zero-padded by one column).

    Returns:
        float32 tensor of shape ``(B, d)``.
    """
    freqs = _frequencies(dim, freq_shift, max_period, t.device)
    return _sinusoid(t, freqs, dim, flip_sin_to_cos)


def _sinusoid(t: torch.Tensor, freqs: torch.Tensor, dim: int, flip: bool) -> torch.Tensor:
    args = t.float()[:, None] * freqs[None, :]  # (B, d/2)
    parts = (torch.cos(args), torch.sin(args)) if flip else (torch.sin(args), torch.cos(args))
    emb = torch.cat(parts, dim=1)  # (B, d - d % 2)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """``t -> Linear(SiLU(Linear(sinusoid(t))))``: DDPM's timestep embedding.

    Args:
        channels: width of the sinusoidal embedding (the UNet's base channels).
        emb_channels: output width ``E`` (DDPM: ``4 * channels``).
        flip_sin_to_cos, freq_shift: see :func:`sinusoidal_embedding`.

    Call: ``(B,)`` timesteps -> ``(B, E)``.
    """

    def __init__(
        self, channels: int, emb_channels: int, *, flip_sin_to_cos: bool = False,
        freq_shift: float = 1.0,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift
        self.linear_1 = nn.Linear(channels, emb_channels)
        self.linear_2 = nn.Linear(emb_channels, emb_channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # (B, C), float32; the frequencies are rebuilt per call (a 64-element arange) so that a
        # model cast to bf16 still embeds large timesteps exactly
        emb = sinusoidal_embedding(
            t, self.channels, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift
        )
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))  # (B, E)


class ClassEmbedding(nn.Module):
    """Learned class embedding with one extra row for "no label".

    Labels are ``0 .. num_classes - 1``, or ``-1`` for the null label of classifier-free
    guidance (Ho & Salimans 2021), which reads row ``num_classes`` of the table. The mapping is
    a ``torch.where``, so it never synchronises with the device.

    Call: ``(B,)`` integer labels -> ``(B, E)``.
    """

    def __init__(self, num_classes: int, emb_channels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, emb_channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        index = torch.where(y < 0, torch.full_like(y, self.num_classes), y)
        return self.embedding(index)


# ---------------------------------------------------------------------------------------------
# Group normalisation (+ SiLU), always computed in float32
# ---------------------------------------------------------------------------------------------
def _group_norm_shape(x: torch.Tensor) -> tuple[int, int, int]:
    n, c = x.shape[0], x.shape[1]
    return n, c, x.numel() // max(n * c, 1)


class _GroupNormSiLUDropout(torch.autograd.Function):
    """``Dropout(SiLU(GroupNorm(x)))`` in one autograd node (eager CPU/GPU training path).

    Unfused, autograd keeps ``x`` (GroupNorm), ``GroupNorm(x)`` (SiLU) and a float dropout
    mask, and the forward makes four activation-sized passes plus a Bernoulli draw. Here the
    node keeps ``x``, the group statistics and, with dropout, a bool mask. The backward
    recomputes ``GroupNorm(x)`` (one kernel, cheaper than storing it when memory bandwidth is
    the limit), overwrites it with the SiLU gradient, and hands the dropout's ``1 / (1 - p)``
    to the (C,)-sized weight instead of another activation-sized pass, so it allocates one
    activation-sized buffer besides the input gradient. The mask is ``rand < p`` for dropped
    values, i.e. each value is kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``,
    exactly as ``nn.Dropout``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        groups: int,
        eps: float,
        p: float,
    ) -> torch.Tensor:
        n, c, hw = _group_norm_shape(x)
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hw, groups, eps)
        out = F.silu(y, inplace=True)
        drop = None
        if p > 0.0:
            drop = torch.rand_like(out) < p
            out.masked_fill_(drop, 0.0).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(x, weight, bias, mean, rstd, drop)
        ctx.groups, ctx.eps, ctx.p = groups, eps, p
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, mean, rstd, drop = ctx.saved_tensors
        n, c, hw = _group_norm_shape(x)
        # recompute y = GroupNorm(x) (one kernel, bit-identical to the forward's), then turn it
        # into grad_y in place: grad_y = silu'(y) * grad_out * keep / (1 - p)
        y = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hw, ctx.groups, ctx.eps)[0]
        grad_y = torch.ops.aten.silu_backward.grad_input(grad_out, y, grad_input=y)
        keep_scale = None if drop is None else 1.0 / (1.0 - ctx.p)
        if keep_scale is not None:
            grad_y.masked_fill_(drop, 0.0)
            # GroupNorm's backward is linear in grad_y: the 1 / (1 - p) of the dropout is
            # applied to the (C,)-sized weight and parameter gradients instead of grad_y
            weight = weight * keep_scale
        grad_x, grad_w, grad_b = torch.ops.aten.native_group_norm_backward(
            grad_y, x, mean, rstd, weight, n, c, hw, ctx.groups, list(ctx.needs_input_grad[:3])
        )
        if keep_scale is not None:
            grad_w = None if grad_w is None else grad_w.mul_(keep_scale)
            grad_b = None if grad_b is None else grad_b.mul_(keep_scale)
        return grad_x, grad_w, grad_b, None, None, None


class GroupNormAct(nn.GroupNorm):
    """``nn.GroupNorm`` computed in float32, optionally followed by SiLU and dropout.

    Under ``torch.autocast`` (or with a bf16/fp16 input) the statistics and the affine map are
    computed in float32 and the result is cast back to the input's dtype, as in
    improved-diffusion's ``GroupNorm32``. With ``activation=True`` the SiLU (and, in training,
    the dropout of probability ``dropout``) is fused with the normalisation in eager mode (see
    ``_GroupNormSiLUDropout``); under ``torch.compile`` the plain ops are used and the
    compiler fuses them.

    Call: ``(B, C, ...)`` -> same shape and dtype.
    """

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-6, *, activation: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        if dropout and not activation:
            raise ValueError("GroupNormAct: dropout requires activation=True")
        self.activation = activation
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        # half-precision inputs are normalised in float32; float32/float64 stay as they are
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        weight, bias = self.weight.to(x32.dtype), self.bias.to(x32.dtype)
        p = self.dropout if self.training else 0.0
        if (
            self.activation
            and not torch.compiler.is_compiling()
            and x32.ndim >= 3
            and torch.is_grad_enabled()
            and (x32.requires_grad or weight.requires_grad or bias.requires_grad)
        ):
            out = _GroupNormSiLUDropout.apply(x32, weight, bias, self.num_groups, self.eps, p)
            return out.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = F.group_norm(x32, self.num_groups, weight, bias, self.eps)
        if self.activation:
            # in place only when autograd does not need the normalised tensor
            inplace = not (torch.is_grad_enabled() and out.requires_grad)
            out = F.silu(out, inplace=inplace)
            if p > 0.0:
                out = F.dropout(out, p, training=True)
        return out.to(dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}, dropout={self.dropout}"


# ---------------------------------------------------------------------------------------------
# Residual block and attention
# ---------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """DDPM residual block (Wide-ResNet style, pre-activation).

    ``h = Conv3x3(SiLU(GN(x))) + Linear(SiLU(emb))``;
    ``h = Conv3x3(Dropout(SiLU(GN(h))))`` (``norm2`` holds the dropout); ``out = skip(x) + h``
    where ``skip`` is a 1x1 convolution when the channel count changes and the identity
    otherwise. The second convolution starts at zero, so the block starts as ``skip``.

    With ``emb_channels=None`` the block takes no embedding (no ``emb_proj``; the autoencoder's
    blocks, diffusers' ``ResnetBlock2D`` with ``temb_channels=None``).

    Call: ``x`` ``(B, C_in, H, W)``, ``emb`` ``(B, E)`` (or ``None`` without ``emb_channels``)
    -> ``(B, C_out, H, W)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, emb_channels: int | None, *,
        dropout: float = 0.0, norm_groups: int = 32, norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = GroupNormAct(norm_groups, in_channels, norm_eps, activation=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = None if emb_channels is None else nn.Linear(emb_channels, out_channels)
        # GroupNorm, SiLU and dropout as one fused layer
        self.norm2 = GroupNormAct(
            norm_groups, out_channels, norm_eps, activation=True, dropout=dropout
        )
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))  # (B, C_out, H, W)
        if self.emb_proj is not None:
            if emb is None:
                raise TypeError("this ResBlock was built with emb_channels: pass emb (B, E)")
            emb_out = self.emb_proj(F.silu(emb)).to(h.dtype)  # (B, C_out)
            # conv outputs are not saved by autograd, so adding in place is safe and saves a copy
            h = h.add_(emb_out[:, :, None, None])
        h = self.conv2(self.norm2(h))
        skip = x if self.skip is None else self.skip(x)
        return h.add_(skip.to(h.dtype))


class ResAttnBlock(nn.Module):
    """A residual block optionally followed by attention and by attention to context tokens:
    one step of a UNet level.

    Call: ``(x, emb)`` -> ``attn(res(x, emb))``; with a ``context_attn`` block,
    ``(x, emb, context, context_mask)`` -> ``context_attn(attn(res(x, emb)), context,
    context_mask)`` (either attention may be ``None``).
    """

    def __init__(
        self, res: nn.Module, attn: nn.Module | None = None,
        context_attn: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.res = res
        self.attn = attn
        self.context_attn = context_attn

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.res(x, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.context_attn is not None:
            h = self.context_attn(h, context, context_mask)
        return h


# ---------------------------------------------------------------------------------------------
# Resampling and output
# ---------------------------------------------------------------------------------------------
class Downsample(nn.Module):
    """Strided 3x3 convolution that halves the resolution.

    ``padding=0`` pads one row/column at the bottom/right only, which is TensorFlow's "SAME"
    padding used by DDPM (and diffusers' ``downsample_padding=0``); ``padding=1`` pads all sides.

    Call: ``(B, C, H, W)`` -> ``(B, C, H/2, W/2)``.
    """

    def __init__(self, channels: int, *, padding: int = 0) -> None:
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"downsample_padding must be 0 or 1; got {padding!r}")
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


# Nearest 2x upsampling followed by a 3x3 convolution (padding 1) is a transposed convolution
# with stride 2, padding 1 and a 4x4 kernel whose taps are sums of the 3x3 taps: along each
# axis, output 2m reads input m-1 with tap 0 and input m with taps 1+2, output 2m+1 reads
# input m with taps 0+1 and input m+1 with tap 2. In transposed-convolution indexing
# (output = 2 * input - 1 + k) that is K[0] = W[2], K[1] = W[1] + W[2], K[2] = W[0] + W[1],
# K[3] = W[0]. It needs 16 instead of 36 multiply-adds per input pixel and never materialises
# the upsampled tensor.
_UPSAMPLE_TAPS = torch.tensor(
    [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
)  # (4 transposed taps, 3 taps)
_UPSAMPLE_KRON = torch.kron(_UPSAMPLE_TAPS, _UPSAMPLE_TAPS)  # (16, 9): 2-D taps


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution.

    The parameter is the 3x3 convolution ``conv`` (as in DDPM and diffusers). For inputs of at
    least ``fused_min_pixels`` pixels the pair is computed as one equivalent stride-2
    transposed convolution (same result up to float rounding, 16/36 of the multiply-adds);
    below that the plain pair is faster because the kernel transform dominates.

    Call: ``(B, C, H, W)`` -> ``(B, C, 2H, 2W)``.
    """

    fused_min_pixels = 256

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] < self.fused_min_pixels:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        weight = self.conv.weight  # (C_out, C_in, 3, 3)
        c_out, c_in = weight.shape[:2]
        taps = _UPSAMPLE_KRON.to(weight.device, weight.dtype)
        kernel = (weight.reshape(c_out * c_in, 9) @ taps.t()).view(c_out, c_in, 4, 4)
        kernel = kernel.transpose(0, 1).to(x.dtype)  # (C_in, C_out, 4, 4)
        bias = None if self.conv.bias is None else self.conv.bias.to(x.dtype)
        return F.conv_transpose2d(x, kernel, bias, stride=2, padding=1)  # (B, C, 2H, 2W)


class OutputHead(nn.Module):
    """``Conv3x3(SiLU(GN(h)))`` with the convolution initialised to zero.

    Call: ``(B, C, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(
        self, channels: int, out_channels: int, *, norm_groups: int = 32, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.norm = GroupNormAct(norm_groups, channels, norm_eps, activation=True)
        self.conv = zero_module(nn.Conv2d(channels, out_channels, 3, padding=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(h))


# ---------------------------------------------------------------------------------------------
# Re-exports
# ---------------------------------------------------------------------------------------------
# The attention blocks live in attention.py, which builds on zero_module and GroupNormAct above:
# re-exported lazily (PEP 562) so that ``from ddpm_lib.models.layers import AttentionBlock``
# keeps working without an import cycle.
_ATTENTION_NAMES = frozenset({
    "AttentionBlock", "CrossAttention", "CrossAttentionBlock", "masked_mean",
    "multi_head_attention", "_check_context", "_split_heads",
})


def __getattr__(name: str) -> Any:
    if name in _ATTENTION_NAMES:
        from . import attention

        return getattr(attention, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
