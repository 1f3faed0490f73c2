"""Analytic-DPM's optimal reverse variance and Watson et al.'s DP timesteps.

For Gaussian data N(MU, STD^2 I) the reverse conditional q(x_s | x_t) is Gaussian, with a
mean and variance that follow from conditioning the joint of (x_s, x_t) under the forward
chain; the optimal Gaussian reverse step must equal it. This is derived here without the
library's formula (Theorem 1), and checked through the samplers' public ``step``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ddpm_lib import GaussianOracle, NoiseSchedule
from ddpm_lib.samplers import DDIMSampler, DDPMSampler, SDESampler
from ddpm_lib.samplers.analytic_variance import AnalyticVariance, optimal_timesteps

pytestmark = pytest.mark.usefixtures("one_thread")

MU, STD = 0.3, 0.5


def gaussian_reverse(schedule, t, s, x_t):
    """Mean and variance of q(x_s | x_t) for data N(MU, STD^2), by Gaussian conditioning."""
    abar_t, abar_s = float(schedule.alphas_cumprod[t]), float(schedule.alphas_cumprod[s])
    var_s = abar_s * STD**2 + 1 - abar_s
    var_t = abar_t * STD**2 + 1 - abar_t
    cov = math.sqrt(abar_t / abar_s) * var_s  # x_t = sqrt(abar_t / abar_s) x_s + noise
    mean = math.sqrt(abar_s) * MU + cov / var_t * (x_t - math.sqrt(abar_t) * MU)
    return mean, var_s - cov**2 / var_t


def reverse_step(sampler, model, t, x_t):
    """The sampler's Gaussian step at t through the public API: (mean, std) per input."""
    output = model(x_t, torch.full((x_t.shape[0],), t))
    mean = sampler.step(output, t, x_t, noise=torch.zeros_like(x_t))
    std = sampler.step(output, t, x_t, noise=torch.ones_like(x_t)) - mean
    return mean, std


def test_estimate_matches_the_gaussian_closed_form(small_schedule, generator):
    oracle = GaussianOracle(small_schedule, mean=MU, std=STD)
    data = MU + STD * torch.randn(4096, 16, generator=generator, dtype=torch.float64)
    table = AnalyticVariance.estimate(oracle, small_schedule, data, num_samples=512,
                                      batch_size=1000, progress=False, generator=generator)
    exact = AnalyticVariance.gaussian(small_schedule, STD).gamma
    assert table.num_samples == 512
    # each estimate averages 512 * 16 squared Gaussians of variance Gamma_t: 2-3% noise
    torch.testing.assert_close(table.gamma, exact, rtol=0.1, atol=0)
    assert float((table.gamma / exact - 1).abs().mean()) < 0.03
    # a model whose eps is off by a factor is seen: Gamma scales by its square
    scaled = AnalyticVariance.estimate(lambda x, t: 1.2 * oracle(x, t), small_schedule, data,
                                       num_samples=512, progress=False, generator=generator)
    assert float((scaled.gamma / exact).mean()) > 1.3


def test_estimate_some_timesteps_from_a_dataset_of_tuples(small_schedule, generator):
    oracle = GaussianOracle(small_schedule, mean=MU, std=STD, prediction="v")
    data = [(MU + STD * torch.randn(3, 2, 2, generator=generator), k) for k in range(300)]
    table = AnalyticVariance.estimate(oracle, small_schedule, data, num_samples=300,
                                      batch_size=128, progress=False, generator=generator,
                                      timesteps=[0, 10, 49], prediction="v")
    exact = AnalyticVariance.gaussian(small_schedule, STD).gamma
    known = torch.tensor([0, 10, 49])
    torch.testing.assert_close(table.gamma[known], exact[known], rtol=0.1, atol=0)
    assert int(table.gamma.isnan().sum()) == 47
    with pytest.raises(ValueError, match="no Gamma_t estimate"):
        DDPMSampler(small_schedule, variance=table, num_steps=5)


