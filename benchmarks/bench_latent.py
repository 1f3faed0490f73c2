"""Benchmark: latent diffusion (issue 11), in parts chosen with ``--part``.

* ``a``: reconstruction PSNR of the autoencoder trained by ``examples/latent_diffusion.py``
  (loaded from ``RUN/model``, the ``LatentDiffusion.save_pretrained`` folder) on held-out
  shapes (a seed the autoencoder never saw): ``decode(encode(x))`` with the posterior mean,
  clamped to ``[-1, 1]``, PSNR per image with peak-to-peak 2. Goal: >= 30 dB at f=4.
* ``b``: sampling time (DDPM respaced to ``--sample-steps`` steps, ``--sample-num`` images,
  decoding included on the latent side) and training step time (forward, backward and Adam
  step of the UNet on a batch of ``--train-batch``; the latents are cached, so no encoder
  call) of a latent UNet on the autoencoder's latents against a pixel UNet of the same width
  and depth on the images, at 32x32 and 64x64 (the example's autoencoder configuration, f=4
  and 4 latent channels, random weights: the timings do not depend on them). The two sides
  alternate in one process ``--speed-repeats`` times; medians and the ratio pixel / latent
  are printed. Goal: >= 4x for sampling at 64x64.
* ``c``: our :class:`ddpm_lib.AutoencoderKL` against diffusers' ``AutoencoderKL`` of the same
  configuration with the same weights (ours converted with ``autoencoder_from_diffusers``, the
  outputs checked to agree). One training step on each side: encode, draw a posterior sample
  from a seeded generator, decode, ``mean|x - x_rec| + 1e-6 * KL`` and its backward. Medians
  of interleaved repetitions (wall-clock and process CPU time) and the peak memory of one step
  (CPU allocator, from ``torch.profiler``, see ``bench_unet.peak_step_memory``; on CUDA
  ``torch.cuda.max_memory_allocated`` above the level before the step), printed as
  ratios ours / diffusers: below 1 means ours is faster / smaller. ``--breakdown`` adds where
  each side's step time goes.
* ``d`` (issue 32): latent against pixel diffusion on real data, scikit-learn's digits upscaled
  to 32x32, at equal training steps and at equal CPU time: an autoencoder, the latents'
  statistics under each normalisation, class-conditional UNets on pixels and on latents
  (several latent recipes), Fréchet distance in the PCA space of the real digits and a digit
  classifier's accuracy / confidence (``benchmarks/latent_digits.py``). Goal: latent within
  1.3x of the pixel model's distance at equal steps, better at equal CPU time. Not in
  ``--part all`` (several CPU minutes); ``--steps`` / ``--ae-steps`` / ``--num-eval`` make it
  longer.

Usage::

    python benchmarks/bench_latent.py --part a --run runs/latent_diffusion
    python benchmarks/bench_latent.py --part b --threads 1
    python benchmarks/bench_latent.py --part c --threads 2 --batch 4 --image-size 32
    python benchmarks/bench_latent.py --part c --image-size 64 --repeats 10 --breakdown
    python benchmarks/bench_latent.py --part c --device cuda --batch 8 --image-size 256 --bf16
    python benchmarks/bench_latent.py --part d --threads 1
    python benchmarks/bench_latent.py --part d --threads 1 --steps 1500 --ae-steps 1500 --num-eval 500
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_unet import interleaved_times, peak_step_memory, time_breakdown  # noqa: E402
import latent_digits  # noqa: E402

from ddpm_lib import DDPMSampler, LatentDiffusion, NoiseSchedule, SimpleLoss  # noqa: E402
from ddpm_lib.data import ShapesDataset  # noqa: E402
from ddpm_lib.metrics import psnr as image_psnr  # noqa: E402
from ddpm_lib.interop import autoencoder_from_diffusers  # noqa: E402


def diffusers_autoencoder(
    base_channels: int, channel_mults: tuple[int, ...], num_res_blocks: int,
    latent_channels: int, norm_groups: int,
) -> Any:
    """diffusers' AutoencoderKL with the given layout (random weights)."""
    from diffusers import AutoencoderKL

    levels = len(channel_mults)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(base_channels * m for m in channel_mults),
        layers_per_block=num_res_blocks, latent_channels=latent_channels,
        norm_num_groups=norm_groups,
    )


