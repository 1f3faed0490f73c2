"""Progressive and consistency distillation against closed forms: the exact Gaussian oracle
as the teacher, explicit DDIM steps of the library's sampler, the exact PF-ODE map."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_lib import (
    ConsistencyDistillation,
    ConsistencySampler,
    DDIMSampler,
    GaussianOracle,
    NoiseSchedule,
    ProgressiveDistillation,
)
from ddpm_lib.distillation import pseudo_huber
from ddpm_lib.samplers import consistency_coefficients

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = 0.3, 0.5


class PerTimestepAffine(nn.Module):
    """``x0 = a[t] x + b[t]``: a student that can represent every affine map of each level
    (the exact targets on Gaussian data are affine)."""

    def __init__(self, num_timesteps: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(num_timesteps, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(num_timesteps, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.a[t].view(shape) * x + self.b[t].view(shape)


class TwoClassOracle(nn.Module):
    """Gaussian oracles of mean -0.5 (y = 0), +0.5 (y = 1) and 0 (y = -1, the null class)."""

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps") -> None:
        super().__init__()
        self.oracles = nn.ModuleList(GaussianOracle(schedule, mean=m, std=0.4,
                                                    prediction=prediction)
                                     for m in (-0.5, 0.5, 0.0))

    def forward(self, x, t, y):
        outputs = torch.stack([oracle(x, t) for oracle in self.oracles])  # (3, B, ...)
        index = torch.where(y < 0, 2, y)
        return outputs[index, torch.arange(x.shape[0])]


def gaussian_data(n, generator, dims=4):
    return MEAN + STD * torch.randn(n, dims, generator=generator, dtype=torch.float64)


def marginal_points(schedule, t, n, generator, dims=4):
    """``n`` draws of ``x_t`` under the Gaussian data at timestep ``t``."""
    abar = schedule.alphas_cumprod[t]
    z = torch.randn(n, dims, generator=generator, dtype=torch.float64)
    return abar.sqrt() * MEAN + (abar * STD**2 + 1 - abar).sqrt() * z


# ----------------------------------------------------------------------------- progressive
@pytest.mark.parametrize("teacher_prediction, prediction, spacing", [
    ("eps", "x0", "trailing"), ("v", "v", "linspace"), ("x0", "eps", "leading"),
])
def test_progressive_target_is_two_explicit_teacher_ddim_steps(
        teacher_prediction, prediction, spacing, generator):
    """One DDIM step of the student with the closed-form target lands where two unclipped DDIM
    steps of the teacher (the library's DDIMSampler.step on the 2N grid) land, at every
    student position, the last one (onto clean data) included."""
    schedule = NoiseSchedule.linear(1000)
    teacher = GaussianOracle(schedule, mean=MEAN, std=STD, prediction=teacher_prediction)
    loss = ProgressiveDistillation(teacher, schedule, student_steps=4, spacing=spacing,
                                   teacher_prediction=teacher_prediction, prediction=prediction)
    assert torch.equal(loss.student_timesteps, loss.teacher_timesteps[::2])
    teacher_ddim = DDIMSampler(schedule, timesteps=loss.teacher_timesteps, clip_denoised=False,
                               prediction=teacher_prediction)
    student_ddim = DDIMSampler(schedule, timesteps=loss.student_timesteps, clip_denoised=False,
                               prediction="x0")
    positions = torch.arange(8) % 4
    z = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    target = loss.target(z, positions, {})
    for i, position in enumerate(positions.tolist()):
        t, t_mid = (int(loss.teacher_timesteps[2 * position + k]) for k in (0, 1))
        z_i = z[i:i + 1]
        mid = teacher_ddim.step(teacher(z_i, torch.tensor([t])), t, z_i)
        two_steps = teacher_ddim.step(teacher(mid, torch.tensor([t_mid])), t_mid, mid)
        one_step = student_ddim.step(target[i:i + 1], t, z_i)
        torch.testing.assert_close(one_step, two_steps, rtol=1e-9, atol=1e-9)


def test_guided_target_is_the_guided_two_step_ddim_run(small_schedule, generator):
    """With a one-step student the target is the teacher's whole guided DDIM run (2 steps,
    classifier-free guidance with the library's sampler) from the same noise."""
    teacher = TwoClassOracle(small_schedule)
    loss = ProgressiveDistillation(teacher, small_schedule, student_steps=1, guidance_scale=3.0)
    z = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    scales = torch.full((6,), 3.0)
    target = loss.target(z, torch.zeros(6, dtype=torch.long), {"y": labels}, scales)
    guided = DDIMSampler(small_schedule, timesteps=loss.teacher_timesteps, clip_denoised=False)
    expected = guided.sample(teacher, None, x_T=z, model_kwargs={"y": labels},
                             guidance_scale=3.0)
    torch.testing.assert_close(target, expected, rtol=1e-9, atol=1e-9)


def test_one_round_reproduces_the_teachers_two_step_map(generator):
    """Training an affine student with the loss (Algorithm 2, truncated-SNR weights) makes its
    one DDIM step at each of its 4 positions the teacher's two-step map."""
    schedule = NoiseSchedule.linear(1000)
    teacher = GaussianOracle(schedule, mean=MEAN, std=STD)
    loss = ProgressiveDistillation(teacher, schedule, student_steps=4, prediction="x0")
    student = PerTimestepAffine(1000)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    for _ in range(300):
        value = loss(student, gaussian_data(512, generator), generator=generator)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    teacher_ddim = DDIMSampler(schedule, timesteps=loss.teacher_timesteps, clip_denoised=False)
    student_ddim = DDIMSampler(schedule, timesteps=loss.student_timesteps, clip_denoised=False,
                               prediction="x0")
    for position in range(4):
        t, t_mid = (int(loss.teacher_timesteps[2 * position + k]) for k in (0, 1))
        z = marginal_points(schedule, t, 256, generator)
        with torch.no_grad():
            one_step = student_ddim.step(student(z, torch.full((256,), t)), t, z)
        mid = teacher_ddim.step(teacher(z, torch.full((256,), t)), t, z)
        two_steps = teacher_ddim.step(teacher(mid, torch.full((256,), t_mid)), t_mid, mid)
        assert (one_step - two_steps).abs().max() < 2e-3, position


def test_truncated_snr_weight(schedule):
    teacher = GaussianOracle(schedule)
    t = torch.tensor([0, 300, 999])
    snr = schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t])
    truncated = ProgressiveDistillation(teacher, schedule, student_steps=2).weight(t)
    plus_one = ProgressiveDistillation(teacher, schedule, student_steps=2,
                                       weighting="snr_plus_one").weight(t)
    torch.testing.assert_close(truncated, torch.maximum(snr, torch.ones(3, dtype=snr.dtype)))
    torch.testing.assert_close(plus_one, snr + 1)


