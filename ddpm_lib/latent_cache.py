"""The latent cache of :meth:`ddpm_lib.LatentDiffusion.encode_dataset`: a dataset's latents
computed once and stored with its labels and captions, and the fingerprints that say when a
cache is still valid.

The cache is one safetensors file (``latents.safetensors``): the latents, each numeric field
(labels) as a tensor, the captions and field kinds in its metadata, and one SHA-256 over all of
it, so that a bit flipped anywhere is detected and the latents are encoded again (with a
warning that says why). Its ``key`` is the hash of what the latents depend on
(:meth:`ddpm_lib.LatentDiffusion.cache_key`: the autoencoder's weights, the normalisation, the
dataset, the encoding options).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ddpm_lib import _io
from ddpm_lib._readers import content_digest, load_safetensors
from ddpm_lib.models.registry import class_path

# CACHE_FILE and LatentDataset are documented (and imported) from ddpm_lib.latent
__all__ = ["autoencoder_fingerprint", "dataset_fingerprint"]

CACHE_FILE = "latents.safetensors"
_CACHE_FORMAT = "ddpm_lib.latents/2"


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype, bfloat16 included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def autoencoder_fingerprint(autoencoder: nn.Module) -> str:
    """SHA-256 (hex) of an autoencoder's class, configuration and every weight and buffer.

    Two autoencoders with the same fingerprint encode every image identically; any change of
    a weight, a configuration value or the class changes it.
    """
    digest = hashlib.sha256()
    digest.update(class_path(autoencoder).encode())
    config = getattr(autoencoder, "config", None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(autoencoder.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _hash_value(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(_tensor_bytes(value))
    elif isinstance(value, (tuple, list)):
        digest.update(f"L{len(value)}".encode())
        for part in value:
            _hash_value(digest, part)
    else:
        digest.update(f"{type(value).__name__}:{value!r}".encode())


def dataset_fingerprint(dataset: Any) -> str:
    """SHA-256 (hex) identifying a dataset: its class, length, ``repr`` (memory addresses
    removed) and the contents of its first, middle and last items."""
    digest = hashlib.sha256()
    size = len(dataset)
    digest.update(f"{class_path(dataset)}|{size}|".encode())
    digest.update(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(dataset)).encode())
    for index in sorted({0, size // 2, size - 1}):
        _hash_value(digest, dataset[index])
    return digest.hexdigest()


def _item_image(item: Any) -> tuple[torch.Tensor, list[Any]]:
    """``(image, extra fields)`` of a dataset item: ``image``, ``(image,)``, ``(image, ...)``."""
    if isinstance(item, torch.Tensor):
        return item, []
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0], list(item[1:])
    raise TypeError(
        "dataset items must be an image tensor (C, H, W), (image,), (image, label) or "
        f"(image, caption: str); got {type(item).__name__}"
    )


def _field_kind(value: Any, position: int) -> str:
    if isinstance(value, str):
        return "str"
    if isinstance(value, bool):
        return "int"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return "float" if value.is_floating_point() else "int"
    try:
        import numpy as np

        if isinstance(value, np.integer):
            return "int"
        if isinstance(value, np.floating):
            return "float"
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(
        f"field {position} of the dataset items must be a label (int), a number or a caption "
        f"(str) to be kept with the latents; got {type(value).__name__}"
    )


# ----------------------------------------------------------------------------- datasets


class LatentDataset(Dataset):
    """The latents of an image dataset: items shaped like the source's, image replaced.

    Item ``i`` is ``latent`` when the source's items were bare images, otherwise a tuple
    ``(latent, *fields)`` with the source's other fields (class labels as ``int``, captions as
    ``str``, numbers as ``float``). ``latent`` is a float32 tensor
    ``(latent_channels, H / f, W / f)`` already multiplied by the scale factor. Built by
    :meth:`LatentDiffusion.encode_dataset`; the :class:`ddpm_lib.Trainer` accepts it (latents
    are not bounded to ``[-1, 1]``; train with ``random_flip=False``: a mirrored latent is not
    the latent of the mirrored image).

    Attributes:
        latents: all latents, ``(N, latent_channels, h, w)`` float32.
        fields: the other fields, one list of ``N`` values per field.
        classes: the source dataset's ``classes`` (class names), if it had them.
        scale_factor: the factor the latents were multiplied by.
        cache_path: the cache file these latents were read from or written to.
        from_cache: ``True`` when they were read from an existing cache (no encoder call).
    """

    #: Tells the :class:`ddpm_lib.Trainer` that items are latents, not images in ``[-1, 1]``.
    unbounded_values = True

    def __init__(
        self,
        latents: torch.Tensor,
        fields: Sequence[Sequence[Any]] = (),
        *,
        wrapped: bool = True,
        classes: Sequence[str] | None = None,
        scale_factor: float | None = None,
        cache_path: Path | None = None,
        from_cache: bool = False,
    ) -> None:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            raise ValueError("latents must be a tensor (N, C, h, w); got "
                             f"{getattr(latents, 'shape', type(latents).__name__)}")
        for position, field in enumerate(fields, start=1):
            if len(field) != len(latents):
                raise ValueError(f"field {position} has {len(field)} values for "
                                 f"{len(latents)} latents")
        if not wrapped and fields:
            raise ValueError("bare latents (wrapped=False) cannot carry other fields")
        self.latents = latents
        self.fields = [list(field) for field in fields]
        self.wrapped = bool(wrapped)
        self.classes = list(classes) if classes is not None else None
        self.scale_factor = scale_factor
        self.cache_path = cache_path
        self.from_cache = from_cache

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int) -> Any:
        latent = self.latents[index]
        if not self.wrapped:
            return latent
        return (latent, *(field[index] for field in self.fields))

    def __repr__(self) -> str:
        return (f"LatentDataset(size={len(self)}, latent_shape={tuple(self.latents.shape[1:])}, "
                f"fields={len(self.fields)}, scale_factor={self.scale_factor})")


def _convert_field(kind: str, value: Any, position: int) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError(f"field {position} is a caption (str) at item 0 but a "
                            f"{type(value).__name__} later on")
        return value
    if isinstance(value, str):
        raise TypeError(f"field {position} is a number at item 0 but a str later on")
    return int(value) if kind == "int" else float(value)


def _write_cache(
    path: Path, key: str, latents: torch.Tensor, fields: list[list[Any]], wrapped: bool
) -> None:
    latents = latents.float().contiguous()
    tensors = {"latents": latents}
    kinds = []
    captions: dict[str, list[str]] = {}
    for position, field in enumerate(fields):
        if field and isinstance(field[0], str):
            kinds.append("str")
            captions[str(position)] = field
        elif field and isinstance(field[0], float):
            kinds.append("float")
            tensors[f"field_{position}"] = torch.tensor(field, dtype=torch.float64)
        else:
            kinds.append("int")
            tensors[f"field_{position}"] = torch.tensor(field, dtype=torch.int64)
    metadata = {
        "format": _CACHE_FORMAT,
        "key": key,
        "wrapped": json.dumps(wrapped),
        "kinds": json.dumps(kinds),
        "captions": json.dumps(captions, ensure_ascii=False),
    }
    # one checksum over every tensor (latents, labels, numbers) and every metadata entry
    # (captions, field kinds, key): a bit flipped anywhere in the file is detected
    metadata["sha256"] = content_digest(tensors, metadata)
    _io.save_safetensors(path, tensors, metadata=metadata)


def _read_cache(path: Path, key: str
                ) -> tuple[tuple[torch.Tensor, list[list[Any]], bool] | None, str | None]:
    """``(cache, None)`` when the cache at ``path`` is complete, intact and written for
    ``key``; otherwise ``(None, why it is not used)`` (``why`` is ``None`` when there is no
    file)."""
    if not path.is_file():
        return None, None
    try:
        tensors, metadata = load_safetensors(path, "latent cache")
    except (ValueError, FileNotFoundError) as error:
        return None, str(error).replace(f"{path} is", "it is", 1)
    if metadata.get("format") != _CACHE_FORMAT:
        return None, (f"it was written in format {metadata.get('format')!r} (another version "
                      f"of ddpm_lib); this version writes {_CACHE_FORMAT!r}")
    stored = metadata.pop("sha256", None)
    if content_digest(tensors, metadata) != stored:
        return None, ("its contents do not match its SHA-256 (a latent, label, caption or "
                      "metadata entry is corrupted)")
    if metadata.get("key") != key:
        return None, ("it was written for another autoencoder, scale factor, dataset or "
                      "encoding option")
    try:
        latents = tensors["latents"]
        wrapped = bool(json.loads(metadata["wrapped"]))
        kinds = json.loads(metadata["kinds"])
        captions = json.loads(metadata["captions"])
        fields: list[list[Any]] = []
        for position, kind in enumerate(kinds):
            if kind == "str":
                fields.append(list(captions[str(position)]))
            elif kind == "float":
                fields.append([float(v) for v in tensors[f"field_{position}"].tolist()])
            else:
                fields.append([int(v) for v in tensors[f"field_{position}"].tolist()])
            if len(fields[-1]) != len(latents):
                return None, (f"field {position + 1} has {len(fields[-1])} entries for "
                              f"{len(latents)} latents")
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        return None, f"its metadata is not valid ({type(error).__name__}: {error})"
    return (latents, fields, wrapped), None


@torch.no_grad()
def encode_items(
    latent: Any, dataset: Any, batch_size: int, progress: bool, sample: bool, seed: int,
    num_workers: int,
) -> tuple[torch.Tensor, list[list[Any]], bool]:
    """``(latents, fields, wrapped)`` of every item of ``dataset``, encoded by ``latent`` (a
    :class:`ddpm_lib.LatentDiffusion`) in order: the scaled latents (float32, on the CPU),
    one list per extra field of the items (labels, captions), and whether items are tuples."""
    from torch.utils.data import DataLoader

    first = dataset[0]
    _, first_fields = _item_image(first)
    wrapped = not isinstance(first, torch.Tensor)
    kinds = [_field_kind(value, position)
             for position, value in enumerate(first_fields, start=1)]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=list)
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="encoding latents", unit="batch")
    generator = torch.Generator(latent.device).manual_seed(seed) if sample else None
    chunks: list[torch.Tensor] = []
    fields: list[list[Any]] = [[] for _ in kinds]
    was_training = latent.autoencoder.training
    latent.autoencoder.eval()
    try:
        for items in loader:
            images = []
            for item in items:
                image, extra = _item_image(item)
                if len(extra) != len(kinds):
                    raise ValueError(f"dataset items have {len(kinds) + 1} fields at item 0 "
                                     f"but {len(extra) + 1} later on")
                images.append(image)
                for position, (kind, value) in enumerate(zip(kinds, extra)):
                    fields[position].append(_convert_field(kind, value, position + 1))
            batch = latent.encode(torch.stack(images), generator=generator, sample=sample)
            chunks.append(batch.float().cpu())
    finally:
        latent.autoencoder.train(was_training)
    return torch.cat(chunks), fields, wrapped


def cache_key(autoencoder: nn.Module, scale_factor: float,
              channel_stats: tuple[list[float], list[float]] | None, dataset: Any, *,
              sample: bool = False, seed: int | None = None) -> str:
    """The hash a cache of ``dataset``'s latents is valid for (see
    :meth:`ddpm_lib.LatentDiffusion.cache_key`)."""
    digest = hashlib.sha256()
    digest.update(autoencoder_fingerprint(autoencoder).encode())
    digest.update(repr(scale_factor).encode())
    if channel_stats is not None:
        shift, scale = (torch.tensor(values, dtype=torch.float64) for values in channel_stats)
        digest.update(b"channel|" + _tensor_bytes(shift) + _tensor_bytes(scale))
    digest.update(dataset_fingerprint(dataset).encode())
    digest.update(f"sample={bool(sample)}|seed={seed}".encode())
    return digest.hexdigest()


def cached_latents(latent: Any, dataset: Any, cache_dir: Path, batch_size: int, progress: bool,
                   *, sample: bool, seed: int, num_workers: int) -> LatentDataset:
    """:meth:`ddpm_lib.LatentDiffusion.encode_dataset`: the cache in ``cache_dir`` when it is
    valid for ``latent`` and ``dataset``, else the dataset encoded again and cached."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(f"dataset must be a map-style Dataset; got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    path = cache_dir / CACHE_FILE
    key = latent.cache_key(dataset, sample=sample, seed=seed if sample else None)
    classes = getattr(dataset, "classes", None)
    cached, why = _read_cache(path, key)
    if why is not None:
        warnings.warn(f"latent cache {path} is not used, encoding the dataset again: {why}",
                      UserWarning, stacklevel=3)
    from_cache = cached is not None
    if cached is None:
        cached = encode_items(latent, dataset, batch_size, progress, sample, seed, num_workers)
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_cache(path, key, *cached)
    latents, fields, wrapped = cached
    return LatentDataset(latents, fields, wrapped=wrapped, classes=classes,
                         scale_factor=latent.scale_factor, cache_path=path,
                         from_cache=from_cache)
