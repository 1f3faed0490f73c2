"""Interoperability with diffusers.

* :func:`unet_from_diffusers` converts a diffusers ``UNet2DModel`` of the DDPM family into a
  :class:`ddpm_lib.UNet` with the same outputs, so weights such as the released
  ``google/ddpm-cifar10-32`` (loaded by the user from disk with
  ``UNet2DModel.from_pretrained(local_dir)``) can be used with every part of ddpm_lib.
* :func:`autoencoder_from_diffusers` converts a diffusers ``AutoencoderKL`` (for example
  Stable Diffusion's VAE) into a :class:`ddpm_lib.AutoencoderKL` with the same encoder
  moments and decoder outputs.
* :class:`DiffusersAdapter` (or :func:`wrap_diffusers_model`) makes a diffusers model callable
  as ``model(x_t, t, y=None) -> Tensor``, the model contract of ddpm_lib's samplers and losses.

diffusers is imported only inside these functions; it is not a dependency of ddpm_lib.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .models.unet import UNet

if TYPE_CHECKING:
    from .models.autoencoder import AutoencoderKL

__all__ = [
    "DiffusersAdapter",
    "autoencoder_from_diffusers",
    "unet_from_diffusers",
    "wrap_diffusers_model",
]

_DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}


def _unwrap_config(model: Any) -> Any:
    from diffusers import UNet2DModel

    config = getattr(model, "config", None)
    if config is None or not isinstance(model, UNet2DModel):
        raise TypeError(
            f"unet_from_diffusers expects a diffusers UNet2DModel; got {type(model).__name__} "
            "(a UNet2DConditionModel is converted too)"
        )
    return config


def _unsupported(what: str, value: Any, expected: str) -> ValueError:
    return ValueError(
        f"cannot convert this UNet2DModel: {what}={value!r} is not supported (expected "
        f"{expected}); ddpm_lib.UNet covers the DDPM family (DownBlock2D / AttnDownBlock2D / "
        "UpBlock2D / AttnUpBlock2D, positional time embedding, 'default' time conditioning)"
    )


def _unet_kwargs(config: Any) -> dict[str, Any]:
    """Translate a UNet2DModel config into ddpm_lib.UNet constructor arguments."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    down = list(get("down_block_types"))
    up = list(get("up_block_types"))
    for name in down:
        if name not in _DOWN_TYPES:
            raise _unsupported("down block type", name, "DownBlock2D or AttnDownBlock2D")
    for name in up:
        if name not in _UP_TYPES:
            raise _unsupported("up block type", name, "UpBlock2D or AttnUpBlock2D")
    levels = len(down)
    for level in range(levels):
        if _DOWN_TYPES[down[level]] != _UP_TYPES[up[levels - 1 - level]]:
            raise _unsupported(
                "block types", (down, up),
                "attention at the same levels on the way down and up",
            )
    checks = [
        ("time_embedding_type", "positional", "'positional'"),
        ("mid_block_type", "UNetMidBlock2D", "'UNetMidBlock2D'"),
        ("act_fn", "silu", "'silu'"),
        ("resnet_time_scale_shift", "default", "'default'"),
        ("class_embed_type", None, "None"),
        ("center_input_sample", False, "False"),
        ("add_attention", True, "True"),
        ("downsample_type", "conv", "'conv'"),
        ("upsample_type", "conv", "'conv'"),
    ]
    for key, expected, text in checks:
        value = get(key, expected)
        if value != expected:
            raise _unsupported(key, value, text)
    if get("mid_block_scale_factor", 1) != 1:
        raise _unsupported("mid_block_scale_factor", get("mid_block_scale_factor"), "1")
    groups = get("norm_num_groups", 32)
    attn_groups = get("attn_norm_num_groups", None)
    if attn_groups not in (None, groups):
        raise _unsupported("attn_norm_num_groups", attn_groups, f"None or {groups}")
    block_out = list(get("block_out_channels"))
    base = block_out[0]
    if any(c % base for c in block_out):
        raise _unsupported("block_out_channels", block_out, "multiples of the first entry")
    sample_size = get("sample_size", None)
    if isinstance(sample_size, (tuple, list)):
        sample_size = sample_size[0]
    if sample_size is None:
        sample_size = 2 ** (levels - 1) * 8
    head_dim = get("attention_head_dim", None)
    time_dim = get("time_embedding_dim", None)
    return dict(
        in_channels=get("in_channels"),
        out_channels=None if get("out_channels") == get("in_channels") else get("out_channels"),
        base_channels=base,
        channel_mults=[c // base for c in block_out],
        num_res_blocks=get("layers_per_block"),
        attention_resolutions=[
            sample_size // 2**level for level in range(levels) if _DOWN_TYPES[down[level]]
        ],
        image_size=sample_size,
        dropout=float(get("dropout", 0.0)),
        num_classes=get("num_class_embeds", None),
        num_heads=1,
        head_channels=head_dim,
        norm_groups=groups,
        emb_channels=time_dim,
        norm_eps=float(get("norm_eps", 1e-5)),
        downsample_padding=get("downsample_padding", 1),
        flip_sin_to_cos=bool(get("flip_sin_to_cos", True)),
        freq_shift=get("freq_shift", 0),
    )


# The copy helpers walk our module tree and diffusers' side by side through submodule
# attribute names (``dst.norm1``, ``src.time_emb_proj``) that nn.Module's typing cannot see,
# so both sides are typed Any.


#: while a conversion runs under :func:`recording_copies`: every ``(ours, (theirs, ...))``
#: layer pair copied, so that the same walk can copy weights back (``interop_sd.py``)
_RECORD: list[tuple[Any, tuple[Any, ...]]] | None = None


@contextmanager
def recording_copies() -> Iterator[list[tuple[Any, tuple[Any, ...]]]]:
    """Record the layer pairs that the conversions copy (``(ours, (theirs, ...))``: our layer
    holds the weights of theirs stacked along the first dimension)."""
    global _RECORD
    previous, _RECORD = _RECORD, []
    try:
        yield _RECORD
    finally:
        _RECORD = previous


def _copy_group(dst: Any, sources: tuple[Any, ...]) -> None:
    """Copy the weight/bias of ``sources`` (Linear, Conv2d, GroupNorm, LayerNorm or
    Embedding), stacked along the first dimension, into ``dst``."""
    if dst is None and all(src is None for src in sources):
        return  # a layer neither side has (a residual block without a time embedding)
    if _RECORD is not None:
        _RECORD.append((dst, sources))
    with torch.no_grad():
        for name in ("weight", "bias"):
            parts: list[Any] = [getattr(src, name, None) for src in sources]
            target: Any = getattr(dst, name, None)
            if all(part is None for part in parts):
                if target is not None:
                    raise ValueError(f"{type(dst).__name__}.{name} has no diffusers counterpart")
                continue
            if target is None or any(part is None for part in parts):
                raise ValueError(
                    f"{name} present in only one of diffusers' {type(sources[0]).__name__} and "
                    f"ddpm_lib's {type(dst).__name__}"
                )
            source = parts[0] if len(parts) == 1 else torch.cat(parts)
            if target.shape != source.shape:
                raise ValueError(
                    f"shape mismatch converting {type(sources[0]).__name__}.{name}: diffusers "
                    f"{tuple(source.shape)} vs ddpm_lib {tuple(target.shape)}"
                )
            target.copy_(source)


def _copy(dst: Any, src: Any) -> None:
    """Copy ``src``'s weight/bias into ``dst`` (Linear, Conv2d, GroupNorm or Embedding)."""
    _copy_group(dst, (src,))


def _copy_resnet(dst: Any, src: Any) -> None:
    _copy(dst.norm1, src.norm1)
    _copy(dst.conv1, src.conv1)
    _copy(dst.emb_proj, src.time_emb_proj)
    _copy(dst.norm2, src.norm2)
    _copy(dst.conv2, src.conv2)
    if (dst.skip is None) != (src.conv_shortcut is None):
        raise ValueError("residual shortcut layout differs between diffusers and ddpm_lib")
    if dst.skip is not None:
        _copy(dst.skip, src.conv_shortcut)


def _copy_attention(dst: Any, src: Any) -> None:
    if getattr(src, "group_norm", None) is None:
        raise _unsupported("attention group_norm", None, "a GroupNorm")
    if dst.num_heads != src.heads:
        raise ValueError(f"attention heads differ: diffusers {src.heads}, ddpm_lib {dst.num_heads}")
    _copy(dst.norm, src.group_norm)
    _copy_group(dst.qkv, (src.to_q, src.to_k, src.to_v))  # one (3C, C) linear layer
    _copy(dst.proj_out, src.to_out[0])


def _copy_level(dst_level: Any, src_block: Any, resample_name: str) -> None:
    attentions: Any = getattr(src_block, "attentions", None)
    for j, block in enumerate(dst_level.blocks):
        _copy_resnet(block.res, src_block.resnets[j])
        if block.attn is not None:
            _copy_attention(block.attn, attentions[j])
    samplers = getattr(src_block, resample_name, None)
    if (dst_level.resample is None) != (samplers is None):
        raise ValueError("resampling layout differs between diffusers and ddpm_lib")
    if samplers is not None:
        _copy(dst_level.resample.conv, samplers[0].conv)


def unet_from_diffusers(unet2dmodel: Any, *, unet_class: type[UNet] = UNet) -> UNet:
    """Convert a diffusers ``UNet2DModel`` of the DDPM family into a :class:`UNet`.

    Supported: ``DownBlock2D`` / ``AttnDownBlock2D`` / ``UpBlock2D`` / ``AttnUpBlock2D`` with
    attention at matching levels, the ``UNetMidBlock2D``, positional time embeddings (any
    ``flip_sin_to_cos`` / ``freq_shift``), ``downsample_padding`` 0 or 1, any
    ``attention_head_dim``, and ``num_class_embeds`` class conditioning (the extra "no label"
    row, ``y = -1``, is initialised to zero, i.e. no class embedding). Anything else raises a
    ``ValueError`` naming the unsupported setting.

    The returned model has the same outputs (up to float rounding) and is in the same
    train/eval mode, dtype and device as the input. Example with the released DDPM CIFAR-10
    weights downloaded beforehand::

        from diffusers import UNet2DModel
        unet = unet_from_diffusers(UNet2DModel.from_pretrained("path/to/ddpm-cifar10-32"))

    A ``UNet2DConditionModel`` (Stable Diffusion 1.x / 2.x) is converted by
    :func:`ddpm_lib.interop_sd.unet_from_diffusers_sd` into a text UNet with Stable Diffusion's
    transformer blocks (``text_attention="transformer"``).

    Args:
        unet2dmodel: a ``diffusers.UNet2DModel`` or ``UNet2DConditionModel``.
        unet_class: the class to build (a subclass of :class:`UNet` with the same layout).
    """
    from diffusers import UNet2DConditionModel

    if isinstance(unet2dmodel, UNet2DConditionModel):  # Stable Diffusion's layout
        from .interop_sd import unet_from_diffusers_sd

        return unet_from_diffusers_sd(unet2dmodel, unet_class=unet_class)
    config = _unwrap_config(unet2dmodel)
    kwargs = _unet_kwargs(config)
    reference = next(unet2dmodel.parameters())
    unet = unet_class(**kwargs).to(dtype=reference.dtype, device=reference.device)
    _copy_unet_weights(unet, unet2dmodel)
    return unet.train(unet2dmodel.training)


def _copy_unet_weights(model: Any, src: Any) -> None:
    """Copy a ``UNet2DModel``'s weights into a :class:`UNet` of the same layout (walked by
    submodule names, as in the helpers above); also serves :mod:`ddpm_lib.interop_sr`."""
    _copy(model.conv_in, src.conv_in)
    _copy(model.time_embed.linear_1, src.time_embedding.linear_1)
    _copy(model.time_embed.linear_2, src.time_embedding.linear_2)
    if model.class_embed is not None:
        with torch.no_grad():
            table = model.class_embed.embedding.weight
            table[:-1].copy_(src.class_embedding.weight)
            table[-1].zero_()
    for level, src_block in zip(model.down, src.down_blocks):
        _copy_level(level, src_block, "downsamplers")
    mid = src.mid_block
    _copy_resnet(model.mid[0].res, mid.resnets[0])
    _copy_attention(model.mid[0].attn, mid.attentions[0])
    _copy_resnet(model.mid[1].res, mid.resnets[1])
    for level, src_block in zip(model.up, src.up_blocks):
        _copy_level(level, src_block, "upsamplers")
    _copy(model.out.norm, src.conv_norm_out)
    _copy(model.out.conv, src.conv_out)


# ---------------------------------------------------------------------------- autoencoder
def _autoencoder_kwargs(config: Any) -> dict[str, Any]:
    """Translate a diffusers AutoencoderKL config into ddpm_lib.AutoencoderKL arguments."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)

    def unsupported(key: str, value: Any, expected: str) -> ValueError:
        return ValueError(
            f"cannot convert this diffusers AutoencoderKL: {key}={value!r} is not supported "
            f"(expected {expected}); ddpm_lib.AutoencoderKL covers the LDM / Stable Diffusion "
            "layout (DownEncoderBlock2D / UpDecoderBlock2D, SiLU, GroupNorm)"
        )

    down = list(get("down_block_types"))
    up = list(get("up_block_types"))
    if any(name != "DownEncoderBlock2D" for name in down):
        raise unsupported("down_block_types", down, "only 'DownEncoderBlock2D'")
    if any(name != "UpDecoderBlock2D" for name in up):
        raise unsupported("up_block_types", up, "only 'UpDecoderBlock2D'")
    block_out = list(get("block_out_channels"))
    if len(down) != len(block_out) or len(up) != len(block_out):
        raise unsupported(
            "down_block_types / up_block_types", (down, up),
            f"one block per entry of block_out_channels ({len(block_out)})",
        )
    if get("act_fn", "silu") != "silu":
        raise unsupported("act_fn", get("act_fn"), "'silu'")
    base = block_out[0]
    if any(c % base for c in block_out):
        raise unsupported("block_out_channels", block_out, "multiples of the first entry")
    in_channels, out_channels = get("in_channels"), get("out_channels")
    return dict(
        in_channels=in_channels,
        latent_channels=get("latent_channels"),
        base_channels=base,
        channel_mults=[c // base for c in block_out],
        num_res_blocks=get("layers_per_block"),
        attention=bool(get("mid_block_add_attention", True)),
        norm_groups=get("norm_num_groups", 32),
        out_channels=None if out_channels == in_channels else out_channels,
        norm_eps=1e-6,
        num_heads=1,
        use_quant_conv=bool(get("use_quant_conv", True)),
        use_post_quant_conv=bool(get("use_post_quant_conv", True)),
    )


def _copy_resnets(dst_blocks: Any, src_resnets: Any) -> None:
    if len(dst_blocks) != len(src_resnets):
        raise ValueError(
            f"residual block count differs: diffusers {len(src_resnets)}, ddpm_lib {len(dst_blocks)}"
        )
    for dst, src in zip(dst_blocks, src_resnets):
        if getattr(src, "time_emb_proj", None) is not None:
            raise ValueError("diffusers resnet has a time embedding; an autoencoder's has none")
        _copy_resnet(dst, src)


def _copy_mid(dst_mid: Any, src_mid: Any) -> None:
    attentions = [a for a in (src_mid.attentions or []) if a is not None]
    dst = list(dst_mid)
    expected = len(src_mid.resnets) + len(attentions)
    if len(dst) != expected or len(src_mid.resnets) != 2:
        raise ValueError(
            f"middle block layout differs: diffusers {len(src_mid.resnets)} resnets and "
            f"{len(attentions)} attention(s), ddpm_lib {len(dst)} blocks"
        )
    _copy_resnet(dst[0], src_mid.resnets[0])
    if attentions:
        _copy_attention(dst[1], attentions[0])
    _copy_resnet(dst[-1], src_mid.resnets[1])


def autoencoder_from_diffusers(
    vae: Any, *, autoencoder_class: type[AutoencoderKL] | None = None
) -> AutoencoderKL:
    """Convert a diffusers ``AutoencoderKL`` into a :class:`ddpm_lib.AutoencoderKL`.

    The two have the same layout (encoder and decoder of residual blocks, middle attention,
    ``quant_conv`` / ``post_quant_conv``), so the conversion renames weights (the attention's
    separate q, k, v projections are stacked into one). The result encodes to the same mean and
    standard deviation and decodes to the same images, up to float rounding; it keeps the
    input's train/eval mode, dtype and device.

    Stable Diffusion's VAE (loaded by the user from a local folder with
    ``diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae")``) works this way. Its
    latents are multiplied by ``vae.config.scaling_factor`` (0.18215 for SD 1.x / 2.x) before
    diffusion and divided by it before decoding; :class:`ddpm_lib.AutoencoderKL` itself works
    with unscaled latents, and the factor belongs to the latent-diffusion wrapper.

    Args:
        vae: a ``diffusers.AutoencoderKL``.
        autoencoder_class: the class to build (a subclass of :class:`ddpm_lib.AutoencoderKL`
            with the same layout); default :class:`ddpm_lib.AutoencoderKL`.

    Raises:
        TypeError: ``vae`` is not a diffusers ``AutoencoderKL``.
        ValueError: a setting we cannot convert (block types, activation, channel layout),
            named in the message.
    """
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    from .models.autoencoder import AutoencoderKL

    if not isinstance(vae, DiffusersAutoencoderKL):
        raise TypeError(
            f"autoencoder_from_diffusers expects a diffusers AutoencoderKL; got {type(vae).__name__}"
        )
    vae_: Any = vae  # diffusers is untyped
    cls = AutoencoderKL if autoencoder_class is None else autoencoder_class
    reference = next(vae_.parameters())
    model: Any = cls(**_autoencoder_kwargs(vae_.config)).to(dtype=reference.dtype, device=reference.device)

    encoder: Any = model.encoder
    src: Any = vae_.encoder
    _copy(encoder.conv_in, src.conv_in)
    for level, block in zip(encoder.down, src.down_blocks):
        _copy_resnets(level.blocks, block.resnets)
        samplers = getattr(block, "downsamplers", None)
        if (level.resample is None) != (samplers is None):
            raise ValueError("downsampling layout differs between diffusers and ddpm_lib")
        if samplers is not None:
            if samplers[0].padding != 0:
                raise ValueError(f"downsample padding {samplers[0].padding} is not supported (0)")
            _copy(level.resample.conv, samplers[0].conv)
    _copy_mid(encoder.mid, src.mid_block)
    _copy(encoder.out.norm, src.conv_norm_out)
    _copy(encoder.out.conv, src.conv_out)

    decoder: Any = model.decoder
    src = vae_.decoder
    _copy(decoder.conv_in, src.conv_in)
    _copy_mid(decoder.mid, src.mid_block)
    for level, block in zip(decoder.up, src.up_blocks):
        _copy_resnets(level.blocks, block.resnets)
        samplers = getattr(block, "upsamplers", None)
        if (level.resample is None) != (samplers is None):
            raise ValueError("upsampling layout differs between diffusers and ddpm_lib")
        if samplers is not None:
            _copy(level.resample.conv, samplers[0].conv)
    _copy(decoder.out.norm, src.conv_norm_out)
    _copy(decoder.out.conv, src.conv_out)

    for name in ("quant_conv", "post_quant_conv"):
        ours, theirs = getattr(model, name), getattr(vae_, name, None)
        if (ours is None) != (theirs is None):
            raise ValueError(f"{name} present in only one of diffusers and ddpm_lib")
        if ours is not None and theirs is not None:
            _copy(ours, theirs)
    return model.train(vae_.training)


class DiffusersAdapter(nn.Module):
    """Wrap a diffusers model so that ``adapter(x_t, t, y=None) -> Tensor``.

    diffusers' ``UNet2DModel`` returns an output object whose ``.sample`` holds the prediction;
    ddpm_lib's samplers and losses expect a plain tensor. The adapter passes ``t`` (broadcast
    to ``(B,)`` if it is a scalar) and ``y`` (as ``class_labels``) through and returns the tensor.
    Its parameters are the wrapped model's, so it can also be trained.

    Args:
        model: a diffusers model called as ``model(sample, timestep, class_labels=...)``.
        null_class: for class-conditional models trained with a "no label" class: labels
            ``-1`` (ddpm_lib's null label) are mapped to this index with ``torch.where``.
            ``None`` passes labels through unchanged.
    """

    def __init__(self, model: nn.Module, *, null_class: int | None = None) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        self.model = model
        self.null_class = null_class
        config = getattr(model, "config", None)
        get = getattr(config, "get", None)
        self.num_classes = get("num_class_embeds", None) if get is not None else None
        if self.num_classes is not None and null_class is not None:
            self.num_classes = self.num_classes - 1

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` -> the model's prediction tensor."""
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        if y is not None:
            if self.null_class is not None:
                y = torch.where(y < 0, torch.full_like(y, self.null_class), y)
            kwargs["class_labels"] = y
        out = self.model(x, t, **kwargs)
        if isinstance(out, torch.Tensor):
            return out
        sample = getattr(out, "sample", None)
        if isinstance(sample, torch.Tensor):
            return sample
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return out[0]
        raise TypeError(
            f"the wrapped model returned {type(out).__name__}; expected a tensor or an "
            "output with a .sample tensor"
        )


def wrap_diffusers_model(model: nn.Module, *, null_class: int | None = None) -> DiffusersAdapter:
    """Return ``DiffusersAdapter(model)``: a diffusers model usable by samplers and losses."""
    return DiffusersAdapter(model, null_class=null_class)
