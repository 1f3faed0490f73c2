"""A Hugging Face ``transformers`` text model (CLIP, T5, ...) and its tokenizer as a text
encoder: :class:`HFTextEncoder`, a drop-in for :class:`~ddpm_lib.models.text.TextEncoder` in a
:class:`~ddpm_lib.models.text.TextConditionedUNet`.

It returns the same :class:`~ddpm_lib.models.text.TextEncoding` (``states``, ``mask``,
``pooled``) as every text encoder; ``transformers`` is imported only when a model is loaded.
Re-exported by :mod:`ddpm_lib.models.text`, where it used to live.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm_lib._checks import check_bool, check_int

from .attention import masked_mean
from .text import CONFIG_NAME, TextEncoding, _read_config, check_prompts

__all__ = ["HFTextEncoder"]


# ---------------------------------------------------------------------------------------------
# Hugging Face adapter
# ---------------------------------------------------------------------------------------------
class HFTextEncoder(nn.Module):
    """A Hugging Face ``transformers`` text model and its tokenizer, as a text encoder.

    For a CLIP text model (``CLIPTextModel``), a T5 encoder (``T5EncoderModel``) or any model
    whose output has ``last_hidden_state``. ``transformers`` is imported only when this class
    is used; nothing is downloaded: pass objects you already have (e.g. from
    ``CLIPTextModel.from_pretrained(local_dir)``).

    Prompts are padded (or truncated, with a warning) to ``max_length`` tokens. The pooled
    vector is the model's ``pooler_output`` when it has one (CLIP: the end token's state) and
    the mean of the real tokens' states otherwise (T5). The model's parameters are trained
    with the UNet unless you freeze them (``encoder.model.requires_grad_(False)``).

    Args:
        model: the ``transformers`` text model (``PreTrainedModel``).
        tokenizer: its tokenizer.
        max_length: tokens per prompt after padding; ``None``: the tokenizer's
            ``model_max_length`` when it is at most 512 (CLIP: 77), else 77.
        use_attention_mask: ``True`` (default): the model reads the padding mask and the
            UNet attends to the real tokens only. ``False``: the model is called without a
            mask and every one of the ``max_length`` token states, padding included, is
            attended to (the returned mask is all ``True``): what Stable Diffusion 1.x / 2.x
            were trained with (its pipelines pass the mask only when the text encoder's
            config sets ``use_attention_mask``).
    """

    model: Any
    tokenizer: Any

    def __init__(
        self, model: nn.Module, tokenizer: Any, max_length: int | None = None, *,
        use_attention_mask: bool = True,
    ) -> None:
        super().__init__()
        self.use_attention_mask = check_bool("use_attention_mask", use_attention_mask)
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise TypeError(
                f"model must be a transformers PreTrainedModel; got {type(model).__name__}"
            )
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a transformers tokenizer; got "
                            f"{type(tokenizer).__name__}")
        if max_length is None:
            limit = getattr(tokenizer, "model_max_length", None)
            max_length = int(limit) if isinstance(limit, int) and 0 < limit <= 512 else 77
        self.max_length = check_int("max_length", max_length, 1)
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        dim = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if not isinstance(dim, int):
            raise ValueError(
                f"cannot read the width of {type(model).__name__}: its config has neither "
                "hidden_size nor d_model"
            )
        self.dim = dim

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask ``(B, max_length)`` of ``prompts`` (on the CPU); warns when a
        prompt is truncated."""
        prompts = check_prompts(prompts)
        full = self.tokenizer(prompts, truncation=False)["input_ids"]
        long = [(i, len(ids)) for i, ids in enumerate(full) if len(ids) > self.max_length]
        if long:
            i, n = long[0]
            warnings.warn(
                f"{len(long)} prompt(s) longer than max_length={self.max_length} tokens were "
                f"truncated (prompt {i}: {n} tokens)", UserWarning, stacklevel=2,
            )
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return tokens["input_ids"], tokens["attention_mask"].bool()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TextEncoding:
        """Encode token ids ``(B, L)`` with their mask (``True`` = real token)."""
        if self.use_attention_mask:
            output = self.model(input_ids=ids, attention_mask=mask.long())
        else:  # Stable Diffusion: no mask, every token state is attended to
            output = self.model(input_ids=ids)
            mask = torch.ones_like(mask, dtype=torch.bool)
        states = output.last_hidden_state  # (B, L, D)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None or pooled.shape != (states.shape[0], states.shape[2]):
            pooled = masked_mean(states, mask)
        return TextEncoding(states, mask.bool(), pooled)

    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """Tokenise and encode ``prompts`` on the model's device."""
        ids, mask = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        return self(ids.to(device), mask.to(device))

    @property
    def config(self) -> dict[str, Any]:
        """``model_class`` (the ``transformers`` class name), ``max_length`` and
        ``use_attention_mask``."""
        return dict(model_class=type(self.model).__name__, max_length=self.max_length,
                    use_attention_mask=self.use_attention_mask)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json``, the model (``model/``, safetensors) and the tokenizer
        (``tokenizer/``) with ``transformers``' own ``save_pretrained``."""
        from ddpm_lib import _io

        config = {"_class_name": type(self).__name__, **self.config}
        with _io.atomic_folder(directory) as tmp:  # swapped in whole, with a manifest
            self.model.save_pretrained(tmp / "model", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            _io.write_json(tmp / CONFIG_NAME, config, sort_keys=True)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> HFTextEncoder:
        """Rebuild an adapter written by :meth:`save_pretrained` from local files only."""
        from ddpm_lib import _io

        try:
            import transformers
        except ImportError as error:
            raise ImportError(
                "HFTextEncoder.from_pretrained needs the transformers package, which is not "
                'installed: pip install "ddpm-lib[transformers]"'
            ) from error

        directory = Path(directory)
        config = _read_config(directory, cls.__name__)
        model_class = getattr(transformers, str(config.get("model_class")), None)
        if model_class is None:
            raise ValueError(
                f"{directory / CONFIG_NAME} names model_class={config.get('model_class')!r}, "
                "which transformers does not have"
            )
        from safetensors import SafetensorError

        try:
            model = model_class.from_pretrained(directory / "model", local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                directory / "tokenizer", local_files_only=True
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError,
                SafetensorError) as error:
            _io.verify_folder(directory)  # a damaged part: say which file differs
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise ValueError(f"{directory}: the transformers model or tokenizer cannot be "
                             f"loaded ({type(error).__name__}: {first})") from None
        encoder = cls(model, tokenizer, max_length=config.get("max_length"),
                      use_attention_mask=config.get("use_attention_mask", True))
        _io.verify_folder(directory)  # refuses a folder that mixes parts of two saves
        if dtype is not None:
            encoder.to(dtype=dtype)
        if device is not None:
            encoder.to(device=device)
        return encoder.eval()
