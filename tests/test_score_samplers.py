"""The samplers of the score-based family: annealed Langevin, the VE SDE, EDM Euler / Heun.

With data N(MU, STD^2) the optimal denoiser D*(x; sigma) = MU + STD^2 / (STD^2 + sigma^2) (x - MU)
is affine in x, so every sampler's output is Gaussian with a law that a float64 recursion
written here from the papers' equations gives exactly (Song & Ermon 2019 Algorithm 1, Song
et al. 2021 eq. 46, Karras et al. 2022 Algorithm 2). Each law test also checks that a plausible
wrong formula is rejected by the same samples. The EDM and VE steps are compared step for
step with diffusers' EDMEulerScheduler and ScoreSdeVeScheduler, and Heun with churn with an
independent transcription of Karras's Algorithm 2.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_lib import (
    AnnealedLangevinSampler,
    EDMNoiseLevels,
    EDMPrecond,
    EDMSampler,
    GaussianOracle,
    NoiseSchedule,
    ScoreDenoiser,
    VENoiseLevels,
    VESDESampler,
    schedule_sigmas,
)

MU, STD = 0.3, 0.5
SHAPE = (2048, 8)  # 16384 i.i.d. scalars per law test

pytestmark = pytest.mark.usefixtures("one_thread")


def column(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.to(x.dtype).reshape(-1, *((1,) * (x.ndim - 1)))


class OptimalDenoiser(nn.Module):
    """D*(x; sigma) for data N(MU, STD^2), counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return MU + STD**2 / (STD**2 + column(sigma, x) ** 2) * (x - MU)


def gain(sigma: float) -> float:
    """D*(x) = gain x + (1 - gain) MU."""
    return STD**2 / (STD**2 + sigma**2)


def assert_law(samples: torch.Tensor, mean: float, var: float, wrong: tuple[float, float]) -> None:
    """Samples match N(mean, var) within 5 standard errors; ``wrong`` must be rejected."""
    n = samples.numel()
    sample_mean, sample_var = samples.mean().item(), samples.var().item()
    mean_tol, var_tol = 5 * math.sqrt(var / n), 5 * var * math.sqrt(2 / n)
    assert abs(sample_mean - mean) < mean_tol, (sample_mean, mean, mean_tol)
    assert abs(sample_var - var) < var_tol, (sample_var, var, var_tol)
    assert abs(sample_mean - wrong[0]) > mean_tol or abs(sample_var - wrong[1]) > var_tol, (
        "the test cannot tell the wrong formula apart")


