"""Clipping that holds under guidance: the clamped update of every sampler, and guided accuracy.

When a sampler clamps (or thresholds) the predicted ``x0``, its update must read the ``eps``
that matches the clamped ``x0`` at the current ``x_t``: ``eps_c = (x_t - alpha_t x0_c) /
sigma_t``. diffusers' DDIM default keeps the model's ``eps`` instead; under classifier-free
guidance the predicted ``x0`` overshoots, the pair no longer describes ``x_t`` and the samples
fall apart as the scale grows (issue 24). Three kinds of tests:

* the one-step maps, written here from the papers' equations (DDIM eq. 12/16, DDPM eq. 7 and
  Algorithm 2, Euler-Maruyama on the VP SDE, the first-order and second-order multistep
  steps), with the exact Gaussian oracle of data whose ``x0`` estimates exceed 1;
* a property of whole runs, for every sampler and mode: a clamping run of a model equals a
  run of the model that already returns the ``eps`` of its clamped ``x0``;
* a class-conditional model trained here on scikit-learn's 8x8 digits: the fraction of
  samples of the requested class must not fall as the guidance scale goes from 1 to 5.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_lib import GaussianOracle, NoiseSchedule
from ddpm_lib.losses import SimpleLoss
from ddpm_lib.models.layers import ClassEmbedding, TimestepEmbedding
from ddpm_lib.samplers import (
    AnalyticVariance,
    DDIMSampler,
    DDPMSampler,
    DEISSampler,
    DPMSolverSampler,
    PNDMSampler,
    SDESampler,
    UniPCSampler,
    dynamic_threshold,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MU, STD = 1.2, 0.5  # data centred beyond 1: most x0 estimates are clamped


@pytest.fixture
def overshooting(small_schedule):
    return GaussianOracle(small_schedule, mean=MU, std=STD)


def noisy_inputs(schedule: NoiseSchedule, t: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``x_t`` drawn from the data's marginal at ``t`` and a step noise ``z``, float64."""
    generator = torch.Generator().manual_seed(seed)
    x0 = MU + STD * torch.randn(64, 8, generator=generator, dtype=torch.float64)
    abar = float(schedule.alphas_cumprod[t])
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * torch.randn(
        64, 8, generator=generator, dtype=torch.float64
    )
    return x_t, torch.randn(64, 8, generator=generator, dtype=torch.float64)


def clamped_pair(x_t: torch.Tensor, eps: torch.Tensor, abar: float) -> tuple[torch.Tensor, ...]:
    """``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` clamped, and its ``eps_c`` at ``x_t``."""
    x0 = ((x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1)
    return x0, (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)


def ddim_paper_step(x_t, eps, abar_t, abar_s, eta, z, clipped_eps=True):
    """DDIM eq. 12 with sigma of eq. 16, ``x0`` clamped; ``clipped_eps=False``: the raw eps."""
    x0_c, eps_c = clamped_pair(x_t, eps, abar_t)
    direction_eps = eps_c if clipped_eps else eps
    sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_s)
    return (math.sqrt(abar_s) * x0_c + math.sqrt(1 - abar_s - sigma**2) * direction_eps
            + sigma * z)


def next_levels(schedule: NoiseSchedule, timesteps: torch.Tensor) -> list[tuple[int, float, float]]:
    """``(t, abar_t, abar_next)`` of each step, ``abar_next = 1`` after the last timestep."""
    abar = schedule.alphas_cumprod.double()
    steps = timesteps.tolist()
    return [(t, float(abar[t]), float(abar[steps[k + 1]]) if k + 1 < len(steps) else 1.0)
            for k, t in enumerate(steps)]


