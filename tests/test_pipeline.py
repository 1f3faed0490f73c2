"""DiffusionPipeline: one bundle of a trained model, saved and loaded bitwise; every CLI command
on every kind of run through the one loader (v-prediction and learned-variance runs evaluated
with their own settings); the folders earlier versions wrote; errors; the deprecated loader; the
class registry.

Every network is tiny (8 px, one level) and its weights are randomised: a fresh UNet outputs
exactly zero (zero-initialised output convolution), which would hide a wrong prediction type or
a swapped model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ddpm_lib import (
    AutoencoderKL,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    LatentDiffusion,
    NoiseSchedule,
    SimpleLoss,
    TextConditionedUNet,
    TextEncoder,
    Trainer,
    UNet,
    cli,
)
from ddpm_lib.cli import main
from ddpm_lib.metrics import nll_bits_per_dim
from ddpm_lib.models.registry import class_path, register_model_class, resolve_model_class
from ddpm_lib.pipeline import DiffusionPipeline

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULE_T = 20


# ----------------------------------------------------------------------------- tiny models


def randomize(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def tiny_unet(cls: type = UNet, seed: int = 0, **overrides) -> UNet:
    config = dict(in_channels=3, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                  attention_resolutions=(), image_size=8, dropout=0.0, norm_groups=4)
    config.update(overrides)
    return randomize(cls(**config), seed)


def tiny_text_model() -> TextConditionedUNet:
    unet = UNet(in_channels=3, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                attention_resolutions=(8,), image_size=8, dropout=0.0, norm_groups=4,
                num_heads=2, context_dim=16)
    model = TextConditionedUNet(unet, TextEncoder(dim=16, num_layers=1, num_heads=2, max_length=24))
    return randomize(model, 1, std=0.1)


def tiny_autoencoder() -> AutoencoderKL:
    model = AutoencoderKL(in_channels=3, latent_channels=4, base_channels=8, channel_mults=(1, 2),
                          num_res_blocks=1, attention=False, norm_groups=4)
    return randomize(model, 2, std=0.1)


class WideUNet(UNet):
    """A user's subclass with its own constructor argument (found by name after loading)."""

    def __init__(self, *, gain: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_config(gain=gain)
        self.gain = gain

    def forward(self, x, t, **kwargs):
        return super().forward(x, t, **kwargs) * self.gain


class SpaceToDepth(nn.Module):
    """A user's autoencoder that is no PretrainedModel: ``z = gain * unshuffle(x)``."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.config = {"in_channels": channels, "latent_channels": 4 * channels,
                       "channel_mults": [1, 1]}
        self.gain = nn.Parameter(torch.tensor(1.7))

    def encode(self, x):
        raise NotImplementedError  # not needed to sample

    def decode(self, z):
        return F.pixel_shuffle(z / self.gain, 2)

    def save_pretrained(self, directory) -> None:
        from safetensors.torch import save_file

        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.config))
        save_file({"gain": self.gain.detach().clone()}, str(Path(directory) / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory) -> SpaceToDepth:
        from safetensors.torch import load_file

        config = json.loads((Path(directory) / "config.json").read_text())
        model = cls(config["in_channels"])
        model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
        return model


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- round trips


def _pixel():
    schedule = NoiseSchedule.cosine(30)
    pipe = DiffusionPipeline(tiny_unet(), schedule, prediction="v", variance="fixed_large",
                             sampler={"name": "ddim", "num_steps": 4, "eta": 0.5})
    direct = DDIMSampler(schedule, num_steps=4, eta=0.5, prediction="v")
    return pipe, direct, {}, {}


def _class_learn_sigma():
    schedule = NoiseSchedule.linear(SCHEDULE_T, beta_start=1e-3, beta_end=0.2)
    model = tiny_unet(num_classes=3, learn_sigma=True)
    pipe = DiffusionPipeline(model, schedule, sampler={"name": "ddpm", "num_steps": 5})
    direct = DDPMSampler(schedule, variance="learned_range", num_steps=5)
    labels = torch.tensor([2, 0, 1, 2])
    call = {"labels": labels, "guidance_scale": 2.0}
    return pipe, direct, call, {"model_kwargs": {"y": labels}, "guidance_scale": 2.0}


def _text():
    schedule = NoiseSchedule.linear(SCHEDULE_T)
    model = tiny_text_model()
    pipe = DiffusionPipeline(model, schedule, prediction="x0",
                             sampler={"name": "dpm-solver", "num_steps": 3})
    direct = DPMSolverSampler(schedule, num_steps=3, prediction="x0")
    prompts, negative = ["a red circle", "两个蓝色方块"], ["a blue square", ""]
    call = {"prompts": prompts, "negative_prompts": negative, "guidance_scale": 3.0}
    with torch.no_grad():
        expected = {"model_kwargs": model.encode_prompts(prompts), "guidance_scale": 3.0,
                    "unconditional_kwargs": model.encode_prompts(negative)}
    return pipe, direct, call, expected


def _latent():
    schedule = NoiseSchedule.linear(SCHEDULE_T)
    unet = tiny_unet(in_channels=4, image_size=4)
    pipe = DiffusionPipeline(unet, schedule, prediction="eps", autoencoder=tiny_autoencoder(),
                             scale_factor=0.731, sampler={"name": "ddim", "num_steps": 3})
    direct = DDIMSampler(schedule, num_steps=3, clip_denoised=False)  # latents are not clipped
    return pipe, direct, {}, {}


KINDS = {"pixel": _pixel, "class_learn_sigma": _class_learn_sigma, "text": _text,
         "latent": _latent}


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_bitwise_and_samples_like_the_sampler(kind, tmp_path):
    pipe, direct, call, expected_kwargs = KINDS[kind]()
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.model) is type(pipe.model) and not loaded.model.training
    assert_same_weights(pipe.model, loaded.model)
    assert torch.equal(loaded.schedule.betas, pipe.schedule.betas)
    assert torch.equal(loaded.schedule.alphas_cumprod, pipe.schedule.alphas_cumprod)
    for name in ("prediction", "variance", "learn_sigma", "sampler_settings", "scale_factor",
                 "num_classes", "is_text_model", "sample_shape"):
        assert getattr(loaded, name) == getattr(pipe, name), name
    assert loaded.source == tmp_path / "pipe"
    if kind == "latent":
        assert type(loaded.autoencoder) is AutoencoderKL and not loaded.autoencoder.training
        assert_same_weights(pipe.autoencoder, loaded.autoencoder)
        assert loaded.scale_factor == 0.731
    else:
        assert loaded.autoencoder is None and loaded.scale_factor is None
    expected_settings = {
        "pixel": ("v", "fixed_large", False, None),
        "class_learn_sigma": ("eps", "learned_range", True, 3),
        "text": ("x0", "fixed_small", False, None), "latent": ("eps", "fixed_small", False, None),
    }[kind]
    assert (loaded.prediction, loaded.variance, loaded.learn_sigma,
            loaded.num_classes) == expected_settings
    assert loaded.is_text_model == (kind == "text")

    # the saved sampler, with the model's settings
    sampler = loaded.make_sampler()
    assert type(sampler) is type(direct) and sampler.num_steps == direct.num_steps
    assert sampler.prediction == direct.prediction
    assert sampler.clip_denoised == (kind != "latent")
    # pipe.sample is the sampler's sample (then decoded for a latent model)
    count = 4 if kind == "class_learn_sigma" else 2
    shape = (count, *loaded.sample_shape)
    with torch.no_grad():
        z = direct.sample(pipe.model, shape, generator=seeded(5), **expected_kwargs)
        if kind == "latent":
            expected = pipe.autoencoder.decode(z / 0.731)
            images, latents = loaded.sample(count, generator=seeded(5), return_latents=True, **call)
            assert torch.equal(latents, z) and images.shape == (2, 3, 8, 8)
        else:
            expected = z
            images = loaded.sample(None if call else count, generator=seeded(5), **call)
    assert torch.equal(images, expected)
    assert torch.isfinite(images).all() and images.std() > 0
    # the folder is also a plain model folder
    plain = type(pipe.model).from_pretrained(tmp_path / "pipe")
    assert_same_weights(pipe.model, plain)


def test_pipeline_json_records_the_settings_and_a_model_sub_folder(tmp_path):
    pipe, _, _, _ = _pixel()
    pipe.save_pretrained(tmp_path / "p", model_folder="denoiser")
    record = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert record["format"] == "ddpm_lib.pipeline" and record["format_version"] == 1
    assert record["parts"] == {
        "model": {"folder": "denoiser", "class": "ddpm_lib.models.unet.UNet"}}
    assert record["diffusion"]["prediction"] == "v"
    assert record["diffusion"]["variance"] == "fixed_large"
    assert record["sampler"] == {"name": "ddim", "num_steps": 4, "eta": 0.5}
    assert not (tmp_path / "p" / "config.json").exists()
    assert_same_weights(pipe.model, UNet.from_pretrained(tmp_path / "p" / "denoiser"))
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert loaded.prediction == "v" and loaded.variance == "fixed_large"
    # the model's sub-folder alone reads the pipeline's settings
    part = DiffusionPipeline.from_pretrained(tmp_path / "p" / "denoiser")
    assert part.prediction == "v" and torch.equal(part.schedule.betas, pipe.schedule.betas)
    # saving again replaces the folder
    pipe.prediction = "x0"
    pipe.save_pretrained(tmp_path / "p", model_folder="denoiser")
    assert DiffusionPipeline.from_pretrained(tmp_path / "p").prediction == "x0"


def test_make_sampler_and_sample_options():
    pipe, _, _, _ = _pixel()
    # another sampler by name drops the saved sampler's options
    dpm = pipe.make_sampler("dpm-solver", num_steps=3)
    assert type(dpm) is DPMSolverSampler and dpm.num_steps == 3 and dpm.prediction == "v"
    saved = pipe.make_sampler(num_steps=2)
    assert type(saved) is DDIMSampler and saved.num_steps == 2 and saved.eta == 0.5
    ddpm = pipe.make_sampler("ddpm")
    assert type(ddpm) is DDPMSampler and ddpm.num_steps == 30  # min(100, T)
    with torch.no_grad():
        a = pipe.sample(2, sampler="ddpm", num_steps=3, generator=seeded(1))
        b = DDPMSampler(pipe.schedule, variance="fixed_large", num_steps=3, prediction="v").sample(
            pipe.model, (2, 3, 8, 8), generator=seeded(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_steps goes with a sampler given by name"):
        pipe.sample(2, sampler=DDIMSampler(pipe.schedule, num_steps=2), num_steps=3)
    with pytest.raises(ValueError, match="euler"):
        pipe.make_sampler("euler")
    with pytest.raises(ValueError, match="guidance_scale needs a conditional model"):
        pipe.sample(2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="labels need a class-conditional model"):
        pipe.sample(labels=[0, 1])


# ----------------------------------------------------------------------------- runs and the CLI

TINY = [
    "--image-size", "8", "--dataset-size", "16", "--batch-size", "4", "--base-channels", "8",
    "--channel-mults", "1", "--num-res-blocks", "1", "--attention-resolutions", "",
    "--num-timesteps", str(SCHEDULE_T), "--log-every", "2", "--checkpoint-every", "2",
    "--sample-every", "100", "--num-samples", "2", "--warmup-steps", "1", "--lr", "3e-3",
    "--no-progress",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A v-prediction run, a learned-variance class-conditional run (HybridLoss) and a latent
    run, 4 steps each (checkpoints at 2 and 4)."""
    root = tmp_path_factory.mktemp("pipeline_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--out", str(root / "v"), "--steps", "4", "--prediction", "v",
                     *TINY]) == 0
        assert main(["train", "--out", str(root / "hybrid"), "--steps", "4", "--loss", "hybrid",
                     "--class-conditional", *TINY]) == 0
        assert main(["train", "--out", str(root / "text"), "--steps", "2", "--data",
                     "captioned-shapes", *TINY, "--attention-resolutions", "8", "--text-dim", "16",
                     "--text-layers", "1", "--text-heads", "2", "--text-max-length", "48"]) == 0
        tiny_autoencoder().save_pretrained(root / "ae")
        assert main(["train", "--out", str(root / "latent"), "--steps", "2", "--autoencoder",
                     str(root / "ae"), "--prediction", "eps", *TINY]) == 0  # eps, as latent runs were
    finally:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.save(root / "data.npy", pixels)
    (root / "ref").mkdir()
    for index, image in enumerate(rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)):
        Image.fromarray(image).save(root / "ref" / f"{index}.png")
    return {"v": root / "v", "hybrid": root / "hybrid", "latent": root / "latent",
            "text": root / "text",
            "data": root / "data.npy", "ref": root / "ref"}


