"""LatentDiffusion: scale factor, encode/decode, the latent cache, save/load, training on latents.

The autoencoder here is a tiny exactly invertible stand-in (space-to-depth with a learnable gain
and bias), so a round trip through ``encode``/``decode`` must give the images back exactly,
and it counts its encoder calls, so cache hits are observable.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from ddpm_lib import DDIMSampler, DDPMSampler, LatentDiffusion, NoiseSchedule, SimpleLoss, Trainer, UNet
from ddpm_lib import latent as latent_module
from ddpm_lib.latent import CACHE_FILE, LatentDataset

pytestmark = pytest.mark.usefixtures("one_thread")


class Posterior:
    """A diagonal Gaussian with the DiagonalGaussian interface."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.mean = mean
        self.std = log_std.exp().expand_as(mean)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + self.std * noise


class TinyAutoencoder(nn.Module):
    """Space-to-depth by ``f`` with ``z = gain * unshuffle(x) + bias``: exactly invertible."""

    def __init__(self, in_channels: int = 3, levels: int = 2, variant: str = "a") -> None:
        super().__init__()
        self.factor = 2 ** (levels - 1)
        self.config = {"in_channels": in_channels, "latent_channels": in_channels * self.factor ** 2,
                       "channel_mults": [1] * levels, "variant": variant}
        self.gain = nn.Parameter(torch.tensor(3.0))
        self.bias = nn.Parameter(torch.tensor(0.5))
        self.log_std = nn.Parameter(torch.tensor(-3.0))
        self.encode_calls = 0

    def encode(self, x: torch.Tensor) -> Posterior:
        self.encode_calls += 1
        return Posterior(F.pixel_unshuffle(x, self.factor) * self.gain + self.bias, self.log_std)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle((z - self.bias) / self.gain, self.factor)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> TinyAutoencoder:
        from safetensors.torch import load_file

        config = json.loads((Path(directory) / "config.json").read_text())
        model = cls(config["in_channels"], len(config["channel_mults"]), config["variant"])
        model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
        return model


