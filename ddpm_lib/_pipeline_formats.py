"""The folders :meth:`ddpm_lib.DiffusionPipeline.from_pretrained` reads, this version's and the
earlier ones, each turned into the same bundle.

- a pipeline folder: ``pipeline.json`` (with its parts in sub-folders or beside it);
- a Trainer ``out_dir`` (``checkpoints/``) or one checkpoint folder (``step_*``): the network
  is rebuilt from the checkpoint's ``meta.json`` and its (EMA) weights;
- a pretrained model folder (``config.json``), with ``diffusion.json`` / ``schedule.json``
  beside it as the Trainer's export wrote them before the bundle existed, or inside a
  pipeline folder (then the pipeline's settings apply);
- a latent model folder (``latent_diffusion.json``: autoencoder, scale factor, ``unet/``) and a
  latent training run (``latent_diffusion.json`` beside ``checkpoints/``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

from ._checks import is_real
from .models.registry import build_model, resolve_model_class
from .schedule import NoiseSchedule

PIPELINE_FILE = "pipeline.json"
LEGACY_LATENT_FILE = "latent_diffusion.json"
_FORMAT = "ddpm_lib.pipeline"
_FORMAT_VERSION = 1


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``ValueError`` naming the file for anything else."""
    from ._readers import read_json as read

    return read(path)