def sources(run: Path) -> list[Path]:
    """The three kinds of folder a run gives: the run, its newest checkpoint, its export."""
    return [run, run / "checkpoints" / "step_000000004", run / "ema_model"]


def _out(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.out


def _figure(out: str, name: str) -> float:
    return float(out.split(f"{name}: ")[1].split()[0])


def test_runs_export_pipelines_with_their_settings(runs):
    for run, (prediction, variance, loss) in {
        "v": ("v", "fixed_small", "SimpleLoss"), "hybrid": ("eps", "learned_range", "HybridLoss"),
    }.items():
        record = json.loads((runs[run] / "ema_model" / "pipeline.json").read_text())
        assert record["diffusion"]["prediction"] == prediction
        loaded = [DiffusionPipeline.from_pretrained(source) for source in sources(runs[run])]
        for pipe in loaded:
            assert (pipe.prediction, pipe.variance) == (prediction, variance), pipe.source
            assert torch.equal(pipe.schedule.betas, NoiseSchedule.linear(SCHEDULE_T).betas)
            assert_same_weights(pipe.model, loaded[0].model)  # EMA weights everywhere
        meta = json.loads((runs[run] / "checkpoints" / "step_000000004" / "meta.json").read_text())
        assert meta["diffusion"]["loss"] == loss
        assert loaded[0].source == runs[run] / "checkpoints" / "step_000000004"
        raw = DiffusionPipeline.from_pretrained(runs[run], use_ema=False).model
        assert any(not torch.equal(a, b) for a, b in zip(raw.state_dict().values(),
                                                         loaded[0].model.state_dict().values()))
    pipe = DiffusionPipeline.from_pretrained(runs["hybrid"])
    assert pipe.learn_sigma and pipe.num_classes == 4
    assert type(pipe.make_sampler("ddpm")) is DDPMSampler
    latent = DiffusionPipeline.from_pretrained(runs["latent"])
    assert type(latent.autoencoder) is AutoencoderKL and latent.scale_factor > 0
    assert latent.sample_shape == (4, 4, 4)
    saved = AutoencoderKL.from_pretrained(runs["latent"].parent / "ae")
    assert_same_weights(latent.autoencoder, saved)


def _eval_options(**given) -> argparse.Namespace:
    values = {"prediction": None, "variance": "auto", "schedule": None, "timesteps": None}
    values.update(given)
    return argparse.Namespace(**values)


def test_eval_pipeline_takes_the_saved_settings_unless_given(runs, tmp_path):
    from ddpm_lib.cli._common import load_eval_pipeline

    for run, settings in (("v", ("v", "fixed_small")), ("hybrid", ("eps", "learned_range"))):
        for source in sources(runs[run]):
            pipe = load_eval_pipeline(str(source), "cpu", _eval_options())
            assert (pipe.prediction, pipe.variance) == settings, source
            assert pipe.latent is None and pipe.schedule.num_timesteps == SCHEDULE_T
            assert not pipe.model.training
    options = _eval_options(prediction="x0", variance="fixed_large", schedule="cosine",
                            timesteps=7)
    pipe = load_eval_pipeline(str(runs["v"]), "cpu", options)
    assert (pipe.prediction, pipe.variance) == ("x0", "fixed_large")
    assert torch.equal(pipe.schedule.betas, NoiseSchedule.linear(SCHEDULE_T).betas)  # saved wins
    assert type(cli._common.build_sampler(argparse.Namespace(
        sampler="ddpm", steps=None, spacing=None, order=None, final_step=None, eta=None,
        variant=None, method=None, dynamic_threshold=None, analytic_variance=None,
        clip_denoised=None), pipe)) is DDPMSampler
    # a folder that records no schedule takes --schedule / --timesteps
    tiny_unet().save_pretrained(tmp_path / "plain")
    pipe = load_eval_pipeline(str(tmp_path / "plain"), "cpu",
                              _eval_options(schedule="cosine", timesteps=30))
    assert torch.equal(pipe.schedule.betas, NoiseSchedule.cosine(30).betas)
    assert (pipe.prediction, pipe.variance) == ("eps", "fixed_small")
    pipe = load_eval_pipeline(str(tmp_path / "plain"), "cpu", _eval_options())
    assert torch.equal(pipe.schedule.betas, NoiseSchedule.linear(1000).betas)
    pipe = load_eval_pipeline(str(runs["latent"]), "cpu", _eval_options())
    assert isinstance(pipe.latent, LatentDiffusion)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_eval_pipeline(str(tmp_path / "nowhere"), "cpu", _eval_options())


def test_load_checkpoint_for_eval_is_deprecated_and_fills_the_saved_settings(runs):
    args = _eval_options()
    with pytest.warns(DeprecationWarning, match="DiffusionPipeline.from_pretrained"):
        model, schedule = cli.load_checkpoint_for_eval(str(runs["v"]), "cpu", args)
    assert (args.prediction, args.variance) == ("v", "fixed_small")
    assert args.latent_model is None and schedule.num_timesteps == SCHEDULE_T
    assert not model.training
    args = _eval_options()
    with pytest.warns(DeprecationWarning):
        cli.load_checkpoint_for_eval(str(runs["latent"]), "cpu", args)
    assert isinstance(args.latent_model, LatentDiffusion)


class _WithLabel(nn.Module):
    def __init__(self, model: nn.Module, label: int) -> None:
        super().__init__()
        self.model, self.label = model, label

    def forward(self, x, t):
        return self.model(x, t, y=torch.full((x.shape[0],), self.label, dtype=torch.long))


def _direct_bpd(model, data: Path, prediction: str, variance: str) -> str:
    pixels = torch.from_numpy(np.load(data)).permute(0, 3, 1, 2)
    result = nll_bits_per_dim(model, NoiseSchedule.linear(SCHEDULE_T), pixels, variance=variance,
                              prediction=prediction, device="cpu",
                              generator=torch.Generator("cpu").manual_seed(0))
    return f"{result.mean:.4f}"


def test_bpd_of_v_and_learned_variance_runs_uses_their_settings(runs, capsys):
    common = ["--device", "cpu", "--no-progress"]
    for run, extra, model, right, wrong in (
        ("v", [], UNet.from_pretrained(runs["v"] / "ema_model"), ("v", "fixed_small"),
         ("eps", "fixed_small")),
        ("hybrid", ["--class-label", "1"],
         _WithLabel(UNet.from_pretrained(runs["hybrid"] / "ema_model"), 1),
         ("eps", "learned_range"), ("eps", "learned")),
    ):
        expected = _direct_bpd(model, runs["data"], *right)
        assert expected != _direct_bpd(model, runs["data"], *wrong)
        for source in sources(runs[run]):
            assert main(["bpd", str(source), str(runs["data"]), *extra, *common]) == 0
            figure = _out(capsys).split("bits/dim: ")[1].split()[0]
            assert figure == expected, (run, source)
        # the flags still override the saved settings
        assert main(["bpd", str(runs[run]), str(runs["data"]), "--prediction", wrong[0],
                     "--variance", wrong[1], *extra, *common]) == 0
        assert _out(capsys).split("bits/dim: ")[1].split()[0] == _direct_bpd(
            model, runs["data"], *wrong)
    # bits/dim of latents are not those of the images
    assert main(["bpd", str(runs["latent"]), str(runs["data"]), *common]) == 2
    assert "latent model" in capsys.readouterr().err


class TinyExtractor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        randomize(self.conv, 3, std=0.5)

    def forward(self, images):
        return torch.tanh(self.conv(images)).mean(dim=(2, 3))


def test_fid_from_every_kind_of_folder_samples_with_the_saved_settings(runs, monkeypatch, capsys):
    extractor = TinyExtractor()
    monkeypatch.setattr(cli.fid, "_load_extractor", lambda args, device: extractor)

    def fid(source, *extra) -> float:
        argv = ["fid", str(runs["ref"]), "--checkpoint", str(source), "--num-samples", "6",
                "--batch-size", "3", "--steps", "3", "--device", "cpu", "--no-progress", *extra]
        assert main(argv) == 0, capsys.readouterr().err
        out = _out(capsys)
        assert "samples: 6 vs 8" in out
        return _figure(out, "FID")

    # v-prediction, DDIM: the saved prediction is used, and it matters
    figures = [fid(source) for source in sources(runs["v"])]
    assert figures[0] == figures[1] == figures[2] == fid(runs["v"], "--prediction", "v")
    assert figures[0] != fid(runs["v"], "--prediction", "eps")
    # learned variance, ancestral: learned_range from the saved settings
    figures = [fid(source, "--sampler", "ddpm") for source in sources(runs["hybrid"])]
    assert figures[0] == figures[1] == figures[2]
    assert figures[0] == fid(runs["hybrid"], "--sampler", "ddpm", "--variance", "learned_range")
    assert figures[0] != fid(runs["hybrid"], "--sampler", "ddpm", "--variance", "learned")


def test_fid_of_a_latent_run_decodes_its_samples(runs, monkeypatch, capsys):
    seen = []

    def extractor(images):
        seen.append(tuple(images.shape))
        return TinyExtractor()(images)

    monkeypatch.setattr(cli.fid, "_load_extractor", lambda args, device: extractor)
    argv = ["fid", str(runs["ref"]), "--checkpoint", str(runs["latent"]), "--num-samples", "4",
            "--batch-size", "2", "--steps", "2", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert np.isfinite(_figure(_out(capsys), "FID"))
    assert seen and all(shape == (2, 3, 8, 8) for shape in seen)  # decoded, not 4x4 latents


def test_a_latent_runs_checkpoint_and_export_sample_decoded_images(runs, tmp_path, capsys):
    """The checkpoint folder and ema_model/ of a latent run are folders of that run: their
    samples are decoded by the run's autoencoder, as the run folder's are."""
    arrays = []
    for source in (runs["latent"], runs["latent"] / "checkpoints" / "step_000000002",
                   runs["latent"] / "ema_model"):
        npz = tmp_path / f"{source.name}.npz"
        assert main(["sample", str(source), "--num", "2", "--steps", "2", "--npz", str(npz),
                     "--no-progress"]) == 0, capsys.readouterr().err
        arrays.append(np.load(npz)["arr_0"])
        assert arrays[-1].shape == (2, 8, 8, 3), source  # not (2, 4, 4, 4) latents
    assert np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[0], arrays[2])


def test_sample_from_every_kind_of_folder(runs, tmp_path, capsys):
    for run in ("v", "hybrid"):
        arrays = []
        for source in sources(runs[run]):
            npz = tmp_path / f"{run}-{source.name}.npz"
            assert main(["sample", str(source), "--num", "2", "--sampler", "ddim", "--steps", "3",
                         "--npz", str(npz), "--no-progress"]) == 0, capsys.readouterr().err
            arrays.append(np.load(npz)["arr_0"])
        assert arrays[0].shape == (2, 8, 8, 3)
        assert np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[0], arrays[2])
    # the CLI's samples are the pipeline's (v-prediction read from the run)
    pipe = DiffusionPipeline.from_pretrained(runs["v"])
    images = pipe.sample(2, sampler="ddim", num_steps=3, generator=seeded(0))
    from ddpm_lib.data import tensor_to_uint8

    cli_v = np.load(tmp_path / "v-v.npz")["arr_0"]
    assert np.array_equal(tensor_to_uint8(images).permute(0, 2, 3, 1).numpy(), cli_v)
    eps = DiffusionPipeline.from_pretrained(runs["v"])
    eps.prediction = "eps"
    wrong = eps.sample(2, sampler="ddim", num_steps=3, generator=seeded(0))
    assert not np.array_equal(tensor_to_uint8(wrong).permute(0, 2, 3, 1).numpy(), cli_v)
    npz = tmp_path / "latent.npz"
    assert main(["sample", str(runs["latent"]), "--num", "2", "--steps", "2", "--npz", str(npz),
                 "--no-progress"]) == 0
    assert np.load(npz)["arr_0"].shape == (2, 8, 8, 3)  # decoded


