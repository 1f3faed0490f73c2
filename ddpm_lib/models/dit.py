"""The Diffusion Transformer (DiT, Peebles & Xie 2023), interchangeable with :class:`ddpm_lib.UNet`.

Layout (``p`` = patch size, ``D`` = hidden size, ``N = (H / p) (W / p)`` tokens)::

    t, y (, pooled text) ──embed──> c (B, D)
    x (B, C, H, W) ─patchify (p x p conv, stride p)─> (B, N, D) + fixed 2-D sin-cos positions
      depth x DiTBlock(h, c):  shift, scale, gate = Linear(SiLU(c))            (adaLN-Zero)
          h = h + gate_1 * Attention(LayerNorm(h) * (1 + scale_1) + shift_1)
          h = h + CrossAttention(h, context)                          (text only, PixArt-alpha)
          h = h + gate_2 * MLP(LayerNorm(h) * (1 + scale_2) + shift_2)
    ─LayerNorm, adaLN shift/scale, Linear─> (B, N, p p C_out) ─unpatchify─> (B, C_out, H, W)

``C_out`` is ``in_channels``, doubled with ``learn_sigma`` (prediction first, then the
learned-range variance values, as :class:`ddpm_lib.HybridLoss` and the samplers expect). Every
``Linear`` that regresses the adaLN parameters and the final projection start at zero, so a fresh
block is the identity and a fresh network predicts zero (adaLN-Zero, Sec. 3.2 of the paper).
The blocks are in ``transformer_layers.py``. The module names follow the original code
(``x_embedder``, ``t_embedder``, ``y_embedder``, ``blocks.N.attn.qkv``, ``blocks.N.mlp.fc1``,
``blocks.N.adaLN_modulation.1``, ``final_layer``), so its checkpoints load almost key for key
(:func:`ddpm_lib.interop_dit.dit_from_original`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_bool, check_int, check_real
from ._inputs import check_condition, check_context, check_timesteps, check_x
from .attention import CrossAttention
from .layers import ClassEmbedding, TimestepEmbedding, zero_module
from .pretrained import PretrainedModel
from .transformer_layers import (
    DiTBlock,
    DiTFinalLayer,
    Mlp,
    PatchEmbed,
    SelfAttention,
    sincos_position_embedding,
)

__all__ = ["DiT"]

# (depth, hidden_size, num_heads) of the paper's Table 1
_SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}


def _check_positive_float(name: str, value: Any) -> float:
    return float(check_real(name, value, 0, open_min=True))


def _check_arguments(
    *, input_size: Any, patch_size: Any, in_channels: Any, hidden_size: Any, depth: Any,
    num_heads: Any, mlp_ratio: Any, num_classes: Any, learn_sigma: Any, context_dim: Any,
    gradient_checkpointing: Any, frequency_embedding_size: Any, freq_shift: Any, norm_eps: Any,
    mlp_norm_eps: Any,
) -> tuple[float, float, float]:
    """Validate :class:`DiT`'s arguments (errors name them); returns ``(mlp_ratio, norm_eps,
    mlp_norm_eps)`` as floats."""
    for name, value in (("input_size", input_size), ("patch_size", patch_size),
                        ("in_channels", in_channels), ("hidden_size", hidden_size),
                        ("depth", depth), ("num_heads", num_heads),
                        ("frequency_embedding_size", frequency_embedding_size)):
        check_int(name, value, 1)
    if input_size % patch_size:
        raise ValueError(
            f"input_size={input_size} must be divisible by patch_size={patch_size}; choose "
            f"a patch size that divides it (the paper uses 2, 4 or 8)"
        )
    if hidden_size % num_heads:
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by num_heads={num_heads} (each "
            "head gets hidden_size / num_heads channels)"
        )
    if hidden_size % 4:
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by 4 for the 2-D sin-cos position "
            "embedding"
        )
    mlp_ratio = _check_positive_float("mlp_ratio", mlp_ratio)
    if num_classes is not None:
        check_int("num_classes", num_classes, 1)
    check_bool("learn_sigma", learn_sigma)
    if context_dim is not None:
        check_int("context_dim", context_dim, 1)
    check_bool("gradient_checkpointing", gradient_checkpointing)
    check_real("freq_shift", freq_shift)
    if frequency_embedding_size // 2 - freq_shift == 0:
        raise ValueError(f"freq_shift={freq_shift} equals frequency_embedding_size // 2; the "
                         "sinusoidal frequencies would divide by zero")
    norm_eps = _check_positive_float("norm_eps", norm_eps)
    mlp_norm_eps = norm_eps if mlp_norm_eps is None else _check_positive_float(
        "mlp_norm_eps", mlp_norm_eps)
    return mlp_ratio, norm_eps, mlp_norm_eps


class DiT(PretrainedModel):
    """Diffusion Transformer predicting ``eps`` (or ``x0`` / ``v``) from ``x_t``, ``t`` and a
    class label, with the call contract of :class:`ddpm_lib.UNet`.

    Args:
        input_size: side ``I`` of the inputs (latents: 32 for 256 x 256 images through Stable
            Diffusion's autoencoder); the position embeddings are built for it. Inputs of other
            sizes divisible by ``patch_size`` get the sin-cos embedding of their own grid.
        patch_size: ``p`` (2, 4 or 8 in the paper); ``(I / p)^2`` tokens.
        in_channels: channels of ``x_t``.
        hidden_size, depth, num_heads, mlp_ratio: width ``D``, number of blocks, attention heads
            (must divide ``D``) and MLP width ``mlp_ratio * D``.
        num_classes: number ``N`` of class labels, or ``None`` for an unconditional model.
            Labels ``y`` are ``0 .. N-1``, or ``-1`` for the null class of classifier-free
            guidance (the table's extra row; the :class:`ddpm_lib.Trainer` drops labels to it
            with ``class_dropout``, the model itself never does).
        learn_sigma: also output the learned-range variance values (Nichol & Dhariwal 2021),
            doubling the output channels: prediction first, variance values second.
        context_dim: width of context tokens (a text encoder's states) to condition on, or
            ``None``. Then every block cross-attends to the tokens after its self-attention
            (PixArt-alpha's layout; padding masked), and the projected pooled context is added
            to ``c`` (as :class:`ddpm_lib.UNet` adds it to its time embedding).
        gradient_checkpointing: recompute each block in backward to save memory (training).
        frequency_embedding_size: width of the sinusoidal timestep features (256).
        freq_shift: ``f_i = 10000^(-i / (F / 2 - freq_shift))``; 0 as the original code,
            1 in diffusers' ``DiTTransformer2DModel``.
        norm_eps, mlp_norm_eps: LayerNorm epsilons before the attention (and in the final
            layer) and before the MLP; ``None`` for the MLP means ``norm_eps``. The original
            uses 1e-6 for both, diffusers 1e-5 before the MLP.

    Call ``model(x_t, t, y=None, *, context=None, context_mask=None, context_pooled=None)``
    exactly as :class:`ddpm_lib.UNet`: ``x_t`` ``(B, in_channels, H, W)`` with ``H`` and ``W``
    divisible by ``patch_size``, ``t`` ``(B,)``; ``y`` ``(B,)`` long for a class-conditional
    model; the text keyword arguments of
    :meth:`ddpm_lib.TextConditionedUNet.encode_prompts` with ``context_dim``. Returns
    ``(B, in_channels, H, W)``, ``(B, 2 in_channels, H, W)`` with ``learn_sigma``.

    Presets: :meth:`s2` ... :meth:`xl8` (DiT-S/2 ... DiT-XL/8 of Table 1, 33M to 675M
    parameters). Subclassing: the network is assembled from factory methods that can be
    overridden one at a time: :meth:`make_patch_embed`, :meth:`make_time_embedding`,
    :meth:`make_class_embedding`, :meth:`make_context_embedding`, :meth:`embed`,
    :meth:`make_attention`, :meth:`make_cross_attention`, :meth:`make_mlp`,
    :meth:`make_block`, :meth:`make_final_layer`, and :meth:`initialize_weights`.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int | None = 1000,
        learn_sigma: bool = True,
        context_dim: int | None = None,
        *,
        gradient_checkpointing: bool = False,
        frequency_embedding_size: int = 256,
        freq_shift: float = 0.0,
        norm_eps: float = 1e-6,
        mlp_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        mlp_ratio, norm_eps, mlp_norm_eps = _check_arguments(
            input_size=input_size, patch_size=patch_size, in_channels=in_channels,
            hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            num_classes=num_classes, learn_sigma=learn_sigma, context_dim=context_dim,
            gradient_checkpointing=gradient_checkpointing,
            frequency_embedding_size=frequency_embedding_size, freq_shift=freq_shift,
            norm_eps=norm_eps, mlp_norm_eps=mlp_norm_eps,
        )
        self._config = dict(
            input_size=input_size, patch_size=patch_size, in_channels=in_channels,
            hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            num_classes=num_classes, learn_sigma=learn_sigma, context_dim=context_dim,
            gradient_checkpointing=gradient_checkpointing,
            frequency_embedding_size=frequency_embedding_size, freq_shift=freq_shift,
            norm_eps=norm_eps, mlp_norm_eps=mlp_norm_eps,
        )
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.hidden_size, self.depth, self.num_heads = hidden_size, depth, num_heads
        self.mlp_ratio, self.num_classes, self.learn_sigma = mlp_ratio, num_classes, learn_sigma
        self.context_dim = context_dim
        self.gradient_checkpointing = gradient_checkpointing
        self.frequency_embedding_size, self.freq_shift = frequency_embedding_size, freq_shift
        self.norm_eps, self.mlp_norm_eps = norm_eps, mlp_norm_eps

        # ---- modules, each from an overridable factory -----------------------------------
        self.x_embedder = self.make_patch_embed()
        self.t_embedder = self.make_time_embedding()
        self.y_embedder = self.make_class_embedding()
        if context_dim is not None:
            self.context_embed = self.make_context_embedding()
        self.blocks = nn.ModuleList(self.make_block(layer) for layer in range(depth))
        self.final_layer = self.make_final_layer()
        grid = input_size // patch_size
        self.register_buffer(  # fixed, rebuilt from the configuration: not saved
            "pos_embed", sincos_position_embedding(hidden_size, grid, grid)[None], persistent=False
        )
        self.initialize_weights()

    # ------------------------------------------------------------------------------------
    # Presets (Table 1 of the paper: S, B, L, XL with patch 2, 4, 8)
    # ------------------------------------------------------------------------------------
    @classmethod
    def _preset(cls, size: str, patch_size: int, **kwargs: Any) -> DiT:
        depth, hidden_size, num_heads = _SIZES[size]
        kwargs = {"depth": depth, "hidden_size": hidden_size, "num_heads": num_heads,
                  "patch_size": patch_size, **kwargs}
        return cls(**kwargs)

    @classmethod
    def s2(cls, **kwargs: Any) -> DiT:
        """DiT-S/2: 12 blocks, width 384, 6 heads, patch 2 (33M parameters, 6.06 Gflops at
        input 32). Keyword arguments override the paper's defaults (input 32, 4 channels,
        1000 classes, learned variance)."""
        return cls._preset("s", 2, **kwargs)

    @classmethod
    def s4(cls, **kwargs: Any) -> DiT:
        """DiT-S/4 (33M parameters, 1.41 Gflops); see :meth:`s2`."""
        return cls._preset("s", 4, **kwargs)

    @classmethod
    def s8(cls, **kwargs: Any) -> DiT:
        """DiT-S/8 (33M parameters, 0.36 Gflops); see :meth:`s2`."""
        return cls._preset("s", 8, **kwargs)

    @classmethod
    def b2(cls, **kwargs: Any) -> DiT:
        """DiT-B/2: 12 blocks, width 768, 12 heads (130M parameters, 23.01 Gflops)."""
        return cls._preset("b", 2, **kwargs)

    @classmethod
    def b4(cls, **kwargs: Any) -> DiT:
        """DiT-B/4 (130M parameters, 5.56 Gflops); see :meth:`b2`."""
        return cls._preset("b", 4, **kwargs)

    @classmethod
    def b8(cls, **kwargs: Any) -> DiT:
        """DiT-B/8 (131M parameters, 1.42 Gflops); see :meth:`b2`."""
        return cls._preset("b", 8, **kwargs)

    @classmethod
    def l2(cls, **kwargs: Any) -> DiT:
        """DiT-L/2: 24 blocks, width 1024, 16 heads (458M parameters, 80.71 Gflops)."""
        return cls._preset("l", 2, **kwargs)

    @classmethod
    def l4(cls, **kwargs: Any) -> DiT:
        """DiT-L/4 (458M parameters, 19.70 Gflops); see :meth:`l2`."""
        return cls._preset("l", 4, **kwargs)

    @classmethod
    def l8(cls, **kwargs: Any) -> DiT:
        """DiT-L/8 (459M parameters, 5.01 Gflops); see :meth:`l2`."""
        return cls._preset("l", 8, **kwargs)

    @classmethod
    def xl2(cls, **kwargs: Any) -> DiT:
        """DiT-XL/2: 28 blocks, width 1152, 16 heads (675M parameters, 118.64 Gflops), the
        paper's best model."""
        return cls._preset("xl", 2, **kwargs)

    @classmethod
    def xl4(cls, **kwargs: Any) -> DiT:
        """DiT-XL/4 (675M parameters, 29.05 Gflops); see :meth:`xl2`."""
        return cls._preset("xl", 4, **kwargs)

    @classmethod
    def xl8(cls, **kwargs: Any) -> DiT:
        """DiT-XL/8 (676M parameters, 7.39 Gflops); see :meth:`xl2`."""
        return cls._preset("xl", 8, **kwargs)

    # ------------------------------------------------------------------------------------
    # Factories: override one in a subclass to change one part
    # ------------------------------------------------------------------------------------
    def make_patch_embed(self) -> nn.Module:
        """Patchify ``(B, in_channels, H, W) -> (B, N, hidden_size)``."""
        return PatchEmbed(self.in_channels, self.hidden_size, self.patch_size)

    def make_time_embedding(self) -> nn.Module:
        """Timesteps ``(B,)`` -> ``(B, hidden_size)``: sinusoid (cos first) and a 2-layer MLP."""
        return TimestepEmbedding(self.frequency_embedding_size, self.hidden_size,
                                 flip_sin_to_cos=True, freq_shift=self.freq_shift)

    def make_class_embedding(self) -> nn.Module | None:
        """Labels ``(B,)`` (``-1`` = null class) -> ``(B, hidden_size)``, or ``None``."""
        if self.num_classes is None:
            return None
        return ClassEmbedding(self.num_classes, self.hidden_size)

    def make_context_embedding(self) -> nn.Module:
        """Pooled context ``(B, context_dim)`` -> ``(B, hidden_size)`` added to ``c``; starts
        at zero (built only with ``context_dim``)."""
        return nn.Linear(self.context_dim or 0, self.hidden_size)

    def make_attention(self, layer: int) -> nn.Module:
        """Self-attention of block ``layer``, ``(B, N, D) -> (B, N, D)``."""
        return SelfAttention(self.hidden_size, self.num_heads)

    def make_cross_attention(self, layer: int) -> nn.Module | None:
        """Cross-attention of block ``layer`` to the context tokens (``None`` without
        ``context_dim``), called as ``attn(h, context, context_mask)``."""
        if self.context_dim is None:
            return None
        return CrossAttention(self.hidden_size, self.context_dim, num_heads=self.num_heads)

    def make_mlp(self, layer: int) -> nn.Module:
        """Feed-forward layer of block ``layer``, ``(B, N, D) -> (B, N, D)``."""
        return Mlp(self.hidden_size, int(self.hidden_size * self.mlp_ratio))

    def make_block(self, layer: int) -> nn.Module:
        """Block ``layer``, called as ``block(h, c)`` (``block(h, c, context, context_mask)``
        with ``context_dim``)."""
        return DiTBlock(
            self.hidden_size, self.make_attention(layer), self.make_mlp(layer),
            self.make_cross_attention(layer), norm_eps=self.norm_eps,
            mlp_norm_eps=self.mlp_norm_eps,
        )

    def make_final_layer(self) -> nn.Module:
        """``(h (B, N, D), c (B, D)) -> (B, N, p * p * out_channels)``."""
        return DiTFinalLayer(self.hidden_size, self.patch_size, self.out_channels,
                             norm_eps=self.norm_eps)

    def initialize_weights(self) -> None:
        """The original initialisation: Xavier-uniform weights and zero biases for every
        ``Linear`` and the patch projection, normal(0, 0.02) for the label table and the
        timestep MLP, then zero for each block's adaLN regression, the cross-attention output
        projections, the pooled-context projection and the final layer (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        proj = getattr(self.x_embedder, "proj", None)
        if isinstance(proj, nn.Conv2d):
            nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        if isinstance(self.y_embedder, ClassEmbedding):
            nn.init.normal_(self.y_embedder.embedding.weight, std=0.02)
        if isinstance(self.t_embedder, TimestepEmbedding):
            nn.init.normal_(self.t_embedder.linear_1.weight, std=0.02)
            nn.init.normal_(self.t_embedder.linear_2.weight, std=0.02)
        zero: list[nn.Module] = [self.final_layer]
        if self.context_dim is not None:
            zero.append(self.context_embed)
        for block in self.blocks:
            zero += [getattr(block, "adaLN_modulation", nn.Identity())]
            cross = getattr(block, "cross_attn", None)
            if isinstance(cross, CrossAttention):
                zero.append(cross.proj_out)
        for module in zero:
            zero_module(module)

    # ------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------
    def embed(
        self, t: torch.Tensor, y: torch.Tensor | None = None, *,
        context_pooled: torch.Tensor | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        """The conditioning vector ``c`` ``(B, hidden_size)`` of every adaLN layer:
        ``t_embedder(t) + y_embedder(y)`` (+ ``context_embed(context_pooled)`` for text).
        Extra keyword arguments of ``forward`` arrive here; override it to use them."""
        y = check_condition(self, "DiT", self.num_classes if self.y_embedder is not None
                            else None, y, t.shape[0], kwargs)
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None and y is not None:  # class-conditional
            c = c + self.y_embedder(y).to(c.dtype)
        if context_pooled is not None:
            c = c + self.context_embed(context_pooled.to(c.dtype)).to(c.dtype)
        return c

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None,
        *, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
        context_pooled: torch.Tensor | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        """Predict from ``x_t`` ``(B, in_channels, H, W)`` at timesteps ``t`` ``(B,)``; returns
        ``(B, out_channels, H, W)`` (see the class docstring)."""
        if not torch.compiler.is_compiling():
            check_x(x, self.in_channels, "DiT")
            if x.shape[2] % self.patch_size or x.shape[3] % self.patch_size:
                raise ValueError(
                    f"x's height and width must be divisible by patch_size={self.patch_size}; "
                    f"got {tuple(x.shape[2:])}: resize or pad the inputs"
                )
        t = check_timesteps(t, x)
        if self.context_dim is None:
            if context is not None or context_mask is not None or context_pooled is not None:
                raise ValueError(
                    "context was given, but this DiT was built without context_dim; build it "
                    "with context_dim=D (the text encoder's width) to condition on text"
                )
            c = self.embed(t, y, **kwargs)  # (B, D)
        else:
            context, context_mask, context_pooled = check_context(
                context, context_mask, context_pooled, x, self.context_dim, "DiT"
            )
            c = self.embed(t, y, context_pooled=context_pooled, **kwargs)  # (B, D)
        grid_h, grid_w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        h = self.x_embedder(x)  # (B, N, D)
        h = h + self.position_embedding(grid_h, grid_w).to(h.dtype)
        text = () if context is None else (context, context_mask)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpointing:
                from torch.utils.checkpoint import checkpoint

                h = checkpoint(block, h, c, *text, use_reentrant=False)
            else:
                h = block(h, c, *text)
        h = self.final_layer(h, c)  # (B, N, p * p * C_out)
        return self.unpatchify(h, grid_h, grid_w)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """``(1, grid_h * grid_w, D)``: the stored table for the configured grid, else the
        sin-cos embedding of the given grid."""
        grid = self.input_size // self.patch_size
        stored = self.get_buffer("pos_embed")
        if (grid_h, grid_w) == (grid, grid):
            return stored
        return sincos_position_embedding(self.hidden_size, grid_h, grid_w)[None].to(stored.device)

    def unpatchify(self, h: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """``(B, grid_h * grid_w, p * p * C)`` -> ``(B, C, grid_h * p, grid_w * p)``: token
        ``(i, j)`` holds the ``p x p`` patch at rows ``i p ..``, columns ``j p ..``, its
        channels last (the original's ``nhwpqc -> nchpwq``)."""
        p, c = self.patch_size, self.out_channels
        h = h.reshape(h.shape[0], grid_h, grid_w, p, p, c)
        return h.permute(0, 5, 1, 3, 2, 4).reshape(h.shape[0], c, grid_h * p, grid_w * p)

    # ------------------------------------------------------------------------------------
    # Configuration
    # ------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """``input_size`` (the side of the inputs), under the name the UNet uses."""
        return self.input_size

    @property
    def config(self) -> dict[str, Any]:
        """The constructor keyword arguments; ``type(self)(**model.config)`` rebuilds it."""
        config = dict(self._config)
        config["gradient_checkpointing"] = bool(self.gradient_checkpointing)
        config.update(self._extra_config)
        return config

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())
