"""The score-SDE view: the score, the continuous VP SDE, and SDESampler's four methods.

With Gaussian data N(MU, STD^2) the oracle is the exact predictor, so the Euler-Maruyama and
reverse-diffusion chains are affine in x plus Gaussian noise: their output law follows from a
float64 recursion written here from the papers' update formulas (independently of the
sampler's tables). The PF-ODE's exact flow is the monotone affine map between Gaussian
marginals, which gives the order of Heun's method.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_lib import GaussianOracle, NoiseSchedule
from ddpm_lib.samplers import SDESampler, VPSDE

pytestmark = pytest.mark.usefixtures("one_thread")

MU, STD = 0.3, 0.5
SHAPE = (2048, 4)


@pytest.fixture
def oracle64(schedule):
    return GaussianOracle(schedule, mean=MU, std=STD)


def marginal(schedule, t):
    abar = float(schedule.alphas_cumprod[t])
    return math.sqrt(abar) * MU, abar * STD**2 + 1 - abar


def eps_coefficients(abar):
    """eps*(x) = c x + d for data N(MU, STD^2)."""
    c = math.sqrt(1 - abar) / (abar * STD**2 + 1 - abar)
    return c, -c * math.sqrt(abar) * MU


def assert_law(samples, mean, var, z=5.0):
    """Monte-Carlo mean and variance within z standard errors of (mean, var)."""
    n = samples.numel()
    assert abs(float(samples.mean()) - mean) < z * math.sqrt(var / n)
    assert abs(float(samples.var()) - var) < z * var * math.sqrt(2 / n)


# ----------------------------------------------------------------------------- score, SDE
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_score_is_the_gaussian_score(schedule, prediction, generator):
    """With the exact predictor, score = grad log N(sqrt(abar) mu, abar s^2 + 1 - abar)."""
    oracle = GaussianOracle(schedule, mean=MU, std=STD, prediction=prediction)
    x = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 300, 500, 700, 900, 999])
    score = schedule.score(oracle(x, t), x, t, prediction=prediction)
    abar = schedule.alphas_cumprod[t][:, None]
    expected = -(x - abar.sqrt() * MU) / (abar * STD**2 + 1 - abar)
    torch.testing.assert_close(score, expected, rtol=1e-9, atol=1e-9)
    eps = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(schedule.score(eps, x, t), -eps / (1 - abar).sqrt())
    with pytest.raises(ValueError, match="prediction"):
        schedule.score(eps, x, t, prediction="noise")


def test_vp_sde_marginals_are_the_discrete_ones(schedule):
    sde = VPSDE(schedule)
    t = torch.arange(1000)
    s = sde.time(t)
    torch.testing.assert_close(sde.log_alphas_cumprod(s).exp(), schedule.alphas_cumprod)
    assert torch.equal(sde.timestep(s), t)
    # beta(s) ~ T beta_t (Song et al.'s beta_min = 0.1, beta_max = 20 for the linear schedule)
    torch.testing.assert_close(sde.beta(s), 1000 * schedule.betas, rtol=1.1e-2, atol=0)
    assert abs(float(sde.beta(1.0)) - 20.0) < 0.3 and abs(float(sde.beta(1e-4)) - 0.1) < 1e-3
    # log abar(s) = -int_0^s beta: check by the trapezoid rule on a fine grid
    fine = torch.linspace(0, 0.7, 70001, dtype=torch.float64)
    integral = torch.trapezoid(sde.beta(fine), fine)
    assert abs(float(-sde.log_alphas_cumprod(0.7)) - float(integral)) < 1e-3
    x = torch.ones(2, 3, dtype=torch.float64)
    torch.testing.assert_close(sde.drift(x, 0.5), -0.5 * sde.beta(0.5) * x)
    torch.testing.assert_close(sde.diffusion(0.5) ** 2, sde.beta(0.5))
    alpha, sigma = sde.marginal(s[300])
    torch.testing.assert_close(alpha**2 + sigma**2, torch.tensor(1.0, dtype=torch.float64))


# ----------------------------------------------------------------------------- Euler-Maruyama
def em_law(schedule, levels):
    """Law of x_b = x_a + B (x_a / 2 - eps / sigma_a) + sqrt(B) z, B = log(abar_b / abar_a),
    started from N(0, 1), ending with Tweedie's x0 = (x - sigma eps) / alpha."""
    abar = [float(schedule.alphas_cumprod[t]) for t in levels]
    mean, var = 0.0, 1.0
    for k, a in enumerate(abar):
        c, d = eps_coefficients(a)
        sigma = math.sqrt(1 - a)
        if k + 1 == len(abar):
            gain, shift, noise = (1 - sigma * c) / math.sqrt(a), -sigma * d / math.sqrt(a), 0.0
        else:
            b = math.log(abar[k + 1] / a)
            gain, shift, noise = 1 + b / 2 - b * c / sigma, -b * d / sigma, b
        mean, var = gain * mean + shift, gain**2 * var + noise
    return mean, var


