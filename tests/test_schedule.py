"""NoiseSchedule against diffusers' DDPMScheduler (independent implementation), closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lib import NoiseSchedule
from ddpm_lib.schedule import PREDICTION_TYPES, VARIANCE_TYPES, gather

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

# our constructor, diffusers' beta_schedule name, shared keyword arguments
SCHEDULES = {
    "linear": (NoiseSchedule.linear, "linear", {"beta_start": 1e-4, "beta_end": 0.02}),
    "cosine": (NoiseSchedule.cosine, "squaredcos_cap_v2", {}),
    "scaled_linear": (
        NoiseSchedule.scaled_linear,
        "scaled_linear",
        {"beta_start": 0.00085, "beta_end": 0.012},
    ),
    "sigmoid": (NoiseSchedule.sigmoid, "sigmoid", {"beta_start": 1e-4, "beta_end": 0.02}),
}
PREDICTION_NAMES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
FLOAT32 = {"rtol": 2e-5, "atol": 1e-6}  # diffusers computes its tables in float32


def make_pair(name: str, **config):
    """Our schedule and diffusers' from the same constructor arguments (diffusers in float32)."""
    build, diffusers_name, kwargs = SCHEDULES[name]
    ours = build(1000, **kwargs)
    theirs = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=diffusers_name,
        clip_sample=False,
        **kwargs,
        **config,
    )
    return ours, theirs


def make_float64_pair(name: str, **config):
    """diffusers' scheduler with its tables recomputed in float64, and ours from the same betas.

    diffusers keeps float32 tables, whose rounding 1/sqrt(abar) amplifies ~1e4-fold near t = T;
    to compare the *formulas* of the reverse step to 1e-10 both sides start from the same float64
    betas. The tables themselves are compared at float32 tolerance in test_tables_match_diffusers.
    """
    _, theirs = make_pair(name, **config)
    betas = theirs.betas.double()
    theirs.betas = betas
    theirs.alphas = 1.0 - betas
    theirs.alphas_cumprod = torch.cumprod(theirs.alphas, dim=0)
    theirs.one = torch.tensor(1.0, dtype=torch.float64)
    return NoiseSchedule(betas), theirs


FLOAT64 = {"rtol": 1e-10, "atol": 1e-10}


# ---------------------------------------------------------------------------- diffusers
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_tables_match_diffusers(name):
    ours, theirs = make_pair(name)
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(ours.betas.float(), theirs.betas, **FLOAT32)
    torch.testing.assert_close(ours.alphas.float(), theirs.alphas, **FLOAT32)
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, **FLOAT32)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_reverse_step_matches_diffusers(name, prediction):
    """Posterior mean (both coefficients), variance and x0 estimate, via DDPMScheduler.step."""
    ours, theirs = make_float64_pair(
        name, prediction_type=PREDICTION_NAMES[prediction], variance_type="fixed_small"
    )
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    model_output = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    for t in (0, 1, 2, 10, 250, 500, 998, 999):
        out = theirs.step(model_output, t, x_t, generator=torch.Generator().manual_seed(t))
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=x_t.dtype)
        noise = noise if t > 0 else 0.0  # diffusers adds no noise at t = 0
        pm = ours.p_mean_variance(model_output, x_t, t, prediction=prediction)
        torch.testing.assert_close(pm.x0, out.pred_original_sample, **FLOAT64)
        torch.testing.assert_close(pm.mean + pm.variance.sqrt() * noise, out.prev_sample, **FLOAT64)


