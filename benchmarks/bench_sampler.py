"""Sampler overhead, side by side in one process.

(a) ``sample()`` wall time over ``N x`` one bare model forward, for a small UNet at batch 8
    (goal <= 1.03: the loop costs nothing beyond the network);
(b) one ``step()`` against diffusers' ``DDIMScheduler.step`` on the same tensors (goal <= 0.5x),
    plus DPM-Solver++ and DDPM steps against their diffusers counterparts;
(c) on CUDA only: compiled vs eager ``sample()`` vs a diffusers scheduler loop, batch 1 and 64.

Timings on a shared machine are noisy: every measurement interleaves the contenders rep by
rep and reports medians (of times, and of the per-rep paired ratios).

    PYTHONPATH=. python benchmarks/bench_sampler.py            # (a) and (b); (c) on CUDA
    PYTHONPATH=. python benchmarks/bench_sampler.py --part b --reps 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ddpm_lib import NoiseSchedule
from ddpm_lib.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler


# ----------------------------------------------------------------------------- models
class StandInUNet(nn.Module):
    """A small conv net with a time embedding, used only when ddpm_lib.UNet is unavailable."""

    def __init__(self, channels: int = 3, width: int = 64, num_timesteps: int = 1000) -> None:
        super().__init__()
        self.time = nn.Embedding(num_timesteps, width)
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.out = nn.Conv2d(2 * width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.silu(self.inp(x) + self.time(t)[:, :, None, None])
        d = torch.nn.functional.silu(self.down(h))
        d = torch.nn.functional.silu(self.mid(d))
        return self.out(torch.cat([h, self.up(d)], dim=1))


def small_unet(num_timesteps: int = 1000) -> tuple[nn.Module, str]:
    """A small ddpm_lib.UNet (32x32, 2 levels), or the stand-in before the UNet exists."""
    try:
        from ddpm_lib import UNet
    except (ImportError, AttributeError, ModuleNotFoundError):
        model = StandInUNet(width=32, num_timesteps=num_timesteps).eval()
        return model, "StandInUNet(width=32) (ddpm_lib.UNet not on this branch yet)"
    model = UNet(
        in_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(16,), image_size=32, dropout=0.0, norm_groups=8,
    ).eval()
    return model, "UNet(base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attention at 16)"


# ----------------------------------------------------------------------------- timing
def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(
    contenders: dict[str, Callable[[], object]], reps: int, warmup: int = 2, sync=lambda: None
) -> dict[str, list[float]]:
    """Run every contender once per rep, in turn, ``reps`` times; return the times."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            times[name].append(timed(fn, sync))
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


# ----------------------------------------------------------------------------- (a)
@torch.no_grad()
def part_a(reps: int, num_steps: int, batch: int) -> None:
    schedule = NoiseSchedule.linear(1000)
    model, name = small_unet()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    samplers = {
        "DDPMSampler (respaced)": DDPMSampler(schedule, num_steps=num_steps, clip_denoised=True),
        "DDIMSampler": DDIMSampler(schedule, num_steps),
        "DPMSolverSampler": DPMSolverSampler(schedule, num_steps),
    }
    t = torch.full((batch,), 500)

    def bare() -> None:  # N forwards on a tensor of the same shape: the network's share
        for _ in range(num_steps):
            model(x, t)

    print(f"\n(a) sample() / ({num_steps} x bare forward), {name}, batch {batch}, "
          f"{torch.get_num_threads()} threads, {reps} interleaved reps")
    contenders: dict[str, Callable[[], object]] = {}
    for label, sampler in samplers.items():
        generator = torch.Generator().manual_seed(1)
        contenders[f"bare before {label}"] = bare
        contenders[label] = (
            lambda s=sampler, g=generator: s.sample(model, x.shape, generator=g, compile=False)
        )
    times = interleaved(contenders, reps, warmup=1)
    forward_s = statistics.median(
        t for label in samplers for t in times[f"bare before {label}"]
    ) / num_steps
    print(f"  bare forward: {forward_s * 1e3:.2f} ms (median)")

    # the loop's own cost, measured alone: a "model" that returns a ready tensor
    output = torch.randn_like(x)
    outputs = {label: torch.cat([output, output], 1) if s._learns_variance else output
               for label, s in samplers.items()}
    overhead_runs = interleaved(
        {label: (lambda s=s, o=outputs[label]: s.sample(lambda x_t, t: o, x.shape, compile=False))
         for label, s in samplers.items()},
        reps=max(reps, 15),
    )
    for label in samplers:
        measured = paired_ratio(times, label, f"bare before {label}")
        loop_s = statistics.median(overhead_runs[label]) / num_steps
        print(f"  {label:24s} measured ratio {measured:.3f} (paired median) | loop alone "
              f"{loop_s * 1e6:.0f} us/step -> (forward + loop) / forward = "
              f"{1 + loop_s / forward_s:.4f}")


