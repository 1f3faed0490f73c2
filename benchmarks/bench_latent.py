"""Latent diffusion: reconstruction quality, and what working in latent space saves.

    python benchmarks/bench_latent.py --part a      # PSNR of the example's autoencoder
    python benchmarks/bench_latent.py --part b      # latent vs pixel space, 32x32 and 64x64
    python benchmarks/bench_latent.py               # every part

(a) Reconstruction PSNR of the autoencoder trained by ``examples/latent_diffusion.py``
    (loaded from ``RUN/model``, the ``LatentDiffusion.save_pretrained`` folder), on held-out
    shapes (a seed the autoencoder never saw): ``decode(encode(x))`` with the posterior mean,
    clamped to ``[-1, 1]``, PSNR per image with peak-to-peak 2. Goal: >= 30 dB at f=4.
(b) Sampling time (DDPM respaced to ``--steps`` steps, ``--num`` images, decoding included on
    the latent side) and training step time (forward, backward and Adam step of the UNet on a
    batch; the latents are cached, so no encoder call) of a latent UNet on the autoencoder's
    latents against a pixel UNet of the same width and depth on the images, at 32x32 and
    64x64 (the autoencoder of the example's configuration: f=4, 4 latent channels; timings
    do not depend on its weights). The two sides alternate in one process, ``--repeats``
    times; medians and their ratio (pixel / latent) are printed. Goal: >= 4x for sampling
    at 64x64.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib import DDPMSampler, LatentDiffusion, NoiseSchedule, SimpleLoss  # noqa: E402
from ddpm_lib.data import ShapesDataset  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples"


def _example() -> Any:
    sys.path.insert(0, str(EXAMPLE))
    import latent_diffusion  # examples/latent_diffusion.py: the configurations

    return latent_diffusion


def part_a(args: argparse.Namespace) -> None:
    run = Path(args.run) / "model"
    if not run.is_dir():
        print(f"(a) skipped: {run} not found; run examples/latent_diffusion.py first")
        return
    latents = LatentDiffusion.from_pretrained(run, load_unet=False)
    held_out = ShapesDataset(size=args.held_out, image_size=32, seed=1000)
    images = torch.stack([held_out[i][0] for i in range(len(held_out))])
    psnrs = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            x = images[start:start + 64]
            x_rec = latents.decode(latents.encode(x)).clamp(-1, 1)
            mse = (x_rec - x).square().flatten(1).mean(1).clamp_min(1e-10)
            psnrs.append(10 * torch.log10(4.0 / mse))
    psnr = torch.cat(psnrs)
    print(f"(a) reconstruction PSNR on {len(images)} held-out 32x32 shapes (f="
          f"{latents.downsampling_factor}, {latents.latent_channels} latent channels): "
          f"mean {psnr.mean():.2f} dB, median {psnr.median():.2f} dB, 5th percentile "
          f"{psnr.quantile(0.05):.2f} dB (goal >= 30 dB)")


def _times(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def part_b(args: argparse.Namespace) -> None:
    example = _example()
    torch.manual_seed(0)
    autoencoder = example.make_autoencoder().eval()
    latents = LatentDiffusion(autoencoder, scale_factor=1.0)
    f = latents.downsampling_factor
    schedule = NoiseSchedule.linear(1000)
    loss_fn = SimpleLoss(schedule)
    latent_sampler = DDPMSampler(schedule, num_steps=args.steps, clip_denoised=False)
    pixel_sampler = DDPMSampler(schedule, num_steps=args.steps)
    print(f"(b) latent (f={f}, {latents.latent_channels} channels) vs pixel space; the UNets of "
          f"examples/latent_diffusion.py; DDPM {args.steps} steps, {args.num} images; training "
          f"batch {args.batch_size}; medians of {args.repeats} interleaved runs; "
          f"{torch.get_num_threads()} thread(s)")
    for size in args.sizes:
        latent_unet = example.make_unet(latents.latent_channels, size // f, None).eval()
        pixel_unet = example.make_unet(3, size, None).eval()
        generator = torch.Generator().manual_seed(0)

        def sample_latent() -> None:
            latents.sample(latent_sampler, latent_unet, args.num, image_size=size,
                           generator=generator)

        def sample_pixel() -> None:
            pixel_sampler.sample(pixel_unet, (args.num, 3, size, size), generator=generator)

        def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       x0: torch.Tensor) -> None:
            loss = loss_fn(model, x0, generator=generator)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        z0 = torch.randn(args.batch_size, latents.latent_channels, size // f, size // f)
        x0 = torch.rand(args.batch_size, 3, size, size) * 2 - 1
        latent_opt = torch.optim.Adam(latent_unet.parameters(), lr=1e-4)
        pixel_opt = torch.optim.Adam(pixel_unet.parameters(), lr=1e-4)
        times: dict[str, list[float]] = {"ls": [], "ps": [], "lt": [], "pt": []}
        with torch.no_grad():  # warm-up
            sample_latent()
            sample_pixel()
        for _ in range(args.repeats):
            with torch.no_grad():
                times["ls"] += _times(sample_latent, 1)
                times["ps"] += _times(sample_pixel, 1)
            latent_unet.train(), pixel_unet.train()
            times["lt"] += _times(lambda: train_step(latent_unet, latent_opt, z0), 3)
            times["pt"] += _times(lambda: train_step(pixel_unet, pixel_opt, x0), 3)
            latent_unet.eval(), pixel_unet.eval()
        ls, ps, lt, pt = (statistics.median(times[k]) for k in ("ls", "ps", "lt", "pt"))
        with torch.no_grad():
            decode = statistics.median(_times(
                lambda: latents.decode(torch.randn(args.num, latents.latent_channels,
                                                   size // f, size // f)), 3))
        print(f"    {size}x{size}: sampling latent {ls:.3f} s (decoding {decode:.3f} s) vs "
              f"pixel {ps:.3f} s -> {ps / ls:.1f}x faster; training step latent "
              f"{lt * 1e3:.1f} ms vs pixel {pt * 1e3:.1f} ms -> {pt / lt:.1f}x faster")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    parser.add_argument("--run", default="runs/latent_diffusion",
                        help="the example's output folder (part a)")
    parser.add_argument("--held-out", type=int, default=512, help="held-out images (part a)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sizes (b)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (part b)")
    parser.add_argument("--num", type=int, default=8, help="images sampled (part b)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch (part b)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs (part b)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.part in ("a", "all"):
        part_a(args)
    if args.part in ("b", "all"):
        part_b(args)


if __name__ == "__main__":
    main()