@pytest.mark.parametrize("num_steps", [20, 200])
def test_euler_maruyama_law(schedule, oracle64, num_steps, generator):
    sampler = SDESampler(schedule, num_steps, clip_denoised=False)
    x = sampler.sample(oracle64, SHAPE, generator=generator, dtype=torch.float64)
    mean, var = em_law(schedule, sampler.timesteps.tolist())
    assert_law(x, mean, var)


def test_reverse_sde_approaches_the_data_law(schedule):
    """The exact law of the EM chain converges to N(MU, STD^2) as the steps get finer."""
    errors = []
    for num_steps in (25, 100, 1000):
        levels = SDESampler(schedule, num_steps).timesteps.tolist()
        mean, var = em_law(schedule, levels)
        errors.append(abs(mean - MU) + abs(var - STD**2))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 5e-3


# ----------------------------------------------------------------------------- PC
def test_predictor_corrector(schedule, oracle64, generator):
    sampler = SDESampler(schedule, 200, method="predictor_corrector", clip_denoised=False,
                         corrector_steps=1)
    x, trajectory = sampler.sample(oracle64, SHAPE, generator=generator, dtype=torch.float64,
                                   return_trajectory=True)
    assert trajectory.num_model_calls == 1 + 199 * 2 == len(sampler.timesteps)
    assert len(sampler.grid) == 200
    assert_law(x, MU, STD**2, z=6.0)


def test_reverse_diffusion_predictor_law(schedule, oracle64, generator):
    """Without correctors, PC is Song et al.'s reverse-diffusion predictor: an affine chain
    x <- (2 - sqrt(1 - beta)) x + beta score + sqrt(beta) z on the grid's betas."""
    sampler = SDESampler(schedule, 30, method="predictor_corrector", corrector_steps=0,
                         clip_denoised=False)
    x = sampler.sample(oracle64, SHAPE, generator=generator, dtype=torch.float64)
    abar = [float(schedule.alphas_cumprod[t]) for t in sampler.grid.tolist()]
    mean, var = 0.0, 1.0
    for k, a in enumerate(abar):
        c, d = eps_coefficients(a)
        sigma = math.sqrt(1 - a)
        if k + 1 == len(abar):
            gain, shift, noise = (1 - sigma * c) / math.sqrt(a), -sigma * d / math.sqrt(a), 0.0
        else:
            beta = 1 - a / abar[k + 1]
            gain = 2 - math.sqrt(1 - beta) - beta * c / sigma
            shift, noise = -beta * d / sigma, beta
        mean, var = gain * mean + shift, gain**2 * var + noise
    assert_law(x, mean, var)
    # the corrector moves the law: with it the law is a different one (closer to the data)
    corrected = SDESampler(schedule, 30, method="predictor_corrector", corrector_steps=2,
                           clip_denoised=False).sample(oracle64, SHAPE, generator=generator,
                                                       dtype=torch.float64)
    assert abs(float(corrected.var()) - STD**2) < abs(var - STD**2)


