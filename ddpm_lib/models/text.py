"""Text conditioning (GLIDE, Nichol et al. 2022): a byte-level text encoder, an adapter for
Hugging Face text models (:mod:`ddpm_lib.models.hf_text`), and :class:`TextConditionedUNet`, the text encoder and a
``UNet(context_dim=...)`` trained and saved as one model.

Every text encoder here maps a list of prompts to a :class:`TextEncoding`:

* ``states`` ``(B, L, D)``: one vector per token (the UNet's ``context``);
* ``mask`` ``(B, L)`` bool: ``True`` for real tokens, ``False`` for padding (the UNet's
  ``context_mask``; the convention of :func:`torch.nn.functional.scaled_dot_product_attention`,
  the opposite of ``nn.Transformer``'s ``key_padding_mask``);
* ``pooled`` ``(B, D)``: one vector per prompt (the UNet's ``context_pooled``, added to the
  time embedding).

``L`` is fixed per encoder (prompts are padded to it), so that the encodings of two prompt
lists always concatenate, as classifier-free guidance does with a conditional and an
unconditional batch. The empty prompt ``""`` is the unconditional input.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ddpm_lib._checks import check_bool, check_int, check_probability

from .attention import masked_mean
from .pretrained import PretrainedModel
from .registry import build_model, resolve_model_class
from .unet import UNet

__all__ = [
    "TextConditionedUNet",
    "TextEncoder",
    "TextEncoding",
    "check_prompts",
]

CONFIG_NAME = "config.json"
#: how :class:`TextEncoder` pools its token states into one vector
POOLINGS = ("mean", "max", "last")
# n-gram hashing: code = sum_k id[i - k] * 263**k mod a prime below 2**31 (so products stay
# inside int64), then a per-length odd multiplier spreads the codes over the buckets.
_NGRAM_PRIME = 2_147_483_647
_NGRAM_POWERS = [pow(263, k, _NGRAM_PRIME) for k in range(8)]
_NGRAM_MULTIPLIERS = (1_000_003, 998_244_353, 1_000_000_007, 19_260_817, 1_610_612_741,
                      805_306_457, 402_653_189)


class TextEncoding(NamedTuple):
    """What a text encoder returns for ``B`` prompts (see the module docstring).

    Attributes:
        states: ``(B, L, D)`` per-token states (zero at padding positions for
            :class:`TextEncoder`).
        mask: ``(B, L)`` bool, ``True`` for real tokens.
        pooled: ``(B, D)`` one vector per prompt.
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def check_prompts(prompts: Any, name: str = "prompts") -> list[str]:
    """Return ``prompts`` as a list if it is a non-empty list or tuple of ``str``; raise a
    ``TypeError`` / ``ValueError`` naming ``name`` otherwise (a bare string is refused: it is
    almost always a forgotten ``[...]``)."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(
            f"{name} must be a list or tuple of str (one prompt per sample); got "
            f"{type(prompts).__name__}" + (f" {prompts!r}: wrap it as [{prompts!r}]"
                                          if isinstance(prompts, str) else "")
        )
    if not prompts:
        raise ValueError(
            f"{name} must hold at least one prompt; got an empty {type(prompts).__name__}"
        )
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(
                f"{name}[{i}] must be a str; got {type(prompt).__name__} {prompt!r} (use '' for "
                "the unconditional prompt)"
            )
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{name}[{i}] cannot be encoded as UTF-8: character {error.start} "
                f"({prompt[error.start]!r}) {error.reason} (a lone surrogate, e.g. from text "
                f"decoded with errors='surrogateescape'); got {prompt!r}"
            ) from None
    return list(prompts)


def _utf8_prefix(data: bytes, limit: int) -> bytes:
    """The longest prefix of the UTF-8 ``data`` of at most ``limit`` bytes that does not cut a
    character: the cut moves back over continuation bytes (``0b10xxxxxx``)."""
    if len(data) <= limit:
        return data
    cut = limit
    while cut > 0 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return data[:cut]


# ---------------------------------------------------------------------------------------------
# Byte-level transformer text encoder
# ---------------------------------------------------------------------------------------------
class TextEncoder(PretrainedModel):
    """A byte-level (UTF-8) transformer text encoder: any language, no vocabulary file.

    Tokenisation: a prompt is encoded to UTF-8 and each byte ``b`` becomes token
    ``b + BYTE_OFFSET``; ids ``PAD_ID = 0``, ``BOS_ID = 1`` (begin) and ``EOS_ID = 2`` (end)
    are reserved, so the vocabulary has ``256 + 3`` entries. A sequence is
    ``[BOS, bytes..., EOS, PAD, ...]`` of fixed length ``max_length + 2``. Prompts longer than
    ``max_length`` bytes are truncated, with a warning, at the last character boundary (a
    multi-byte character is never split). ``""`` is ``[BOS, EOS]``.

    Network: learned embeddings of each byte and of its position, plus, with ``ngram_size >
    1``, hashed embeddings of the byte n-grams (``2 <= n <= ngram_size``) that end at each
    position (fastText, Bojanowski et al. 2017; CANINE's hashed embeddings, Clark et al. 2022):
    a position's input then says which word it ends, so words -- and, in Chinese, the
    three-byte characters -- are told apart from the first step instead of being assembled
    from single bytes by attention; then ``num_layers`` pre-norm
    ``torch.nn.TransformerEncoderLayer`` (GELU, ``4 * dim`` feed-forward width) with the padding
    masked out of every attention, and a final ``torch.nn.LayerNorm``. Padding states are set
    to zero. The pooled vector is, with ``pooling="mean"``, the mean of the real tokens'
    states, which weighs every word of the caption alike; with ``"max"``, their elementwise
    maximum; with ``"last"``, the end token's state (GLIDE's choice, for deep encoders trained
    long: a shallow one barely moves it when a word in the middle of the caption changes).

    With ``bag_of_ngrams=True`` (the default) the pooled vector also gets a bag of the caption's
    bytes and byte n-grams, each with its own learned vector (two tables beside the token
    inputs, initialised with standard deviation 1), summed over the real tokens and divided by
    the square root of their number (fastText's sentence vector, Joulin et al. 2017). Every
    word of the caption then moves the pooled vector -- and, through it, every block of the
    UNet -- by a distinct, large amount from the first step, before the transformer has learnt
    anything; in the text-to-image example (``examples/text_to_image.py``) this lifted the
    shape accuracy well above chance (the text-to-image guide gives the measured figures).
    The per-token states are unchanged.

    An n-gram's bucket is a fixed polynomial hash of its byte ids (the same on every
    platform), so no vocabulary is stored; n-grams that run into the padding have none.
    Distinct n-grams can share a bucket (rarely, with the default 4096 buckets and the few
    thousand n-grams of a caption set); the byte embeddings and the attention disambiguate.

    Args:
        dim: width ``D`` of the token states (the UNet's ``context_dim``).
        num_layers: transformer layers.
        num_heads: attention heads; must divide ``dim``.
        max_length: most UTF-8 bytes read from a prompt (one ASCII character is one byte, a
            Chinese character three).
        dropout: dropout inside the transformer layers.
        ngram_size: longest hashed byte n-gram embedded beside the bytes (``1``: bytes only).
            With the default 4, every position sees up to four bytes: the stem of an English
            word, or a whole three-byte Chinese character; in the text-to-image example this
            is what lets the model read a shape's colour (measured in the text-to-image
            guide).
        ngram_buckets: rows of the shared n-gram embedding table (bucket 0 means "none").
        pooling: ``"mean"`` (default), ``"max"`` or ``"last"``, see above.
        bag_of_ngrams: add the bag of byte n-grams to the pooled vector, see above.

    Call ``encoder(ids, mask)`` with the output of :meth:`tokenize` (on the encoder's device),
    or :meth:`encode` with a list of prompts; both return a :class:`TextEncoding`.
    """

    PAD_ID = 0
    BOS_ID = 1
    EOS_ID = 2
    BYTE_OFFSET = 3
    VOCAB_SIZE = 256 + BYTE_OFFSET

    def __init__(
        self, dim: int = 256, num_layers: int = 4, num_heads: int = 4, max_length: int = 64,
        *, dropout: float = 0.0, ngram_size: int = 4, ngram_buckets: int = 4096,
        pooling: str = "mean", bag_of_ngrams: bool = True,
    ) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        check_int("num_layers", num_layers, 1)
        check_int("num_heads", num_heads, 1)
        check_int("max_length", max_length, 1)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        check_probability("dropout", dropout)
        check_int("ngram_size", ngram_size, 1)
        check_int("ngram_buckets", ngram_buckets, 1)
        if ngram_size > len(_NGRAM_MULTIPLIERS) + 1:
            raise ValueError(
                f"ngram_size must be at most {len(_NGRAM_MULTIPLIERS) + 1}; got {ngram_size}"
            )
        if ngram_size > 1 and ngram_buckets < 2:
            raise ValueError(f"ngram_buckets must be >= 2 with ngram_size > 1; got {ngram_buckets}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        check_bool("bag_of_ngrams", bag_of_ngrams)
        self.dim, self.num_layers, self.num_heads = dim, num_layers, num_heads
        self.ngram_size, self.ngram_buckets, self.pooling = ngram_size, ngram_buckets, pooling
        self.max_length, self.dropout = max_length, float(dropout)
        self.sequence_length = max_length + 2
        self.token_embedding = nn.Embedding(self.VOCAB_SIZE, dim)
        self.position_embedding = nn.Embedding(self.sequence_length, dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)
        self.ngram_embedding: nn.Embedding | None = None
        if ngram_size > 1:
            self.ngram_embedding = nn.Embedding(ngram_buckets, dim, padding_idx=0)
            nn.init.normal_(self.ngram_embedding.weight, std=0.02)
            with torch.no_grad():
                self.ngram_embedding.weight[0].zero_()
        self.bag_of_ngrams = bag_of_ngrams
        self.bag_byte_embedding: nn.Embedding | None = None
        self.bag_ngram_embedding: nn.Embedding | None = None
        if bag_of_ngrams:  # std 1 (nn.Embedding's default): large and distinct from the start
            self.bag_byte_embedding = nn.Embedding(self.VOCAB_SIZE, dim, padding_idx=self.PAD_ID)
            if ngram_size > 1:
                self.bag_ngram_embedding = nn.Embedding(ngram_buckets, dim, padding_idx=0)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=4 * dim, dropout=self.dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)

    # ------------------------------------------------------------------ tokenizer
    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Byte-level token ids and mask of ``prompts``, on the CPU.

        Returns:
            ``(ids, mask)``: ``ids`` ``(B, max_length + 2)`` long, ``mask`` of the same shape,
            bool, ``True`` for the begin token, the bytes and the end token.

        Raises:
            TypeError: ``prompts`` is not a list or tuple of ``str``.

        Warns:
            UserWarning: when a prompt is longer than ``max_length`` UTF-8 bytes (it is
            truncated at a character boundary).
        """
        prompts = check_prompts(prompts)
        length = self.sequence_length
        ids = torch.full((len(prompts), length), self.PAD_ID, dtype=torch.long)
        truncated = []
        for i, prompt in enumerate(prompts):
            data = prompt.encode("utf-8")
            kept = _utf8_prefix(data, self.max_length)
            if len(kept) < len(data):
                truncated.append((i, len(data), len(kept)))
            row = [self.BOS_ID, *(byte + self.BYTE_OFFSET for byte in kept), self.EOS_ID]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        if truncated:
            first, full_bytes, kept_bytes = truncated[0]
            shown = prompts[first].encode("utf-8")[:kept_bytes].decode("utf-8")
            warnings.warn(
                f"{len(truncated)} prompt(s) longer than max_length={self.max_length} UTF-8 "
                f"bytes were truncated (prompt {first}: {full_bytes} bytes, kept the first "
                f"{kept_bytes}: {shown!r}); build the TextEncoder "
                "with a larger max_length to keep them whole",
                UserWarning, stacklevel=2,
            )
        return ids, ids != self.PAD_ID

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """The prompts of token ids ``(B, L)``: the bytes between the begin token and the first
        end (or pad) token, decoded as UTF-8 (invalid sequences become U+FFFD). Inverts
        :meth:`tokenize` (for a truncated prompt, it gives the kept prefix)."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) for r in ids]
        prompts = []
        for row in rows:
            data = bytearray()
            for token in row:
                if token == self.BOS_ID:
                    continue
                if token in (self.EOS_ID, self.PAD_ID):
                    break
                if not self.BYTE_OFFSET <= token < self.VOCAB_SIZE:
                    raise ValueError(f"ids holds {token}, not a token id in [0, {self.VOCAB_SIZE})")
                data.append(token - self.BYTE_OFFSET)
            prompts.append(data.decode("utf-8", errors="replace"))
        return prompts

    # ------------------------------------------------------------------ network
    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> TextEncoding:
        """Encode token ids ``(B, L)`` (``L <= max_length + 2``) with their mask ``(B, L)``
        (``True`` = real token; ``None``: ``ids != PAD_ID``). Returns a :class:`TextEncoding`
        with states ``(B, L, dim)``, the mask and the pooled vector ``(B, dim)``."""
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype != torch.long:
            raise TypeError(
                "ids must be a (B, L) long tensor of token ids (see TextEncoder.tokenize); got "
                + (f"{ids.dtype} of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor)
                   else type(ids).__name__)
            )
        if ids.shape[1] > self.sequence_length:
            raise ValueError(
                f"ids has {ids.shape[1]} tokens; this TextEncoder reads at most "
                f"max_length + 2 = {self.sequence_length}"
            )
        if mask is None:
            mask = ids != self.PAD_ID
        mask = mask.to(device=ids.device, dtype=torch.bool)
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.token_embedding(ids) + self.position_embedding(positions)  # (B, L, D)
        grams = (self.ngram_ids(ids) if self.ngram_size > 1  # (B, L, ngram_size - 1)
                 else ids.new_zeros((*ids.shape, 0)))
        if self.ngram_embedding is not None:
            h = h + self.ngram_embedding(grams).sum(dim=2)
        h = self.transformer(h, src_key_padding_mask=~mask)  # torch: True = padding
        h = self.final_norm(h)
        states = h * mask[:, :, None].to(h.dtype)  # (B, L, D), zero at padding
        if self.pooling == "mean":
            pooled = masked_mean(states, mask)  # (B, D)
        elif self.pooling == "max":
            pooled = h.masked_fill(~mask[:, :, None], float("-inf")).amax(dim=1)  # (B, D)
        else:
            last = (mask.long().sum(dim=1) - 1).clamp(min=0)  # (B,) position of the end token
            pooled = states[torch.arange(states.shape[0], device=ids.device), last]  # (B, D)
        if self.bag_byte_embedding is not None:
            bag = self.bag_byte_embedding(ids)  # (B, L, D)
            if self.bag_ngram_embedding is not None:
                bag = bag + self.bag_ngram_embedding(grams).sum(dim=2)
            weight = mask.to(bag.dtype)
            count = weight.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
            pooled = pooled + torch.einsum("bld,bl->bd", bag, weight) / count.sqrt()
        return TextEncoding(states, mask, pooled)

    def ngram_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Buckets ``(B, L, ngram_size - 1)`` of the byte n-grams ``2 <= n <= ngram_size``
        ending at each position of token ids ``(B, L)``; ``0`` where the n-gram would reach
        past the start or into the padding. A pure function of the ids (integer arithmetic,
        no Python ``hash``), so it is the same on every machine and every run."""
        length = ids.shape[1]
        code = ids  # the n-gram's polynomial code, kept below _NGRAM_PRIME
        valid = ids != self.PAD_ID
        buckets = []
        for n in range(2, self.ngram_size + 1):
            earlier = nn.functional.pad(ids, (n - 1, 0), value=self.PAD_ID)[:, :length]
            valid = valid & (earlier != self.PAD_ID)
            code = (code + earlier * _NGRAM_POWERS[n - 1]) % _NGRAM_PRIME
            bucket = (code * _NGRAM_MULTIPLIERS[n - 2] + n) % (self.ngram_buckets - 1) + 1
            buckets.append(torch.where(valid, bucket, torch.zeros_like(bucket)))
        return torch.stack(buckets, dim=-1)

    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """Tokenise ``prompts`` (see :meth:`tokenize`) and encode them on the encoder's device.

        The states have the full ``max_length + 2`` tokens, but the transformer runs on the
        batch's longest prompt only: padding never changes the real tokens' states, so the
        columns past it are the zeros the full-length pass would give (the same numbers, at a
        fraction of the cost for short captions; the lengths are read on the CPU, before the
        ids reach the device, so nothing waits for it)."""
        ids, mask = self.tokenize(prompts)
        device = self.token_embedding.weight.device
        used = int(mask.sum(dim=1).max()) if len(mask) else ids.shape[1]
        mask = mask.to(device)
        encoding = self(ids[:, :used].to(device), mask[:, :used])
        pad = ids.shape[1] - used
        return TextEncoding(
            nn.functional.pad(encoding.states, (0, 0, 0, pad)), mask, encoding.pooled
        )

    # ------------------------------------------------------------------ saving
    @staticmethod
    def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
        """A saved configuration with the options that were added later filled in as the
        encoder that wrote it had them: one without ``ngram_size`` / ``pooling`` came from
        the byte-only, end-token encoder (``ngram_size=1, pooling="last"``); one without
        ``bag_of_ngrams`` from an encoder without the bag (``bag_of_ngrams=False``)."""
        config = dict(config)
        if "ngram_size" not in config:
            config["ngram_size"] = 1
            config.setdefault("pooling", "last")
        config.setdefault("bag_of_ngrams", False)
        return config

    @classmethod
    def load_config(cls, directory: str | os.PathLike) -> dict[str, Any]:
        """The saved constructor arguments (see :meth:`upgrade_config` for older files)."""
        return cls.upgrade_config(super().load_config(directory))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TextEncoder:
        """A new encoder from saved constructor arguments, older ones upgraded."""
        return cls(**cls.upgrade_config(config))

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments; ``TextEncoder(**encoder.config)`` rebuilds it."""
        return dict(dim=self.dim, num_layers=self.num_layers, num_heads=self.num_heads,
                    max_length=self.max_length, dropout=self.dropout, ngram_size=self.ngram_size,
                    ngram_buckets=self.ngram_buckets, pooling=self.pooling,
                    bag_of_ngrams=self.bag_of_ngrams)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


def _read_config(directory: Path, class_name: str) -> dict[str, Any]:
    """The ``config.json`` of a folder written by ``save_pretrained``, its manifest checked."""
    from ddpm_lib import _io
    from ddpm_lib._readers import read_json

    path = directory / CONFIG_NAME
    if not path.is_file():
        _io.recover_folder(directory)  # a save interrupted between its two renames
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a directory written by save_pretrained")
    config = read_json(path, what="model configuration")  # errors name the file
    if config.pop("_class_name", None) != class_name:
        raise ValueError(f"{path} does not describe a {class_name}")
    return config


# ---------------------------------------------------------------------------------------------
# The text-to-image model
# ---------------------------------------------------------------------------------------------
class TextConditionedUNet(nn.Module):
    """A text encoder and a ``UNet(context_dim=...)`` as one model (GLIDE).

    ``model(x_t, t, **model.encode_prompts(prompts))`` predicts the noise for the prompts; the
    two parts are trained jointly (the gradient of the loss reaches the text encoder through
    the encoded prompts) and saved together. A class-conditional UNet takes ``y=`` beside the
    text.

    Args:
        unet: a :class:`ddpm_lib.UNet` or :class:`ddpm_lib.DiT` (or a subclass) built with
            ``context_dim`` equal to the encoder's width.
        text_encoder: a :class:`TextEncoder`, an :class:`HFTextEncoder`, or any module with
            ``dim`` and ``encode(prompts) -> TextEncoding``.

    Example::

        model = TextConditionedUNet(UNet(..., context_dim=256), TextEncoder(dim=256))
        loss = SimpleLoss(schedule)(model, x0, **model.encode_prompts(captions))
        images = sampler.sample(model, shape, model_kwargs=model.encode_prompts(prompts),
                                guidance_scale=3.0,
                                unconditional_kwargs=model.encode_prompts([""] * len(prompts)))
    """

    unet: Any
    text_encoder: Any

    def __init__(self, unet: nn.Module, text_encoder: nn.Module) -> None:
        super().__init__()
        if not isinstance(unet, nn.Module) or not hasattr(unet, "context_dim"):
            raise TypeError(
                f"unet must be a ddpm_lib.UNet or DiT (a network with context_dim); got "
                f"{type(unet).__name__}"
            )
        if not isinstance(text_encoder, nn.Module) or not hasattr(text_encoder, "encode"):
            raise TypeError(
                "text_encoder must be a module with encode(prompts) (TextEncoder, "
                f"HFTextEncoder); got {type(text_encoder).__name__}"
            )
        dim = getattr(text_encoder, "dim", None)
        if unet.context_dim is None:
            raise ValueError(
                f"unet was built without context_dim; build it with context_dim={dim} (the "
                "text encoder's width) to condition it on text"
            )
        if unet.context_dim != dim:
            raise ValueError(
                f"unet.context_dim={unet.context_dim} must equal the text encoder's width "
                f"text_encoder.dim={dim}"
            )
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor | int, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``unet(x_t, t, ...)``: pass the keyword arguments of :meth:`encode_prompts` (and
        ``y=`` for a class-conditional UNet)."""
        return self.unet(x_t, t, *args, **kwargs)

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Encode prompts once into the UNet's text keyword arguments.

        Args:
            prompts: one ``str`` per sample, in any language; ``""`` is the unconditional
                prompt of classifier-free guidance.

        Returns:
            ``{"context": (B, L, D), "context_mask": (B, L) bool, "context_pooled": (B, D)}``
            on the model's device, ``L`` fixed by the encoder (so two results concatenate).
            Gradients flow to the text encoder when autograd is enabled (training).

        Raises:
            TypeError: ``prompts`` is not a list or tuple of ``str``.
            ValueError: ``prompts`` is empty, or a prompt cannot be encoded as UTF-8 (the
                message names it: ``prompts[i]``).
        """
        prompts = check_prompts(prompts)
        encoding = self.text_encoder.encode(prompts)
        return {
            "context": encoding.states,
            "context_mask": encoding.mask,
            "context_pooled": encoding.pooled,
        }

    @property
    def config(self) -> dict[str, Any]:
        """The configurations of both parts, as ``{"unet": ..., "text_encoder": ...}``, with
        ``unet_class`` / ``text_encoder_class`` when a part is not a :class:`ddpm_lib.UNet` /
        :class:`TextEncoder` (a DiT, a subclass), so that :meth:`from_config` rebuilds it."""
        config: dict[str, Any] = {
            "unet": dict(self.unet.config), "text_encoder": dict(self.text_encoder.config)
        }
        for key, part, default in (("unet", self.unet, UNet),
                                   ("text_encoder", self.text_encoder, TextEncoder)):
            if type(part) is not default:
                config[f"{key}_class"] = type(part).__qualname__
        return config

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the parameters."""
        return next(self.parameters()).dtype

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TextConditionedUNet:
        """A new model from :attr:`config` (``{"unet": ..., "text_encoder": ...}``), as a
        checkpoint's ``meta.json`` records it; the parts' classes default to
        :class:`ddpm_lib.UNet` and :class:`TextEncoder` (``unet_class`` /
        ``text_encoder_class`` name others)."""
        parts = []
        for key, default in (("unet", "UNet"), ("text_encoder", "TextEncoder")):
            part = config.get(key)
            if not isinstance(part, dict):
                raise ValueError(f"a text model's configuration needs {key!r}; got {part!r}")
            part_class = resolve_model_class(config.get(f"{key}_class", default), what=key)
            parts.append(build_model(part_class, part))
        return cls(*parts)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write both parts: ``directory/unet/`` and ``directory/text_encoder/`` (each a
        ``config.json`` and safetensors weights, by the parts' own ``save_pretrained``), and
        ``directory/config.json`` naming their classes, with a ``manifest.json`` of their hashes.
        The folder is swapped in whole, so an interrupted save leaves the previous model (never
        a new UNet beside an old text encoder), and a loader refuses a folder that mixes parts
        of two saves. No pickle."""
        from ddpm_lib import _io

        config = {
            "_class_name": type(self).__name__,
            "unet_class": type(self.unet).__name__,
            "text_encoder_class": type(self.text_encoder).__name__,
        }
        # one folder swap for all parts: a failed save leaves the previous model whole
        with _io.atomic_folder(directory) as tmp:
            self.unet.save_pretrained(tmp / "unet")
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            _io.write_json(tmp / CONFIG_NAME, config, sort_keys=True)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, unet_class: type | None = None,
        text_encoder_class: type | None = None,
    ) -> TextConditionedUNet:
        """Rebuild a model written by :meth:`save_pretrained` (in eval mode).

        Args:
            directory: the folder :meth:`save_pretrained` wrote.
            device, dtype: where and in which dtype to put the weights (default: as saved).
            unet_class, text_encoder_class: the classes of the parts when they are subclasses
                of :class:`ddpm_lib.UNet` / custom encoders (default: found by the saved name
                with :func:`ddpm_lib.models.resolve_model_class`: :class:`ddpm_lib.UNet`,
                :class:`ddpm_lib.DiT`, :class:`TextEncoder`, :class:`HFTextEncoder`, ...).

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: a file is corrupt or describes other classes, or the parts come from
                different saves (they do not match the folder's ``manifest.json``).
        """
        from ddpm_lib import _io

        from .registry import resolve_model_class

        directory = Path(directory)
        config = _read_config(directory, cls.__name__)
        parts: list[Any] = []
        for key, given in (("unet_class", unet_class), ("text_encoder_class", text_encoder_class)):
            parts.append(given or resolve_model_class(
                config.get(key), directory / CONFIG_NAME, key.removesuffix("_class")))
        unet = parts[0].from_pretrained(directory / "unet", device=device, dtype=dtype)
        encoder = parts[1].from_pretrained(directory / "text_encoder", device=device, dtype=dtype)
        _io.verify_folder(directory)  # the parts checked themselves; this refuses a mix of them
        return cls(unet, encoder).eval()


def __getattr__(name: str) -> Any:
    # HFTextEncoder lives in hf_text.py, which imports TextEncoding from here: re-exported
    # lazily (PEP 562) so that ``from ddpm_lib.models.text import HFTextEncoder`` still works
    # without an import cycle.
    if name == "HFTextEncoder":
        from .hf_text import HFTextEncoder

        return HFTextEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
