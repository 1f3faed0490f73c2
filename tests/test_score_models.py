"""The noise-level view: VE / EDM levels, the exact conversions between formulations, EDM's
preconditioning and the score-matching losses, checked against the Gaussian closed forms and
diffusers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_lib.denoisers import (
    DenoiserScore,
    EDMPrecond,
    ScoreDenoiser,
    VPDenoiser,
    VPModel,
    as_denoiser,
)
from ddpm_lib.noise_levels import (
    EDMNoiseLevels,
    VENoiseLevels,
    schedule_sigmas,
    timesteps_for_sigmas,
)
from ddpm_lib.oracles import GaussianOracle
from ddpm_lib.schedule import NoiseSchedule

MU, STD = 0.3, 0.7


def optimal_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D*(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) for data N(mu, s^2)."""
    sigma = sigma.double().reshape(-1, *((1,) * (x.ndim - 1)))
    return (MU + STD**2 / (STD**2 + sigma**2) * (x.double() - MU)).to(x.dtype)


class OptimalDenoiser(nn.Module):
    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return optimal_denoiser(x, sigma) + self.offset


class OptimalScore(nn.Module):
    """s*(x; sigma) = -(x - mu) / (s^2 + sigma^2), conditioned on sigma."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.double().reshape(-1, *((1,) * (x.ndim - 1)))
        return (-(x.double() - MU) / (STD**2 + sigma**2)).to(x.dtype)


@pytest.fixture
def schedule() -> NoiseSchedule:
    return NoiseSchedule.linear(40, beta_start=1e-3, beta_end=0.3)


# ----------------------------------------------------------------------------- noise levels
def test_schedule_sigmas_are_the_vp_noise_levels(schedule) -> None:
    sigmas = schedule_sigmas(schedule)
    abar = schedule.alphas_cumprod
    assert sigmas.dtype == torch.float64 and sigmas.shape == (40,)
    torch.testing.assert_close(abar, 1.0 / (1.0 + sigmas**2), rtol=1e-12, atol=0)
    # x_t / sqrt(abar) = x0 + sigma eps
    x0, eps = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0, 17, 39])
    x_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(x_t / abar[t, None].sqrt(), x0 + sigmas[t, None] * eps)


def test_timesteps_for_sigmas_brackets_and_refuses_outside(schedule) -> None:
    sigmas = schedule_sigmas(schedule)
    t_low, t_high, w = timesteps_for_sigmas(schedule, sigmas)
    assert torch.equal(t_low, torch.arange(40)) and bool((w == 0).all())
    between = (sigmas[4] * sigmas[5]).sqrt()[None]  # the geometric midpoint: w = 1/2
    t_low, t_high, w = timesteps_for_sigmas(schedule, between)
    assert (int(t_low), int(t_high)) == (4, 5)
    torch.testing.assert_close(w, torch.tensor([0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma must lie in the schedule's range"):
        timesteps_for_sigmas(schedule, sigmas[-1:] * 1.01)


def test_ve_ladder_is_geometric_and_matches_diffusers() -> None:
    levels = VENoiseLevels(0.01, 50.0, 10)
    sigmas = levels.sigmas
    assert sigmas.dtype == torch.float64 and len(levels) == 10
    assert sigmas[0] == 50.0 and math.isclose(float(sigmas[-1]), 0.01, rel_tol=1e-12)
    ratios = sigmas[1:] / sigmas[:-1]
    torch.testing.assert_close(ratios, ratios[:1].expand(9))  # a constant ratio
    assert torch.equal(levels.index_of(sigmas * 1.001), torch.arange(10))
    assert VENoiseLevels(0.1, 1.0, 1).sigmas.tolist() == [1.0]
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.ScoreSdeVeScheduler(num_train_timesteps=10, sigma_min=0.01, sigma_max=50.0)
    scheduler.set_sigmas(10)
    theirs = scheduler.discrete_sigmas.double().flip(0)  # diffusers stores them increasing
    torch.testing.assert_close(sigmas, theirs, rtol=1e-6, atol=0)


def test_edm_rho_grid_matches_the_karras_formula_and_diffusers() -> None:
    levels = EDMNoiseLevels()
    grid = levels.grid(18)
    assert grid.dtype == torch.float64 and grid.shape == (19,) and grid[-1] == 0
    # k-diffusion's get_sigmas_karras(n, sigma_min, sigma_max, rho), written out
    ramp = torch.linspace(0, 1, 18, dtype=torch.float64)
    min_inv_rho, max_inv_rho = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    expected = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** 7
    torch.testing.assert_close(grid[:-1], expected, rtol=1e-12, atol=0)
    assert math.isclose(float(grid[0]), 80.0) and math.isclose(float(grid[-2]), 0.002)
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    scheduler.set_timesteps(18)
    torch.testing.assert_close(grid, scheduler.sigmas.double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: VENoiseLevels(1.0, 1.0, 5), "sigma_min must be < sigma_max"),
        (lambda: VENoiseLevels(0.0, 1.0, 5), "sigma_min must be > 0"),
        (lambda: VENoiseLevels(0.1, 1.0, 0), "num_levels must be >= 1"),
        (lambda: EDMNoiseLevels(sigma_min=90.0), "sigma_min must be < sigma_max"),
        (lambda: EDMNoiseLevels(sigma_max=-1.0), "sigma_max must be > 0"),
        (lambda: EDMNoiseLevels(rho=0.0), "rho must be > 0"),
        (lambda: EDMNoiseLevels().grid(0), "num_steps must be >= 1"),
        (lambda: EDMPrecond(nn.Identity(), sigma_data=0.0), "sigma_data must be > 0"),
    ],
)
def test_bad_noise_levels_name_themselves(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()


# ----------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vp_oracle_as_a_denoiser_is_the_optimal_denoiser_at_every_level(schedule, prediction) -> None:
    oracle = GaussianOracle(schedule, MU, STD, prediction=prediction)
    denoiser = VPDenoiser(oracle, schedule, prediction)
    sigmas = schedule_sigmas(schedule)
    x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(denoiser(x, sigmas), optimal_denoiser(x, sigmas), rtol=1e-10, atol=1e-10)


def test_between_levels_nearest_and_linear_lookup(schedule) -> None:
    calls = []

    class Recorder(nn.Module):
        def forward(self, x_t, t):
            calls.append(t.clone())
            return torch.zeros_like(x_t) + t.to(x_t.dtype)[:, None]  # "eps" = t

    sigmas = schedule_sigmas(schedule)
    sigma = (sigmas[10] ** 0.3 * sigmas[11] ** 0.7)[None]  # 70% of the way to t = 11 in log
    x = torch.zeros(1, 2, dtype=torch.float64)
    nearest = VPDenoiser(Recorder(), schedule)(x, sigma)
    assert calls[-1].tolist() == [11]
    torch.testing.assert_close(nearest, -sigma[:, None] * 11 * torch.ones(1, 2, dtype=torch.float64))
    linear = VPDenoiser(Recorder(), schedule, sigma_lookup="linear")(x, sigma)
    assert [c.tolist() for c in calls[-2:]] == [[10], [11]]
    torch.testing.assert_close(linear, -sigma[:, None] * (0.3 * 10 + 0.7 * 11) * torch.ones(1, 2,
                               dtype=torch.float64))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_denoiser_to_vp_model_and_back_is_the_identity(schedule, prediction) -> None:
    oracle = GaussianOracle(schedule, MU, STD, prediction=prediction)
    model = VPModel(OptimalDenoiser(), schedule, prediction)  # D* as a DDPM model ...
    t = torch.arange(40)
    x_t = torch.randn(40, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x_t, t), oracle(x_t, t), rtol=1e-10, atol=1e-10)  # ... is the oracle
    back = VPDenoiser(model, schedule, prediction)  # D -> eps -> D
    sigmas = schedule_sigmas(schedule)
    x = x_t / schedule.alphas_cumprod[:, None, None].sqrt()
    torch.testing.assert_close(back(x, sigmas), optimal_denoiser(x, sigmas), rtol=1e-10, atol=1e-10)


def test_score_to_denoiser_and_back(schedule) -> None:
    sigma = torch.tensor([0.01, 0.5, 3.0, 50.0], dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    denoiser = ScoreDenoiser(OptimalScore())
    torch.testing.assert_close(denoiser(x, sigma), optimal_denoiser(x, sigma), rtol=1e-12, atol=1e-12)
    score = DenoiserScore(denoiser)  # score -> D -> score
    torch.testing.assert_close(score(x, sigma), OptimalScore()(x, sigma), rtol=1e-10, atol=1e-12)
    # an NCSN network conditioned on the ladder's index gets the nearest rung
    levels = VENoiseLevels(0.01, 50.0, 10)
    seen = []

    class IndexScore(nn.Module):
        def forward(self, x, index):
            seen.append(index)
            return OptimalScore()(x, levels.sigmas[index])

    on_ladder = levels.sigmas[[0, 4, 9]]
    indexed = ScoreDenoiser(IndexScore(), levels, conditioning="index")
    out = indexed(x[:3], on_ladder)
    assert seen[-1].tolist() == [0, 4, 9]
    torch.testing.assert_close(out, optimal_denoiser(x[:3], on_ladder), rtol=1e-12, atol=1e-12)


def test_edm_precond_coefficients_are_table_1() -> None:
    sigma_data = 0.5
    network_inputs = []

    class Network(nn.Module):
        def forward(self, x, c_noise):
            network_inputs.append((x, c_noise))
            return torch.full_like(x, 2.0)

    precond = EDMPrecond(Network(), sigma_data=sigma_data)
    sigma = torch.tensor([0.002, 0.3, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precond.coefficients(sigma)
    for i, s in enumerate(sigma.tolist()):
        assert math.isclose(c_skip[i], sigma_data**2 / (s**2 + sigma_data**2), rel_tol=1e-12)
        assert math.isclose(c_out[i], s * sigma_data / math.sqrt(s**2 + sigma_data**2), rel_tol=1e-12)
        assert math.isclose(c_in[i], 1 / math.sqrt(s**2 + sigma_data**2), rel_tol=1e-12)
        assert math.isclose(c_noise[i], math.log(s) / 4, rel_tol=1e-12)
    x = torch.ones(4, 3, dtype=torch.float64)
    out = precond(x, sigma)
    torch.testing.assert_close(network_inputs[-1][0], c_in[:, None] * x)
    torch.testing.assert_close(network_inputs[-1][1], c_noise)
    torch.testing.assert_close(out, c_skip[:, None] * x + c_out[:, None] * 2.0)


def test_adapters_refuse_what_they_cannot_convert(schedule) -> None:
    with pytest.raises(ValueError, match="formulation must be one of"):
        as_denoiser(nn.Identity(), "flow")
    with pytest.raises(ValueError, match="needs schedule=NoiseSchedule"):
        as_denoiser(nn.Identity(), "eps")
    with pytest.raises(ValueError, match="conditioning='index' needs levels"):
        as_denoiser(nn.Identity(), "score", score_conditioning="index")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        ScoreDenoiser(OptimalScore())(torch.zeros(2, 1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="alphas_cumprod must lie in"):
        VPModel(OptimalDenoiser(), schedule.rescale_zero_terminal_snr())
    assert isinstance(as_denoiser(nn.Identity(), "eps", schedule=schedule), VPDenoiser)
    identity = nn.Identity()
    assert as_denoiser(identity, "denoiser") is identity
