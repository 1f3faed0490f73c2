"""Step grids (``spacing=``) and explicit ``timesteps=`` on every sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_lib import GaussianOracle, NoiseSchedule
from ddpm_lib.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from ddpm_lib.samplers.grids import SPACINGS, grid_timesteps, half_log_snr

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLER_CLASSES = [DDIMSampler, DDPMSampler, DPMSolverSampler]


def test_every_grid_places_distinct_timesteps_for_every_n(small_schedule):
    T = small_schedule.num_timesteps
    for spacing in SPACINGS:
        for n in range(1, T + 1):
            steps = grid_timesteps(small_schedule.alphas_cumprod, n, spacing)
            assert steps.dtype == torch.long and steps.numel() == n, (spacing, n)
            assert bool((steps[:-1] > steps[1:]).all()), (spacing, n, steps)
            assert 0 <= int(steps.min()) and int(steps.max()) <= T - 1
        # n = T is every timestep
        assert torch.equal(grid_timesteps(small_schedule.alphas_cumprod, T, spacing),
                           torch.arange(T - 1, -1, -1))


def test_logsnr_grid_is_uniform_in_lambda(schedule):
    lambdas = half_log_snr(schedule.alphas_cumprod)
    for n in (5, 10, 20):
        steps = grid_timesteps(schedule.alphas_cumprod, n, "logsnr")
        assert steps[0] == 999 and steps[-1] == 0
        targets = torch.linspace(float(lambdas[-1]), float(lambdas[0]), n, dtype=torch.float64)
        # each point is the nearest training timestep to its target: within half a local gap
        for t, target in zip(steps.tolist(), targets.tolist()):
            neighbours = [lambdas[max(t - 1, 0)], lambdas[min(t + 1, 999)]]
            assert all(abs(lambdas[t] - target) <= abs(v - target) + 1e-12 for v in neighbours)


def test_grids_equal_diffusers_lu_and_karras(schedule):
    """The same timesteps as diffusers' use_lu_lambdas / use_karras_sigmas (rounded)."""
    diffusers = pytest.importorskip("diffusers")
    for flag, spacing, largest in (("use_lu_lambdas", "logsnr", 25),
                                   ("use_karras_sigmas", "karras", 17)):
        for n in range(2, largest + 1):
            reference = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000,
                                                              **{flag: True})
            reference.set_timesteps(n)
            ours = grid_timesteps(schedule.alphas_cumprod, n, spacing)
            assert torch.equal(ours, reference.timesteps.round().long()), (spacing, n)


def test_karras_grid_formula(schedule):
    n, rho = 8, 7.0
    sigmas_of_t = ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt()
    s_max, s_min = float(sigmas_of_t[-1]), float(sigmas_of_t[0])
    ramp = np.linspace(0, 1, n)
    expected_sigmas = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    steps = grid_timesteps(schedule.alphas_cumprod, n, "karras")
    for t, sigma in zip(steps.tolist(), expected_sigmas):
        nearest = int(np.abs(np.log(sigmas_of_t.numpy()) - math.log(sigma)).argmin())
        assert t == nearest


def test_quadratic_grid_is_ddims():
    for n in (5, 10, 20):
        expected = (np.linspace(0, np.sqrt(1000 * 0.8), n) ** 2).astype(int)[::-1].tolist()
        steps = grid_timesteps(NoiseSchedule.linear(1000).alphas_cumprod, n, "quadratic")
        assert steps.tolist() == expected


def test_grid_cannot_place_more_steps_than_timesteps(small_schedule):
    with pytest.raises(ValueError, match="spacing='logsnr' cannot place num_steps=51"):
        grid_timesteps(small_schedule.alphas_cumprod, 51, "logsnr")
    with pytest.raises(ValueError, match="spacing must be one of .*got 'cosine'"):
        grid_timesteps(small_schedule.alphas_cumprod, 5, "cosine")