@pytest.mark.parametrize("variance", ["fixed_large", "learned_range"])
def test_other_variance_types_match_diffusers_for_t_positive(variance):
    # At t = 0 diffusers uses beta_0 (fixed_large) and log(1e-20) (learned_range); the DDPM and
    # Improved DDPM code, which we follow, use beta-tilde_1 there. Elsewhere they agree.
    ours, theirs = make_float64_pair("linear", variance_type=variance)
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    channels = 6 if variance == "learned_range" else 3
    model_output = torch.randn(2, channels, 4, 4, generator=generator, dtype=torch.float64).clamp(
        -1, 1
    )
    for t in (1, 2, 100, 999):
        out = theirs.step(model_output, t, x_t, generator=torch.Generator().manual_seed(t))
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=x_t.dtype)
        pm = ours.p_mean_variance(model_output, x_t, t, variance=variance)
        torch.testing.assert_close(pm.mean + pm.variance.sqrt() * noise, out.prev_sample, **FLOAT64)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_q_sample_and_velocity_match_diffusers(name):
    ours, theirs = make_float64_pair(name)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 1, 400, 998, 999])
    torch.testing.assert_close(
        ours.q_sample(x0, t, noise), theirs.add_noise(x0, noise, t), **FLOAT64
    )
    torch.testing.assert_close(
        ours.get_v(x0, noise, t), theirs.get_velocity(x0, noise, t), **FLOAT64
    )


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_rescale_zero_terminal_snr_matches_diffusers(name):
    ours, theirs = make_pair(name, rescale_betas_zero_snr=True)
    rescaled = ours.rescale_zero_terminal_snr()
    torch.testing.assert_close(
        rescaled.betas, rescale_zero_terminal_snr(ours.betas)
    )  # float64 both
    torch.testing.assert_close(rescaled.betas.float(), theirs.betas, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_derived_arrays_follow_their_definitions(name):
    schedule = SCHEDULES[name][0](200)
    betas = schedule.betas
    # 1 - abar_t is the variance of x_t | x0 built step by step: v_t = alpha_t v_{t-1} + beta_t
    variance, expected = 0.0, []
    for beta in betas.tolist():
        variance = (1 - beta) * variance + beta
        expected.append(variance)
    torch.testing.assert_close(
        1 - schedule.alphas_cumprod, torch.tensor(expected, dtype=torch.float64)
    )
    torch.testing.assert_close(schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1])
    assert schedule.alphas_cumprod_prev[0] == 1
    assert schedule.posterior_variance[0] == 0
    torch.testing.assert_close(
        schedule.posterior_log_variance_clipped[1:], schedule.posterior_variance[1:].log()
    )
    assert schedule.posterior_log_variance_clipped[0] == schedule.posterior_log_variance_clipped[1]
    assert (schedule.posterior_variance[1:] < betas[1:]).all()  # beta-tilde <= beta


def test_cosine_follows_nichol_dhariwal_eq_17():
    schedule = NoiseSchedule.cosine(100, s=0.008, max_beta=0.999)
    f = lambda t: math.cos((t / 100 + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = torch.tensor([f(t + 1) / f(0) for t in range(99)], dtype=torch.float64)
    torch.testing.assert_close(schedule.alphas_cumprod[:99], expected)  # unclipped betas
    assert schedule.betas[-1] == 0.999  # the last beta is clipped
    assert float(NoiseSchedule.cosine(100, max_beta=0.5).betas.max()) == 0.5


def test_q_sample_moments_by_monte_carlo(schedule, generator):
    # eq. 4: x_t | x0 ~ N(sqrt(abar_t) x0, (1 - abar_t) I)
    n = 200_000
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    for t in (0, 100, 999):
        x_t = schedule.q_sample(x0, t, generator=generator)
        abar = float(schedule.alphas_cumprod[t])
        se_mean = math.sqrt((1 - abar) / n)
        assert abs(float(x_t.mean()) - math.sqrt(abar) * 0.7) < 5 * se_mean
        se_var = (1 - abar) * math.sqrt(2 / n)
        assert abs(float(x_t.var()) - (1 - abar)) < 5 * se_var


def test_q_posterior_is_bayes_rule(small_schedule, generator):
    # q(x_{t-1} | x0) = N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}),
    # q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t)
    # => precision = 1 / (1 - abar_{t-1}) + alpha_t / beta_t,
    #    mean = variance (sqrt(abar_{t-1}) x0 / (1 - abar_{t-1}) + sqrt(alpha_t) x_t / beta_t)
    s = small_schedule
    t = torch.arange(1, 50)
    x0 = torch.randn(49, 3, generator=generator, dtype=torch.float64)
    x_t = torch.randn(49, 3, generator=generator, dtype=torch.float64)
    abar_prev, alpha, beta = (a[t, None] for a in (s.alphas_cumprod_prev, s.alphas, s.betas))
    variance = 1 / (1 / (1 - abar_prev) + alpha / beta)
    mean = variance * (abar_prev.sqrt() * x0 / (1 - abar_prev) + alpha.sqrt() * x_t / beta)
    got_mean, got_var, got_log_var = s.q_posterior(x0, x_t, t)
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(got_var, variance)
    torch.testing.assert_close(got_log_var, variance.log())
    # at t = 0 the posterior is the point mass x0
    mean0, var0, _ = s.q_posterior(x0, x_t, 0)
    torch.testing.assert_close(mean0, x0)
    assert (var0 == 0).all()


def test_conversions_round_trip(schedule, generator):
    x0 = torch.randn(6, 3, 4, 4, generator=generator, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    x_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, eps), x0)
    torch.testing.assert_close(schedule.predict_eps_from_x0(x_t, t, x0), eps)
    v = schedule.get_v(x0, eps, t)
    torch.testing.assert_close(schedule.predict_x0_from_v(x_t, t, v), x0)
    torch.testing.assert_close(schedule.predict_eps_from_v(x_t, t, v), eps)
    abar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0)
    for prediction, output in (("eps", eps), ("x0", x0), ("v", v)):
        got_x0, got_eps = schedule.split_prediction(output, x_t, t, prediction)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)