class Captioned(Dataset):
    """(image, caption) items."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self.images[index], f"picture {index} — 图 {index}"


def _images(n: int = 12, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, channels, size, size), generator=generator) * 2 - 1


def _labelled(n: int = 12, seed: int = 0) -> TensorDataset:
    return TensorDataset(_images(n, seed=seed), torch.arange(n) % 3)


# ----------------------------------------------------------------------------- scale / round trip


def test_scale_factor_is_one_over_std_of_latents():
    ae = TinyAutoencoder()
    dataset = _labelled(20)
    latents = LatentDiffusion(ae)
    scale = latents.fit_scale_factor(dataset, batch_size=7, normalization="global")
    with torch.no_grad():
        direct = 1.0 / ae.encode(dataset.tensors[0]).mode().double().flatten().std()
    assert scale == pytest.approx(float(direct), rel=1e-9)
    assert latents.scale_factor == scale
    # a tensor of images gives the same value; the scaled latents have unit std
    assert LatentDiffusion(ae).fit_scale_factor(dataset.tensors[0]) == pytest.approx(scale, rel=1e-12)
    assert float(latents.encode(dataset.tensors[0]).double().std()) == pytest.approx(1.0, rel=1e-6)


def test_scale_factor_on_a_subset_uses_evenly_spaced_items():
    ae = TinyAutoencoder()
    images = _images(30)
    scale = LatentDiffusion(ae).fit_scale_factor(TensorDataset(images), num_samples=4)
    chosen = images[[0, 10, 19, 29]]  # linspace(0, 29, 4) rounded
    with torch.no_grad():
        direct = 1.0 / ae.encode(chosen).mode().double().std()
    assert scale == pytest.approx(float(direct), rel=1e-9)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_encode_decode_round_trip_with_scale(levels):
    ae = TinyAutoencoder(levels=levels)
    f = 2 ** (levels - 1)
    latents = LatentDiffusion(ae, scale_factor=0.37)
    images = _images(4, size=8)
    z = latents.encode(images)
    assert z.shape == (4, 3 * f * f, 8 // f, 8 // f)
    torch.testing.assert_close(z, ae.encode(images).mode() * 0.37, rtol=0, atol=0)
    torch.testing.assert_close(latents.decode(z), images, rtol=1e-6, atol=1e-6)
    # a posterior sample is reproducible with a generator and differs from the mean
    a = latents.encode(images, generator=torch.Generator().manual_seed(1), sample=True)
    b = latents.encode(images, generator=torch.Generator().manual_seed(1), sample=True)
    assert torch.equal(a, b) and not torch.equal(a, z)


# ----------------------------------------------------------------------------- the cache


def test_cache_is_reused_without_calling_the_encoder(tmp_path):
    ae = TinyAutoencoder()
    latents = LatentDiffusion(ae)
    dataset = _labelled(10)
    latents.fit_scale_factor(dataset)
    before = ae.encode_calls
    first = latents.encode_dataset(dataset, tmp_path / "cache", batch_size=4, progress=False)
    assert not first.from_cache and (tmp_path / "cache" / CACHE_FILE).is_file()
    calls = ae.encode_calls
    assert calls - before == 3  # ceil(10 / 4) batches
    again = latents.encode_dataset(dataset, tmp_path / "cache", batch_size=4, progress=False)
    assert again.from_cache and ae.encode_calls == calls
    assert torch.equal(again.latents, first.latents)
    for index in range(len(dataset)):
        z, label = again[index]
        assert label == int(dataset[index][1]) and isinstance(label, int)
        torch.testing.assert_close(z, latents.encode(dataset[index][0][None])[0], rtol=0, atol=0)
    # a fresh LatentDiffusion with an identical autoencoder (same weights, config) reuses it too
    twin = TinyAutoencoder()
    reused = LatentDiffusion(twin, latents.scale_factor).encode_dataset(
        dataset, tmp_path / "cache", progress=False)
    assert reused.from_cache and twin.encode_calls == 0


@pytest.mark.parametrize("change", ["weights", "config", "scale", "dataset", "sample"])
def test_cache_is_invalidated(tmp_path, change):
    ae = TinyAutoencoder()
    latents = LatentDiffusion(ae, scale_factor=0.5)
    dataset = _labelled(6)
    first = latents.encode_dataset(dataset, tmp_path, progress=False)
    options = {}
    if change == "weights":
        with torch.no_grad():
            ae.bias += 1e-3
    elif change == "config":
        ae.config["variant"] = "b"
    elif change == "scale":
        latents.scale_factor = 0.25
    elif change == "dataset":
        dataset = _labelled(6, seed=1)
    else:
        options = {"sample": True}
    calls = ae.encode_calls
    second = latents.encode_dataset(dataset, tmp_path, progress=False, **options)
    assert not second.from_cache and ae.encode_calls > calls
    if change != "config":  # the stand-in's config does not change its output
        assert not torch.equal(second.latents, first.latents)
    # and the new cache is the one reused next time
    third = latents.encode_dataset(dataset, tmp_path, progress=False, **options)
    assert third.from_cache and torch.equal(third.latents, second.latents)


def test_interrupted_cache_write_is_not_trusted(tmp_path, monkeypatch):
    ae = TinyAutoencoder()
    latents = LatentDiffusion(ae, scale_factor=1.0)
    dataset = _labelled(8)

    # killed between writing the temporary file and renaming it: no cache appears
    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(latent_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        latents.encode_dataset(dataset, tmp_path, progress=False)
    monkeypatch.undo()
    assert not (tmp_path / CACHE_FILE).exists()
    good = latents.encode_dataset(dataset, tmp_path, progress=False)
    assert not good.from_cache
    data = (tmp_path / CACHE_FILE).read_bytes()

    # a truncated file (a copy cut short, a full disk) is detected and rebuilt
    (tmp_path / CACHE_FILE).write_bytes(data[: len(data) - 100])
    calls = ae.encode_calls
    rebuilt = latents.encode_dataset(dataset, tmp_path, progress=False)
    assert not rebuilt.from_cache and ae.encode_calls > calls
    assert torch.equal(rebuilt.latents, good.latents)
    # so is a flipped byte inside the latents (same size, valid header)
    corrupted = bytearray(data)
    corrupted[-5] ^= 0xFF
    (tmp_path / CACHE_FILE).write_bytes(bytes(corrupted))
    assert not latents.encode_dataset(dataset, tmp_path, progress=False).from_cache
    assert latents.encode_dataset(dataset, tmp_path, progress=False).from_cache


def test_items_keep_their_shape_captions_and_labels(tmp_path):
    ae = TinyAutoencoder()
    latents = LatentDiffusion(ae, scale_factor=2.0)
    images = _images(5)
    captioned = latents.encode_dataset(Captioned(images), tmp_path / "c", progress=False)
    assert captioned[3][1] == "picture 3 — 图 3"
    cached = latents.encode_dataset(Captioned(images), tmp_path / "c", progress=False)
    assert cached.from_cache and [item[1] for item in cached] == [item[1] for item in captioned]
    single = latents.encode_dataset(TensorDataset(images), tmp_path / "s", progress=False)
    assert isinstance(single[0], tuple) and len(single[0]) == 1
    bare = latents.encode_dataset(list(images), tmp_path / "b", progress=False)
    assert isinstance(bare[0], torch.Tensor) and bare[0].shape == (12, 4, 4)
    assert latents.encode_dataset(list(images), tmp_path / "b", progress=False).from_cache


# ----------------------------------------------------------------------------- models


def _tiny_unet(channels: int, num_classes: int | None = None) -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=channels, base_channels=16, channel_mults=(1,), num_res_blocks=1,
                attention_resolutions=(), image_size=4, dropout=0.0, num_classes=num_classes,
                norm_groups=4)


def test_save_and_load_a_whole_latent_model_bitwise(tmp_path):
    ae = TinyAutoencoder()
    with torch.no_grad():
        ae.gain.fill_(2.5)
    schedule = NoiseSchedule.cosine(50)
    model = LatentDiffusion(ae, scale_factor=0.731, unet=_tiny_unet(12), schedule=schedule,
                            prediction="v")
    model.save_pretrained(tmp_path / "ldm")
    loaded = LatentDiffusion.from_pretrained(tmp_path / "ldm", autoencoder_class=TinyAutoencoder)
    assert loaded.scale_factor == model.scale_factor and loaded.prediction == "v"
    assert isinstance(loaded.unet, UNet)
    for mine, theirs in ((model.autoencoder, loaded.autoencoder), (model.unet, loaded.unet)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(loaded.schedule.betas, schedule.betas)
    sampler = DDIMSampler(schedule, num_steps=3, clip_denoised=False, prediction="v")
    model.unet.eval()
    first = model.sample(sampler, n=2, generator=torch.Generator().manual_seed(3))
    second = loaded.sample(sampler, n=2, generator=torch.Generator().manual_seed(3))
    assert first.shape == (2, 3, 8, 8) and torch.equal(first, second)
    # the UNet folder is also an ordinary pretrained folder with its schedule
    from ddpm_lib.training.checkpoint import load_trained_model

    trained = load_trained_model(tmp_path / "ldm" / "unet")
    assert trained.prediction == "v" and torch.equal(trained.schedule.betas, schedule.betas)
    # an autoencoder class outside ddpm_lib must be given explicitly
    with pytest.raises(ValueError, match="autoencoder_class"):
        LatentDiffusion.from_pretrained(tmp_path / "ldm")


def test_train_and_sample_end_to_end_on_latents(tmp_path):
    ae = TinyAutoencoder()
    latents = LatentDiffusion(ae)
    dataset = TensorDataset(_images(16), torch.arange(16) % 4)
    latents.fit_scale_factor(dataset)
    data = latents.encode_dataset(dataset, tmp_path / "latents", progress=False)
    assert float(data.latents.abs().max()) > 1  # outside [-1, 1]: the Trainer must accept it
    schedule = NoiseSchedule.linear(100)
    unet = _tiny_unet(12, num_classes=4)
    sampler = DDPMSampler(schedule, num_steps=4, clip_denoised=False)
    calls = ae.encode_calls
    trainer = Trainer(unet, SimpleLoss(schedule), data, batch_size=4, out_dir=tmp_path / "run",
                      random_flip=False, warmup_steps=0, lr=1e-3, log_every=2,
                      checkpoint_every=100, sample_every=3, num_samples=4,
                      sampler=latents.decoding_sampler(sampler), progress=False,
                      tensorboard=False)
    trainer.train(3)
    assert ae.encode_calls == calls  # training never runs the encoder
    grids = list((tmp_path / "run" / "samples").glob("*.png"))
    assert len(grids) == 1
    from PIL import Image

    width, height = Image.open(grids[0]).size
    assert width > 4 * 8 * 2  # decoded 8x8 images (upscaled), not 4x4 latents
    images, z = latents.sample(sampler, trainer.ema_model, 4, model_kwargs={"y": torch.arange(4)},
                               generator=torch.Generator().manual_seed(0), return_latents=True)
    assert images.shape == (4, 3, 8, 8) and z.shape == (4, 12, 4, 4)
    assert torch.isfinite(images).all()
    torch.testing.assert_close(images, latents.decode(z), rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_bad_scale_factor(value):
    with pytest.raises(ValueError, match="scale_factor must be a positive finite number"):
        LatentDiffusion(TinyAutoencoder(), scale_factor=value)
    latents = LatentDiffusion(TinyAutoencoder())
    with pytest.raises(ValueError, match="scale_factor"):
        latents.scale_factor = value
    with pytest.raises(TypeError, match="scale_factor"):
        LatentDiffusion(TinyAutoencoder(), scale_factor="0.18")


def test_bad_input_names_what_to_change(tmp_path):
    latents = LatentDiffusion(TinyAutoencoder())  # f = 2, 12 latent channels
    with pytest.raises(ValueError, match="before the scale factor is known: call fit_scale_factor"):
        latents.decode(torch.zeros(1, 12, 4, 4))
    with pytest.raises(ValueError, match="before the scale factor"):
        latents.encode_dataset(_labelled(4), tmp_path, progress=False)
    latents.scale_factor = 1.0
    with pytest.raises(ValueError, match="latents must have 12 channels"):
        latents.decode(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"latents must be a float tensor \(B, 12, h, w\)"):
        latents.decode(torch.zeros(12, 4, 4))
    with pytest.raises(ValueError, match="multiple of the autoencoder's downsampling factor f=2"):
        latents.encode(torch.zeros(1, 3, 9, 8))
    with pytest.raises(ValueError, match="images must have 3 channels"):
        latents.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="multiple of the autoencoder's downsampling factor"):
        latents.encode_dataset(TensorDataset(torch.zeros(2, 3, 7, 7)), tmp_path, progress=False)
    clipping = DDIMSampler(NoiseSchedule.linear(10), num_steps=2)
    with pytest.raises(ValueError, match="clip_denoised=False"):
        latents.sample(clipping, _tiny_unet(12), 2)
    with pytest.raises(ValueError, match="clip_denoised=False"):
        latents.decoding_sampler(clipping)
    unclipped = DDIMSampler(NoiseSchedule.linear(10), num_steps=2, clip_denoised=False)
    with pytest.raises(ValueError, match="takes 4 input channels"):
        latents.sample(unclipped, _tiny_unet(4), 2)
    with pytest.raises(ValueError, match="multiple"):
        latents.sample(unclipped, _tiny_unet(12), 2, image_size=10 + 1)
    with pytest.raises(TypeError, match="autoencoder must be a torch.nn.Module"):
        LatentDiffusion(object())
    with pytest.raises(TypeError, match="field 1 of the dataset items"):
        latents.encode_dataset([(torch.zeros(3, 8, 8), [1, 2])], tmp_path, progress=False)


def test_latent_dataset_is_exported():
    import ddpm_lib

    assert ddpm_lib.LatentDataset is LatentDataset
    assert "LatentDiffusion" in dir(ddpm_lib)


# ----------------------------------------------------------------------------- the real autoencoder


def _real_autoencoder():
    from ddpm_lib import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, latent_channels=4, base_channels=8, channel_mults=(1, 2),
                         num_res_blocks=1, attention=False, norm_groups=4)


def test_with_autoencoder_kl_save_load_and_cache(tmp_path):
    ae = _real_autoencoder().eval()
    latents = LatentDiffusion(ae)
    assert (latents.in_channels, latents.latent_channels, latents.downsampling_factor) == (3, 4, 2)
    dataset = _labelled(6)
    latents.fit_scale_factor(dataset)
    data = latents.encode_dataset(dataset, tmp_path / "cache", progress=False)
    with torch.no_grad():
        torch.testing.assert_close(data.latents, ae.encode(dataset.tensors[0]).mean
                                   * latents.scale_factor, rtol=1e-6, atol=1e-6)
    model = LatentDiffusion(ae, latents.scale_factor, unet=_tiny_unet(4),
                            schedule=NoiseSchedule.linear(20))
    model.save_pretrained(tmp_path / "ldm")
    loaded = LatentDiffusion.from_pretrained(tmp_path / "ldm")  # classes found by name
    assert type(loaded.autoencoder) is type(ae) and loaded.scale_factor == model.scale_factor
    a, b = ae.state_dict(), loaded.autoencoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.decode(z), loaded.decode(z))
    # the loaded autoencoder hashes the same: the cache stays valid
    again = LatentDiffusion(loaded.autoencoder, loaded.scale_factor).encode_dataset(
        dataset, tmp_path / "cache", progress=False)
    assert again.from_cache


def test_cli_trains_on_latents_and_samples_decoded_images(tmp_path, capsys):
    from PIL import Image

    from ddpm_lib.cli import main

    ae = _real_autoencoder()
    ae.save_pretrained(tmp_path / "ae")
    out = tmp_path / "ldm"
    tiny = ["--image-size", "8", "--dataset-size", "16", "--batch-size", "8",
            "--base-channels", "8", "--channel-mults", "1", "--num-res-blocks", "1",
            "--attention-resolutions", "", "--num-timesteps", "20", "--log-every", "2",
            "--checkpoint-every", "2", "--sample-every", "2", "--num-samples", "4",
            "--warmup-steps", "1", "--no-progress"]
    assert main(["train", "--autoencoder", str(tmp_path / "ae"), "--out", str(out),
                 "--steps", "2", "--class-conditional", *tiny]) == 0
    assert "scale factor" in capsys.readouterr().err
    assert (out / "latents" / CACHE_FILE).is_file() and (out / "unet" / "config.json").is_file()
    meta = json.loads((out / "checkpoints" / "step_000000002" / "meta.json").read_text())
    assert meta["image_shape"] == [4, 4, 4] and meta["trainer"]["random_flip"] is False
    assert Image.open(out / "samples" / "step_000000002.png").size[0] > 4 * 4 * 16
    # resuming reads the latents from the cache
    assert main(["train", "--autoencoder", str(tmp_path / "ae"), "--out", str(out),
                 "--steps", "4", *tiny]) == 0
    assert "latents read from" in capsys.readouterr().err
    # sample decodes: 8x8 RGB images, from the run folder and from a saved latent model
    import numpy as np

    LatentDiffusion.from_pretrained(out).save_pretrained(tmp_path / "model")
    for source in (out, tmp_path / "model"):
        npz = tmp_path / f"{source.name}.npz"
        assert main(["sample", str(source), "--num", "4", "--steps", "3", "--no-progress",
                     "--out", str(tmp_path / f"{source.name}.png"), "--npz", str(npz)]) == 0
        assert np.load(npz)["arr_0"].shape == (4, 8, 8, 3)
    # another autoencoder cannot continue this run
    other = _real_autoencoder()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    other.save_pretrained(tmp_path / "other")
    assert main(["train", "--autoencoder", str(tmp_path / "other"), "--out", str(out),
                 "--steps", "6", "--no-progress"]) == 2
    assert "started with another autoencoder" in capsys.readouterr().err


def test_cli_trains_an_autoencoder_then_a_latent_model_on_it(tmp_path, capsys):
    pytest.importorskip("ddpm_lib.autoencoder_loss")
    from ddpm_lib.cli import main

    ae_run = tmp_path / "ae"
    assert main(["train-autoencoder", "--out", str(ae_run), "--image-size", "24",
                 "--dataset-size", "16", "--batch-size", "4", "--base-channels", "8",
                 "--channel-mults", "1,2", "--steps", "2", "--checkpoint-every", "2",
                 "--warmup-steps", "1", "--adversarial-start", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "reconstruction PSNR" in err and (ae_run / "reconstructions.png").is_file()
    assert (ae_run / "ema_model" / "config.json").is_file()
    out = tmp_path / "ldm"
    assert main(["train", "--autoencoder", str(ae_run), "--out", str(out), "--image-size", "24",
                 "--dataset-size", "8", "--batch-size", "4", "--base-channels", "8",
                 "--channel-mults", "1", "--attention-resolutions", "", "--num-timesteps", "10",
                 "--steps", "1", "--sample-every", "100", "--no-progress"]) == 0
    assert LatentDiffusion.from_pretrained(out).unet.config["in_channels"] == 4
    assert main(["train-autoencoder", "--out", str(tmp_path / "x"), "--data", "shapes",
                 "--image-size", "10", "--channel-mults", "1,2,2", "--base-channels", "8"]) == 2
    assert "not a multiple of the downsampling factor 4" in capsys.readouterr().err


# ----------------------------------------------------------------------------- text in latent space


def test_text_to_image_in_latent_space(tmp_path):
    """Captions survive the latent cache, a TextConditionedUNet trains on (latent, caption) items
    with the Trainer, samples decode with prompts and negative prompts, and the whole latent
    text model saves to and loads from one folder."""
    from ddpm_lib import TextConditionedUNet, TextEncoder

    ae = TinyAutoencoder()
    latents = LatentDiffusion(ae)
    dataset = Captioned(_images(8))
    latents.fit_scale_factor(dataset)
    data = latents.encode_dataset(dataset, tmp_path / "latents", progress=False)
    assert data[3][1] == dataset[3][1]  # the caption, unchanged
    torch.manual_seed(0)
    unet = UNet(in_channels=12, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                attention_resolutions=(2,), image_size=4, dropout=0.0, norm_groups=4,
                context_dim=16)
    model = TextConditionedUNet(unet, TextEncoder(dim=16, num_layers=1, num_heads=2,
                                                  max_length=24))
    schedule = NoiseSchedule.linear(100)
    sampler = DDPMSampler(schedule, num_steps=4, clip_denoised=False)
    trainer = Trainer(model, SimpleLoss(schedule), data, batch_size=4, out_dir=tmp_path / "run",
                      random_flip=False, warmup_steps=0, lr=1e-3, log_every=2,
                      checkpoint_every=100, sampler=sampler, progress=False, tensorboard=False)
    before = [p.detach().clone() for p in model.text_encoder.parameters()]
    trainer.train(3)
    # the text encoder trains jointly (its gradient is zero until the zero-initialised layers
    # that read the text have moved, after the first step)
    assert trainer.model is model
    assert any(not torch.equal(a, b) for a, b in zip(before, model.text_encoder.parameters()))
    prompts = ["picture 1 — 图 1", "a red circle"]
    images = latents.sample(sampler, model, 2, model_kwargs=model.encode_prompts(prompts),
                            guidance_scale=3.0,
                            unconditional_kwargs=model.encode_prompts(["blurry", ""]),
                            generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8) and bool(torch.isfinite(images).all())

    latents.unet, latents.schedule = model, schedule
    latents.save_pretrained(tmp_path / "model")
    loaded = LatentDiffusion.from_pretrained(tmp_path / "model", autoencoder_class=TinyAutoencoder)
    assert type(loaded.unet) is TextConditionedUNet
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.unet.state_dict().items()):
        assert torch.equal(a, b), name
