"""The ``ddpm-lib`` command line: ``train``, ``sample``, ``fid`` and ``bpd``.

Run ``ddpm-lib --help`` (or ``python -m ddpm_lib.cli --help``). Each sub-command is defined by
a ``_add_<name>_parser(subparsers)`` function that registers its options and sets
``func`` to the function that runs it. Errors the user can fix (a missing path, a bad option,
an incompatible checkpoint) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


class CLIError(Exception):
    """An error caused by the user's input, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-lib",
        description="Train, sample and evaluate denoising diffusion models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm-lib`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, FileNotFoundError, ValueError, TypeError) as error:
        message = str(error) or type(error).__name__
        print(f"ddpm-lib {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpm-lib {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


# ----------------------------------------------------------------------------- train / sample


# ----------------------------------------------------------------------------- fid / bpd
def _device(name: str | None) -> torch.device:
    """``--device``: the given device, else CUDA when available, else the CPU."""
    import torch

    if name:
        try:
            return torch.device(name)
        except RuntimeError as error:
            raise CLIError(f"--device: not a device: {name!r}") from error
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint_for_eval(path: str, device: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """Load ``(model, schedule)`` from a checkpoint for ``fid --checkpoint`` and ``bpd``.

    Today a checkpoint is a pretrained directory written by ``UNet.save_pretrained``
    (``config.json`` + ``model.safetensors``); its schedule is read from ``schedule.json``
    (``NoiseSchedule.to_dict``) when present, else built from ``--schedule`` / ``--timesteps``.
    Other checkpoint formats plug in here.
    """
    from pathlib import Path

    from .schedule import NoiseSchedule

    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    if not (directory.is_dir() and (directory / "config.json").is_file()):
        raise CLIError(
            f"{path!r} is not a pretrained model directory (config.json + model.safetensors, "
            "as written by UNet.save_pretrained)"
        )
    from . import UNet

    model = UNet.from_pretrained(str(directory)).to(device).eval()
    schedule_file = directory / "schedule.json"
    if schedule_file.is_file():
        import json

        schedule = NoiseSchedule.from_dict(json.loads(schedule_file.read_text()))
    elif args.schedule == "cosine":
        schedule = NoiseSchedule.cosine(args.timesteps)
    else:
        schedule = NoiseSchedule.linear(args.timesteps)
    return model, schedule


def _model_setting(model: Any, name: str, default: Any = None) -> Any:
    """``model.<name>`` or ``model.config[name]`` (the UNet's constructor arguments)."""
    if hasattr(model, name):
        return getattr(model, name)
    config = getattr(model, "config", None)
    if isinstance(config, dict) and name in config:
        return config[name]
    return getattr(config, name, default)


def _variance_of(model: Any, args: argparse.Namespace) -> str:
    if args.variance != "auto":
        return args.variance
    return "learned_range" if _model_setting(model, "learn_sigma", False) else "fixed_small"


def _read_image_array(path: str) -> Any:
    """A ``.npy`` / ``.npz`` image batch (``arr_0``, ``(N, H, W, C)`` uint8, the format of the
    guided-diffusion reference batches) as a ``(N, C, H, W)`` uint8 tensor."""
    import numpy as np
    import torch

    if path.endswith(".npz"):
        with np.load(path) as data:
            keys = [key for key in ("arr_0", "images") if key in data.files]
            if not keys:
                raise CLIError(
                    f"{path!r} holds neither statistics ('mu', 'sigma') nor images ('arr_0'); "
                    f"it has {sorted(data.files)}"
                )
            array = data[keys[0]]
    else:
        array = np.load(path)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise CLIError(
            f"{path!r}: expected uint8 images of shape (N, H, W, C) with C = 1 or 3; got "
            f"{array.dtype} {array.shape}"
        )
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def _is_statistics_file(path: str) -> bool:
    import numpy as np

    if not path.endswith(".npz"):
        return False
    with np.load(path) as data:
        return "mu" in data.files and "sigma" in data.files


def _load_extractor(args: argparse.Namespace, device: Any) -> Any:
    """The FID feature network: the TF InceptionV3 from ``--inception-weights`` (or env)."""
    from .metrics import load_fid_inception

    return load_fid_inception(args.inception_weights, device=device)


def _statistics_of(
    path: str, extractor: Any, args: argparse.Namespace, keep: bool, num_samples: int | None
) -> Any:
    """Statistics of an image folder, a ``.npz`` of statistics or a ``.npy``/``.npz`` batch."""
    import os

    from .metrics import FeatureStatistics, compute_statistics, statistics_from_folder

    if not os.path.exists(path):
        raise FileNotFoundError(f"not found: {path!r} (expected an image folder or a .npz file)")
    if _is_statistics_file(path):
        if keep:
            raise CLIError(f"--kid needs images on both sides; {path!r} holds only statistics")
        return FeatureStatistics.load(path)
    common = dict(
        batch_size=args.batch_size,
        num_samples=num_samples,
        keep_features=keep,
        progress=not args.no_progress,
    )
    if os.path.isdir(path):
        return statistics_from_folder(path, extractor(), num_workers=args.num_workers, **common)
    if path.endswith((".npy", ".npz")):
        return compute_statistics(_read_image_array(path), extractor(), **common)
    raise CLIError(f"{path!r} is neither an image folder nor a .npz / .npy file")


def _build_sampler(args: argparse.Namespace, schedule: Any, model: Any) -> Any:
    """The sampler named by ``--sampler`` with ``--steps`` steps (default per sampler)."""
    from . import samplers

    learn_sigma = bool(_model_setting(model, "learn_sigma", False))
    if args.sampler == "ddpm":
        return samplers.DDPMSampler(
            schedule,
            variance=_variance_of(model, args),
            prediction=args.prediction,
            num_steps=args.steps,
        )
    if args.sampler == "ddim":
        return samplers.DDIMSampler(
            schedule, num_steps=args.steps or 50, prediction=args.prediction,
            learn_sigma=learn_sigma,
        )
    if args.sampler == "dpm_solver":
        return samplers.DPMSolverSampler(
            schedule, num_steps=args.steps or 20, prediction=args.prediction,
            learn_sigma=learn_sigma,
        )
    raise CLIError(f"--sampler must be ddpm, ddim or dpm_solver; got {args.sampler!r}")


def _sample_statistics(args: argparse.Namespace, extractor: Any, keep: bool) -> Any:
    """Statistics of ``--num-samples`` images generated from ``--checkpoint``."""
    import torch

    from .metrics import statistics_from_sampler

    if args.num_samples is None:
        raise CLIError("--checkpoint needs --num-samples (50000 is the standard for FID)")
    device = _device(args.device)
    model, schedule = load_checkpoint_for_eval(args.checkpoint, device, args)
    sampler = _build_sampler(args, schedule, model)
    image_size = args.image_size or _model_setting(model, "image_size")
    channels = _model_setting(model, "in_channels", 3)
    if image_size is None:
        raise CLIError("the model does not record its image size; pass --image-size")
    num_classes = _model_setting(model, "num_classes")

    def class_labels(count: int, generator: Any) -> dict:
        labels = torch.randint(num_classes, (count,), generator=generator, device=device)
        return {"y": labels}

    generator = torch.Generator(device=device).manual_seed(args.seed)
    return statistics_from_sampler(
        sampler,
        model,
        extractor(),
        args.num_samples,
        (channels, image_size, image_size),
        batch_size=args.batch_size,
        generator=generator,
        model_kwargs=class_labels if num_classes else None,
        keep_features=keep,
        progress=not args.no_progress,
    )


def _warn_small(command: str, num_samples: int | None, what: str) -> None:
    from .metrics import RECOMMENDED_MIN_SAMPLES

    if num_samples is not None and num_samples < RECOMMENDED_MIN_SAMPLES:
        print(
            f"ddpm-lib {command}: warning: only {num_samples} samples; {what}",
            file=sys.stderr,
        )


def _run_fid(args: argparse.Namespace) -> None:
    import os
    from functools import lru_cache

    import torch

    from .metrics import kernel_inception_distance

    expected = 1 if (args.checkpoint or args.save_stats) else 2
    if len(args.paths) != expected:
        usage = {
            2: "two paths (image folders or .npz files)",
            1: "one path: the reference (with --checkpoint) or the images (with --save-stats)",
        }[expected]
        raise CLIError(f"expected {usage}; got {len(args.paths)}")
    if args.checkpoint and args.save_stats:
        raise CLIError("use either --checkpoint or --save-stats, not both")
    if args.num_samples is not None and args.num_samples < 2:
        raise CLIError(f"--num-samples must be >= 2; got {args.num_samples}")
    for path in args.paths:  # fail before any feature is computed
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"not found: {path!r} (expected an image folder or a .npz file)"
            )

    @lru_cache(maxsize=None)
    def extractor() -> Any:  # loaded only when some side needs features
        return _load_extractor(args, _device(args.device))

    if args.save_stats:
        stats = _statistics_of(args.paths[0], extractor, args, False, args.num_samples)
        stats.save(args.save_stats)
        print(f"saved statistics of {stats.num_samples} images to {args.save_stats}")
        return
    keep = args.kid
    if args.checkpoint:
        first = _sample_statistics(args, extractor, keep)
        second = _statistics_of(args.paths[0], extractor, args, keep, None)  # all references
    else:
        first = _statistics_of(args.paths[0], extractor, args, keep, args.num_samples)
        second = _statistics_of(args.paths[1], extractor, args, keep, args.num_samples)
    if first.dim != second.dim:
        raise CLIError(
            f"the two sides have features of dimension {first.dim} and {second.dim}; "
            "statistics must come from the same network"
        )
    fid = first.frechet_distance(second)
    counts = [first.num_samples, second.num_samples]
    shown = " vs ".join("unknown" if n is None else str(n) for n in counts)
    print(f"FID: {fid:.4f}")
    print(f"samples: {shown}")
    if keep:
        kid = kernel_inception_distance(
            first.features,
            second.features,
            num_subsets=args.kid_subsets,
            subset_size=args.kid_subset_size,
            generator=torch.Generator().manual_seed(args.seed),
        )
        print(f"KID: {kid.mean:.6f} +- {kid.std:.6f} (subsets of {kid.subset_size})")
    known = [n for n in counts if n is not None]
    _warn_small(
        "fid",
        min(known) if known else None,
        "FID is biased upward at small N (the bias shrinks like 1/N), so it is not comparable "
        "with published figures; use >= 10000 samples (50000 is standard) or --kid",
    )


def _with_class_label(model: Any, label: int) -> Any:
    """``model`` called with ``y = label`` for every image (a module, so eval mode reaches it)."""
    import torch

    class WithClassLabel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> Any:
            y = torch.full((x_t.shape[0],), label, dtype=torch.long, device=x_t.device)
            return self.model(x_t, t, y=y, **model_kwargs)

    return WithClassLabel()


def _run_bpd(args: argparse.Namespace) -> None:
    import os

    import torch

    from .metrics import ImageFolder, nll_bits_per_dim

    if args.num_samples is not None and args.num_samples < 1:
        raise CLIError(f"--num-samples must be >= 1; got {args.num_samples}")
    if not os.path.exists(args.data):
        raise FileNotFoundError(f"data not found: {args.data!r}")
    device = _device(args.device)
    model, schedule = load_checkpoint_for_eval(args.checkpoint, device, args)
    if os.path.isdir(args.data):
        channels = _model_setting(model, "in_channels", 3)
        data = ImageFolder(args.data, mode="L" if channels == 1 else "RGB")
    elif args.data.endswith((".npy", ".npz")):
        data = _read_image_array(args.data)
    else:
        raise CLIError(f"{args.data!r} is neither an image folder nor a .npy / .npz image batch")
    variance = _variance_of(model, args)
    num_classes = _model_setting(model, "num_classes")
    if num_classes and args.class_label is None:
        raise CLIError(
            f"the model is class-conditional ({num_classes} classes): give the class of the "
            "images with --class-label (-1: the null class, if it was trained with label dropout)"
        )
    if args.class_label is not None:
        if not num_classes:
            raise CLIError("--class-label needs a class-conditional model")
        if not -1 <= args.class_label < num_classes:
            raise CLIError(
                f"--class-label must be in [-1, {num_classes - 1}]; got {args.class_label}"
            )
        model = _with_class_label(model, args.class_label)
    result = nll_bits_per_dim(
        model,
        schedule,
        data,
        variance=variance,
        prediction=args.prediction,
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        device=device,
        progress=not args.no_progress,
        generator=torch.Generator(device=device).manual_seed(args.seed),
    )
    print(f"bits/dim: {result.mean:.4f} +- {result.stderr:.4f}")
    print(f"samples: {result.num_samples}")
    print(f"prior L_T: {result.prior:.4f}  decoder L_0: {result.decoder:.4f}")
    for first_t, last_t, bits in result.breakdown(args.groups):
        print(f"terms t={first_t}..{last_t}: {bits:.4f}")
    _warn_small(
        "bpd",
        result.num_samples,
        "papers report bits/dim on the whole test set (10000 images for CIFAR-10)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``fid --checkpoint`` and ``bpd``: how the checkpoint's model runs."""
    parser.add_argument("--prediction", choices=("eps", "x0", "v"), default="eps",
                        help="what the model predicts (default: eps)")
    parser.add_argument("--variance", default="auto",
                        choices=("auto", "fixed_small", "fixed_large", "learned", "learned_range"),
                        help="reverse variance; auto: learned_range if the model learns sigma, "
                        "else fixed_small")
    parser.add_argument("--schedule", choices=("linear", "cosine"), default="linear",
                        help="noise schedule when the checkpoint has no schedule.json")
    parser.add_argument("--timesteps", type=int, default=1000,
                        help="T when the checkpoint has no schedule.json (default: 1000)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_fid_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fid",
        help="Fréchet Inception Distance between image folders, .npz statistics or a model",
        description=(
            "FID between two image sets, each an image folder, a .npz of statistics (mu, sigma; "
            "pytorch-fid format) or a .npy/.npz uint8 image batch; or between --num-samples "
            "images generated from --checkpoint and a reference. Uses the TF FID InceptionV3: "
            "give its weights file (pt_inception-2015-12-05-6726825d.pth) with "
            "--inception-weights or DDPM_LIB_FID_WEIGHTS."
        ),
    )
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="image folders / .npz files (two; one with --checkpoint)")
    parser.add_argument("--checkpoint", default=None,
                        help="pretrained model directory to sample from")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="images to generate (with --checkpoint) or to read per side")
    parser.add_argument("--sampler", choices=("ddpm", "ddim", "dpm_solver"), default="ddim",
                        help="sampler for --checkpoint (default: ddim)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: T for ddpm, 50 ddim, 20 dpm_solver)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image size, when the model does not record it")
    parser.add_argument("--inception-weights", default=None,
                        help="path of pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--save-stats", default=None, metavar="OUT.npz",
                        help="only compute the statistics of PATH and save them")
    parser.add_argument("--kid", action="store_true", help="also report KID (keeps features)")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers reading image folders")
    _add_model_options(parser)
    parser.set_defaults(func=_run_fid)


def _add_bpd_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bpd",
        help="negative log-likelihood bound in bits/dim of a model on a dataset",
        description=(
            "The full variational bound (all T terms, the prior and the discrete decoder) of "
            "CHECKPOINT on DATA (an image folder or a .npy/.npz uint8 image batch) in bits/dim, "
            "with its standard error and a per-term breakdown."
        ),
    )
    parser.add_argument("checkpoint", help="pretrained model directory")
    parser.add_argument("data", help="image folder or .npy/.npz uint8 (N, H, W, C) batch")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--class-label", type=int, default=None,
                        help="class of every image, for a class-conditional model")
    parser.add_argument("--groups", type=int, default=4,
                        help="timestep ranges in the printed breakdown (default: 4)")
    _add_model_options(parser)
    parser.set_defaults(func=_run_bpd)


_SUBCOMMANDS: list = [
    _add_fid_parser,
    _add_bpd_parser,
]


if __name__ == "__main__":
    sys.exit(main())