def draw(sampler, model, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return sampler.sample(model, SHAPE, generator=generator, dtype=torch.float64)


# ----------------------------------------------------------------------------- exact laws
def edm_law(grid: list[float], heun: bool, churn: float = 0.0, window=(0.0, math.inf),
            s_noise: float = 1.0) -> tuple[float, float]:
    """(mean, var) of Karras et al. Algorithm 2 on the optimal denoiser (x_0 = grid[0] z)."""
    mean, var = 0.0, grid[0] ** 2
    n = len(grid)
    for i, sigma in enumerate(grid):
        following = grid[i + 1] if i + 1 < n else 0.0
        gamma = min(churn / n, math.sqrt(2) - 1) if window[0] <= sigma <= window[1] else 0.0
        hat = sigma * (1 + gamma)
        var += (hat**2 - sigma**2) * s_noise**2  # x_hat = x + sqrt(hat^2 - sigma^2) S_noise z
        # d = (x - D(x; hat)) / hat = (1 - g)(x - MU) / hat: the step is affine around MU
        euler = 1 + (following - hat) * (1 - gain(hat)) / hat
        a = euler
        if heun and following > 0:
            # d' at x' = MU + euler (x - MU): (1 - g') euler (x - MU) / sigma'
            d2 = (1 - gain(following)) * euler / following
            a = 1 + (following - hat) * 0.5 * ((1 - gain(hat)) / hat + d2)
        mean, var = MU + a * (mean - MU), a * a * var
    return mean, var


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("churn", [0.0, 30.0])
def test_edm_law(method, churn) -> None:
    levels = EDMNoiseLevels(sigma_min=0.02, sigma_max=20.0)
    window = (0.05, 5.0)
    sampler = EDMSampler(levels, 8, method=method, S_churn=churn, S_tmin=window[0],
                         S_tmax=window[1], S_noise=1.01, clip_denoised=False)
    grid = sampler.sigmas.tolist()
    mean, var = edm_law(grid, method == "heun", churn, window, 1.01)
    wrong = edm_law(grid, method != "heun", churn, window, 1.01)
    assert_law(draw(sampler, OptimalDenoiser()), mean, var, wrong=wrong)
    if churn:  # the churn's window matters
        assert edm_law(grid, method == "heun", churn, (0.0, math.inf), 1.01) != (mean, var)


def test_edm_heun_is_second_order() -> None:
    """Halving the step divides Heun's error by about 4 (Euler's by about 2)."""
    x_T = torch.randn(512, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma_max = 80.0
    exact = MU + STD * (sigma_max * x_T - MU) / math.sqrt(STD**2 + sigma_max**2)
    errors = {}
    for method in ("euler", "heun"):
        for n in (64, 128):
            sampler = EDMSampler(EDMNoiseLevels(), n, method=method, clip_denoised=False)
            errors[method, n] = (sampler.sample(OptimalDenoiser(), None, x_T=x_T) - exact).abs().max()
    assert 1.6 < errors["euler", 64] / errors["euler", 128] < 2.5
    assert 3.2 < errors["heun", 64] / errors["heun", 128] < 5.0


def langevin_law(grid: list[float], steps: int, eps: float, denoise: bool,
                 drift: float = 0.5) -> tuple[float, float]:
    """Song & Ermon 2019 Algorithm 1 on the optimal score, from x = grid[0] z (``drift``: the
    factor of alpha on the score, 1/2 in the paper)."""
    mean, var = 0.0, grid[0] ** 2
    for sigma in grid:
        alpha = eps * sigma**2 / grid[-1] ** 2
        # s(x) = (D - x) / sigma^2 = -(1 - g)(x - MU) / sigma^2
        a = 1 - drift * alpha * (1 - gain(sigma)) / sigma**2
        for _ in range(steps):
            mean, var = MU + a * (mean - MU), a * a * var + alpha
    if denoise:
        g = gain(grid[-1])
        mean, var = MU + g * (mean - MU), g * g * var
    return mean, var


@pytest.mark.parametrize("denoise", [True, False])
def test_annealed_langevin_law(denoise) -> None:
    levels = VENoiseLevels(0.05, 5.0, 6)
    sampler = AnnealedLangevinSampler(levels, steps_per_level=7, step_size=3e-3, denoise=denoise,
                                      clip_denoised=False)
    grid = levels.sigmas.tolist()
    assert sampler.num_model_calls == 6 * 7 + int(denoise)
    mean, var = langevin_law(grid, 7, 3e-3, denoise)
    wrong = langevin_law(grid, 7, 3e-3, denoise, drift=1.0)
    assert_law(draw(sampler, OptimalDenoiser()), mean, var, wrong=wrong)


def reverse_diffusion_law(grid: list[float], noisy_last: bool = False) -> tuple[float, float]:
    """Song et al. 2021 eq. 46 for the VE SDE, from x = grid[0] z; no noise on the last step."""
    mean, var = 0.0, grid[0] ** 2
    for i, sigma in enumerate(grid):
        following = grid[i + 1] if i + 1 < len(grid) else 0.0
        step = sigma**2 - following**2
        a = 1 - step * (1 - gain(sigma)) / sigma**2
        noise = step if (i + 1 < len(grid) or noisy_last) else 0.0
        mean, var = MU + a * (mean - MU), a * a * var + noise
    return mean, var


def test_ve_reverse_diffusion_law() -> None:
    levels = VENoiseLevels(0.3, 10.0, 6)
    sampler = VESDESampler(levels, method="reverse_diffusion", clip_denoised=False)
    grid = levels.sigmas.tolist()
    wrong = reverse_diffusion_law(grid, noisy_last=True)
    assert_law(draw(sampler, OptimalDenoiser()), *reverse_diffusion_law(grid), wrong=wrong)


# ----------------------------------------------------------------------------- formulations
@pytest.mark.parametrize("cls, options", [
    (EDMSampler, {"method": "heun"}),
    (EDMSampler, {"method": "euler"}),
    (AnnealedLangevinSampler, {"steps_per_level": 3, "step_size": 1e-2}),
    (VESDESampler, {"corrector_steps": 2}),
])
def test_a_ddpm_model_samples_as_its_optimal_denoiser(small_schedule, cls, options) -> None:
    """On the schedule's own levels, a DDPM eps oracle (through VPDenoiser) and the optimal
    denoiser give the same samples from the same noise: the conversion is exact."""
    sigmas = schedule_sigmas(small_schedule)[torch.tensor([49, 30, 15, 6, 2, 0])]
    ddpm = cls(small_schedule, sigmas=sigmas, clip_denoised=False, **options)
    edm = cls(EDMNoiseLevels(0.001, 1000.0), sigmas=sigmas, clip_denoised=False, **options)
    oracle = GaussianOracle(small_schedule, mean=MU, std=STD)
    ours = draw(ddpm, oracle, seed=3)[:64]
    theirs = draw(edm, OptimalDenoiser(), seed=3)[:64]
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_prediction_reaches_the_vp_adapter(small_schedule) -> None:
    sigmas = schedule_sigmas(small_schedule)[torch.tensor([49, 20, 5, 0])]
    x_T = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    results = []
    for prediction in ("eps", "x0", "v"):
        oracle = GaussianOracle(small_schedule, mean=MU, std=STD, prediction=prediction)
        sampler = EDMSampler(small_schedule, sigmas=sigmas, prediction=prediction,
                             clip_denoised=False)
        results.append(sampler.sample(oracle, None, x_T=x_T))
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(results[0], results[2], rtol=1e-9, atol=1e-9)
    # a model that also returns variance values: they are sliced off
    oracle = GaussianOracle(small_schedule, mean=MU, std=STD)

    def with_variance(x_t, t):
        return torch.cat([oracle(x_t, t), torch.full_like(x_t, 7.0)], dim=1)

    sampler = EDMSampler(small_schedule, sigmas=sigmas, learn_sigma=True, clip_denoised=False)
    torch.testing.assert_close(sampler.sample(with_variance, None, x_T=x_T), results[0],
                               rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- references
class TinyNetwork(nn.Module):
    """F(c_in x, c_noise): a fixed nonlinear map, so that a wrong step shows."""

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return torch.tanh(1.3 * x + column(c_noise, x)) - 0.2 * x * column(c_noise, x)


def test_edm_euler_matches_diffusers_step_for_step() -> None:
    from diffusers import EDMEulerScheduler

    scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0)
    scheduler.set_timesteps(12)
    network = TinyNetwork()
    x_T = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    sample = x_T * scheduler.sigmas[0]
    reference = [sample]
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(sample, t)
        out = network(scaled, t.expand(4))
        sample = scheduler.step(out, t, sample).prev_sample
        reference.append(sample)
    sampler = EDMSampler(EDMNoiseLevels(), method="euler", sigmas=scheduler.sigmas[:-1].double(),
                         clip_denoised=False)
    _, trajectory = sampler.sample(EDMPrecond(network), None, x_T=x_T, return_trajectory=True)
    assert len(trajectory.samples) == len(reference) == 13
    for ours, theirs in zip(trajectory.samples, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    # the model saw diffusers' levels
    torch.testing.assert_close(trajectory.timesteps, scheduler.sigmas[:-1])


def karras_algorithm_2(denoiser, x_T, grid, churn, t_min, t_max, s_noise, draws):
    """Karras et al. 2022, Algorithm 2, from its equations (lines 1-12); ``draws()`` gives z_i."""
    n = len(grid)
    sigmas = list(grid) + [0.0]
    x = x_T * sigmas[0]
    for i in range(n):
        z = draws(i)
        gamma = min(churn / n, math.sqrt(2) - 1) if t_min <= sigmas[i] <= t_max else 0.0
        hat = sigmas[i] + gamma * sigmas[i]
        x_hat = x + math.sqrt(hat**2 - sigmas[i] ** 2) * s_noise * z
        d = (x_hat - denoiser(x_hat, torch.full((x.shape[0],), hat, dtype=x.dtype))) / hat
        x_next = x_hat + (sigmas[i + 1] - hat) * d
        if sigmas[i + 1] != 0:
            level = torch.full((x.shape[0],), sigmas[i + 1], dtype=x.dtype)
            d_prime = (x_next - denoiser(x_next, level)) / sigmas[i + 1]
            x_next = x_hat + (sigmas[i + 1] - hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def test_edm_heun_with_churn_matches_algorithm_2() -> None:
    denoiser = EDMPrecond(TinyNetwork())
    sampler = EDMSampler(EDMNoiseLevels(), 7, S_churn=20.0, S_tmin=0.01, S_tmax=10.0,
                         S_noise=1.007, clip_denoised=False)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # the sampler draws the churn of level 0 first, then one noise per call; the churn of
    # level i + 1 is the noise of the call that completes level i (Heun: its second call)
    generator = torch.Generator().manual_seed(9)
    noises = [torch.randn(x_T.shape, generator=generator, dtype=torch.float64)
              for _ in range(1 + sampler.num_model_calls)]
    used = [noises[0]] + [noises[2 + 2 * i] for i in range(6)]
    expected = karras_algorithm_2(denoiser, x_T, sampler.sigmas.tolist(), 20.0, 0.01, 10.0,
                                  1.007, lambda i: used[i])
    ours = sampler.sample(denoiser, None, x_T=x_T, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    assert sampler.num_model_calls == 2 * 7 - 1


def test_ve_predictor_corrector_matches_diffusers_step_for_step() -> None:
    from diffusers import ScoreSdeVeScheduler

    n, correctors = 6, 2
    scheduler = ScoreSdeVeScheduler(num_train_timesteps=n, snr=0.16, sigma_min=0.05,
                                    sigma_max=8.0, correct_steps=correctors)
    scheduler.set_timesteps(n)
    scheduler.set_sigmas(n)
    levels = scheduler.discrete_sigmas.flip(0).double()  # ascending in diffusers

    def score_model(x, sigma):
        return -(x - 0.3 * torch.tanh(x)) / (STD**2 + column(sigma, x) ** 2)

    x_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(11)
    sample = x_T * levels[0].float()
    for k in range(n):  # level k of ours is diffusers' discrete index n - 1 - k
        sigma = torch.full((8,), float(levels[k]))
        for _ in range(correctors):
            sample = scheduler.step_correct(score_model(sample, sigma), sample,
                                            generator=generator).prev_sample
        timestep = (n - 1 - k + 0.5) / (n - 1)  # (timestep * (n - 1)).long() = n - 1 - k
        output = scheduler.step_pred(score_model(sample, sigma), timestep, sample,
                                     generator=generator)
        sample = output.prev_sample
    expected = output.prev_sample_mean  # the last step returns its mean (denoise=True)
    sampler = VESDESampler(VENoiseLevels(0.05, 8.0, n), sigmas=levels, corrector_steps=correctors,
                           clip_denoised=False)
    ours = sampler.sample(ScoreDenoiser(score_model), None, x_T=x_T,
                          generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert sampler.num_model_calls == n * (correctors + 1)


# ----------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("sampler, calls", [
    (EDMSampler(EDMNoiseLevels(), 5), 9),
    (EDMSampler(EDMNoiseLevels(), 5, method="euler"), 5),
    (AnnealedLangevinSampler(VENoiseLevels(0.01, 1.0, 4), steps_per_level=3), 13),
    (VESDESampler(VENoiseLevels(0.01, 1.0, 4), corrector_steps=2), 12),
    (VESDESampler(VENoiseLevels(0.01, 1.0, 4), method="reverse_diffusion"), 4),
])
def test_model_calls_are_counted_and_the_trajectory_records_the_levels(sampler, calls) -> None:
    model = OptimalDenoiser()
    x, trajectory = sampler.sample(model, (2, 3), generator=torch.Generator().manual_seed(0),
                                   return_trajectory=True)
    assert model.calls == sampler.num_model_calls == trajectory.num_model_calls == calls
    torch.testing.assert_close(trajectory.timesteps, sampler.timesteps.float())
    assert torch.equal(trajectory.samples[-1], x) and x.abs().max() <= 1.0  # clip_denoised
    again = sampler.sample(model, (2, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, x)  # the generator reproduces the run


def test_guidance_combines_the_two_denoisers() -> None:
    class Conditional(nn.Module):
        def forward(self, x, sigma, y):
            shift = torch.where(y >= 0, 0.5, -0.25).to(x.dtype).reshape(-1, 1)
            return OptimalDenoiser()(x, sigma) + shift

    class Guided(nn.Module):
        def forward(self, x, sigma, y):
            cond = Conditional()(x, sigma, y)
            uncond = Conditional()(x, sigma, torch.full_like(y, -1))
            return uncond + 3.0 * (cond - uncond)

    sampler = EDMSampler(EDMNoiseLevels(), 6, clip_denoised=False)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    guided = sampler.sample(Conditional(), None, x_T=x_T, model_kwargs={"y": y},
                            guidance_scale=3.0)
    expected = sampler.sample(Guided(), None, x_T=x_T, model_kwargs={"y": y})
    torch.testing.assert_close(guided, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("build, match", [
    (lambda: AnnealedLangevinSampler(VENoiseLevels(), step_size=0.0), "step_size"),
    (lambda: AnnealedLangevinSampler(VENoiseLevels(), steps_per_level=0), "steps_per_level"),
    (lambda: EDMSampler(EDMNoiseLevels(), 0), "num_steps"),
    (lambda: EDMSampler(EDMNoiseLevels(), method="rk4"), "method"),
    (lambda: EDMSampler(EDMNoiseLevels(), S_tmin=2.0, S_tmax=1.0), "S_tmin"),
    (lambda: EDMSampler(EDMNoiseLevels(), S_churn=-1.0), "S_churn"),
    (lambda: EDMSampler(EDMNoiseLevels(), rho=0.0), "rho"),
    (lambda: EDMSampler(EDMNoiseLevels(), sigmas=[1.0, 2.0]), "decrease"),
    (lambda: EDMSampler(EDMNoiseLevels(), sigmas=[1.0, 0.0]), "> 0"),
    (lambda: EDMSampler(EDMNoiseLevels(), 3, sigmas=[2.0, 1.0]), "len"),
    (lambda: EDMSampler(NoiseSchedule.linear(1000), sigmas=[500.0, 1.0]), "range"),
    (lambda: VESDESampler(VENoiseLevels(), method="ode"), "method"),
    (lambda: VESDESampler(VENoiseLevels(), snr=-0.1), "snr"),
    (lambda: EDMSampler(VENoiseLevels(), spacing="cosine"), "spacing"),
])
def test_bad_input_names_the_argument(build, match) -> None:
    with pytest.raises(ValueError, match=match):
        build()
    with pytest.raises(TypeError, match="schedule"):
        EDMSampler(object())
    with pytest.raises(NotImplementedError, match="img2img"):
        EDMSampler(EDMNoiseLevels()).img2img(OptimalDenoiser(), torch.zeros(1, 2))


@pytest.mark.compile
def test_edm_heun_with_churn_compiles_to_the_eager_run() -> None:
    """One graph for every call (the level and the position enter as tensors)."""
    torch._dynamo.reset()
    denoiser = EDMPrecond(TinyNetwork())
    sampler = EDMSampler(EDMNoiseLevels(), 4, S_churn=10.0, clip_denoised=False)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    eager = sampler.sample(denoiser, None, x_T=x_T, generator=torch.Generator().manual_seed(1),
                           compile=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = sampler.sample(denoiser, None, x_T=x_T,
                                  generator=torch.Generator().manual_seed(1), compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
