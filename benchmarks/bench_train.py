"""Trainer throughput against a bare training loop on the same model, data and batch.

    python benchmarks/bench_train.py                       # the quickstart's model, CPU
    python benchmarks/bench_train.py --preset cifar10      # DDPM's CIFAR-10 UNet, batch 128 (GPU)

The bare loop is what every training script has at its core: draw a batch from a DataLoader,
``loss_fn(model, x0)``, ``backward()``, ``optimizer.step()``. The Trainer does that plus what it
is for: learning-rate warm-up, gradient clipping, the EMA update, random flips, drawing ``t`` and
the noise from its own generator, loss bookkeeping, a log line per round, and a checkpoint (plus
the EMA model export) at the end of every ``train()`` call, i.e. once per round here (a real run
saves every 1000-5000 steps, so this charges the Trainer more than it costs in practice).
Rounds of the two alternate in one process and the median of each is reported, which keeps a
busy or throttling machine from favouring either side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib import NoiseSchedule, SimpleLoss, Trainer, UNet  # noqa: E402
from ddpm_lib.data import ShapesDataset  # noqa: E402


def build_model(args: argparse.Namespace) -> UNet:
    torch.manual_seed(0)
    if args.preset == "cifar10":
        return UNet.ddpm_cifar10()
    return UNet(
        in_channels=3, base_channels=args.base_channels, channel_mults=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(args.image_size // 4,), image_size=args.image_size, dropout=0.0,
        norm_groups=8,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("quickstart", "cifar10"), default="quickstart")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32, cifar10: 128")
    parser.add_argument("--steps", type=int, default=10, help="steps per round (default: 10)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per side (default: 5)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def _bare_loop(args: argparse.Namespace, dataset: TensorDataset, loss_fn: SimpleLoss,
               batch_size: int, device: torch.device) -> tuple[torch.nn.Module, Callable]:
    """The model and a round of a bare training loop (no Trainer) on it."""
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    bare_model = build_model(args).to(device)
    # the Trainer's optimizer: PyTorch's fused Adam (so the comparison measures the Trainer's
    # own overhead, not the choice of Adam implementation)
    optimizer = torch.optim.Adam(bare_model.parameters(), lr=2e-4, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=args.mixed_precision == "fp16")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        pin_memory=device.type == "cuda")
    batches = iter(loader)

    def bare_round(steps: int) -> None:
        nonlocal batches
        for _ in range(steps):
            try:
                (x0,) = next(batches)
            except StopIteration:
                batches = iter(loader)
                (x0,) = next(batches)
            x0 = x0.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss = loss_fn(bare_model, x0)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return bare_model, bare_round


def main() -> None:
    args = _parser().parse_args()
    if args.preset == "cifar10":
        args.image_size = 32
    batch_size = args.batch_size or (128 if args.preset == "cifar10" else 32)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)

    # The same in-memory images for both sides, so that data loading costs the same.
    shapes = ShapesDataset(size=max(1024, 4 * batch_size), image_size=args.image_size)
    images = torch.stack([shapes[i][0] for i in range(len(shapes))])  # (N, 3, H, W)
    dataset = TensorDataset(images)
    schedule = NoiseSchedule.linear(1000)
    loss_fn = SimpleLoss(schedule)

    bare_model, bare_round = _bare_loop(args, dataset, loss_fn, batch_size, device)

    # ---- the Trainer (paper defaults: warm-up, clipping 1.0, EMA 0.9999, flips)
    out_dir = Path(tempfile.mkdtemp(prefix="bench_train_"))
    trainer = Trainer(
        build_model(args), loss_fn, dataset, batch_size=batch_size, out_dir=out_dir,
        log_every=args.steps, checkpoint_every=10**9, progress=False, tensorboard=False,
        mixed_precision=args.mixed_precision, device=device, num_workers=0,
    )

    def trainer_round(steps: int) -> None:
        trainer.train(trainer.step + steps)

    def timed(function, steps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function(steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return steps * batch_size / (time.perf_counter() - start)

    timed(bare_round, max(2, args.steps // 4))  # warm-up: allocator, kernels, first checkpoint
    timed(trainer_round, max(2, args.steps // 4))
    bare, wrapped = [], []
    for index in range(args.rounds):
        bare.append(timed(bare_round, args.steps))
        wrapped.append(timed(trainer_round, args.steps))
        print(f"round {index + 1}/{args.rounds}: bare {bare[-1]:.1f}, Trainer {wrapped[-1]:.1f} "
              "images/s", flush=True)
    bare_ips, trainer_ips = statistics.median(bare), statistics.median(wrapped)
    save_seconds = []
    for _ in range(3):  # what the end of each train() call adds: checkpoint + EMA export
        start = time.perf_counter()
        trainer.save_checkpoint()
        trainer.export()
        save_seconds.append(time.perf_counter() - start)
    save = statistics.median(save_seconds)
    round_seconds = args.steps * batch_size / trainer_ips
    steady_ips = args.steps * batch_size / (round_seconds - save)
    params = sum(p.numel() for p in bare_model.parameters()) / 1e6
    threads = torch.get_num_threads()
    print(f"device {device} ({threads} threads), {args.preset} UNet {params:.2f}M params, "
          f"{args.image_size}x{args.image_size}, batch {batch_size}, mixed precision "
          f"{args.mixed_precision}, {args.rounds} rounds x {args.steps} steps per side")
    print(f"bare loop : {bare_ips:9.1f} images/s  (rounds: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"Trainer   : {trainer_ips:9.1f} images/s  (rounds: {', '.join(f'{v:.1f}' for v in wrapped)})")
    print(f"Trainer / bare = {trainer_ips / bare_ips:.3f}  ->  overhead "
          f"{100 * (bare_ips / trainer_ips - 1):+.1f}% time per image, with a checkpoint every "
          f"{args.steps} steps")
    print(f"checkpoint + EMA export: {save * 1000:.0f} ms; without it (a run that saves every "
          f"1000+ steps): Trainer {steady_ips:.1f} images/s, overhead "
          f"{100 * (bare_ips / steady_ips - 1):+.1f}% (goal <= 5%)")


if __name__ == "__main__":
    main()
