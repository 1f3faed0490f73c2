"""``ddpm-lib sample`` time against ``--threads``, on an idle machine and beside busy neighbours.

    python benchmarks/bench_threads.py                     # idle, then 1 and 2 busy neighbours
    python benchmarks/bench_threads.py --loads 0 --rounds 7

Trains a small run once (the quick start's 16x16 class-conditional UNet, a few steps: the
weights do not change the time), then times ``ddpm-lib sample RUN --sampler ddim --steps 20
--num 16 --threads N`` in this process for N = 1, 2 and torch's default (one thread per core),
the settings alternating round after round; the median of each is reported as a ratio to one
thread. A "busy neighbour" is another process doing float32 matrix products on torch's default
number of threads, as another user's job on a shared machine does; ``--loads 0 1 2`` measures
with none, one and two of them running.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib.cli import main as cli  # noqa: E402


def busy_neighbour(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    """Another job on the machine: matrix products on torch's default thread count."""
    a = torch.randn(384, 384)
    while not stop.is_set():
        a = (a @ a).tanh_()


def train_run(folder: Path) -> Path:
    run = folder / "run"
    status = cli([
        "train", "--out", str(run), "--steps", "2", "--class-conditional", "--image-size", "16",
        "--dataset-size", "64", "--batch-size", "8", "--base-channels", "32",
        "--channel-mults", "1,2,2", "--num-res-blocks", "1", "--attention-resolutions", "8",
        "--num-timesteps", "1000", "--log-every", "2", "--checkpoint-every", "2",
        "--sample-every", "1000", "--warmup-steps", "1", "--no-progress", "--threads", "1",
    ])
    if status != 0:
        raise SystemExit("training the benchmark's run failed")
    return run


def time_sample(run: Path, threads: int, out: Path, args: argparse.Namespace) -> float:
    start = time.perf_counter()
    status = cli(["sample", str(run), "--sampler", "ddim", "--steps", str(args.steps),
                  "--num", str(args.num), "--npz", str(out), "--no-progress",
                  "--threads", str(threads)])
    if status != 0:
        raise SystemExit("ddpm-lib sample failed")
    return time.perf_counter() - start


def measure(run: Path, settings: dict[str, int], args: argparse.Namespace, folder: Path,
            load: int) -> dict[str, float]:
    stop = multiprocessing.get_context("spawn").Event()
    neighbours = [multiprocessing.get_context("spawn").Process(target=busy_neighbour,
                                                                 args=(stop,), daemon=True)
                  for _ in range(load)]
    for process in neighbours:
        process.start()
    try:
        time.sleep(2.0 if load else 0.0)  # let the neighbours start working
        times: dict[str, list[float]] = {name: [] for name in settings}
        time_sample(run, 1, folder / "warm.npz", args)  # warm-up: imports, first allocations
        for _ in range(args.rounds):
            for name, threads in settings.items():
                times[name].append(time_sample(run, threads, folder / "s.npz", args))
    finally:
        stop.set()
        for process in neighbours:
            process.join(timeout=10)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2],
                        help="numbers of busy neighbours to measure beside (default: 0 1 2)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default: 5)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default: 20)")
    parser.add_argument("--num", type=int, default=16, help="samples per run (default: 16)")
    args = parser.parse_args()
    default = torch.get_num_threads()
    settings = {"1 thread": 1, "2 threads": 2}
    if default not in (1, 2):
        settings[f"default ({default})"] = default
    print(f"torch {torch.__version__}, {multiprocessing.cpu_count()} logical CPUs, torch's "
          f"default {default} threads; ddpm-lib sample --sampler ddim --steps {args.steps} "
          f"--num {args.num}, median of {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        run = train_run(folder)
        for load in args.loads:
            medians = measure(run, settings, args, folder, load)
            base = medians["1 thread"]
            shown = ", ".join(f"{key} {value / base:.2f}x" for key, value in medians.items())
            print(f"{load} busy neighbour(s): 1 thread {base:.2f} s; time relative to 1 thread: "
                  f"{shown}")


if __name__ == "__main__":
    main()
