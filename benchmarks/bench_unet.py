"""Benchmark: ddpm_lib.UNet.ddpm_cifar10() against diffusers' UNet2DModel of the same architecture.

Both networks are built in one process with identical weights (ours is converted from the
diffusers model with ``unet_from_diffusers``, and the outputs are checked to agree). For each
side the script measures

* forward: ``model(x, t)`` under ``torch.no_grad()`` in eval mode;
* forward+backward: ``model(x, t).square().mean().backward()`` in train mode (dropout 0.1);
* peak memory of one forward+backward step: the peak, over the step, of the bytes held by
  tensors from PyTorch's CPU allocator above what was held before the step (activations kept
  for backward, gradients, temporaries), read from the allocation and free events that
  ``torch.profiler`` records with ``profile_memory=True``. This is the CPU counterpart of
  ``torch.cuda.max_memory_allocated``; it does not count allocator caching or the process's
  other memory;

and prints medians and ratios ours / diffusers (below 1 means ours is faster / smaller). Time
is reported twice: wall-clock, and CPU time of the process (``time.process_time``, all threads),
which is less sensitive to other processes taking the CPU away. The repetitions of the two
sides are interleaved (alternating which goes first), so that load from other processes hits
both alike. ``--compile ours`` (or ``both``) adds ``torch.compile`` of
our model (or of both); building the graphs takes minutes on a few CPU cores. ``--breakdown``
adds where each model's forward+backward time goes (convolutions, matrix products, attention
kernels, everything else), from operator self times under ``torch.profiler``.

Usage::

    python benchmarks/bench_unet.py --threads 2 --batch 4 --repeats 15
    python benchmarks/bench_unet.py --repeats 12 --breakdown
    python benchmarks/bench_unet.py --compile ours --repeats 5
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

from ddpm_lib.interop import DiffusersAdapter, unet_from_diffusers  # noqa: E402


def diffusers_ddpm_cifar10(dropout: float = 0.1) -> torch.nn.Module:
    """diffusers' UNet2DModel with the google/ddpm-cifar10-32 configuration (random weights)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2, attention_head_dim=None, norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, dropout=dropout,
    )