def _field(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in record:
        raise ValueError(f"{where} is missing the key {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: {key!r} must be a {names}; got {type(value).__name__}")
    return value


def _schedule(diffusion: dict[str, Any], where: Path, default: NoiseSchedule | None) -> Any:
    if "schedule" not in diffusion:
        return default if default is not None else NoiseSchedule.linear(1000)
    try:
        return NoiseSchedule.from_dict(diffusion["schedule"])
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{where}: the saved noise schedule is not valid: {error}") from None


def _is_checkpoint(source: Path) -> bool:
    from .training.checkpoint import STATE_FILE

    return is_checkpoint_folder_name(source.name) or (source / STATE_FILE).is_file()


def _from_checkpoint(source: Path, use_ema: bool,
                     model_class: Any) -> tuple[Any, dict, Path]:
    """``(model, diffusion settings, checkpoint folder)`` from a run's newest good checkpoint
    or one checkpoint."""
    from .training.checkpoint import CheckpointError, load_checkpoint, load_latest_checkpoint

    if (source / "checkpoints").is_dir():
        checkpoint = load_latest_checkpoint(source / "checkpoints")
        if checkpoint is None:
            raise CheckpointError(f"{source} holds no usable checkpoint")
    else:
        checkpoint = load_checkpoint(source)
    meta, where = checkpoint.meta, checkpoint.path
    try:
        cls = model_class or resolve_model_class(meta.get("model_class"), where / "meta.json")
        model = build_model(cls, meta.get("model_config"), where / "meta.json")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    name = "ema" if use_ema else "model"
    try:
        model.load_state_dict(checkpoint.weights[name])
    except (RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{where}: the {name} weights do not fit: {first}") from None
    return model, dict(meta.get("diffusion") or {}), where


def _from_model_folder(source: Path, model_class: Any) -> tuple[Any, dict]:
    """``(model, diffusion settings)`` from a pretrained folder (``config.json``)."""
    config = read_json(source / "config.json")
    cls = model_class or resolve_model_class(config.get("_class_name", "UNet"),
                                             source / "config.json")
    model = cls.from_pretrained(source)
    diffusion: dict[str, Any] = {}
    parent = source.parent / PIPELINE_FILE
    if (source / "diffusion.json").is_file():
        diffusion = read_json(source / "diffusion.json")
    elif (source / "schedule.json").is_file():
        diffusion = {"schedule": read_json(source / "schedule.json")}
    elif parent.is_file():  # the model part of a pipeline folder: the pipeline's settings
        record = read_json(parent)
        part = (record.get("parts") or {}).get("model") or {}
        if part.get("folder") == source.name:
            diffusion = dict(record.get("diffusion") or {})
    return model, diffusion


def _legacy_latent(source: Path, autoencoder_class: Any) -> tuple[Any, Any, dict]:
    """``(autoencoder, scale factor, diffusion settings)`` of a ``latent_diffusion.json`` folder."""
    path = source / LEGACY_LATENT_FILE
    record = read_json(path)
    cls = autoencoder_class or resolve_model_class(
        _field(record, "autoencoder_class", str, path), path, "autoencoder")
    autoencoder = cls.from_pretrained(source / "autoencoder")
    return autoencoder, record.get("scale_factor"), dict(record.get("diffusion") or {})


def latent_channel_stats(latent: Any, where: Path) -> tuple[list[float], list[float]] | None:
    """``(shift, scale)`` of a ``"latent"`` record's per-channel normalisation, or ``None``
    for a scale-only record (every folder written before it existed)."""
    if not isinstance(latent, dict) or latent.get("shift") is None:
        return None
    stats: list[list[float]] = []
    for name in ("shift", "scale"):
        value = latent.get(name)
        if not isinstance(value, list) or not all(
                is_real(v) for v in value):
            raise ValueError(f"{where}: latent {name!r} must be a list of numbers (one per "
                             f"latent channel); got {value!r}")
        stats.append([float(v) for v in value])
    return stats[0], stats[1]


def _pipeline_parts(source: Path, record: dict[str, Any], model_class: Any,
                    autoencoder_class: Any) -> tuple[Any, Any, Any, dict]:
    """``(model or None, autoencoder or None, latent record, diffusion)`` of ``pipeline.json``."""
    path = source / PIPELINE_FILE
    if record.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a ddpm_lib pipeline file (format "
                         f"{record.get('format')!r}, expected {_FORMAT!r})")
    version = record.get("format_version")
    if not isinstance(version, int) or version > _FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version!r}; this ddpm_lib reads up to "
                         f"{_FORMAT_VERSION}: upgrade ddpm_lib")
    parts = _field(record, "parts", dict, path)
    diffusion = _field(record, "diffusion", dict, path)
    loaded: dict[str, Any] = {}
    for role, given in (("model", model_class), ("autoencoder", autoencoder_class)):
        part = parts.get(role)
        if part is None or given is False:  # absent, or not asked for
            continue
        if not isinstance(part, dict):
            raise ValueError(f"{path}: parts[{role!r}] must be an object; got {part!r}")
        folder = source / _field(part, "folder", str, path)
        cls = given or resolve_model_class(part.get("class"), path, role)
        loaded[role] = cls.from_pretrained(folder)
    latent = record.get("latent") or {}
    if not isinstance(latent, dict):
        raise ValueError(f"{path}: 'latent' must be an object; got {latent!r}")
    return loaded.get("model"), loaded.get("autoencoder"), latent, diffusion


def _enclosing_latent(source: Path, autoencoder_class: Any) -> tuple[Any, dict]:
    """``(autoencoder, latent record)`` of the latent training run that holds ``source`` (its
    ``ema_model/`` or ``unet/``, or ``checkpoints/step_*``), else ``(None, None)``."""
    inside = [source.parent] if source.name in ("ema_model", "unet") else []
    if is_checkpoint_folder_name(source.name) and source.parent.name == "checkpoints":
        inside.append(source.parent.parent)
    for run in inside:
        try:
            if (run / PIPELINE_FILE).is_file():
                record = read_json(run / PIPELINE_FILE)
                if (record.get("parts") or {}).get("autoencoder"):
                    _, autoencoder, latent, _ = _pipeline_parts(
                        run, record, False, autoencoder_class)
                    return autoencoder, latent
            elif (run / LEGACY_LATENT_FILE).is_file():
                autoencoder, scale_factor, _ = _legacy_latent(run, autoencoder_class)
                return autoencoder, {"scale_factor": scale_factor}
        except (ValueError, OSError) as error:
            warnings.warn(
                f"{source} is part of the latent model {run}, whose autoencoder cannot be "
                f"loaded ({error}); it is loaded alone, as a model of latents that are not "
                "decoded (pass autoencoder_class= to decode them)", stacklevel=3,
            )
    return None, {}


