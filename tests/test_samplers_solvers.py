"""The multistep solvers: against diffusers step for step, exact laws, orders of convergence.

* diffusers' ``DPMSolverMultistepScheduler`` (orders 1-3, both final sigmas),
  ``UniPCMultistepScheduler`` (bh1 / bh2, orders 1-3), ``DEISMultistepScheduler`` (orders 1-3)
  and ``PNDMScheduler``'s PLMS step, driven on the very same timesteps: whole trajectories
  agree to 1e-4.
* With Gaussian data the oracle is exact and the probability-flow ODE maps ``x_T`` to
  ``mu + s (x_T - m_T) / sqrt(v_T)``: every solver's output law tends to the data law.
* Local error of one step along the exact ODE solution shrinks as ``h^(p+1)`` for a solver of
  order ``p`` (the weights alone, on continuous levels), and the global error of a run as
  ``h^p``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_lib import GaussianMixtureOracle, GaussianOracle, NoiseSchedule
from ddpm_lib.samplers import DDIMSampler, DEISSampler, DPMSolverSampler, PNDMSampler, UniPCSampler
from ddpm_lib.samplers.deis import deis_weights
from ddpm_lib.samplers.dpm_solver import dpm_solver_pp_weights
from ddpm_lib.samplers.multistep import Levels
from ddpm_lib.samplers.pndm import plms_weights
from ddpm_lib.samplers.unipc import unipc_corrector_weights, unipc_predictor_weights

pytestmark = pytest.mark.usefixtures("one_thread")

MU, STD = 0.3, 0.5


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear(1000)


def mixture_model(schedule):
    """A non-linear exact predictor: three modes in 3-D."""
    means = [[-0.6, 0.4, 0.1], [0.5, -0.3, 0.6], [0.1, 0.7, -0.5]]
    return GaussianMixtureOracle(schedule, [0.5, 0.3, 0.2], means, [0.1, 0.2, 0.05])


# ----------------------------------------------------------------------------- diffusers
def diffusers_trajectory(scheduler, model, x_T, timesteps, alphas_cumprod, final_sigma):
    """diffusers' loop on exactly ``timesteps``: its sigma table set to theirs, plus a final one."""
    scheduler.set_timesteps(len(timesteps))
    abar = alphas_cumprod[timesteps]
    scheduler.timesteps = torch.tensor(timesteps)
    scheduler.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.tensor([final_sigma])])
    scheduler._step_index = None
    x, trajectory = x_T, [x_T]
    for t in timesteps:
        x = scheduler.step(model(x, torch.full((x.shape[0],), t)), t, x).prev_sample
        trajectory.append(x)
    return trajectory


def assert_same_trajectory(ours, theirs, atol=1e-4):
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=atol, msg=f"step {k}")


def sigma_min(schedule):
    abar0 = schedule.alphas_cumprod[0]
    return float(((1 - abar0) / abar0).sqrt())


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("final_step", ["denoise", "solver"])
@pytest.mark.parametrize("num_steps, spacing", [(6, "logsnr"), (16, "karras")])
def test_dpm_solver_equals_diffusers(schedule, order, final_step, num_steps, spacing):
    diffusers = pytest.importorskip("diffusers")
    lower = num_steps < 15  # diffusers lowers the order at the end only for short runs
    ours = DPMSolverSampler(schedule, num_steps, order=order, spacing=spacing,
                            final_step=final_step, lower_order_final=lower, clip_denoised=False)
    reference = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=order,
        final_sigmas_type="zero" if final_step == "denoise" else "sigma_min",
    )
    model = mixture_model(schedule)
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, trajectory = ours.sample(model, None, x_T=x_T, return_trajectory=True)
    final = 0.0 if final_step == "denoise" else sigma_min(schedule)
    theirs = diffusers_trajectory(reference, model, x_T, ours.timesteps.tolist(),
                                  schedule.alphas_cumprod, final)
    assert_same_trajectory(trajectory.samples, theirs)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_unipc_equals_diffusers(schedule, variant, order, prediction):
    diffusers = pytest.importorskip("diffusers")
    ours = UniPCSampler(schedule, 8, order=order, variant=variant, spacing="logsnr",
                        final_step="denoise", prediction=prediction, clip_denoised=False)
    reference = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=order, solver_type=variant,
        prediction_type="epsilon" if prediction == "eps" else "v_prediction",
    )
    model = mixture_model(schedule)
    model.prediction = prediction
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, trajectory = ours.sample(model, None, x_T=x_T, return_trajectory=True)
    theirs = diffusers_trajectory(reference, model, x_T, ours.timesteps.tolist(),
                                  schedule.alphas_cumprod, 0.0)
    if variant == "bh1":
        # diffusers' bh1 step to sigma = 0 computes B(h) = -h = -inf times 0: NaN. Ours returns
        # the last x0 estimate there, as its bh2 (and the limit h -> inf of the formula) does.
        assert torch.isnan(theirs[-1]).all()
        theirs[-1] = trajectory.predicted_x0[-1]
    assert_same_trajectory(trajectory.samples, theirs)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_equals_diffusers(schedule, order):
    """diffusers' own grid (linspace, N + 1 points) and its end at sigma_min: final_step="solver"."""
    diffusers = pytest.importorskip("diffusers")
    ours = DEISSampler(schedule, 9, order=order, spacing="linspace", final_step="solver",
                       clip_denoised=False)
    reference = diffusers.DEISMultistepScheduler(num_train_timesteps=1000, solver_order=order)
    reference.set_timesteps(9)
    assert torch.equal(ours.timesteps, reference.timesteps)
    model = mixture_model(schedule)
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, trajectory = ours.sample(model, None, x_T=x_T, return_trajectory=True)
    theirs = diffusers_trajectory(reference, model, x_T, ours.timesteps.tolist(),
                                  schedule.alphas_cumprod, sigma_min(schedule))
    assert_same_trajectory(trajectory.samples, theirs)