def assert_clamping_acts(x_t, eps, abar):
    x0 = (x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    assert (x0.abs() > 1).float().mean() > 0.2  # the test exercises the clamp


# ----------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_clamped_ddim_step_is_the_papers_map(small_schedule, eta, prediction):
    """DDIM's x_t -> x_s with clipping is eq. 12 on (x0_c, eps_c); diffusers' rule is not."""
    oracle = GaussianOracle(small_schedule, mean=MU, std=STD, prediction=prediction)
    eps_oracle = GaussianOracle(small_schedule, mean=MU, std=STD)
    sampler = DDIMSampler(small_schedule, 10, eta=eta, prediction=prediction)
    diffusers_rule = DDIMSampler(small_schedule, 10, eta=eta, prediction=prediction,
                                 use_clipped_model_output=False)
    largest = 0.0  # how far apart the two rules' steps are, at most
    for t, abar_t, abar_s in next_levels(small_schedule, sampler.timesteps):
        x_t, z = noisy_inputs(small_schedule, t, seed=t)
        tt = torch.full((64,), t)
        eps = eps_oracle(x_t, tt)
        assert_clamping_acts(x_t, eps, abar_t)
        ours = sampler.step(oracle(x_t, tt), t, x_t, noise=z)
        torch.testing.assert_close(ours, ddim_paper_step(x_t, eps, abar_t, abar_s, eta, z),
                                   rtol=1e-9, atol=1e-9)
        raw = ddim_paper_step(x_t, eps, abar_t, abar_s, eta, z, clipped_eps=False)
        torch.testing.assert_close(diffusers_rule.step(oracle(x_t, tt), t, x_t, noise=z), raw,
                                   rtol=1e-9, atol=1e-9)
        largest = max(largest, float((ours - raw).abs().max()))
    assert largest > 0.05  # the test can tell the two rules apart


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_clamped_analytic_ddim_step(small_schedule, overshooting, eta):
    """Analytic-DPM's DDIM: eq. 12 on (x0_c, eps_c) plus the table's optimal noise."""
    variance = AnalyticVariance.gaussian(small_schedule, STD)
    sampler = DDIMSampler(small_schedule, 10, eta=eta, variance=variance)
    noise_std = variance.step_variances(sampler.timesteps, eta, 1.0, True).sqrt().tolist()
    for k, (t, abar_t, abar_s) in enumerate(next_levels(small_schedule, sampler.timesteps)):
        x_t, z = noisy_inputs(small_schedule, t, seed=t)
        eps = overshooting(x_t, torch.full((64,), t))
        expected = ddim_paper_step(x_t, eps, abar_t, abar_s, eta, 0 * z) + noise_std[k] * z
        torch.testing.assert_close(sampler.step(eps, t, x_t, noise=z), expected,
                                   rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- DDPM
@pytest.mark.parametrize("num_steps", [None, 10])
@pytest.mark.parametrize("use_clipped_model_output", [True, False])
def test_clamped_ddpm_step_is_consistent_by_construction(
    small_schedule, overshooting, num_steps, use_clipped_model_output
):
    """The posterior mean (eq. 7) reads x0_c and x_t only; it equals Algorithm 2's
    ``(x_t - beta / sqrt(1 - abar) eps_c) / sqrt(alpha)`` with the eps of the clamped x0, and
    not with the model's eps, whatever ``use_clipped_model_output`` says."""
    sampler = DDPMSampler(small_schedule, num_steps=num_steps,
                          use_clipped_model_output=use_clipped_model_output)
    largest = 0.0
    for t, abar_t, abar_prev in next_levels(small_schedule, sampler.timesteps):
        x_t, z = noisy_inputs(small_schedule, t, seed=t)
        eps = overshooting(x_t, torch.full((64,), t))
        x0_c, eps_c = clamped_pair(x_t, eps, abar_t)
        alpha = abar_t / abar_prev
        beta = 1 - alpha
        mean = (math.sqrt(abar_prev) * beta / (1 - abar_t) * x0_c
                + math.sqrt(alpha) * (1 - abar_prev) / (1 - abar_t) * x_t)  # eq. 7
        std = math.sqrt(beta * (1 - abar_prev) / (1 - abar_t))
        ours = sampler.step(eps, t, x_t, noise=z)
        torch.testing.assert_close(ours, mean + std * z, rtol=1e-9, atol=1e-9)
        algorithm_2 = (x_t - beta / math.sqrt(1 - abar_t) * eps_c) / math.sqrt(alpha)
        torch.testing.assert_close(mean, algorithm_2, rtol=1e-9, atol=1e-9)
        raw = (x_t - beta / math.sqrt(1 - abar_t) * eps) / math.sqrt(alpha)
        largest = max(largest, float((algorithm_2 - raw).abs().max()))
    assert largest > 0.05  # Algorithm 2 with the model's eps is another map


def test_thresholded_ddpm_and_ddim_steps(small_schedule, overshooting):
    """Dynamic thresholding: the same maps with x0 thresholded instead of clipped."""
    for sampler in (DDPMSampler(small_schedule, num_steps=10, dynamic_threshold=0.8),
                    DDIMSampler(small_schedule, 10, dynamic_threshold=0.8)):
        for t, abar_t, abar_s in next_levels(small_schedule, sampler.timesteps)[:-1]:
            x_t, z = noisy_inputs(small_schedule, t, seed=t)
            eps = overshooting(x_t, torch.full((64,), t)) * 1.5  # x0 beyond the percentile's 1
            x0 = dynamic_threshold((x_t - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t), 0.8)
            if isinstance(sampler, DDIMSampler):
                eps_c = (x_t - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)
                expected = math.sqrt(abar_s) * x0 + math.sqrt(1 - abar_s) * eps_c
            else:
                alpha = abar_t / abar_s
                mean = (math.sqrt(abar_s) * (1 - alpha) / (1 - abar_t) * x0
                        + math.sqrt(alpha) * (1 - abar_s) / (1 - abar_t) * x_t)
                expected = mean + math.sqrt((1 - alpha) * (1 - abar_s) / (1 - abar_t)) * z
            torch.testing.assert_close(sampler.step(eps, t, x_t, noise=z), expected,
                                       rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- multistep
MULTISTEP = {
    "dpm_solver_2m": lambda s: DPMSolverSampler(s, 10),
    "dpm_solver_3m": lambda s: DPMSolverSampler(s, 10, order=3),
    "unipc": lambda s: UniPCSampler(s, 10),
    "pndm": lambda s: PNDMSampler(s, 10),
    "deis": lambda s: DEISSampler(s, 10),
}


@pytest.mark.parametrize("name", sorted(MULTISTEP))
def test_clamped_multistep_first_step_is_clamped_ddim(small_schedule, overshooting, name):
    """With no history every multistep solver takes DDIM's eta = 0 step on (x0_c, eps_c)."""
    sampler = MULTISTEP[name](small_schedule)
    t, abar_t, abar_s = next_levels(small_schedule, sampler.timesteps)[0]
    x_t, _ = noisy_inputs(small_schedule, t)
    eps = overshooting(x_t, torch.full((64,), t))
    assert_clamping_acts(x_t, eps, abar_t)
    expected = ddim_paper_step(x_t, eps, abar_t, abar_s, 0.0, 0.0)
    torch.testing.assert_close(sampler.step(eps, t, x_t), expected, rtol=1e-9, atol=1e-9)


def two_steps(sampler, model, x_t):
    """The first two steps of a run through :meth:`step`, with the model's outputs."""
    t0, t1 = sampler.timesteps[:2].tolist()
    eps0 = model(x_t, torch.full((64,), t0))
    x1 = sampler.step(eps0, t0, x_t)
    eps1 = model(x1, torch.full((64,), t1))
    return eps0, x1, eps1, sampler.step(eps1, t1, x1)


def test_clamped_second_steps_pndm_and_dpm_solver(small_schedule, overshooting):
    """Second steps from the papers: iPNDM's Adams-Bashforth 2 on the clamped eps, and
    DPM-Solver++ 2M (Algorithm 2) on the clamped x0."""
    abar = small_schedule.alphas_cumprod.double()
    x_t, _ = noisy_inputs(small_schedule, 49)
    for sampler in (PNDMSampler(small_schedule, 10, order=2), DPMSolverSampler(small_schedule, 10)):
        t0, t1, t2 = sampler.timesteps[:3].tolist()
        a0, a1, a2 = (float(abar[t]) for t in (t0, t1, t2))
        eps0, x1, eps1, ours = two_steps(sampler, overshooting, x_t)
        x0_0, eps_c0 = clamped_pair(x_t, eps0, a0)
        x0_1, eps_c1 = clamped_pair(x1, eps1, a1)
        if isinstance(sampler, PNDMSampler):
            e = 1.5 * eps_c1 - 0.5 * eps_c0
            expected = math.sqrt(a2) * (x1 - math.sqrt(1 - a1) * e) / math.sqrt(a1) \
                + math.sqrt(1 - a2) * e
        else:
            lam = [0.5 * math.log(a / (1 - a)) for a in (a0, a1, a2)]
            h, h_prev = lam[2] - lam[1], lam[1] - lam[0]
            r = h_prev / h
            d = (1 + 0.5 / r) * x0_1 - 0.5 / r * x0_0
            expected = (math.sqrt(1 - a2) / math.sqrt(1 - a1) * x1
                        - math.sqrt(a2) * math.expm1(-h) * d)
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- SDE
def test_clamped_euler_maruyama_step(small_schedule, overshooting):
    """x_b = x_a + B (x_a / 2 - eps_c / sigma_a) + sqrt(B) z, B = log(abar_b / abar_a); the
    last step returns x0_c."""
    sampler = SDESampler(small_schedule, 10)
    for t, abar_a, abar_b in next_levels(small_schedule, sampler.timesteps):
        x_t, z = noisy_inputs(small_schedule, t, seed=t)
        eps = overshooting(x_t, torch.full((64,), t))
        x0_c, eps_c = clamped_pair(x_t, eps, abar_a)
        if abar_b < 1:
            length = math.log(abar_b / abar_a)
            expected = (x_t + length * (0.5 * x_t - eps_c / math.sqrt(1 - abar_a))
                        + math.sqrt(length) * z)
        else:
            expected = x0_c
        torch.testing.assert_close(sampler.step(eps, t, x_t, noise=z), expected,
                                   rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- whole runs
class ClampedEps(nn.Module):
    """The model that returns the eps of its own clamped (or thresholded) x0 estimate."""

    def __init__(self, model, schedule: NoiseSchedule, percentile: float | None = None):
        super().__init__()
        self.model, self.schedule, self.percentile = model, schedule, percentile

    def forward(self, x_t, t, **kwargs):
        abar = self.schedule.alphas_cumprod.to(x_t)[t].reshape(-1, *((1,) * (x_t.ndim - 1)))
        eps = self.model(x_t, t, **kwargs)
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        x0 = x0.clamp(-1, 1) if self.percentile is None else dynamic_threshold(
            x0, self.percentile)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


EVERY_SAMPLER = {
    "ddpm": lambda s, **k: DDPMSampler(s, **k),
    "ddpm_respaced": lambda s, **k: DDPMSampler(s, num_steps=10, **k),
    "ddpm_analytic": lambda s, **k: DDPMSampler(
        s, num_steps=10, variance=AnalyticVariance.gaussian(s, STD), **k),
    "ddim": lambda s, **k: DDIMSampler(s, 10, **k),
    "ddim_eta1": lambda s, **k: DDIMSampler(s, 10, eta=1.0, **k),
    "ddim_analytic": lambda s, **k: DDIMSampler(
        s, 10, variance=AnalyticVariance.gaussian(s, STD), **k),
    "dpm_solver_2m": lambda s, **k: DPMSolverSampler(s, 10, **k),
    "dpm_solver_3m": lambda s, **k: DPMSolverSampler(s, 10, order=3, **k),
    "unipc": lambda s, **k: UniPCSampler(s, 10, **k),
    "pndm": lambda s, **k: PNDMSampler(s, 10, **k),
    "deis": lambda s, **k: DEISSampler(s, 10, **k),
    "sde": lambda s, **k: SDESampler(s, 20, **k),
    "sde_pc": lambda s, **k: SDESampler(s, 20, method="predictor_corrector", **k),
    "sde_heun": lambda s, **k: SDESampler(s, 20, method="heun", **k),
    "sde_adaptive": lambda s, **k: SDESampler(s, 20, method="adaptive", rtol=0.1, atol=0.02, **k),
}


def run(sampler, model, mode, schedule):
    generator = torch.Generator().manual_seed(3)
    if mode == "sample":
        return sampler.sample(model, (32, 8), generator=generator, dtype=torch.float64)
    image = MU + STD * torch.randn(32, 8, generator=torch.Generator().manual_seed(4),
                                   dtype=torch.float64)
    if mode == "img2img":
        return sampler.img2img(model, image, 0.6, generator=generator)
    mask = (torch.arange(8) < 4).double()
    return sampler.inpaint(model, image, mask, resample=2, jump_length=2, generator=generator)


# img2img and inpaint need one model call per level: of the SDE methods, euler_maruyama only
RUNS = [(name, mode) for name in sorted(EVERY_SAMPLER) for mode in ("sample", "img2img", "inpaint")
        if mode == "sample" or not name.startswith("sde_")]


@pytest.mark.parametrize("name, mode", RUNS)
def test_clamping_run_equals_run_of_the_clamped_model(small_schedule, overshooting, name, mode):
    """A run that clamps x0 is the run of the model whose eps already matches its clamped x0
    (which no clamp changes), for every sampler, in sample, img2img and inpaint."""
    make = EVERY_SAMPLER[name]
    ours = run(make(small_schedule), overshooting, mode, small_schedule)
    reference = run(make(small_schedule, use_clipped_model_output=False),
                    ClampedEps(overshooting, small_schedule), mode, small_schedule)
    torch.testing.assert_close(ours, reference, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["ddim", "pndm", "deis", "sde", "dpm_solver_2m"])
def test_thresholding_run_equals_run_of_the_thresholded_model(small_schedule, overshooting, name):
    make = EVERY_SAMPLER[name]
    ours = run(make(small_schedule, dynamic_threshold=0.9), overshooting, "sample", small_schedule)
    reference = run(make(small_schedule, dynamic_threshold=0.9, use_clipped_model_output=False),
                    ClampedEps(overshooting, small_schedule, 0.9), "sample", small_schedule)
    torch.testing.assert_close(ours, reference, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["ddim", "ddim_eta1", "pndm", "deis", "sde"])
def test_the_run_property_fails_for_the_diffusers_rule(small_schedule, overshooting, name):
    """The samplers that read eps break the property with use_clipped_model_output=False."""
    make = EVERY_SAMPLER[name]
    inconsistent = run(make(small_schedule, use_clipped_model_output=False), overshooting,
                       "sample", small_schedule)
    reference = run(make(small_schedule, use_clipped_model_output=False),
                    ClampedEps(overshooting, small_schedule), "sample", small_schedule)
    assert (inconsistent - reference).abs().max() > 1e-2


def test_use_clipped_model_output_is_validated_and_shown(small_schedule):
    for make in (lambda **k: DDIMSampler(small_schedule, 5, **k),
                 lambda **k: DPMSolverSampler(small_schedule, 5, **k),
                 lambda **k: SDESampler(small_schedule, 5, **k),
                 lambda **k: DDPMSampler(small_schedule, **k)):
        with pytest.raises(TypeError, match="use_clipped_model_output must be a bool"):
            make(use_clipped_model_output=1)
        assert make().use_clipped_model_output is True
    assert "use_clipped_model_output=False" in repr(
        DDIMSampler(small_schedule, 5, use_clipped_model_output=False))
    assert "use_clipped_model_output=True" in repr(PNDMSampler(small_schedule, 5))
    # DPM-Solver++ reads only x0 and x_t: the option changes nothing and is not shown
    assert "use_clipped_model_output" not in repr(DPMSolverSampler(small_schedule, 5))


# ----------------------------------------------------------------------------- guided accuracy
class DigitDenoiser(nn.Module):
    """A small class-conditional residual MLP on flattened 8x8 digits (64 values)."""

    def __init__(self, width: int = 256, num_classes: int = 10) -> None:
        super().__init__()
        self.time = TimestepEmbedding(64, width)
        self.label = ClassEmbedding(num_classes, width)
        self.inp = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(width, width)) for _ in range(3)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, 64))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.inp(x_t)  # (B, width)
        emb = self.time(t) + self.label(y)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)  # (B, 64)