def is_latent_folder(source: Path) -> bool:
    """Whether ``source`` holds (or sits in a run that holds) a latent model's autoencoder,
    read from the small JSON files only."""
    candidates = [source]
    if source.name in ("ema_model", "unet"):
        candidates.append(source.parent)
    if is_checkpoint_folder_name(source.name) and source.parent.name == "checkpoints":
        candidates.append(source.parent.parent)
    for folder in candidates:
        if (folder / LEGACY_LATENT_FILE).is_file():
            return True
        if (folder / PIPELINE_FILE).is_file():
            try:
                record = read_json(folder / PIPELINE_FILE)
            except ValueError:
                return False  # the loader reports the bad file
            if (record.get("parts") or {}).get("autoencoder"):
                return True
    return False


def is_checkpoint_folder_name(name: str) -> bool:
    from .training.checkpoint import is_checkpoint_name

    return is_checkpoint_name(name)


class BundleParts(NamedTuple):
    """What a saved folder holds, whatever its format (``None`` where it has no such part)."""

    model: Any
    autoencoder: Any
    scale_factor: float | None
    diffusion: dict[str, Any]
    sampler: dict[str, Any] | None
    where: Path  # the folder read (the checkpoint folder of a training run)
    #: ``(shift, scale)`` per latent channel, or ``None`` (scale-only latents)
    channel_stats: tuple[list[float], list[float]] | None = None


def read_parts(source: Path, *, use_ema: bool = True, model_class: Any = None,
               autoencoder_class: Any = None, load_model: bool = True,
               prefer_checkpoint: bool = True) -> BundleParts:
    """The parts of any folder the library writes (see the module's docstring).

    A training run's folder (``checkpoints/``) gives the network of its newest good
    checkpoint (``use_ema``: the averaged weights) when ``prefer_checkpoint``, else the one
    its ``pipeline.json`` names, if any. ``load_model=False`` reads everything but the network.
    """
    run = (source / "checkpoints").is_dir()
    from ._io import recover_folder, verify_folder

    recover_folder(source)  # finishes or undoes a save that a crash interrupted
    if not source.exists():
        raise FileNotFoundError(f"{str(source)!r} does not exist")
    model = autoencoder = scale_factor = sampler = None
    latent: dict[str, Any] = {}
    diffusion: dict[str, Any] = {}
    if (source / PIPELINE_FILE).is_file():
        verify_folder(source)  # refuses a folder that mixes the parts of two saves
        record = read_json(source / PIPELINE_FILE)
        skip = not load_model or (run and prefer_checkpoint)
        model, autoencoder, latent, diffusion = _pipeline_parts(
            source, record, False if skip else model_class, autoencoder_class)
        sampler = record.get("sampler")
    elif (source / LEGACY_LATENT_FILE).is_file():
        autoencoder, scale_factor, diffusion = _legacy_latent(source, autoencoder_class)
        unet = source / "unet"
        if load_model and not (run and prefer_checkpoint) and unet.is_dir():
            model, _ = _from_model_folder(unet, model_class)
    latent_folder = autoencoder is not None  # a latent folder may hold no model
    if not latent_folder:  # a checkpoint or export inside a latent run: the run's latents
        autoencoder, latent = _enclosing_latent(source, autoencoder_class)
    if latent:
        scale_factor = latent.get("scale_factor")
    where = source
    wanted = load_model and model is None
    if wanted and (run or not latent_folder):
        if run or _is_checkpoint(source):
            model, saved, where = _from_checkpoint(source, use_ema, model_class)
        elif (source / "config.json").is_file():
            model, saved = _from_model_folder(source, model_class)
        else:
            raise ValueError(
                f"{str(source)!r} is neither a training folder (with checkpoints/), a "
                "checkpoint folder (step_*), a pipeline folder (pipeline.json), a pretrained "
                "model folder (with config.json) nor a latent model folder "
                "(latent_diffusion.json)"
            )
        diffusion = {**diffusion, **saved}
    stats = latent_channel_stats(latent, where / PIPELINE_FILE) if autoencoder is not None \
        else None
    return BundleParts(model, autoencoder, scale_factor, diffusion, sampler, where, stats)


