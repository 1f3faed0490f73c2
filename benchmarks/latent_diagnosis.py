"""Why latent diffusion trailed pixel diffusion on the digits (issue 32): the measurements.

Run after ``bench_latent.py --part d`` with the same ``--out``: it reuses that run's
autoencoder and UNets (``latent_digits.cached_unet``) and trains what is missing. It prints

1. **the latents after fitting**: per channel mean, std, skewness, excess kurtosis, the
   Kolmogorov-Smirnov distance of the standardised values to N(0, 1), the share beyond 2 std
   (4.55% for a Gaussian), and the largest correlation between two channels, under LDM's
   single scale factor and under the per-channel normalisation;
2. **the KL weight's effect** (``--kl-weights``): for each, an autoencoder (``--ae-steps``),
   its reconstruction PSNR, the mean posterior std (in units of the latents' spread), the
   channel offsets left by the single factor, the latents' kurtosis, and the Fréchet distance /
   accuracy of a latent UNet trained with the default recipe under each normalisation;
3. **latent against pixel loss**, per band of timesteps: the eps error (what the eps loss
   measures) and the x0 error over the data's variance (a unitless share of the signal the
   model has not recovered, comparable between pixels and latents), for the pixel and latent
   UNets of part d with the pixel defaults and with the recipe;
4. **the sampler and its steps in latent space**: DDIM, DDPM, DPM-Solver++ and UniPC at several
   step counts on the default latent model;
5. **normalisation across seeds** (``--seeds``): the recipe with each normalisation, several
   initialisations and batch orders, so that the choice is not one seed's noise.

Usage::

    python benchmarks/bench_latent.py --part d --threads 1 --out /tmp/latent2_runs
    python benchmarks/latent_diagnosis.py --threads 1 --out /tmp/latent2_runs
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import latent_digits as digits

from ddpm_lib import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    LatentDiffusion,
    LatentRecipe,
    NoiseSchedule,
    UniPCSampler,
)
from ddpm_lib.metrics import psnr as image_psnr

PIXEL_DEFAULTS = LatentRecipe("eps", None, 2e-4)  # what SimpleLoss / ddpm-lib train default to
BEFORE = LatentRecipe("eps", None, 2e-4, "global")  # latent runs before issue 32


def fitted(ae: Any, images: torch.Tensor, normalization: str) -> LatentDiffusion:
    latent = LatentDiffusion(ae)
    latent.fit_scale_factor(images, num_samples=len(images), normalization=normalization)
    return latent


@torch.no_grad()
def gaussianity(z: torch.Tensor) -> list[tuple[float, ...]]:
    """Per channel ``(mean, std, skewness, excess kurtosis, KS distance, share beyond 2 std)``
    of latents ``(N, C, h, w)``."""
    from scipy.stats import kstest

    rows = []
    for (mean, std, skew, kurt), channel in zip(digits.latent_statistics(z),
                                                 z.double().transpose(0, 1).flatten(1)):
        standard = ((channel - mean) / std).numpy()
        ks = float(kstest(standard, "norm").statistic)
        beyond = float((abs(standard) > 2).mean())
        rows.append((mean, std, skew, kurt, ks, beyond))
    return rows


def channel_correlation(z: torch.Tensor) -> float:
    """The largest absolute correlation between two channels (over images and positions)."""
    flat = z.double().transpose(0, 1).flatten(1)
    corr = torch.corrcoef(flat)
    corr.fill_diagonal_(0)
    return float(corr.abs().max())


def part_latents(ae: Any, images: torch.Tensor) -> None:
    print("\n1. latents after fitting (1,797 digits): per channel mean / std / skewness / "
          "excess kurtosis / KS distance to N(0,1) / share beyond 2 std (Gaussian: 0.0455)")
    for normalization in ("global", "channel"):
        latent = fitted(ae, images, normalization)
        z = digits.encode_all(latent, images)
        print(f"  {normalization} (scale_factor {latent.scale_factor:.4f}); largest correlation "
              f"between two channels {channel_correlation(z):.3f}")
        for c, row in enumerate(gaussianity(z)):
            print(f"    channel {c}: {row[0]:+.2f} / {row[1]:.2f} / {row[2]:+.2f} / "
                  f"{row[3]:+.2f} / {row[4]:.3f} / {row[5]:.4f}")


@torch.no_grad()
def posterior_spread(ae: Any, images: torch.Tensor) -> float:
    """Mean posterior std over the std of the posterior means (how much of the latents'
    spread the encoder's own noise is)."""
    means, stds = [], []
    for chunk in images.split(256):
        posterior = ae.encode(chunk)
        means.append(posterior.mean)
        stds.append(posterior.std)
    return float(torch.cat(stds).mean() / torch.cat(means).std())


def part_kl(images: torch.Tensor, labels: torch.Tensor, judge: Any,
            args: argparse.Namespace) -> None:
    print(f"\n2. the KL weight (autoencoders of {args.ae_steps} steps; latent UNets: the default "
          f"recipe, {args.steps} steps; FD / accuracy of {args.num_eval} samples)")
    print("| kl_weight | AE CPU s | PSNR dB | posterior std / latent std | s (global) | "
          "channel means (global) | kurtosis | FD, channel norm | FD, global scale |")
    print("| ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    for kl_weight in args.kl_weights:
        ae, ae_cpu = digits.train_autoencoder(images, args, kl_weight)
        name = digits.autoencoder_folder(args, kl_weight).name
        scores = {}
        for normalization in ("channel", "global"):
            latent = fitted(ae, images, normalization)
            recipe = LatentRecipe(normalization=normalization)
            z = digits.encode_all(latent, images)
            model, *_ = digits.cached_unet(z, labels, recipe, args.steps, None, args,
                                           f"{name}_{normalization}")
            scores[normalization] = digits.score_samples(
                judge, model, digits.ddim(recipe, False, args), latent, args)
            if normalization == "global":
                stats = digits.latent_statistics(z)
                rec = torch.cat([latent.decode(c).clamp(-1, 1) for c in z.split(256)])
                psnr = float(image_psnr(rec, images).mean())
                global_scale = latent.scale_factor
        means = ", ".join(f"{row[0]:+.2f}" for row in stats)
        kurts = f"{min(r[3] for r in stats):+.2f} to {max(r[3] for r in stats):+.2f}"
        print(f"| {kl_weight:g} | {ae_cpu:.0f} | {psnr:.1f} | {posterior_spread(ae, images):.3f} | "
              f"{global_scale:.3f} | {means} | {kurts} | "
              f"{scores['channel']['fd']:.1f} ({scores['channel']['accuracy']:.2f}) | "
              f"{scores['global']['fd']:.1f} ({scores['global']['accuracy']:.2f}) |", flush=True)


@torch.no_grad()
def loss_bands(model: Any, data: torch.Tensor, labels: torch.Tensor, prediction: str,
               bands: int = 5, per_band: int = 512) -> list[tuple[float, float]]:
    """Per band of timesteps ``(eps error, x0 error / data variance)`` of ``model`` on
    ``per_band`` items with fixed noise and timesteps."""
    schedule = NoiseSchedule.linear(1000)
    generator = torch.Generator().manual_seed(5)
    variance = float(data.double().var())
    rows = []
    for band in range(bands):
        index = torch.randint(len(data), (per_band,), generator=generator)
        low, high = band * 1000 // bands, (band + 1) * 1000 // bands
        t = torch.randint(low, high, (per_band,), generator=generator)
        x0 = data[index]
        noise = torch.randn(x0.shape, generator=generator)
        x_t = schedule.q_sample(x0, t, noise=noise)
        output = torch.cat([model(x_t[i:i + 128], t[i:i + 128], y=labels[index][i:i + 128])
                            for i in range(0, per_band, 128)])
        if prediction == "v":
            x0_hat = schedule.predict_x0_from_v(x_t, t, output)
        else:
            x0_hat = schedule.predict_x0_from_eps(x_t, t, output)
        eps_hat = schedule.predict_eps_from_x0(x_t, t, x0_hat)
        rows.append((float((eps_hat - noise).square().mean()),
                     float((x0_hat - x0).square().mean()) / variance))
    return rows


def part_loss(images: torch.Tensor, labels: torch.Tensor, ae: Any,
              args: argparse.Namespace) -> None:
    print(f"\n3. loss per band of timesteps (models of part d, {args.steps} steps; 512 items per "
          "band, fixed noise): eps error, and x0 error / data variance")
    name = digits.autoencoder_folder(args).name
    models = [("pixel, defaults", PIXEL_DEFAULTS, None),
              ("latent, before", BEFORE, "global"),
              ("pixel, recipe", LatentRecipe(), None),
              ("latent, defaults (recipe)", LatentRecipe(), "channel")]
    table = []
    for label, recipe, normalization in models:
        if normalization is None:
            data, space = images, "pixel"
        else:
            data = digits.encode_all(fitted(ae, images, normalization), images)
            space = f"{name}_{normalization}"
        model, *_ = digits.cached_unet(data, labels, recipe, args.steps, None, args, space)
        table.append((label, loss_bands(model, data, labels, recipe.prediction)))
    bands = len(table[0][1])
    header = " | ".join(f"t {b * 1000 // bands}-{(b + 1) * 1000 // bands - 1}"
                        for b in range(bands))
    print(f"| model | {header} |")
    print("| --- |" + " ---: |" * bands)
    for label, rows in table:
        print(f"| {label} | " + " | ".join(f"{eps:.4f} / {x0:.3f}" for eps, x0 in rows) + " |")


def part_samplers(images: torch.Tensor, labels: torch.Tensor, judge: Any, ae: Any,
                  args: argparse.Namespace) -> None:
    recipe = LatentRecipe()
    latent = fitted(ae, images, recipe.normalization)
    z = digits.encode_all(latent, images)
    name = digits.autoencoder_folder(args).name
    model, *_ = digits.cached_unet(z, labels, recipe, args.steps, None, args,
                                   f"{name}_{recipe.normalization}")
    schedule = NoiseSchedule.linear(1000)
    print(f"\n4. samplers in latent space (the default latent model, {args.steps} steps; "
          f"{args.num_eval} samples, unclipped)")
    print("| sampler | steps | FD | accuracy | confidence | CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for cls, steps in ((DDIMSampler, 10), (DDIMSampler, 25), (DDIMSampler, 50),
                       (DDIMSampler, 100), (DDPMSampler, 100), (DDPMSampler, 250),
                       (DPMSolverSampler, 10), (DPMSolverSampler, 20), (UniPCSampler, 10)):
        start = time.process_time()
        scores = digits.score_samples(judge, model, recipe.sampler(cls, schedule, steps),
                                      latent, args)
        print(f"| {cls.__name__} | {steps} | {scores['fd']:.2f} | {scores['accuracy']:.3f} | "
              f"{scores['confidence']:.3f} | {time.process_time() - start:.1f} |", flush=True)


def part_seeds(images: torch.Tensor, labels: torch.Tensor, judge: Any, ae: Any,
               args: argparse.Namespace) -> None:
    print(f"\n5. normalisation across seeds (the recipe, {args.steps} steps; seeds "
          f"{args.seeds}): FD (accuracy) per seed, mean and standard deviation of FD")
    name = digits.autoencoder_folder(args).name
    for normalization in ("channel", "global"):
        recipe = LatentRecipe(normalization=normalization)
        latent = fitted(ae, images, normalization)
        z = digits.encode_all(latent, images)
        fds, cells = [], []
        for seed in args.seeds:
            model, *_ = digits.cached_unet(z, labels, recipe, args.steps, None, args,
                                           f"{name}_{normalization}", seed=seed)
            scores = digits.score_samples(judge, model, digits.ddim(recipe, False, args),
                                          latent, args)
            fds.append(scores["fd"])
            cells.append(f"{scores['fd']:.1f} ({scores['accuracy']:.2f})")
        spread = statistics.stdev(fds) if len(fds) > 1 else 0.0
        print(f"  {normalization:8s} {'  '.join(cells)}   mean {statistics.mean(fds):.2f} "
              f"+- {spread:.2f}", flush=True)


PARTS = ("latents", "kl", "loss", "samplers", "seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    digits.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kl-weights", type=float, nargs="+", default=[1e-6, 1e-2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = digits.digits_images()
    judge = digits.Judge(images, labels, args.pca)
    ae, _ = digits.train_autoencoder(images, args)
    start = time.process_time()
    if "latents" in args.parts:
        part_latents(ae, images)
    if "loss" in args.parts:
        part_loss(images, labels, ae, args)
    if "samplers" in args.parts:
        part_samplers(images, labels, judge, ae, args)
    if "seeds" in args.parts:
        part_seeds(images, labels, judge, ae, args)
    if "kl" in args.parts:
        part_kl(images, labels, judge, args)
    print(f"\n({time.process_time() - start:.0f} CPU s, {torch.get_num_threads()} thread(s))")


if __name__ == "__main__":
    main()
