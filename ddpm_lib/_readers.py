"""Reading files back: the parsers' own exceptions turned into errors that name the file.

The write side is :mod:`ddpm_lib._io`; this is the read side. Every loader of the library
reads through these helpers, so that a file that is cut short, empty, not of the expected kind
or corrupted raises a ``ValueError`` (``FileNotFoundError`` when it is absent) whose message
names the file and says what is wrong, instead of a ``JSONDecodeError``, ``SafetensorError``,
``BadZipFile``, ``UnpicklingError`` or ``KeyError`` that names neither.

:func:`content_digest` is the one checksum of a file that holds several arrays (the latent
cache, FID statistics, Analytic-DPM tables): it covers every array's name, dtype, shape and
bytes and every metadata entry, so a bit flipped in any of them is detected.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "content_digest",
    "load_npz",
    "load_safetensors",
    "parse_json",
    "read_bytes",
    "read_json",
    "read_utf8",
    "size_hint",
    "torch_load",
]


def read_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``; ``FileNotFoundError`` naming it (and ``what`` it should be) when
    it is absent, ``ValueError`` when it is a folder or unreadable."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (expected a {what})")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a {what}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error})") from None


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` decoded as UTF-8; ``ValueError`` saying ``where`` and at which byte it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{where} is not UTF-8 text: byte {error.start} "
                         f"(0x{data[error.start]:02x}) {error.reason}") from None


def read_utf8(path: str | os.PathLike, what: str = "text file") -> str:
    """The text of ``path`` (UTF-8); errors name the file and the first byte that is not UTF-8."""
    return decode_utf8(read_bytes(path, what), str(path))


def parse_json(text: str, where: str, *, expect: type | None = dict) -> Any:
    """``json.loads(text)``; ``ValueError`` saying ``where`` for empty text, text that is not
    JSON (with line and column: cut short or corrupted) or a value that is not an ``expect``."""
    if not text.strip():
        raise ValueError(f"{where} is empty (cut short?): expected JSON")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON ({error.msg} at line {error.lineno}, "
                         f"column {error.colno}); it may be cut short or corrupt") from None
    except RecursionError:
        raise ValueError(f"{where} is not valid JSON (nested too deeply)") from None
    if expect is not None and not isinstance(value, expect):
        raise ValueError(f"{where} must hold a JSON {_json_kind(expect)}; got "
                         f"{type(value).__name__}")
    return value


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number",
            bool: "boolean", type(None): "null"}.get(kind, kind.__name__)


def read_json(path: str | os.PathLike, *, expect: type | None = dict,
              what: str = "JSON file") -> Any:
    """The JSON value of ``path`` (an object unless ``expect`` says otherwise); every problem
    (absent, not UTF-8, empty, not JSON, another type) is an error naming the file."""
    return parse_json(read_utf8(path, what), str(path), expect=expect)


def size_hint(size: int) -> str:
    """What a file of ``size`` bytes that does not parse may be: empty, or cut short."""
    if size == 0:
        return "it is empty"
    return f"{size} bytes; it may be truncated (cut short) or corrupt"


def load_safetensors(path: str | os.PathLike, what: str = "safetensors file"
                     ) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a ``.safetensors`` file, read completely; an unreadable file
    (empty, cut short, a header that is not JSON, another kind of file) raises ``ValueError``
    naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_bytes(path, what)
    try:
        tensors = load(data)
        metadata = _safetensors_metadata(data)
    except (SafetensorError, ValueError, KeyError, TypeError, OSError, RuntimeError) as error:
        raise ValueError(f"{path} is not a readable {what} ({size_hint(len(data))}): "
                         f"{type(error).__name__}: {str(error)[:200]}") from None
    return tensors, metadata


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (already validated by ``load``)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size].decode("utf-8"))
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("__metadata__ is not an object")
    return {str(k): str(v) for k, v in metadata.items()}


def load_npz(path: str | os.PathLike, what: str = ".npz file") -> dict[str, Any]:
    """Every array of a NumPy ``.npz`` (or a bare ``.npy``) file, decompressed and checked
    against its CRC; a damaged file raises ``ValueError`` naming it. Pickled objects are
    refused (``allow_pickle=False``)."""
    import zipfile
    import zlib

    import numpy as np

    data = read_bytes(path, what)
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"arr_0": loaded}
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, KeyError,
            TypeError, NotImplementedError) as error:
        raise ValueError(f"{path} is not a readable {what} ({size_hint(len(data))}): "
                         f"{type(error).__name__}: {str(error)[:200]}") from None


def torch_load(data: bytes, where: str, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of ``data`` (a file's bytes); an unreadable pickle or
    zip archive raises ``ValueError`` saying ``where``."""
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError,
            AttributeError, IndexError, OSError) as error:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
        if "Weights only load failed" in text:
            hint = ("it holds objects other than tensors and plain values (pickled code or "
                    "classes), which are refused")
        else:
            hint = size_hint(len(data))
        first = text.splitlines()[0][:200] if text else ""
        raise ValueError(f"{where} cannot be decoded by torch.load(weights_only=True) ({hint}):"
                         f" {type(error).__name__}: {first}") from None


def content_digest(arrays: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str:
    """SHA-256 (hex) of named arrays (torch tensors or NumPy arrays: name, dtype, shape and raw
    bytes, in name order) and of ``metadata`` (its JSON with sorted keys)."""
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = arrays[name]
        if hasattr(value, "detach"):  # a torch tensor (any dtype: viewed as bytes)
            flat = value.detach().cpu().contiguous().reshape(-1)
            import torch

            raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
            kind = str(value.dtype).removeprefix("torch.")
        else:
            array = np.ascontiguousarray(value)
            raw, kind = array.tobytes(), str(array.dtype)
        digest.update(f"{name}|{kind}|{tuple(value.shape)}|{len(raw)}|".encode())
        digest.update(raw)
    digest.update(json.dumps(dict(metadata or {}), sort_keys=True, default=str).encode())
    return digest.hexdigest()
