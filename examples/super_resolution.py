"""A cascade on the built-in shapes: an 8x8 base model and an 8->32 super-resolution stage
===========================================================================================

Cascaded diffusion (Ho et al. 2022; GLIDE's and Imagen's upsamplers) on two CPU cores, no
download: a UNet learns the built-in shapes at 8x8; a second UNet, built with
``cond_channels=3``, learns to turn an 8x8 image into a 32x32 one from
:class:`ddpm_lib.SuperResolutionPairs` (area-downsampled copies of the 32x32 shapes), with
noise conditioning augmentation (:class:`ddpm_lib.NoiseAugmentation`: the condition is
corrupted at a random level ``s`` in ``0..30`` of T = 1000 and the level is embedded like
the timestep). A :class:`ddpm_lib.Cascade` then samples both stages in one call. Outputs,
under ``runs/super_resolution`` (``-quick`` in quick mode):

- ``grid.png``: one sample a row: the base sample (8x8, enlarged), the cascade's 32x32 output
  and the bicubic enlargement of the base sample;
- ``cascade/``: the whole cascade (``Cascade.save_pretrained``), which
  ``benchmarks/bench_super_resolution.py`` and ``ddpm-lib sample runs/super_resolution/cascade``
  read.

Each stage trains for a fixed number of steps (about 2.5 + 4.5 CPU minutes on one thread;
the figures in the guide were measured on these defaults). Running it again resumes each stage from its last
checkpoint. ``DDPM_LIB_QUICK=1`` shrinks everything to seconds (the outputs are then noise)::

    python examples/super_resolution.py
    ddpm-lib sample runs/super_resolution/cascade --num 8 --out cascade.png
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _common import QUICK, run_folder  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser

from ddpm_lib import (
    Cascade,
    CascadeStage,
    DiffusionPipeline,
    NoiseAugmentation,
    NoiseSchedule,
    SimpleLoss,
    SuperResolutionPairs,
    Trainer,
    UNet,
)
from ddpm_lib.data import save_grid
from ddpm_lib.shapes import ShapesDataset
from ddpm_lib.super_resolution import upsample

BASE_SIZE, FACTOR = 8, 4
#: the augmentation of the example's upsampler: levels 0..30 of DDPM's linear T = 1000. In
#: 400-step trials a wide range taught the upsampler to ignore its condition: its eps loss at
#: t = 100 with the conditions shuffled over the batch was 1.01x the true one's for 0..500,
#: 1.05x for 0..250, 1.27x for 0..100, 1.76x for 0..30 and 2.67x without augmentation.
MAX_LEVEL = 30


def base_unet() -> UNet:
    """The 8x8 base model: unconditional, two levels, no attention."""
    return UNet(in_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(), image_size=BASE_SIZE, dropout=0.0, norm_groups=8)


def sr_unet() -> UNet:
    """The 8->32 upsampler: the 8x8 image is resized (bilinear) and concatenated to x_t."""
    return UNet(in_channels=3, cond_channels=3, base_channels=16, channel_mults=(1, 2, 2),
                num_res_blocks=1, attention_resolutions=(), image_size=BASE_SIZE * FACTOR,
                dropout=0.0, norm_groups=8)


def train_stage(model: UNet, dataset, out: Path, steps: int, batch_size: int, seed: int,
                progress: bool, augmentation: NoiseAugmentation | None = None) -> Trainer:
    schedule = NoiseSchedule.linear(1000)
    trainer = Trainer(
        model, SimpleLoss(schedule), dataset, batch_size=batch_size, lr=2e-3,
        warmup_steps=100, ema_decay=0.995, out_dir=out, log_every=100,
        checkpoint_every=500, seed=seed, progress=progress, tensorboard=False,
        noise_augmentation=augmentation,
    )
    trainer.train(steps)
    return trainer


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = example_parser(__doc__)
    default_out = run_folder("super_resolution")
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument("--base-steps", type=int, default=20 if QUICK else 2000,
                        help="optimizer steps of the base model (default: 2000)")
    parser.add_argument("--sr-steps", type=int, default=20 if QUICK else 2000,
                        help="optimizer steps of the upsampler (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="batch size of the base model (default: 32)")
    parser.add_argument("--sr-batch-size", type=int, default=16,
                        help="batch size of the upsampler (default: 16)")
    parser.add_argument("--sample-steps", type=int, default=4 if QUICK else 50,
                        help="DDIM steps of each stage (default: 50)")
    parser.add_argument("--noise-level", type=int, default=None,
                        help="sampling augmentation level of the upsampler (default: the "
                        "library's, ddpm_lib.augmentation.DEFAULT_SAMPLE_LEVEL)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    wall, cpu = time.perf_counter(), time.process_time()
    size = 200 if QUICK else 20_000
    progress = not args.no_progress

    # 1. the base model on 8x8 shapes
    torch.manual_seed(args.seed)
    base = train_stage(base_unet(), ShapesDataset(size=size, image_size=BASE_SIZE,
                                                  seed=args.seed),
                       out / "base", args.base_steps, args.batch_size, args.seed, progress)
    # 2. the upsampler on (32x32, 8x8) pairs of other shapes, noise-augmented
    torch.manual_seed(args.seed + 1)
    augmentation = NoiseAugmentation(max_level=MAX_LEVEL, sample_level=args.noise_level)
    pairs = SuperResolutionPairs(ShapesDataset(size=size, image_size=BASE_SIZE * FACTOR,
                                               seed=args.seed + 1), FACTOR)
    sr = train_stage(sr_unet(), pairs, out / "sr", args.sr_steps, args.sr_batch_size,
                     args.seed + 1, progress, augmentation)
    train_cpu = time.process_time() - cpu
    print(f"trained: base {base.step} steps, upsampler {sr.step} steps "
          f"({train_cpu / 60:.1f} CPU min, {(time.perf_counter() - wall) / 60:.1f} min)")

    # 3. the cascade: both stages sampled with DDIM, the upsampler at the augmentation level
    sampler = {"name": "ddim", "num_steps": args.sample_steps}
    schedule = NoiseSchedule.linear(1000)
    cascade = Cascade([
        DiffusionPipeline(base.ema_model.eval(), schedule, sampler=sampler),
        CascadeStage(DiffusionPipeline(sr.ema_model.eval(), schedule, sampler=sampler),
                     augmentation=augmentation),
    ])
    cascade.save_pretrained(out / "cascade")
    count = 8
    start = time.process_time()
    low, high = cascade.sample(count, generator=torch.Generator().manual_seed(args.seed),
                               return_stages=True, progress=progress)
    sample_cpu = time.process_time() - start
    rows = torch.stack([upsample(low, FACTOR, "nearest"), high, upsample(low, FACTOR)], dim=1)
    grid = save_grid(rows.flatten(0, 1), out / "grid.png", nrow=3, upscale=2)
    print(f"grid: {grid} (rows: base sample 8x8 | cascade 32x32 | bicubic); {count} samples "
          f"through both stages in {sample_cpu:.1f} CPU s")
    total_cpu = time.process_time() - cpu
    print(f"done in {total_cpu / 60:.1f} CPU min ({(time.perf_counter() - wall) / 60:.1f} min)")
    return {"base_steps": base.step, "sr_steps": sr.step, "cpu_minutes": total_cpu / 60}


if __name__ == "__main__":
    main()