def test_text_runs_load_and_sample_from_every_kind_of_folder(runs, tmp_path, capsys):
    run = runs["text"]
    folders = [run, run / "checkpoints" / "step_000000002", run / "ema_model"]
    pipes = [DiffusionPipeline.from_pretrained(source) for source in folders]
    for pipe in pipes:
        assert type(pipe.model) is TextConditionedUNet and pipe.is_text_model
        assert pipe.sample_shape == (3, 8, 8) and pipe.num_classes is None
        assert_same_weights(pipe.model, pipes[0].model)
    arrays = []
    for source in folders:
        npz = tmp_path / f"{source.name}.npz"
        assert main(["sample", str(source), "--prompt", "a red circle", "--num", "2",
                     "--steps", "2", "--guidance-scale", "2", "--npz", str(npz),
                     "--no-progress"]) == 0, capsys.readouterr().err
        arrays.append(np.load(npz)["arr_0"])
    assert arrays[0].shape == (2, 8, 8, 3)
    assert np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[0], arrays[2])


def test_cli_errors_on_folders_that_hold_no_model(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    data = str(runs["data"])
    for argv, expected in (
        (["bpd", str(tmp_path / "empty"), data], "neither a training folder"),
        (["bpd", str(tmp_path / "missing"), data], "missing"),
        (["sample", str(tmp_path / "empty"), "--npz", str(tmp_path / "x.npz")], "neither"),
        (["fid", str(runs["ref"]), "--checkpoint", str(tmp_path / "empty"), "--num-samples", "2"],
         "neither"),
    ):
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and err.count("\n") == 0 and expected in err, err


# ----------------------------------------------------------------------------- earlier formats


def _old_export(directory: Path, model: UNet, schedule: NoiseSchedule, **diffusion) -> None:
    """What Trainer.export wrote before the bundle: save_pretrained, diffusion.json and
    schedule.json."""
    model.save_pretrained(directory)
    record = {"loss": "SimpleLoss", "schedule": schedule.to_dict(), **diffusion}
    (directory / "diffusion.json").write_text(json.dumps(record, indent=2))
    (directory / "schedule.json").write_text(json.dumps(schedule.to_dict()))


def test_old_exports_still_load_with_their_settings(runs, tmp_path, capsys):
    schedule = NoiseSchedule.cosine(25)
    model = tiny_unet()
    _old_export(tmp_path / "v", model, schedule, prediction="v")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "v")
    assert (pipe.prediction, pipe.variance) == ("v", "fixed_small")
    assert torch.equal(pipe.schedule.betas, schedule.betas)
    assert_same_weights(pipe.model, model)
    hybrid = tiny_unet(learn_sigma=True, num_classes=2)
    _old_export(tmp_path / "h", hybrid, schedule, prediction="x0", variance="learned",
                learn_sigma=True, loss="HybridLoss")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "h")
    assert (pipe.prediction, pipe.variance, pipe.num_classes) == ("x0", "learned", 2)
    # only schedule.json (the eval commands' earlier format): eps
    model.save_pretrained(tmp_path / "s")
    (tmp_path / "s" / "schedule.json").write_text(json.dumps(schedule.to_dict()))
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "s")
    assert pipe.prediction == "eps" and torch.equal(pipe.schedule.betas, schedule.betas)
    # the v-run's model in the old format: bpd gives the figure of the new folder
    ema = UNet.from_pretrained(runs["v"] / "ema_model")
    _old_export(tmp_path / "old_v_run", ema, NoiseSchedule.linear(SCHEDULE_T), prediction="v",
                variance="fixed_small")
    figures = []
    for source in (runs["v"] / "ema_model", tmp_path / "old_v_run"):
        argv = ["bpd", str(source), str(runs["data"]), "--device", "cpu", "--no-progress"]
        assert main(argv) == 0
        figures.append(_out(capsys).split("bits/dim: ")[1].split()[0])
    assert figures[0] == figures[1]
    with pytest.warns(DeprecationWarning):
        from ddpm_lib.training.checkpoint import load_trained_model
    assert load_trained_model(tmp_path / "v").prediction == "v"


