"""``ddpm-lib bpd``: the negative log-likelihood bound of a trained model on a dataset, in
bits/dim, with its standard error and a per-term breakdown.

The model is read by the one loader (:func:`ddpm_lib.cli._common.load_eval_pipeline`) with its
saved prediction, variance and schedule (``--prediction`` / ``--variance`` override them).
"""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    CLIError,
    add_model_options,
    device_of,
    load_eval_pipeline,
    read_image_array,
    warn_small,
)


def run(args: argparse.Namespace) -> None:
    """Print the bits/dim of ``--checkpoint`` on the data."""
    import os

    import torch

    from ddpm_lib.metrics import ImageFolder, nll_bits_per_dim
    from ddpm_lib.pipeline import model_config

    device = device_of(args.device)
    pipe = load_eval_pipeline(args.checkpoint, device, args)
    model = pipe.model
    if pipe.latent is not None:
        raise CLIError(f"{args.checkpoint} is a latent model: its bits/dim would be those of the "
                       "latents, not of the images; bpd evaluates pixel-space models")
    if os.path.isdir(args.data):
        channels = model_config(model).get("in_channels", 3)
        data = ImageFolder(args.data, mode="L" if channels == 1 else "RGB")
    elif args.data.endswith((".npy", ".npz")):
        data = read_image_array(args.data)
    else:
        raise CLIError(f"{args.data!r} is neither an image folder nor a .npy / .npz image batch")
    num_classes = pipe.num_classes
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
        pipe.schedule,
        data,
        variance=pipe.variance,
        prediction=pipe.prediction,
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
    warn_small(
        "bpd",
        result.num_samples,
        "papers report bits/dim on the whole test set (10000 images for CIFAR-10)",
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


def add_parser(subparsers: Any) -> None:
    """Register ``bpd`` and its options."""
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
    add_model_options(parser)
    parser.set_defaults(func=run)
