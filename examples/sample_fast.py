"""DDPM vs DDIM vs DPM-Solver++ on the same model: quality against model calls and time.

Without arguments the model is the exact noise predictor for Gaussian "images" (a fixed mean
image and a per-pixel standard deviation), so every sampler can be scored against the true
data law: the per-pixel 2-Wasserstein distance between the samples' Gaussian fit and the
data's, averaged over pixels (0 is perfect; Monte-Carlo noise alone gives about
``std / sqrt(2 * batch)``). With ``--unet DIR`` a trained ``ddpm_lib.UNet`` is sampled
instead and only timings (and an image grid with ``--out``) are reported.

    PYTHONPATH=. python examples/sample_fast.py
    PYTHONPATH=. python examples/sample_fast.py --batch 64 --out grid.png
    PYTHONPATH=. python examples/sample_fast.py --unet runs/cifar10/unet --out grid.png
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ddpm_lib import GaussianOracle, NoiseSchedule
from ddpm_lib.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler


def gaussian_images(
    schedule: NoiseSchedule, size: int
) -> tuple[GaussianOracle, torch.Tensor, float]:
    """The exact eps-model for data N(mean_image, 0.3^2): a smooth colour pattern."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    mean = torch.stack([0.5 * torch.sin(3 * x), 0.5 * torch.cos(2 * y), 0.4 * x * y])  # (3, H, W)
    std = 0.3
    return GaussianOracle(schedule, mean=mean, std=std), mean, std


def wasserstein(samples: torch.Tensor, mean: torch.Tensor, std: float) -> float:
    """Mean over pixels of W2(N(m, s^2), N(mu, std^2)) = sqrt((m - mu)^2 + (s - std)^2)."""
    m, s = samples.double().mean(0), samples.double().std(0)
    return ((m - mean.double()) ** 2 + (s - std) ** 2).sqrt().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=8, help="image size for the Gaussian model")
    parser.add_argument("--unet", default=None, help="directory of UNet.save_pretrained")
    parser.add_argument("--out", default=None, help="save a grid of the first 16 samples here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    schedule = NoiseSchedule.linear(1000)
    if args.unet is None:
        model, mean, std = gaussian_images(schedule, args.size)
        shape = (args.batch, 3, args.size, args.size)
        clip = False  # the Gaussian data are not confined to [-1, 1]
    else:
        from ddpm_lib import UNet

        model = UNet.from_pretrained(args.unet).eval()
        with open(Path(args.unet) / "config.json") as file:  # the constructor's arguments
            config = json.load(file)
        size = config.get("image_size", 32)
        shape = (args.batch, config.get("in_channels", 3), size, size)
        mean = std = None
        clip = True

    runs = [
        ("DDPM", DDPMSampler(schedule, clip_denoised=clip)),
        ("DDPM respaced", DDPMSampler(schedule, num_steps=100, clip_denoised=clip)),
        ("DDIM", DDIMSampler(schedule, 50, clip_denoised=clip)),
        ("DDIM", DDIMSampler(schedule, 20, clip_denoised=clip)),
        ("DDIM", DDIMSampler(schedule, 10, clip_denoised=clip)),
        ("DPM-Solver++ 2M", DPMSolverSampler(schedule, 20, clip_denoised=clip)),
        ("DPM-Solver++ 2M", DPMSolverSampler(schedule, 10, clip_denoised=clip)),
    ]
    header = f"{'sampler':18s} {'model calls':>11s} {'seconds':>8s}"
    print(header + ("" if mean is None else f" {'W2 to data':>11s}"))
    grids = []
    for name, sampler in runs:
        generator = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        samples = sampler.sample(model, shape, generator=generator)
        seconds = time.perf_counter() - start
        line = f"{name:18s} {sampler.num_steps:11d} {seconds:8.2f}"
        if mean is not None:
            line += f" {wasserstein(samples, mean, std):11.4f}"
        print(line)
        grids.append(samples[:8])
    if mean is not None:
        print(f"(Monte-Carlo floor of W2 at batch {args.batch}: about "
              f"{std * math.sqrt(1 / args.batch + 1 / (2 * args.batch)):.4f})")
    if args.out:
        from torchvision.utils import save_image

        rows = torch.cat(grids)  # one row of 8 per sampler
        save_image((rows.clamp(-1, 1) + 1) / 2, args.out, nrow=8)
        print(f"saved {args.out}: one row per sampler, same seed")


if __name__ == "__main__":
    main()