def test_plms_step_equals_diffusers(schedule):
    """The Adams-Bashforth combination moved by DDIM's transfer: diffusers' PLMS update.

    (diffusers' PNDMScheduler starts with a Heun step of two model calls; after it, each step
    is this update on the last four eps.)
    """
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.PNDMScheduler(num_train_timesteps=1000, skip_prk_steps=True,
                                        set_alpha_to_one=True)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    eps = [torch.randn(4, 3, generator=generator, dtype=torch.float64) for _ in range(4)]
    for t, t_next in ((700, 600), (300, 250), (40, -1)):
        abar = schedule.alphas_cumprod[[t, t_next]] if t_next >= 0 else torch.tensor(
            [float(schedule.alphas_cumprod[t]), 1.0], dtype=torch.float64)
        a, w = plms_weights(Levels(abar), 0, 4)
        ours = a * x + sum(w[k] * eps[k] for k in range(4))
        combined = (55 * eps[0] - 59 * eps[1] + 37 * eps[2] - 9 * eps[3]) / 24
        theirs = reference._get_prev_sample(x, t, t_next, combined)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # their tables: float32


# ----------------------------------------------------------------------------- exact law
SOLVERS = {
    "dpm-2": lambda s, n: DPMSolverSampler(s, n, order=2, spacing="logsnr", clip_denoised=False),
    "dpm-3": lambda s, n: DPMSolverSampler(s, n, order=3, spacing="logsnr", clip_denoised=False),
    "unipc-bh1": lambda s, n: UniPCSampler(s, n, variant="bh1", clip_denoised=False),
    "unipc-bh2": lambda s, n: UniPCSampler(s, n, variant="bh2", final_step="solver",
                                           clip_denoised=False),
    "pndm": lambda s, n: PNDMSampler(s, n, clip_denoised=False),
    "deis": lambda s, n: DEISSampler(s, n, final_step="solver", clip_denoised=False),
}