# ----------------------------------------------------------------------------- (b)
@torch.no_grad()
def part_b(reps: int, inner: int) -> None:
    import diffusers

    schedule = NoiseSchedule.linear(1000)
    ddim = DDIMSampler(schedule, 50, eta=0.0, clip_denoised=False)
    ddim_ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000, set_alpha_to_one=True, clip_sample=False,
        timestep_spacing="trailing",
    )
    ddim_ref.set_timesteps(50)
    dpm = DPMSolverSampler(schedule, 20, clip_denoised=False, spacing="linspace",
                           final_step="denoise")  # diffusers' default trajectory
    ddpm = DDPMSampler(schedule, num_steps=50, spacing="leading", clip_denoised=False)
    ddpm_ref = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    ddpm_ref.set_timesteps(50)

    print(f"\n(b) one step() vs diffusers' step on the same tensors, {torch.get_num_threads()} "
          f"threads, median of {reps} interleaved reps x {inner} calls")
    for shape in [(8, 3, 32, 32), (1, 4, 64, 64), (64, 3, 32, 32)]:
        generator = torch.Generator().manual_seed(0)
        x, eps = (torch.randn(shape, generator=generator) for _ in range(2))
        t = ddim.timesteps[25]  # a 0-d tensor, as a pipeline loop passes it
        assert torch.allclose(ddim.step(eps, t, x), ddim_ref.step(eps, t, x).prev_sample, atol=1e-4)

        dpm_ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000)
        dpm_ref.set_timesteps(20)
        t_dpm = dpm.timesteps[10]
        dpm_ref._step_index, dpm_ref.lower_order_nums = 10, 2
        dpm_ref.model_outputs = [x.clone(), x.clone()]
        t_ddpm = ddpm.timesteps[10]

        def repeat(fn):
            return lambda: [fn() for _ in range(inner)]

        def dpm_reference():
            dpm_ref._step_index = 10
            return dpm_ref.step(eps, t_dpm, x)

        contenders = {
            "ddim": repeat(lambda: ddim.step(eps, t, x)),
            "ddim_ref": repeat(lambda: ddim_ref.step(eps, t, x)),
            "dpm": repeat(lambda: dpm.step(eps, t_dpm, x)),
            "dpm_ref": repeat(dpm_reference),
            "ddpm": repeat(lambda: ddpm.step(eps, t_ddpm, x, generator=generator)),
            "ddpm_ref": repeat(lambda: ddpm_ref.step(eps, t_ddpm, x, generator=generator)),
        }
        times = interleaved(contenders, reps)
        us = {k: statistics.median(v) / inner * 1e6 for k, v in times.items()}
        print(f"  {str(shape):16s} DDIM {us['ddim']:7.1f} us vs diffusers "
              f"{us['ddim_ref']:7.1f} us: "
              f"{paired_ratio(times, 'ddim', 'ddim_ref'):.2f}x | "
              f"DPM++2M {paired_ratio(times, 'dpm', 'dpm_ref'):.2f}x | "
              f"DDPM {paired_ratio(times, 'ddpm', 'ddpm_ref'):.2f}x")


# ----------------------------------------------------------------------------- (c)
@torch.no_grad()
def part_c(reps: int, num_steps: int) -> None:
    if not torch.cuda.is_available():
        print("\n(c) skipped: no CUDA device")
        return
    import diffusers

    device = torch.device("cuda")
    schedule = NoiseSchedule.linear(1000)
    model, name = small_unet()
    model = model.to(device)
    sampler = DDIMSampler(schedule, num_steps, clip_denoised=False)
    reference = diffusers.DDIMScheduler(
        num_train_timesteps=1000, set_alpha_to_one=True, clip_sample=False,
        timestep_spacing="trailing",
    )
    sync = torch.cuda.synchronize
    print(f"\n(c) CUDA ({torch.cuda.get_device_name()}), {name}, DDIM {num_steps} steps, "
          f"median of {reps} reps")
    for batch in (1, 64):
        x_T = torch.randn(batch, 3, 32, 32, device=device)

        def diffusers_loop():
            reference.set_timesteps(num_steps, device=device)
            x = x_T
            for t in reference.timesteps:
                x = reference.step(model(x, t.expand(batch)), t, x).prev_sample
            return x

        contenders = {
            "compiled": lambda: sampler.sample(model, None, x_T=x_T, compile=True),
            "eager": lambda: sampler.sample(model, None, x_T=x_T, compile=False),
            "diffusers loop": diffusers_loop,
        }
        times = interleaved(contenders, reps, warmup=3, sync=sync)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"  batch {batch:3d}: compiled {ms['compiled']:.1f} ms, eager {ms['eager']:.1f} ms, "
              f"diffusers loop {ms['diffusers loop']:.1f} ms "
              f"(eager/compiled {ms['eager'] / ms['compiled']:.2f}x, "
              f"diffusers/compiled {ms['diffusers loop'] / ms['compiled']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["a", "b", "c", "all"], default="all")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps in (a) and (c)")
    parser.add_argument("--batch", type=int, default=8, help="batch size in (a)")
    parser.add_argument("--inner", type=int, default=20, help="step() calls per rep in (b)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.part in ("a", "all"):
        part_a(args.reps, args.steps, args.batch)
    if args.part in ("b", "all"):
        part_b(args.reps, args.inner)
    if args.part in ("c", "all"):
        part_c(args.reps, max(args.steps, 50))


if __name__ == "__main__":
    main()