def _old_latent_folder(directory: Path, with_unet: bool = True):
    """What LatentDiffusion.save_pretrained wrote before the bundle."""
    schedule = NoiseSchedule.linear(SCHEDULE_T, beta_start=1e-3, beta_end=0.1)
    autoencoder, unet = tiny_autoencoder(), tiny_unet(in_channels=4, image_size=4, num_classes=2)
    diffusion = {"prediction": "v", "schedule": schedule.to_dict()}
    autoencoder.save_pretrained(directory / "autoencoder")
    if with_unet:
        unet.save_pretrained(directory / "unet")
        (directory / "unet" / "diffusion.json").write_text(json.dumps(diffusion, indent=2))
        (directory / "unet" / "schedule.json").write_text(json.dumps(diffusion["schedule"]))
    record = {
        "format_version": 1, "scale_factor": 0.61,
        "autoencoder_class": "ddpm_lib.models.autoencoder.AutoencoderKL",
        "unet_class": "ddpm_lib.models.unet.UNet" if with_unet else None,
        "diffusion": diffusion,
    }
    (directory / "latent_diffusion.json").write_text(json.dumps(record, indent=2) + "\n")
    return autoencoder, unet, schedule


def test_old_latent_folders_still_load(tmp_path, capsys):
    autoencoder, unet, schedule = _old_latent_folder(tmp_path / "ldm")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "ldm")
    assert (pipe.prediction, pipe.variance, pipe.scale_factor, pipe.num_classes) == (
        "v", "fixed_small", 0.61, 2)
    assert torch.equal(pipe.schedule.betas, schedule.betas)
    assert_same_weights(pipe.model, unet)
    assert_same_weights(pipe.autoencoder, autoencoder)
    assert pipe.make_sampler().clip_denoised is False
    latent = LatentDiffusion.from_pretrained(tmp_path / "ldm")
    assert (latent.prediction, latent.scale_factor) == ("v", 0.61)
    assert torch.equal(latent.schedule.betas, schedule.betas)
    assert_same_weights(latent.unet, unet)
    assert_same_weights(latent.autoencoder, autoencoder)
    only_ae = LatentDiffusion.from_pretrained(tmp_path / "ldm", load_unet=False)
    assert only_ae.unet is None and only_ae.scale_factor == 0.61
    # the pipeline samples what the sampler gives, decoded with the saved scale factor
    with torch.no_grad():
        z = DDIMSampler(schedule, num_steps=2, prediction="v", clip_denoised=False).sample(
            unet, (2, 4, 4, 4), generator=seeded(2), model_kwargs={"y": torch.tensor([1, 0])})
        images = pipe.sample(labels=[1, 0], sampler="ddim", num_steps=2, generator=seeded(2))
    assert torch.equal(images, autoencoder.decode(z / 0.61))
    # the unet/ folder alone is an old export, read with the latent folder's autoencoder
    part = DiffusionPipeline.from_pretrained(tmp_path / "ldm" / "unet")
    assert part.prediction == "v" and part.scale_factor == 0.61
    assert isinstance(part.autoencoder, type(autoencoder))
    npz = tmp_path / "s.npz"
    assert main(["sample", str(tmp_path / "ldm"), "--num", "2", "--steps", "2", "--npz", str(npz),
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert np.load(npz)["arr_0"].shape == (2, 8, 8, 3)
    # saved again, it is a pipeline folder with the same parts
    latent.save_pretrained(tmp_path / "new")
    again = DiffusionPipeline.from_pretrained(tmp_path / "new")
    assert again.prediction == "v" and again.scale_factor == 0.61
    assert_same_weights(again.model, unet)
    # an old latent folder without a UNet: no model to sample from
    _old_latent_folder(tmp_path / "ae_only", with_unet=False)
    assert LatentDiffusion.from_pretrained(tmp_path / "ae_only").unet is None
    with pytest.raises(ValueError, match="holds no denoising model"):
        DiffusionPipeline.from_pretrained(tmp_path / "ae_only")


def test_an_old_latent_training_run_still_loads(runs, tmp_path, capsys):
    """A latent run as the previous version left it: latent_diffusion.json beside checkpoints/."""
    old = tmp_path / "run"
    shutil.copytree(runs["latent"], old)
    record = json.loads((old / "pipeline.json").read_text())
    for name in ("pipeline.json", "manifest.json"):
        os.remove(old / name)
    diffusion = {"prediction": "eps", "schedule": record["diffusion"]["schedule"]}
    (old / "unet" / "diffusion.json").write_text(json.dumps(diffusion))
    (old / "latent_diffusion.json").write_text(json.dumps({
        "format_version": 1, "scale_factor": 2.5,  # read from here only
        "autoencoder_class": "ddpm_lib.models.autoencoder.AutoencoderKL",
        "unet_class": "ddpm_lib.models.unet.UNet", "diffusion": diffusion,
    }))
    new = DiffusionPipeline.from_pretrained(runs["latent"])
    pipe = DiffusionPipeline.from_pretrained(old)
    assert pipe.prediction == "eps" and pipe.scale_factor == 2.5 != new.scale_factor
    assert torch.equal(pipe.schedule.betas, new.schedule.betas)
    assert pipe.source == old / "checkpoints" / "step_000000002"  # the newest checkpoint's EMA
    assert_same_weights(pipe.model, new.model)
    assert_same_weights(pipe.autoencoder, new.autoencoder)
    latent = LatentDiffusion.from_pretrained(old)
    assert latent.prediction == "eps" and latent.scale_factor == 2.5
    assert_same_weights(latent.unet, UNet.from_pretrained(runs["latent"] / "unet"))
    npz = tmp_path / "s.npz"
    assert main(["sample", str(old), "--num", "2", "--steps", "2", "--npz", str(npz),
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert np.load(npz)["arr_0"].shape == (2, 8, 8, 3)


# ----------------------------------------------------------------------------- errors


def test_loading_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DiffusionPipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a training folder.*pipeline folder"):
        DiffusionPipeline.from_pretrained(tmp_path / "empty")
    # a latent folder without a denoiser
    LatentDiffusion(tiny_autoencoder(), 0.5).save_pretrained(tmp_path / "ae_only")
    with pytest.raises(ValueError, match="holds no denoising model.*LatentDiffusion"):
        DiffusionPipeline.from_pretrained(tmp_path / "ae_only")


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b'{"format": "ddpm_lib.pipeline", "parts": {', "not valid JSON"),
    (b"[1, 2]", "must hold a JSON object; got list"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'{"format": "something.else", "format_version": 1}', "not a ddpm_lib pipeline file"),
    (b'{"format": "ddpm_lib.pipeline", "format_version": 99, "parts": {}, "diffusion": {}}',
     "format_version 99.*upgrade"),
    (b'{"format": "ddpm_lib.pipeline", "format_version": 1, "diffusion": {}}',
     "missing the key 'parts'"),
    (b'{"format": "ddpm_lib.pipeline", "format_version": 1, "parts": {"model": 3}, '
     b'"diffusion": {}}',
     "must be an object"),
])
def test_bad_pipeline_json_is_a_value_error_naming_the_file(tmp_path, content, message):
    pipe, _, _, _ = _pixel()
    pipe.save_pretrained(tmp_path / "p")
    os.remove(tmp_path / "p" / "manifest.json")  # as a hand-made folder: the file itself is read
    (tmp_path / "p" / "pipeline.json").write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert "pipeline.json" in str(error.value)


def test_a_damaged_saved_pipeline_is_refused(tmp_path):
    pipe, _, _, _ = _pixel()
    pipe.save_pretrained(tmp_path / "p")
    path = tmp_path / "p" / "pipeline.json"
    path.write_text(path.read_text().replace('"v"', '"x0"'))  # edited after the save
    with pytest.raises(ValueError, match="pipeline.json"):
        DiffusionPipeline.from_pretrained(tmp_path / "p")
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="pipeline.json"):
        DiffusionPipeline.from_pretrained(tmp_path / "p")


