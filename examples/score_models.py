"""
Score-based models: NCSN and EDM on the built-in shapes
=======================================================

Two class-conditional UNets of the same size are trained on 16x16 shapes (a few CPU minutes
each): one by NCSN's denoising score matching over a geometric ladder of ten levels
(:class:`~ddpm_lib.DenoisingScoreMatchingLoss`), one by EDM's preconditioned loss
(:class:`~ddpm_lib.EDMLoss`), each wrapped in a :class:`~ddpm_lib.ScoreBasedModel` (the
network with its formulation; saved and loaded as one model). Both are then sampled by the
samplers of the score-based family, annealed Langevin dynamics, the VE SDE's predictor-corrector
and EDM's Heun, and by a DDPM sampler through the model's VP view. A small shapes classifier
says how often a sample shows the class it was asked for. Grids go to ``runs/score_models/``;
``DDPM_LIB_QUICK=1`` trains 20 steps (``runs/score_models-quick/``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ddpm_lib import (
    AnnealedLangevinSampler,
    DenoisingScoreMatchingLoss,
    DPMSolverSampler,
    EDMLoss,
    EDMSampler,
    NoiseSchedule,
    ScoreBasedModel,
    Trainer,
    UNet,
    VESDESampler,
)
from ddpm_lib.data import ShapesDataset

from _common import QUICK, run_folder  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser

example_parser(__doc__).parse_args()  # no options: --help prints what this script does
torch.set_num_threads(1)
OUT = Path(run_folder("score_models"))
STEPS = 20 if QUICK else 900
schedule = NoiseSchedule.linear(1000)  # the VP view, for the DDPM samplers
data = ShapesDataset(size=20_000, image_size=16, seed=0)


def network() -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=3, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                attention_resolutions=(8,), image_size=16, norm_groups=8, dropout=0.0,
                num_classes=4)


# %%
# Training
# --------
# The same network, data, optimiser and steps; only the formulation differs. The Trainer
# draws each loss's levels from its own generator, so a run resumes exactly.
models = {}
for objective in ("dsm", "edm"):
    model = ScoreBasedModel(network(), objective, schedule=schedule)
    loss = (EDMLoss() if objective == "edm"
            else DenoisingScoreMatchingLoss(model.noise_levels))  # 10 levels, 0.01 .. 50
    trainer = Trainer(model, loss, data, batch_size=32, lr=1e-3, warmup_steps=100,
                      ema_decay=0.998, out_dir=OUT / objective, log_every=max(1, STEPS // 3),
                      checkpoint_every=STEPS, num_workers=0, progress=False, tensorboard=False)
    start = time.process_time()
    trainer.train(STEPS)
    print(f"{objective}: {STEPS} steps in {time.process_time() - start:.0f} CPU s")
    models[objective] = trainer.ema_model.eval()


# %%
# A judge: a small CNN that tells the four shapes apart
# -----------------------------------------------------
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(64, 4))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    train = ShapesDataset(size=(40 if QUICK else 400) * 64, image_size=16, seed=1)
    for images, labels in torch.utils.data.DataLoader(train, batch_size=64, shuffle=True):
        loss = nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


judge = classifier()

# %%
# Sampling with every formulation's samplers
# ------------------------------------------
# The samplers over noise levels use the model's own levels (EDM: 0.002 .. 80; NCSN: its
# ladder) and its denoiser; DPM-Solver++ uses the model's VP view (integer timesteps).
labels = torch.arange(32) % 4
x_T = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
OUT.mkdir(parents=True, exist_ok=True)
print(f"{'model':5s} {'sampler':34s} {'calls':>5s} {'class accuracy':>15s}")
for objective, model in models.items():
    levels = model.noise_levels
    # Langevin's step eps sigma_i^2 / sigma_min^2 with eps / sigma_min^2 = 1.5 (stable below 2)
    samplers = {
        "annealed Langevin, 10 levels x 10": AnnealedLangevinSampler(
            levels, 10, steps_per_level=10, step_size=1.5 * levels.sigma_min**2),
        "VE predictor-corrector, 18 levels": VESDESampler(levels, 18),
        "EDM Heun, 18 levels": EDMSampler(levels, 18),
        "DPM-Solver++ 2M (VP view), 20 steps": DPMSolverSampler(schedule, 20),
    }
    rows = []
    for name, sampler in samplers.items():
        images = sampler.sample(model, None, x_T=x_T, model_kwargs={"y": labels},
                                generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            accuracy = (judge(images).argmax(1) == labels).float().mean().item()
        calls = getattr(sampler, "num_model_calls", sampler.num_steps)
        print(f"{objective:5s} {name:34s} {calls:5d} {accuracy:15.3f}")
        rows.append(images[:8])
    from torchvision.utils import save_image

    grid = torch.nn.functional.interpolate(torch.cat(rows), scale_factor=4)
    save_image((grid.clamp(-1, 1) + 1) / 2, OUT / f"{objective}.png", nrow=8, padding=4)
    print("saved", OUT / f"{objective}.png")
