"""Cross-checks against diffusers' schedulers, an independent implementation."""

from __future__ import annotations

import pytest
import torch

from ddpm_lib import GaussianOracle, NoiseSchedule
from ddpm_lib.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, spaced_timesteps

diffusers = pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread")


def ddim_scheduler(num_timesteps: int, spacing: str, **config):
    config = {"clip_sample": False, **config}
    return diffusers.DDIMScheduler(
        num_train_timesteps=num_timesteps, beta_schedule="linear", beta_start=1e-4,
        beta_end=0.02, set_alpha_to_one=True, timestep_spacing=spacing, **config,
    )


NUM_STEPS = [1, 2, 3, 7, 10, 20, 30, 33, 50, 61, 99, 100, 250, 333, 500, 999, 1000]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_timesteps_equal_diffusers(spacing):
    for num_steps in NUM_STEPS:
        reference = ddim_scheduler(1000, spacing)
        reference.set_timesteps(num_steps)
        sampler = DDIMSampler(NoiseSchedule.linear(1000), num_steps, spacing=spacing)
        expected = reference.timesteps
        if spacing == "trailing" and num_steps == 61:  # diffusers appends a stray -1 here
            assert expected.tolist()[-1] == -1 and len(expected) == 62
            expected = expected[:-1]
        assert torch.equal(sampler.timesteps, expected), (spacing, num_steps)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_dpm_solver_timesteps_equal_diffusers(spacing):
    for num_steps in [1, 2, 5, 10, 20, 25, 50, 100, 999]:
        reference = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, timestep_spacing=spacing
        )
        reference.set_timesteps(num_steps)
        sampler = DPMSolverSampler(NoiseSchedule.linear(1000), num_steps, spacing=spacing,
                                   final_step="denoise")
        assert torch.equal(sampler.timesteps, reference.timesteps), (spacing, num_steps)


def test_spaced_timesteps_are_distinct_and_in_range():
    for num_steps in range(1, 101):
        for spacing in ("leading", "trailing", "linspace"):
            steps = spaced_timesteps(100, num_steps, spacing)
            assert steps.numel() == num_steps and len(set(steps.tolist())) == num_steps
            assert 0 <= int(steps.min()) and int(steps.max()) <= 99


