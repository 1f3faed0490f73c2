"""The checks of the ``ddpm-lib`` command line, run on the parsed arguments before any work.

:func:`validate` is the one place where the arguments of every command are checked; ``main``
calls it right after parsing, before a model is built, a checkpoint read or a file written. It
runs three kinds of check, each a table or a function listed once:

- :data:`RANGES` gives the valid range of every numeric option of every command (by its
  ``dest``; :data:`COMMAND_RANGES` for the few options whose range depends on the command).
  ``tests/test_first_hour.py`` proves that no numeric option is missing from it.
- :data:`SAMPLER_OPTIONS` says which ``--sampler`` accepts which sampler option (``--order``
  is not a DDIM option, ``--eta`` only a DDIM one, ...).
- :data:`COMBINATION_CHECKS` holds, per command, the checks that read several options or the
  file system (a path that must exist, two options that go together).

Errors the user can fix are :class:`CLIError` (or ``FileNotFoundError``): ``main`` prints them
as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import is_real
from ._common import CLIError


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of valid values; ``None``: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < value (else low <= value)
    high_open: bool = False  # value < high (else value <= high)

    def __contains__(self, value: Any) -> bool:
        if not is_real(value):
            return False
        number = int(value) if isinstance(value, numbers.Integral) else float(value)  # exact ints
        if not math.isfinite(number):
            return False
        if self.low is not None and not (number > self.low if self.low_open
                                         else number >= self.low):
            return False
        return self.high is None or (number < self.high if self.high_open
                                     else number <= self.high)

    def describe(self) -> str:
        """``'>= 1'``, ``'in [0, 1)'``, ``'> 0'``: the range as the error message says it."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


AT_LEAST_ONE = Range(1)
AT_LEAST_ZERO = Range(0)
POSITIVE = Range(0.0, low_open=True)
FRACTION = Range(0.0, 1.0, high_open=True)  # a probability or a decay: 1 would never move
SEED = Range(0, 2**63 - 1)  # torch.Generator.manual_seed takes a 64-bit signed integer

#: The valid range of every numeric option, by ``dest`` (the same meaning in every command).
RANGES: dict[str, Range] = {
    # data and batches
    "image_size": AT_LEAST_ONE, "dataset_size": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE,
    "num_workers": AT_LEAST_ZERO, "class_dropout": FRACTION, "caption_dropout": FRACTION,
    # optimisation
    "steps": AT_LEAST_ONE, "lr": POSITIVE, "warmup_steps": AT_LEAST_ZERO,
    "grad_clip": Range(0.0), "ema_decay": FRACTION, "seed": SEED, "max_minutes": POSITIVE,
    # model and diffusion
    "base_channels": AT_LEAST_ONE, "num_res_blocks": AT_LEAST_ONE, "dropout": FRACTION,
    "text_dim": AT_LEAST_ONE, "text_layers": AT_LEAST_ONE, "text_heads": AT_LEAST_ONE,
    "text_max_length": AT_LEAST_ONE, "num_timesteps": Range(2), "timesteps": Range(2),
    "min_snr_gamma": POSITIVE, "hidden_size": AT_LEAST_ONE, "depth": AT_LEAST_ONE,
    "num_heads": AT_LEAST_ONE, "patch_size": AT_LEAST_ONE, "latent_channels": AT_LEAST_ONE, "kl_weight": Range(0.0),
    "l2_weight": Range(0.0), "adversarial_start": AT_LEAST_ZERO,
    # distillation
    "train_steps": AT_LEAST_ONE, "teacher_steps": Range(2), "levels": AT_LEAST_ONE,
    "target_decay": FRACTION,
    # output
    "log_every": AT_LEAST_ONE, "checkpoint_every": AT_LEAST_ONE,
    "keep_checkpoints": AT_LEAST_ONE, "sample_every": AT_LEAST_ONE, "num_samples": AT_LEAST_ONE,
    "num": AT_LEAST_ONE, "nrow": AT_LEAST_ONE, "upscale": AT_LEAST_ONE, "threads": AT_LEAST_ONE,
    # sampling
    "guidance_scale": Range(0.0), "guidance_rescale": Range(0.0, 1.0), "eta": Range(0.0, 1.0),
    "order": Range(1, 4), "dynamic_threshold": Range(0.0, 1.0, low_open=True, high_open=True),
    "label": AT_LEAST_ZERO, "resample": AT_LEAST_ONE, "jump_length": AT_LEAST_ONE,
    "s_churn": Range(0.0), "steps_per_level": AT_LEAST_ONE, "step_size": POSITIVE,
    # evaluation
    "kid_subsets": AT_LEAST_ONE, "kid_subset_size": Range(2), "groups": AT_LEAST_ONE,
    "class_label": Range(-1),
    # super-resolution (cascades)
    "super_resolution": Range(2), "augmentation_max_level": AT_LEAST_ZERO,
    "augmentation_level": AT_LEAST_ZERO, "noise_level": AT_LEAST_ZERO,
}

