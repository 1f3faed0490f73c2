"""``ddpm-lib distill``: learned fast sampling for a trained run (progressive or consistency
distillation, :mod:`ddpm_lib.distillation`).

The teacher is read by the one loader (any folder ``ddpm-lib sample`` reads); the data are
those the run was trained on (its ``cli_args.json``) unless ``--data`` says otherwise; a latent
run's images are encoded by its autoencoder (cached in ``--out/latents``). The students are
saved as pipelines whose recorded sampler is the distilled one
(``--out/steps_<N>/student`` for progressive rounds, ``--out/student`` for consistency); sample
them with ``ddpm-lib sample FOLDER --sampler saved``. An interrupted run resumes where it stopped
when started again with the same options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._common import CLIError, add_threads_option, device_of, load_pipeline

METHODS = ("progressive", "consistency")


def _power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def _guidance(text: str | None) -> Any:
    """``--guidance-scale``: ``W`` or ``W_MIN,W_MAX``."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise CLIError(f"--guidance-scale must be W or W_MIN,W_MAX; got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 0 or values[0] > values[-1]:
        raise CLIError(f"--guidance-scale must be W >= 0 or W_MIN,W_MAX with 0 <= W_MIN <= "
                       f"W_MAX; got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _check(args: argparse.Namespace) -> None:
    """The checks of options together (before any work or write)."""
    if not Path(args.source).exists():
        raise FileNotFoundError(f"{args.source!r} does not exist")
    if args.method == "progressive":
        if not _power_of_two(args.steps):
            raise CLIError(f"--steps must be a power of two for progressive rounds; got "
                           f"{args.steps}")
        if not _power_of_two(args.teacher_steps) or args.teacher_steps <= args.steps:
            raise CLIError(f"--teacher-steps must be a power of two above --steps {args.steps}; "
                           f"got {args.teacher_steps}")
        for option in ("levels", "solver", "distance", "target_decay"):
            if getattr(args, option) is not None:
                raise CLIError(f"--{option.replace('_', '-')} is an option of --method "
                               "consistency")
    else:
        if args.teacher_steps != DEFAULT_TEACHER_STEPS:
            raise CLIError("--teacher-steps is an option of --method progressive")
        levels = args.levels or 40
        if args.steps > levels:
            raise CLIError(f"--steps must be at most --levels {levels}; got {args.steps}")
        if args.target_decay is not None and not 0 <= args.target_decay < 1:
            raise CLIError(f"--target-decay must be in [0, 1); got {args.target_decay}")


def _dataset(args: argparse.Namespace, pipe: Any, out: Path) -> Any:
    """The training data of the run (its ``cli_args.json``), or of ``--data``."""
    from .checks import TRAIN_ARGS_FILE, TRAIN_DEFAULTS
    from .train import _dataset as build

    options = dict(TRAIN_DEFAULTS)
    saved = Path(args.source) / TRAIN_ARGS_FILE
    if saved.is_file():
        options.update(json.loads(saved.read_text()))
    elif args.data is None:
        raise CLIError(f"{args.source} records no training data ({TRAIN_ARGS_FILE}): give --data")
    for key in ("data", "data_root", "image_size", "dataset_size"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    options["autoencoder"] = None  # a latent run's latents come from the teacher's autoencoder
    dataset, _, _ = build(options, out, args.no_progress)
    if pipe.latent is not None:
        dataset = pipe.latent.encode_dataset(dataset, out / "latents",
                                             batch_size=args.batch_size,
                                             progress=not args.no_progress)
    return dataset


def run(args: argparse.Namespace) -> None:
    """Distil the model of ``MODEL`` into a student of ``--steps`` sampling steps."""
    from ddpm_lib.distillation import distill_consistency, distill_progressive

    _check(args)
    device = device_of(args.device)
    pipe = load_pipeline(args.source, device)
    out = Path(args.out) if args.out is not None else Path(args.source) / f"distill_{args.method}"
    dataset = _dataset(args, pipe, out)
    trainer_options = {
        "batch_size": args.batch_size, "lr": args.lr, "ema_decay": args.ema_decay,
        "checkpoint_every": args.checkpoint_every, "progress": not args.no_progress,
        "device": device, "random_flip": False if pipe.latent is not None else None,
    }
    bundle: dict[str, Any] = {}
    if pipe.latent is not None:
        latent = pipe.latent
        bundle = {"autoencoder": latent.autoencoder, "scale_factor": latent.scale_factor}
        shift_scale = latent.channel_stats
        if shift_scale is not None:
            bundle.update(latent_shift=shift_scale[0], latent_scale=shift_scale[1])
    common = {"teacher_prediction": pipe.prediction, "prediction": args.prediction,
              "trainer_options": trainer_options, "seed": args.seed, "bundle_options": bundle,
              "guidance_scale": _guidance(args.guidance_scale)}
    print(f"ddpm-lib distill: {args.method} distillation of {pipe.source} to {args.steps} "
          f"step(s) -> {out}", file=sys.stderr)
    if args.method == "progressive":
        result = distill_progressive(
            pipe.model, pipe.schedule, dataset, out_dir=out, teacher_steps=args.teacher_steps,
            final_steps=args.steps, steps_per_round=args.train_steps, **common)
    else:
        options = {key: value for key, value in (
            ("num_levels", args.levels), ("solver", args.solver), ("distance", args.distance),
            ("target_decay", args.target_decay)) if value is not None}
        result = distill_consistency(
            pipe.model, pipe.schedule, dataset, out_dir=out, train_steps=args.train_steps,
            num_steps=args.steps, **common, **options)
    for folder, steps, cost in zip(result.students, result.steps, result.training_steps):
        print(f"ddpm-lib distill: {steps}-step student ({cost} training steps) -> {folder}",
              file=sys.stderr)
    print(f"ddpm-lib distill: sample it with `ddpm-lib sample {result.students[-1]} "
          "--sampler saved`", file=sys.stderr)


DEFAULT_TEACHER_STEPS = 64


def add_parser(subparsers: Any) -> None:
    """Register ``distill`` and its options."""
    parser = subparsers.add_parser(
        "distill",
        help="distil a trained model into a 1-8 step sampler (progressive / consistency)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog=(
            "examples:\n"
            "  ddpm-lib distill runs/shapes --method progressive --steps 4 --train-steps 2000\n"
            "  ddpm-lib distill runs/shapes --method consistency --steps 2 --out runs/cd\n"
            "  ddpm-lib sample runs/cd/student --sampler saved --out grid.png"
        ),
    )
    parser.add_argument("source", metavar="MODEL", help="the teacher: a training --out folder, "
                        "a checkpoint folder or a pipeline folder")
    parser.add_argument("--method", choices=METHODS, required=True,
                        help="progressive: halve the DDIM steps round by round (Salimans & Ho "
                        "2022); consistency: consistency distillation (Song et al. 2023)")
    parser.add_argument("--steps", type=int, default=4,
                        help="the student's sampling steps (progressive: a power of two; "
                        "default: 4)")
    parser.add_argument("--out", default=None, help="the run's folder (default: "
                        "MODEL/distill_METHOD)")
    parser.add_argument("--train-steps", type=int, default=2000,
                        help="optimizer steps (of each round, progressive) (default: 2000)")
    parser.add_argument("--teacher-steps", type=int, default=DEFAULT_TEACHER_STEPS,
                        help="progressive: the first teacher's DDIM steps, a power of two "
                        f"(default: {DEFAULT_TEACHER_STEPS})")
    parser.add_argument("--prediction", choices=("eps", "x0", "v"), default=None,
                        help="what the student predicts (default: the teacher's; progressive "
                        "distillation to few steps wants v or x0)")
    parser.add_argument("--guidance-scale", default=None, metavar="W[,W_MAX]",
                        help="guided distillation of a class-conditional model: the teacher's "
                        "guidance scale, or a range drawn per sample; the student reads it "
                        "as an input")
    cd = parser.add_argument_group("consistency distillation")
    cd.add_argument("--levels", type=int, default=None,
                    help="levels of the discretised ODE (default: 40)")
    cd.add_argument("--solver", default=None,
                    choices=("heun", "ddim", "dpm-solver", "unipc", "deis", "pndm"),
                    help="the teacher's ODE step between levels (default: ddim)")
    cd.add_argument("--distance", choices=("l2", "pseudo_huber"), default=None,
                    help="the distance of the consistency loss (default: l2)")
    cd.add_argument("--target-decay", type=float, default=None,
                    help="EMA decay of the target network (default: 0.95)")
    data = parser.add_argument_group("data (default: the run's own, from its cli_args.json)")
    data.add_argument("--data", default=None, help="shapes, captioned-shapes, cifar10, mnist "
                      "or an image folder")
    data.add_argument("--data-root", default=None, help="where torchvision datasets live")
    data.add_argument("--image-size", type=int, default=None, help="resize images to this")
    data.add_argument("--dataset-size", type=int, default=None, help="images of the built-in "
                      "datasets")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch-size", type=int, default=64, help="default: 64")
    optim.add_argument("--lr", type=float, default=1e-4, help="default: 1e-4")
    optim.add_argument("--ema-decay", type=float, default=0.995, help="default: 0.995")
    optim.add_argument("--checkpoint-every", type=int, default=500, help="default: 500")
    optim.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_option(parser)
    parser.set_defaults(func=run)
