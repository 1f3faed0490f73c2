"""Score-based models in the application layer: ``ScoreBasedModel``, its bundle, the CLI.

``ddpm-lib train --objective edm | dsm`` trains the UNet in its formulation; the run's
checkpoints and its ``ema_model`` bundle load back as a :class:`ScoreBasedModel` that the
samplers over noise levels use as a denoiser (exact at every level) and every DDPM sampler
as an eps model over its VP schedule.
"""

from __future__ import annotations

import pytest
import torch

from ddpm_lib import (
    DiffusionPipeline,
    EDMNoiseLevels,
    EDMSampler,
    NoiseSchedule,
    ScoreBasedModel,
    UNet,
    VENoiseLevels,
    VPModel,
)
from ddpm_lib.cli import main
from ddpm_lib.pipeline import make_sampler

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "--image-size", "8", "--dataset-size", "16", "--batch-size", "4", "--base-channels", "8",
    "--channel-mults", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "",
    "--num-timesteps", "50", "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "4",
    "--num-samples", "2", "--warmup-steps", "1", "--no-progress",
]


class _AsModule(torch.nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, x, sigma):
        return self.function(x, sigma)


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(), image_size=8, norm_groups=8, dropout=0.0)


@pytest.mark.parametrize("objective", ["edm", "dsm"])
def test_score_based_model_views_and_round_trip(tmp_path, objective) -> None:
    schedule = NoiseSchedule.cosine(40)
    model = ScoreBasedModel(tiny_unet(), objective, schedule=schedule).eval()
    assert len(model.state_dict()) == len(model.unet.state_dict())  # the network once
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 37])
    # the integer view is VPModel of the denoiser over the schedule
    expected = VPModel(_AsModule(model.denoiser), schedule)(x, t)
    torch.testing.assert_close(model(x, t), expected)
    sigma = torch.tensor([0.3, 4.0])
    if objective == "dsm":  # the float view is the score; D = x + sigma^2 s
        assert isinstance(model.noise_levels, VENoiseLevels)
        score = model(x, sigma)
        torch.testing.assert_close(model.denoiser(x, sigma), x + sigma[:, None, None, None] ** 2
                                   * score)
    else:
        assert isinstance(model.noise_levels, EDMNoiseLevels)
        torch.testing.assert_close(model(x, sigma), model.denoiser(x, sigma))
    model.save_pretrained(tmp_path / "m")
    loaded = ScoreBasedModel.from_pretrained(tmp_path / "m")
    assert loaded.objective == objective and loaded.schedule.num_timesteps == 40
    torch.testing.assert_close(loaded(x, t), model(x, t))
    torch.testing.assert_close(loaded.denoiser(x, sigma), model.denoiser(x, sigma))


def test_level_samplers_use_the_models_own_levels_and_denoiser() -> None:
    model = ScoreBasedModel(tiny_unet(), "edm", schedule=NoiseSchedule.linear(50)).eval()
    sampler = make_sampler("edm", model.schedule, noise_levels=model.noise_levels, num_steps=4)
    assert sampler.noise_levels is model.noise_levels and float(sampler.sigmas[0]) == 80.0
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = sampler.sample(model, None, x_T=x_T)
    torch.testing.assert_close(ours, sampler.sample(model.precond, None, x_T=x_T))
    # a DDPM sampler reads the VP view (integer timesteps) of the same model
    ddim = make_sampler("ddim", model.schedule, num_steps=5, noise_levels=model.noise_levels)
    assert ddim.sample(model, (2, 3, 8, 8)).shape == (2, 3, 8, 8)


@pytest.mark.parametrize("objective", ["edm", "dsm"])
def test_train_objective_writes_a_bundle_every_sampler_reads(tmp_path, objective) -> None:
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "2", "--objective", objective,
                 "--class-conditional", *TINY]) == 0
    pipe = DiffusionPipeline.from_pretrained(out / "ema_model")
    assert isinstance(pipe.model, ScoreBasedModel) and pipe.model.objective == objective
    assert pipe.schedule.num_timesteps == 50 and pipe.num_classes is not None
    assert pipe.sampler_settings == {"name": "edm"}
    assert isinstance(pipe.make_sampler(), EDMSampler)
    from_run = DiffusionPipeline.from_pretrained(out)  # the run's checkpoint: the same model
    assert isinstance(from_run.model, ScoreBasedModel)
    assert from_run.schedule.num_timesteps == 50
    for sampler in (["--sampler", "edm", "--steps", "3"],
                    ["--sampler", "langevin", "--steps", "2", "--steps-per-level", "2"],
                    ["--sampler", "ve-sde", "--steps", "3", "--method", "reverse_diffusion"],
                    ["--sampler", "ddim", "--steps", "3"]):
        image = tmp_path / f"{sampler[1]}.png"
        assert main(["sample", str(out), "--num", "2", "--out", str(image), *sampler]) == 0
        assert image.is_file()


def test_objective_refuses_the_ddpm_loss_options(tmp_path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "x"), "--objective", "edm", "--loss",
                 "hybrid", *TINY]) == 2
    assert "--objective edm" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--sampler", "ddim", "--s-churn", "1"]) == 2
    assert "--s-churn is an option of --sampler edm" in capsys.readouterr().err


def test_schedule_source_must_be_known() -> None:
    with pytest.raises(TypeError, match="unet"):
        ScoreBasedModel(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="objective"):
        ScoreBasedModel(tiny_unet(), "ncsn")
