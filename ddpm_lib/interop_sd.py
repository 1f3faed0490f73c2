"""Stable Diffusion's UNet (diffusers' ``UNet2DConditionModel``) as a :class:`ddpm_lib.UNet`,
and back.

* :func:`unet_from_diffusers_sd` converts an SD 1.x / 2.x-layout ``UNet2DConditionModel``
  (``CrossAttnDownBlock2D`` / ``DownBlock2D`` / ``UNetMidBlock2DCrossAttn`` /
  ``UpBlock2D`` / ``CrossAttnUpBlock2D``) into a ``UNet(context_dim=...,
  text_attention="transformer")`` with the same outputs (:func:`ddpm_lib.unet_from_diffusers`
  calls it for such a model).
* :func:`unet_to_diffusers` and :func:`autoencoder_to_diffusers` write our networks back as
  diffusers models, for saving a pipeline in the diffusers folder layout. They run the forward
  conversion on a fresh diffusers model while recording which layers it pairs, and copy the
  weights the other way along the same pairs: one walk serves both directions.

Heads: diffusers' ``attention_head_dim`` is the number of heads per level in these configs
(``num_attention_heads = num_attention_heads or attention_head_dim``): SD 1.x has 8 heads at
every level (our ``num_heads=8``), SD 2.x a head size of 64 (our ``head_channels=64``).
"""

from __future__ import annotations

from typing import Any

import torch

from .interop import _copy, _copy_group, _copy_resnet, recording_copies
from .models.unet import UNet

__all__ = ["autoencoder_to_diffusers", "sd_unet_kwargs", "unet_from_diffusers_sd",
           "unet_to_diffusers"]

_DOWN = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
_UP = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
#: settings the converter needs at these values (diffusers' defaults for SD 1.x / 2.x)
_FIXED = (
    ("center_input_sample", False), ("act_fn", "silu"), ("dual_cross_attention", False),
    ("class_embed_type", None), ("addition_embed_type", None), ("num_class_embeds", None),
    ("resnet_time_scale_shift", "default"), ("resnet_skip_time_act", False),
    ("resnet_out_scale_factor", 1.0), ("time_embedding_type", "positional"),
    ("time_embedding_act_fn", None), ("timestep_post_act", None), ("time_cond_proj_dim", None),
    ("conv_in_kernel", 3), ("conv_out_kernel", 3), ("encoder_hid_dim", None),
    ("attention_type", "default"), ("mid_block_scale_factor", 1), ("cross_attention_norm", None),
    ("class_embeddings_concat", False), ("reverse_transformer_layers_per_block", None),
    ("projection_class_embeddings_input_dim", None), ("mid_block_type", "UNetMidBlock2DCrossAttn"),
)


def _unsupported(key: str, value: Any, expected: str) -> ValueError:
    return ValueError(
        f"cannot convert this UNet2DConditionModel: {key}={value!r} is not supported (expected "
        f"{expected}); ddpm_lib.UNet holds the Stable Diffusion 1.x / 2.x layout "
        "(CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D / "
        "CrossAttnUpBlock2D, positional time embedding, no class or added embeddings)"
    )


def _one_value(config: dict[str, Any], key: str, default: Any, levels: int) -> Any:
    """A per-level setting that must be the same at every level: its single value."""
    value = config.get(key, default)
    values = list(value) if isinstance(value, (list, tuple)) else [value] * levels
    if any(isinstance(v, (list, tuple)) for v in values) or len(set(values)) != 1:
        raise _unsupported(key, value, "one value for every level")
    return values[0]