def schedule_of(parts: BundleParts, default: NoiseSchedule | None) -> Any:
    """The saved schedule of ``parts``, else ``default`` (DDPM's linear, T = 1000, if None)."""
    return _schedule(parts.diffusion, parts.where, default)


def write_bundle(directory: Path, *, model: Any = None, model_folder: str = ".",
                 autoencoder: Any = None, scale_factor: float | None = None,
                 diffusion: dict[str, Any] | None = None,
                 sampler: dict[str, Any] | None = None,
                 channel_stats: tuple[Any, Any] | None = None) -> Path:
    """Write a pipeline folder atomically: each part by its own ``save_pretrained`` into its
    sub-folder, then ``pipeline.json``; a reader sees the old folder or the new one.
    ``channel_stats``: the latents' per-channel ``(shift, scale)``, recorded in ``"latent"``
    beside the scale factor."""
    from ._io import atomic_folder, write_json
    from .models.registry import class_path

    for role, part in (("model", model), ("autoencoder", autoencoder)):
        if part is not None and not callable(getattr(part, "save_pretrained", None)):
            raise TypeError(f"the {role} ({type(part).__name__}) has no save_pretrained()")
    parts: dict[str, Any] = {}
    with atomic_folder(directory) as staging:
        if model is not None:
            model.save_pretrained(staging / model_folder)
            parts["model"] = {"folder": model_folder, "class": class_path(model)}
        if autoencoder is not None:
            autoencoder.save_pretrained(staging / "autoencoder")
            parts["autoencoder"] = {"folder": "autoencoder", "class": class_path(autoencoder)}
        latent: dict[str, Any] | None = None
        if autoencoder is not None:
            latent = {"scale_factor": scale_factor}
            if channel_stats is not None:
                latent["shift"] = [float(v) for v in channel_stats[0]]
                latent["scale"] = [float(v) for v in channel_stats[1]]
        record = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "parts": parts,
            "diffusion": diffusion or {},
            "latent": latent,
            "sampler": sampler or None,
        }
        write_json(staging / PIPELINE_FILE, record)
    return directory


def read_latent(directory: Path, *, autoencoder_class: Any, unet_class: Any,
                load_unet: bool) -> dict[str, Any]:
    """The keyword arguments of :class:`ddpm_lib.LatentDiffusion` for a latent model folder
    (``pipeline.json`` or the earlier ``latent_diffusion.json``), see
    :meth:`ddpm_lib.LatentDiffusion.from_pretrained`."""
    from . import _io

    _io.recover_folder(directory)  # finishes or undoes a save a crash interrupted
    if directory.exists() and not any(
            (directory / name).is_file() for name in ("pipeline.json", LEGACY_LATENT_FILE)):
        raise FileNotFoundError(f"{directory} has neither pipeline.json nor "
                                f"{LEGACY_LATENT_FILE}: not a folder written by "
                                "LatentDiffusion.save_pretrained")
    parts = read_parts(directory, model_class=unet_class, autoencoder_class=autoencoder_class,
                       load_model=load_unet, prefer_checkpoint=False)
    if parts.autoencoder is None:
        raise ValueError(f"{directory} holds no autoencoder: not a latent model folder")
    shift, scale = parts.channel_stats or (None, None)
    return {"autoencoder": parts.autoencoder, "scale_factor": parts.scale_factor,
            "unet": parts.model, "prediction": parts.diffusion.get("prediction", "eps"),
            "schedule": schedule_of(parts, None) if "schedule" in parts.diffusion else None,
            "latent_shift": shift, "latent_scale": scale}