#: Ranges that depend on the command: ``(command, dest) -> Range``.
COMMAND_RANGES: dict[tuple[str, str], Range] = {
    ("fid", "num_samples"): Range(2),  # a covariance needs two samples
}

#: The flag of a ``dest`` whose name differs from ``--dest-with-dashes``.
FLAGS = {"label": "--class"}

#: Default ``--steps`` of each sampler (``ddpm``: capped at T).
SAMPLER_STEPS = {"ddpm": 100, "ddim": 50, "dpm-solver": 20, "unipc": 20, "pndm": 20, "deis": 20,
                 "sde": 100, "edm": 18, "langevin": 10, "ve-sde": 100, "consistency": 1,
                 "saved": None}  # saved: the model's recorded sampler (a distilled one)
MULTISTEP = ("dpm-solver", "unipc", "pndm", "deis")

#: Which ``--sampler`` accepts which sampler option (``dest -> samplers``).
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "order": MULTISTEP,
    "final_step": MULTISTEP,
    "eta": ("ddim",),
    "variant": ("unipc",),
    "method": ("sde", "edm", "ve-sde"),
    "s_churn": ("edm",),
    "steps_per_level": ("langevin",),
    "step_size": ("langevin",),
    "analytic_variance": ("ddpm", "ddim"),
}
#: The largest ``--order`` of each multistep sampler (iPNDM goes to 4).
MAX_ORDER = {"dpm-solver": 3, "unipc": 3, "pndm": 4, "deis": 3}


def flag(dest: str) -> str:
    """The command-line flag of an argument's ``dest``: ``batch_size -> --batch-size``."""
    return FLAGS.get(dest, "--" + dest.replace("_", "-"))


def range_of(command: str, dest: str) -> Range | None:
    """The valid range of option ``dest`` of ``command``, or ``None`` when it has none."""
    return COMMAND_RANGES.get((command, dest), RANGES.get(dest))