def _heads(config: dict[str, Any], channels: list[int], attention: list[int]) -> dict[str, Any]:
    """``num_heads`` / ``head_channels`` for diffusers' heads per level (see the module
    docstring); the attention levels and the last (middle block) level must agree."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    per_level = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    used = sorted(set(attention) | {len(channels) - 1})
    counts = {per_level[level] for level in used}
    if len(counts) == 1:
        return {"num_heads": counts.pop(), "head_channels": None}
    sizes = {channels[level] // per_level[level] for level in used}
    if len(sizes) == 1 and all(channels[level] % per_level[level] == 0 for level in used):
        return {"num_heads": 1, "head_channels": sizes.pop()}
    raise _unsupported("attention_head_dim / num_attention_heads", heads,
                       "the same number of heads, or the same head size, at every level")


def sd_unet_kwargs(config: Any) -> dict[str, Any]:
    """The :class:`ddpm_lib.UNet` arguments of a ``UNet2DConditionModel`` config (a dict or
    diffusers' ``FrozenDict``); ``ValueError`` naming the first setting it cannot express."""
    config = dict(config)
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    levels = len(down)
    for name in down:
        if name not in _DOWN:
            raise _unsupported("down block type", name, "CrossAttnDownBlock2D or DownBlock2D")
    for name in up:
        if name not in _UP:
            raise _unsupported("up block type", name, "CrossAttnUpBlock2D or UpBlock2D")
    if len(up) != levels or any(_DOWN[down[i]] != _UP[up[levels - 1 - i]] for i in range(levels)):
        raise _unsupported("block types", (down, up), "attention at the same levels down and up")
    for key, expected in _FIXED:
        if config.get(key, expected) != expected:
            raise _unsupported(key, config.get(key), repr(expected))
    for key in ("only_cross_attention", "mid_block_only_cross_attention"):
        if _one_value(config, key, False, levels) not in (False, None):
            raise _unsupported(key, config.get(key), "False")
    block_out = list(config["block_out_channels"])
    base = block_out[0]
    if any(c % base for c in block_out):
        raise _unsupported("block_out_channels", block_out, "multiples of the first entry")
    if config.get("norm_num_groups") is None:
        raise _unsupported("norm_num_groups", None, "a number of groups")
    sample_size = config.get("sample_size") or 2 ** (levels - 1) * 8
    if isinstance(sample_size, (list, tuple)):
        if len(set(sample_size)) != 1:
            raise _unsupported("sample_size", sample_size, "a square size")
        sample_size = sample_size[0]
    attention = [level for level in range(levels) if _DOWN[down[level]]]
    return dict(
        in_channels=config["in_channels"],
        out_channels=None if config["out_channels"] == config["in_channels"]
        else config["out_channels"],
        base_channels=base, channel_mults=[c // base for c in block_out],
        num_res_blocks=_one_value(config, "layers_per_block", 2, levels),
        attention_resolutions=[sample_size // 2**level for level in attention],
        image_size=sample_size, dropout=float(config.get("dropout", 0.0)),
        norm_groups=config["norm_num_groups"], emb_channels=config.get("time_embedding_dim"),
        norm_eps=float(config.get("norm_eps", 1e-5)),
        downsample_padding=config.get("downsample_padding", 1),
        flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
        freq_shift=config.get("freq_shift", 0),
        context_dim=_one_value(config, "cross_attention_dim", 1280, levels),
        text_attention="transformer",
        transformer_depth=_one_value(config, "transformer_layers_per_block", 1, levels),
        transformer_linear_projection=bool(config.get("use_linear_projection", False)),
        **_heads(config, block_out, attention),
    )


# Our modules and diffusers' are walked side by side by attribute name, so both are Any.
def _copy_transformer(dst: Any, src: Any) -> None:
    """A ``Transformer2DModel`` into a :class:`ddpm_lib.models.SpatialTransformer`."""
    if len(dst.transformer_blocks) != len(src.transformer_blocks):
        raise ValueError(f"transformer depth differs: diffusers {len(src.transformer_blocks)}, "
                         f"ddpm_lib {len(dst.transformer_blocks)}")
    if dst.num_heads != src.transformer_blocks[0].attn1.heads:
        raise ValueError(f"attention heads differ: diffusers "
                         f"{src.transformer_blocks[0].attn1.heads}, ddpm_lib {dst.num_heads}")
    _copy(dst.norm, src.norm)
    _copy(dst.proj_in, src.proj_in)
    for ours, theirs in zip(dst.transformer_blocks, src.transformer_blocks):
        for name in ("norm1", "norm2", "norm3"):
            _copy(getattr(ours, name), getattr(theirs, name))
        self_attn, cross_attn = theirs.attn1, theirs.attn2
        _copy_group(ours.attn1.qkv, (self_attn.to_q, self_attn.to_k, self_attn.to_v))
        _copy(ours.attn1.proj, self_attn.to_out[0])
        _copy(ours.attn2.q, cross_attn.to_q)
        _copy_group(ours.attn2.context_kv, (cross_attn.to_k, cross_attn.to_v))
        _copy(ours.attn2.proj_out, cross_attn.to_out[0])
        _copy(ours.ff.proj, theirs.ff.net[0].proj)
        _copy(ours.ff.out, theirs.ff.net[2])
    _copy(dst.proj_out, src.proj_out)


def _copy_level(dst_level: Any, src_block: Any, resample_name: str) -> None:
    attentions: Any = getattr(src_block, "attentions", None)
    for j, block in enumerate(dst_level.blocks):
        _copy_resnet(block.res, src_block.resnets[j])
        if block.context_attn is not None:
            _copy_transformer(block.context_attn, attentions[j])
    samplers = getattr(src_block, resample_name, None)
    if (dst_level.resample is None) != (samplers is None):
        raise ValueError("resampling layout differs between diffusers and ddpm_lib")
    if samplers is not None:
        _copy(dst_level.resample.conv, samplers[0].conv)


def unet_from_diffusers_sd(unet2d: Any, *, unet_class: type[UNet] = UNet) -> UNet:
    """Convert a Stable Diffusion-layout ``UNet2DConditionModel`` into a :class:`UNet`.

    The result is ``UNet(context_dim=cross_attention_dim, text_attention="transformer", ...)``
    (:func:`sd_unet_kwargs` gives the arguments); ``model(x_t, t, context=text_states)``
    equals ``unet2d(x_t, t, encoder_hidden_states=text_states).sample`` up to float rounding.
    Keeps the input's train/eval mode, dtype and device.

    Args:
        unet2d: a ``diffusers.UNet2DConditionModel``.
        unet_class: the class to build (a subclass of :class:`UNet` with the same layout).

    Raises:
        TypeError: ``unet2d`` is not a ``UNet2DConditionModel``.
        ValueError: a setting the UNet cannot express, named in the message.
    """
    from diffusers import UNet2DConditionModel

    if not isinstance(unet2d, UNet2DConditionModel):
        raise TypeError(f"unet_from_diffusers_sd expects a diffusers UNet2DConditionModel; "
                        f"got {type(unet2d).__name__}")
    src: Any = unet2d
    reference = next(src.parameters())
    unet = unet_class(**sd_unet_kwargs(src.config)).to(dtype=reference.dtype,
                                                       device=reference.device)
    model: Any = unet
    _copy(model.conv_in, src.conv_in)
    _copy(model.time_embed.linear_1, src.time_embedding.linear_1)
    _copy(model.time_embed.linear_2, src.time_embedding.linear_2)
    for level, block in zip(model.down, src.down_blocks):
        _copy_level(level, block, "downsamplers")
    mid = src.mid_block
    _copy_resnet(model.mid[0].res, mid.resnets[0])
    _copy_transformer(model.mid[0].context_attn, mid.attentions[0])
    _copy_resnet(model.mid[1].res, mid.resnets[1])
    for level, block in zip(model.up, src.up_blocks):
        _copy_level(level, block, "upsamplers")
    _copy(model.out.norm, src.conv_norm_out)
    _copy(model.out.conv, src.conv_out)
    return unet.train(src.training)


# ------------------------------------------------------------------------------ way back
def _copy_back(ours: torch.nn.Module, fresh: torch.nn.Module,
               pairs: list[tuple[Any, tuple[Any, ...]]]) -> None:
    """Copy ``ours``'s weights into the diffusers layers that the conversion paired with the
    same-named layers of ``fresh`` (a converted model of ``ours``'s layout)."""
    names = {id(module): name for name, module in fresh.named_modules()}
    covered = 0
    with torch.no_grad():
        for dst, sources in pairs:
            layer = ours.get_submodule(names[id(dst)])
            for attribute in ("weight", "bias"):
                value = getattr(layer, attribute, None)
                if value is None:
                    continue
                sizes = [getattr(src, attribute).shape[0] for src in sources]
                for src, part in zip(sources, value.split(sizes)):
                    getattr(src, attribute).copy_(part)
                covered += value.numel()
    total = sum(p.numel() for p in ours.parameters())
    if covered != total:
        raise ValueError(f"{type(ours).__name__} has {total - covered} parameters that the "
                         "diffusers layout has no place for")


def _diffusers_unet_config(unet: UNet) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config of a Stable Diffusion-layout :class:`UNet`."""
    config = unet.config
    if config.get("text_attention") != "transformer" or config.get("num_classes") is not None \
            or config.get("learn_sigma"):
        raise ValueError(
            "only a UNet with text_attention='transformer', no classes and no learned variance "
            "has the diffusers UNet2DConditionModel layout; got text_attention="
            f"{config.get('text_attention')!r}, num_classes={config.get('num_classes')!r}, "
            f"learn_sigma={config.get('learn_sigma')!r}")
    channels = [config["base_channels"] * m for m in config["channel_mults"]]
    size = config["image_size"]
    attention = [size // 2**level in config["attention_resolutions"] for level in
                 range(len(channels))]
    head = config["head_channels"]
    heads = [c // head if head else config["num_heads"] for c in channels]
    return {
        "sample_size": size, "in_channels": config["in_channels"],
        "out_channels": config["out_channels"] or config["in_channels"],
        "flip_sin_to_cos": config["flip_sin_to_cos"], "freq_shift": config["freq_shift"],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]],
        "block_out_channels": channels, "layers_per_block": config["num_res_blocks"],
        "downsample_padding": config["downsample_padding"], "dropout": config["dropout"],
        "norm_num_groups": config["norm_groups"], "norm_eps": config["norm_eps"],
        "cross_attention_dim": config["context_dim"], "attention_head_dim": heads,
        "transformer_layers_per_block": config["transformer_depth"],
        "use_linear_projection": config["transformer_linear_projection"],
        "time_embedding_dim": config["emb_channels"],
    }


def unet_to_diffusers(unet: UNet) -> Any:
    """A ``diffusers.UNet2DConditionModel`` with the weights of a Stable Diffusion-layout
    :class:`UNet` (one built by :func:`unet_from_diffusers_sd` or with
    ``text_attention="transformer"``), in eval mode, in the UNet's dtype and on its device:
    the inverse of :func:`unet_from_diffusers_sd`.

    Raises:
        ValueError: the UNet has no ``UNet2DConditionModel`` layout (joint or cross text
            attention, classes, learned variance).
    """
    from diffusers import UNet2DConditionModel

    theirs: Any = UNet2DConditionModel(**_diffusers_unet_config(unet))
    with recording_copies() as pairs:
        fresh = unet_from_diffusers_sd(theirs, unet_class=type(unet))
    _copy_back(unet, fresh, pairs)
    reference = next(unet.parameters())
    if next(theirs.parameters()).dtype != reference.dtype:
        theirs = theirs.to(dtype=reference.dtype)
    return theirs.to(device=reference.device).eval()


def autoencoder_to_diffusers(autoencoder: Any, *, scaling_factor: float | None = None) -> Any:
    """A ``diffusers.AutoencoderKL`` with the weights of a :class:`ddpm_lib.AutoencoderKL`
    (the inverse of :func:`ddpm_lib.autoencoder_from_diffusers`), in eval mode;
    ``scaling_factor`` (the latents' scale, 0.18215 for Stable Diffusion) goes into its config.

    Raises:
        ValueError: the autoencoder has a setting diffusers' layout cannot hold.
    """
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    from .interop import autoencoder_from_diffusers

    config = autoencoder.config
    channels = [config["base_channels"] * m for m in config["channel_mults"]]
    levels = len(channels)
    kwargs: dict[str, Any] = {
        "in_channels": config["in_channels"],
        "out_channels": config.get("out_channels") or config["in_channels"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels, "block_out_channels": channels,
        "layers_per_block": config["num_res_blocks"], "latent_channels": config["latent_channels"],
        "norm_num_groups": config["norm_groups"],
        "use_quant_conv": config.get("use_quant_conv", True),
        "use_post_quant_conv": config.get("use_post_quant_conv", True),
        "mid_block_add_attention": config.get("attention", True),
    }
    if scaling_factor is not None:
        kwargs["scaling_factor"] = float(scaling_factor)
    theirs: Any = DiffusersAutoencoderKL(**kwargs)
    with recording_copies() as pairs:
        fresh = autoencoder_from_diffusers(theirs, autoencoder_class=type(autoencoder))
    _copy_back(autoencoder, fresh, pairs)
    reference = next(autoencoder.parameters())
    if next(theirs.parameters()).dtype != reference.dtype:
        theirs = theirs.to(dtype=reference.dtype)
    return theirs.to(device=reference.device).eval()