@pytest.mark.parametrize("cls", SAMPLER_CLASSES)
@pytest.mark.parametrize("spacing", ["logsnr", "karras", "quadratic"])
def test_every_sampler_takes_every_grid(small_schedule, oracle, cls, spacing):
    sampler = cls(small_schedule, num_steps=6, spacing=spacing)
    assert torch.equal(sampler.timesteps, grid_timesteps(small_schedule.alphas_cumprod, 6, spacing))
    out = sampler.sample(oracle, (4, 3), generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", SAMPLER_CLASSES)
def test_explicit_timesteps(small_schedule, oracle, cls):
    given = [49, 30, 17, 5, 0]
    for form in (given, tuple(given), torch.tensor(given), np.array(given)):
        sampler = cls(small_schedule, timesteps=form)
        assert sampler.timesteps.tolist() == given and sampler.num_steps == len(sampler) == 5
    assert cls(small_schedule, num_steps=5, timesteps=given).num_steps == 5
    out, trajectory = cls(small_schedule, timesteps=given).sample(
        oracle, (2, 3), generator=torch.Generator().manual_seed(0), return_trajectory=True
    )
    assert trajectory.timesteps.tolist() == given and len(trajectory.samples) == 6


def test_explicit_timesteps_equal_the_same_grid(small_schedule, oracle):
    """A sampler given its own grid as timesteps= samples exactly as with spacing=."""
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for make in (
        lambda **kw: DDIMSampler(small_schedule, eta=0.5, **kw),
        lambda **kw: DDPMSampler(small_schedule, **kw),
        lambda **kw: DPMSolverSampler(small_schedule, **kw),
    ):
        by_grid = make(num_steps=7, spacing="logsnr")
        by_list = make(timesteps=by_grid.timesteps.tolist())
        a, b = (s.sample(oracle, None, x_T=x_T, generator=torch.Generator().manual_seed(1))
                for s in (by_grid, by_list))
        assert torch.equal(a, b)


def test_ddpm_with_timesteps_is_respaced(small_schedule):
    sampler = DDPMSampler(small_schedule, timesteps=[40, 20, 3])
    torch.testing.assert_close(
        sampler.respaced_schedule.alphas_cumprod, small_schedule.alphas_cumprod[[3, 20, 40]]
    )
    full = DDPMSampler(small_schedule, timesteps=list(range(49, -1, -1)))
    assert full.respaced_schedule is small_schedule


@pytest.mark.parametrize("cls", SAMPLER_CLASSES)
def test_bad_timesteps(small_schedule, cls):
    with pytest.raises(ValueError, match=r"timesteps must be strictly descending; got \[3, 10\]"):
        cls(small_schedule, timesteps=[3, 10])
    with pytest.raises(ValueError, match="timesteps must be strictly descending; got"):
        cls(small_schedule, timesteps=[10, 10, 2])
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 49\].*got \[50, 3\]"):
        cls(small_schedule, timesteps=[50, 3])
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 49\].*got \[3, -1\]"):
        cls(small_schedule, timesteps=[3, -1])
    with pytest.raises(ValueError, match="timesteps must hold at least one timestep"):
        cls(small_schedule, timesteps=[])
    with pytest.raises(TypeError, match="timesteps must be a sequence of ints"):
        cls(small_schedule, timesteps=[10.0, 2.0])
    with pytest.raises(TypeError, match="timesteps must be a sequence of ints; got a tensor"):
        cls(small_schedule, timesteps=torch.tensor([10.0, 2.0]))
    with pytest.raises(ValueError, match=r"num_steps must equal len\(timesteps\) = 2.*got "
                                         r"num_steps=4"):
        cls(small_schedule, num_steps=4, timesteps=[10, 2])
    with pytest.raises(ValueError, match="spacing must be one of .*'karras'.*got 'karas'"):
        cls(small_schedule, num_steps=4, spacing="karas")
