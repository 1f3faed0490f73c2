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
from ddpm_lib.score_losses import DenoisingScoreMatchingLoss, EDMLoss

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
    # the schedule's own attribute, kept in float64 and moved with it
    assert schedule.sigma.dtype == torch.float64
    torch.testing.assert_close(schedule.sigma, sigmas, rtol=1e-12, atol=0)
    assert schedule.to("cpu").sigma.device.type == "cpu"


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


# ----------------------------------------------------------------------------- losses
def test_dsm_loss_is_minimised_by_the_true_score_with_its_closed_form_value() -> None:
    levels = VENoiseLevels(0.05, 5.0, 6)
    loss_fn = DenoisingScoreMatchingLoss(levels)
    n = 20000
    x0 = MU + STD * torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.arange(n) % 6
    noise = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    per_sample = loss_fn(OptimalScore(), x0, t=t, noise=noise, reduction="none")
    # E[sigma^2 ||s* + z/sigma||^2] = s^2 / (s^2 + sigma^2) per level
    for i in range(6):
        rows = t == i
        expected = STD**2 / (STD**2 + levels.sigmas[i] ** 2)
        assert abs(float(per_sample[rows].mean()) - float(expected)) < 0.05 * float(expected) + 1e-3
    perturbed = lambda x, s: OptimalScore()(x, s) + 0.2 / s[:, None]
    assert loss_fn(perturbed, x0, t=t, noise=noise) > loss_fn(OptimalScore(), x0, t=t, noise=noise)
    # drawn levels cover the ladder uniformly, from the generator alone
    g = torch.Generator().manual_seed(5)
    seen = []
    loss_fn(lambda x, c: (seen.append(c), torch.zeros_like(x))[1], x0[:600], generator=g)
    counts = torch.bincount(levels.index_of(seen[0].double()), minlength=6)
    assert counts.min() > 60
    with pytest.raises(ValueError, match=r"t must be ladder indices in \[0, 5\]"):
        loss_fn(OptimalScore(), x0[:2], t=torch.tensor([0, 6]))


def test_edm_loss_of_the_optimal_denoiser_is_one_at_every_sigma() -> None:
    """With data std = sigma_data the EDM weight makes the optimum's loss exactly 1."""
    loss_fn = EDMLoss(sigma_data=STD)
    n = 20000
    x0 = MU + STD * torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    noise = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for value in (0.01, 0.3, 2.0, 40.0):
        sigma = torch.full((n,), value, dtype=torch.float64)
        loss = loss_fn(OptimalDenoiser(), x0, noise=noise, sigma=sigma)
        assert abs(float(loss) - 1.0) < 0.05
        assert loss_fn(OptimalDenoiser(0.05), x0, noise=noise, sigma=sigma) > loss
    # sigma is log-normal(P_mean, P_std) from the generator
    seen = []
    EDMLoss()(lambda x, s: (seen.append(s), x)[1], x0, generator=torch.Generator().manual_seed(8))
    log_sigma = seen[0].double().log()
    assert abs(float(log_sigma.mean()) + 1.2) < 0.05 and abs(float(log_sigma.std()) - 1.2) < 0.05
    torch.testing.assert_close(loss_fn.weight(torch.tensor([1.0])),
                               torch.tensor([(1 + STD**2) / STD**2], dtype=torch.float64))
    with pytest.raises(ValueError, match="EDMLoss draws a continuous sigma and takes no t"):
        loss_fn(OptimalDenoiser(), x0[:2], t=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="P_std must be > 0"):
        EDMLoss(P_std=0.0)


class SigmaNet(nn.Module):
    """``net(x, c)``: two convolutions conditioned on a float ``(B,)`` c (a level or c_noise)."""

    def __init__(self, channels: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.cond = nn.Linear(1, hidden)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.cond(c.float()[:, None])[:, :, None, None]
        return self.out(torch.nn.functional.silu(h))


def _trainer(out_dir, objective: str):
    from ddpm_lib.data import ShapesDataset
    from ddpm_lib.training import Trainer

    torch.manual_seed(1234)
    if objective == "edm":
        model: nn.Module = EDMPrecond(SigmaNet(), sigma_data=0.5)
        loss_fn: object = EDMLoss()
    else:
        model, loss_fn = SigmaNet(), DenoisingScoreMatchingLoss(VENoiseLevels(0.01, 2.0, 5))
    return Trainer(
        model, loss_fn, ShapesDataset(size=24, image_size=8, seed=0), batch_size=8, lr=1e-2,
        warmup_steps=1, ema_decay=0.9, out_dir=out_dir, log_every=1, checkpoint_every=2,
        progress=False, tensorboard=False, seed=7,
    )


@pytest.mark.parametrize("objective", ["edm", "dsm"])
def test_score_losses_train_through_the_trainer_with_exact_resume(tmp_path, objective) -> None:
    torch.set_num_threads(1)
    reference = _trainer(tmp_path / "once", objective)
    before = {k: v.clone() for k, v in reference.model.state_dict().items()}
    reference.train(4)
    after = reference.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    first = _trainer(tmp_path / "split", objective)
    first.train(2)
    second = _trainer(tmp_path / "split", objective)
    assert second.step == 2 and second.resumed_from is not None
    second.train(4)
    for name, module in (("model", "model"), ("ema", "ema_model")):
        ours, theirs = getattr(second, module).state_dict(), getattr(reference, module).state_dict()
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), f"{name}.{key} differs"