# ----------------------------------------------------------------------------- Heun
def test_heun_is_second_order(schedule, oracle64):
    """Error of the PF-ODE map from t = 600 to t = 100 against the exact Gaussian flow: the
    ratio when the steps halve is about 4 (Euler, i.e. DDIM, would give 2)."""
    m0, v0 = marginal(schedule, 600)
    m1, v1 = marginal(schedule, 100)
    u = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    x_start = m0 + math.sqrt(v0) * u
    exact = m1 + math.sqrt(v1 / v0) * (x_start - m0)
    errors = []
    for levels in (11, 21, 41):
        grid = np.linspace(600, 100, levels).round().astype(int).tolist()
        sampler = SDESampler(schedule, method="heun", timesteps=grid, clip_denoised=False)
        _, trajectory = sampler.sample(oracle64, None, x_T=x_start, return_trajectory=True)
        assert trajectory.num_model_calls == 2 * levels - 1
        # samples[-2]: after Heun's step into t = 100 (the last call is the Euler step to 0)
        errors.append(float((trajectory.samples[-2] - exact).abs().max()))
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(3.5 < r < 4.6 for r in ratios), (errors, ratios)


def test_heun_full_run_matches_data_law(schedule, oracle64, generator):
    sampler = SDESampler(schedule, 40, method="heun", clip_denoised=False)
    x = sampler.sample(oracle64, SHAPE, generator=generator, dtype=torch.float64)
    assert abs(float(x.mean()) - MU) < 0.02 and abs(float(x.var()) - STD**2) < 0.01


# ----------------------------------------------------------------------------- adaptive
def test_adaptive_law_and_model_calls(schedule, oracle64, generator):
    loose = SDESampler(schedule, method="adaptive", rtol=0.1, atol=0.02, clip_denoised=False)
    x, trajectory = loose.sample(oracle64, SHAPE, generator=generator, dtype=torch.float64,
                                 return_trajectory=True)
    calls = trajectory.num_model_calls
    assert calls == len(trajectory.samples) - 1 == len(trajectory.predicted_x0)
    assert 10 < calls < 1000
    assert int(trajectory.timesteps[0]) == 999 and int(trajectory.timesteps[-1]) == 0
    assert abs(float(x.mean()) - MU) < 0.03 and abs(float(x.var()) - STD**2) < 0.03
    tight = SDESampler(schedule, method="adaptive", rtol=0.01, atol=0.002, clip_denoised=False)
    _, tight_trajectory = tight.sample(oracle64, SHAPE, generator=generator,
                                       dtype=torch.float64, return_trajectory=True)
    assert tight_trajectory.num_model_calls > calls


def test_adaptive_fails_loudly(schedule, oracle64, generator):
    with pytest.raises(RuntimeError, match=r"max_model_calls=12.*time s=.*step size"):
        SDESampler(schedule, method="adaptive", max_model_calls=12, rtol=1e-3,
                   atol=1e-4).sample(oracle64, (4, 2), generator=generator)
    with pytest.raises(RuntimeError, match=r"step size fell to .* at time s="):
        SDESampler(schedule, method="adaptive", min_step=0.2, rtol=1e-3,
                   atol=1e-4).sample(oracle64, (4, 2), generator=generator)
    for name in ("atol", "rtol"):
        for value in (0.0, -1e-3):
            with pytest.raises(ValueError, match=name):
                SDESampler(schedule, method="adaptive", **{name: value})
    with pytest.raises(ValueError, match="compile"):
        SDESampler(schedule, method="adaptive").sample(oracle64, (2, 2), compile=True)


# ----------------------------------------------------------------------------- API
def test_bad_construction(schedule):
    with pytest.raises(ValueError, match="method"):
        SDESampler(schedule, method="rk4")
    with pytest.raises(ValueError, match="strictly descending"):
        SDESampler(schedule, timesteps=[10, 500, 0])
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        SDESampler(schedule, timesteps=[1000, 500, 0])
    with pytest.raises(ValueError, match="corrector_steps"):
        SDESampler(schedule, method="predictor_corrector", corrector_steps=-1)
    with pytest.raises(ValueError, match="snr"):
        SDESampler(schedule, method="predictor_corrector", snr=-0.1)