def test_bad_saved_schedule_and_unknown_classes(tmp_path):
    pipe, _, _, _ = _pixel()
    pipe.save_pretrained(tmp_path / "p")
    os.remove(tmp_path / "p" / "manifest.json")
    path = tmp_path / "p" / "pipeline.json"
    record = json.loads(path.read_text())
    record["parts"]["model"]["class"] = "my_package.nets.MysteryNet"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="'my_package.nets.MysteryNet'.*model_class=") as error:
        DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert "pipeline.json" in str(error.value)
    # model_class= overrides the saved class
    assert type(DiffusionPipeline.from_pretrained(tmp_path / "p", model_class=UNet).model) is UNet
    record["parts"]["model"]["class"] = "ddpm_lib.models.unet.UNet"
    record["diffusion"]["schedule"] = {"betas": [0.1, 2.0]}
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="schedule is not valid"):
        DiffusionPipeline.from_pretrained(tmp_path / "p")
    # a plain model folder naming an unknown class
    tiny_unet().save_pretrained(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    config["_class_name"] = "MysteryNet"
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'MysteryNet'"):
        DiffusionPipeline.from_pretrained(tmp_path / "plain")


def test_constructor_checks(tmp_path):
    schedule = NoiseSchedule.linear(SCHEDULE_T)
    model = tiny_unet()
    with pytest.raises(ValueError, match="scale_factor.*needs an autoencoder"):
        DiffusionPipeline(model, schedule, scale_factor=0.5)
    with pytest.raises(ValueError, match=r"sampler\['name'\].*euler"):
        DiffusionPipeline(model, schedule, sampler={"name": "euler"})
    with pytest.raises(TypeError, match="sampler must be a dict"):
        DiffusionPipeline(model, schedule, sampler="ddim")
    with pytest.raises(TypeError):  # not JSON: could not be saved
        DiffusionPipeline(model, schedule, sampler={"name": "ddim", "timesteps": object()})
    with pytest.raises(ValueError, match="prediction"):
        DiffusionPipeline(model, schedule, prediction="noise")
    with pytest.raises(ValueError, match="variance"):
        DiffusionPipeline(model, schedule, variance="wide")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        DiffusionPipeline(lambda x, t: x, schedule)
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        DiffusionPipeline(model, schedule.betas)
    with pytest.raises(ValueError, match="scale_factor"):
        DiffusionPipeline(model, schedule, autoencoder=tiny_autoencoder(), scale_factor=-1.0)
    # a latent pipeline without its scale factor cannot be saved
    unscaled = DiffusionPipeline(tiny_unet(in_channels=4, image_size=4), schedule,
                                 autoencoder=tiny_autoencoder())
    with pytest.raises(ValueError, match="scale"):
        unscaled.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    # defaults: eps, fixed_small (learned_range for a model that learns sigma), DDIM
    plain = DiffusionPipeline(model, schedule)
    assert (plain.prediction, plain.variance, plain.sampler_settings) == ("eps", "fixed_small", {})
    assert DiffusionPipeline(tiny_unet(learn_sigma=True), schedule).variance == "learned_range"
    assert type(plain.make_sampler()) is DDIMSampler


# ----------------------------------------------------------------------------- deprecation


def test_deprecated_loader_warns_and_still_works(runs):
    with pytest.warns(DeprecationWarning, match="DiffusionPipeline.from_pretrained"):
        from ddpm_lib.training.checkpoint import load_trained_model
    with pytest.warns(DeprecationWarning, match="DiffusionPipeline.from_pretrained"):
        from ddpm_lib.training.checkpoint import TrainedModel
    with pytest.warns(DeprecationWarning, match="load_trained_model is deprecated"):
        from ddpm_lib.training import load_trained_model as from_the_package
    with pytest.warns(DeprecationWarning, match="TrainedModel is deprecated"):
        from ddpm_lib.training import TrainedModel as TrainedModelToo
    assert from_the_package is load_trained_model and TrainedModelToo is TrainedModel
    trained = load_trained_model(runs["hybrid"])
    assert isinstance(trained, TrainedModel)
    assert (trained.prediction, trained.variance, trained.learn_sigma, trained.num_classes) == (
        "eps", "learned_range", True, 4)
    assert trained.source == runs["hybrid"] / "checkpoints" / "step_000000004"
    assert_same_weights(trained.model, DiffusionPipeline.from_pretrained(runs["hybrid"]).model)
    v = load_trained_model(runs["v"] / "ema_model", default_schedule=NoiseSchedule.cosine(5))
    assert v.prediction == "v" and v.schedule.num_timesteps == SCHEDULE_T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from ddpm_lib.training.checkpoint import CheckpointError, load_checkpoint  # noqa: F401
    with pytest.raises(ImportError):
        from ddpm_lib.training.checkpoint import NoSuchName  # noqa: F401


# ----------------------------------------------------------------------------- registry


def test_a_users_unet_subclass_is_found_by_name(tmp_path):
    schedule = NoiseSchedule.linear(SCHEDULE_T)
    model = tiny_unet(WideUNet, gain=3.0)
    assert resolve_model_class("WideUNet") is WideUNet
    assert resolve_model_class(class_path(WideUNet)) is WideUNet
    DiffusionPipeline(model, schedule, prediction="v").save_pretrained(tmp_path / "p")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(loaded.model) is WideUNet and loaded.model.gain == 3.0
    assert_same_weights(model, loaded.model)
    x, t = torch.randn(2, 3, 8, 8, generator=seeded()), torch.tensor([3, 9])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t), model(x, t))
    # from a training run's checkpoint too (meta.json names the class)
    data = torch.rand(8, 3, 8, 8, generator=seeded(1)) * 2 - 1
    trainer = Trainer(tiny_unet(WideUNet, gain=2.0), SimpleLoss(schedule, prediction="v"), data,
                      batch_size=4, out_dir=tmp_path / "run", progress=False, tensorboard=False,
                      checkpoint_every=2, sample_every=100, log_every=2, warmup_steps=0)
    trainer.train(2)
    for source in (tmp_path / "run", tmp_path / "run" / "ema_model"):
        pipe = DiffusionPipeline.from_pretrained(source)
        assert type(pipe.model) is WideUNet and pipe.model.gain == 2.0 and pipe.prediction == "v"
        assert_same_weights(pipe.model, trainer.ema_model)


