"""Losses and the variational bound, checked against closed forms and independent formulas.

The Gaussian oracle (ddpm_lib.oracles) gives the exact optimum of every objective for data
N(mu, s^2); torch.distributions gives an independent KL and Gaussian CDF; a model that predicts
``x0 + c`` makes every term of the bound deterministic and known in closed form.
"""

from __future__ import annotations

import math

import pytest
import scipy.special
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from ddpm_lib import GaussianOracle, HybridLoss, NoiseSchedule, SimpleLoss, VLBLoss
from ddpm_lib.losses import discretized_gaussian_log_likelihood, normal_kl

LN2 = math.log(2.0)
GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0  # the 256 pixel values in [-1, 1]


def gaussian_data(oracle: GaussianOracle, shape, generator, dtype=torch.float64) -> torch.Tensor:
    """Continuous samples of the oracle's data distribution N(mean, std^2)."""
    return (
        oracle.mean + oracle.std * torch.randn(shape, generator=generator, dtype=torch.float64)
    ).to(dtype)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [-1, 1] and round to the 256-level grid (what 8-bit images become)."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def assert_close_mc(samples: torch.Tensor, expected: float, n_se: float = 5.0) -> None:
    """The mean of i.i.d. ``samples`` equals ``expected`` within ``n_se`` standard errors."""
    mean = samples.double().mean()
    se = samples.double().std() / math.sqrt(samples.numel())
    assert abs(float(mean) - expected) < n_se * float(se) + 1e-12, (
        float(mean),
        expected,
        float(se),
    )


class Scaled(nn.Module):
    """``factor * model(x_t, t)``: a worse predictor than the oracle when factor != 1."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x_t, t, **kwargs):
        return self.factor * self.model(x_t, t)


class WithVariance(nn.Module):
    """Appends constant variance values (``value`` everywhere) to a model's prediction."""

    def __init__(self, model, value: float) -> None:
        super().__init__()
        self.model, self.value = model, value

    def forward(self, x_t, t, **kwargs):
        out = self.model(x_t, t)
        return torch.cat([out, torch.full_like(out, self.value)], dim=1)


class TinyNet(nn.Module):
    """A 1x1 conv on x_t plus a learned per-timestep bias: enough to check gradients."""

    def __init__(self, channels: int, num_timesteps: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 1)
        self.bias = nn.Embedding(num_timesteps, out_channels)
        nn.init.normal_(self.bias.weight, std=0.1)

    def forward(self, x_t, t, y=None):
        out = self.conv(x_t) + self.bias(t)[:, :, None, None]
        return out if y is None else out + y[:, None, None, None]


# ---------------------------------------------------------------------------- normal_kl
def test_normal_kl_matches_torch_distributions(generator):
    mean1, mean2 = torch.randn(2, 1000, generator=generator, dtype=torch.float64)
    logvar1, logvar2 = 3 * torch.randn(2, 1000, generator=generator, dtype=torch.float64)
    expected = kl_divergence(
        Normal(mean1, (0.5 * logvar1).exp()), Normal(mean2, (0.5 * logvar2).exp())
    )
    torch.testing.assert_close(
        normal_kl(mean1, logvar1, mean2, logvar2), expected, rtol=1e-10, atol=1e-12
    )


def test_normal_kl_zero_for_equal_gaussians_and_positive_otherwise(generator):
    mean = torch.randn(64, generator=generator)
    logvar = torch.randn(64, generator=generator)
    assert normal_kl(mean, logvar, mean, logvar).abs().max() < 1e-6
    assert (normal_kl(mean, logvar, mean + 0.1, logvar) > 0).all()
    assert (normal_kl(mean, logvar, mean, logvar + 0.1) > 0).all()
    # floats broadcast: KL(N(m, 1) || N(0, 1)) = m^2 / 2
    torch.testing.assert_close(normal_kl(mean, 0.0, 0.0, 0.0), 0.5 * mean**2)


