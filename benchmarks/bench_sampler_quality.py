"""How close each sampler's output is to the true law, per model call, with an exact model.

The model is :class:`ddpm_lib.GaussianMixtureOracle`, the exact noise predictor of a Gaussian
mixture (several modes of different weights and spreads, in ``d`` dimensions), so the only
error left in a sample is the sampler's own. For each sampler and grid, and for diffusers'
``DPMSolverMultistepScheduler`` (default, ``use_karras_sigmas``, ``use_lu_lambdas``,
``solver_order=3``), ``UniPCMultistepScheduler`` and ``DEISMultistepScheduler`` driven by the
same predictor from the same ``x_T``, at NFE (model calls) 5, 6, 8, 10, 15 and 20:

* the Fréchet distance (:func:`ddpm_lib.metrics.frechet_distance`) between the samples and
  exact draws of the mixture (a large reference set), and
* the mode-weight error: ``sum_k |fraction of samples in mode k - w_k|``.

Both are averaged over the mixtures (one per dimension). Writes a markdown table and a plot
(FD vs NFE, log scale).

``--trained RUN`` makes the same comparison on a trained model instead: the quick start's
class-conditional shapes UNet (``examples/quickstart.py`` writes ``runs/quickstart``), with
classifier-free guidance 2, scored at 5, 10 and 20 NFE by a small shape classifier trained here
on fresh ``ShapesDataset`` images (accuracy of the intended class, and the Fréchet distance of
the classifier's features to real images').

    PYTHONPATH=. python benchmarks/bench_sampler_quality.py
    PYTHONPATH=. python benchmarks/bench_sampler_quality.py --samples 4000 --dims 2 --nfe 5 10
    PYTHONPATH=. python benchmarks/bench_sampler_quality.py --trained runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ddpm_lib import GaussianMixtureOracle, NoiseSchedule
from ddpm_lib.metrics import frechet_distance
from ddpm_lib.samplers import (
    DDIMSampler,
    DEISSampler,
    DPMSolverSampler,
    PNDMSampler,
    UniPCSampler,
)

NFES = (5, 6, 8, 10, 15, 20)


def make_mixture(schedule: NoiseSchedule, dim: int, seed: int) -> GaussianMixtureOracle:
    """Five modes in ``[-0.8, 0.8]^d``, weights 0.35 .. 0.05, spreads 0.02 .. 0.2."""
    generator = torch.Generator().manual_seed(seed)
    means = (torch.rand(5, dim, generator=generator, dtype=torch.float64) * 1.6 - 0.8)
    weights = [0.35, 0.25, 0.2, 0.15, 0.05]
    stds = torch.tensor([0.2, 0.05, 0.1, 0.02, 0.08], dtype=torch.float64)
    return GaussianMixtureOracle(schedule, weights, means, stds)


# ----------------------------------------------------------------------------- our samplers
FAMILIES = {
    "DPM++ 2M": (DPMSolverSampler, {"order": 2}),
    "DPM++ 3M": (DPMSolverSampler, {"order": 3}),
    "UniPC-2 bh2": (UniPCSampler, {"order": 2, "variant": "bh2"}),
    "UniPC-3 bh1": (UniPCSampler, {"order": 3, "variant": "bh1"}),
    "UniPC-3 bh2": (UniPCSampler, {"order": 3, "variant": "bh2"}),
    "DEIS-3": (DEISSampler, {"order": 3}),
    "iPNDM": (PNDMSampler, {"order": 4}),
}


def our_samplers(schedule: NoiseSchedule, explore: bool = False) -> dict[str, Callable]:
    """Name -> factory(nfe) of every configuration compared.

    Each family on the three schedule grids with both endings (``final_step``); with
    ``explore`` also without lowering the order over the last steps (``lower_order_final``).
    """
    configs: dict[str, Callable] = {
        "DDIM trailing": lambda n: DDIMSampler(schedule, n, clip_denoised=False),
    }
    endings = [("denoise", True), ("solver", True)]
    if explore:
        endings += [("denoise", False), ("solver", False)]
    for family, (cls, options) in FAMILIES.items():
        for spacing in ("logsnr", "karras", "quadratic"):
            for final, lower in endings:
                if not explore and spacing == "karras" and final == "denoise":
                    continue  # never better than karras + solver in the exploration
                name = f"{family} {spacing}, {final}" + ("" if lower else ", full order")
                configs[name] = (
                    lambda n, c=cls, o=options, s=spacing, f=final, lo=lower: c(
                        schedule, n, spacing=s, final_step=f, lower_order_final=lo,
                        clip_denoised=False, **o))
    return configs


def run_ours(factory: Callable[[int], object], nfe: int, model, x_T: torch.Tensor) -> torch.Tensor:
    sampler = factory(nfe)
    return sampler.sample(model, None, x_T=x_T)


# ----------------------------------------------------------------------------- diffusers
def diffusers_configs() -> dict[str, Callable[[], object]]:
    import diffusers

    base = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
            "beta_end": 0.02}
    return {
        "diffusers DPM++ 2M (default)":
            lambda: diffusers.DPMSolverMultistepScheduler(**base),
        "diffusers DPM++ 2M karras":
            lambda: diffusers.DPMSolverMultistepScheduler(**base, use_karras_sigmas=True),
        "diffusers DPM++ 2M lu":
            lambda: diffusers.DPMSolverMultistepScheduler(**base, use_lu_lambdas=True),
        "diffusers DPM++ 3M":
            lambda: diffusers.DPMSolverMultistepScheduler(**base, solver_order=3),
        "diffusers UniPC (default)":
            lambda: diffusers.UniPCMultistepScheduler(**base),
        "diffusers DEIS (default)":
            lambda: diffusers.DEISMultistepScheduler(**base),
    }


def run_diffusers(make: Callable[[], object], nfe: int, model, x_T: torch.Tensor) -> torch.Tensor:
    scheduler = make()
    scheduler.set_timesteps(nfe)
    x = x_T
    for t in scheduler.timesteps:
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long)
        x = scheduler.step(model(x, t_batch), t, x).prev_sample
    return x


# ----------------------------------------------------------------------------- metrics
def scores(oracle: GaussianMixtureOracle, samples: torch.Tensor, reference: tuple) -> tuple:
    samples = samples.double()
    if not torch.isfinite(samples).all():
        return math.inf, math.inf
    mu, cov = reference
    fd = frechet_distance(samples.mean(0).numpy(), torch.cov(samples.T).reshape(
        samples.shape[1], samples.shape[1]).numpy(), mu, cov)
    fractions = torch.bincount(oracle.component(samples), minlength=len(oracle.weights))
    mode_error = (fractions.double() / len(samples) - oracle.weights).abs().sum().item()
    return fd, mode_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--samples", type=int, default=20_000, help="samples per run")
    parser.add_argument("--reference", type=int, default=400_000, help="exact draws")
    parser.add_argument("--only", nargs="*", default=None,
                        help="names (substrings) of our configurations to run")
    parser.add_argument("--explore", action="store_true",
                        help="also the configurations without lower_order_final")
    parser.add_argument("--out", default="runs/bench_sampler_quality")
    parser.add_argument("--plot", default="docs/images/sampler_quality.png")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the table and plot from OUT/results.json")
    parser.add_argument("--trained", default=None,
                        help="a quick start run folder: compare on its trained model instead")
    parser.add_argument("--per-class", type=int, default=64, help="--trained: samples per class")
    parser.add_argument("--no-clip", action="store_true",
                        help="--trained: our samplers without clipping x0 (as diffusers' default)")
    parser.add_argument("--ours-only", action="store_true", help="--trained: skip diffusers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.trained:
        trained_comparison(Path(args.trained), args.nfe if args.nfe != list(NFES) else [5, 10, 20],
                           args.per_class, not args.no_clip, args.ours_only)
        return

    if args.replot:
        saved = json.loads((Path(args.out) / "results.json").read_text())
        mean = {name: {int(k): tuple(v) for k, v in per.items()} for name, per in saved.items()}
        print_table(mean, args.nfe)
        plot(mean, args.nfe, Path(args.plot))
        return
    schedule = NoiseSchedule.linear(1000)
    ours = our_samplers(schedule, args.explore)
    if args.only is not None:
        ours = {k: v for k, v in ours.items() if any(o in k for o in args.only)}
    theirs = diffusers_configs()
    results: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for dim in args.dims:
        oracle = make_mixture(schedule, dim, seed=dim)
        exact = oracle.sample(args.reference, torch.Generator().manual_seed(100 + dim))
        reference = (exact.mean(0).numpy(), torch.cov(exact.T).reshape(dim, dim).numpy())
        x_T = torch.randn(args.samples, dim, generator=torch.Generator().manual_seed(dim),
                          dtype=torch.float64)
        # the noise floor: as many exact draws as a run has samples
        floor = oracle.sample(args.samples, torch.Generator().manual_seed(200 + dim))
        results.setdefault("exact samples (floor)", {}).setdefault(0, []).append(
            scores(oracle, floor, reference))
        for nfe in args.nfe:
            for name, factory in ours.items():
                out = run_ours(factory, nfe, oracle, x_T)
                results.setdefault(name, {}).setdefault(nfe, []).append(
                    scores(oracle, out, reference))
            for name, make in theirs.items():
                out = run_diffusers(make, nfe, oracle, x_T)
                results.setdefault(name, {}).setdefault(nfe, []).append(
                    scores(oracle, out, reference))
        print(f"d={dim} done ({time.perf_counter() - start:.0f} s)", flush=True)

    mean = {name: {nfe: tuple(sum(v[k] for v in values) / len(values) for k in range(2))
                   for nfe, values in per_nfe.items()}
            for name, per_nfe in results.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {name: {str(k): v for k, v in per.items()} for name, per in mean.items()}, indent=1))
    print_table(mean, args.nfe)
    if args.plot:
        plot(mean, args.nfe, Path(args.plot))
    print(f"total {time.perf_counter() - start:.0f} s")


def best(mean: dict, nfe: int, prefix: str | None, exclude: str = "diffusers") -> tuple[str, float]:
    candidates = {name: per[nfe][0] for name, per in mean.items() if nfe in per
                  and (name.startswith(prefix) if prefix else not name.startswith(exclude))
                  and not name.startswith("exact")}
    name = min(candidates, key=candidates.get)
    return name, candidates[name]


def print_table(mean: dict, nfes: list[int]) -> None:
    floor = mean["exact samples (floor)"][0]
    print(f"\nnoise floor (exact draws): FD {floor[0]:.2e}, mode error {floor[1]:.4f}")
    header = "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    print("\nFréchet distance to the exact law (mean over the mixtures; mode-weight error)\n")
    print(header)
    print("|" + "---|" * (len(nfes) + 1))
    rows = [name for name in mean if not name.startswith("exact")]
    for name in sorted(rows, key=lambda n: mean[n][nfes[len(nfes) // 2]][0]):
        cells = [f"{mean[name][n][0]:.2e} ({mean[name][n][1]:.3f})" for n in nfes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nbest of ours vs best of diffusers (FD ratio: ours / theirs)")
    for n in nfes:
        ours_name, ours_fd = best(mean, n, None)
        theirs_name, theirs_fd = best(mean, n, "diffusers")
        print(f"NFE {n:2d}: {ours_name} {ours_fd:.2e} | {theirs_name} {theirs_fd:.2e} | "
              f"ratio {ours_fd / theirs_fd:.2f}")


#: our configurations drawn in the plot (beside the best of ours at each NFE)
PLOTTED = ("iPNDM quadratic, denoise", "DEIS-3 quadratic, solver", "UniPC-2 bh2 logsnr, solver",
           "DEIS-3 logsnr, solver", "DPM++ 2M logsnr, solver", "DDIM trailing")


def plot(mean: dict, nfes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    theirs = [name for name in mean if name.startswith("diffusers")]
    ours = [name for name in PLOTTED if name in mean]
    colours = plt.get_cmap("tab20").colors
    for k, name in enumerate(theirs + ours):
        style = "--" if name.startswith("diffusers") else "-"
        ax.plot(nfes, [mean[name][n][0] for n in nfes], style, marker="o", ms=4,
                color=colours[k % len(colours)], label=name)
    envelope = [best(mean, n, None)[1] for n in nfes]
    ax.plot(nfes, envelope, "-", color="black", lw=2.5, label="ours: best at each NFE")
    ax.axhline(mean["exact samples (floor)"][0][0], color="gray", lw=0.8,
               label="exact draws (noise floor)")
    ax.set_yscale("log")
    ax.set_xlabel("model calls (NFE)")
    ax.set_ylabel("Fréchet distance to the exact law")
    ax.set_title("Gaussian mixture, exact predictor (d = 2, 4, 8; mean); dashed: diffusers")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


# ----------------------------------------------------------------------------- trained model
class ShapeClassifier(torch.nn.Module):
    """A small CNN for the four shapes at 16x16; ``features`` is its penultimate layer."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(64, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(image_size: int, steps: int = 600) -> ShapeClassifier:
    from ddpm_lib.data import ShapesDataset

    torch.manual_seed(0)
    data = ShapesDataset(size=steps * 64, image_size=image_size, seed=1)
    classifier = ShapeClassifier()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
    for images, labels in loader:
        loss = torch.nn.functional.cross_entropy(classifier(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return classifier.eval()


def trained_comparison(run: Path, nfes: list[int], per_class: int = 64, clip: bool = True,
                       ours_only: bool = False) -> None:
    from ddpm_lib import UNet
    from ddpm_lib.data import ShapesDataset

    model = UNet.from_pretrained(run / "ema_model").eval()
    schedule = NoiseSchedule.linear(1000)  # the quick start's
    image_size = json.loads((run / "ema_model" / "config.json").read_text())["image_size"]
    classifier = train_classifier(image_size)
    test = ShapesDataset(size=2000, image_size=image_size, seed=2)
    images, labels = map(torch.stack, zip(*[(x, torch.tensor(y)) for x, y in test]))
    with torch.no_grad():
        accuracy = (classifier(images).argmax(1) == labels).float().mean().item()
        real = classifier.features(images).double()
    real_stats = (real.mean(0).numpy(), torch.cov(real.T).numpy())
    print(f"classifier accuracy on real images: {accuracy:.3f}")

    labels = torch.arange(4 * per_class) % 4
    x_T = torch.randn(len(labels), 3, image_size, image_size,
                      generator=torch.Generator().manual_seed(0))
    scale = 2.0

    @torch.no_grad()
    def guided(x, t):  # classifier-free guidance, the same for every sampler
        both = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([labels, torch.full_like(labels, -1)]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    c = {"clip_denoised": clip}
    tag = "" if clip else " (no clipping)"
    ours = {
        "DDIM trailing" + tag: lambda n: DDIMSampler(schedule, n, **c),
        "DPM++ 2M logsnr, solver" + tag: lambda n: DPMSolverSampler(schedule, n, **c),
        "UniPC-3 bh2 logsnr, solver" + tag: lambda n: UniPCSampler(schedule, n, order=3, **c),
        "UniPC-3 bh2 quadratic, solver" + tag: lambda n: UniPCSampler(
            schedule, n, order=3, spacing="quadratic", **c),
        "DEIS-3 quadratic, solver" + tag: lambda n: DEISSampler(schedule, n, spacing="quadratic",
                                                                **c),
        "iPNDM quadratic, denoise" + tag: lambda n: PNDMSampler(
            schedule, n, spacing="quadratic", final_step="denoise", **c),
    }
    print("\n| sampler | " + " | ".join(f"NFE {n}: accuracy / FD" for n in nfes) + " |")
    print("|" + "---|" * (len(nfes) + 1))
    rows = {}
    for name, factory in ours.items():
        rows[name] = [factory(n).sample(guided, None, x_T=x_T) for n in nfes]
    for name, make in ({} if ours_only else diffusers_configs()).items():
        rows[name] = [run_diffusers(make, n, guided, x_T).clamp(-1, 1) for n in nfes]
    for name, outputs in rows.items():
        cells = []
        for out in outputs:
            with torch.no_grad():
                acc = (classifier(out.float()).argmax(1) == labels).float().mean().item()
                feats = classifier.features(out.float()).double()
            fd = frechet_distance(feats.mean(0).numpy(), torch.cov(feats.T).numpy(), *real_stats)
            cells.append(f"{acc:.3f} / {fd:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