def diffusers_ddim_trajectory(reference, model, x_T, timesteps):
    """diffusers' DDIM loop, moving each step to the next timestep of ``timesteps``.

    diffusers' step goes from t to ``t - T // num_inference_steps``. That is the next timestep
    for "leading", and for "trailing" when N divides T; otherwise (and for "linspace") we set
    ``num_inference_steps`` per step so that diffusers' own step lands on the next timestep.
    """
    num_timesteps = reference.config.num_train_timesteps
    x, trajectory = x_T, [x_T]
    for i, t in enumerate(timesteps.tolist()):
        if i + 1 < len(timesteps):
            gap = t - int(timesteps[i + 1])
            candidates = [n for n in range(1, num_timesteps + 1) if num_timesteps // n == gap]
            reference.num_inference_steps = candidates[0]
        eps = model(x, torch.full((x.shape[0],), t))
        x = reference.step(eps, t, x).prev_sample
        trajectory.append(x)
    return trajectory


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [10, 30])
def test_ddim_trajectory_equals_diffusers(spacing, num_steps):
    schedule = NoiseSchedule.linear(1000)
    oracle = GaussianOracle(schedule, mean=0.3, std=0.5)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sampler = DDIMSampler(schedule, num_steps, eta=0.0, clip_denoised=False, spacing=spacing)
    reference = ddim_scheduler(1000, spacing)
    reference.set_timesteps(num_steps)
    expected = diffusers_ddim_trajectory(reference, oracle, x_T.clone(), sampler.timesteps)
    x0, trajectory = sampler.sample(oracle, None, x_T=x_T.clone(), return_trajectory=True)
    assert len(trajectory.samples) == num_steps + 1
    for ours, theirs in zip(trajectory.samples, expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert torch.equal(x0, trajectory.samples[-1])


def diffusers_clipped_ddim(oracle, x_T, use_clipped_model_output):
    reference = ddim_scheduler(1000, "trailing", clip_sample=True)
    reference.set_timesteps(20)
    x = x_T.clone()
    for t in reference.timesteps:
        x = reference.step(
            oracle(x, t.expand(x.shape[0])), t, x,
            use_clipped_model_output=use_clipped_model_output,
        ).prev_sample
    return x


@pytest.mark.parametrize("use_clipped_model_output", [False, True])
def test_ddim_plain_diffusers_loop_where_it_steps_to_the_next_timestep(use_clipped_model_output):
    """The untouched diffusers loop ("trailing", N | T) gives our trajectory, with clipping too,
    for both of diffusers' clipping rules (``use_clipped_model_output`` on both sides)."""
    schedule = NoiseSchedule.linear(1000)
    x_T = torch.randn(4, 2, 16, generator=torch.Generator().manual_seed(1))
    oracle = GaussianOracle(schedule, mean=0.6, std=0.8)
    expected = diffusers_clipped_ddim(oracle, x_T, use_clipped_model_output)
    ours = DDIMSampler(
        schedule, 20, clip_denoised=True, use_clipped_model_output=use_clipped_model_output
    ).sample(oracle, None, x_T=x_T.clone())
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_ddim_clipping_rules_equal_diffusers_and_differ():
    """Data centred at 1.2: nearly every x0 estimate is clamped, so the two rules part by
    ~0.1; each of ours equals diffusers' run with the same ``use_clipped_model_output``."""
    schedule = NoiseSchedule.linear(1000)
    x_T = torch.randn(4, 2, 16, generator=torch.Generator().manual_seed(1))
    oracle = GaussianOracle(schedule, mean=1.2, std=0.5)
    runs = {}
    for flag in (True, False):
        expected = diffusers_clipped_ddim(oracle, x_T, flag)
        ours = DDIMSampler(schedule, 20, use_clipped_model_output=flag).sample(
            oracle, None, x_T=x_T.clone()
        )
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
        runs[flag] = ours
    assert (runs[True] - runs[False]).abs().max() > 0.05  # the check can tell the rules apart


@pytest.mark.parametrize(
    "prediction, diffusers_prediction",
    [("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")],
)
def test_ddim_stochastic_step_equals_diffusers(prediction, diffusers_prediction):
    """One eta = 0.7 step with the same injected noise, for each prediction type."""
    schedule = NoiseSchedule.linear(1000)
    sampler = DDIMSampler(
        schedule, 25, eta=0.7, prediction=prediction, clip_denoised=False, spacing="leading"
    )
    reference = ddim_scheduler(1000, "leading", prediction_type=diffusers_prediction)
    reference.set_timesteps(25)
    generator = torch.Generator().manual_seed(2)
    x, output, noise = (torch.randn(3, 4, 5, generator=generator) for _ in range(3))
    for t in sampler.timesteps[[0, 7, -1]].tolist():
        ours = sampler.step(output, t, x, noise=noise)
        theirs = reference.step(output, t, x, eta=0.7, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "prediction, diffusers_prediction", [("eps", "epsilon"), ("v", "v_prediction")]
)
def test_dpm_solver_equals_diffusers(prediction, diffusers_prediction):
    schedule = NoiseSchedule.linear(1000)
    oracle = GaussianOracle(schedule, mean=0.3, std=0.5, prediction=prediction)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for num_steps in (5, 12, 20):
        reference = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, prediction_type=diffusers_prediction
        )
        reference.set_timesteps(num_steps)
        x = x_T.clone()
        expected = []
        for t in reference.timesteps:
            x = reference.step(oracle(x, t.expand(4)), t, x).prev_sample
            expected.append(x)
        sampler = DPMSolverSampler(schedule, num_steps, prediction=prediction, clip_denoised=False,
                                   spacing="linspace", final_step="denoise")
        _, trajectory = sampler.sample(oracle, None, x_T=x_T.clone(), return_trajectory=True)
        for ours, theirs in zip(trajectory.samples[1:], expected):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_step_equals_diffusers(variance, monkeypatch):
    """Steps against diffusers' DDPMScheduler with the same noise, full chain and respaced."""
    schedule = NoiseSchedule.linear(1000)
    generator = torch.Generator().manual_seed(4)
    x, output, noise = (torch.randn(2, 3, 4, 4, generator=generator) for _ in range(3))
    monkeypatch.setattr(
        diffusers.schedulers.scheduling_ddpm, "randn_tensor", lambda shape, **kwargs: noise
    )
    for num_steps in (1000, 50):
        reference = diffusers.DDPMScheduler(
            num_train_timesteps=1000, variance_type=variance, clip_sample=True,
            timestep_spacing="leading",
        )
        reference.set_timesteps(num_steps)
        sampler = DDPMSampler(schedule, variance=variance, num_steps=num_steps, spacing="leading")
        assert torch.equal(sampler.timesteps, reference.timesteps)
        for t in sampler.timesteps[[0, 1, num_steps // 2, -2, -1]].tolist():
            ours = sampler.step(output, t, x, noise=noise)
            theirs = reference.step(output, t, x).prev_sample
            # diffusers' float32 tables: x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) at abar ~ 4e-5
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