def test_normal_kl_tiny_variances_stay_finite():
    # beta-tilde at t = 1 of the DDPM schedule is ~1e-4; log-variance form handles far smaller.
    logvar = torch.tensor([-60.0, -30.0], dtype=torch.float32)
    kl = normal_kl(torch.zeros(2), logvar, torch.full((2,), 1e-3), logvar)
    assert torch.isfinite(kl).all() and (kl > 0).all()


# ---------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("mean", [-1.3, -1.0, -0.2, 0.0, 0.5, 0.999, 1.4])
@pytest.mark.parametrize("scale", [1e-3, 0.02, 0.3, 5.0])
def test_decoder_probabilities_sum_to_one(mean, scale):
    means = torch.full((256,), mean, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(GRID, means, math.log(scale))
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(
        log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-9
    )
    # the same in float32
    log_p32 = discretized_gaussian_log_likelihood(GRID.float(), means.float(), math.log(scale))
    assert abs(float(log_p32.double().exp().sum()) - 1.0) < 1e-4


def test_decoder_matches_normal_cdf_with_open_edge_bins(generator):
    # means within 0.1 of their bin and scales >= 0.02: the float64 CDF difference is exact
    mean = GRID + torch.empty(256, dtype=torch.float64).uniform_(-0.1, 0.1, generator=generator)
    scale = torch.empty(256, dtype=torch.float64).uniform_(0.02, 0.5, generator=generator)
    cdf = Normal(mean, scale).cdf
    expected = cdf(GRID + 1 / 255) - cdf(GRID - 1 / 255)
    expected[0] = cdf(GRID[:1] + 1 / 255)[0]  # (-inf, -1 + 1/255]
    expected[-1] = 1 - cdf(GRID[-1:] - 1 / 255)[-1]  # [1 - 1/255, inf)
    got = discretized_gaussian_log_likelihood(GRID, mean, scale.log())
    torch.testing.assert_close(got, expected.log(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("side", [-1.0, 1.0])
def test_decoder_accurate_in_the_tails_in_float32(side):
    # Bins 6-9 standard deviations from the mean on either side: the probabilities are 1e-8 ..
    # 1e-19, where a float32 CDF difference cancels to 0 (improved-diffusion clamps at 1e-12).
    scale = 0.01
    x0 = torch.tensor([0.0, 0.0, 0.0])
    mean = x0 - side * torch.tensor([0.06, 0.08, 0.09])
    upper = (x0.double() + 1 / 255 - mean.double()) / scale
    lower = (x0.double() - 1 / 255 - mean.double()) / scale
    # float64 reference: a plain CDF difference taken in the lower tail with scipy's ndtr
    # (accurate there; torch's float64 ndtr underflows below -8), reflected above the mean
    ndtr = lambda z: torch.from_numpy(scipy.special.ndtr(z.numpy()))
    if side > 0:
        expected = (ndtr(-lower) - ndtr(-upper)).log()
    else:
        expected = (ndtr(upper) - ndtr(lower)).log()
    assert (expected < math.log(1e-7)).all() and torch.isfinite(expected).all()
    got = discretized_gaussian_log_likelihood(x0, mean, math.log(scale))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)


def test_decoder_far_tail_finite_with_finite_gradients():
    mean = torch.tensor([-1.0, 1.0, 0.0], requires_grad=True)
    x0 = torch.tensor([1.0, -1.0, 0.9])
    log_p = discretized_gaussian_log_likelihood(x0, mean, math.log(1e-3))
    assert torch.isfinite(log_p).all() and (log_p < -1e4).all()
    log_p.sum().backward()
    assert torch.isfinite(mean.grad).all() and (mean.grad.abs() > 0).all()


# ---------------------------------------------------------------------------- simple loss
@pytest.mark.parametrize("t", [1, 12, 30, 49])
def test_oracle_attains_the_minimum_simple_loss(small_schedule, oracle, generator, t):
    x0 = gaussian_data(oracle, (4096, 4), generator)
    loss = SimpleLoss(small_schedule)(oracle, x0, t=t, reduction="none", generator=generator)
    assert loss.shape == (4096,)
    assert_close_mc(loss, float(oracle.min_simple_loss(t)))


@pytest.mark.parametrize("t", [3, 25])
def test_a_perturbed_predictor_does_worse_by_the_predicted_amount(
    small_schedule, oracle, generator, t
):
    # E||eps - (1 + d) eps*||^2 = min + d^2 E[eps*^2],
    # E[eps*^2] = (1 - abar) / (abar s^2 + 1 - abar)
    x0 = gaussian_data(oracle, (4096, 4), generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    loss_fn = SimpleLoss(small_schedule)
    best = loss_fn(oracle, x0, t=t, noise=noise, reduction="none")
    worse = loss_fn(Scaled(oracle, 1.3), x0, t=t, noise=noise, reduction="none")
    abar = float(small_schedule.alphas_cumprod[t])
    var = float(oracle.std) ** 2
    assert_close_mc(worse - best, 0.09 * (1 - abar) / (abar * var + 1 - abar))
    assert worse.mean() > best.mean()


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("t", [2, 20, 45])
def test_x0_and_v_objectives_match_their_closed_forms(small_schedule, generator, prediction, t):
    # E||x0 - x0*||^2 = min / SNR and E||v - v*||^2 = min / abar for the oracle of each kind.
    oracle = GaussianOracle(small_schedule, mean=0.3, std=0.5, prediction=prediction)
    x0 = gaussian_data(oracle, (4096, 4), generator)
    loss = SimpleLoss(small_schedule, prediction=prediction)(
        oracle, x0, t=t, reduction="none", generator=generator
    )
    abar = float(small_schedule.alphas_cumprod[t])
    minimum = float(oracle.min_simple_loss(t))
    expected = minimum * (1 - abar) / abar if prediction == "x0" else minimum / abar
    assert_close_mc(loss, expected)


def test_objectives_relate_through_the_snr(small_schedule, generator):
    # For the same predictor written as eps, x0 or v: eps loss = SNR * x0 loss,
    # v loss = (SNR + 1) * x0 loss, per sample (not just in expectation).
    x0 = torch.randn(16, 3, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    t = torch.randint(0, 50, (16,), generator=generator)
    eps_hat = noise + 0.3 * torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_t = small_schedule.q_sample(x0, t, noise=noise)
    x0_hat = small_schedule.predict_x0_from_eps(x_t, t, eps_hat)
    v_hat = small_schedule.get_v(x0_hat, eps_hat, t)
    outputs = {"eps": eps_hat, "x0": x0_hat, "v": v_hat}
    losses = {
        p: SimpleLoss(small_schedule, prediction=p)(
            lambda x, s, p=p: outputs[p], x0, t, noise, "none"
        )
        for p in outputs
    }
    snr = small_schedule.snr(t)
    torch.testing.assert_close(losses["eps"], snr * losses["x0"])
    torch.testing.assert_close(losses["v"], (snr + 1) * losses["x0"])
    # with min-SNR-gamma all three become min(SNR, gamma) * ||x0 - x0_hat||^2
    weighted = {
        p: SimpleLoss(small_schedule, prediction=p, min_snr_gamma=5.0)(
            lambda x, s, p=p: outputs[p], x0, t, noise, "none"
        )
        for p in outputs
    }
    expected = snr.clamp(max=5.0) * losses["x0"]
    for p in outputs:
        torch.testing.assert_close(weighted[p], expected)


def test_min_snr_weights(small_schedule):
    t = torch.arange(50)
    snr = small_schedule.snr(t)
    assert (snr > 5).any() and (snr < 5).any()  # both regimes are exercised
    clipped = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64))
    weights = {
        p: SimpleLoss(small_schedule, p, min_snr_gamma=5).snr_weight(t) for p in ("eps", "x0", "v")
    }
    torch.testing.assert_close(weights["eps"], clipped / snr)
    torch.testing.assert_close(weights["x0"], clipped)
    torch.testing.assert_close(weights["v"], clipped / (snr + 1))
    assert (SimpleLoss(small_schedule).snr_weight(t) == 1).all()
    # zero terminal SNR: the eps weight is the limit 1, not 0/0
    rescaled = small_schedule.rescale_zero_terminal_snr()
    last = torch.tensor([49])
    assert float(SimpleLoss(rescaled, "eps", min_snr_gamma=5).snr_weight(last)) == 1.0
    assert float(SimpleLoss(rescaled, "v", min_snr_gamma=5).snr_weight(last)) == 0.0


def test_reduction_modes_and_reproducible_draws(small_schedule, oracle):
    x0 = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    for loss_fn in (SimpleLoss(small_schedule), VLBLoss(small_schedule)):
        draw = lambda reduction, loss_fn=loss_fn: loss_fn(
            oracle, x0, reduction=reduction, generator=torch.Generator().manual_seed(3)
        )
        none = draw("none")
        assert none.shape == (8,) and none.dtype == torch.float32
        torch.testing.assert_close(draw("mean"), none.mean())
        torch.testing.assert_close(draw("sum"), none.sum())
        other = loss_fn(oracle, x0, reduction="none", generator=torch.Generator().manual_seed(4))
        assert not torch.equal(none, other)
    with pytest.raises(ValueError, match=r"reduction.*'max'"):
        SimpleLoss(small_schedule)(oracle, x0, reduction="max")


def test_model_kwargs_reach_the_model(small_schedule, generator):
    model = TinyNet(2, 50)
    x0 = torch.randn(4, 2, 4, 4, generator=generator)
    t = torch.tensor([0, 5, 10, 49])
    noise = torch.randn(x0.shape, generator=generator)
    y = torch.tensor([0.0, 1.0, 2.0, 3.0])
    loss_fn = SimpleLoss(small_schedule)
    with_y = loss_fn(model, x0, t, noise, "none", y=y)
    without = loss_fn(model, x0, t, noise, "none")
    assert not torch.allclose(with_y, without)
    x_t = small_schedule.q_sample(x0, t, noise)
    torch.testing.assert_close(with_y, ((model(x_t, t, y=y) - noise) ** 2).mean((1, 2, 3)))


# ---------------------------------------------------------------------------- VLB terms
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_kl_is_zero_when_the_model_mean_is_the_posterior_mean(
    small_schedule, generator, prediction
):
    x0 = torch.rand(6, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    t = torch.tensor([1, 2, 10, 25, 40, 49])
    target = {"eps": noise, "x0": x0, "v": small_schedule.get_v(x0, noise, t)}[prediction]
    exact = lambda x_t, s: target
    vlb = VLBLoss(small_schedule, prediction=prediction)(exact, x0, t, noise, "none")
    assert vlb.abs().max() < 1e-10
    # learned_range at v = -1 is beta-tilde, so the KL is zero as well
    vlb = VLBLoss(small_schedule, "learned_range", prediction)(
        WithVariance(exact, -1.0), x0, t, noise, "none"
    )
    assert vlb.abs().max() < 1e-10
    # fixed_large keeps the mean exact but not the variance: KL of the variances alone
    vlb = VLBLoss(small_schedule, "fixed_large", prediction)(exact, x0, t, noise, "none")
    ratio = small_schedule.posterior_variance[t] / small_schedule.betas[t]
    torch.testing.assert_close(vlb, 0.5 * (ratio - 1 - ratio.log()) / LN2)


def test_learned_variance_outputs_log_variance(small_schedule, generator):
    x0 = torch.rand(3, 2, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    t = torch.tensor([3, 20, 49])
    log_var = small_schedule.posterior_log_variance_clipped[t].reshape(3, 1, 1, 1).expand_as(x0)
    model = lambda x_t, s: torch.cat([noise, log_var], dim=1)
    vlb = VLBLoss(small_schedule, "learned")(model, x0, t, noise, "none")
    assert vlb.abs().max() < 1e-10
    model = lambda x_t, s: torch.cat([noise, log_var + 1.0], dim=1)
    vlb = VLBLoss(small_schedule, "learned")(model, x0, t, noise, "none")
    torch.testing.assert_close(
        vlb, torch.full((3,), 0.5 * (1 + math.exp(-1) - 1) / LN2, dtype=torch.float64)
    )


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [1, 8, 30])
def test_oracle_kl_matches_the_gaussian_closed_form(small_schedule, oracle, generator, variance, t):
    # mu_theta - mu-tilde = coef1 (x0*(x_t) - x0), so E[KL] is the variance KL plus
    # coef1^2 Var(x0 | x_t) / (2 sigma^2), Var(x0 | x_t) = s^2 (1 - abar) / (abar s^2 + 1 - abar).
    x0 = gaussian_data(oracle, (4096, 4), generator)
    vlb = VLBLoss(small_schedule, variance)(oracle, x0, t=t, reduction="none", generator=generator)
    abar = float(small_schedule.alphas_cumprod[t])
    var = float(oracle.std) ** 2
    posterior_x0_var = var * (1 - abar) / (abar * var + 1 - abar)
    beta_tilde = float(small_schedule.posterior_variance[t])
    sigma2 = beta_tilde if variance == "fixed_small" else float(small_schedule.betas[t])
    coef1 = float(small_schedule.posterior_mean_coef1[t])
    kl = 0.5 * (
        math.log(sigma2 / beta_tilde)
        - 1
        + beta_tilde / sigma2
        + coef1**2 * posterior_x0_var / sigma2
    )
    assert_close_mc(vlb, kl / LN2)


def offset_model(x0: torch.Tensor, c: float):
    """An x0-predictor that returns ``x0 + c``: every term of the bound is then deterministic."""
    return lambda x_t, t: x0 + c


def offset_model_bound(schedule: NoiseSchedule, x0: torch.Tensor, c: float, variance: str):
    """Closed-form terms (B, T) and prior (B,) in bits/dim for ``offset_model``, in float64."""
    coef1 = schedule.posterior_mean_coef1
    beta_tilde, betas = schedule.posterior_variance, schedule.betas
    sigma2 = beta_tilde if variance == "fixed_small" else betas
    kl = 0.5 * ((sigma2 / beta_tilde).log() - 1 + beta_tilde / sigma2 + coef1**2 * c**2 / sigma2)
    terms = (kl / LN2).expand(x0.shape[0], -1).clone()
    # t = 0: mean x0 + c, variance beta-tilde_1 for both fixed types (the DDPM convention)
    scale = float(schedule.posterior_variance[1]) ** 0.5
    cdf = Normal(x0 + c, scale).cdf
    prob = cdf(x0 + 1 / 255) - cdf(x0 - 1 / 255)
    prob = torch.where(x0 < -0.999, cdf(x0 + 1 / 255), prob)
    prob = torch.where(x0 > 0.999, 1 - cdf(x0 - 1 / 255), prob)
    terms[:, 0] = -prob.log().flatten(1).mean(1) / LN2
    abar_last = schedule.alphas_cumprod[-1]
    prior_kl = 0.5 * (-1 - torch.log1p(-abar_last) + (1 - abar_last) + abar_last * x0**2)
    prior = prior_kl.flatten(1).mean(1) / LN2
    return terms, prior


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_bits_per_dim_equals_the_closed_form_bound(small_schedule, generator, variance):
    x0 = quantize(torch.rand(3, 2, 4, 4, generator=generator, dtype=torch.float64) * 2.2 - 1.1)
    assert (x0 == -1).any() and (x0 == 1).any()  # edge bins are exercised
    c = 0.02
    loss_fn = VLBLoss(small_schedule, variance, prediction="x0")
    result = loss_fn.bits_per_dim(offset_model(x0, c), x0, return_terms=True, generator=generator)
    terms, prior = offset_model_bound(small_schedule, x0, c, variance)
    assert result["terms"].shape == (3, 50) and result["terms"].dtype == torch.float64
    torch.testing.assert_close(result["terms"], terms, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result["prior"], prior, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(result["decoder"], terms[:, 0])
    torch.testing.assert_close(result["total"], prior + terms.sum(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        result["total"], result["prior"] + result["terms"].sum(1), rtol=0, atol=0
    )
    # the training loss at one t is the same term; T * its mean over t is the bound minus prior
    for t in (0, 1, 17, 49):
        torch.testing.assert_close(
            loss_fn(offset_model(x0, c), x0, t=t, reduction="none"), terms[:, t]
        )
    every_t = torch.stack(
        [loss_fn(offset_model(x0, c), x0, t=t, reduction="none") for t in range(50)]
    )
    torch.testing.assert_close(50 * every_t.mean(0), result["total"] - result["prior"])
    # float32 input: same values to float32 accuracy
    total32 = loss_fn.bits_per_dim(offset_model(x0.float(), c), x0.float(), generator=generator)
    assert total32.dtype == torch.float32
    torch.testing.assert_close(total32.double(), prior + terms.sum(1), rtol=1e-4, atol=0)


def test_bits_per_dim_better_predictor_lower_bound_above_entropy(
    small_schedule, oracle, generator, capsys
):
    x0 = quantize(gaussian_data(oracle, (256, 4), generator, torch.float32))
    loss_fn = VLBLoss(small_schedule)
    best = loss_fn.bits_per_dim(
        oracle, x0, generator=torch.Generator().manual_seed(5), progress=True
    )
    assert "bits/dim" in capsys.readouterr().err  # the tqdm bar
    worse = loss_fn.bits_per_dim(
        Scaled(oracle, 1.2), x0, generator=torch.Generator().manual_seed(5)
    )
    assert best.shape == (256,) and torch.isfinite(best).all()
    assert worse.mean() > best.mean() + 0.1
    # E[bound] >= E[-log p_model] >= H(data); the data is a discretized Gaussian (open edge bins)
    log_p = discretized_gaussian_log_likelihood(
        GRID, torch.full((256,), float(oracle.mean), dtype=torch.float64), float(oracle.std.log())
    )
    entropy = float(-(log_p.exp() * log_p).sum() / LN2)
    assert best.mean() > entropy


def test_clip_denoised_only_helps_in_range_data(small_schedule, generator):
    x0 = quantize(torch.rand(4, 1, 4, 4, generator=generator) * 2 - 1)
    far = lambda x_t, t: torch.full_like(x_t, 3.0)
    plain = VLBLoss(small_schedule, prediction="x0").bits_per_dim(far, x0, generator=generator)
    clipped = VLBLoss(small_schedule, prediction="x0", clip_denoised=True).bits_per_dim(
        far, x0, generator=generator
    )
    assert (clipped < plain).all()


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize(
    "make_loss, out_factor",
    [
        (lambda s: SimpleLoss(s), 1),
        (lambda s: SimpleLoss(s, "v", min_snr_gamma=5), 1),
        (lambda s: VLBLoss(s), 1),
        (lambda s: VLBLoss(s, "learned_range"), 2),
        (lambda s: HybridLoss(s), 2),
    ],
)
def test_gradients_flow_to_every_parameter(small_schedule, generator, make_loss, out_factor):
    model = TinyNet(3, 50, out_channels=3 * out_factor)
    x0 = quantize(torch.rand(8, 3, 4, 4, generator=generator) * 2 - 1)
    t = torch.tensor([0, 1, 2, 5, 10, 20, 40, 49])  # the decoder term too
    loss = make_loss(small_schedule)(model, x0, t=t, generator=generator)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_hybrid_vlb_term_does_not_train_the_mean(small_schedule, generator):
    x0 = quantize(torch.rand(6, 2, 4, 4, generator=generator) * 2 - 1)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 1, 4, 15, 30, 49])
    output = nn.Parameter(0.3 * torch.randn(6, 4, 4, 4, generator=generator))
    model = lambda x_t, s: output

    def grad_of(loss_fn):
        output.grad = None
        loss_fn(model, x0, t, noise).backward()
        return output.grad.clone()

    hybrid_grad = grad_of(HybridLoss(small_schedule, vlb_weight=0.01))
    simple_grad = grad_of(lambda m, *a: SimpleLoss(small_schedule)(lambda x, s: m(x, s)[:, :2], *a))
    vlb_grad = grad_of(VLBLoss(small_schedule, "learned_range"))
    assert vlb_grad[:, :2].abs().sum() > 0  # the VLB alone would train the mean...
    torch.testing.assert_close(
        hybrid_grad[:, :2], simple_grad[:, :2], rtol=0, atol=0
    )  # ...not here
    torch.testing.assert_close(hybrid_grad[:, 2:], 0.01 * 50 * vlb_grad[:, 2:])


def test_hybrid_value_is_simple_plus_weighted_vlb(small_schedule, oracle, generator):
    x0 = quantize(gaussian_data(oracle, (8, 2, 3, 3), generator, torch.float32))
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.arange(0, 48, 6)
    model = WithVariance(oracle, 0.3)
    hybrid = HybridLoss(small_schedule, vlb_weight=1e-3)
    got = hybrid(model, x0, t, noise, "none")
    simple = SimpleLoss(small_schedule)(oracle, x0, t, noise, "none")
    vlb = VLBLoss(small_schedule, "learned_range")(model, x0, t, noise, "none")
    torch.testing.assert_close(got, simple + 1e-3 * 50 * vlb)
    x_t = small_schedule.q_sample(x0, t, noise)
    terms = hybrid.terms(model(x_t, t), x0, x_t, t, noise)
    torch.testing.assert_close(terms["simple"], simple)
    torch.testing.assert_close(terms["vlb"], vlb)


# ---------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_float32_losses(small_schedule, generator, dtype):
    x0 = quantize(torch.rand(4, 2, 4, 4, generator=generator) * 2 - 1).to(dtype)
    t = torch.tensor([0, 1, 25, 49])
    oracle = GaussianOracle(small_schedule, 0.0, 0.6)
    cases = [
        (SimpleLoss(small_schedule, min_snr_gamma=5), oracle),
        (SimpleLoss(small_schedule, "v"), GaussianOracle(small_schedule, 0.0, 0.6, "v")),
        (VLBLoss(small_schedule), oracle),
        (VLBLoss(small_schedule, "fixed_large"), oracle),
        (VLBLoss(small_schedule, "learned_range"), WithVariance(oracle, 0.5)),
        (HybridLoss(small_schedule), WithVariance(oracle, -0.5)),
    ]
    for loss_fn, model in cases:
        loss = loss_fn(model, x0, t=t, reduction="none", generator=generator)
        assert loss.dtype == torch.float32, loss_fn
        assert torch.isfinite(loss).all(), loss_fn
        reference = loss_fn(
            model, x0.float(), t=t, reduction="none", generator=torch.Generator().manual_seed(9)
        )
        assert torch.isfinite(reference).all()
    bpd = VLBLoss(small_schedule).bits_per_dim(oracle, x0, generator=generator)
    assert bpd.dtype == torch.float32 and torch.isfinite(bpd).all()


def test_float64_inputs_stay_float64_and_float32_has_no_float64(small_schedule, oracle, generator):
    x0 = torch.rand(2, 1, 2, 2, generator=generator) * 2 - 1
    assert SimpleLoss(small_schedule)(oracle, x0, generator=generator).dtype == torch.float32
    assert VLBLoss(small_schedule)(oracle, x0, generator=generator).dtype == torch.float32
    assert VLBLoss(small_schedule)(oracle, x0.double(), generator=generator).dtype == torch.float64


# ---------------------------------------------------------------------------- bad input
def test_bad_constructor_arguments(small_schedule):
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule; got list"):
        SimpleLoss([0.1, 0.2])
    with pytest.raises(ValueError, match=r"prediction must be one of .*; got 'epsilon'"):
        SimpleLoss(small_schedule, prediction="epsilon")
    with pytest.raises(ValueError, match=r"variance must be one of .*; got 'fixed'"):
        VLBLoss(small_schedule, variance="fixed")
    with pytest.raises(ValueError, match=r"prediction must be one of .*; got 'sample'"):
        VLBLoss(small_schedule, prediction="sample")
    with pytest.raises(ValueError, match="min_snr_gamma must be a positive finite float; got 0"):
        SimpleLoss(small_schedule, min_snr_gamma=0)
    with pytest.raises(TypeError, match="min_snr_gamma must be a positive float or None; got str"):
        SimpleLoss(small_schedule, min_snr_gamma="5")
    with pytest.raises(ValueError, match="vlb_weight must be a finite float >= 0; got -0.1"):
        HybridLoss(small_schedule, vlb_weight=-0.1)
    with pytest.raises(
        ValueError, match=r"variance must be one of 'learned', 'learned_range'; got 'fixed_small'"
    ):
        HybridLoss(small_schedule, variance="fixed_small")
    with pytest.raises(TypeError, match="clip_denoised must be a bool; got str"):
        VLBLoss(small_schedule, clip_denoised="yes")


def test_bad_call_arguments(small_schedule, oracle, generator):
    x0 = torch.rand(4, 2, 4, 4, generator=generator) * 2 - 1
    loss_fn = SimpleLoss(small_schedule)
    with pytest.raises(
        TypeError, match="x0 must be a floating-point tensor; got dtype torch.int64"
    ):
        loss_fn(oracle, x0.long())
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor; got list"):
        loss_fn(oracle, [0.0, 1.0])
    with pytest.raises(
        ValueError, match=r"noise must have the shape of x0 \(4, 2, 4, 4\); got \(4, 2, 4\)"
    ):
        loss_fn(oracle, x0, noise=torch.randn(4, 2, 4))
    with pytest.raises(ValueError, match=r"t must be in \[0, 49\]; got values in \[0, 50\]"):
        loss_fn(oracle, x0, t=torch.tensor([0, 1, 2, 50]))
    with pytest.raises(
        TypeError, match="t must be an integer tensor of timestep indices; got dtype torch.float32"
    ):
        loss_fn(oracle, x0, t=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        loss_fn(oracle, x0, t=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="model must be callable"):
        loss_fn("unet", x0)
    with pytest.raises(TypeError, match="model output must be a torch.Tensor; got tuple"):
        loss_fn(lambda x, t: (x,), x0)
    with pytest.raises(
        ValueError,
        match=r"model output must have shape \(4, 2, 4, 4\).*got \(4, 4, 4, 4\).*HybridLoss",
    ):
        loss_fn(WithVariance(oracle, 0.0), x0)
    with pytest.raises(
        ValueError,
        match=r"model output must have shape \(4, 4, 4, 4\) \(twice the channels.*"
        r"got \(4, 2, 4, 4\)",
    ):
        HybridLoss(small_schedule)(oracle, x0)
    with pytest.raises(
        ValueError, match=r"model output must have shape \(4, 4, 4, 4\).*learned_range"
    ):
        VLBLoss(small_schedule, "learned_range")(oracle, x0)
    with pytest.raises(ValueError, match=r"x0 must lie in \[-1, 1\].*got values in \[-0.*, 3\]"):
        VLBLoss(small_schedule).bits_per_dim(oracle, torch.cat([x0, torch.full_like(x0[:1], 3.0)]))


def test_bad_helper_arguments():
    with pytest.raises(
        TypeError, match="at least one of mean1, logvar1, mean2, logvar2 must be a torch.Tensor"
    ):
        normal_kl(0.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"must broadcast.*mean1 \(3,\).*mean2 \(4,\)"):
        normal_kl(torch.zeros(3), 0.0, torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match=r"mean must have the shape of x0 \(3,\); got \(2,\)"):
        discretized_gaussian_log_likelihood(torch.zeros(3), torch.zeros(2), 0.0)
    with pytest.raises(TypeError, match="log_scale must be a tensor or a float; got str"):
        discretized_gaussian_log_likelihood(torch.zeros(3), torch.zeros(3), "small")
