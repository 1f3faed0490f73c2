"""The score-based family measured: EDM against DDPM training, and its samplers per model call.

``--part mixture``: the samplers over noise levels driven by the *exact* denoiser of the Gaussian
mixtures of ``bench_sampler_quality.py`` (five modes in d = 2, 4, 8; the same seeds, ``x_T``,
20 000 samples and 400 000 exact draws), so that only the sampler's own error is left: the
Fréchet distance (:func:`ddpm_lib.metrics.frechet_distance`) and the mode-weight error per model
calls, for EDM Heun and Euler (EDM's levels 0.002 .. 80, rho 7), the VE SDE's reverse diffusion
and predictor-corrector and annealed Langevin dynamics, beside DPM-Solver++ 2M (log-SNR grid)
on the VP mixture oracle of the same data.

``--part train``: one class-conditional UNet (16x16 built-in shapes, 1.1M parameters) trained
with the same data, seed, batch, optimiser, EMA and number of steps under DDPM's
``SimpleLoss`` (eps, linear T = 1000), ``EDMLoss`` and ``DenoisingScoreMatchingLoss``, then
sampled at 10-35 model calls and scored with the shapes classifier of
``bench_sampler_quality.py``: the accuracy of the intended class and the Fréchet distance of
its 64 features to 2 000 real images. CPU time (``time.process_time``) and wall time are
reported.

    PYTHONPATH=. python benchmarks/bench_score_models.py --part mixture
    PYTHONPATH=. python benchmarks/bench_score_models.py --part train --steps 1200
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ddpm_lib import (
    AnnealedLangevinSampler,
    DenoisingScoreMatchingLoss,
    DPMSolverSampler,
    EDMLoss,
    EDMNoiseLevels,
    EDMSampler,
    NoiseSchedule,
    ScoreBasedModel,
    SimpleLoss,
    UNet,
    VENoiseLevels,
    VESDESampler,
)
from ddpm_lib.metrics import frechet_distance

from bench_sampler_quality import make_mixture, scores, train_classifier


# ----------------------------------------------------------------------------- part 1: mixture
class MixtureDenoiser(torch.nn.Module):
    """The exact D(x; sigma) = E[x0 | x0 + sigma eps = x] of a Gaussian mixture, any sigma."""

    def __init__(self, oracle) -> None:
        super().__init__()
        self.log_weights = torch.as_tensor(oracle.weights, dtype=torch.float64).log()
        self.means = oracle.means.double()  # (K, d)
        self.stds = oracle.stds.double()  # (K, d)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x, s2 = x.double(), sigma.double()[:, None, None] ** 2  # (B, d), (B, 1, 1)
        var = self.stds[None] ** 2 + s2  # (B, K, d)
        residual = x[:, None] - self.means[None]  # (B, K, d)
        log_r = self.log_weights - 0.5 * (residual**2 / var + var.log()).sum(-1)  # (B, K)
        r = log_r.softmax(1)  # responsibilities
        posterior = self.means[None] + self.stds[None] ** 2 / var * residual  # (B, K, d)
        return (r[..., None] * posterior).sum(1)


def mixture_configs(schedule: NoiseSchedule) -> dict[str, tuple[Callable[[int], object], list[int]]]:
    """Name -> (factory(levels), the levels to run)."""
    edm = EDMNoiseLevels(0.002, 80.0)
    ve = VENoiseLevels(0.002, 80.0, 10)
    ladder = VENoiseLevels(0.01, 80.0, 10)
    c = {"clip_denoised": False}
    return {
        "EDM Heun": (lambda n: EDMSampler(edm, n, **c), [3, 4, 5, 6, 8, 10, 18]),
        "EDM Euler": (lambda n: EDMSampler(edm, n, method="euler", **c), [5, 10, 15, 20, 35]),
        "EDM Heun, S_churn 10": (lambda n: EDMSampler(edm, n, S_churn=10.0, S_tmin=0.05,
                                                      S_tmax=50.0, **c), [5, 10, 18]),
        "VE reverse diffusion": (lambda n: VESDESampler(ve, n, method="reverse_diffusion", **c),
                                 [10, 20, 35]),
        "VE predictor-corrector": (lambda n: VESDESampler(ve, n, **c), [5, 10, 17]),
        # step eps sigma_i^2 / sigma_L^2 with eps / sigma_L^2 = 1.5 (stable below 2)
        "annealed Langevin (T=3, ladder 0.01..80)": (
            lambda n: AnnealedLangevinSampler(ladder, n, steps_per_level=3, step_size=1.5e-4,
                                              **c), [3, 6, 11]),
        "annealed Langevin (T=10, ladder 0.01..80)": (
            lambda n: AnnealedLangevinSampler(ladder, n, steps_per_level=10, step_size=1.5e-4,
                                              **c), [10]),
    }


def mixture_part(args: argparse.Namespace) -> None:
    schedule = NoiseSchedule.linear(1000)
    configs = mixture_configs(schedule)
    results: dict[str, dict[int, list[tuple[float, float]]]] = {}
    start = time.perf_counter()
    for dim in args.dims:
        oracle = make_mixture(schedule, dim, seed=dim)  # bench_sampler_quality's mixtures
        denoiser = MixtureDenoiser(oracle)
        exact = oracle.sample(args.reference, torch.Generator().manual_seed(100 + dim))
        reference = (exact.mean(0).numpy(), torch.cov(exact.T).reshape(dim, dim).numpy())
        x_T = torch.randn(args.samples, dim, generator=torch.Generator().manual_seed(dim),
                          dtype=torch.float64)
        generator_seed = 1000 + dim
        for name, (factory, levels) in configs.items():
            for n in levels:
                sampler = factory(n)
                out = sampler.sample(denoiser, None, x_T=x_T,
                                     generator=torch.Generator().manual_seed(generator_seed))
                calls = sampler.num_model_calls  # type: ignore[attr-defined]
                results.setdefault(name, {}).setdefault(calls, []).append(
                    scores(oracle, out, reference))
        for nfe in (5, 10, 15, 20, 35):  # the anchor: DPM-Solver++ 2M on the VP oracle
            out = DPMSolverSampler(schedule, nfe, clip_denoised=False).sample(oracle, None, x_T=x_T)
            results.setdefault("DPM++ 2M logsnr (VP oracle)", {}).setdefault(nfe, []).append(
                scores(oracle, out, reference))
        print(f"d={dim} done ({time.perf_counter() - start:.0f} s wall, "
              f"{time.process_time():.0f} s CPU)", flush=True)
    print("\n| sampler | model calls: FD x 1e-3 (mode-weight error) |\n|---|---|")
    for name, per in results.items():
        cells = []
        for calls, values in sorted(per.items()):
            fd = sum(v[0] for v in values) / len(values)
            mode = sum(v[1] for v in values) / len(values)
            cells.append(f"{calls}: {1e3 * fd:.2f} ({mode:.2f})")
        print(f"| {name} | " + ", ".join(cells) + " |")


# ----------------------------------------------------------------------------- part 2: training
def network() -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=3, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                attention_resolutions=(8,), image_size=16, norm_groups=8, dropout=0.0,
                num_classes=4)


def train(objective: str, args: argparse.Namespace) -> tuple[torch.nn.Module, float, float]:
    """The EMA model of one run, and its CPU and wall seconds."""
    from ddpm_lib.data import ShapesDataset
    from ddpm_lib.training import Trainer

    schedule = NoiseSchedule.linear(1000)
    model: torch.nn.Module
    if objective == "ddpm":
        model, loss = network(), SimpleLoss(schedule)
    else:
        model = ScoreBasedModel(network(), objective, schedule=schedule)
        loss = EDMLoss() if objective == "edm" else DenoisingScoreMatchingLoss(model.noise_levels)
    data = ShapesDataset(size=20_000, image_size=16, seed=0)
    out = Path(args.out) / objective
    trainer = Trainer(model, loss, data, batch_size=args.batch_size, lr=1e-3, warmup_steps=100,
                      ema_decay=0.998, out_dir=out, log_every=max(1, args.steps // 4),
                      checkpoint_every=args.steps, seed=0, num_workers=0, progress=False,
                      tensorboard=False, class_dropout=0.1, resume=False)
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.train(args.steps)
    return trainer.ema_model.eval(), time.process_time() - cpu, time.perf_counter() - wall


def train_part(args: argparse.Namespace) -> None:
    from ddpm_lib.data import ShapesDataset

    classifier = train_classifier(16)
    test = ShapesDataset(size=2000, image_size=16, seed=2)
    images = torch.stack([x for x, _ in test])
    with torch.no_grad():
        real = classifier.features(images).double()
    real_stats = (real.mean(0).numpy(), torch.cov(real.T).numpy())
    labels = torch.arange(args.per_class * 4) % 4
    x_T = torch.randn(len(labels), 3, 16, 16, generator=torch.Generator().manual_seed(0))
    schedule = NoiseSchedule.linear(1000)

    def score(samples: torch.Tensor) -> str:
        with torch.no_grad():
            accuracy = (classifier(samples).argmax(1) == labels).float().mean().item()
            feats = classifier.features(samples).double()
        fd = frechet_distance(feats.mean(0).numpy(), torch.cov(feats.T).numpy(), *real_stats)
        return f"{accuracy:.3f} / {fd:.1f}"

    samplers: dict[str, Callable[[torch.nn.Module], object]] = {
        "DPM++ 2M, 10 calls": lambda m: DPMSolverSampler(schedule, 10),
        "DPM++ 2M, 20 calls": lambda m: DPMSolverSampler(schedule, 20),
        "EDM Heun, 19 calls": lambda m: EDMSampler(getattr(m, "noise_levels", schedule), 10),
        "EDM Heun, 35 calls": lambda m: EDMSampler(getattr(m, "noise_levels", schedule), 18),
        "EDM Euler, 35 calls": lambda m: EDMSampler(getattr(m, "noise_levels", schedule), 35,
                                                   method="euler"),
        "VE PC, 36 calls": lambda m: VESDESampler(getattr(m, "noise_levels", schedule), 18),
    }
    print(f"\n{args.steps} steps, batch {args.batch_size}; accuracy / FD (classifier features)")
    print("| training | CPU s (wall s) | " + " | ".join(samplers) + " |")
    print("|---|---|" + "---|" * len(samplers))
    for objective in args.objectives:
        model, cpu, wall = train(objective, args)
        cells = []
        for make in samplers.values():
            sampler = make(model)
            out = sampler.sample(model, None, x_T=x_T, model_kwargs={"y": labels},  # type: ignore[attr-defined]
                                 generator=torch.Generator().manual_seed(1))
            cells.append(score(out))
        name = {"ddpm": "DDPM SimpleLoss", "edm": "EDMLoss", "dsm": "DSM (NCSN)"}[objective]
        print(f"| {name} | {cpu:.0f} ({wall:.0f}) | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("mixture", "train"), default="mixture")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--reference", type=int, default=400_000)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--objectives", nargs="+", default=["ddpm", "edm", "dsm"],
                        choices=("ddpm", "edm", "dsm"))
    parser.add_argument("--out", default="runs/bench_score_models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part == "mixture":
        mixture_part(args)
    else:
        train_part(args)
    print(f"total {time.process_time():.0f} s CPU")


if __name__ == "__main__":
    main()