def test_register_a_class_that_is_no_pretrained_model(tmp_path, monkeypatch):
    from ddpm_lib.models import registry

    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))  # undone afterwards
    schedule = NoiseSchedule.linear(SCHEDULE_T)
    unet = tiny_unet(in_channels=12, image_size=4, base_channels=12)
    autoencoder = SpaceToDepth()
    pipe = DiffusionPipeline(unet, schedule, autoencoder=autoencoder, scale_factor=0.5)
    pipe.save_pretrained(tmp_path / "p")
    name = class_path(SpaceToDepth)
    with pytest.raises(ValueError, match=f"{name}.*autoencoder_class="):
        DiffusionPipeline.from_pretrained(tmp_path / "p")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p", autoencoder_class=SpaceToDepth)
    assert type(loaded.autoencoder) is SpaceToDepth
    assert register_model_class(SpaceToDepth) is SpaceToDepth  # usable as a decorator
    assert resolve_model_class(name) is SpaceToDepth
    assert resolve_model_class("SpaceToDepth") is SpaceToDepth
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(loaded.autoencoder) is SpaceToDepth and loaded.scale_factor == 0.5
    assert_same_weights(loaded.autoencoder, autoencoder)
    with torch.no_grad():
        images, z = loaded.sample(2, sampler="ddim", num_steps=2, generator=seeded(4),
                                  return_latents=True)
    assert images.shape == (2, 3, 8, 8) and torch.equal(images, F.pixel_shuffle(z / 0.5 / 1.7, 2))
    with pytest.raises(TypeError, match="register_model_class takes a class"):
        register_model_class(SpaceToDepth())


