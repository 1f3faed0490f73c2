"""``ddpm-lib train-autoencoder``: train a KL autoencoder for latent diffusion, then report
its reconstruction PSNR on held-out images."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sized
from typing import Any, cast

from ._common import CLIError, add_threads_option
from .checks import int_list


def run(args: argparse.Namespace) -> None:
    """Train the autoencoder of ``args`` and write ``OUT/reconstructions.png``."""
    import math
    from pathlib import Path

    import torch

    from ddpm_lib import AutoencoderKL, AutoencoderLoss
    from ddpm_lib.data import build_dataset, save_grid
    from ddpm_lib.training import Trainer

    out = Path(args.out)
    dataset = build_dataset(args.data, image_size=args.image_size or 32, class_labels=False,
                            size=args.dataset_size, seed=args.seed)
    first = dataset[0]
    image = first[0] if isinstance(first, (tuple, list)) else first
    channel_mults = int_list("channel_mults", args.channel_mults)
    torch.manual_seed(args.seed)
    autoencoder = AutoencoderKL(
        in_channels=image.shape[0], latent_channels=args.latent_channels,
        base_channels=args.base_channels, channel_mults=channel_mults,
        num_res_blocks=args.num_res_blocks, norm_groups=math.gcd(32, args.base_channels),
    )
    factor = 2 ** (len(channel_mults) - 1)
    loss_options: dict[str, Any] = {"kl_weight": args.kl_weight, "l2_weight": args.l2_weight}
    if args.adversarial_start is not None:
        loss_options.update(discriminator=True, adversarial_start=args.adversarial_start)
    loss_fn = AutoencoderLoss(**loss_options)
    trainer = Trainer(
        autoencoder, loss_fn, dataset, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision, out_dir=out, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, sample_every=None, seed=args.seed,
        num_workers=args.num_workers, random_flip=True, progress=not args.no_progress,
    )
    if trainer.dist.is_main:
        start = "resuming" if trainer.resumed_from else "starting"  # the Trainer says from where
        print(f"ddpm-lib train-autoencoder: {start}; {len(cast(Sized, dataset))} images "
              f"{'x'.join(map(str, image.shape))} -> latents {args.latent_channels}x"
              f"{image.shape[1] // factor}x{image.shape[2] // factor} (f={factor}), "
              f"{sum(p.numel() for p in autoencoder.parameters()) / 1e6:.2f}M parameters -> {out}",
              file=sys.stderr)
    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    trainer.train(args.steps, max_seconds=max_seconds)
    if trainer.dist.is_main:
        # held-out images: the same generator with another seed (or the first of the folder)
        held_out = (build_dataset("shapes", image_size=image.shape[1], size=16, seed=args.seed + 1)
                    if args.data == "shapes" else dataset)
        images = torch.stack([held_out[i][0] if isinstance(held_out[i], (tuple, list))
                              else held_out[i] for i in range(min(16, len(cast(Sized, held_out))))])
        model = cast(AutoencoderKL, trainer.ema_model).eval()
        images = images.to(next(model.parameters()).device)
        psnr = _reconstruction_psnr(model, images)
        with torch.no_grad():
            reconstructed = model.decode(model.encode(images).mode())
        pairs = torch.stack([images, reconstructed], 1).flatten(0, 1)  # original, reconstruction
        grid = save_grid(pairs, out / "reconstructions.png", nrow=8,
                         upscale=max(1, 64 // image.shape[1]))
        print(f"ddpm-lib train-autoencoder: done at step {trainer.step}; reconstruction PSNR "
              f"{psnr:.2f} dB on {len(images)} held-out images ({grid}: original, "
              f"reconstruction); EMA autoencoder {out / 'ema_model'} "
              f"(use: ddpm-lib train --autoencoder {out} ...)", file=sys.stderr)
        if not math.isfinite(psnr):
            raise CLIError("the reconstructions are not finite; lower --lr")


def _reconstruction_psnr(autoencoder: Any, images: Any) -> float:
    """Mean PSNR in dB of ``decode(encode(x).mode())`` over images in ``[-1, 1]`` (peak 2)."""
    import torch

    from ddpm_lib.metrics import psnr

    with torch.no_grad():
        reconstructed = autoencoder.decode(autoencoder.encode(images).mode()).clamp(-1, 1)
    return float(psnr(reconstructed, images).mean())


def add_parser(subparsers: Any) -> None:
    """Register ``train-autoencoder`` and its options."""
    parser = subparsers.add_parser(
        "train-autoencoder",
        help="train a KL autoencoder for latent diffusion (resumes by itself)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train an AutoencoderKL (Rombach et al. 2022) with AutoencoderLoss (L1 reconstruction,\n"
            "KL term, optional PatchGAN discriminator) on the built-in shapes or a folder of\n"
            "images. Checkpoints, log.jsonl and the final EMA autoencoder (OUT/ema_model) go to\n"
            "--out; at the end OUT/reconstructions.png shows held-out images beside their\n"
            "reconstructions and the PSNR is printed. Then train a latent diffusion model with\n"
            "ddpm-lib train --autoencoder OUT."
        ),
        epilog=(
            "example:\n"
            "  ddpm-lib train-autoencoder --out runs/ae --image-size 32 --channel-mults 1,2,2 \\\n"
            "      --steps 4000 && ddpm-lib train --autoencoder runs/ae --out runs/ldm \\\n"
            "      --class-conditional --base-channels 64 --channel-mults 1,2 --steps 20000"
        ),
    )
    parser.add_argument("--data", default="shapes", metavar="SOURCE",
                        help="'shapes' (built in) or a folder of images (default: shapes)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="resize and center-crop to this size (shapes: default 32)")
    parser.add_argument("--dataset-size", type=int, default=10_000, metavar="N",
                        help="number of built-in shapes images (default: 10000)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--steps", type=int, default=20_000, help="optimizer steps (default: 20000)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop earlier after this long (a checkpoint is written)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default: 2e-4)")
    parser.add_argument("--warmup-steps", type=int, default=500,
                        help="linear learning-rate warm-up (default: 500)")
    parser.add_argument("--grad-clip", type=float, default=1.0,
                        help="gradient norm clipping, 0 for none (default: 1)")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="EMA decay of the saved weights (default: 0.999)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--latent-channels", type=int, default=4,
                        help="channels of the latents (default: 4)")
    parser.add_argument("--base-channels", type=int, default=64, help="width (default: 64)")
    parser.add_argument("--channel-mults", default="1,2,2", metavar="LIST",
                        help="width multiplier per resolution; f = 2^(len - 1) (default: 1,2,2: f=4)")
    parser.add_argument("--num-res-blocks", type=int, default=1,
                        help="residual blocks per resolution (default: 1)")
    parser.add_argument("--kl-weight", type=float, default=1e-6,
                        help="weight of the KL term (default: 1e-6, LDM's KL-f4/f8)")
    parser.add_argument("--l2-weight", type=float, default=0.0,
                        help="weight of an extra mean squared error term (default: 0, L1 only)")
    parser.add_argument("--adversarial-start", type=int, default=None, metavar="STEP",
                        help="add a PatchGAN discriminator, switched on after this step "
                        "(LDM: 50001; default: no discriminator)")
    parser.add_argument("--log-every", type=int, default=100, help="steps between log lines")
    parser.add_argument("--checkpoint-every", type=int, default=1000,
                        help="steps between checkpoints (default: 1000)")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N",
                        help="data loading processes (default: 0 on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_option(parser)
    parser.set_defaults(func=run)
