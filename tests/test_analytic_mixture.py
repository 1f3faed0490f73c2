"""The Gaussian-mixture oracle: exact predictions, exact density, exact samples."""

from __future__ import annotations

import pytest
import torch

from ddpm_lib import GaussianMixtureOracle, GaussianOracle

pytestmark = pytest.mark.usefixtures("one_thread")


def mixture(schedule, prediction="eps", diagonal=False):
    means = [[-1.0, 0.5, 0.0], [0.8, -0.4, 0.3], [0.2, 0.9, -0.7]]
    stds = [[0.1, 0.3, 0.2], [0.25, 0.05, 0.15], [0.2, 0.2, 0.4]] if diagonal else [0.1, 0.3, 0.2]
    return GaussianMixtureOracle(schedule, [0.5, 0.3, 0.2], means, stds, prediction=prediction)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_one_component_is_the_gaussian_oracle(small_schedule, prediction):
    ours = GaussianMixtureOracle(small_schedule, [1.0], [[0.3, 0.3]], [0.5], prediction=prediction)
    reference = GaussianOracle(small_schedule, 0.3, 0.5, prediction=prediction)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.arange(16) * 3
    torch.testing.assert_close(ours(x, t), reference(x, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("diagonal", [False, True])
def test_eps_is_minus_sigma_times_the_score_of_the_exact_density(small_schedule, diagonal):
    oracle = mixture(small_schedule, diagonal=diagonal)
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 5, 9, 14, 20, 27, 33, 40, 45, 49])
    x.requires_grad_(True)
    (score,) = torch.autograd.grad(oracle.log_prob(x, t).sum(), x)
    sigma = (1 - small_schedule.alphas_cumprod[t]).sqrt()[:, None]
    torch.testing.assert_close(oracle(x.detach(), t), -sigma * score, rtol=1e-9, atol=1e-10)


def test_predictions_are_consistent(small_schedule):
    """x0, eps and v of the same point satisfy x_t = a x0 + s eps and v = a eps - s x0."""
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.arange(10) * 5
    eps, x0, v = (mixture(small_schedule, p)(x, t) for p in ("eps", "x0", "v"))
    a = small_schedule.alphas_cumprod[t].sqrt()[:, None]
    s = (1 - small_schedule.alphas_cumprod[t]).sqrt()[:, None]
    torch.testing.assert_close(a * x0 + s * eps, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v, a * eps - s * x0, rtol=1e-12, atol=1e-12)


def test_x0_is_the_posterior_mean(small_schedule):
    """Monte Carlo: x0 - x0_hat(x_t) is orthogonal to functions of x_t (the conditional mean's
    defining property), while a wrong predictor (the single Gaussian fit) is not."""
    oracle = mixture(small_schedule, "x0")
    generator = torch.Generator().manual_seed(3)
    x0 = oracle.sample(200_000, generator)
    t = 20
    x_t = small_schedule.q_sample(x0, t, noise=torch.randn(x0.shape, generator=generator,
                                                           dtype=torch.float64))
    features = torch.cat([torch.ones(len(x_t), 1, dtype=torch.float64), x_t, x_t**2,
                          torch.tanh(3 * x_t)], dim=1)  # (n, 10)
    wrong = GaussianOracle(small_schedule, x0.mean(0), x0.std(0), prediction="x0")
    t_batch = torch.full((len(x_t),), t)
    for predictor, should_hold in ((oracle, True), (wrong, False)):
        residual = x0 - predictor(x_t, t_batch)  # (n, 3)
        products = features[:, :, None] * residual[:, None, :]  # (n, 10, 3)
        mean = products.mean(0)
        standard_error = products.std(0) / len(x_t) ** 0.5
        assert bool((mean.abs() < 5 * standard_error).all()) == should_hold


def test_samples_have_the_mixture_law(small_schedule):
    oracle = mixture(small_schedule, diagonal=True)
    samples = oracle.sample(60_000, torch.Generator().manual_seed(4))
    assert samples.shape == (60_000, 3) and samples.dtype == torch.float64
    modes = oracle.component(samples)
    fractions = torch.bincount(modes, minlength=3).double() / len(modes)
    torch.testing.assert_close(fractions, oracle.weights, rtol=0, atol=0.01)
    for k in range(3):
        chosen = samples[modes == k]
        torch.testing.assert_close(chosen.mean(0), oracle.means[k], rtol=0, atol=0.02)
        torch.testing.assert_close(chosen.std(0), oracle.stds[k], rtol=0.05, atol=0.0)
    # the density integrates to one (1-D mixture, trapezoid rule)
    line = GaussianMixtureOracle(small_schedule, [0.7, 0.3], [[-1.0], [1.0]], [0.2, 0.5])
    grid = torch.linspace(-6, 6, 20001, dtype=torch.float64)[:, None]
    assert torch.trapezoid(line.log_prob(grid).exp(), grid[:, 0]).item() == pytest.approx(1, 1e-8)


def test_bad_arguments(small_schedule):
    with pytest.raises(ValueError, match="weights must be a 1-D sequence of positive"):
        GaussianMixtureOracle(small_schedule, [0.5, -0.1], [[0.0], [1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"means must have shape \(K, \*event\) with K = 2"):
        GaussianMixtureOracle(small_schedule, [0.5, 0.5], [[0.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"stds must have shape \(2,\) or \(2, 1\)"):
        GaussianMixtureOracle(small_schedule, [0.5, 0.5], [[0.0], [1.0]], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="stds must be positive"):
        GaussianMixtureOracle(small_schedule, [0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0])
    oracle = mixture(small_schedule)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        oracle(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="n must be a positive int"):
        oracle.sample(0)


def test_the_old_module_name_still_imports_and_warns(monkeypatch):
    import importlib
    import sys

    import ddpm_lib
    from ddpm_lib import oracles

    monkeypatch.delitem(sys.modules, "ddpm_lib.analytic", raising=False)
    with pytest.warns(DeprecationWarning, match="ddpm_lib.analytic is deprecated; import "
                      "GaussianOracle and GaussianMixtureOracle from ddpm_lib.oracles"):
        old = importlib.import_module("ddpm_lib.analytic")
    assert old.GaussianOracle is oracles.GaussianOracle is ddpm_lib.GaussianOracle
    assert old.GaussianMixtureOracle is oracles.GaussianMixtureOracle