def test_loss_is_zero_for_the_exact_student(generator):
    """A student that predicts exactly the closed-form target has zero loss (per sample)."""
    schedule = NoiseSchedule.linear(1000)
    teacher = GaussianOracle(schedule, mean=MEAN, std=STD)
    loss = ProgressiveDistillation(teacher, schedule, student_steps=2, prediction="x0")
    position_of = {int(t): i for i, t in enumerate(loss.student_timesteps)}

    def exact(x, t):
        positions = torch.tensor([position_of[int(v)] for v in t])
        return loss.target(x, positions, {})

    per_sample = loss(exact, gaussian_data(16, generator), reduction="none", generator=generator)
    assert per_sample.shape == (16,)
    assert per_sample.abs().max() < 1e-12


# ----------------------------------------------------------------------------- consistency
def test_boundary_parameterisation():
    abar = torch.tensor([1.0, 0.999, 0.5, 1e-4], dtype=torch.float64)
    c_skip, c_out = consistency_coefficients(abar, sigma_data=0.5, timestep_scaling=10.0)
    assert c_skip[0] == 1 and c_out[0] == 0  # f(x, clean) = x
    level = 10 * ((1 - abar) / abar).sqrt()
    torch.testing.assert_close(c_skip, 0.25 / (level**2 + 0.25))
    torch.testing.assert_close(c_out, level / (level**2 + 0.25).sqrt())
    assert (c_skip.diff() < 0).all() and (c_out.diff() > 0).all()


def test_consistency_distilled_student_matches_the_exact_pf_ode_map(generator):
    """Consistency distillation with the exact Gaussian teacher and Heun's solver on 16
    levels: the student's f(x, t) equals the composed solver steps down to clean data
    (its fixed point) and the PF-ODE's exact map x0 = mu + s (x - a mu) / sqrt(a^2 s^2 +
    sigma^2) up to Heun's discretisation error (the DDIM solver's is ~0.3 here)."""
    schedule = NoiseSchedule.linear(1000)
    teacher = GaussianOracle(schedule, mean=MEAN, std=STD)
    loss = ConsistencyDistillation(teacher, schedule, num_levels=16, spacing="linspace",
                                   solver="heun", prediction="x0", target_decay=0.0)
    student = PerTimestepAffine(1000)
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    for _ in range(500):
        value = loss(student, gaussian_data(1024, generator), generator=generator)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        loss.update()
    grid = loss.timesteps
    for n in range(16):
        t = int(grid[n])
        x = marginal_points(schedule, t, 256, generator)
        levels = torch.full((256,), t)
        with torch.no_grad():
            f = loss.consistency_function(student, x, levels, {})
        composed = x
        for m in range(n, 16):
            composed = loss.solver_step(composed, torch.full((256,), int(grid[m])), {})
        abar = schedule.alphas_cumprod[t]
        exact = MEAN + STD * (x - abar.sqrt() * MEAN) / (abar * STD**2 + 1 - abar).sqrt()
        assert (f - composed).abs().max() < 0.01, n
        assert (f - exact).abs().max() < 0.08, n
        assert (f - exact).pow(2).mean().sqrt() < 0.02, n