def check_ranges(command: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`CLIError` for the first numeric option of ``options`` out of its range.

    ``None`` (an option not given) passes; so does a value of a ``dest`` without a range.
    """
    for dest, value in options.items():
        valid = range_of(command, dest)
        if value is None or valid is None or isinstance(value, (str, list, tuple)):
            continue
        if value not in valid:
            raise CLIError(f"{flag(dest)} must be {valid.describe()}; got {value}")


def validate(args: argparse.Namespace) -> None:
    """Check every argument of ``args.command`` before any work: ranges, then combinations."""
    options = vars(args)
    check_ranges(args.command, options)
    check = COMBINATION_CHECKS.get(args.command)
    if check is not None:
        check(args)


# ----------------------------------------------------------------------------- train

#: The defaults of ``ddpm-lib train``. The parser's defaults are None so that, when a run is
#: resumed, an option not given on the command line takes the value saved by the first run
#: (``out_dir/cli_args.json``) instead of this default.
TRAIN_DEFAULTS: dict[str, Any] = {
    "data": "shapes", "data_root": None, "image_size": None, "dataset_size": 10_000,
    "class_conditional": False, "steps": 800_000, "batch_size": 128, "lr": 2e-4,
    "warmup_steps": 5000, "grad_clip": 1.0, "ema_decay": 0.9999, "mixed_precision": "no",
    "class_dropout": 0.1, "captions": None, "language": "en", "caption_dropout": 0.1,
    "text_dim": 256, "text_layers": 4, "text_heads": 4, "text_max_length": 64,
    "text_attention": "joint", "no_flip": False, "base_channels": 128, "channel_mults": "1,2,2,2",
    "num_res_blocks": 2, "attention_resolutions": "16", "dropout": 0.1, "schedule": "linear",
    "num_timesteps": 1000, "prediction": "eps", "loss": "simple", "min_snr_gamma": None,
    "objective": "ddpm",
    "log_every": 1000, "checkpoint_every": 5000, "keep_checkpoints": 3, "sample_every": 10_000,
    "num_samples": 16, "guidance_scale": None, "seed": 0, "num_workers": None, "autoencoder": None,
    # the backbone (issue 29): a UNet, or a DiT preset whose size a few options override
    "model": "unet", "hidden_size": None, "depth": None, "num_heads": None, "patch_size": None,
    "parallel": "ddp",
    "latent_normalization": None,
    "super_resolution": None, "augmentation_max_level": None, "augmentation_level": None,
}
#: ``--model`` choices: the UNet and the DiT presets of Peebles & Xie (``dit-s/2`` ...).
MODELS = ("unet", *(f"dit-{size}/{patch}" for size in ("s", "b", "l", "xl") for patch in (2, 4, 8)))
#: Options of the UNet only, and of the DiT only (refused with the other backbone).
UNET_OPTIONS = ("base_channels", "channel_mults", "num_res_blocks", "attention_resolutions",
                "dropout", "text_attention")
DIT_OPTIONS = ("hidden_size", "depth", "num_heads", "patch_size")
#: ``--latent-normalization`` -> ``LatentDiffusion.fit_scale_factor(normalization=...)``.
LATENT_NORMALIZATIONS = {"channel": "channel", "scale": "global"}


def latent_train_defaults() -> dict[str, Any]:
    """The defaults of a latent run (``--autoencoder``) where they differ from the pixel ones:
    the measured recipe, :class:`ddpm_lib.LatentRecipe` (latent guide, issue 32).
    ``min_snr_gamma`` applies to ``--loss simple`` only; ``latent_normalization`` to a new run
    only (a resumed one keeps the normalisation its ``pipeline.json`` records)."""
    from ddpm_lib.latent_recipe import LatentRecipe

    recipe = LatentRecipe()
    flags = {value: key for key, value in LATENT_NORMALIZATIONS.items()}
    return {"prediction": recipe.prediction, "min_snr_gamma": recipe.min_snr_gamma,
            "lr": recipe.lr, "latent_normalization": flags[recipe.normalization]}
TRAIN_ARGS_FILE = "cli_args.json"
BUILTIN_DATA = ("shapes", "captioned-shapes", "cifar10", "mnist")


def int_list(name: str, text: Any) -> tuple[int, ...]:
    """``"1,2,2"`` -> ``(1, 2, 2)`` for option ``name``; ``""`` -> ``()``."""
    try:
        values = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise CLIError(f"{flag(name)} must be integers separated by commas; got {text!r}") from None
    if any(value < 1 for value in values):
        raise CLIError(f"{flag(name)} must be positive integers; got {text!r}")
    return values


def resolve_train_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options of this run: command line, else the first run's saved ones, else defaults."""

    saved: dict[str, Any] = {}
    saved_file = Path(args.out) / TRAIN_ARGS_FILE
    if saved_file.is_file():
        from ddpm_lib._readers import read_json

        try:
            saved = read_json(saved_file, what=TRAIN_ARGS_FILE)
        except ValueError as error:
            raise CLIError(f"{error}; delete it or use a new --out") from None
    resolved = {}
    for key, default in TRAIN_DEFAULTS.items():
        given = getattr(args, key)
        resolved[key] = given if given is not None else saved.get(key, default)
    if resolved["autoencoder"] is not None:
        _latent_defaults(args, saved, resolved, resuming=saved_file.is_file())
    return resolved


def _check_objective(options: dict[str, Any], text: bool) -> None:
    """``--objective edm | dsm`` trains a score-based model: the DDPM loss options do not apply."""
    objective = options["objective"]
    if objective == "ddpm":
        return
    clashes = [(options["loss"] != "simple", f"--loss {options['loss']}"),
               (options["prediction"] != "eps", f"--prediction {options['prediction']}"),
               (options["min_snr_gamma"] is not None, "--min-snr-gamma"),
               (options["autoencoder"] is not None, "--autoencoder"),
               (text, "a captioned dataset")]
    for clash, what in clashes:
        if clash:
            raise CLIError(f"--objective {objective} trains a score-based model (its own loss, "
                           f"pixel space, labels or none); it cannot be combined with {what}")


def _latent_defaults(args: argparse.Namespace, saved: Mapping[str, Any],
                     resolved: dict[str, Any], resuming: bool) -> None:
    """A latent run's options neither given nor saved take :func:`latent_train_defaults`."""
    for key, default in latent_train_defaults().items():
        if getattr(args, key) is not None or key in saved:
            continue
        if key == "min_snr_gamma" and resolved["loss"] != "simple":
            continue
        if key == "latent_normalization" and resuming:
            continue  # a run started before the option: its pipeline.json says (scale-only)
        resolved[key] = default


def _check_train(args: argparse.Namespace) -> None:
    """``train``: the resolved options (saved ones included) and how they combine.

    Stores them as ``args.resolved`` for the command to use.
    """
    options = resolve_train_args(args)
    if options["min_snr_gamma"] == "none":  # --min-snr-gamma none: no weighting
        options["min_snr_gamma"] = None
    check_ranges("train", options)
    data = options["data"]
    if data in ("cifar10", "mnist") and options["data_root"] is None:
        raise CLIError(f"--data {data} needs --data-root, the folder that holds it")
    if data not in BUILTIN_DATA and not Path(data).is_dir():
        raise CLIError(f"--data must be 'shapes', 'captioned-shapes', 'cifar10', 'mnist' or a "
                       f"folder of images; {data!r} is none of them")
    text = data == "captioned-shapes" or options["captions"] is not None
    if options["captions"] is not None and data in BUILTIN_DATA:
        raise CLIError(f"--captions is for a folder of images; --data {data} has its own labels "
                       "or captions")
    if text and options["class_conditional"]:
        raise CLIError("--class-conditional and captions cannot be combined; the model is "
                       "conditioned on the text")
    if args.text_attention is not None and not text:
        raise CLIError(f"--text-attention {args.text_attention} is for a text model; give "
                       "--data captioned-shapes or a folder with --captions")
    if options["min_snr_gamma"] is not None and options["loss"] != "simple":
        raise CLIError(f"--min-snr-gamma weighs --loss simple; got --loss {options['loss']}")
    _check_objective(options, text)
    if options["autoencoder"] is not None and not Path(options["autoencoder"]).exists():
        raise FileNotFoundError(f"--autoencoder {options['autoencoder']!r} does not exist")
    if options["latent_normalization"] is not None and options["autoencoder"] is None:
        raise CLIError("--latent-normalization normalises the latents of --autoencoder; give "
                       "--autoencoder RUN, or leave it out for a pixel-space run")
    if not int_list("channel_mults", options["channel_mults"]):
        raise CLIError("--channel-mults needs at least one multiplier; got ''")
    int_list("attention_resolutions", options["attention_resolutions"])
    _check_backbone(args, options)
    _check_super_resolution(options)
    args.resolved = options


def _check_backbone(args: argparse.Namespace, options: Mapping[str, Any]) -> None:
    """The options of the other backbone than ``--model``'s, given on this command line."""
    dit = str(options["model"]).startswith("dit-")
    for dest in UNET_OPTIONS if dit else DIT_OPTIONS:
        if getattr(args, dest, None) is not None:
            which = f"--model {options['model']}" if dit else "a DiT (--model dit-s/2 ...)"
            raise CLIError(f"{flag(dest)} is an option of the "
                           f"{'UNet' if dit else 'DiT'}; not of {which}")
    if dit and options["hidden_size"] is not None and options["num_heads"] is not None and (
            options["hidden_size"] % options["num_heads"]):
        raise CLIError(f"--hidden-size {options['hidden_size']} must be divisible by "
                       f"--num-heads {options['num_heads']}")


def _check_super_resolution(options: Mapping[str, Any]) -> None:
    """``train --super-resolution FACTOR`` and its augmentation options."""
    augmentation = [name for name in ("augmentation_max_level", "augmentation_level")
                    if options[name] is not None]
    if options["super_resolution"] is None:
        if augmentation:
            raise CLIError(f"{flag(augmentation[0])} is for a super-resolution model; give "
                           "--super-resolution FACTOR")
        return
    if options["autoencoder"] is not None:
        raise CLIError("--super-resolution trains a pixel-space upsampler; it cannot be "
                       "combined with --autoencoder")
    for name in augmentation:
        if options[name] > 999:
            raise CLIError(f"{flag(name)} must be in [0, 999] (the augmentation's T = 1000); "
                           f"got {options[name]}")


def _check_train_autoencoder(args: argparse.Namespace) -> None:
    if args.data != "shapes" and not Path(args.data).is_dir():
        raise CLIError(f"--data must be 'shapes' or a folder of images; {args.data!r} is neither")
    if args.data != "shapes" and args.image_size is None:
        raise CLIError("--data FOLDER needs --image-size")
    channel_mults = int_list("channel_mults", args.channel_mults)
    if not channel_mults:
        raise CLIError("--channel-mults needs at least one multiplier; got ''")
    factor = 2 ** (len(channel_mults) - 1)
    image_size = args.image_size or 32
    if image_size % factor:
        raise CLIError(f"--image-size {image_size} is not a multiple of the downsampling factor "
                       f"{factor} of --channel-mults {args.channel_mults}")


# ----------------------------------------------------------------------------- sample

def check_sampler(args: argparse.Namespace, source: str | None) -> None:
    """The sampler options of ``sample`` and ``fid``: each given only to a ``--sampler`` that
    has it, and the ones that do not fit the model of ``source`` (a latent run is not clipped)."""
    sampler = args.sampler
    for dest, samplers in SAMPLER_OPTIONS.items():
        if getattr(args, dest) is not None and sampler not in samplers:
            names = ", ".join(samplers)
            raise CLIError(f"{flag(dest)} is an option of --sampler {names}; not of "
                           f"--sampler {sampler}")
    if args.order is not None and args.order > MAX_ORDER[sampler]:
        raise CLIError(f"--order of --sampler {sampler} must be in [1, {MAX_ORDER[sampler]}]; "
                       f"got {args.order}")
    if args.dynamic_threshold is not None and args.clip_denoised is False:
        raise CLIError("--dynamic-threshold replaces clipping; it cannot be combined with "
                       "--no-clip-denoised")
    if args.analytic_variance is not None and not Path(args.analytic_variance).is_file():
        raise FileNotFoundError(f"--analytic-variance {args.analytic_variance!r} does not exist")
    if source is not None and Path(source).exists():
        _check_latent_clipping(args, source)


def _check_latent_clipping(args: argparse.Namespace, source: str) -> None:
    if is_latent_run(source) and (args.clip_denoised or args.dynamic_threshold is not None):
        what = "--clip-denoised" if args.clip_denoised else "--dynamic-threshold"
        raise CLIError(f"{what} brings x0 to [-1, 1]: an option of pixel-space runs; "
                       f"{source} samples latents")


def _check_sample(args: argparse.Namespace) -> None:
    sampler = args.sampler
    check_sampler(args, None)
    if args.guidance_rescale and args.guidance_scale is None:
        raise CLIError("--guidance-rescale acts on guidance: give --guidance-scale too")
    if args.negative_prompt is not None and args.guidance_scale is None:
        raise CLIError("--negative-prompt acts through guidance: give --guidance-scale too")
    if (args.inpaint is None) != (args.mask is None):
        raise CLIError("--inpaint IMAGE and --mask MASK go together; got only one of them")
    if args.inpaint is None and (args.resample != 1 or args.jump_length != 1):
        raise CLIError("--resample and --jump-length are inpainting options; add --inpaint")
    if args.inpaint is not None and sampler == "sde" and (args.method or "euler_maruyama") != \
            "euler_maruyama":
        raise CLIError(f"--inpaint with --sampler sde needs --method euler_maruyama; got "
                       f"--method {args.method}")
    for option, path in (("--inpaint", args.inpaint), ("--mask", args.mask)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{option} {path!r} does not exist")
    if not Path(args.source).exists():
        raise FileNotFoundError(f"{args.source!r} does not exist")
    _check_cascade_sample(args)
    _check_latent_clipping(args, args.source)
    if is_latent_run(args.source) and args.inpaint is not None:
        raise CLIError("--inpaint works on pixel-space runs; this run samples latents")


def _check_cascade_sample(args: argparse.Namespace) -> None:
    """``sample``'s cascade options: only for a cascade, whose stages bring their samplers."""
    from ddpm_lib.cascade import CASCADE_FILE

    cascade = bool(args.stage) or (Path(args.source) / CASCADE_FILE).is_file()
    if not cascade:
        for dest in ("noise_level", "save_cascade"):
            if getattr(args, dest) is not None:
                raise CLIError(f"{flag(dest)} is for a cascade: give a cascade folder or "
                               "--stage DIR")
    elif args.steps is not None:
        raise CLIError("--steps: each stage of a cascade samples with its own saved sampler "
                       "and steps")


def is_latent_run(source: str) -> bool:
    """Whether ``source`` is a latent diffusion run or a saved latent model (or a checkpoint
    or export of a latent run)."""
    from ddpm_lib._pipeline_formats import is_latent_folder

    return is_latent_folder(Path(source))


def sampler_options(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``(class name, keyword arguments)`` of the sampler that ``sample`` and ``fid`` build.

    Only the options given on the command line are passed, so every other one keeps the
    sampler's documented default (e.g. ``spacing``: DDPM linspace, DDIM trailing, the
    multistep solvers logsnr).
    """
    from ddpm_lib.pipeline import SAMPLER_NAMES

    keywords: dict[str, Any] = {}
    for dest in ("spacing", "order", "final_step", "eta", "variant", "method",
                 "dynamic_threshold"):
        value = getattr(args, dest)
        if value is not None:
            keywords[dest] = value
    for dest, keyword in (("s_churn", "S_churn"), ("steps_per_level", "steps_per_level"),
                          ("step_size", "step_size")):  # the samplers over noise levels
        value = getattr(args, dest, None)
        if value is not None:
            keywords[keyword] = value
    return SAMPLER_NAMES.get(args.sampler, args.sampler), keywords


# ----------------------------------------------------------------------------- fid / bpd

def _check_fid(args: argparse.Namespace) -> None:
    expected = 1 if (args.checkpoint or args.save_stats) else 2
    if args.checkpoint and args.save_stats:
        raise CLIError("use either --checkpoint or --save-stats, not both")
    if len(args.paths) != expected:
        usage = {
            2: "two paths (image folders or .npz files)",
            1: "one path: the reference (with --checkpoint) or the images (with --save-stats)",
        }[expected]
        raise CLIError(f"expected {usage}; got {len(args.paths)}")
    for path in args.paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"not found: {path!r} (expected an image folder or a .npz "
                                    "file)")
    if args.checkpoint and args.num_samples is None:
        raise CLIError("--checkpoint needs --num-samples (50000 is the standard for FID)")
    check_sampler(args, args.checkpoint)


def _check_bpd(args: argparse.Namespace) -> None:
    if not Path(args.data).exists():
        raise FileNotFoundError(f"data not found: {args.data!r}")


#: Per command, the checks that read several options or the file system.
COMBINATION_CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "train": _check_train,
    "sample": _check_sample,
    "fid": _check_fid,
    "bpd": _check_bpd,
    "train-autoencoder": _check_train_autoencoder,
}
