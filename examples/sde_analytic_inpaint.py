"""
Score-SDE samplers, Analytic-DPM and inpainting
===============================================

The exact noise predictor of Gaussian "images" (a smooth colour pattern plus independent
pixel noise of std 0.3) drives the samplers of the score-SDE view (reverse SDE, predictor-
corrector, probability-flow Heun, adaptive), DDPM with fixed and Analytic-DPM variances, and
RePaint inpainting. Each is scored against the true data law: the per-pixel 2-Wasserstein
distance between the samples' Gaussian fit and the data's (0 is perfect). The images go to
``runs/sde_analytic_inpaint/``. ``DDPM_LIB_QUICK=1`` uses fewer samples (and
``runs/sde_analytic_inpaint-quick/``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm_lib import (
    AnalyticVariance,
    DDPMSampler,
    GaussianOracle,
    NoiseSchedule,
    SDESampler,
    optimal_timesteps,
)

from _common import QUICK, run_folder  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser

example_parser(__doc__).parse_args()  # no options: --help prints what this script does
OUT = Path(run_folder("sde_analytic_inpaint"))
SIZE, STD = 16, 0.3
BATCH = 32 if QUICK else 256

schedule = NoiseSchedule.linear(1000)
y, x = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
mean = torch.stack([0.5 * torch.sin(3 * x), 0.5 * torch.cos(2 * y), 0.4 * x * y])  # (3, H, W)
model = GaussianOracle(schedule, mean=mean, std=STD)


def w2(samples: torch.Tensor) -> float:
    """Mean over pixels of W2(N(m, s^2), N(mean, STD^2))."""
    m, s = samples.double().mean(0), samples.double().std(0)
    return float(((m - mean.double()) ** 2 + (s - STD) ** 2).sqrt().mean())


def save(rows: list[torch.Tensor], name: str) -> Path:
    from torchvision.utils import save_image

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    grid = torch.nn.functional.interpolate(torch.cat(rows), scale_factor=4)  # 64 px tiles
    save_image((grid.clamp(-1, 1) + 1) / 2, path, nrow=8, padding=4)
    return path


# %%
# The score-SDE samplers
# ----------------------
# One row of 8 samples per sampler, same seed; the number of model calls of the adaptive
# solver is read from its trajectory.
shape = (BATCH, 3, SIZE, SIZE)
runs = [
    ("Euler-Maruyama, 100 levels", SDESampler(schedule, 100, method="euler_maruyama",
                                              clip_denoised=False)),
    ("predictor-corrector, 50 levels", SDESampler(schedule, 50, method="predictor_corrector",
                                                  clip_denoised=False)),
    ("PF-ODE Heun, 10 levels", SDESampler(schedule, 10, method="heun", clip_denoised=False)),
    ("adaptive, atol 0.0078, rtol 0.05", SDESampler(schedule, method="adaptive",
                                                    clip_denoised=False)),
]
rows = []
print(f"{'sampler':34s} {'model calls':>11s} {'W2 to data':>11s}")
for name, sampler in runs:
    samples, trajectory = sampler.sample(model, shape, generator=torch.Generator().manual_seed(0),
                                         return_trajectory=True)
    print(f"{name:34s} {trajectory.num_model_calls:11d} {w2(samples):11.4f}")
    rows.append(samples[:8])
print("saved", save(rows, "sde_samplers.png"))

# %%
# Analytic-DPM
# ------------
# Gamma_t estimated from data samples (its exact value for Gaussian data is known), then
# 10-step DDPM with fixed variances and with the optimal one, on a uniform grid and on the
# grid of Watson et al.'s dynamic programming.
data = mean + STD * torch.randn(512, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
table = AnalyticVariance.estimate(model, schedule, data, num_samples=64 if QUICK else 256,
                                  batch_size=2048, progress=False,
                                  generator=torch.Generator().manual_seed(2),
                                  )
exact = AnalyticVariance.gaussian(schedule, STD).gamma
error = float((table.gamma / exact - 1).abs().max())
print(f"Gamma_t: largest relative error of the estimate {error:.3f}")
grid = optimal_timesteps(schedule, table, 10)
print("DP-optimal 10 timesteps:", grid)
for name, sampler in [
    ("DDPM 10 steps, fixed_small", DDPMSampler(schedule, num_steps=10, clip_denoised=False)),
    ("DDPM 10 steps, fixed_large", DDPMSampler(schedule, variance="fixed_large", num_steps=10,
                                               clip_denoised=False)),
    ("DDPM 10 steps, Analytic-DPM", DDPMSampler(schedule, variance=table, num_steps=10,
                                                clip_denoised=False)),
    ("DDPM DP grid, Analytic-DPM", DDPMSampler(schedule, variance=table, timesteps=grid,
                                               clip_denoised=False)),
]:
    samples = sampler.sample(model, shape, generator=torch.Generator().manual_seed(0))
    print(f"{name:34s} {'':11s} {w2(samples):11.4f}")

# %%
# Inpainting
# ----------
# The centre of four data images is generated. Rows: the images, the known part, plain
# replacement, RePaint (resample 5, jump 5) on 50 DDPM steps.
images = data[:8]
mask = torch.ones(1, 1, SIZE, SIZE)
mask[..., 4:12, 4:12] = 0
sampler = DDPMSampler(schedule, num_steps=50, clip_denoised=False)
replaced = sampler.inpaint(model, images, mask, generator=torch.Generator().manual_seed(0))
repainted = sampler.inpaint(model, images, mask, resample=5, jump_length=5,
                            generator=torch.Generator().manual_seed(0))
assert torch.equal(repainted * mask, images * mask)  # the known pixels are kept exactly
print("saved", save([images, images * mask - (1 - mask), replaced, repainted], "inpaint.png"))