def test_consistency_sampler_with_the_exact_consistency_function(generator):
    """A model whose f is the exact PF-ODE map: one step maps x_T to the exact x0; with
    more steps every step re-noises to the next level and maps again (Algorithm 1)."""
    schedule = NoiseSchedule.linear(1000)
    abar = schedule.alphas_cumprod

    def exact_model(x, t):  # the x0 estimate for which f is the exact map
        a = abar[t].view(-1, 1)
        c_skip, c_out = consistency_coefficients(a, 0.5, 10.0)
        exact = MEAN + STD * (x - a.sqrt() * MEAN) / (a * STD**2 + 1 - a).sqrt()
        return (exact - c_skip * x / a.sqrt()) / c_out

    one = ConsistencySampler(schedule, prediction="x0", clip_denoised=False)
    assert one.timesteps.tolist() == [999]
    x_T = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    a = abar[999]
    expected = MEAN + STD * (x_T - a.sqrt() * MEAN) / (a * STD**2 + 1 - a).sqrt()
    torch.testing.assert_close(one.sample(exact_model, None, x_T=x_T), expected)

    two = ConsistencySampler(schedule, 2, prediction="x0", clip_denoised=False)
    out, trajectory = two.sample(exact_model, None, x_T=x_T, generator=torch.Generator()
                                 .manual_seed(1), return_trajectory=True)
    torch.testing.assert_close(trajectory.predicted_x0[0], expected)
    noise = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    t1 = int(two.timesteps[1])
    renoised = abar[t1].sqrt() * expected + (1 - abar[t1]).sqrt() * noise
    torch.testing.assert_close(trajectory.samples[1], renoised)
    second = MEAN + STD * (renoised - abar[t1].sqrt() * MEAN) / (
        abar[t1] * STD**2 + 1 - abar[t1]).sqrt()
    torch.testing.assert_close(out, second)


def test_distances():
    a = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    b = torch.zeros_like(a)
    c = 0.00054 * (8 ** 0.5)
    torch.testing.assert_close(pseudo_huber(a, b), (a.pow(2).sum((1, 2)) + c * c).sqrt() - c)
    schedule = NoiseSchedule.linear(100)
    teacher = GaussianOracle(schedule)
    seen = []

    def feature_distance(x, y):
        seen.append(x.shape)
        return (x - y).abs().flatten(1).sum(1)

    loss = ConsistencyDistillation(teacher, schedule, num_levels=4, distance=feature_distance)
    value = loss(teacher, torch.randn(5, 3), reduction="none",
                 generator=torch.Generator().manual_seed(0))
    assert value.shape == (5,) and seen == [(5, 3)]


def test_target_network_is_an_ema_of_the_student(generator):
    schedule = NoiseSchedule.linear(100)
    teacher = GaussianOracle(schedule)
    student = PerTimestepAffine(100)
    loss = ConsistencyDistillation(teacher, schedule, num_levels=4, target_decay=0.75,
                                   prediction="x0")
    loss(student, torch.randn(4, 2, dtype=torch.float64), generator=generator)
    assert torch.equal(loss.target_network.a, student.a)  # theta- <- theta at the start
    with torch.no_grad():
        student.a.add_(1.0)
    loss.update()
    torch.testing.assert_close(loss.target_network.a, student.a - 0.75)
    restored = ConsistencyDistillation(teacher, schedule, num_levels=4, prediction="x0")
    restored.load_state_dict(loss.state_dict())
    restored(PerTimestepAffine(100), torch.randn(4, 2, dtype=torch.float64), generator=generator)
    torch.testing.assert_close(restored.target_network.a, loss.target_network.a)


# ----------------------------------------------------------------------------- bad input
def test_bad_input(schedule, small_schedule):
    teacher = GaussianOracle(small_schedule)
    with pytest.raises(ValueError, match="finer than the schedule's T = 50"):
        ProgressiveDistillation(teacher, small_schedule, student_steps=32)
    with pytest.raises(ValueError, match="student_steps must be >= 1"):
        ProgressiveDistillation(teacher, small_schedule, student_steps=0)
    with pytest.raises(TypeError, match="teacher must be callable"):
        ProgressiveDistillation("unet", small_schedule, student_steps=2)
    with pytest.raises(ValueError, match="weighting must be one of"):
        ProgressiveDistillation(teacher, small_schedule, student_steps=2, weighting="snr")
    with pytest.raises(TypeError, match="distance must be one of .* or a callable"):
        ConsistencyDistillation(teacher, small_schedule, num_levels=4, distance=3)
    with pytest.raises(ValueError, match="distance must be one of"):
        ConsistencyDistillation(teacher, small_schedule, num_levels=4, distance="l1")
    with pytest.raises(ValueError, match="deterministic ODE solver"):
        ConsistencyDistillation(teacher, small_schedule, num_levels=4, solver="ddpm")
    with pytest.raises(ValueError, match="finer than the schedule"):
        ConsistencyDistillation(teacher, small_schedule, num_levels=51)
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        ConsistencySampler(small_schedule, sigma_data=0.0)
    with pytest.raises(ValueError, match="target_decay must be"):
        ConsistencyDistillation(teacher, small_schedule, num_levels=4, target_decay=1.5)