GUIDANCE_SCALES = (1.0, 3.0, 5.0)
NUM_PER_CLASS = 10


@pytest.fixture(scope="module")
def digits_model():
    """(schedule, denoiser, classifier, images): a guided denoiser trained here (1,000 Adam
    steps, label dropout 0.1, 10-25 s on one thread) and a logistic-regression classifier
    fitted on the same digits (~99% accurate on them), which measures the class accuracy."""
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    digits = datasets.load_digits()
    images = torch.tensor(digits.data / 8.0 - 1.0, dtype=torch.float32)  # [0, 16] -> [-1, 1]
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)  # the weights' initialisation
    schedule = NoiseSchedule.linear(1000)
    model = DigitDenoiser()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = SimpleLoss(schedule)
    generator = torch.Generator().manual_seed(0)
    num_steps = 1000
    for step in range(num_steps):
        batch = torch.randint(0, len(images), (256,), generator=generator)
        y = labels[batch].clone()
        y[torch.rand(256, generator=generator) < 0.1] = -1  # the null label, for guidance
        loss = loss_fn(model, images[batch], y=y, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # linear decay
            group["lr"] = 2e-3 * (1 - step / num_steps) + 1e-4
    model.eval().requires_grad_(False)
    classifier = linear_model.LogisticRegression(max_iter=2000).fit(images.numpy(), digits.target)
    torch.set_num_threads(threads)
    return schedule, model, classifier, images


def class_accuracy(sampler, model, classifier, scale) -> float:
    requested = torch.arange(10).repeat(NUM_PER_CLASS)
    samples = sampler.sample(model, (len(requested), 64), model_kwargs={"y": requested},
                             guidance_scale=scale, generator=torch.Generator().manual_seed(1))
    return float((classifier.predict(samples.numpy()) == requested.numpy()).mean())


def accuracy_holds(accuracies: list[float]) -> bool:
    """Accuracy at every scale >= 0.8 and never more than 0.05 (a 5-sample draw of the 100)
    below its value at scale 1."""
    return min(accuracies) >= 0.8 and all(a >= accuracies[0] - 0.05 for a in accuracies[1:])


def guided_samplers(schedule, model, images):
    def unconditional(x, t):
        return model(x, t, y=torch.full((x.shape[0],), -1))

    timesteps_25 = DDIMSampler(schedule, 25).timesteps
    variance = AnalyticVariance.estimate(
        unconditional, schedule, images, num_samples=400, progress=False,
        generator=torch.Generator().manual_seed(2),
        timesteps=torch.cat([timesteps_25, DDPMSampler(schedule, num_steps=25).timesteps]),
    )
    return {  # each in its documented configuration, clipping on (the default)
        "ddpm": DDPMSampler(schedule, num_steps=100),
        "ddpm_analytic": DDPMSampler(schedule, num_steps=25, variance=variance),
        "ddim": DDIMSampler(schedule, 50),
        "ddim_eta1": DDIMSampler(schedule, 50, eta=1.0),
        "ddim_analytic": DDIMSampler(schedule, 25, variance=variance),
        "dpm_solver_2m": DPMSolverSampler(schedule, 20),
        "dpm_solver_3m": DPMSolverSampler(schedule, 20, order=3),
        "unipc": UniPCSampler(schedule, 10),
        "pndm": PNDMSampler(schedule, 10),
        "deis": DEISSampler(schedule, 10),
        "sde": SDESampler(schedule, 100),
        "sde_pc": SDESampler(schedule, 50, method="predictor_corrector"),
        "sde_heun": SDESampler(schedule, 30, method="heun"),
        "sde_adaptive": SDESampler(schedule, method="adaptive"),
    }


@pytest.mark.slow
def test_guided_class_accuracy_does_not_fall_with_the_scale(digits_model, one_thread):
    """Every sampler with clipping on: class accuracy at guidance 1, 3, 5 stays high and does
    not fall; diffusers' DDIM rule (use_clipped_model_output=False) fails the same check."""
    schedule, model, classifier, images = digits_model
    failures = {}
    for name, sampler in guided_samplers(schedule, model, images).items():
        accuracies = [class_accuracy(sampler, model, classifier, w) for w in GUIDANCE_SCALES]
        if not accuracy_holds(accuracies):
            failures[name] = accuracies
    assert not failures, f"accuracy at guidance {GUIDANCE_SCALES}: {failures}"
    diffusers_rule = DDIMSampler(schedule, 50, use_clipped_model_output=False)
    accuracies = [class_accuracy(diffusers_rule, model, classifier, w) for w in GUIDANCE_SCALES]
    assert not accuracy_holds(accuracies), accuracies  # the check can fail
