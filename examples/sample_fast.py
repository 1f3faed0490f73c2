"""
Samplers compared: DDPM, DDIM and DPM-Solver++ on one model
============================================================

Quality against model calls and time, for the three samplers on the same model. Without
arguments the model is the exact noise predictor for Gaussian "images" (a fixed mean
image and a per-pixel standard deviation), so every sampler can be scored against the true
data law: the per-pixel 2-Wasserstein distance between the samples' Gaussian fit and the
data's, averaged over pixels (0 is perfect; Monte-Carlo noise alone gives about
``std / sqrt(2 * batch)``). With ``--unet DIR`` a trained ``ddpm_lib.UNet`` is sampled
instead and only timings (and an image grid with ``--out``) are reported.

.. code-block:: bash

    python examples/sample_fast.py
    python examples/sample_fast.py --batch 64 --out grid.png
    python examples/sample_fast.py --unet runs/cifar10/unet --out grid.png

The grid ``runs/sample_fast/samplers.png`` has one row per sampler, same seed (enlarged 4x): each
"image" is a smooth colour pattern plus independent per-pixel Gaussian noise of standard
deviation 0.3, which is what the data law is.
With ``DDPM_LIB_QUICK=1`` the batch is 32 instead of 128.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ddpm_lib import GaussianOracle, NoiseSchedule
from ddpm_lib.data import save_grid
from ddpm_lib.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler

from _common import QUICK, run_folder  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser


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
    parser = example_parser(__doc__)
    parser.add_argument("--batch", type=int, default=32 if QUICK else 128,
                        help="samples per sampler (default: 128; 32 with DDPM_LIB_QUICK=1)")
    parser.add_argument("--size", type=int, default=8,
                        help="image size of the Gaussian model (default: 8)")
    parser.add_argument("--unet", default=None,
                        help="directory of UNet.save_pretrained to sample instead of the Gaussian "
                        "model (then only timings are reported)")
    default_out = run_folder("sample_fast") + "/samplers.png"
    parser.add_argument("--out", default=default_out,
                        help="where to save a grid of 8 samples of each sampler, one row each "
                        f"(default: {default_out})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
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
        rows = torch.cat(grids)  # one row of 8 per sampler
        save_grid(rows, args.out, nrow=8, upscale=max(1, 32 // shape[-1]))
        print(f"saved {args.out}: one row per sampler ({', '.join(name for name, _ in runs)}), "
              "same seed")


if __name__ == "__main__":
    main()
