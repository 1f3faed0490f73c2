"""
Quick start: a class-conditional DDPM on the built-in shapes
=============================================================

Train a small class-conditional DDPM on a laptop CPU, then sample it with classifier-free
guidance. In about 8 minutes on two CPU cores (no GPU, no download) this trains a 16x16 UNet on
coloured circles, squares, triangles and crosses, then writes ``runs/quickstart/samples.png``:
one column per class, drawn with DDPM (respaced to 100 steps) and classifier-free guidance 2.
Running it again resumes from the last checkpoint; ``--steps`` trains further.

.. code-block:: bash

    pip install -e . && python examples/quickstart.py

Every piece is a public class of ddpm_lib, so this file is also a template for your own runs
(its only other import, examples/_common.py, holds the quick mode and --help of the examples).
With ``DDPM_LIB_QUICK=1`` (as when the documentation is built) it trains for 40 steps and
samples with 10, into ``runs/quickstart-quick/``: 40 steps teach the network nothing yet, so
the grid below is still coloured noise. It shows that the pipeline runs end to end; the full run
(2000 steps) draws recognisable shapes in every column.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddpm_lib import DDPMSampler, NoiseSchedule, SimpleLoss, Trainer, UNet
from ddpm_lib.data import ShapesDataset, save_grid


# DDPM_LIB_QUICK=1: a few seconds of training and sampling (the docs build runs this file).
from _common import QUICK, run_folder  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__)
    default_out = run_folder("quickstart")
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument("--steps", type=int, default=40 if QUICK else 2000,
                        help="optimizer steps (default: 2000; 40 with DDPM_LIB_QUICK=1)")
    parser.add_argument("--sampling-steps", type=int, default=10 if QUICK else 100,
                        help="DDPM steps of the final grid (default: 100; 10 with DDPM_LIB_QUICK=1)")
    parser.add_argument("--max-minutes", type=float, default=8.0,
                        help="stop training earlier after this long, so that a slow or busy "
                        "machine still finishes in time (default: 8)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--guidance-scale", type=float, default=2.0,
                        help="classifier-free guidance of the final grid (default: 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default: 1: convolutions this small gain little from a "
                        "second thread, and one thread is not stalled by other busy processes)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", default=QUICK,
                        help="hide the progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)  # the model's initialisation and dropout
    dataset = ShapesDataset(size=20_000, image_size=16, seed=args.seed)  # (3, 16, 16) in [-1, 1]
    schedule = NoiseSchedule.linear(1000)
    model = UNet(
        in_channels=3, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(4,), image_size=16, dropout=0.0, num_classes=len(dataset.classes),
        norm_groups=8,
    )
    # Ancestral DDPM sampling, respaced to 100 steps by default: the added noise forgives the errors of a
    # briefly trained model better than deterministic samplers (DDIM, DPM-Solver) do.
    sampler = DDPMSampler(schedule, num_steps=args.sampling_steps)
    trainer = Trainer(
        model, SimpleLoss(schedule), dataset,
        batch_size=args.batch_size, lr=1e-3, warmup_steps=100, ema_decay=0.995,
        out_dir=out, log_every=100, checkpoint_every=500, sample_every=None, sampler=sampler,
        seed=args.seed, class_dropout=0.1, guidance_scale=args.guidance_scale,
        progress=not args.no_progress,
    )
    print(f"training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter UNet "
          f"on {len(dataset)} 16x16 shapes, {args.steps} steps of {args.batch_size} images -> {out}")
    step = trainer.train(args.steps, max_seconds=args.max_minutes * 60)
    if step < args.steps:
        print(f"stopped at step {step} of {args.steps} after {args.max_minutes:g} minutes (a slow "
              "or busy machine); run the same command again to continue from there")

    # 8 samples of each class, one class per column, from the EMA weights.
    num_classes = len(dataset.classes)
    labels = torch.arange(8 * num_classes) % num_classes
    generator = torch.Generator().manual_seed(args.seed)
    images = trainer.sample(len(labels), labels=labels, generator=generator)
    grid = save_grid(images, out / "samples.png", nrow=num_classes, upscale=4)
    minutes = (time.perf_counter() - start) / 60
    print(f"done in {minutes:.1f} min: {grid} (columns: {', '.join(dataset.classes)})")
    return grid


if __name__ == "__main__":
    main()
