"""Checkpoints that lose nothing and survive a crash at any instant.

A checkpoint is a folder ``<dir>/step_<step:09d>/`` holding

- ``model.safetensors``, ``ema.safetensors``: weights (any ``{name: state dict}`` of tensors),
- ``training_state.pt``: everything else (optimizer, grad scaler, step, RNG states, data
  order...), written with ``torch.save`` from tensors and plain Python values only, so it loads
  with ``torch.load(weights_only=True)``: loading never executes pickled code,
- ``meta.json``: a human-readable description (model class and config, hyper-parameters),
- ``manifest.json``: the size and SHA-256 of every other file, written last.

Writing is atomic (``ddpm_lib/_io.py``). Every file goes into a temporary
sibling folder and is ``fsync``-ed; the folder is ``fsync``-ed and swapped in under its final
name as a whole; the parent folder is ``fsync``-ed so the rename itself is durable. A process
killed at any
moment therefore leaves either no new checkpoint (only a temporary folder, cleaned up later)
or a complete one. Reading verifies the manifest; :func:`load_latest_checkpoint` reports a
truncated or corrupted newest checkpoint with a warning and falls back to the previous good
one. The newest ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_lib import _io
from ddpm_lib._checks import check_int, is_int
from ddpm_lib._readers import decode_utf8, parse_json, size_hint, torch_load

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "load_latest_checkpoint",
    "prune_checkpoints",
    "remove_stale_temporaries",
]

_NAME = re.compile(r"^step_(\d{9,})$")
_DELETING_PREFIX = ".tmp-deleting-"
STATE_FILE = "training_state.pt"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

# Test hook: when this variable holds a step number, the save of that step sleeps this long
# (seconds, from DDPM_LIB_SLOW_SAVE_SECONDS, default 60) after writing its first file, so a
# test can kill the process in the middle of a save. Never set it outside tests.
_SLOW_SAVE_ENV = "DDPM_LIB_SLOW_SAVE_STEP"
_SLOW_SAVE_SECONDS_ENV = "DDPM_LIB_SLOW_SAVE_SECONDS"


class CheckpointError(RuntimeError, ValueError):
    """A checkpoint folder that is incomplete, corrupted or of an unknown format (a
    ``ValueError``, as every error about a bad file; a ``RuntimeError`` as before)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``weights[name]`` state dicts, the ``state`` dict, ``meta`` dict."""

    path: Path
    step: int
    weights: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]
    meta: dict[str, Any]


def _maybe_sleep_mid_save(step: int) -> None:
    target = os.environ.get(_SLOW_SAVE_ENV)
    if target is not None and target.strip() == str(step):
        time.sleep(float(os.environ.get(_SLOW_SAVE_SECONDS_ENV, "60")))


def is_checkpoint_name(name: str) -> bool:
    """Whether ``name`` is a checkpoint folder's name (``step_000001000``)."""
    return _NAME.match(name) is not None


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint at ``step``: ``step_000001000``."""
    return f"step_{step:09d}"


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    state: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically into ``directory`` and return its folder.

    Args:
        directory: the folder holding all checkpoints of a run (created if missing).
        step: the global step; names the folder. An existing checkpoint of that step is replaced.
        weights: ``{"model": state_dict, "ema": state_dict, ...}``; each becomes
            ``<name>.safetensors``.
        state: anything ``torch.load(weights_only=True)`` accepts (tensors, numbers, strings,
            lists, tuples, dicts).
        meta: JSON-serialisable description, stored as ``meta.json``.
    """
    check_int("step", step, 0)
    for name in weights:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"weights keys must be simple names; got {name!r}")
    directory = Path(directory)
    final = directory / checkpoint_name(step)
    # written into a temporary sibling folder, manifest last, swapped in whole (_io)
    with _io.atomic_folder(final, step=step) as tmp:
        for index, (name, state_dict) in enumerate(weights.items()):
            tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
            _io.save_safetensors(tmp / f"{name}.safetensors", tensors)
            if index == 0:
                _maybe_sleep_mid_save(step)
        _io.torch_save(dict(state), tmp / STATE_FILE)
        meta_dict = {"step": step, "format": FORMAT_VERSION, **dict(meta or {})}
        _io.write_json(tmp / META_FILE, meta_dict, sort_keys=True, default=str)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete-looking checkpoint folders in ``directory``, oldest first (by step)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _verify(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST_FILE} (an incomplete save?)")
    try:
        manifest = parse_json(decode_utf8(manifest_path.read_bytes(), str(manifest_path)),
                              str(manifest_path))
        files = manifest["files"]
        if not isinstance(files, dict) or not all(
                isinstance(entry, dict) and {"bytes", "sha256"} <= set(entry)
                for entry in files.values()):
            raise ValueError(f"{manifest_path}: 'files' must map names to {{bytes, sha256}}")
    except KeyError as error:
        raise CheckpointError(f"{path}: unreadable {MANIFEST_FILE}: missing key "
                              f"{error.args[0]!r}") from None
    except ValueError as error:
        raise CheckpointError(f"{path}: unreadable {MANIFEST_FILE}: {error}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {manifest.get('format')!r}; this version reads {FORMAT_VERSION}"
        )
    contents = {}
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        data = file.read_bytes()
        if len(data) != entry["bytes"]:
            raise CheckpointError(
                f"{path}: {name} has {len(data)} bytes, the manifest says {entry['bytes']} (truncated?)"
            )
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its SHA-256 (corrupted)")
        contents[name] = data
    return {"manifest": manifest, "contents": contents}


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Verify and load one checkpoint folder; raises :class:`CheckpointError` if it is damaged.

    The training state is read with ``torch.load(weights_only=True)`` and the weights with
    safetensors: nothing in a checkpoint can execute code.
    """
    from safetensors.torch import load as safetensors_load

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} is not a folder")
    verified = _verify(path)
    contents = verified["contents"]
    weights = {}
    for name, data in contents.items():
        if name.endswith(".safetensors"):
            try:
                weights[name[: -len(".safetensors")]] = safetensors_load(data)
            except Exception as error:  # noqa: BLE001 - any decoding failure: a damaged file
                raise CheckpointError(f"{path}: {name} cannot be decoded ({size_hint(len(data))}):"
                                      f" {type(error).__name__}: {str(error)[:200]}") from None
    for required in (STATE_FILE, META_FILE):
        if required not in contents:
            raise CheckpointError(f"{path}: {MANIFEST_FILE} does not list {required} (missing "
                                  f"key {required!r}): not a checkpoint this library wrote")
    try:
        state = torch_load(contents[STATE_FILE], f"{path}: {STATE_FILE}", map_location)
        meta = parse_json(decode_utf8(contents[META_FILE], f"{path}: {META_FILE}"),
                          f"{path}: {META_FILE}")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if map_location != "cpu":
        weights = {
            name: {k: v.to(map_location) for k, v in sd.items()} for name, sd in weights.items()
        }
    step = verified["manifest"].get("step")
    if not is_int(step):
        raise CheckpointError(f"{path}: {MANIFEST_FILE} has no integer 'step' (missing key "
                              f"'step' or a {type(step).__name__})")
    return Checkpoint(path, step, weights, state, meta)


def load_latest_checkpoint(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that verifies, or ``None`` when there is none.

    Each damaged checkpoint met on the way (truncated, corrupted, incomplete) is reported with
    a ``UserWarning`` that names it and says which one is used instead.
    """
    candidates = list_checkpoints(directory)
    problems: list[str] = []
    for path in reversed(candidates):
        try:
            checkpoint = load_checkpoint(path, map_location)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        for problem in problems:
            warnings.warn(
                f"skipping damaged checkpoint: {problem}; resuming from {path} instead",
                stacklevel=2,
            )
        return checkpoint
    if problems:
        warnings.warn(
            "no usable checkpoint in "
            f"{str(directory)!r}, starting from scratch; damaged: {'; '.join(problems)}",
            stacklevel=2,
        )
    return None


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns the deleted folders."""
    check_int("keep_last", keep_last, 1)
    paths = list_checkpoints(directory)
    doomed = paths[:-keep_last]
    for path in doomed:
        # rename first so a crash mid-delete never leaves a half-deleted "step_*" folder
        trash = path.with_name(f"{_DELETING_PREFIX}{path.name}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary folders left behind by saves that were killed; returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = _io.clean_leftovers(directory)  # interrupted saves: finished or undone
    for path in directory.iterdir():
        if path.name.startswith(_DELETING_PREFIX):  # an interrupted prune
            shutil.rmtree(path, ignore_errors=True)
            stale.append(path)
    return stale


# ----------------------------------------------------------------------------- RNG states


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # ("MT19937", keys, pos, has_gauss, cached_gaussian)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_version, list(py_internal), py_gauss],
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- moved names


def __getattr__(name: str) -> Any:
    """``TrainedModel`` and ``load_trained_model`` moved to :mod:`ddpm_lib.pipeline` (the one
    loader of trained models is :meth:`ddpm_lib.DiffusionPipeline.from_pretrained`)."""
    if name in ("TrainedModel", "load_trained_model"):
        warnings.warn(
            f"ddpm_lib.training.checkpoint.{name} is deprecated: use "
            "ddpm_lib.DiffusionPipeline.from_pretrained (the one loader of trained models)",
            DeprecationWarning, stacklevel=2,
        )
        from ddpm_lib import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