@pytest.mark.parametrize("num_steps", [50, 7])
def test_ddpm_step_is_the_exact_gaussian_reverse(small_schedule, num_steps, generator):
    """Mean and variance of each (respaced) DDPM step with the Analytic-DPM table equal
    those of q(x_s | x_t) for Gaussian data (so the optimal Gaussian step is exact)."""
    oracle = GaussianOracle(small_schedule, mean=MU, std=STD)
    table = AnalyticVariance.gaussian(small_schedule, STD)
    sampler = DDPMSampler(small_schedule, variance=table, num_steps=num_steps,
                          clip_denoised=False)
    fixed = DDPMSampler(small_schedule, num_steps=num_steps, clip_denoised=False)
    timesteps = sampler.timesteps.tolist()
    x_t = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]
    for t, s in zip(timesteps[:-1], timesteps[1:]):
        mean, std = reverse_step(sampler, oracle, t, x_t)
        true_mean, true_var = gaussian_reverse(small_schedule, t, s, x_t)
        torch.testing.assert_close(mean, true_mean, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(std**2, torch.full_like(std, true_var), rtol=1e-9, atol=0)
        # the fixed (beta-tilde) variance is smaller: Analytic-DPM adds c^2 Var[x0 | x_t]
        _, fixed_std = reverse_step(fixed, oracle, t, x_t)
        assert float(fixed_std[0]) ** 2 < true_var * (1 - 1e-6)
    _, last_std = reverse_step(sampler, oracle, timesteps[-1], x_t)
    assert float(last_std.abs().max()) == 0.0  # the last step returns the mean


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_noise_is_the_optimal_one(small_schedule, eta):
    """sigma*^2 = lambda^2 + c^2 Var[x0 | x_t] with lambda^2 = eta^2 beta-tilde (Theorem 1)."""
    oracle = GaussianOracle(small_schedule, mean=MU, std=STD)
    table = AnalyticVariance.gaussian(small_schedule, STD)
    sampler = DDIMSampler(small_schedule, num_steps=6, eta=eta, variance=table,
                          clip_denoised=False)
    timesteps = sampler.timesteps.tolist()
    x_t = torch.linspace(-2, 2, 3, dtype=torch.float64)[:, None]
    for t, s in zip(timesteps[:-1], timesteps[1:]):
        abar_t = float(small_schedule.alphas_cumprod[t])
        abar_s = float(small_schedule.alphas_cumprod[s])
        lambda2 = eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
        x0_var = STD**2 * (1 - abar_t) / (abar_t * STD**2 + 1 - abar_t)
        c = math.sqrt(abar_s) - math.sqrt(1 - abar_s - lambda2) * math.sqrt(abar_t / (1 - abar_t))
        _, std = reverse_step(sampler, oracle, t, x_t)
        torch.testing.assert_close(std**2, torch.full_like(std, lambda2 + c**2 * x0_var),
                                   rtol=1e-9, atol=0)
        if eta == 1.0:  # DDIM with eta = 1 and DDPM share the optimal variance
            true_var = gaussian_reverse(small_schedule, t, s, x_t)[1]
            torch.testing.assert_close(std**2, torch.full_like(std, true_var), rtol=1e-9, atol=0)


def test_sampled_law_with_few_steps(schedule, generator):
    """With 10 steps, fixed variances miss the data's variance (too small / too large);
    the optimal one lands on it."""
    oracle = GaussianOracle(schedule, mean=MU, std=STD)
    table = AnalyticVariance.gaussian(schedule, STD)
    variances = {}
    for name, variance in (("small", "fixed_small"), ("large", "fixed_large"),
                           ("analytic", table)):
        sampler = DDPMSampler(schedule, variance=variance, num_steps=10, clip_denoised=False)
        x = sampler.sample(oracle, (4096, 4), generator=generator, dtype=torch.float64)
        variances[name] = float(x.var())
    assert variances["small"] < 0.15 and variances["large"] > 0.3
    assert abs(variances["analytic"] - STD**2) < 0.01


def test_clipping(small_schedule):
    """Gamma = 0 (an eps of 0) is capped by the data range; Gamma > 1 gives lambda^2; the step
    into the lowest level is capped at half a pixel bin."""
    timesteps = DDPMSampler(small_schedule, num_steps=5).timesteps
    zero = AnalyticVariance(small_schedule, torch.zeros(50))
    abar = small_schedule.alphas_cumprod[timesteps]
    x0_var = zero.x0_variance(timesteps)
    torch.testing.assert_close(x0_var, ((1 - abar) / abar).clamp(max=1.0))
    assert float(x0_var[0]) == 1.0  # capped by the data range [-1, 1]
    assert float(zero.x0_variance(timesteps, data_range=None)[0]) > 1.0
    big = AnalyticVariance(small_schedule, torch.full((50,), 1.5))
    variances = big.step_variances(timesteps, clip_last=False)
    abar_s = torch.cat([abar[1:], abar.new_ones(1)])
    beta_tilde = (1 - abar_s) / (1 - abar) * (1 - abar / abar_s)
    torch.testing.assert_close(variances[:-1], beta_tilde[:-1])
    assert float(variances[-1]) == 0.0
    clipped = zero.step_variances(timesteps)
    bound = math.pi / 2 * (1 / 255) ** 2 * float(abar[-1])
    assert float(clipped[-2]) == pytest.approx(bound)
    assert torch.equal(clipped[:-2], zero.step_variances(timesteps, clip_last=False)[:-2])


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_save_load_and_schedule_check(small_schedule, tmp_path, suffix):
    gamma = AnalyticVariance.gaussian(small_schedule, STD).gamma.clone()
    gamma[3] = float("nan")
    table = AnalyticVariance(small_schedule, gamma, num_samples=7)
    path = table.save(tmp_path / f"gamma{suffix}")
    loaded = AnalyticVariance.load(path, small_schedule)
    assert torch.equal(loaded.gamma.isnan(), gamma.isnan())
    torch.testing.assert_close(loaded.gamma[~gamma.isnan()], gamma[~gamma.isnan()])
    assert loaded.num_samples == 7 and loaded.fingerprint == table.fingerprint
    other = NoiseSchedule.linear(50, beta_start=1e-3, beta_end=0.4)
    with pytest.raises(ValueError, match="another schedule"):
        AnalyticVariance.load(path, other)
    with pytest.raises(ValueError, match="variance"):
        DDPMSampler(other, variance=table)
    with pytest.raises(ValueError, match="variance"):
        DDIMSampler(other, num_steps=5, variance=table)
    with pytest.raises(TypeError, match="variance"):
        DDIMSampler(small_schedule, num_steps=5, variance="fixed_small")


# ----------------------------------------------------------------------------- DP timesteps
def path_cost(schedule, table, path):
    """The bound of a DDPM run on ``path`` (descending), written out term by term."""
    abar = schedule.alphas_cumprod.tolist()
    x0_var, running = [], 0.0
    for t, gamma in enumerate(table.gamma.tolist()):  # clipped, then non-decreasing in t
        ratio = (1 - abar[t]) / abar[t]
        running = max(running, min(max(ratio * (1 - gamma), 0.0), ratio, 1.0))
        x0_var.append(running)
    total = 0.0
    for t, s in zip(path[:-1], path[1:]):
        beta_tilde = (1 - abar[s]) / (1 - abar[t]) * (1 - abar[t] / abar[s])
        weight = math.sqrt(abar[s]) - math.sqrt(1 - abar[s] - beta_tilde) * math.sqrt(
            abar[t] / (1 - abar[t]))
        total += 0.5 * math.log((beta_tilde + weight**2 * x0_var[t]) / beta_tilde)
    return total + 0.5 * math.log(2 * math.pi * math.e * x0_var[path[-1]])


@pytest.mark.parametrize("gamma_kind", ["gaussian", "bumpy"])
def test_optimal_timesteps_brute_force(gamma_kind):
    schedule = NoiseSchedule.linear(12, beta_start=0.01, beta_end=0.5)
    if gamma_kind == "gaussian":
        table = AnalyticVariance.gaussian(schedule, 0.3)
    else:  # a table unlike any Gaussian's, so that the optimum is not at the ends
        gamma = AnalyticVariance.gaussian(schedule, 0.3).gamma
        gamma = gamma * (1 + 0.3 * torch.sin(torch.arange(12.0)).double())
        table = AnalyticVariance(schedule, gamma.clamp(max=0.999))
    assert optimal_timesteps(schedule, table, 1) == [11]
    for num_steps in (2, 3, 4, 5):
        best = min(  # every path from 11 to 0 through num_steps - 2 of the 10 steps between
            ([11, *rest, 0] for rest in itertools.combinations(range(10, 0, -1), num_steps - 2)),
            key=lambda path: path_cost(schedule, table, path),
        )
        found = optimal_timesteps(schedule, table, num_steps)
        assert len(found) == num_steps and found[0] == 11 and found[-1] == 0
        assert all(a > b for a, b in zip(found[:-1], found[1:]))
        assert path_cost(schedule, table, found) == pytest.approx(path_cost(schedule, table, best))
        assert found == best


def test_optimal_timesteps_full_schedule(schedule, generator):
    table = AnalyticVariance.gaussian(schedule, STD)
    timesteps = optimal_timesteps(schedule, table, 10)
    assert len(timesteps) == 10 and timesteps[0] == 999 and timesteps[-1] == 0
    assert all(a > b >= 0 for a, b in zip(timesteps[:-1], timesteps[1:]))
    oracle = GaussianOracle(schedule, mean=MU, std=STD)
    for sampler in (SDESampler(schedule, timesteps=timesteps),
                    DDPMSampler(schedule, variance=table, timesteps=timesteps)):
        assert sampler.timesteps.tolist() == timesteps
        x = sampler.sample(oracle, (8, 2), generator=generator)
        assert bool(torch.isfinite(x).all())
    with pytest.raises(ValueError, match="num_steps"):
        optimal_timesteps(schedule, table, 0)
    with pytest.raises(ValueError, match="variance"):
        optimal_timesteps(NoiseSchedule.linear(1000, beta_end=0.03), table, 10)
