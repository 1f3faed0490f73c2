"""The sampler contract, run over every sampler, and the API around it.

Shapes of any rank, bitwise seeds, ``step`` loops equal to ``sample``, trajectories, img2img,
classifier-free guidance, DDIM inversion, and bad input failing early with a clear message.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_lib import GaussianOracle
from ddpm_lib.samplers import (
    ConsistencySampler,
    DDIMSampler,
    DDPMSampler,
    DEISSampler,
    DPMSolverSampler,
    PNDMSampler,
    SampleTrajectory,
    UniPCSampler,
    dynamic_threshold,
    respace,
)
from ddpm_lib.schedule import x0_eps_from_prediction


pytestmark = pytest.mark.usefixtures("one_thread")


SAMPLERS = {
    "ddpm": lambda s: DDPMSampler(s),
    "ddpm-respaced-large": lambda s: DDPMSampler(s, variance="fixed_large", num_steps=7),
    "ddim": lambda s: DDIMSampler(s, num_steps=8),
    "ddim-eta": lambda s: DDIMSampler(s, num_steps=8, eta=0.5, spacing="linspace"),
    "dpm-solver": lambda s: DPMSolverSampler(s, num_steps=8),
    "dpm-solver-v": lambda s: DPMSolverSampler(s, num_steps=6, prediction="v", spacing="trailing"),
    "dpm-solver-3m-logsnr": lambda s: DPMSolverSampler(s, 7, order=3, spacing="logsnr"),
    "dpm-solver-1-karras-x0": lambda s: DPMSolverSampler(s, 6, order=1, spacing="karras",
                                                         prediction="x0"),
    "unipc-bh2": lambda s: UniPCSampler(s, 8),
    "unipc-bh1-solver-v": lambda s: UniPCSampler(s, 7, order=2, variant="bh1", prediction="v",
                                                 final_step="solver"),
    "pndm": lambda s: PNDMSampler(s, 8),
    "pndm-quadratic-solver": lambda s: PNDMSampler(s, 6, spacing="quadratic", final_step="solver"),
    "deis-3": lambda s: DEISSampler(s, 8),
    "deis-2-x0-solver": lambda s: DEISSampler(s, 6, order=2, prediction="x0", final_step="solver"),
    "consistency-4": lambda s: ConsistencySampler(s, 4),
    "consistency-3-v": lambda s: ConsistencySampler(s, 3, prediction="v"),
}


@pytest.fixture(params=sorted(SAMPLERS))
def sampler(request, small_schedule):
    return SAMPLERS[request.param](small_schedule)


def oracle_for(sampler, mean=0.3, std=0.5):
    return GaussianOracle(sampler.schedule, mean=mean, std=std, prediction=sampler.prediction)


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("shape", [(5,), (4, 3), (3, 2, 7), (2, 3, 4, 4), (2, 1, 2, 3, 3)])
def test_any_rank(sampler, shape):
    out = sampler.sample(oracle_for(sampler), shape, generator=torch.Generator().manual_seed(0))
    assert out.shape == shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() <= 1  # clip_denoised


def test_seeds_reproduce_bitwise(sampler):
    model = oracle_for(sampler)

    def run(seed):
        return sampler.sample(model, (3, 2, 5), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_step_loop_equals_sample(sampler):
    """The public step() in a hand-written loop reproduces sample(), int or tensor timesteps."""
    model = oracle_for(sampler)
    x_T = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(1))
    expected = sampler.sample(model, None, x_T=x_T, generator=torch.Generator().manual_seed(2))
    for as_tensor in (False, True):
        generator = torch.Generator().manual_seed(2)
        x = x_T
        for t in sampler.timesteps:
            t_arg = t.expand(3) if as_tensor else int(t)
            x = sampler.step(model(x, t.expand(3)), t_arg, x, generator=generator)
        torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


def test_trajectory(sampler):
    model = oracle_for(sampler)
    out, trajectory = sampler.sample(
        model, (2, 3), generator=torch.Generator().manual_seed(0), return_trajectory=True
    )
    assert isinstance(trajectory, SampleTrajectory)
    assert torch.equal(trajectory.timesteps, sampler.timesteps)
    assert len(trajectory.samples) == sampler.num_steps + 1
    assert len(trajectory.predicted_x0) == sampler.num_steps
    assert torch.equal(trajectory.samples[-1], out)
    assert all(x0.abs().max() <= 1 for x0 in trajectory.predicted_x0)


def test_timesteps_descending_and_in_range(sampler):
    timesteps = sampler.timesteps
    assert timesteps.dtype == torch.long and timesteps.numel() == sampler.num_steps == len(sampler)
    assert bool((timesteps[:-1] > timesteps[1:]).all())
    assert 0 <= int(timesteps.min()) and int(timesteps.max()) < sampler.schedule.num_timesteps
    timesteps[0] = -5  # a copy: the sampler is unaffected
    assert int(sampler.timesteps[0]) != -5


def test_img2img(sampler):
    """strength picks the last steps; the result equals noising then a step() loop from there."""
    model = oracle_for(sampler)
    x0 = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    out, trajectory = sampler.img2img(
        model, x0, 0.5, noise=noise, generator=torch.Generator().manual_seed(2),
        return_trajectory=True,
    )
    taken = int(sampler.num_steps * 0.5)
    assert torch.equal(trajectory.timesteps, sampler.timesteps[-taken:])
    start = sampler.timesteps[-taken]
    x = sampler.schedule.q_sample(x0, int(start), noise=noise)
    assert torch.equal(trajectory.samples[0], x)
    sampler.step(model(x, start.expand(2)), 0 + int(sampler.timesteps[0]), x)  # unrelated call
    generator = torch.Generator().manual_seed(2)
    for t in sampler.timesteps[-taken:]:
        x = sampler.step(model(x, t.expand(2)), t, x, generator=generator)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_img2img_strength_controls_the_change(schedule):
    sampler = DDIMSampler(schedule, 20)
    model = GaussianOracle(schedule, mean=0.0, std=0.5)
    x0 = torch.rand(64, 8, generator=torch.Generator().manual_seed(0)) - 0.5
    changes = [
        (sampler.img2img(model, x0, strength, generator=torch.Generator().manual_seed(1)) - x0)
        .abs()
        .mean()
        for strength in (0.05, 0.3, 1.0)
    ]
    assert changes[0] < 0.5 * changes[1] < 0.5 * changes[2]


def test_split_prediction_equals_schedule(small_schedule):
    """The samplers' table form of the prediction split agrees with NoiseSchedule's."""
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    output = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 5, 17, 30, 48, 49])
    abar = small_schedule.alphas_cumprod[t][:, None]
    for prediction in ("eps", "x0", "v"):
        ours = x0_eps_from_prediction(prediction, output, x_t, abar.sqrt(), (1 - abar).sqrt())
        theirs = small_schedule.split_prediction(output, x_t, t, prediction)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_respace_keeps_alphas_cumprod(schedule):
    timesteps = torch.tensor([999, 500, 120, 3, 0])
    respaced = respace(schedule, timesteps)
    torch.testing.assert_close(
        respaced.alphas_cumprod, schedule.alphas_cumprod[timesteps.flip(0)], rtol=1e-12, atol=0
    )


def test_dynamic_threshold():
    x0 = torch.tensor([[0.2, -0.5, 0.9, 0.1], [3.0, -2.0, 0.5, 0.0]])
    out = dynamic_threshold(x0, 0.5)
    # sample 0: quantile 0.35 < 1 -> s = 1, plain clipping; sample 1: s = quantile(|x|) = 1.25
    torch.testing.assert_close(out[0], x0[0])
    torch.testing.assert_close(out[1], torch.tensor([1.0, -1.0, 0.4, 0.0]))
    # as diffusers' Imagen thresholding without an upper bound on s
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(
        thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1e9
    )
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(dynamic_threshold(x, 0.9), reference._threshold_sample(x))


def test_dynamic_threshold_in_sampler(small_schedule):
    model = GaussianOracle(small_schedule, mean=0.9, std=1.5)  # x0 estimates well beyond 1
    for sampler in (
        DDPMSampler(small_schedule, num_steps=10, dynamic_threshold=0.9),
        DDIMSampler(small_schedule, 10, dynamic_threshold=0.9),
        DPMSolverSampler(small_schedule, 10, dynamic_threshold=0.9),
        UniPCSampler(small_schedule, 10, dynamic_threshold=0.9),
        PNDMSampler(small_schedule, 10, dynamic_threshold=0.9),
        DEISSampler(small_schedule, 10, dynamic_threshold=0.9),
    ):
        out = sampler.sample(model, (8, 16), generator=torch.Generator().manual_seed(0))
        assert out.abs().max() <= 1 + 1e-6
        assert (out.abs() < 0.999).float().mean() > 0.5  # rescaled, not merely clipped to +-1


# ----------------------------------------------------------------------------- guidance
class LabelModel(nn.Module):
    """eps depends on the label y (-1 = null class); records the batch of every call."""

    def __init__(self, channels: int = 2, learned_variance: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels))
        self.learned_variance = learned_variance
        self.calls: list[tuple[int, list[int]]] = []

    def forward(self, x, t, y=None):
        self.calls.append((x.shape[0], y.tolist() if y is not None else None))
        shift = 0.0 if y is None else (0.1 * (y.to(x.dtype) + 1))[:, None, None]
        eps = torch.tanh(x * self.weight[:, None] + shift + 1e-3 * t[:, None, None])
        if self.learned_variance:
            return torch.cat([eps, torch.full_like(eps, 0.3) + shift], dim=1)
        return eps


@pytest.mark.parametrize("factory", [
    lambda s: DDIMSampler(s, 5, eta=0.0),
    lambda s: DPMSolverSampler(s, 5),
    lambda s: DDPMSampler(s, variance="learned_range", num_steps=5),
    lambda s: UniPCSampler(s, 5),
    lambda s: PNDMSampler(s, 5, final_step="solver"),
    lambda s: DEISSampler(s, 5),
])
def test_guidance_is_one_batched_call_with_null_labels(small_schedule, factory):
    sampler = factory(small_schedule)
    learned = getattr(sampler, "variance", "").startswith("learned")
    model = LabelModel(learned_variance=learned)
    y = torch.tensor([3, 0, 7])
    x_T = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    scale = 2.5
    guided = sampler.sample(
        model, None, x_T=x_T, model_kwargs={"y": y}, guidance_scale=scale,
        generator=torch.Generator().manual_seed(1),
    )
    assert len(model.calls) == sampler.num_steps
    assert all(batch == 6 and labels == [3, 0, 7, -1, -1, -1] for batch, labels in model.calls)

    # the same through step() with two separate calls combined by hand
    channels = x_T.shape[1]
    generator = torch.Generator().manual_seed(1)
    x = x_T
    for t in sampler.timesteps:
        cond = model(x, t.expand(3), y=y)
        uncond = model(x, t.expand(3), y=torch.full_like(y, -1))
        combined = uncond + scale * (cond - uncond)
        if learned:  # the variance half is the conditional one, unguided
            combined = torch.cat([combined[:, :channels], cond[:, channels:]], dim=1)
        x = sampler.step(combined, t, x, generator=generator)
    torch.testing.assert_close(guided, x, rtol=0, atol=1e-6)


def test_guidance_scale_one_is_conditional(small_schedule):
    sampler = DDIMSampler(small_schedule, 5)
    model, y = LabelModel(), torch.tensor([1, 2])
    x_T = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0))
    guided = sampler.sample(model, None, x_T=x_T, model_kwargs={"y": y}, guidance_scale=1.0)
    plain = sampler.sample(model, None, x_T=x_T, model_kwargs={"y": y})
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-6)


def test_unconditional_kwargs_override(small_schedule):
    sampler = DDIMSampler(small_schedule, 3)
    model, y = LabelModel(), torch.tensor([1, 2])
    sampler.sample(
        model, (2, 2, 3), model_kwargs={"y": y}, guidance_scale=3.0,
        unconditional_kwargs={"y": torch.tensor([5, 5])},
    )
    assert all(labels == [1, 2, 5, 5] for _, labels in model.calls)


# ----------------------------------------------------------------------------- inversion
def test_ddim_invert_is_exact_when_eps_ignores_x(small_schedule):
    """With eps depending on t only, sampling is an affine bijection; invert is its inverse."""

    def model(x, t):
        return torch.sin(0.1 * t.double())[:, None].to(x.dtype) * torch.linspace(-1, 1, x.shape[1])

    for spacing in ("trailing", "linspace", "leading"):
        sampler = DDIMSampler(small_schedule, 10, clip_denoised=False, spacing=spacing)
        x0 = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x_T, trajectory = sampler.invert(model, x0, return_trajectory=True)
        assert torch.equal(trajectory.timesteps, sampler.timesteps.flip(0))
        torch.testing.assert_close(sampler.sample(model, None, x_T=x_T), x0, rtol=0, atol=1e-10)


def test_ddim_invert_reconstructs_with_the_oracle(schedule):
    """Inversion then sampling returns x0 up to a first-order error (halves as steps double)."""
    oracle = GaussianOracle(schedule, mean=0.3, std=0.5)
    generator = torch.Generator().manual_seed(0)
    x0 = 0.3 + 0.5 * torch.randn(64, 4, generator=generator, dtype=torch.float64)
    errors = {}
    for num_steps in (50, 100):
        sampler = DDIMSampler(schedule, num_steps, clip_denoised=False)
        x_T = sampler.invert(oracle, x0)
        errors[num_steps] = (sampler.sample(oracle, None, x_T=x_T) - x0).abs().max().item()
    assert errors[100] < 0.06
    assert 1.8 < errors[50] / errors[100] < 2.2
    # the encoding approaches the ODE's: x0 standardised, rescaled to the law of x_T
    m_T, v_T = oracle.marginal(schedule.num_timesteps - 1)
    assert (x_T - (m_T + v_T.sqrt() * (x0 - 0.3) / 0.5)).abs().max() < 0.03


# ----------------------------------------------------------------------------- bad input
def test_bad_construction(small_schedule):
    T = small_schedule.num_timesteps
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 50\].*got 51"):
        DDIMSampler(small_schedule, T + 1)
    with pytest.raises(ValueError, match="num_steps.*got 0"):
        DPMSolverSampler(small_schedule, 0)
    with pytest.raises(ValueError, match="num_steps.*got 0"):
        DDPMSampler(small_schedule, num_steps=0)
    with pytest.raises(TypeError, match="num_steps must be an int; got float"):
        DDIMSampler(small_schedule, 10.0)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"eta must be in \[0, 1\]; got {eta}"):
            DDIMSampler(small_schedule, 10, eta=eta)
    spacing_message = (
        "spacing must be one of 'leading', 'trailing', 'linspace', 'logsnr', 'karras', "
        "'quadratic'; got 'uniform'"
    )
    with pytest.raises(ValueError, match=spacing_message):
        DDIMSampler(small_schedule, 10, spacing="uniform")
    with pytest.raises(ValueError, match="prediction must be one of .*got 'noise'"):
        DPMSolverSampler(small_schedule, 10, prediction="noise")
    with pytest.raises(ValueError, match="variance must be one of .*got 'small'"):
        DDPMSampler(small_schedule, variance="small")
    with pytest.raises(ValueError, match="dynamic_threshold must be a percentile"):
        DDIMSampler(small_schedule, 10, dynamic_threshold=99.5)
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        DDIMSampler(torch.linspace(1e-4, 0.02, 10), 5)
    with pytest.raises(ValueError, match="num_steps must be <= 49 with spacing='linspace'"):
        DPMSolverSampler(small_schedule, T, spacing="linspace")


def test_bad_sample_arguments(small_schedule, oracle):
    sampler = DDIMSampler(small_schedule, 4)
    x_T = torch.randn(3, 2, 5)
    with pytest.raises(ValueError, match="shape has batch size 4 but x_T has batch size 3"):
        sampler.sample(oracle, (4, 2, 5), x_T=x_T)
    with pytest.raises(ValueError, match=r"shape \(3, 2, 6\) must equal x_T.shape \(3, 2, 5\)"):
        sampler.sample(oracle, (3, 2, 6), x_T=x_T)
    with pytest.raises(ValueError, match="shape must be a tuple of positive ints"):
        sampler.sample(oracle, (0, 2))
    with pytest.raises(ValueError, match="shape must be given"):
        sampler.sample(oracle, None)
    with pytest.raises(ValueError, match="compile must be 'auto', True or False; got 'yes'"):
        sampler.sample(oracle, (2, 3), compile="yes")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sampler.sample(oracle, (2, 3), generator=0)
    with pytest.raises(ValueError, match=r"model_kwargs\['y'\] has batch size 2; expected 3"):
        sampler.sample(oracle, None, x_T=x_T, model_kwargs={"y": torch.tensor([1, 2])})
    with pytest.raises(ValueError, match="guidance_scale needs a condition to drop"):
        sampler.sample(oracle, None, x_T=x_T, guidance_scale=3.0)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        labels = torch.ones(3, dtype=torch.long)
        sampler.sample(
            LabelModel(), None, x_T=x_T, model_kwargs={"y": labels}, guidance_scale=float("nan")
        )
    with pytest.raises(ValueError, match="strength must be in \\(0, 1\\]; got 1.5"):
        sampler.img2img(oracle, x_T, 1.5)
    with pytest.raises(ValueError, match="strength \\* num_steps must be >= 1"):
        sampler.img2img(oracle, x_T, 0.1)


def test_model_returning_the_wrong_shape(small_schedule):
    def bad(x, t):
        return x[:, :1]

    for sampler in (DDIMSampler(small_schedule, 4), DDPMSampler(small_schedule, num_steps=4)):
        message = r"model returned shape \(2, 1, 5\); expected \(2, 3, 5\)"
        with pytest.raises(ValueError, match=message):
            sampler.sample(bad, (2, 3, 5))
    learned = DDPMSampler(small_schedule, variance="learned", num_steps=4)
    message = r"returned shape \(2, 3, 5\); expected \(2, 6, 5\) \(twice the channels"
    with pytest.raises(ValueError, match=message):
        learned.sample(lambda x, t: x, (2, 3, 5))
    with pytest.raises(TypeError, match="model must return a torch.Tensor; got tuple"):
        DDIMSampler(small_schedule, 4).sample(lambda x, t: (x,), (2, 3))
    with pytest.raises(ValueError, match=r"model returned shape \(2, 4\); expected \(2, 3\)"):
        DDIMSampler(small_schedule, 4).step(torch.zeros(2, 4), 49, torch.zeros(2, 3))


def test_nan_in_the_model_output_names_the_step(sampler):
    bad_t = int(sampler.timesteps[2])

    def model(x, t):
        eps = torch.zeros_like(x)
        return torch.where((t == bad_t).reshape(-1, 1), torch.nan, eps)

    message = rf"model output contains NaN or inf at step 3 of {sampler.num_steps} \(t = {bad_t}\)"
    with pytest.raises(FloatingPointError, match=message):
        sampler.sample(model, (2, 3))


def test_step_rejects_unknown_timesteps(small_schedule):
    sampler = DDIMSampler(small_schedule, 5)
    x = torch.zeros(2, 3)
    message = r"t must be one of this sampler's timesteps \[49, 39, 29, 19, 9\]; got t=48"
    with pytest.raises(ValueError, match=message):
        sampler.step(x, 48, x)
    with pytest.raises(ValueError, match="got t=\\[49, 48\\]"):
        sampler.step(x, torch.tensor([49, 48]), x)
    with pytest.raises(TypeError, match="t must be an int or an integer tensor"):
        sampler.step(x, 49.0, x)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        sampler.step(x, torch.tensor([49, 49, 49]), x)


def test_progress_bar_and_repr(small_schedule, oracle, capsys):
    sampler = DPMSolverSampler(small_schedule, 3)
    sampler.sample(oracle, (2, 2), progress=True)
    assert "DPMSolverSampler" in capsys.readouterr().err
    assert "num_steps=3" in repr(sampler) and "spacing='logsnr'" in repr(sampler)
    assert "order=2" in repr(sampler) and "final_step='solver'" in repr(sampler)


# ----------------------------------------------------------------------------- with the UNet
def test_with_a_tiny_unet_guidance_and_learned_variance(small_schedule):
    """The library's UNet as the model: class labels, null class -1, 2C output channels."""
    unet_module = pytest.importorskip("ddpm_lib.models.unet")
    unet = unet_module.UNet(
        in_channels=2, base_channels=8, channel_mults=(1,), num_res_blocks=1,
        attention_resolutions=(), image_size=8, dropout=0.0, num_classes=3, learn_sigma=True,
        norm_groups=4,
    ).eval()
    y = torch.tensor([0, 2])
    for sampler in (
        DDPMSampler(small_schedule, variance="learned_range", num_steps=4),
        DDIMSampler(small_schedule, 4, learn_sigma=True),
        DPMSolverSampler(small_schedule, 4, learn_sigma=True),
        UniPCSampler(small_schedule, 4, learn_sigma=True),
        DEISSampler(small_schedule, 4, learn_sigma=True),
        PNDMSampler(small_schedule, 4, learn_sigma=True),
    ):
        out = sampler.sample(
            unet, (2, 2, 8, 8), model_kwargs={"y": y}, guidance_scale=2.0,
            generator=torch.Generator().manual_seed(0),
        )
        assert out.shape == (2, 2, 8, 8) and torch.isfinite(out).all()
