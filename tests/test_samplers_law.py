"""The law of each sampler's output, computed exactly, against Monte-Carlo samples.

With data N(mu, s^2) the Gaussian oracle is the exact predictor and every sampler step is
affine in x_t plus independent Gaussian noise, so the output is Gaussian with a mean and
variance that a float64 recursion gives exactly. The recursions here are written from the
papers' equations (DDPM Algorithm 2, DDIM eq. 12/16, DPM-Solver++ Algorithm 2 with exp(-h)),
independently of the library's coefficient tables. Each test also checks that a plausible
wrong formula is rejected by the same samples, so the tolerance cannot hide a bug.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib import GaussianOracle, NoiseSchedule
from ddpm_lib.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler

MU, STD = 0.3, 0.5
N_SAMPLES = (2048, 8)  # 16384 i.i.d. scalars per test


# ----------------------------------------------------------------------------- reference math
def oracle_eps_coefficients(abar: float) -> tuple[float, float]:
    """eps*(x) = c x + d for data N(MU, STD^2) (the oracle's closed form)."""
    c = math.sqrt(1 - abar) / (abar * STD**2 + 1 - abar)
    return c, -c * math.sqrt(abar) * MU


def oracle_x0_coefficients(abar: float) -> tuple[float, float]:
    """x0*(x) = c x + d: the posterior mean of x0 given x_t."""
    c = math.sqrt(abar) * STD**2 / (abar * STD**2 + 1 - abar)
    return c, MU - c * math.sqrt(abar) * MU


def ddpm_law(abars: list[float], variance: str, log_variances=None) -> tuple[float, float]:
    """Mean and variance of ancestral sampling on descending levels ``abars`` (Algorithm 2).

    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, with the
    sub-chain's alpha_t = abar_t / abar_{t-1}; no noise on the last step.
    """
    mean, var = 0.0, 1.0
    for i, abar in enumerate(abars):
        abar_prev = abars[i + 1] if i + 1 < len(abars) else 1.0
        alpha = abar / abar_prev
        beta = 1 - alpha
        c, d = oracle_eps_coefficients(abar)
        k = beta / math.sqrt(1 - abar)
        a, b = (1 - k * c) / math.sqrt(alpha), -k * d / math.sqrt(alpha)
        if i + 1 == len(abars):
            noise_var = 0.0
        elif variance == "fixed_small":
            noise_var = beta * (1 - abar_prev) / (1 - abar)
        elif variance == "fixed_large":
            noise_var = beta
        else:
            noise_var = math.exp(log_variances[i])
        mean, var = a * mean + b, a * a * var + noise_var
    return mean, var


def ddim_law(abars: list[float], eta: float) -> tuple[float, float]:
    """Mean and variance of DDIM (eq. 12, sigma of eq. 16) on descending levels ``abars``."""
    mean, var = 0.0, 1.0
    for i, abar in enumerate(abars):
        abar_next = abars[i + 1] if i + 1 < len(abars) else 1.0
        sigma2 = eta**2 * (1 - abar_next) / (1 - abar) * (1 - abar / abar_next)
        c, d = oracle_eps_coefficients(abar)
        # x0 = (x - sqrt(1 - abar) eps) / sqrt(abar), eps = c x + d
        x0_a = (1 - math.sqrt(1 - abar) * c) / math.sqrt(abar)
        x0_b = -math.sqrt(1 - abar) * d / math.sqrt(abar)
        direction = math.sqrt(1 - abar_next - sigma2)
        a = math.sqrt(abar_next) * x0_a + direction * c
        b = math.sqrt(abar_next) * x0_b + direction * d
        mean, var = a * mean + b, a * a * var + sigma2
    return mean, var


def dpm_solver_map(abars: list[float]) -> tuple[float, float]:
    """DPM-Solver++ 2M (Lu et al. 2022, Alg. 2): the output is a x_T + b; returns (a, b)."""
    x = (1.0, 0.0)  # x = x[0] * x_T + x[1]
    x0_prev, h_prev = None, None
    lam = [0.5 * math.log(abar / (1 - abar)) for abar in abars]
    for i, abar in enumerate(abars):
        c, d = oracle_x0_coefficients(abar)
        x0 = (c * x[0], c * x[1] + d)
        if i + 1 == len(abars):  # the last step lands on sigma = 0: x = x0 (first order)
            x = x0
            break
        abar_next = abars[i + 1]
        alpha_next, sigma_next = math.sqrt(abar_next), math.sqrt(1 - abar_next)
        h = lam[i + 1] - lam[i]
        if x0_prev is None:
            D = x0
        else:
            r = h_prev / h
            D = tuple(x0[k] + (x0[k] - x0_prev[k]) / (2 * r) for k in range(2))
        ratio = sigma_next / math.sqrt(1 - abar)
        x = tuple(ratio * x[k] - alpha_next * math.expm1(-h) * D[k] for k in range(2))
        x0_prev, h_prev = x0, h
    return x


# ----------------------------------------------------------------------------- Monte-Carlo
def assert_law(samples: torch.Tensor, mean: float, var: float, wrong: tuple[float, float] | None):
    """Samples match N(mean, var) within 5 standard errors; ``wrong`` must be rejected."""
    n = samples.numel()
    sample_mean, sample_var = samples.mean().item(), samples.var().item()
    mean_tol, var_tol = 5 * math.sqrt(var / n), 5 * var * math.sqrt(2 / n)
    assert abs(sample_mean - mean) < mean_tol, (sample_mean, mean, mean_tol)
    assert abs(sample_var - var) < var_tol, (sample_var, var, var_tol)
    if wrong is not None:
        wrong_mean, wrong_var = wrong
        assert abs(sample_mean - wrong_mean) > mean_tol or abs(sample_var - wrong_var) > var_tol, (
            "the test cannot tell the wrong formula apart"
        )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def oracle64(small_schedule):
    return GaussianOracle(small_schedule, mean=MU, std=STD)


def draw(sampler, model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return sampler.sample(model, N_SAMPLES, generator=generator, dtype=torch.float64)


def levels(schedule: NoiseSchedule, timesteps: torch.Tensor) -> list[float]:
    return schedule.alphas_cumprod[timesteps].tolist()


# ----------------------------------------------------------------------------- DDPM
@pytest.mark.parametrize("num_steps", [None, 12])
@pytest.mark.parametrize(
    "variance, wrong", [("fixed_small", "fixed_large"), ("fixed_large", "fixed_small")]
)
def test_ddpm_law(small_schedule, oracle64, variance, wrong, num_steps):
    sampler = DDPMSampler(
        small_schedule, variance=variance, clip_denoised=False, num_steps=num_steps
    )
    abars = levels(small_schedule, sampler.timesteps)
    samples = draw(sampler, oracle64)
    assert_law(samples, *ddpm_law(abars, variance), wrong=ddpm_law(abars, wrong))


class LearnedVarianceOracle(torch.nn.Module):
    """The oracle's eps, plus a variance channel with known per-timestep values."""

    def __init__(self, oracle: GaussianOracle) -> None:
        super().__init__()
        self.oracle = oracle

    @staticmethod
    def variance_value(t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.3 * t.double())  # in [-1, 1]: a valid learned_range output too

    def forward(self, x, t):
        values = self.variance_value(t).to(x.dtype).reshape(-1, 1, 1).expand_as(x)
        return torch.cat([self.oracle(x, t), values], dim=1)


@pytest.mark.parametrize("num_steps", [None, 12])
@pytest.mark.parametrize("variance", ["learned", "learned_range"])
def test_ddpm_law_learned_variance(small_schedule, oracle64, variance, num_steps):
    sampler = DDPMSampler(
        small_schedule, variance=variance, clip_denoised=False, num_steps=num_steps
    )
    model = LearnedVarianceOracle(oracle64)
    timesteps = sampler.timesteps
    abars = levels(small_schedule, timesteps)
    values = LearnedVarianceOracle.variance_value(timesteps).tolist()
    if variance == "learned":
        log_variances = values
    else:  # Improved DDPM eq. 15 with the sub-chain's beta and beta-tilde
        log_variances = []
        for i, abar in enumerate(abars[:-1]):  # the last step adds no noise
            abar_prev = abars[i + 1]
            beta = 1 - abar / abar_prev
            beta_tilde = beta * (1 - abar_prev) / (1 - abar)
            frac = (values[i] + 1) / 2
            log_variances.append(frac * math.log(beta) + (1 - frac) * math.log(beta_tilde))
    generator = torch.Generator().manual_seed(0)
    samples = sampler.sample(model, (2048, 1, 8), generator=generator, dtype=torch.float64)
    assert_law(
        samples, *ddpm_law(abars, "learned", log_variances), wrong=ddpm_law(abars, "fixed_small")
    )


# ----------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_law(small_schedule, oracle64, eta):
    sampler = DDIMSampler(small_schedule, num_steps=10, eta=eta, clip_denoised=False)
    abars = levels(small_schedule, sampler.timesteps)
    samples = draw(sampler, oracle64)
    wrong = ddim_law(abars, 1.0 if eta < 1 else 0.0)
    assert_law(samples, *ddim_law(abars, eta), wrong=wrong)


def test_ddim_eta_one_is_respaced_ddpm(small_schedule, oracle64):
    """Eta = 1 is the DDPM posterior on the same sub-chain: same noise, same samples."""
    for spacing in ("trailing", "linspace", "leading"):
        ddim = DDIMSampler(small_schedule, 10, eta=1.0, clip_denoised=False, spacing=spacing)
        ddpm = DDPMSampler(
            small_schedule, variance="fixed_small", clip_denoised=False, num_steps=10, spacing=spacing
        )
        assert torch.equal(ddim.timesteps, ddpm.timesteps)
        a, b = (
            sampler.sample(
                oracle64, (64, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64
            )
            for sampler in (ddim, ddpm)
        )
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # and the exact laws agree too (two independent recursions)
    abars = levels(small_schedule, ddim.timesteps)
    assert ddim_law(abars, 1.0) == pytest.approx(ddpm_law(abars, "fixed_small"), rel=1e-12)


# ----------------------------------------------------------------------------- DPM-Solver++
@pytest.mark.parametrize("num_steps", [1, 2, 8])
def test_dpm_solver_law(small_schedule, oracle64, num_steps):
    sampler = DPMSolverSampler(small_schedule, num_steps=num_steps, clip_denoised=False,
                               spacing="linspace", final_step="denoise")
    a, b = dpm_solver_map(levels(small_schedule, sampler.timesteps))
    x_T = torch.randn(N_SAMPLES, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samples = sampler.sample(oracle64, None, x_T=x_T)
    torch.testing.assert_close(samples, a * x_T + b, rtol=1e-10, atol=1e-10)
    ddim = ddim_law(levels(small_schedule, sampler.timesteps), 0.0)
    wrong = ddim if num_steps > 2 else (b + 0.1, a * a)  # 2M differs from DDIM from 3 steps on
    assert_law(samples, b, a * a, wrong=wrong)


@pytest.mark.parametrize("num_steps", [10, 15, 20])
def test_dpm_solver_beats_ddim(schedule, num_steps):
    """At the same number of model calls DPM-Solver++ 2M is closer to the exact ODE solution.

    For Gaussian data the probability-flow ODE maps x_T to mu + s (x_T - m_T) / sqrt(v_T), with
    (m_T, v_T) the law of x_T under q (a monotone affine map between two Gaussians).
    """
    oracle = GaussianOracle(schedule, mean=MU, std=STD)
    x_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddim = DDIMSampler(schedule, num_steps, clip_denoised=False)
    dpm = DPMSolverSampler(schedule, num_steps, clip_denoised=False, spacing="linspace",
                           final_step="denoise")
    assert ddim.timesteps[0] == dpm.timesteps[0] == schedule.num_timesteps - 1
    m_T, v_T = oracle.marginal(schedule.num_timesteps - 1)
    exact = MU + STD * (x_T - m_T) / v_T.sqrt()
    ddim_error = (ddim.sample(oracle, None, x_T=x_T) - exact).abs().mean()
    dpm_error = (dpm.sample(oracle, None, x_T=x_T) - exact).abs().mean()
    assert dpm_error < 0.8 * ddim_error, (num_steps, dpm_error, ddim_error)
    if num_steps == 20:
        assert dpm_error < 0.5 * ddim_error