def part_c(args: argparse.Namespace) -> None:
    """Our AutoencoderKL vs diffusers' forward+backward: time and peak memory ratios."""
    torch.manual_seed(0)
    mults = tuple(args.channel_mults)
    device = torch.device(args.device)
    theirs = diffusers_autoencoder(args.base_channels, mults, args.num_res_blocks,
                                   args.latent_channels, args.norm_groups).to(device)
    ours = autoencoder_from_diffusers(theirs)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=generator) * 2 - 1
    x = x.to(device)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step_ours() -> None:
        with autocast:
            posterior = ours.encode(x)
            z = posterior.sample(torch.Generator(device).manual_seed(1))
            loss = (ours.decode(z) - x).abs().mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        ours.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)

    def step_theirs() -> None:
        with autocast:
            posterior = theirs.encode(x).latent_dist
            z = posterior.sample(torch.Generator(device).manual_seed(1))
            loss = (theirs.decode(z).sample - x).abs().mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        theirs.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)

    def peak_memory(step: Callable[[], None]) -> int:
        if not cuda:
            return peak_step_memory(step)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        return torch.cuda.max_memory_allocated(device) - before

    ours.train(), theirs.train()
    with torch.no_grad():
        a = ours.decode(ours.encode(x).mean)
        b = theirs.decode(theirs.encode(x).latent_dist.mean).sample
        diff = (a - b).abs().max().item()
    params = sum(p.numel() for p in ours.parameters())
    print(f"part c: AutoencoderKL forward+backward on {device}"
          f"{' (bf16 autocast)' if args.bf16 else ''}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, batch {args.batch}, {args.image_size}x{args.image_size}, "
          f"base_channels {args.base_channels}, channel_mults {list(mults)}, num_res_blocks "
          f"{args.num_res_blocks}, f = {ours.downsampling_factor}")
    print(f"parameters: {params:,} on both sides; max |reconstruction difference| {diff:.2e}")

    tasks: dict[str, Callable[[], None]] = {"ours": step_ours, "diffusers": step_theirs}
    times, cpu_times = interleaved_times(tasks, args.warmup, args.repeats)
    memory = {name: statistics.median(peak_memory(step) for _ in range(3))
              for name, step in tasks.items()}
    print(f"\n{args.repeats} interleaved repetitions: median and minimum (the minimum is the "
          "least disturbed by other processes)")
    print(f"{'':12s}{'wall ms':>10s}{'CPU ms':>10s}{'min wall':>10s}{'min CPU':>10s}"
          f"{'peak MiB':>10s}")
    for name in tasks:
        print(f"{name:12s}{1e3 * statistics.median(times[name]):10.1f}"
              f"{1e3 * statistics.median(cpu_times[name]):10.1f}{1e3 * min(times[name]):10.1f}"
              f"{1e3 * min(cpu_times[name]):10.1f}{memory[name] / 2**20:10.1f}")

    def ratio(table: dict[str, list[float]], stat: Callable[[list[float]], float]) -> float:
        return stat(table["ours"]) / stat(table["diffusers"])

    print(f"ours / diffusers: time {ratio(times, statistics.median):.3f}x wall, "
          f"{ratio(cpu_times, statistics.median):.3f}x CPU (medians), "
          f"{ratio(times, min):.3f}x wall, {ratio(cpu_times, min):.3f}x CPU (minima); "
          f"peak memory {memory['ours'] / memory['diffusers']:.3f}x")

    if args.breakdown and not cuda:
        rounds: dict[str, list[dict[str, float]]] = {"ours": [], "diffusers": []}
        for rep in range(5):
            for name in ("ours", "diffusers") if rep % 2 == 0 else ("diffusers", "ours"):
                rounds[name].append(time_breakdown(tasks[name]))
        print("\nforward+backward by kind of operation, ms (medians of 5 profiled steps)")
        kinds = list(rounds["ours"][0])
        print(f"{'':12s}" + "".join(f"{k:>20s}" for k in kinds))
        for name, runs in rounds.items():
            print(f"{name:12s}" + "".join(
                f"{statistics.median(r[k] for r in runs):20.1f}" for k in kinds))


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
            psnrs.append(image_psnr(latents.decode(latents.encode(x)).clamp(-1, 1), x))
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
    latent_sampler = DDPMSampler(schedule, num_steps=args.sample_steps, clip_denoised=False)
    pixel_sampler = DDPMSampler(schedule, num_steps=args.sample_steps)
    print(f"(b) latent (f={f}, {latents.latent_channels} channels) vs pixel space; the UNets of "
          f"examples/latent_diffusion.py; DDPM {args.sample_steps} steps, {args.sample_num} images; training "
          f"batch {args.train_batch}; medians of {args.speed_repeats} interleaved runs; "
          f"{torch.get_num_threads()} thread(s)")
    for size in args.sizes:
        latent_unet = example.make_unet(latents.latent_channels, size // f, None).eval()
        pixel_unet = example.make_unet(3, size, None).eval()
        generator = torch.Generator().manual_seed(0)

        def sample_latent() -> None:
            latents.sample(latent_sampler, latent_unet, args.sample_num, image_size=size,
                           generator=generator)

        def sample_pixel() -> None:
            pixel_sampler.sample(pixel_unet, (args.sample_num, 3, size, size), generator=generator)

        def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       x0: torch.Tensor) -> None:
            loss = loss_fn(model, x0, generator=generator)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        z0 = torch.randn(args.train_batch, latents.latent_channels, size // f, size // f)
        x0 = torch.rand(args.train_batch, 3, size, size) * 2 - 1
        latent_opt = torch.optim.Adam(latent_unet.parameters(), lr=1e-4)
        pixel_opt = torch.optim.Adam(pixel_unet.parameters(), lr=1e-4)
        times: dict[str, list[float]] = {"ls": [], "ps": [], "lt": [], "pt": []}
        with torch.no_grad():  # warm-up
            sample_latent()
            sample_pixel()
        for _ in range(args.speed_repeats):
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
                lambda: latents.decode(torch.randn(args.sample_num, latents.latent_channels,
                                                   size // f, size // f)), 3))
        print(f"    {size}x{size}: sampling latent {ls:.3f} s (decoding {decode:.3f} s) vs "
              f"pixel {ps:.3f} s -> {ps / ls:.1f}x faster; training step latent "
              f"{lt * 1e3:.1f} ms vs pixel {pt * 1e3:.1f} ms -> {pt / lt:.1f}x faster")


# part name -> function(args)
PARTS: dict[str, Callable[[argparse.Namespace], None]] = {"a": part_a, "b": part_b, "c": part_c,
                                                          "d": latent_digits.run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true",
                        help="part c: profile where each side's step time goes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (part c)")
    parser.add_argument("--bf16", action="store_true", help="part c: under bf16 autocast")
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2, 2])
    parser.add_argument("--num-res-blocks", type=int, default=1)
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--norm-groups", type=int, default=32)
    parser.add_argument("--run", default="runs/latent_diffusion",
                        help="part a: the output folder of examples/latent_diffusion.py")
    parser.add_argument("--held-out", type=int, default=512, help="part a: held-out images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64],
                        help="part b: image sizes")
    parser.add_argument("--sample-steps", type=int, default=20, help="part b: sampling steps")
    parser.add_argument("--sample-num", type=int, default=8, help="part b: images sampled")
    parser.add_argument("--train-batch", type=int, default=16, help="part b: training batch")
    parser.add_argument("--speed-repeats", type=int, default=3,
                        help="part b: interleaved repetitions per side")
    latent_digits.add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, part in PARTS.items():
        if args.part == name or (args.part == "all" and name != "d"):
            part(args)


if __name__ == "__main__":
    main()