def test_snr(schedule):
    t = torch.tensor([0, 5, 999])
    abar = schedule.alphas_cumprod[t]
    torch.testing.assert_close(schedule.snr(t), abar / (1 - abar))
    assert schedule.snr(t).dtype == torch.float64 and schedule.snr(t).shape == (3,)
    assert (schedule.snr(torch.arange(1000)).diff() < 0).all()  # strictly decreasing
    torch.testing.assert_close(
        schedule.snr(7), abar[:0].new_tensor(float(schedule.snr(t=torch.tensor(7))))
    )


def test_rescale_zero_terminal_snr_properties(schedule, generator):
    rescaled = schedule.rescale_zero_terminal_snr()
    assert rescaled is not schedule and schedule.alphas_cumprod[-1] > 0  # original untouched
    assert rescaled.alphas_cumprod[-1] == 0 and rescaled.betas[-1] == 1
    torch.testing.assert_close(rescaled.alphas_cumprod[0], schedule.alphas_cumprod[0])
    # sqrt(abar) is an affine function of the old one
    old, new = schedule.sqrt_alphas_cumprod, rescaled.sqrt_alphas_cumprod
    expected = (old - old[-1]) * old[0] / (old[0] - old[-1])
    torch.testing.assert_close(new, expected)
    assert float(rescaled.snr(999)) == 0 and (rescaled.snr(torch.arange(1000)).diff() < 0).all()
    # x0- and v-prediction stay finite at the last step (eps = x_t there)
    x_t = torch.randn(2, 3, generator=generator)
    t = torch.tensor([999, 999])
    x0_hat = torch.randn(2, 3, generator=generator)
    torch.testing.assert_close(rescaled.predict_eps_from_x0(x_t, t, x0_hat), x_t)
    for prediction in ("x0", "v"):
        pm = rescaled.p_mean_variance(x0_hat, x_t, t, prediction=prediction)
        for value in pm:
            assert torch.isfinite(value).all(), prediction
    with pytest.raises(ValueError, match="num_timesteps >= 2.*got num_timesteps = 1"):
        NoiseSchedule([0.5]).rescale_zero_terminal_snr()


# ---------------------------------------------------------------------------- p_mean_variance
@pytest.mark.parametrize("variance", VARIANCE_TYPES)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
def test_p_mean_variance_every_variance_type(small_schedule, generator, variance, prediction):
    s = small_schedule
    x_t = torch.randn(5, 2, 3, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 1, 7, 30, 49])
    prediction_out = torch.randn(x_t.shape, generator=generator, dtype=torch.float64)
    values = torch.empty(x_t.shape, dtype=torch.float64).uniform_(-1, 1, generator=generator)
    learned = variance in ("learned", "learned_range")
    output = torch.cat([prediction_out, values], dim=1) if learned else prediction_out
    pm = s.p_mean_variance(output, x_t, t, prediction=prediction, variance=variance)
    x0, eps = s.split_prediction(prediction_out, x_t, t, prediction)
    torch.testing.assert_close(pm.x0, x0)
    torch.testing.assert_close(pm.eps, eps)
    torch.testing.assert_close(pm.mean, s.q_posterior(x0, x_t, t)[0])
    # the variance is exp(log variance), except fixed_small at t = 0: 0, with its log clipped
    exact = slice(1, None) if variance == "fixed_small" else slice(None)
    torch.testing.assert_close(pm.variance[exact], pm.log_variance.exp()[exact])
    column = lambda a: a[t].reshape(-1, 1, 1, 1)
    if variance == "fixed_small":
        torch.testing.assert_close(pm.log_variance, column(s.posterior_log_variance_clipped))
        torch.testing.assert_close(pm.variance[1:], column(s.posterior_variance)[1:])
    elif variance == "fixed_large":
        torch.testing.assert_close(pm.variance[1:], column(s.betas)[1:])
        torch.testing.assert_close(
            pm.variance[0].flatten(), s.posterior_variance[1:2]
        )  # DDPM's t = 0 choice
    elif variance == "learned":
        torch.testing.assert_close(pm.log_variance, values)
    else:
        fraction = (values + 1) / 2
        expected = fraction * column(s.betas).log() + (1 - fraction) * column(
            s.posterior_log_variance_clipped
        )
        torch.testing.assert_close(pm.log_variance, expected)
        low = s.p_mean_variance(
            torch.cat([prediction_out, -torch.ones_like(values)], 1), x_t, t, variance=variance
        )
        high = s.p_mean_variance(
            torch.cat([prediction_out, torch.ones_like(values)], 1), x_t, t, variance=variance
        )
        torch.testing.assert_close(
            low.log_variance, column(s.posterior_log_variance_clipped).expand_as(x_t)
        )
        torch.testing.assert_close(high.log_variance, column(s.betas).log().expand_as(x_t))


