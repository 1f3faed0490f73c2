"""Inpainting: replacement keeps the known pixels, is exact for independent pixels, and
RePaint's resampling moves the generated part toward the conditional law of Gaussian data."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib import GaussianOracle
from ddpm_lib.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    SDESampler,
    repaint_plan,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MU, STD = 0.3, 0.5


def ddpm_law(schedule):
    """Law of the full ancestral chain (fixed_small) for data N(MU, STD^2), from N(0, 1)."""
    mean, var = 0.0, 1.0
    abar = schedule.alphas_cumprod.tolist()
    for t in range(len(abar) - 1, -1, -1):
        a, a_prev = abar[t], (abar[t - 1] if t > 0 else 1.0)
        beta = 1 - a / a_prev
        c = math.sqrt(1 - a) / (a * STD**2 + 1 - a)
        d = -c * math.sqrt(a) * MU
        # x0 = (x - sqrt(1 - a) eps) / sqrt(a); mean = coef1 x0 + coef2 x (eq. 7)
        coef1 = math.sqrt(a_prev) * beta / (1 - a)
        coef2 = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
        gain = coef1 * (1 - math.sqrt(1 - a) * c) / math.sqrt(a) + coef2
        shift = coef1 * (-math.sqrt(1 - a) * d) / math.sqrt(a)
        noise = beta * (1 - a_prev) / (1 - a) if t > 0 else 0.0
        mean, var = gain * mean + shift, gain**2 * var + noise
    return mean, var


@pytest.mark.parametrize("resample", [1, 3])
def test_independent_pixels_keep_their_law(small_schedule, oracle, generator, resample):
    """The oracle treats pixels independently, so the generated pixels follow the sampler's
    unconditional law whatever the known ones are; the known ones equal the image."""
    image = torch.full((2048, 1, 2, 2), -0.7, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64).reshape(1, 1, 2, 2)
    sampler = DDPMSampler(small_schedule, clip_denoised=False)
    oracle64 = GaussianOracle(small_schedule, mean=MU, std=STD)
    x, trajectory = sampler.inpaint(oracle64, image, mask, resample=resample, jump_length=5,
                                    generator=generator, return_trajectory=True)
    assert torch.equal(x[:, 0, 0, 0], image[:, 0, 0, 0]) and torch.equal(x[:, 0, 1, 1],
                                                                           image[:, 0, 1, 1])
    unknown = torch.cat([x[:, 0, 0, 1], x[:, 0, 1, 0]])
    mean, var = ddpm_law(small_schedule)
    n = unknown.numel()
    assert abs(float(unknown.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(unknown.var()) - var) < 5 * var * math.sqrt(2 / n)
    expected_calls = len(repaint_plan(50, 0, resample, 5))
    assert trajectory.num_model_calls == expected_calls
    assert expected_calls == 50 + (resample - 1) * 5 * 9


class CorrelatedOracle:
    """The exact eps predictor for 2-D Gaussian data N(mu, Sigma) (correlation rho)."""

    def __init__(self, schedule, mu, std, rho):
        self.mu = torch.tensor(mu, dtype=torch.float64)
        std = torch.tensor(std, dtype=torch.float64)
        self.sigma = torch.outer(std, std) * torch.tensor([[1.0, rho], [rho, 1.0]]).double()
        abar = schedule.alphas_cumprod[:, None, None]
        # (T, 2, 2): sqrt(1 - abar) (abar Sigma + (1 - abar) I)^-1
        covariance = abar * self.sigma + (1 - abar) * torch.eye(2)
        self.gain = (1 - abar).sqrt() * torch.linalg.inv(covariance)
        self.abar = schedule.alphas_cumprod

    def __call__(self, x, t):
        centred = x - self.abar[t][:, None].sqrt() * self.mu
        return torch.einsum("bij,bj->bi", self.gain[t], centred)


def test_resampling_moves_toward_the_conditional_law(small_schedule, generator):
    mu, std, rho, known = (0.2, -0.1), (0.5, 0.4), 0.9, 0.8
    model = CorrelatedOracle(small_schedule, mu, std, rho)
    conditional_mean = mu[1] + rho * std[1] / std[0] * (known - mu[0])
    image = torch.tensor([[known, 0.0]], dtype=torch.float64).expand(4096, 2)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sampler = DDPMSampler(small_schedule, clip_denoised=False)
    errors = {}
    for resample in (1, 10):
        x = sampler.inpaint(model, image, mask, resample=resample, jump_length=1,
                            generator=generator)
        assert torch.equal(x[:, 0], image[:, 0])
        errors[resample] = abs(float(x[:, 1].mean()) - conditional_mean)
    # replacement alone ignores most of the correlation; resampling recovers most of it
    assert errors[1] > 0.05
    assert errors[10] < 0.35 * errors[1]


@pytest.mark.parametrize("factory", [
    lambda s: DDIMSampler(s, num_steps=10),
    lambda s: DDIMSampler(s, num_steps=10, eta=1.0),
    lambda s: DPMSolverSampler(s, num_steps=10),
    lambda s: SDESampler(s, 10),
])
def test_every_sampler_keeps_the_known_part(small_schedule, oracle, generator, factory):
    sampler = factory(small_schedule)
    image = torch.rand(3, 2, 4, 4, generator=generator) * 2 - 1
    mask = (torch.rand(1, 1, 4, 4, generator=generator) > 0.5).float()
    x = sampler.inpaint(oracle, image, mask, resample=2, jump_length=3, generator=generator)
    assert x.shape == image.shape and bool(torch.isfinite(x).all())
    keep = mask.expand_as(image).bool()
    assert torch.equal(x[keep], image[keep])


def test_guidance_kwargs(small_schedule, generator):
    batches = []

    def model(x, t, y=None):
        batches.append((x.shape[0], y.tolist()))
        return 0.1 * x

    sampler = DDIMSampler(small_schedule, num_steps=4)
    image = torch.zeros(2, 1, 3, 3)
    mask = torch.zeros(1, 1, 3, 3)
    mask[..., 0] = 1
    x = sampler.inpaint(model, image, mask, model_kwargs={"y": torch.tensor([3, 5])},
                        guidance_scale=2.0, generator=generator)
    assert torch.equal(x[..., 0], image[..., 0])
    assert all(size == 4 and labels == [3, 5, -1, -1] for size, labels in batches)


def test_bad_input(small_schedule, oracle, generator):
    sampler = DDIMSampler(small_schedule, num_steps=10)
    image = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"mask must broadcast to the image shape \(2, 3, 4, 4\)"):
        sampler.inpaint(oracle, image, torch.ones(1, 1, 5, 4))
    with pytest.raises(ValueError, match=r"mask values must be in \[0, 1\]"):
        sampler.inpaint(oracle, image, torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(TypeError, match="mask"):
        sampler.inpaint(oracle, image, [[1.0]])
    with pytest.raises(ValueError, match="resample"):
        sampler.inpaint(oracle, image, torch.ones(4, 4), resample=0)
    with pytest.raises(ValueError, match="jump_length"):
        sampler.inpaint(oracle, image, torch.ones(4, 4), resample=2, jump_length=10)
    with pytest.raises(ValueError, match="x_T"):
        sampler.inpaint(oracle, image, torch.ones(4, 4), x_T=torch.zeros(1, 3, 4, 4))
    with pytest.raises(NotImplementedError, match="euler_maruyama"):
        SDESampler(small_schedule, 10, method="heun").inpaint(oracle, image, torch.ones(4, 4))


def test_repaint_plan():
    assert repaint_plan(5, 0, 1, 1) == [0, 1, 2, 3, 4]
    assert repaint_plan(5, 0, 2, 2) == [0, 1, 0, 1, 2, 3, 2, 3, 4]
    assert repaint_plan(4, 0, 3, 1) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    plan = repaint_plan(250, 0, 10, 10)
    assert len(plan) == 250 + 9 * 10 * 24 and plan[-1] == 249
