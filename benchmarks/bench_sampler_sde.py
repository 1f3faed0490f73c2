"""Measure the score-SDE samplers, Analytic-DPM and RePaint on exact Gaussian predictors.

Data N(0.3, 0.5^2 I) (d = 4) with the exact eps predictor (``ddpm_lib.GaussianOracle``), so
only the sampler's own error is left. Prints, for the linear schedule with T = 1000:

* the Fréchet distance ``(m - mu)^2 + (sqrt(v) - s)^2`` of the sampled law to the data law
  against the number of model calls, for Euler-Maruyama, predictor-corrector, PF-ODE Heun,
  the adaptive solver (its tolerance sets the calls) and DDIM (PF-ODE Euler);
* the error ratio of Heun on the PF-ODE when the steps halve (order 2: ratio 4);
* DDPM with 10 / 25 steps and fixed variances against Analytic-DPM's optimal variance;
* RePaint on 2-D correlated Gaussian data: the generated pixel's mean and variance against
  the exact conditional law, for resampling counts and jump lengths.

Usage: ``python benchmarks/bench_sampler_sde.py [--samples 16384]`` (about a minute on two
CPU cores). Everything is seeded; the figures are properties of the samplers, not timings.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib import GaussianOracle, NoiseSchedule  # noqa: E402
from ddpm_lib.samplers import (  # noqa: E402
    AnalyticVariance,
    DDIMSampler,
    DDPMSampler,
    SDESampler,
)

MU, STD = 0.3, 0.5


def frechet(x: torch.Tensor) -> float:
    return (float(x.mean()) - MU) ** 2 + (math.sqrt(float(x.var())) - STD) ** 2


def samplers_vs_calls(schedule, oracle, samples: int) -> None:
    print("\n## Fréchet distance to N(0.3, 0.5^2) against model calls (d = 4, "
          f"{samples} samples; Monte-Carlo floor ~{2 * STD**2 / (samples * 4):.1e})")
    print("| sampler | setting | model calls | FD |")
    print("|---|---|---|---|")
    shape = (samples, 4)
    rows = []
    for steps in (10, 25, 100, 400):
        sampler = SDESampler(schedule, steps, method="euler_maruyama", clip_denoised=False)
        rows.append(("Euler-Maruyama (reverse SDE)", f"{steps} levels", sampler, steps))
    for steps in (10, 50, 200):
        sampler = SDESampler(schedule, steps, method="predictor_corrector", clip_denoised=False)
        rows.append(("predictor-corrector (snr 0.16, 1 corrector)", f"{steps} levels", sampler,
                     1 + (steps - 1) * 2))
    for steps in (5, 10, 25):
        sampler = SDESampler(schedule, steps, method="heun", clip_denoised=False)
        rows.append(("PF-ODE Heun", f"{steps} levels", sampler, 2 * steps - 1))
    for steps in (10, 25, 50):
        sampler = DDIMSampler(schedule, steps, clip_denoised=False)
        rows.append(("DDIM (PF-ODE Euler)", f"{steps} steps", sampler, steps))
    for name, setting, sampler, calls in rows:
        x = sampler.sample(oracle, shape, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
        print(f"| {name} | {setting} | {calls} | {frechet(x):.2e} |")
    for atol, rtol in ((0.05, 0.2), (0.0078, 0.05), (0.002, 0.01)):
        sampler = SDESampler(schedule, method="adaptive", atol=atol, rtol=rtol,
                             clip_denoised=False)
        x, trajectory = sampler.sample(oracle, shape, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64, return_trajectory=True)
        print(f"| adaptive (Gotta Go Fast) | atol {atol:g}, rtol {rtol:g} | "
              f"{trajectory.num_model_calls} | {frechet(x):.2e} |")


def heun_order(schedule, oracle) -> None:
    print("\n## PF-ODE Heun: max error of the map t = 600 -> 100 against the exact flow")
    print("| levels | model calls | error | ratio |")
    print("|---|---|---|---|")
    abar = schedule.alphas_cumprod
    m0, v0 = abar[600].sqrt() * MU, abar[600] * STD**2 + 1 - abar[600]
    m1, v1 = abar[100].sqrt() * MU, abar[100] * STD**2 + 1 - abar[100]
    x_start = m0 + v0.sqrt() * torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    exact = m1 + (v1 / v0).sqrt() * (x_start - m0)
    previous = None
    for levels in (6, 11, 21, 41, 81):
        grid = np.linspace(600, 100, levels).round().astype(int).tolist()
        sampler = SDESampler(schedule, method="heun", timesteps=grid, clip_denoised=False)
        _, trajectory = sampler.sample(oracle, None, x_T=x_start, return_trajectory=True)
        error = float((trajectory.samples[-2] - exact).abs().max())
        ratio = f"{previous / error:.2f}" if previous else ""
        print(f"| {levels} | {trajectory.num_model_calls} | {error:.2e} | {ratio} |")
        previous = error


def analytic_dpm(schedule, oracle, samples: int) -> None:
    print("\n## DDPM variance: sampled variance (data: 0.25) and KL to the data law")
    print("| steps | variance | sample variance | KL (nats/dim) |")
    print("|---|---|---|---|")
    table = AnalyticVariance.gaussian(schedule, STD)
    for steps in (10, 25):
        for name, variance in (("fixed_small", "fixed_small"), ("fixed_large", "fixed_large"),
                               ("Analytic-DPM", table)):
            sampler = DDPMSampler(schedule, variance=variance, num_steps=steps,
                                  clip_denoised=False)
            x = sampler.sample(oracle, (samples, 4), generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
            m, v = float(x.mean()), float(x.var())
            kl = 0.5 * (v / STD**2 - 1 - math.log(v / STD**2)) + (m - MU) ** 2 / (2 * STD**2)
            print(f"| {steps} | {name} | {v:.4f} | {kl:.1e} |")


class CorrelatedOracle:
    """The exact eps predictor for 2-D Gaussian data N(mu, Sigma)."""

    def __init__(self, schedule, mu, std, rho):
        self.mu = torch.tensor(mu, dtype=torch.float64)
        std = torch.tensor(std, dtype=torch.float64)
        sigma = torch.outer(std, std) * torch.tensor([[1.0, rho], [rho, 1.0]]).double()
        abar = schedule.alphas_cumprod[:, None, None]
        self.gain = (1 - abar).sqrt() * torch.linalg.inv(abar * sigma + (1 - abar) * torch.eye(2))
        self.abar = schedule.alphas_cumprod

    def __call__(self, x, t):
        centred = x - self.abar[t][:, None].sqrt() * self.mu
        return torch.einsum("bij,bj->bi", self.gain[t], centred)


def repaint(samples: int) -> None:
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    mu, std, rho, known = (0.2, -0.1), (0.5, 0.4), 0.9, 0.8
    model = CorrelatedOracle(schedule, mu, std, rho)
    mean = mu[1] + rho * std[1] / std[0] * (known - mu[0])
    var = std[1] ** 2 * (1 - rho**2)
    print(f"\n## RePaint, 2-D Gaussian (rho = {rho}), pixel 0 known = {known}: law of pixel 1 "
          f"(exact conditional: mean {mean:.3f}, variance {var:.4f}); DDPM, T = 50")
    print("| resample r | jump j | model calls | mean | variance |")
    print("|---|---|---|---|---|")
    image = torch.tensor([[known, 0.0]], dtype=torch.float64).expand(samples, 2)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sampler = DDPMSampler(schedule, clip_denoised=False)
    for resample, jump in ((1, 1), (5, 1), (10, 1), (20, 1), (10, 5), (10, 10)):
        x, trajectory = sampler.inpaint(model, image, mask, resample=resample, jump_length=jump,
                                        generator=torch.Generator().manual_seed(0),
                                        return_trajectory=True)
        print(f"| {resample} | {jump} | {trajectory.num_model_calls} | {float(x[:, 1].mean()):.3f}"
              f" | {float(x[:, 1].var()):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=16384)
    args = parser.parse_args()
    torch.set_num_threads(1)
    schedule = NoiseSchedule.linear(1000)
    oracle = GaussianOracle(schedule, mean=MU, std=STD)
    samplers_vs_calls(schedule, oracle, args.samples)
    heun_order(schedule, oracle)
    analytic_dpm(schedule, oracle, args.samples)
    repaint(args.samples)


if __name__ == "__main__":
    main()