def test_resolve_model_class_finds_the_librarys_classes_and_names_unknown_ones():
    assert resolve_model_class("UNet") is UNet
    assert resolve_model_class("ddpm_lib.models.unet.UNet") is UNet
    assert resolve_model_class("AutoencoderKL") is AutoencoderKL
    assert resolve_model_class("ddpm_lib.models.text.TextConditionedUNet") is TextConditionedUNet
    assert resolve_model_class("TextEncoder") is TextEncoder
    for name in ("my_package.MysteryNet", "MysteryNet", "ddpm_lib.models.unet.MysteryNet",
                 "ddpm_lib.no_such_module.MysteryNet"):
        with pytest.raises(ValueError, match=f"'{name}'.*register_model_class") as error:
            resolve_model_class(name, "somewhere/config.json", "autoencoder")
        assert "somewhere/config.json" in str(error.value)
        assert "autoencoder_class=" in str(error.value)
    # names outside ddpm_lib are never imported
    with pytest.raises(ValueError, match="'os.PathLike'"):
        resolve_model_class("os.PathLike")
    with pytest.raises(ValueError, match="ddpm_lib.cli.main"):
        resolve_model_class("ddpm_lib.cli.main")  # a function, not a class
    for bad in (None, "", 3):
        with pytest.raises(ValueError, match="must be a saved class name"):
            resolve_model_class(bad)