def interleaved_times(
    tasks: dict[Any, Callable[[], None]], warmup: int, repeats: int
) -> tuple[dict[Any, list[float]], dict[Any, list[float]]]:
    """Run every task ``warmup + repeats`` times, interleaved (the order reversed on every
    other round, so load from other processes hits all alike); returns the wall-clock and the
    process CPU seconds of the timed runs, per task."""
    times: dict[Any, list[float]] = {key: [] for key in tasks}
    cpu_times: dict[Any, list[float]] = {key: [] for key in tasks}
    order = list(tasks)
    for rep in range(warmup + repeats):
        for key in order if rep % 2 == 0 else order[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            tasks[key]()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            if rep >= warmup:
                times[key].append(elapsed)
                cpu_times[key].append(cpu)
    return times, cpu_times


def peak_step_memory(step: Callable[[], None]) -> int:
    """Peak bytes allocated by the CPU allocator during ``step()``, above the level before it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return peak


# operator-name patterns of the three kinds of work that both networks must do at the same size
_KINDS = (
    ("convolutions", ("conv",)),
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear")),
    ("attention kernels", ("scaled_dot_product",)),
)


def time_breakdown(step: Callable[[], None]) -> dict[str, float]:
    """Milliseconds of operator self time in one ``step()``, by kind (see ``_KINDS``), from
    ``torch.profiler``; everything else (normalisation, activations, dropout, additions,
    copies, Python and autograd overhead) is ``"other"``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals = dict.fromkeys([kind for kind, _ in _KINDS] + ["other"], 0.0)
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((k for k, patterns in _KINDS if any(p in name for p in patterns)), "other")
        totals[kind] += event.self_cpu_time_total / 1e3
    return totals


def _report(models: dict, times: dict, cpu_times: dict, memory: dict, repeats: int,
            compile_mode: str) -> None:
    """The medians of every model and the ratios of the pairs that matter."""

    def median_ms(key: tuple[str, str], table: dict = times) -> float:
        return 1e3 * statistics.median(table[key])

    print(f"\nmedians of {repeats} interleaved repetitions, ms (wall | CPU)")
    print(f"{'':20s}{'forward':>22s}{'forward+backward':>24s}{'peak MiB':>10s}")
    for name in models:
        cells = [f"{median_ms((name, k)):9.1f} |{median_ms((name, k), cpu_times):9.1f}"
                 for k in ("forward", "forward+backward")]
        print(f"{name:20s}{cells[0]:>22s}{cells[1]:>24s}{memory[name] / 2**20:10.1f}")
    pairs = [("ours", "diffusers")]
    if compile_mode != "none":
        pairs += [("ours+compile", "ours"), ("ours+compile", "diffusers")]
    if compile_mode == "both":
        pairs += [("ours+compile", "diffusers+compile"), ("diffusers+compile", "diffusers")]
    print("\nratios (wall | CPU)")
    for a, b in pairs:
        cells = []
        for kind in ("forward", "forward+backward"):
            wall = median_ms((a, kind)) / median_ms((b, kind))
            cpu = median_ms((a, kind), cpu_times) / median_ms((b, kind), cpu_times)
            cells.append(f"{kind} {wall:.3f}x | {cpu:.3f}x")
        print(f"{a + ' / ' + b:38s} {cells[0]}   {cells[1]}   peak memory "
              f"{memory[a] / memory[b]:.3f}x")


def _breakdown(tasks: dict) -> None:
    """Where each model's forward+backward time goes, by kind of operation."""
    print("\nforward+backward by kind of operation, ms per step (profiler self time, "
          "medians of 5 interleaved profiled steps)")
    # profiled steps of the two models interleaved, as the timings above; per-kind medians
    rounds: dict[str, list[dict[str, float]]] = {"ours": [], "diffusers": []}
    for rep in range(5):
        for name in ("ours", "diffusers") if rep % 2 == 0 else ("diffusers", "ours"):
            rounds[name].append(time_breakdown(tasks[(name, "forward+backward")]))
    breakdown = {name: {kind: statistics.median(r[kind] for r in runs) for kind in runs[0]}
                 for name, runs in rounds.items()}
    kinds = list(breakdown["ours"])
    print(f"{'':12s}" + "".join(f"{k:>20s}" for k in [*kinds, "total"]))
    for name, table in breakdown.items():
        print(f"{name:12s}" + "".join(f"{v:20.1f}" for v in table.values())
              + f"{sum(table.values()):20.1f}")
    floor = sum(v for k, v in breakdown["ours"].items() if k != "other")
    print(f"ours without any 'other' work would take {floor:.1f} ms: "
          f"{floor / sum(breakdown['diffusers'].values()):.3f}x diffusers' profiled step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", choices=["none", "ours", "both"], default="none",
                        help="also time torch.compile of our model or of both models")
    parser.add_argument("--breakdown", action="store_true",
                        help="also profile where each model's forward+backward time goes")
    parser.add_argument("--channels-last", action="store_true",
                        help="run both models and inputs in channels_last memory format")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    theirs = diffusers_ddpm_cifar10()
    ours = unet_from_diffusers(theirs)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=generator)
    t = torch.randint(0, 1000, (args.batch,), generator=generator)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
        ours.to(memory_format=torch.channels_last)
        theirs.to(memory_format=torch.channels_last)

    models: dict[str, torch.nn.Module] = {"ours": ours, "diffusers": DiffusersAdapter(theirs)}
    with torch.no_grad():
        ours.eval(), theirs.eval()
        diff = (models["ours"](x, t) - models["diffusers"](x, t)).abs().max().item()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"memory format {'channels_last' if args.channels_last else 'contiguous'}")
    print(f"parameters: ours {n_ours:,}, diffusers {n_theirs:,}; max |output difference| "
          f"{diff:.2e}")

    if args.compile != "none":
        names = ["ours"] if args.compile == "ours" else ["ours", "diffusers"]
        print(f"compiling {', '.join(names)} (forward and training graphs; minutes) ...",
              flush=True)
        for name in names:
            models[f"{name}+compile"] = torch.compile(models[name])

    def forward(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            model.eval()
            with torch.no_grad():
                model(x, t)
        return run

    def forward_backward(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            model.train()
            model(x, t).square().mean().backward()
            model.zero_grad(set_to_none=True)
        return run

    tasks = {
        (name, kind): (forward if kind == "forward" else forward_backward)(model)
        for name, model in models.items()
        for kind in ("forward", "forward+backward")
    }
    times, cpu_times = interleaved_times(tasks, args.warmup, args.repeats)

    memory = {}
    for name, model in models.items():
        step = tasks[(name, "forward+backward")]
        memory[name] = statistics.median(peak_step_memory(step) for _ in range(3))

    _report(models, times, cpu_times, memory, args.repeats, args.compile)
    if args.breakdown:
        _breakdown(tasks)


if __name__ == "__main__":
    main()