def test_step_loop_equals_sample_for_euler_maruyama(small_schedule, oracle):
    sampler = SDESampler(small_schedule, 10)
    x = sampler.sample(oracle, (4, 3), generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)  # the same draws: x_T, then one z per step
    manual = torch.randn(4, 3, generator=generator)
    for t in sampler.timesteps.tolist():
        z = torch.randn(4, 3, generator=generator)
        manual = sampler.step(oracle(manual, torch.full((4,), t)), t, manual, noise=z)
    torch.testing.assert_close(manual, x)
    heun = SDESampler(small_schedule, 10, method="heun")
    with pytest.raises(NotImplementedError, match="euler_maruyama"):
        heun.step(torch.zeros(4, 3), int(heun.timesteps[0]), torch.zeros(4, 3))


def test_any_rank_and_guidance(small_schedule, generator):
    calls = []

    def model(x, t, y=None):
        calls.append(x.shape[0])
        return 0.1 * x + (0.0 if y is None else 0.01 * y.reshape(-1, *([1] * (x.ndim - 1))))

    for method in ("euler_maruyama", "predictor_corrector", "heun", "adaptive"):
        sampler = SDESampler(small_schedule, 8, method=method, atol=0.05, rtol=0.2)
        x = sampler.sample(model, (2, 1, 3, 3), generator=generator,
                           model_kwargs={"y": torch.tensor([1, 2])}, guidance_scale=2.0)
        assert x.shape == (2, 1, 3, 3) and bool(torch.isfinite(x).all())
    assert set(calls) == {4}  # one batched call for both halves


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_equal_eager_without_recompiles(small_schedule):
    """Every grid method (and Analytic-DPM, and a RePaint plan with jumps) compiled with CUDA
    graphs gives the eager samples for the same seed, from one graph per sampler."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from ddpm_lib.samplers import AnalyticVariance, DDPMSampler

    device = torch.device("cuda")
    # the oracle reads its own copy of the schedule on the GPU (no host tables in the graph)
    oracle = GaussianOracle(NoiseSchedule(small_schedule.betas).to(device), mean=MU,
                            std=STD).to(device)
    table = AnalyticVariance.gaussian(small_schedule, STD)
    image = torch.rand(4, 3, 8, 8, device=device) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8, device=device)
    mask[..., :4] = 1
    runs = [
        (SDESampler(small_schedule, 12, method="euler_maruyama"), "sample"),
        (SDESampler(small_schedule, 12, method="predictor_corrector", corrector_steps=2), "sample"),
        (SDESampler(small_schedule, 12, method="heun"), "sample"),
        (DDPMSampler(small_schedule, num_steps=12, variance=table), "sample"),
        (DDPMSampler(small_schedule, num_steps=12), "inpaint"),
    ]
    for sampler, what in runs:
        torch._dynamo.reset()
        counters.clear()
        outputs = {}
        for compile in (True, False):
            generator = torch.Generator(device).manual_seed(1)
            with torch._dynamo.config.patch(error_on_recompile=True):
                if what == "sample":
                    outputs[compile] = sampler.sample(oracle, (4, 3, 8, 8), generator=generator,
                                                      compile=compile, device=device)
                else:
                    outputs[compile] = sampler.inpaint(oracle, image, mask, resample=3,
                                                       jump_length=2, generator=generator,
                                                       compile=compile)
        torch.testing.assert_close(outputs[True], outputs[False], rtol=0, atol=1e-4)
        assert counters["stats"]["unique_graphs"] == 1, (sampler, dict(counters["stats"]))
    adaptive = SDESampler(small_schedule, 20, method="adaptive", atol=0.02, rtol=0.1)
    x = adaptive.sample(oracle, (4, 3, 8, 8), generator=torch.Generator(device).manual_seed(1),
                        device=device)
    assert x.device.type == "cuda" and bool(torch.isfinite(x).all())
