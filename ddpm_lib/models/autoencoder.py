"""The KL-regularised autoencoder of Latent Diffusion (Rombach et al. 2022, section 3.1).

An encoder maps an image ``x`` ``(B, C, H, W)`` to a diagonal Gaussian posterior
``q(z | x) = N(mean, diag(std^2))`` over latents ``z`` ``(B, L, H / f, W / f)``; a decoder maps a
latent back to an image. ``f = 2^(len(channel_mults) - 1)`` is the downsampling factor. Both
halves are built from the UNet's blocks (:mod:`ddpm_lib.models.layers`) without a time
embedding. Layout (``C_i = base_channels * channel_mults[i]``, ``n = num_res_blocks``)::

    encoder: conv_in (C -> C_0)
             level i = 0..L-1: n x ResBlock (-> C_i), a strided conv (except the last level)
             middle: ResBlock, attention (optional), ResBlock at C_{L-1}
             GroupNorm, SiLU, conv (-> 2 * latent_channels)       then quant_conv (1x1)
    decoder: post_quant_conv (1x1), conv_in (latent_channels -> C_{L-1})
             middle: ResBlock, attention (optional), ResBlock
             level i = L-1..0: (n + 1) x ResBlock (-> C_i), nearest 2x upsampling + conv
                                (except level 0)
             GroupNorm, SiLU, conv (-> out_channels)

This is the layout of CompVis' ``ldm.modules.diffusionmodules.model.Encoder/Decoder`` and of
diffusers' ``AutoencoderKL`` (Stable Diffusion's VAE), so their weights convert by renaming
(:func:`ddpm_lib.interop.autoencoder_from_diffusers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ddpm_lib._checks import check_bool, check_int, check_int_tuple, check_probability, check_real

from .attention import AttentionBlock
from .layers import Downsample, OutputHead, ResBlock, Upsample
from .pretrained import PretrainedModel
from .unet import UNetLevel

__all__ = ["AutoencoderKL", "AutoencoderOutput", "Decoder", "DiagonalGaussian", "Encoder"]

# LDM and diffusers clamp the log-variance to this range before exponentiating.
LOGVAR_RANGE = (-30.0, 20.0)


class DiagonalGaussian:
    """The posterior ``q(z | x) = N(mean, diag(exp(logvar)))`` returned by
    :meth:`AutoencoderKL.encode`.

    Args:
        mean: ``(B, L, h, w)``.
        logvar: log-variance, same shape; clamped to ``[-30, 20]`` as in LDM and diffusers.

    Attributes ``mean``, ``logvar``, ``var`` and ``std`` have the shape of ``mean``.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(
                f"mean and logvar must have the same shape; got {tuple(mean.shape)} and "
                f"{tuple(logvar.shape)}"
            )
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        """Split ``(B, 2L, h, w)`` encoder output into mean (first ``L`` channels) and
        log-variance (last ``L``)."""
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return cls(mean, logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised draw ``mean + std * eps``, ``eps ~ N(0, I)`` from ``generator``
        (on the generator's device, then moved); differentiable in ``mean`` and ``std``."""
        device = self.mean.device if generator is None else generator.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        """The most likely latent: ``mean``."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """``KL(q(z | x) || N(0, I))`` per sample in nats, summed over the latent dimensions.

        ``0.5 * sum(mean^2 + var - 1 - logvar)``; returns ``(B,)`` in at least float32.
        """
        mean, logvar = _at_least_float32(self.mean), _at_least_float32(self.logvar)
        return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        """``-log q(z | x)`` per sample in nats, summed over the latent dimensions: ``(B,)``."""
        mean, logvar = _at_least_float32(self.mean), _at_least_float32(self.logvar)
        z = _at_least_float32(z)
        per_dim = 0.5 * (math.log(2.0 * math.pi) + logvar + (z - mean).square() * torch.exp(-logvar))
        return per_dim.flatten(1).sum(dim=1)

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)}, dtype={self.mean.dtype})"


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class AutoencoderOutput(NamedTuple):
    """What :meth:`AutoencoderKL.forward` returns: ``sample`` (the reconstruction
    ``(B, C, H, W)``) and ``posterior`` (a :class:`DiagonalGaussian`)."""

    sample: torch.Tensor
    posterior: DiagonalGaussian


def _run_level(level: Any, h: torch.Tensor) -> torch.Tensor:
    for block in level.blocks:
        h = block(h)
    return h if level.resample is None else level.resample(h)


class Encoder(nn.Module):
    """``conv_in``, the down ``levels`` (:class:`ddpm_lib.models.UNetLevel`), the ``mid``
    blocks, then ``out`` (GroupNorm, SiLU, conv). Every block is called as ``block(h)``.

    Call: ``(B, C, H, W)`` -> ``(B, 2L, H / f, W / f)`` (posterior moments).
    """

    def __init__(
        self, conv_in: nn.Module, levels: Sequence[nn.Module], mid: Sequence[nn.Module],
        out: nn.Module,
    ) -> None:
        super().__init__()
        self.conv_in = conv_in
        self.down = nn.ModuleList(levels)
        self.mid = nn.ModuleList(mid)
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, C_0, H, W)
        for level in self.down:
            h = _run_level(level, h)  # (B, C_i, H / 2^i, W / 2^i) after level i's blocks
        for block in self.mid:
            h = block(h)  # (B, C_{L-1}, H / f, W / f)
        return self.out(h)


class Decoder(nn.Module):
    """``conv_in``, the ``mid`` blocks, the up ``levels`` (coarsest first), then ``out``.

    Call: ``(B, L, h, w)`` -> ``(B, out_channels, h * f, w * f)``.
    """

    def __init__(
        self, conv_in: nn.Module, mid: Sequence[nn.Module], levels: Sequence[nn.Module],
        out: nn.Module,
    ) -> None:
        super().__init__()
        self.conv_in = conv_in
        self.mid = nn.ModuleList(mid)
        self.up = nn.ModuleList(levels)
        self.out = out

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, C_{L-1}, h, w)
        for block in self.mid:
            h = block(h)
        for level in self.up:
            h = _run_level(level, h)  # (B, C_i, ...), then 2x larger except at level 0
        return self.out(h)

def _check_autoencoder_arguments(
    *, in_channels: Any, latent_channels: Any, base_channels: Any, channel_mults: Any,
    num_res_blocks: Any, attention: Any, norm_groups: Any, out_channels: Any, dropout: Any,
    norm_eps: Any, num_heads: Any, use_quant_conv: Any, use_post_quant_conv: Any,
) -> tuple[tuple[int, ...], list[int]]:
    """Check the arguments of :class:`AutoencoderKL` (errors name the argument and the fix);
    returns ``channel_mults`` as a tuple and the channels of every level."""
    check_int("in_channels", in_channels, 1)
    check_int("latent_channels", latent_channels, 1)
    check_int("base_channels", base_channels, 1)
    channel_mults = check_int_tuple("channel_mults", channel_mults, 1)
    check_int("num_res_blocks", num_res_blocks, 1)
    check_bool("attention", attention)
    check_int("norm_groups", norm_groups, 1)
    check_int("out_channels", out_channels, 1, allow_none=True)
    check_probability("dropout", dropout)
    check_real("norm_eps", norm_eps, 0, open_min=True)
    check_int("num_heads", num_heads, 1)
    check_bool("use_quant_conv", use_quant_conv)
    check_bool("use_post_quant_conv", use_post_quant_conv)
    channels = [base_channels * mult for mult in channel_mults]
    bad = [c for c in channels if c % norm_groups]
    if bad:
        raise ValueError(
            f"norm_groups={norm_groups} must divide every channel count, but the levels have "
            f"{channels} channels (base_channels={base_channels}, channel_mults="
            f"{list(channel_mults)}); change norm_groups or base_channels"
        )
    if attention and channels[-1] % num_heads:
        raise ValueError(
            f"num_heads={num_heads} must divide the middle attention's {channels[-1]} "
            "channels"
        )
    return channel_mults, channels


class AutoencoderKL(PretrainedModel):
    """KL-regularised autoencoder: images ``(B, C, H, W)`` <-> latents ``(B, L, H/f, W/f)``.

    Args:
        in_channels: image channels ``C``.
        latent_channels: latent channels ``L`` (LDM / Stable Diffusion: 4).
        base_channels: width ``C_0`` of the first level.
        channel_mults: level ``i`` has ``base_channels * channel_mults[i]`` channels; the
            downsampling factor is ``f = 2^(len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per encoder level (decoder levels get one more).
        attention: self-attention between the two middle residual blocks of each half.
        norm_groups: GroupNorm groups; must divide every channel count.
        out_channels: channels of the reconstruction; ``None`` means ``in_channels``.
        dropout: dropout probability inside the residual blocks (LDM: 0).
        norm_eps: GroupNorm epsilon (LDM / diffusers: 1e-6).
        num_heads: heads of the middle attention (LDM / diffusers: 1).
        use_quant_conv: the 1x1 convolution on the encoder's moments (``quant_conv``).
        use_post_quant_conv: the 1x1 convolution on the latents before decoding
            (``post_quant_conv``). Both are on in LDM and Stable Diffusion's VAE.

    Call ``ae(x, sample_posterior=True, generator=None)`` -> :class:`AutoencoderOutput`
    ``(sample, posterior)``: the reconstruction of a posterior sample (its mode with
    ``sample_posterior=False``) and the posterior. Use :meth:`encode` / :meth:`decode` apart.

    Subclassing: as :class:`ddpm_lib.UNet`, the network is assembled from factory methods that
    can be overridden: :meth:`make_input`, :meth:`make_res_block`, :meth:`make_attention`,
    :meth:`make_downsample`, :meth:`make_upsample` and :meth:`make_output_head`. Arguments a
    subclass adds go through :meth:`register_config` so :meth:`save_pretrained` keeps them.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        norm_groups: int = 32,
        *,
        out_channels: int | None = None,
        dropout: float = 0.0,
        norm_eps: float = 1e-6,
        num_heads: int = 1,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
    ) -> None:
        super().__init__()
        channel_mults, channels = _check_autoencoder_arguments(
            in_channels=in_channels, latent_channels=latent_channels,
            base_channels=base_channels, channel_mults=channel_mults,
            num_res_blocks=num_res_blocks, attention=attention, norm_groups=norm_groups,
            out_channels=out_channels, dropout=dropout, norm_eps=norm_eps, num_heads=num_heads,
            use_quant_conv=use_quant_conv, use_post_quant_conv=use_post_quant_conv,
        )

        self._config = dict(
            in_channels=in_channels, latent_channels=latent_channels,
            base_channels=base_channels, channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks, attention=attention, norm_groups=norm_groups,
            out_channels=out_channels, dropout=float(dropout), norm_eps=float(norm_eps),
            num_heads=num_heads, use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.latent_channels = latent_channels
        self.base_channels = base_channels
        self.channel_mults = channel_mults
        self.level_channels = tuple(channels)
        self.num_levels = len(channels)
        self.num_res_blocks = num_res_blocks
        self.attention = attention
        self.norm_groups = norm_groups
        self.dropout = float(dropout)
        self.norm_eps = float(norm_eps)
        self.num_heads = num_heads

        self.encoder = self._build_encoder()
        self.quant_conv = (
            nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        )
        self.post_quant_conv = (
            nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        )
        self.decoder = self._build_decoder()

    def _build_encoder(self) -> Encoder:
        """Input convolution, the levels down (residual blocks, then a downsample on all but
        the last), the middle and the head to ``2 * latent_channels`` (mean, log-variance)."""
        channels, last = self.level_channels, self.num_levels - 1
        ch = channels[0]
        down = []
        for level, out_ch in enumerate(channels):
            blocks = []
            for _ in range(self.num_res_blocks):
                blocks.append(self.make_res_block(ch, out_ch, level, "encoder"))
                ch = out_ch
            resample = self.make_downsample(ch, level) if level < last else None
            down.append(UNetLevel(blocks, resample))
        return Encoder(
            self.make_input(self.in_channels, channels[0], "encoder"), down, self._mid("encoder"),
            self.make_output_head(ch, 2 * self.latent_channels, "encoder"),
        )

    def _build_decoder(self) -> Decoder:
        """The levels up (one more residual block each, then an upsample on all but the
        first), then the input convolution from the latents, the middle and the image head
        (built in that order, which fixes the seeded initialisation)."""
        channels = self.level_channels
        ch = channels[-1]
        up = []
        for level in reversed(range(self.num_levels)):
            out_ch = channels[level]
            blocks = []
            for _ in range(self.num_res_blocks + 1):
                blocks.append(self.make_res_block(ch, out_ch, level, "decoder"))
                ch = out_ch
            resample = self.make_upsample(ch, level) if level > 0 else None
            up.append(UNetLevel(blocks, resample))
        return Decoder(
            self.make_input(self.latent_channels, channels[-1], "decoder"), self._mid("decoder"),
            up, self.make_output_head(ch, self.out_channels, "decoder"),
        )

    # ------------------------------------------------------------------------------------
    # Overridable pieces
    # ------------------------------------------------------------------------------------
    def make_input(self, in_channels: int, out_channels: int, part: str) -> nn.Module:
        """First convolution of the ``part`` (``"encoder"`` or ``"decoder"``):
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def make_res_block(
        self, in_channels: int, out_channels: int, level: int, part: str
    ) -> nn.Module:
        """Residual block at ``level`` of the ``part``, called as ``block(x)``
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` (the middle uses the last
        level)."""
        return ResBlock(
            in_channels, out_channels, None, dropout=self.dropout, norm_groups=self.norm_groups,
            norm_eps=self.norm_eps,
        )

    def make_attention(self, channels: int, part: str) -> nn.Module:
        """The middle self-attention of the ``part``, ``(B, C, h, w) -> (B, C, h, w)``."""
        return AttentionBlock(
            channels, num_heads=self.num_heads, norm_groups=self.norm_groups,
            norm_eps=self.norm_eps,
        )

    def make_downsample(self, channels: int, level: int) -> nn.Module:
        """Halves the resolution after encoder ``level`` (bottom/right padding, as LDM)."""
        return Downsample(channels, padding=0)

    def make_upsample(self, channels: int, level: int) -> nn.Module:
        """Doubles the resolution after decoder ``level`` (nearest neighbour + conv)."""
        return Upsample(channels)

    def make_output_head(self, channels: int, out_channels: int, part: str) -> nn.Module:
        """GroupNorm, SiLU and conv ending the ``part``: the moments ``2L`` for the encoder,
        the image for the decoder."""
        return OutputHead(channels, out_channels, norm_groups=self.norm_groups, norm_eps=self.norm_eps)

    def _mid(self, part: str) -> list[nn.Module]:
        ch, last = self.level_channels[-1], self.num_levels - 1
        blocks = [self.make_res_block(ch, ch, last, part)]
        if self.attention:
            blocks.append(self.make_attention(ch, part))
        blocks.append(self.make_res_block(ch, ch, last, part))
        return blocks

    # ------------------------------------------------------------------------------------
    # Encoding and decoding
    # ------------------------------------------------------------------------------------
    @property
    def downsampling_factor(self) -> int:
        """``f = 2^(len(channel_mults) - 1)``: latents are ``f`` times smaller per side."""
        return 2 ** (self.num_levels - 1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last convolution, where LDM's adaptive GAN weight compares
        gradient norms (used by :class:`ddpm_lib.AutoencoderLoss`). A subclass with another
        output head overrides this."""
        head: Any = self.decoder.out
        return head.conv.weight

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """The posterior ``q(z | x)`` of images ``x`` ``(B, in_channels, H, W)`` in ``[-1, 1]``
        (``H``, ``W`` divisible by :attr:`downsampling_factor`): a :class:`DiagonalGaussian`
        over ``(B, latent_channels, H / f, W / f)``."""
        self._check_images(x)
        moments = self.encoder(x)  # (B, 2L, H / f, W / f)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``(B, out_channels, h * f, w * f)`` from latents ``(B, latent_channels, h,
        w)`` (unscaled: divide diffusion latents by the scale factor first)."""
        self._check_latents(z)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> AutoencoderOutput:
        """Encode ``x``, draw a latent (or take the mode) and decode it."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return AutoencoderOutput(self.decode(z), posterior)

    def _check_images(self, x: Any) -> None:
        if torch.compiler.is_compiling():
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of images; got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor in [-1, 1]; got dtype {x.dtype}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, {self.in_channels}, H, W) for this autoencoder "
                f"(in_channels={self.in_channels}); got {tuple(x.shape)}"
            )
        f = self.downsampling_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"x's height and width must be divisible by the downsampling factor f = {f} "
                f"(channel_mults has {self.num_levels} levels); got {tuple(x.shape[2:])}: "
                f"resize, crop or pad the images to a multiple of {f}"
            )

    def _check_latents(self, z: Any) -> None:
        if torch.compiler.is_compiling():
            return
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor of latents; got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"z must be a floating-point tensor; got dtype {z.dtype}")
        if z.ndim != 4 or z.shape[1] != self.latent_channels or min(z.shape[2:]) < 1:
            raise ValueError(
                f"z must have shape (B, {self.latent_channels}, h, w) for this autoencoder "
                f"(latent_channels={self.latent_channels}); got {tuple(z.shape)}"
            )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())
