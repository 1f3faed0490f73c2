"""Checkpoints that lose nothing and survive a crash at any instant.

A checkpoint is a folder ``<dir>/step_<step:09d>/`` holding

- ``model.safetensors``, ``ema.safetensors``: weights (any ``{name: state dict}`` of tensors),
- ``training_state.pt``: everything else (optimizer, grad scaler, step, RNG states, data
  order...), written with ``torch.save`` from tensors and plain Python values only, so it loads
  with ``torch.load(weights_only=True)``: loading never executes pickled code,
- ``meta.json``: a human-readable description (model class and config, hyper-parameters),
- ``manifest.json``: the size and SHA-256 of every other file, written last.

Writing is atomic. Every file goes into a temporary sibling folder and is ``fsync``-ed; the
folder is ``fsync``-ed and renamed to its final name with ``os.replace`` (atomic on POSIX);
the parent folder is ``fsync``-ed so the rename itself is durable. A process killed at any
moment therefore leaves either no new checkpoint (only a temporary folder, cleaned up later)
or a complete one. Reading verifies the manifest; :func:`load_latest_checkpoint` reports a
truncated or corrupted newest checkpoint with a warning and falls back to the previous good
one. The newest ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "load_latest_checkpoint",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "TrainedModel",
    "load_trained_model",
]

_NAME = re.compile(r"^step_(\d{9,})$")
_TMP_PREFIX = ".tmp-"
STATE_FILE = "training_state.pt"
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

# Test hook: when this variable holds a step number, the save of that step sleeps this long
# (seconds, from DDPM_LIB_SLOW_SAVE_SECONDS, default 60) after writing its first file, so a
# test can kill the process in the middle of a save. Never set it outside tests.
_SLOW_SAVE_ENV = "DDPM_LIB_SLOW_SAVE_STEP"
_SLOW_SAVE_SECONDS_ENV = "DDPM_LIB_SLOW_SAVE_SECONDS"


class CheckpointError(RuntimeError):
    """A checkpoint folder that is incomplete, corrupted or of an unknown format."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``weights[name]`` state dicts, the ``state`` dict, ``meta`` dict."""

    path: Path
    step: int
    weights: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]
    meta: dict[str, Any]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open folders (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path``, flush it to disk, return its manifest entry."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _maybe_sleep_mid_save(step: int) -> None:
    target = os.environ.get(_SLOW_SAVE_ENV)
    if target is not None and target.strip() == str(step):
        time.sleep(float(os.environ.get(_SLOW_SAVE_SECONDS_ENV, "60")))


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
    from safetensors.torch import save as safetensors_bytes

    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int; got {step!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / checkpoint_name(step)
    tmp = directory / f"{_TMP_PREFIX}{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files: dict[str, Any] = {}
    for index, (name, state_dict) in enumerate(weights.items()):
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise ValueError(f"weights keys must be simple names; got {name!r}")
        tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
        files[f"{name}.safetensors"] = _write_bytes(
            tmp / f"{name}.safetensors", safetensors_bytes(tensors)
        )
        if index == 0:
            _maybe_sleep_mid_save(step)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    files[STATE_FILE] = _write_bytes(tmp / STATE_FILE, buffer.getvalue())
    meta_dict = {"step": step, "format": FORMAT_VERSION, **dict(meta or {})}
    files[META_FILE] = _write_bytes(
        tmp / META_FILE, json.dumps(meta_dict, indent=2, sort_keys=True, default=str).encode()
    )
    manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
    _write_bytes(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    _fsync_dir(tmp)
    if final.exists():  # replacing a checkpoint of the same step: move the old one aside first
        old = directory / f"{_TMP_PREFIX}old-{checkpoint_name(step)}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(directory)
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
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: unreadable {MANIFEST_FILE}: {error}") from error
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
    try:
        weights = {
            name[: -len(".safetensors")]: safetensors_load(data)
            for name, data in contents.items()
            if name.endswith(".safetensors")
        }
        state = torch.load(io.BytesIO(contents[STATE_FILE]), map_location=map_location, weights_only=True)
        meta = json.loads(contents[META_FILE])
    except Exception as error:  # noqa: BLE001 - any decoding failure is a damaged checkpoint
        raise CheckpointError(f"{path}: cannot be decoded: {type(error).__name__}: {error}") from error
    if map_location != "cpu":
        weights = {
            name: {k: v.to(map_location) for k, v in sd.items()} for name, sd in weights.items()
        }
    return Checkpoint(path, int(verified["manifest"]["step"]), weights, state, meta)


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
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be a positive int; got {keep_last!r}")
    paths = list_checkpoints(directory)
    doomed = paths[:-keep_last]
    for path in doomed:
        # rename first so a crash mid-delete never leaves a half-deleted "step_*" folder
        trash = path.with_name(f"{_TMP_PREFIX}deleting-{path.name}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary folders left behind by saves that were killed; returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(_TMP_PREFIX)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


# ----------------------------------------------------------------------------- inference


@dataclass
class TrainedModel:
    """A model ready to sample from, with what the samplers need to know about it.

    ``model`` (eval mode), ``schedule`` (a :class:`ddpm_lib.NoiseSchedule`), ``prediction``
    (``"eps"``, ``"x0"`` or ``"v"``), ``learn_sigma`` (the model also outputs the variance),
    ``variance`` (the reverse variance type for :class:`ddpm_lib.DDPMSampler`), ``num_classes``
    and ``source`` (the folder read).
    """

    model: torch.nn.Module
    schedule: Any
    prediction: str
    learn_sigma: bool
    variance: str
    num_classes: int | None
    source: Path


#: the networks a checkpoint can be rebuilt from by their saved class name
_NETWORKS = ("UNet", "DiT")


def _model_from_config(model_class: str | None, config: Any, where: Path) -> torch.nn.Module:
    from ddpm_lib.models.pretrained import resolve_model_class

    if not isinstance(config, dict):
        raise CheckpointError(
            f"{where} holds no model configuration (a model of class {model_class}); "
            "only ddpm_lib UNet / DiT checkpoints can be loaded by name, load others in Python"
        )
    if model_class is not None and model_class.endswith(".TextConditionedUNet"):
        return _text_model_from_config(config, where)
    name = "UNet" if model_class is None else model_class.rsplit(".", 1)[-1]
    if name not in _NETWORKS:
        raise CheckpointError(
            f"{where} holds a {model_class}; only ddpm_lib UNet / DiT checkpoints can be loaded "
            "by name, load others in Python"
        )
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        return resolve_model_class(name)(**config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: the saved model configuration is not valid: {error}") from None


def _text_model_from_config(config: dict[str, Any], where: Path) -> torch.nn.Module:
    """A :class:`ddpm_lib.TextConditionedUNet` from its ``{"unet": ..., "text_encoder": ...}``."""
    from ddpm_lib.models.pretrained import resolve_model_class
    from ddpm_lib.models.text import TextConditionedUNet, TextEncoder

    parts = [config.get("unet"), config.get("text_encoder")]
    if not all(isinstance(part, dict) for part in parts):
        raise CheckpointError(f"{where}: a text model's configuration needs 'unet' and 'text_encoder'")
    network = str(parts[0].get("_class_name", "UNet"))  # type: ignore[union-attr]
    if network not in _NETWORKS:
        raise CheckpointError(f"{where}: a text model's network {network!r} is not one of {_NETWORKS}")
    unet_config, encoder_config = (
        {k: v for k, v in part.items() if not k.startswith("_")} for part in parts  # type: ignore[union-attr]
    )
    try:
        encoder_config = TextEncoder.upgrade_config(encoder_config)
        unet = resolve_model_class(network)(**unet_config)
        return TextConditionedUNet(unet, TextEncoder(**encoder_config))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: the saved text model configuration is not valid: {error}") from None


def _pretrained_class_name(source: Path) -> str | None:
    try:
        config = json.loads((source / "config.json").read_text())
    except ValueError:
        return None
    return config.get("_class_name") if isinstance(config, dict) else None


def load_trained_model(
    source: str | os.PathLike,
    *,
    use_ema: bool = True,
    device: str | torch.device | None = None,
    default_schedule: Any = None,
) -> TrainedModel:
    """Load a model to sample from out of a training run, a checkpoint, or a pretrained folder.

    ``source`` is one of:

    - a Trainer ``out_dir`` (it has ``checkpoints/``): its newest good checkpoint,
    - one checkpoint folder (``step_*`` with ``manifest.json``),
    - a pretrained folder (``config.json`` + ``model.safetensors`` from ``save_pretrained``,
      or the ``unet/`` and ``text_encoder/`` of a :class:`ddpm_lib.TextConditionedUNet`),
      with ``diffusion.json`` / ``schedule.json`` beside it when the Trainer exported it;
      otherwise ``default_schedule`` (or the DDPM linear schedule, T = 1000) and eps-prediction.

    ``use_ema`` picks the averaged weights of a checkpoint (what DDPM samples from). Raises
    ``FileNotFoundError`` for a missing path and :class:`CheckpointError` for anything that
    cannot be loaded, each with a one-line message.
    """
    from ddpm_lib.schedule import NoiseSchedule

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{str(source)!r} does not exist")
    diffusion: dict[str, Any] = {}
    if (source / "checkpoints").is_dir() or _NAME.match(source.name) or (source / MANIFEST_FILE).is_file():
        if (source / "checkpoints").is_dir():
            checkpoint = load_latest_checkpoint(source / "checkpoints")
            if checkpoint is None:
                raise CheckpointError(f"{source} holds no usable checkpoint")
        else:
            checkpoint = load_checkpoint(source)
        meta = checkpoint.meta
        model = _model_from_config(meta.get("model_class"), meta.get("model_config"), checkpoint.path)
        name = "ema" if use_ema else "model"
        try:
            model.load_state_dict(checkpoint.weights[name])
        except (RuntimeError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{checkpoint.path}: the {name} weights do not fit: {first}") from None
        diffusion = dict(meta.get("diffusion") or {})
        where = checkpoint.path
    elif (source / "config.json").is_file():
        from ddpm_lib.models.pretrained import resolve_model_class

        try:
            name = _pretrained_class_name(source) or "UNet"
            if name not in (*_NETWORKS, "TextConditionedUNet"):
                name = "UNet"  # UNet.from_pretrained names the class the folder holds
            model = resolve_model_class(name).from_pretrained(source)  # type: ignore[attr-defined]
        except (ValueError, TypeError, OSError) as error:
            raise CheckpointError(f"{source}: cannot load the pretrained model: {error}") from None
        for name in ("diffusion.json", "schedule.json"):
            if (source / name).is_file():
                try:
                    data = json.loads((source / name).read_text())
                except ValueError as error:
                    raise CheckpointError(f"{source / name} is not valid JSON: {error}") from None
                diffusion = data if name == "diffusion.json" else {"schedule": data}
                break
        where = source
    else:
        raise CheckpointError(
            f"{str(source)!r} is neither a training folder (with checkpoints/), a checkpoint "
            "folder (with manifest.json) nor a pretrained model folder (with config.json)"
        )
    if "schedule" in diffusion:
        try:
            schedule = NoiseSchedule.from_dict(diffusion["schedule"])
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{where}: the saved noise schedule is not valid: {error}") from None
    else:
        schedule = default_schedule if default_schedule is not None else NoiseSchedule.linear(1000)
    config = getattr(model, "config", {}) or {}
    config = config.get("unet", config)  # a text model: the UNet's part
    learn_sigma = bool(config.get("learn_sigma", False))
    variance = diffusion.get("variance") or ("learned_range" if learn_sigma else "fixed_small")
    if device is not None:
        model.to(device)
    return TrainedModel(
        model=model.eval(),
        schedule=schedule,
        prediction=diffusion.get("prediction", "eps"),
        learn_sigma=learn_sigma,
        variance=variance,
        num_classes=getattr(model, "num_classes", None),
        source=Path(where),
    )