def test_first_order_dpm_solver_is_ddim(schedule):
    """DPM-Solver++ 1 is DDIM (eta = 0) on the same timesteps: the same samples."""
    oracle = GaussianOracle(schedule, MU, STD)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for spacing in ("logsnr", "karras", "trailing"):
        dpm = DPMSolverSampler(schedule, 10, order=1, spacing=spacing, clip_denoised=False,
                               final_step="denoise")
        ddim = DDIMSampler(schedule, timesteps=dpm.timesteps, clip_denoised=False)
        torch.testing.assert_close(dpm.sample(oracle, None, x_T=x_T),
                                   ddim.sample(oracle, None, x_T=x_T), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_output_law_is_the_data_law(schedule, name):
    """Gaussian data: after 20 calls the output law is N(MU, STD^2) within Monte-Carlo error (it
    is the ODE's pushforward of N(m_T, v_T)), and the map x_T -> output has the ODE's slope."""
    oracle = GaussianOracle(schedule, MU, STD)
    x_T = torch.randn(4096, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sampler = SOLVERS[name](schedule, 20)
    out = sampler.sample(oracle, None, x_T=x_T)
    n = out.numel()
    assert abs(out.mean().item() - MU) < 5 * STD / math.sqrt(n)
    assert abs(out.var().item() - STD**2) < 5 * STD**2 * math.sqrt(2 / n)
    # deterministic and affine: the map x_T -> output has slope s / sqrt(v_T) (the ODE's)
    m_T, v_T = oracle.marginal(999)
    slope = ((out - out.mean()) * (x_T - x_T.mean())).sum() / ((x_T - x_T.mean()) ** 2).sum()
    assert abs(slope.item() - STD / math.sqrt(v_T.item())) < 0.01


# ----------------------------------------------------------------------------- orders
LAMBDA_T, X_T = -3.0, 1.3


def abar_of(lam):
    return 1 / (1 + np.exp(-2 * np.asarray(lam, dtype=np.float64)))


def exact_solution(lam):
    """The probability-flow ODE's solution for Gaussian data through (lambda_T, X_T)."""
    abar, abar_T = abar_of(lam), abar_of(LAMBDA_T)
    scale = np.sqrt((abar * STD**2 + 1 - abar) / (abar_T * STD**2 + 1 - abar_T))
    return np.sqrt(abar) * MU + scale * (X_T - np.sqrt(abar_T) * MU)


def exact_outputs(lams, form):
    abar = abar_of(lams)
    x = exact_solution(lams)
    x0 = MU + np.sqrt(abar) * STD**2 * (x - np.sqrt(abar) * MU) / (abar * STD**2 + 1 - abar)
    return x, (x0 if form == "x0" else (x - np.sqrt(abar) * x0) / np.sqrt(1 - abar))


def one_step_error(weights, form, order, h, variable="lambda"):
    """|x_{i+1} - exact| after one step from exact history on levels spaced by h."""
    offsets = np.arange(order + 1) - (order - 1)
    lams = offsets * h if variable == "lambda" else -np.log(1.0 - offsets * h)  # rho-uniform
    levels = Levels(torch.tensor(abar_of(lams)))
    x, m = exact_outputs(lams, form)
    i = order - 1
    a, w = weights(levels, i, order)
    step = a * x[i] + sum(w[k] * m[i - k] for k in range(order))
    return abs(step - x[i + 1])


@pytest.mark.parametrize("name, weights, form, order, expected", [
    ("dpm++ 1", dpm_solver_pp_weights, "x0", 1, 2),
    ("dpm++ 2M", dpm_solver_pp_weights, "x0", 2, 3),
    # 3M as Lu et al. / diffusers write it: the second difference carries half the weight its
    # Taylor term needs, so the local error is O(h^3), not O(h^4) (measured, both here and in
    # diffusers' scheduler, which this implementation equals)
    ("dpm++ 3M", dpm_solver_pp_weights, "x0", 3, 3),
    ("unip bh1 1", lambda l, i, o: unipc_predictor_weights(l, i, o, "bh1"), "x0", 1, 2),
    ("unip bh2 2", lambda l, i, o: unipc_predictor_weights(l, i, o, "bh2"), "x0", 2, 3),
    ("unip bh1 3", lambda l, i, o: unipc_predictor_weights(l, i, o, "bh1"), "x0", 3, 4),
    ("unip bh2 3", lambda l, i, o: unipc_predictor_weights(l, i, o, "bh2"), "x0", 3, 4),
    ("deis 1", deis_weights, "eps", 1, 2),
    ("deis 2", deis_weights, "eps", 2, 3),
    ("deis 3", deis_weights, "eps", 3, 4),
])
def test_local_order(name, weights, form, order, expected):
    # 3M reaches its asymptotic rate only for small steps; DEIS's closed forms lose digits there
    steps = (0.01, 0.005, 0.0025) if name == "dpm++ 3M" else (0.04, 0.02, 0.01)
    errors = [one_step_error(weights, form, order, h) for h in steps]
    for coarse, fine in zip(errors, errors[1:]):
        assert abs(math.log2(coarse / fine) - expected) < 0.2, (name, errors)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_plms_local_order_on_a_uniform_rho_grid(order):
    """Adams-Bashforth weights assume equal steps in rho = sigma / alpha: there PLMS of order p
    has local error O(h^(p+1))."""
    errors = [one_step_error(plms_weights, "eps", order, h, "rho") for h in (0.05, 0.025, 0.0125)]
    for coarse, fine in zip(errors, errors[1:]):
        assert abs(math.log2(coarse / fine) - (order + 1)) < 0.25, errors


@pytest.mark.parametrize("order, expected", [(1, 3), (2, 4)])
def test_unic_raises_the_order(order, expected):
    """The corrected x_i (UniC after an order-p step, with the new output) has local error
    O(h^(p+2)): one order above the predictor."""
    def corrected_error(h):
        offsets = np.arange(order + 1) - order  # levels i - order .. i, then i
        lams = offsets * h
        levels = Levels(torch.tensor(abar_of(lams)))
        x, m = exact_outputs(lams, "x0")
        i = order
        c, v = unipc_corrector_weights(levels, i, order, "bh2")
        return abs(c * x[i - 1] + sum(v[k] * m[i - k] for k in range(order + 1)) - x[i])

    errors = [corrected_error(h) for h in (0.04, 0.02, 0.01)]
    for coarse, fine in zip(errors, errors[1:]):
        assert abs(math.log2(coarse / fine) - expected) < 0.25, errors


@pytest.mark.parametrize("make, expected", [
    (lambda s, n: DPMSolverSampler(s, n, order=1), 1),
    (lambda s, n: DPMSolverSampler(s, n, order=2), 2),
    (lambda s, n: UniPCSampler(s, n, order=1), 2),  # UniC adds one order
    (lambda s, n: DEISSampler(s, n, order=2), 2),
])
def test_global_order(schedule, make, expected):
    """A whole run from T - 1 to t = 0 (final_step="solver", uniform log-SNR grid): the error
    against the exact ODE solution falls as 2^-order when the steps double."""
    oracle = GaussianOracle(schedule, MU, STD)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    abar = schedule.alphas_cumprod
    m = lambda t: abar[t].sqrt() * MU  # noqa: E731
    v = lambda t: abar[t] * STD**2 + 1 - abar[t]  # noqa: E731
    exact = m(0) + (v(0) / v(999)).sqrt() * (x_T - m(999))
    errors = []
    for n in (20, 40, 80):
        sampler = make(schedule, n)
        sampler = type(sampler)(schedule, n, order=sampler.order, spacing="logsnr",
                                final_step="solver", lower_order_final=False, clip_denoised=False)
        errors.append((sampler.sample(oracle, None, x_T=x_T) - exact).abs().max().item())
    rate = math.log2(errors[1] / errors[2])
    assert abs(rate - expected) < 0.3, errors


# ----------------------------------------------------------------------------- bad input
def test_bad_arguments(small_schedule):
    for cls in (DPMSolverSampler, UniPCSampler, DEISSampler):
        for order in (0, 4):
            with pytest.raises(ValueError, match=rf"order must be in \[1, 3\]; got {order}"):
                cls(small_schedule, 5, order=order)
        with pytest.raises(TypeError, match="order must be an int"):
            cls(small_schedule, 5, order=2.0)
        with pytest.raises(ValueError, match="final_step must be one of 'denoise', 'solver'"):
            cls(small_schedule, 5, final_step="zero")
    with pytest.raises(ValueError, match=r"order must be in \[1, 4\]; got 5"):
        PNDMSampler(small_schedule, 5, order=5)
    with pytest.raises(ValueError, match="variant must be one of 'bh1', 'bh2'; got 'bh3'"):
        UniPCSampler(small_schedule, 5, variant="bh3")


def test_history_restarts_when_a_step_loop_skips(small_schedule, oracle):
    """step() from the middle of the grid (no history) equals img2img's start: first order."""
    sampler = DPMSolverSampler(small_schedule, 8, order=3)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(6))
    t = sampler.timesteps
    first = sampler.step(oracle(x, t[4].expand(3)), t[4], x)
    fresh = DPMSolverSampler(small_schedule, 8, order=1, timesteps=t.tolist())
    torch.testing.assert_close(first, fresh.step(oracle(x, t[4].expand(3)), t[4], x))


def test_a_diffusers_model_works_without_an_adapter(small_schedule):
    """A diffusers UNet2DModel (its output has .sample) is unwrapped at the model call."""
    diffusers = pytest.importorskip("diffusers")
    from ddpm_lib import DiffusersAdapter

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
        block_out_channels=(8, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()
    for sampler in (UniPCSampler(small_schedule, 4), DDIMSampler(small_schedule, 3)):
        x_T = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
        direct = sampler.sample(unet, None, x_T=x_T)
        adapted = sampler.sample(DiffusersAdapter(unet), None, x_T=x_T)
        torch.testing.assert_close(direct, adapted, rtol=0, atol=0)
