"""DiT interoperability: diffusers' ``DiTTransformer2DModel`` and the original DiT checkpoints
(facebookresearch/DiT) as :class:`ddpm_lib.DiT`, with the same outputs.

* :func:`dit_from_diffusers` converts a ``DiTTransformer2DModel`` (its per-block timestep and
  label embeddings must be copies of one another, as in every converted checkpoint: ddpm_lib's
  DiT embeds once). diffusers computes the timestep features with ``downscale_freq_shift=1``
  and normalises before the MLP with ``norm_eps`` (1e-5); the converted DiT is built with
  ``freq_shift=1`` and ``mlp_norm_eps`` to match.
* :func:`dit_from_original` reads the original code's state dict (``x_embedder.proj``,
  ``t_embedder.mlp``, ``y_embedder.embedding_table``, ``blocks.N.attn.qkv``,
  ``blocks.N.adaLN_modulation.1``, ``final_layer``, the fixed ``pos_embed``), e.g. the released
  ``DiT-XL-2-256x256.pt`` read with ``torch.load(path, weights_only=True)``.

Settings ddpm_lib's DiT does not have raise ``ValueError`` naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .models.dit import _SIZES, DiT
from .models.transformer_layers import sincos_position_embedding

__all__ = ["dit_from_diffusers", "dit_from_original", "original_dit_state_dict"]

# original key prefix -> ddpm_lib key prefix (all other keys are the same)
_ORIGINAL_RENAMES = {
    "t_embedder.mlp.0.": "t_embedder.linear_1.",
    "t_embedder.mlp.2.": "t_embedder.linear_2.",
    "y_embedder.embedding_table.": "y_embedder.embedding.",
}


# ----------------------------------------------------------------------------- diffusers
def _diffusers_config(model: nn.Module) -> dict[str, Any]:
    """The DiT configuration of a ``DiTTransformer2DModel``; unconvertible settings raise."""
    config = dict(getattr(model, "config", {}) or {})
    required = ("num_attention_heads", "attention_head_dim", "in_channels", "num_layers",
                "sample_size", "patch_size")
    missing = [key for key in required if key not in config]
    if missing or type(model).__name__ != "DiTTransformer2DModel":
        raise TypeError(
            "dit_from_diffusers expects a diffusers DiTTransformer2DModel; got "
            f"{type(model).__name__}" + (f" (config lacks {missing})" if missing else "")
        )
    unsupported = {
        "norm_type": ("ada_norm_zero", config.get("norm_type", "ada_norm_zero")),
        "activation_fn": ("gelu-approximate", config.get("activation_fn", "gelu-approximate")),
        "norm_elementwise_affine": (False, config.get("norm_elementwise_affine", False)),
        "attention_bias": (True, config.get("attention_bias", True)),
        "dropout": (0.0, float(config.get("dropout", 0.0) or 0.0)),
    }
    for key, (wanted, value) in unsupported.items():
        if value != wanted:
            raise ValueError(
                f"cannot convert a DiTTransformer2DModel with {key}={value!r}: ddpm_lib's DiT "
                f"has only {key}={wanted!r}"
            )
    num_classes = config.get("num_embeds_ada_norm")
    if not isinstance(num_classes, int):
        raise ValueError(
            f"cannot convert a DiTTransformer2DModel with num_embeds_ada_norm={num_classes!r}: "
            "the DiT needs the number of classes"
        )
    in_channels = config["in_channels"]
    out_channels = config.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            f"cannot convert a DiTTransformer2DModel with out_channels={out_channels} and "
            f"in_channels={in_channels}: ddpm_lib's DiT outputs in_channels, or twice as many "
            "with learn_sigma"
        )
    heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
    return dict(
        input_size=config["sample_size"], patch_size=config["patch_size"],
        in_channels=in_channels, hidden_size=heads * head_dim, depth=config["num_layers"],
        num_heads=heads, mlp_ratio=4.0, num_classes=num_classes,
        learn_sigma=out_channels == 2 * in_channels, freq_shift=1.0, norm_eps=1e-6,
        mlp_norm_eps=float(config.get("norm_eps", 1e-5)),
    )


def dit_from_diffusers(model: nn.Module) -> DiT:
    """Convert a diffusers ``DiTTransformer2DModel`` into a :class:`ddpm_lib.DiT` with the same
    outputs: ``dit(x, t, y=labels)`` equals ``model(x, t, class_labels=labels).sample`` in
    eval mode (diffusers' null label is ``num_classes``, ddpm_lib's ``-1``).

    Raises:
        TypeError: ``model`` is not a ``DiTTransformer2DModel``.
        ValueError: a setting the DiT does not have (named), or blocks whose timestep / label
            embeddings differ (a model trained in diffusers from scratch; ddpm_lib embeds once).
    """
    config = _diffusers_config(model)
    source = {k: v.detach() for k, v in model.state_dict().items()}
    dit = DiT(**config)
    first = "transformer_blocks.0.norm1.emb."
    state: dict[str, torch.Tensor] = {
        "x_embedder.proj.weight": source["pos_embed.proj.weight"],
        "x_embedder.proj.bias": source["pos_embed.proj.bias"],
        "y_embedder.embedding.weight": source[first + "class_embedder.embedding_table.weight"],
        "final_layer.adaLN_modulation.1.weight": source["proj_out_1.weight"],
        "final_layer.adaLN_modulation.1.bias": source["proj_out_1.bias"],
        "final_layer.linear.weight": source["proj_out_2.weight"],
        "final_layer.linear.bias": source["proj_out_2.bias"],
    }
    for ours, theirs in (("linear_1", "linear_1"), ("linear_2", "linear_2")):
        for kind in ("weight", "bias"):
            state[f"t_embedder.{ours}.{kind}"] = source[
                f"{first}timestep_embedder.{theirs}.{kind}"]
    for i in range(config["depth"]):
        block = f"transformer_blocks.{i}."
        for key, value in source.items():  # the embeddings diffusers repeats in every block
            if key.startswith(block + "norm1.emb."):
                reference = source[first + key[len(block + "norm1.emb."):]]
                if not torch.equal(value, reference):
                    raise ValueError(
                        f"cannot convert: {key} differs from block 0's; ddpm_lib's DiT shares one "
                        "timestep and label embedding between its blocks (every converted DiT "
                        "checkpoint does)"
                    )
        ours = f"blocks.{i}."
        for kind in ("weight", "bias"):
            state[ours + f"attn.qkv.{kind}"] = torch.cat(
                [source[block + f"attn1.to_{p}.{kind}"] for p in "qkv"])
            state[ours + f"attn.proj.{kind}"] = source[block + f"attn1.to_out.0.{kind}"]
            state[ours + f"mlp.fc1.{kind}"] = source[block + f"ff.net.0.proj.{kind}"]
            state[ours + f"mlp.fc2.{kind}"] = source[block + f"ff.net.2.{kind}"]
            state[ours + f"adaLN_modulation.1.{kind}"] = source[block + f"norm1.linear.{kind}"]
    _load_exact(dit, state, "the DiTTransformer2DModel")
    return dit.to(next(model.parameters()).dtype).eval()


# ----------------------------------------------------------------------------- original
def _original_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a state dict (a mapping); got "
                        f"{type(checkpoint).__name__}")
    if "ema" in checkpoint and isinstance(checkpoint["ema"], Mapping):
        checkpoint = checkpoint["ema"]  # a training checkpoint: {"model", "ema", "opt", "args"}
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    needed = ("x_embedder.proj.weight", "t_embedder.mlp.0.weight", "final_layer.linear.weight",
              "blocks.0.attn.qkv.weight")
    absent = [key for key in needed if key not in state]
    if absent:
        shown = ", ".join(sorted(state)[:4])
        raise ValueError(
            f"checkpoint is not in the original DiT layout (facebookresearch/DiT models.py): it "
            f"has no {', '.join(absent)} (its first keys: {shown or 'none'}); a diffusers model "
            "converts with dit_from_diffusers, a ddpm_lib folder loads with DiT.from_pretrained"
        )
    return state


def dit_from_original(
    checkpoint: Mapping[str, Any], *, num_heads: int | None = None,
    num_classes: int | None = None,
) -> DiT:
    """A :class:`ddpm_lib.DiT` from a state dict of the original DiT code, with its outputs.

    The configuration is read from the tensors' shapes: patch size, channels, width, depth,
    MLP ratio, classes, learned variance and input size (from ``pos_embed``).

    Args:
        checkpoint: the state dict (or a training checkpoint with an ``"ema"`` entry).
        num_heads: attention heads; the shapes do not tell them. ``None``: the paper's for
            the size (S 6, B 12, L 16, XL 16); other sizes must pass it.
        num_classes: ``None``: the label table's rows minus the null row (the original's
            ``class_dropout_prob > 0``). A table of exactly ``num_classes`` rows (trained
            without label dropout) gets a zero null row.

    Raises:
        ValueError: not the original layout (named keys), tensors of inconsistent shapes, a
            ``pos_embed`` that is not the 2-D sin-cos table, or unknown heads.
    """
    state = _original_state(checkpoint)
    hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    if out not in (in_channels, 2 * in_channels):
        raise ValueError(f"final_layer.linear outputs {out} channels per pixel; the DiT outputs "
                         f"in_channels={in_channels} or twice as many")
    if num_heads is None:
        sizes = {(d, w): heads for d, w, heads in _SIZES.values()}
        num_heads = sizes.get((depth, hidden))
        if num_heads is None:
            raise ValueError(f"num_heads is needed: depth={depth}, hidden_size={hidden} is not "
                             "a size of the paper (pass num_heads=)")
    table = state.get("y_embedder.embedding_table.weight")
    if table is not None:
        rows = table.shape[0]
        if num_classes is None:
            num_classes = rows - 1
        elif rows == num_classes:
            table = torch.cat([table, table.new_zeros(1, table.shape[1])])
        elif rows != num_classes + 1:
            raise ValueError(f"y_embedder.embedding_table has {rows} rows; expected "
                             f"num_classes={num_classes} or num_classes + 1")
        state["y_embedder.embedding_table.weight"] = table
    pos = state.pop("pos_embed", None)
    tokens = pos.shape[1] if pos is not None else None
    grid = round(tokens**0.5) if tokens else 32 // patch
    dit = DiT(
        input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_hidden / hidden,
        num_classes=num_classes if table is not None else None,
        learn_sigma=out == 2 * in_channels,
    )
    if pos is not None:
        expected = sincos_position_embedding(hidden, grid, grid)[None]
        if pos.shape != expected.shape or not torch.allclose(pos.float(), expected, atol=1e-5):
            raise ValueError("pos_embed is not the fixed 2-D sin-cos table of the original DiT "
                             f"({tuple(pos.shape)}); ddpm_lib's DiT computes it")
    renamed = {}
    for key, value in state.items():
        for old, new in _ORIGINAL_RENAMES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        renamed[key] = value
    _load_exact(dit, renamed, "the original DiT checkpoint")
    return dit.to(state["x_embedder.proj.weight"].dtype).eval()


def original_dit_state_dict(dit: DiT) -> dict[str, torch.Tensor]:
    """The state dict of ``dit`` in the original code's layout (with its ``pos_embed``):
    the inverse of :func:`dit_from_original`."""
    state = {}
    for key, value in dit.state_dict().items():
        for old, new in _ORIGINAL_RENAMES.items():
            if key.startswith(new):
                key = old + key[len(new):]
        state[key] = value.detach().clone()
    state["pos_embed"] = dit.get_buffer("pos_embed").detach().clone()
    return state


def _load_exact(dit: DiT, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``dit``, every name and shape checked (ValueError naming them)."""
    expected = dit.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(items[:6])}" + (" ..." if len(items) > 6 else "")
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape mismatch", wrong)) if items]
        raise ValueError(f"{what} does not fit DiT({dit.config}): " + "; ".join(parts))
    dit.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
