"""Benchmark: cascaded diffusion (issue 27), in parts chosen with ``--part``.

Every part reads the cascade of ``examples/super_resolution.py`` (``RUN/cascade``, an 8x8
base and an 8->32 upsampler trained on the built-in shapes) and scores on held-out shapes
(a dataset seed neither stage trained on).

* ``quality``: the upsampler against bicubic on real low-resolution images: each held-out
  32x32 image is area-downsampled to 8x8, then enlarged by the upsampler (at its sampling
  augmentation level) and by bicubic. Printed: the Fréchet distance to other real 32x32
  images (features: the first ``--pca`` principal components of real 32x32 shapes, fitted on
  a third set of images; the distance between two real sets is the floor), the consistency
  PSNR (the output area-downsampled back to 8x8 against the 8x8 input; goal >= 30 dB) and the
  PSNR against the original. Goal: the upsampler's distance well below bicubic's.
* ``level``: the sampling-time augmentation level ``s`` of the whole cascade: the base model
  samples 8x8 images once, the upsampler enlarges them at each level of ``--levels``; the
  Fréchet distance of the 32x32 outputs to real images is printed per level (with bicubic
  enlargements of the same base samples). The best level is the library's default
  (``ddpm_lib.augmentation.DEFAULT_SAMPLE_LEVEL``).
* ``cost``: the time per sample of the two-stage cascade (8x8 base, then 8->32, each with
  ``--steps`` DDIM steps) against a single model sampled at 32x32 (the base's architecture
  at 32x32, random weights: the time does not depend on them), interleaved in one process;
  wall-clock and process CPU medians and their ratio.

Usage::

    python examples/super_resolution.py
    python benchmarks/bench_super_resolution.py --part quality --run runs/super_resolution
    python benchmarks/bench_super_resolution.py --part level --levels 0,25,50,100,200,350,500
    python benchmarks/bench_super_resolution.py --part cost --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_unet import interleaved_times

from ddpm_lib import Cascade, NoiseSchedule, UNet
from ddpm_lib.cascade import condition_kwargs
from ddpm_lib.metrics import frechet_distance, psnr
from ddpm_lib.samplers import DDIMSampler
from ddpm_lib.shapes import ShapesDataset
from ddpm_lib.super_resolution import downsample, upsample

HELD_OUT_SEED, REFERENCE_SEED, PCA_SEED = 1000, 2000, 3000


def real_images(count: int, size: int, seed: int) -> torch.Tensor:
    dataset = ShapesDataset(size=count, image_size=size, seed=seed)
    return torch.stack([dataset[i][0] for i in range(count)])


class PCAFeatures:
    """The first ``k`` principal components of real images, flattened: a fixed linear feature
    map for Fréchet distances on small images (no Inception weights needed)."""

    def __init__(self, images: torch.Tensor, k: int) -> None:
        flat = images.flatten(1).double()
        self.mean = flat.mean(0)
        _, _, v = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.components = v[:k].T  # (D, k)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> float:
        fa, fb = ((x.flatten(1).double() - self.mean) @ self.components for x in (a, b))
        return frechet_distance(fa.mean(0), torch.cov(fa.T), fb.mean(0), torch.cov(fb.T))


def upsampler_outputs(cascade: Cascade, low: torch.Tensor, level: int | None, steps: int,
                      batch: int, seed: int) -> torch.Tensor:
    """The last stage's 32x32 outputs for the 8x8 conditions ``low`` at augmentation ``level``."""
    stage = cascade.stages[-1]
    pipe = stage.pipeline
    sampler = pipe.make_sampler("ddim", num_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for start in range(0, low.shape[0], batch):
        cond = low[start:start + batch]
        kwargs = condition_kwargs(cond, stage.augmentation, level=level, generator=generator)
        outputs.append(sampler.sample(pipe.model, (cond.shape[0], *pipe.sample_shape),
                                      generator=generator, model_kwargs=kwargs))
    return torch.cat(outputs)


def part_quality(args: argparse.Namespace, cascade: Cascade) -> None:
    size, factor = cascade.output_shape[1], cascade.factors[-1]
    held_out = real_images(args.num, size, HELD_OUT_SEED)
    reference = real_images(args.num, size, REFERENCE_SEED)
    features = PCAFeatures(real_images(args.pca_images, size, PCA_SEED), args.pca)
    low = downsample(held_out, factor)
    start, cpu = time.perf_counter(), time.process_time()
    sr = upsampler_outputs(cascade, low, None, args.steps, args.batch, args.seed)
    print(f"upsampled {args.num} held-out images in {time.process_time() - cpu:.0f} CPU s "
          f"({time.perf_counter() - start:.0f} s), {args.steps} DDIM steps, level "
          f"{cascade.stages[-1].augmentation.sample_level}")
    bicubic = upsample(low, factor)
    print(f"{'':10s} {'FD to real':>11s} {'consistency':>12s} {'PSNR':>8s}")
    print(f"{'real':10s} {features.distance(held_out, reference):11.2f} {'':>12s} {'':>8s}")
    for name, images in (("upsampler", sr), ("bicubic", bicubic)):
        consistency = psnr(downsample(images, factor), low).mean().item()
        fidelity = psnr(images, held_out).mean().item()
        print(f"{name:10s} {features.distance(images, reference):11.2f} "
              f"{consistency:9.2f} dB {fidelity:5.2f} dB")


def part_level(args: argparse.Namespace, cascade: Cascade) -> None:
    size, factor = cascade.output_shape[1], cascade.factors[-1]
    reference = real_images(args.num, size, REFERENCE_SEED)
    features = PCAFeatures(real_images(args.pca_images, size, PCA_SEED), args.pca)
    base = cascade.stages[0].pipeline
    low = base.sample(args.num, sampler=base.make_sampler("ddim", num_steps=args.steps),
                      generator=torch.Generator().manual_seed(args.seed))
    print(f"{args.num} base samples 8x8; FD to real 32x32 of bicubic enlargements: "
          f"{features.distance(upsample(low, factor), reference):.2f}; of real images: "
          f"{features.distance(real_images(args.num, size, HELD_OUT_SEED), reference):.2f}")
    results = {}
    for level in (int(text) for text in args.levels.split(",")):
        cpu = time.process_time()
        images = upsampler_outputs(cascade, low, level, args.steps, args.batch, args.seed + 1)
        results[level] = features.distance(images, reference)
        consistency = psnr(downsample(images, factor), low).mean().item()
        print(f"level {level:4d}: FD {results[level]:7.2f}, consistency {consistency:5.2f} dB "
              f"({time.process_time() - cpu:.0f} CPU s)")
    best = min(results, key=results.__getitem__)
    print(f"best level: {best} (FD {results[best]:.2f})")


def part_cost(args: argparse.Namespace, cascade: Cascade) -> None:
    size = cascade.output_shape[1]
    base_model = cascade.stages[0].pipeline.model
    single = UNet(**{**base_model.config, "image_size": size}).eval()
    schedule = NoiseSchedule.linear(1000)
    sampler = DDIMSampler(schedule, num_steps=args.steps)
    n = args.batch

    def run_cascade() -> None:
        low = cascade.stages[0].pipeline.sample(n, sampler=sampler)
        stage = cascade.stages[-1]
        sampler.sample(stage.pipeline.model, (n, 3, size, size),
                       model_kwargs=condition_kwargs(low, stage.augmentation))

    def run_single() -> None:
        sampler.sample(single, (n, 3, size, size))

    with torch.no_grad():
        wall, cpu = interleaved_times({"cascade": run_cascade, "single": run_single},
                                      warmup=1, repeats=args.repeats)
    for name, times in (("wall", wall), ("CPU", cpu)):
        c, s = statistics.median(times["cascade"]), statistics.median(times["single"])
        print(f"{name}: cascade {c / n * 1e3:.1f} ms/sample, single 32x32 model "
              f"{s / n * 1e3:.1f} ms/sample, cascade / single = {c / s:.2f}")
    params = sum(p.numel() for p in single.parameters()) / 1e6
    print(f"(single model: the base architecture at {size}x{size}, {params:.2f}M parameters; "
          f"{n} samples a run, {args.steps} DDIM steps each stage)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("quality", "level", "cost", "all"), default="all")
    parser.add_argument("--run", default="runs/super_resolution",
                        help="the example's output folder (its cascade/)")
    parser.add_argument("--num", type=int, default=300, help="images scored (default: 300)")
    parser.add_argument("--levels", default="0,25,50,100,200,350,500",
                        help="augmentation levels of --part level")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    parser.add_argument("--batch", type=int, default=100, help="images per call (default: 100)")
    parser.add_argument("--pca", type=int, default=32, help="PCA features (default: 32)")
    parser.add_argument("--pca-images", type=int, default=3000,
                        help="real images the PCA is fitted on (default: 3000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of --part cost")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cascade = Cascade.from_pretrained(Path(args.run) / "cascade")
    print(f"{cascade!r} from {args.run}")
    with torch.no_grad():
        for name, part in (("quality", part_quality), ("level", part_level),
                           ("cost", part_cost)):
            if args.part in (name, "all"):
                print(f"--- part {name}")
                part(args, cascade)


if __name__ == "__main__":
    main()