def test_p_mean_variance_clip_denoised(small_schedule):
    x_t = torch.zeros(1, 2)
    x0 = torch.tensor([[-3.0, 0.5]])
    pm = small_schedule.p_mean_variance(x0, x_t, 10, prediction="x0", clip_denoised=True)
    torch.testing.assert_close(pm.x0, torch.tensor([[-1.0, 0.5]]))


# ---------------------------------------------------------------------------- dtypes and devices
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_low_precision_stays_finite_and_in_its_dtype(name, dtype, generator):
    schedule = SCHEDULES[name][0](1000)
    x0 = (torch.rand(64, 3, 4, 4, generator=generator) * 2 - 1).to(dtype)
    eps = torch.randn(x0.shape, generator=generator).to(dtype)
    t = torch.tensor([0, 1, 500, 998, 999]).repeat_interleave(13)[:64]
    x_t = schedule.q_sample(x0, t, eps)
    eps_hat = (eps.float() + 0.01 * torch.randn(x0.shape, generator=generator)).to(dtype)
    results = {
        "q_sample": x_t,
        "q_posterior": schedule.q_posterior(x0, x_t, t)[0],
        "predict_x0_from_eps": schedule.predict_x0_from_eps(x_t, t, eps_hat),
        "predict_eps_from_x0": schedule.predict_eps_from_x0(x_t, t, x0),
        "get_v": schedule.get_v(x0, eps, t),
        "predict_x0_from_v": schedule.predict_x0_from_v(x_t, t, eps),
        "predict_eps_from_v": schedule.predict_eps_from_v(x_t, t, eps),
        "gather": gather(schedule.alphas_cumprod, t, x0),
    }
    for variance in VARIANCE_TYPES:
        output = torch.cat([eps_hat, eps_hat.clamp(-1, 1)], 1) if "learned" in variance else eps_hat
        for field, value in zip(
            ("mean", "variance", "log_variance"),
            schedule.p_mean_variance(output, x_t, t, variance=variance),
        ):
            results[f"p_mean_variance {variance} {field}"] = value
    for key, value in results.items():
        assert value.dtype == dtype, key  # no float64 leaks out of the tables
        assert torch.isfinite(value).all(), key
    # and the low-precision x0 estimate is close to the float64 one from the same inputs
    reference = schedule.predict_x0_from_eps(x_t.double(), t, eps_hat.double())
    error = (
        results["predict_x0_from_eps"].double() - reference
    ).abs().max() / reference.abs().max()
    assert error < {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5}[dtype]


def test_to_device_keeps_float64_and_rescale_keeps_device(schedule):
    assert schedule.to("cpu") is schedule and schedule.device == torch.device("cpu")
    schedule.to("meta")
    assert schedule.posterior_mean_coef1.device.type == "meta"
    assert schedule.posterior_mean_coef1.dtype == torch.float64
    assert schedule.alphas_cumprod.device.type == "meta"


