"""The measured latent recipe as the default of latent users (issue 32): ``LatentRecipe``,
``ddpm-lib train --autoencoder`` (its defaults, ``--latent-normalization``, and an exact resume
with the run's shift and scale), pixel runs unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from test_latent import TinyAutoencoder, _images, _real_autoencoder
from torch.utils.data import TensorDataset

from ddpm_lib import (
    DDIMSampler,
    DDPMSampler,
    DiffusionPipeline,
    LatentDiffusion,
    LatentRecipe,
    NoiseSchedule,
    SimpleLoss,
)
from ddpm_lib.cli import build_parser, main
from ddpm_lib.cli.checks import validate

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--image-size", "8", "--dataset-size", "12", "--batch-size", "4", "--base-channels", "8",
        "--channel-mults", "1", "--num-res-blocks", "1", "--attention-resolutions", "",
        "--num-timesteps", "20", "--log-every", "2", "--checkpoint-every", "2",
        "--sample-every", "1000", "--warmup-steps", "1", "--ema-decay", "0.5", "--no-progress"]


# ----------------------------------------------------------------------------- LatentRecipe


def test_recipe_defaults_are_the_measured_best_and_build_loss_and_sampler():
    recipe = LatentRecipe()
    assert (recipe.prediction, recipe.min_snr_gamma, recipe.lr, recipe.normalization) == (
        "v", 5.0, 1e-3, "global")
    schedule = NoiseSchedule.linear(50)
    loss = recipe.loss(schedule)
    assert isinstance(loss, SimpleLoss) and loss.prediction == "v"
    # the recipe's loss is SimpleLoss(v, min-SNR 5) value for value
    x0 = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t, noise = torch.tensor([0, 10, 30, 49]), torch.randn_like(x0)

    def model(x_t, t):
        return 0.3 * x_t

    expected = SimpleLoss(schedule, prediction="v", min_snr_gamma=5.0)(
        model, x0, t=t, noise=noise, reduction="none")
    torch.testing.assert_close(loss(model, x0, t=t, noise=noise, reduction="none"), expected,
                               rtol=0, atol=0)
    assert not torch.equal(expected, SimpleLoss(schedule, prediction="v")(
        model, x0, t=t, noise=noise, reduction="none"))  # the weighting is there
    ddim = recipe.sampler(DDIMSampler, schedule, 7, eta=0.5)
    assert (ddim.prediction, ddim.clip_denoised, len(ddim.timesteps), ddim.eta) == (
        "v", False, 7, 0.5)
    assert recipe.sampler(DDPMSampler, schedule).num_steps == DDPMSampler(schedule).num_steps


def test_recipe_fit_normalises_per_channel_and_records_the_prediction():
    latents = LatentDiffusion(TinyAutoencoder())
    recipe = LatentRecipe(normalization="channel")
    scale = recipe.fit(latents, TensorDataset(_images(10)), batch_size=4)
    assert latents.normalization == "channel" and latents.prediction == "v"
    assert scale == latents.scale_factor
    LatentRecipe(prediction="eps").fit(latents, _images(10))
    assert latents.normalization == "global" and latents.prediction == "eps"


@pytest.mark.parametrize("kwargs, error, words", [
    ({"prediction": "noise"}, ValueError, "prediction"),
    ({"normalization": "scale"}, ValueError, "normalization"),
    ({"lr": 0.0}, ValueError, "lr must be > 0"),
    ({"lr": "1e-3"}, TypeError, "lr"),
    ({"min_snr_gamma": -1.0}, ValueError, "min_snr_gamma"),
])
def test_recipe_refuses_bad_settings(kwargs, error, words):
    with pytest.raises(error, match=words):
        LatentRecipe(**kwargs)


# ----------------------------------------------------------------------------- CLI defaults


def _resolved(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)
    validate(args)
    return args.resolved


def test_cli_latent_runs_default_to_the_recipe_and_pixel_runs_do_not(tmp_path):
    ae = tmp_path / "ae"
    _real_autoencoder().save_pretrained(ae)
    latent = _resolved(["train", "--out", str(tmp_path / "l"), "--autoencoder", str(ae)])
    assert (latent["prediction"], latent["min_snr_gamma"], latent["lr"],
            latent["latent_normalization"]) == ("v", 5.0, 1e-3, "scale")
    pixel = _resolved(["train", "--out", str(tmp_path / "p")])
    assert (pixel["prediction"], pixel["min_snr_gamma"], pixel["lr"],
            pixel["latent_normalization"]) == ("eps", None, 2e-4, None)
    # given options win; 'none' turns the weighting off; hybrid gets no min-SNR default
    given = _resolved(["train", "--out", str(tmp_path / "g"), "--autoencoder", str(ae),
                       "--prediction", "eps", "--lr", "3e-4", "--min-snr-gamma", "none",
                       "--latent-normalization", "scale"])
    assert (given["prediction"], given["min_snr_gamma"], given["lr"],
            given["latent_normalization"]) == ("eps", None, 3e-4, "scale")
    hybrid = _resolved(["train", "--out", str(tmp_path / "h"), "--autoencoder", str(ae),
                        "--loss", "hybrid"])
    assert hybrid["min_snr_gamma"] is None and hybrid["prediction"] == "v"


def test_cli_refuses_latent_normalization_without_autoencoder(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "p"), "--latent-normalization", "channel",
                 *TINY]) == 2
    assert "--latent-normalization normalises the latents of --autoencoder" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "x", "--latent-normalization", "global"])


# ----------------------------------------------------------------------------- CLI resume


def _weights(folder) -> dict[str, torch.Tensor]:
    return DiffusionPipeline.from_pretrained(folder, use_ema=False).model.state_dict()


def test_cli_channel_run_resumes_exactly_with_its_shift_and_scale(tmp_path, capsys):
    ae = tmp_path / "ae"
    _real_autoencoder().save_pretrained(ae)
    common = ["train", "--autoencoder", str(ae), "--class-conditional", *TINY,
              "--latent-normalization", "channel"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*common, "--out", str(straight), "--steps", "4"]) == 0
    assert "shift and scale per channel" in capsys.readouterr().err
    assert main([*common, "--out", str(resumed), "--steps", "2"]) == 0
    first = LatentDiffusion.from_pretrained(resumed, load_unet=False)
    assert first.normalization == "channel" and first.prediction == "v"
    record = json.loads((resumed / "pipeline.json").read_text())["latent"]
    assert len(record["shift"]) == len(record["scale"]) == 4
    # changing the normalisation of a started run is refused; resuming keeps it
    assert main([*common[:-2], "--out", str(resumed), "--steps", "4",
                 "--latent-normalization", "scale"]) == 2
    assert "started with --latent-normalization channel" in capsys.readouterr().err
    assert main([*common[:-2], "--out", str(resumed), "--steps", "4"]) == 0  # kept without it
    assert "latents read from" in capsys.readouterr().err
    again = LatentDiffusion.from_pretrained(resumed)
    assert torch.equal(again.latent_shift, first.latent_shift)
    assert torch.equal(again.latent_scale, first.latent_scale)
    reference = LatentDiffusion.from_pretrained(straight)
    assert torch.equal(reference.latent_shift, again.latent_shift)
    step = "checkpoints/step_000000004"
    for name in (step, "ema_model"):
        a, b = _weights(straight / name), _weights(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the checkpoint samples with the run's shift and scale
    pipe = DiffusionPipeline.from_pretrained(resumed / step)
    assert torch.equal(pipe.latent.latent_shift, first.latent_shift)
    assert pipe.prediction == "v"
    options = json.loads((resumed / "cli_args.json").read_text())
    assert (options["latent_normalization"], options["prediction"]) == ("channel", "v")


def test_cli_run_started_scale_only_resumes_scale_only(tmp_path, capsys):
    ae = tmp_path / "ae"
    _real_autoencoder().save_pretrained(ae)
    out = tmp_path / "old"
    common = ["train", "--autoencoder", str(ae), "--out", str(out), *TINY]
    assert main([*common, "--steps", "2", "--prediction", "eps", "--lr", "2e-4",
                 "--min-snr-gamma", "none", "--latent-normalization", "scale"]) == 0
    # as written before --latent-normalization existed: no entry for it
    options = json.loads((out / "cli_args.json").read_text())
    del options["latent_normalization"]
    (out / "cli_args.json").write_text(json.dumps(options))
    before = LatentDiffusion.from_pretrained(out, load_unet=False)
    assert main([*common, "--steps", "4"]) == 0
    assert "per channel" not in capsys.readouterr().err
    after = LatentDiffusion.from_pretrained(out)
    assert after.normalization == "global" and after.scale_factor == before.scale_factor
    options = json.loads((out / "cli_args.json").read_text())
    assert (options["latent_normalization"], options["prediction"], options["lr"],
            options["min_snr_gamma"]) == ("scale", "eps", 2e-4, None)
