"""``ddpm-lib fid``: the Fréchet Inception Distance (and KID) between two image sets, or
between images drawn from a trained model and a reference.

A side is an image folder, a ``.npz`` of statistics (pytorch-fid's ``mu``, ``sigma``) or a
``.npy`` / ``.npz`` uint8 image batch. ``--checkpoint`` reads a model through the one loader
(:func:`ddpm_lib.cli._common.load_eval_pipeline`) and samples it with the sampler builder that
``sample`` uses, with the same ``--sampler`` options.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from ._common import (
    CLIError,
    add_model_options,
    add_sampler_options,
    build_sampler,
    device_of,
    load_eval_pipeline,
    read_image_array,
    warn_small,
)
from .checks import SAMPLER_STEPS

#: ``--steps`` of ``fid --checkpoint`` by sampler: as ``sample``, but ancestral sampling runs
#: its full chain of T steps (``None``), as the DDPM paper's FID did.
FID_SAMPLER_STEPS: dict[str, int | None] = {**SAMPLER_STEPS, "ddpm": None}


def _is_statistics_file(path: str) -> bool:
    from ddpm_lib._readers import load_npz

    if not path.endswith(".npz"):
        return False
    data = load_npz(path)  # a damaged file: a ValueError naming it
    return "mu" in data and "sigma" in data


def _load_extractor(args: argparse.Namespace, device: Any) -> Any:
    """The FID feature network: the TF InceptionV3 from ``--inception-weights`` (or env)."""
    from ddpm_lib.metrics import load_fid_inception

    return load_fid_inception(args.inception_weights, device=device)


def _statistics_of(
    path: str, extractor: Any, args: argparse.Namespace, keep: bool, num_samples: int | None
) -> Any:
    """Statistics of an image folder, a ``.npz`` of statistics or a ``.npy``/``.npz`` batch."""
    import os

    from ddpm_lib.metrics import FeatureStatistics, compute_statistics, statistics_from_folder

    if not os.path.exists(path):
        raise FileNotFoundError(f"not found: {path!r} (expected an image folder or a .npz file)")
    if _is_statistics_file(path):
        if keep:
            raise CLIError(f"--kid needs images on both sides; {path!r} holds only statistics")
        return FeatureStatistics.load(path)
    common = {
        "batch_size": args.batch_size,
        "num_samples": num_samples,
        "keep_features": keep,
        "progress": not args.no_progress,
    }
    if os.path.isdir(path):
        return statistics_from_folder(path, extractor(), num_workers=args.num_workers, **common)
    if path.endswith((".npy", ".npz")):
        return compute_statistics(read_image_array(path), extractor(), **common)
    raise CLIError(f"{path!r} is neither an image folder nor a .npz / .npy file")


def _sample_statistics(args: argparse.Namespace, extractor: Any, keep: bool) -> Any:
    """Statistics of ``--num-samples`` images generated from ``--checkpoint``."""
    import torch

    from ddpm_lib.metrics import statistics_from_sampler
    from ddpm_lib.pipeline import model_config

    device = device_of(args.device)
    pipe = load_eval_pipeline(args.checkpoint, device, args)
    sampler = build_sampler(args, pipe, FID_SAMPLER_STEPS)
    if pipe.latent is not None:  # samples latents, decoded to images for the features
        sampler = pipe.latent.decoding_sampler(sampler)
    config = model_config(pipe.model)
    image_size = args.image_size or config.get("image_size", config.get("input_size"))
    channels = config.get("in_channels", 3)
    if image_size is None:
        raise CLIError("the model does not record its image size; pass --image-size")
    num_classes = pipe.num_classes

    def class_labels(count: int, generator: Any) -> dict:
        assert num_classes is not None  # only given for a class-conditional model
        labels = torch.randint(num_classes, (count,), generator=generator, device=device)
        return {"y": labels}

    generator = torch.Generator(device=device).manual_seed(args.seed)
    return statistics_from_sampler(
        sampler,
        pipe.model,
        extractor(),
        args.num_samples,
        (channels, image_size, image_size),
        batch_size=args.batch_size,
        generator=generator,
        model_kwargs=class_labels if num_classes else None,
        keep_features=keep,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> None:
    """Print the FID (and KID) of the two sides, or save the statistics of one."""
    import torch

    from ddpm_lib.metrics import kernel_inception_distance

    @functools.cache
    def extractor() -> Any:  # loaded only when some side needs features
        return _load_extractor(args, device_of(args.device))

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
    warn_small(
        "fid",
        min(known) if known else None,
        "FID is biased upward at small N (the bias shrinks like 1/N), so it is not comparable "
        "with published figures; use >= 10000 samples (50000 is standard) or --kid",
    )


def add_parser(subparsers: Any) -> None:
    """Register ``fid`` and its options."""
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
    add_model_options(parser)
    add_sampler_options(parser, default="ddim", default_steps=FID_SAMPLER_STEPS)  # the samplers of sample, for --checkpoint
    parser.set_defaults(func=run)