def test_to_dict_round_trip():
    schedule = NoiseSchedule.cosine(30)
    rebuilt = NoiseSchedule.from_dict(schedule.to_dict())
    assert torch.equal(rebuilt.alphas_cumprod, schedule.alphas_cumprod)
    assert len(rebuilt) == 30 and "num_timesteps=30" in repr(rebuilt)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "betas, error, message",
    [
        ([0.1, 1.5], ValueError, r"betas must lie in \(0, 1\).*got betas\[1\] = 1.5"),
        ([0.0, 0.1], ValueError, r"betas must lie in \(0, 1\).*got betas\[0\] = 0.0"),
        ([0.1, -0.2, 0.3], ValueError, r"got betas\[1\] = -0.2"),
        ([1.0, 0.5], ValueError, r"got betas\[0\] = 1.0"),
        ([0.1, float("nan")], ValueError, r"got betas\[1\] = nan"),
        ([], ValueError, "betas must not be empty; got 0 values"),
        ([[0.1, 0.2]], ValueError, r"betas must be 1-D; got shape \(1, 2\)"),
        (torch.tensor(0.1), ValueError, r"betas must be 1-D; got shape \(\)"),
        ("0.1", TypeError, "betas must be a 1-D sequence of floats; got str"),
    ],
)
def test_bad_betas(betas, error, message):
    with pytest.raises(error, match=message):
        NoiseSchedule(betas)


def test_last_beta_may_be_one():
    assert NoiseSchedule([0.1, 1.0]).alphas_cumprod[-1] == 0


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_timesteps must be >= 1; got 0"):
        NoiseSchedule.linear(0)
    with pytest.raises(TypeError, match="num_timesteps must be an int; got float"):
        NoiseSchedule.linear(10.5)
    with pytest.raises(ValueError, match=r"beta_end must be in \(0, 1\); got 1.5"):
        NoiseSchedule.scaled_linear(10, beta_end=1.5)
    with pytest.raises(ValueError, match=r"max_beta must be in \(0, 1\); got 1"):
        NoiseSchedule.cosine(10, max_beta=1)
    with pytest.raises(ValueError, match="s must be >= 0; got -0.1"):
        NoiseSchedule.cosine(10, s=-0.1)
    with pytest.raises(ValueError, match="data must be a dict with a 'betas' list"):
        NoiseSchedule.from_dict({"alphas": [0.1]})


def test_bad_call_arguments(small_schedule):
    s = small_schedule
    x0 = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"t must be in \[0, 49\]; got 50"):
        s.q_sample(x0, 50)
    with pytest.raises(ValueError, match=r"t must be in \[0, 49\]; got values in \[-1, 3\]"):
        s.q_sample(x0, torch.tensor([-1, 0, 1, 3]))
    with pytest.raises(
        TypeError, match="t must be an integer tensor of timestep indices; got dtype torch.float32"
    ):
        s.q_sample(x0, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(TypeError, match="t must be an int or an integer torch.Tensor; got float"):
        s.q_sample(x0, 1.0)
    with pytest.raises(
        ValueError, match=r"t must have shape \(4,\) to match the batch; got \(3,\)"
    ):
        s.q_sample(x0, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"noise must have the shape of x0 \(4, 3\); got \(4, 2\)"):
        s.q_sample(x0, 1, noise=torch.zeros(4, 2))
    with pytest.raises(
        TypeError, match="x0 must be a floating-point tensor; got dtype torch.int64"
    ):
        s.q_sample(x0.long(), 1)
    with pytest.raises(ValueError, match=r"x0 must have the shape of x_t|x_t must have the shape"):
        s.q_posterior(x0, torch.zeros(4, 2), 1)
    with pytest.raises(ValueError, match=r"eps must have the shape of x_t \(4, 3\); got \(4, 2\)"):
        s.predict_x0_from_eps(x0, 1, torch.zeros(4, 2))
    with pytest.raises(
        ValueError, match=r"prediction must be one of 'eps', 'x0', 'v'; got 'epsilon'"
    ):
        s.split_prediction(x0, x0, 1, "epsilon")
    with pytest.raises(ValueError, match=r"prediction must be one of .*; got 'sample'"):
        s.p_mean_variance(x0, x0, 1, prediction="sample")
    with pytest.raises(ValueError, match=r"variance must be one of .*; got 'fixed'"):
        s.p_mean_variance(x0, x0, 1, variance="fixed")
    with pytest.raises(
        ValueError,
        match=r"model_output must have shape \(4, 6\) \(twice the channels.*got \(4, 3\)",
    ):
        s.p_mean_variance(x0, x0, 1, variance="learned_range")
