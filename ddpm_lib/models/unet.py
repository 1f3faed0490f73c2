"""The DDPM noise-prediction UNet (Ho et al. 2020, appendix B), built from overridable pieces.

Layout (``L = len(channel_mults)`` levels, ``C_i = base_channels * channel_mults[i]``)::

    t, y ──embed──> emb (B, E)
    x (B, in, H, W) ─conv_in─> (B, C, H, W)
      down level i (i = 0..L-1): num_res_blocks x [ResBlock (+ attention)], then a strided conv
                                 (except the last level); every output is kept as a skip
      middle:                    ResBlock, attention, ResBlock at (H / 2^(L-1))
      up level i (i = L-1..0):   (num_res_blocks + 1) x [concat skip, ResBlock (+ attention)],
                                 then nearest 2x upsampling + conv (except level 0)
    ─GroupNorm, SiLU, conv─> (B, out, H, W)     (out doubled when learn_sigma)

Attention is used at level ``i`` when its resolution ``image_size / 2^i`` is listed in
``attention_resolutions``. With ``context_dim`` (text conditioning, GLIDE / Latent Diffusion)
every attention position and the middle block also attend to context tokens, and the pooled
context is added to ``emb``. The UNet depends on nothing else in ddpm_lib.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from ._inputs import check_condition, check_context, check_timesteps, check_x
from ._unet_config import (
    TEXT_ATTENTION_CHOICES,
    UNetGeometry,
    check_unet_arguments,
    unet_geometry,
)
from .attention import AttentionBlock, CrossAttentionBlock
from .image_condition import COND_RESIZE_CHOICES, check_noise_level, resize_condition
from .layers import (
    ClassEmbedding,
    Downsample,
    OutputHead,
    ResAttnBlock,
    ResBlock,
    TimestepEmbedding,
    Upsample,
    zero_module,
)
from .pretrained import CONFIG_NAME, WEIGHTS_NAME, PretrainedModel  # noqa: F401 (re-exported)
from .sd_transformer import SpatialTransformer

__all__ = ["UNet", "UNetLevel"]


class UNetLevel(nn.Module):
    """One resolution level: a list of ``ResAttnBlock`` and an optional resampling layer.

    ``blocks[j]`` is called as ``block(h, emb)``; ``resample`` (a ``Downsample`` on the way
    down, an ``Upsample`` on the way up, ``None`` at the ends) as ``resample(h)``.
    """

    blocks: nn.ModuleList
    resample: nn.Module | None

    def __init__(self, blocks: Sequence[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(PretrainedModel):
    """DDPM UNet predicting ``eps`` (or ``x0`` / ``v``) from ``x_t`` and the timestep.

    Args:
        in_channels: channels of ``x_t`` (3 for RGB).
        out_channels: channels of the prediction; ``None`` means ``in_channels``.
        base_channels: width ``C`` of the first level (DDPM CIFAR-10: 128).
        channel_mults: level ``i`` has ``C * channel_mults[i]`` channels; ``len`` = levels.
        num_res_blocks: residual blocks per level on the way down (``+1`` on the way up).
        attention_resolutions: resolutions (side lengths, relative to ``image_size``) at which
            every residual block is followed by self-attention. Each must be
            ``image_size / 2^i`` for some level ``i``.
        image_size: side length the network is designed for. It must be divisible by
            ``2^(levels - 1)`` and maps ``attention_resolutions`` to levels; inputs of other
            sizes are accepted when divisible by ``2^(levels - 1)``.
        dropout: dropout probability inside each residual block.
        num_classes: number ``N`` of class labels for class conditioning, or ``None``. Labels
            ``y`` are ``0 .. N-1``, or ``-1`` for "no label" (the null class of
            classifier-free guidance).
        learn_sigma: also output the values ``v`` of the learned-range variance (Nichol &
            Dhariwal 2021), doubling the output channels: prediction first, ``v`` second.
        num_heads: attention heads (ignored when ``head_channels`` is given).
        norm_groups: GroupNorm groups; must divide every channel count.
        gradient_checkpointing: recompute block activations in backward to save memory.
        head_channels: channels per attention head; overrides ``num_heads`` (diffusers'
            ``attention_head_dim``).
        emb_channels: width ``E`` of the time embedding; ``None`` means ``4 * base_channels``.
        norm_eps: GroupNorm epsilon (DDPM / TensorFlow: 1e-6).
        downsample_padding: 0 pads the strided convolutions at the bottom/right only (DDPM,
            TensorFlow "SAME"); 1 pads all sides (diffusers' default).
        flip_sin_to_cos, freq_shift: sinusoidal embedding variant (DDPM: ``False``, ``1``;
            diffusers' default: ``True``, ``0``).
        context_dim: width ``D`` of context tokens (a text encoder's states) to condition on,
            or ``None``. Then every attention position (``attention_resolutions``) and the
            middle block attend to the tokens, with padding masked, and the projected pooled
            context is added to the time embedding (GLIDE, Nichol et al. 2022). Needs at least
            one attention resolution or uses only the middle block's.
        text_attention: how the tokens enter the attention when ``context_dim`` is set:
            ``"joint"`` (default): the text keys and values are concatenated to the
            self-attention's (GLIDE, :class:`ddpm_lib.models.AttentionBlock` with
            ``context_dim``); ``"cross"``: a separate cross-attention layer after each
            self-attention (Latent Diffusion, :class:`ddpm_lib.models.CrossAttentionBlock`).
            Joint is the default because it measured faster and smaller than cross
            (``benchmarks/bench_text.py --part b``; the figures are in
            ``docs/guides/text_to_image.md``). ``"transformer"``: Stable Diffusion's
            transformer block (:class:`ddpm_lib.models.SpatialTransformer`: self-attention,
            cross-attention and a gated-GELU feed-forward) in place of the self-attention;
            the text then enters only there (no pooled text in the time embedding), as in
            diffusers' ``UNet2DConditionModel``.
        transformer_depth: transformer layers per block with ``text_attention="transformer"``
            (diffusers' ``transformer_layers_per_block``).
        transformer_linear_projection: with ``"transformer"``, linear input/output
            projections (SD 2.x) instead of 1x1 convolutions (SD 1.x).
        cond_channels: channels ``C`` of a conditioning image (a super-resolution stage's
            low-resolution input, an inpainting model's mask and masked image), or ``None``.
            Then ``cond_image`` ``(B, C, h, w)`` is required: it is resized to ``x_t``'s size
            and concatenated after ``x_t`` at the input (SR3; see
            ``ddpm_lib.models.image_condition``).
        cond_resize: ``"bilinear"`` (default, ``align_corners=False``, as ADM and GLIDE) or
            ``"bicubic"``: how ``cond_image`` is resized.
        noise_level_embedding: with ``cond_channels``: also embed the condition's noise
            augmentation level ``noise_level`` like the timestep (sinusoid and MLP, its last
            layer initialised to zero) and add it to the time embedding (Ho et al. 2022,
            "Cascaded Diffusion Models"; diffusers' ``class_embed_type="timestep"``).

    Call ``model(x_t, t, y=None, *, context=None, context_mask=None, context_pooled=None)``:
        ``x_t``: ``(B, in_channels, H, W)`` float; ``t``: ``(B,)`` timesteps (an int or 0-d
        tensor is broadcast); ``y``: ``(B,)`` long labels for a class-conditional model.
        With ``context_dim``: ``context`` ``(B, L, context_dim)`` float, the token states
        (required); ``context_mask`` ``(B, L)`` bool, ``True`` for real tokens and ``False``
        for padding (an integer 0/1 mask is accepted; ``None`` means every token is real;
        each row needs at least one real token); ``context_pooled`` ``(B, context_dim)``, the
        pooled text vector added (projected) to the time embedding (``None``: the mean of the
        real tokens). :meth:`ddpm_lib.TextConditionedUNet.encode_prompts` returns exactly
        these three keyword arguments.
        With ``cond_channels``: ``cond_image`` ``(B, cond_channels, h, w)`` (required) and
        ``noise_level`` ``(B,)`` (a number is broadcast; ``None``: 0, a clean condition).
        Returns ``(B, out_channels, H, W)`` (``2 * out_channels`` with ``learn_sigma``).

    Subclassing: the network is assembled from factory methods, each of which can be
    overridden without touching ``forward``: :meth:`make_time_embedding`,
    :meth:`make_class_embedding`, :meth:`embed` (how ``t``, ``y`` and any extra keyword
    arguments become the embedding), :meth:`make_input`, :meth:`make_res_block`,
    :meth:`make_attention`, :meth:`make_downsample`, :meth:`make_upsample`,
    :meth:`make_output_head`, and for text :meth:`make_context_attention` (how the tokens enter
    at an attention position) and :meth:`make_context_embedding` (how the pooled text enters
    the embedding). Attributes a factory needs can be set before calling
    ``super().__init__``; constructor arguments a subclass adds should be passed to
    :meth:`register_config` so that :meth:`save_pretrained` / :meth:`from_pretrained` keep them.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mults: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        image_size: int = 32,
        dropout: float = 0.1,
        num_classes: int | None = None,
        learn_sigma: bool = False,
        num_heads: int = 1,
        norm_groups: int = 32,
        gradient_checkpointing: bool = False,
        *,
        head_channels: int | None = None,
        emb_channels: int | None = None,
        norm_eps: float = 1e-6,
        downsample_padding: int = 0,
        flip_sin_to_cos: bool = False,
        freq_shift: float = 1.0,
        context_dim: int | None = None,
        text_attention: str = "joint",
        transformer_depth: int = 1,
        transformer_linear_projection: bool = False,
        cond_channels: int | None = None,
        cond_resize: str = "bilinear",
        noise_level_embedding: bool = True,
    ) -> None:
        super().__init__()
        # ---- validation (models/_unet_config.py): errors name the argument and the fix -----
        check_unet_arguments(
            in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            channel_mults=channel_mults, num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions, image_size=image_size, dropout=dropout,
            num_classes=num_classes, learn_sigma=learn_sigma, num_heads=num_heads,
            norm_groups=norm_groups, gradient_checkpointing=gradient_checkpointing,
            head_channels=head_channels, emb_channels=emb_channels, norm_eps=norm_eps,
            downsample_padding=downsample_padding, flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift, context_dim=context_dim, text_attention=text_attention,
            transformer_depth=transformer_depth,
            transformer_linear_projection=transformer_linear_projection,
            cond_channels=cond_channels, cond_resize=cond_resize,
            noise_level_embedding=noise_level_embedding)
        geometry = unet_geometry(channel_mults, attention_resolutions, image_size, base_channels,
                                 norm_groups, num_heads, head_channels)
        channel_mults, attention_resolutions = geometry.channel_mults, geometry.attention_resolutions

        # ---- configuration ---------------------------------------------------------------
        self._config = dict(
            in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions), image_size=image_size,
            dropout=float(dropout), num_classes=num_classes, learn_sigma=learn_sigma,
            num_heads=num_heads, norm_groups=norm_groups,
            gradient_checkpointing=gradient_checkpointing, head_channels=head_channels,
            emb_channels=emb_channels, norm_eps=float(norm_eps),
            downsample_padding=downsample_padding, flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
        )
        if context_dim is not None:  # text options are saved only by text models
            self._config.update(context_dim=context_dim, text_attention=text_attention)
        if text_attention == "transformer":  # saved only by Stable Diffusion-layout models
            self._config.update(transformer_depth=transformer_depth,
                                transformer_linear_projection=transformer_linear_projection)
        if cond_channels is not None:  # image options are saved only by image-conditioned models
            self._config.update(cond_channels=cond_channels, cond_resize=cond_resize,
                                noise_level_embedding=noise_level_embedding)
        self._set_attributes(geometry, context_dim, text_attention)
        self.transformer_depth = transformer_depth
        self.transformer_linear_projection = transformer_linear_projection
        self.cond_channels = cond_channels
        self.cond_resize = cond_resize

        # ---- modules, each from an overridable factory -----------------------------------
        self.time_embed = self.make_time_embedding()
        self.class_embed = self.make_class_embedding()
        self.noise_level_embed = (self.make_noise_level_embedding()
                                  if cond_channels is not None and noise_level_embedding else None)
        if context_dim is not None:
            self.context_embed = self.make_context_embedding()
        self.conv_in = self.make_input()

        ch = self._build_levels()  # self.down, self.mid, self.up
        self.out = self.make_output_head(ch, self.out_channels * (2 if learn_sigma else 1))

    def _set_attributes(
        self, geometry: UNetGeometry, context_dim: int | None, text_attention: str
    ) -> None:
        """The hyperparameters as attributes, read by the factories: from the saved
        configuration and the resolved ``geometry`` (channels and attention levels)."""
        config = self._config
        self.in_channels = config["in_channels"]
        out_channels = config["out_channels"]
        self.out_channels = out_channels if out_channels is not None else self.in_channels
        self.learn_sigma = config["learn_sigma"]
        self.base_channels = config["base_channels"]
        self.channel_mults = geometry.channel_mults
        self.level_channels = tuple(geometry.channels)
        self.num_levels = len(geometry.channel_mults)
        self.num_res_blocks = config["num_res_blocks"]
        self.attention_levels = geometry.attention_levels
        self.image_size = config["image_size"]
        self.dropout = config["dropout"]
        self.num_classes = config["num_classes"]
        self.num_heads = config["num_heads"]
        self.head_channels = config["head_channels"]
        self.norm_groups = config["norm_groups"]
        self.norm_eps = config["norm_eps"]
        emb_channels = config["emb_channels"]
        self.emb_channels = emb_channels if emb_channels is not None else 4 * self.base_channels
        self.downsample_padding = config["downsample_padding"]
        self.flip_sin_to_cos = config["flip_sin_to_cos"]
        self.freq_shift = config["freq_shift"]
        self.gradient_checkpointing = config["gradient_checkpointing"]
        self.context_dim = context_dim
        self.text_attention = text_attention

    def _build_levels(self) -> int:
        """The down path, the middle and the up path (skip connections paired in reverse);
        returns the channels of the last up level."""
        channels, num_levels = self.level_channels, self.num_levels
        skip_channels = [self.base_channels]
        ch = self.base_channels
        self.down = nn.ModuleList()
        for level, out_ch in enumerate(channels):
            blocks = []
            for _ in range(self.num_res_blocks):
                blocks.append(self._res_attn(ch, out_ch, level))
                ch = out_ch
                skip_channels.append(ch)
            resample = None
            if level < num_levels - 1:
                resample = self.make_downsample(ch, level)
                skip_channels.append(ch)
            self.down.append(UNetLevel(blocks, resample))

        last = num_levels - 1
        self.mid = nn.ModuleList(
            [
                ResAttnBlock(self.make_res_block(ch, ch, last), *self._attentions(ch, last)),
                ResAttnBlock(self.make_res_block(ch, ch, last)),
            ]
        )

        self.up = nn.ModuleList()
        for level in reversed(range(num_levels)):
            out_ch = channels[level]
            blocks = []
            for _ in range(self.num_res_blocks + 1):
                blocks.append(self._res_attn(ch + skip_channels.pop(), out_ch, level))
                ch = out_ch
            resample = self.make_upsample(ch, level) if level > 0 else None
            self.up.append(UNetLevel(blocks, resample))
        return ch

    # ------------------------------------------------------------------------------------
    # Presets
    # ------------------------------------------------------------------------------------
    @classmethod
    def ddpm_cifar10(cls, **overrides: Any) -> UNet:
        """The DDPM paper's CIFAR-10 network: 35,746,307 parameters.

        ``base_channels=128``, ``channel_mults=(1, 2, 2, 2)``, two residual blocks per level,
        one-head attention at 16x16, dropout 0.1, GroupNorm eps 1e-6, bottom/right padding of
        the strided convolutions and DDPM's sinusoidal embedding: the layout of the released
        ``google/ddpm-cifar10-32`` weights (load them with
        :func:`ddpm_lib.interop.unet_from_diffusers`). Keyword arguments override any setting
        (e.g. ``num_classes=10``, ``learn_sigma=True``).
        """
        config: dict[str, Any] = dict(
            in_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
            attention_resolutions=(16,), image_size=32, dropout=0.1, num_heads=1,
            norm_groups=32, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False,
            freq_shift=1.0,
        )
        config.update(overrides)
        return cls(**config)

    # ------------------------------------------------------------------------------------
    # Overridable pieces
    # ------------------------------------------------------------------------------------
    def make_time_embedding(self) -> nn.Module:
        """Module mapping timesteps ``(B,)`` to ``(B, emb_channels)``."""
        return TimestepEmbedding(
            self.base_channels, self.emb_channels, flip_sin_to_cos=self.flip_sin_to_cos,
            freq_shift=self.freq_shift,
        )

    def make_class_embedding(self) -> nn.Module | None:
        """Module mapping labels ``(B,)`` (``-1`` = no label) to ``(B, emb_channels)``, or
        ``None`` for an unconditional model."""
        if self.num_classes is None:
            return None
        return ClassEmbedding(self.num_classes, self.emb_channels)

    def make_noise_level_embedding(self) -> nn.Module:
        """Module mapping the condition's augmentation levels ``(B,)`` to
        ``(B, emb_channels)``, added to the time embedding; built only with ``cond_channels``
        and ``noise_level_embedding``. Default: a :class:`ddpm_lib.models.TimestepEmbedding`
        whose last layer starts at zero (the network starts independent of the level)."""
        embedding = self.make_time_embedding()
        zero_module(cast("nn.Module", getattr(embedding, "linear_2", embedding)))
        return embedding

    def make_context_embedding(self) -> nn.Module | None:
        """Module mapping the pooled context ``(B, context_dim)`` to ``(B, emb_channels)``,
        added to the time embedding (GLIDE's ``transformer_proj``); built only when
        ``context_dim`` is set. Default: one linear layer initialised to zero, so that the
        embedding starts independent of the text; ``None`` (no pooled text) with
        ``text_attention="transformer"``, as in Stable Diffusion."""
        if self.text_attention == "transformer":
            return None
        return zero_module(nn.Linear(self.context_dim or 0, self.emb_channels))

    def make_context_attention(self, channels: int, level: int) -> nn.Module:
        """The layer through which the context tokens enter at an attention position of
        ``level`` (the middle block uses the last level); built only when ``context_dim`` is
        set. It is called as ``block(h, context, context_mask)`` with ``h`` ``(B, C, H, W)``,
        ``context`` ``(B, L, context_dim)`` and ``context_mask`` ``(B, L)`` bool or ``None``,
        and returns ``(B, C, H, W)``.

        With ``text_attention="cross"`` it is a :class:`ddpm_lib.models.CrossAttentionBlock`
        placed after the self-attention of :meth:`make_attention`; with ``"joint"`` it is an
        :class:`ddpm_lib.models.AttentionBlock` whose keys and values also hold the text, used
        instead of :meth:`make_attention`'s block; with ``"transformer"`` a
        :class:`ddpm_lib.models.SpatialTransformer`, also instead of it. All start as the
        identity.
        """
        heads = channels // self.head_channels if self.head_channels else self.num_heads
        context_dim = self.context_dim or 0
        if self.text_attention == "joint":
            return AttentionBlock(
                channels, num_heads=heads, norm_groups=self.norm_groups, norm_eps=self.norm_eps,
                context_dim=context_dim,
            )
        if self.text_attention == "cross":
            return CrossAttentionBlock(
                channels, context_dim, num_heads=heads, norm_groups=self.norm_groups,
                norm_eps=self.norm_eps,
            )
        if self.text_attention == "transformer":
            return SpatialTransformer(
                channels, context_dim, num_heads=heads, depth=self.transformer_depth,
                linear_projection=self.transformer_linear_projection,
                norm_groups=self.norm_groups,
            )
        raise ValueError(
            f"text_attention must be one of {TEXT_ATTENTION_CHOICES}; got {self.text_attention!r}"
        )

    def embed(
        self, t: torch.Tensor, y: torch.Tensor | None = None,
        context_pooled: torch.Tensor | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        """The conditioning embedding ``(B, emb_channels)`` given to every residual block.

        Default: ``time_embed(t) + class_embed(y)``, plus ``context_embed(context_pooled)``
        for a text model (``context_pooled`` is passed only when ``context_dim`` is set) and
        ``noise_level_embed(noise_level)`` for an image-conditioned one.
        Override it (together with :meth:`make_class_embedding`) to condition on something
        else; extra keyword arguments of ``forward`` arrive here.
        """
        noise_level = kwargs.pop("noise_level", None)
        emb = self._embed_time_and_class(t, y, **kwargs)
        if self.noise_level_embed is not None:  # (B,) levels -> (B, E)
            emb = emb + self.noise_level_embed(check_noise_level(noise_level, t)).to(emb.dtype)
        elif noise_level is not None:
            raise ValueError(
                "noise_level was given, but this UNet has no noise-level embedding; build it "
                "with cond_channels=C (and noise_level_embedding=True)"
            )
        if context_pooled is not None and self.context_embed is not None:
            emb = emb + self.context_embed(context_pooled.to(emb.dtype)).to(emb.dtype)
        return emb

    def _embed_time_and_class(
        self, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        y = check_condition(self, "UNet", self.num_classes if self.class_embed is not None
                            else None, y, t.shape[0], kwargs)
        emb = self.time_embed(t)  # (B, E)
        if self.class_embed is None or y is None:  # unconditional (y is None then)
            return emb
        return emb + self.class_embed(y).to(emb.dtype)

    def make_input(self) -> nn.Module:
        """First convolution ``(B, in_channels + cond_channels, H, W) -> (B, base_channels,
        H, W)`` (``cond_channels`` counts 0 without image conditioning)."""
        channels = self.in_channels + (self.cond_channels or 0)
        return nn.Conv2d(channels, self.base_channels, 3, padding=1)

    def concat_condition(self, x: torch.Tensor, cond_image: Any) -> torch.Tensor:
        """The input of :meth:`make_input`'s convolution: ``x`` ``(B, in, H, W)``, with the
        resized ``cond_image`` concatenated after it for an image-conditioned model
        (``(B, in + cond_channels, H, W)``)."""
        if self.cond_channels is None:
            if cond_image is not None:
                raise ValueError(
                    "cond_image was given, but this UNet was built without cond_channels; "
                    "build it with cond_channels=C to condition on an image"
                )
            return x
        if cond_image is None:
            raise ValueError(
                f"this UNet is image-conditioned (cond_channels={self.cond_channels}): pass "
                f"cond_image, a (B, {self.cond_channels}, h, w) tensor"
            )
        cond = resize_condition(cond_image, x, self.cond_channels, self.cond_resize)
        return torch.cat([x, cond], dim=1)  # (B, in + cond_channels, H, W)

    def make_res_block(self, in_channels: int, out_channels: int, level: int) -> nn.Module:
        """Residual block at ``level``, called as ``block(x, emb)``
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        return ResBlock(
            in_channels, out_channels, self.emb_channels, dropout=self.dropout,
            norm_groups=self.norm_groups, norm_eps=self.norm_eps,
        )

    def make_attention(self, channels: int, level: int) -> nn.Module:
        """Self-attention at ``level`` (the middle block uses the last level), ``(B, C, H, W)
        -> (B, C, H, W)``."""
        heads = channels // self.head_channels if self.head_channels else self.num_heads
        return AttentionBlock(
            channels, num_heads=heads, norm_groups=self.norm_groups, norm_eps=self.norm_eps
        )

    def make_downsample(self, channels: int, level: int) -> nn.Module:
        """Halves the resolution after ``level``: ``(B, C, H, W) -> (B, C, H/2, W/2)``."""
        return Downsample(channels, padding=self.downsample_padding)

    def make_upsample(self, channels: int, level: int) -> nn.Module:
        """Doubles the resolution after up ``level``: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""
        return Upsample(channels)

    def make_output_head(self, channels: int, out_channels: int) -> nn.Module:
        """Output head ``(B, channels, H, W) -> (B, out_channels, H, W)``."""
        return OutputHead(
            channels, out_channels, norm_groups=self.norm_groups, norm_eps=self.norm_eps
        )

    def _res_attn(self, in_channels: int, out_channels: int, level: int) -> ResAttnBlock:
        res = self.make_res_block(in_channels, out_channels, level)
        if level not in self.attention_levels:
            return ResAttnBlock(res)
        return ResAttnBlock(res, *self._attentions(out_channels, level))

    def _attentions(self, channels: int, level: int) -> tuple[nn.Module | None, nn.Module | None]:
        """``(self-attention, context attention)`` of an attention position."""
        if self.context_dim is None:
            return self.make_attention(channels, level), None
        if self.text_attention in ("joint", "transformer"):  # these hold the self-attention
            return None, self.make_context_attention(channels, level)
        return self.make_attention(channels, level), self.make_context_attention(channels, level)

    # ------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None,
        *, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
        context_pooled: torch.Tensor | None = None, cond_image: torch.Tensor | None = None,
        noise_level: torch.Tensor | float | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        """Predict from ``x_t`` ``(B, in_channels, H, W)`` at timesteps ``t`` ``(B,)``.

        ``context``, ``context_mask`` and ``context_pooled`` are the text inputs of a model
        built with ``context_dim``, ``cond_image`` and ``noise_level`` those of a model built
        with ``cond_channels`` (see the class docstring).

        Returns ``(B, out_channels, H, W)``, or ``(B, 2 * out_channels, H, W)`` with
        ``learn_sigma`` (prediction first, variance values second along dim 1).
        """
        t = self._check_inputs(x, t)
        if noise_level is not None:
            kwargs["noise_level"] = noise_level
        if self.context_dim is None:
            if context is not None or context_mask is not None or context_pooled is not None:
                raise ValueError(
                    "context was given, but this UNet was built without context_dim; build it "
                    "with context_dim=D (the text encoder's width) to condition on text"
                )
            emb = self.embed(t, y, **kwargs)  # (B, E)
        else:
            context, context_mask, context_pooled = self._check_context(
                context, context_mask, context_pooled, x
            )
            emb = self.embed(t, y, context_pooled=context_pooled, **kwargs)  # (B, E)

        h = self.conv_in(self.concat_condition(x, cond_image))  # (B, C, H, W)
        skips = [h]
        for level in cast("Iterable[UNetLevel]", self.down):
            for block in level.blocks:
                h = self._run(block, h, emb, context, context_mask)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)  # (B, C_i, H/2, W/2)
                skips.append(h)
        for block in self.mid:
            h = self._run(block, h, emb, context, context_mask)
        for level in cast("Iterable[UNetLevel]", self.up):
            for block in level.blocks:
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C_h + C_skip, H_i, W_i)
                h = self._run(block, h, emb, context, context_mask)
            if level.resample is not None:
                h = level.resample(h)  # (B, C_i, 2 H_i, 2 W_i)
        return self.out(h)

    def _run(
        self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor,
        context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text = () if context is None else (context, context_mask)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(block, h, emb, *text, use_reentrant=False)
        return block(h, emb, *text)

    def _check_context(
        self, context: Any, context_mask: Any, context_pooled: Any, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Validate the text inputs; return them in ``x``'s dtype (mask as bool) and the pooled
        vector (the masked mean of ``context`` when not given)."""
        assert self.context_dim is not None  # only text networks check context
        return check_context(context, context_mask, context_pooled, x, self.context_dim, "UNet")

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Validate ``x`` and return ``t`` as a ``(B,)`` tensor (shape/dtype checks only)."""
        if not torch.compiler.is_compiling():
            check_x(x, self.in_channels, "UNet")
            factor = 2 ** (self.num_levels - 1)
            if x.shape[2] % factor or x.shape[3] % factor:
                raise ValueError(
                    f"x's height and width must be divisible by 2^(levels - 1) = {factor} for "
                    f"this {self.num_levels}-level UNet; got {tuple(x.shape[2:])}: resize or "
                    "pad the images"
                )
        return check_timesteps(t, x)

    # ------------------------------------------------------------------------------------
    # Configuration, saving and loading
    # ------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """A dict of the constructor keyword arguments; ``type(self)(**model.config)`` rebuilds it."""
        config = dict(self._config)
        config["gradient_checkpointing"] = bool(self.gradient_checkpointing)
        config.update(self._extra_config)
        return config

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())
