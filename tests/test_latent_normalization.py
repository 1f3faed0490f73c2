"""Per-channel normalisation of the latents (issue 32): the fit, the round trip, save / load,
folders written before it (scale-only), the cache key and an exact resume of latent training."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from ddpm_lib import DDIMSampler, DiffusionPipeline, LatentDiffusion, NoiseSchedule, SimpleLoss
from ddpm_lib import Trainer
from test_latent import TinyAutoencoder, _images, _labelled, _tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def _offset_images(n: int = 20) -> torch.Tensor:
    """Images whose channels have very different means and spreads."""
    images = _images(n)
    images[:, 0] = images[:, 0] * 0.2 + 0.6
    images[:, 2] = images[:, 2] * 0.9 - 0.1
    return images


def _fitted(images: torch.Tensor | None = None) -> LatentDiffusion:
    latents = LatentDiffusion(TinyAutoencoder())
    latents.fit_scale_factor(TensorDataset(_offset_images() if images is None else images),
                             normalization="channel", batch_size=7)
    return latents


def test_channel_fit_gives_each_channel_mean_zero_and_unit_variance():
    images = _offset_images()
    latents = _fitted(images)
    ae = latents.autoencoder
    with torch.no_grad():
        raw = ae.encode(images).mode().double()
    per_channel = raw.transpose(0, 1).flatten(1)
    torch.testing.assert_close(latents.latent_shift, per_channel.mean(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(latents.latent_scale, 1 / per_channel.std(1), rtol=1e-9, atol=0)
    assert latents.normalization == "channel"
    # the global factor is still LDM's 1 / std over every element
    assert latents.scale_factor == pytest.approx(1 / float(raw.flatten().std()), rel=1e-9)
    z = latents.encode(images).double().transpose(0, 1).flatten(1)
    torch.testing.assert_close(z.mean(1), torch.zeros(12, dtype=torch.float64), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(z.std(1), torch.ones(12, dtype=torch.float64), atol=1e-6, rtol=0)
    # the formula, element by element
    expected = (raw - latents.latent_shift.view(1, -1, 1, 1)) * \
        latents.latent_scale.view(1, -1, 1, 1)
    torch.testing.assert_close(latents.encode(images).double(), expected, rtol=1e-6, atol=1e-6)
    # a global fit afterwards removes the per-channel statistics
    latents.fit_scale_factor(TensorDataset(images), normalization="global")
    assert latents.normalization == "global" and latents.latent_shift is None


def test_channel_round_trip_is_exact_up_to_rounding():
    latents = _fitted()
    images = _offset_images(6)
    torch.testing.assert_close(latents.decode(latents.encode(images)), images, rtol=0, atol=1e-5)
    z = torch.randn(3, 12, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(latents.encode(latents.decode(z)), z, rtol=0, atol=1e-4)


def test_dead_channel_falls_back_to_the_global_spread():
    images = _offset_images()
    images[:, 1] = 0.3  # a constant image channel: 4 constant latent channels
    latents = _fitted(images)
    floor = 1e-3 / latents.scale_factor
    assert torch.isfinite(latents.latent_scale).all()
    assert float(latents.latent_scale.max()) == pytest.approx(1 / floor, rel=1e-9)


def test_save_load_keeps_the_normalisation_bitwise(tmp_path):
    latents = _fitted()
    schedule = NoiseSchedule.linear(20)
    latents.unet, latents.schedule = _tiny_unet(12), schedule
    latents.save_pretrained(tmp_path / "ldm")
    record = json.loads((tmp_path / "ldm" / "pipeline.json").read_text())["latent"]
    assert record["shift"] == latents.latent_shift.tolist()
    assert record["scale"] == latents.latent_scale.tolist()
    loaded = LatentDiffusion.from_pretrained(tmp_path / "ldm", autoencoder_class=TinyAutoencoder)
    assert torch.equal(loaded.latent_shift, latents.latent_shift)
    assert torch.equal(loaded.latent_scale, latents.latent_scale)
    images = _offset_images(4)
    assert torch.equal(loaded.encode(images), latents.encode(images))
    # the pipeline carries it too, through its constructor, save and load
    pipeline = DiffusionPipeline.from_pretrained(tmp_path / "ldm",
                                                 autoencoder_class=TinyAutoencoder)
    assert pipeline.latent.normalization == "channel"
    assert torch.equal(pipeline.latent.latent_scale, latents.latent_scale)
    pipeline.save_pretrained(tmp_path / "again")
    again = DiffusionPipeline.from_pretrained(tmp_path / "again",
                                              autoencoder_class=TinyAutoencoder)
    assert torch.equal(again.latent.latent_shift, latents.latent_shift)
    z = torch.randn(2, 12, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.latent.decode(z), latents.decode(z))


def test_scale_only_folders_load_unchanged(tmp_path):
    ae = TinyAutoencoder()
    LatentDiffusion(ae, scale_factor=0.4).save_pretrained(tmp_path / "new")
    record = json.loads((tmp_path / "new" / "pipeline.json").read_text())
    assert record["latent"] == {"scale_factor": 0.4}  # no new keys for a global model
    loaded = LatentDiffusion.from_pretrained(tmp_path / "new", autoencoder_class=TinyAutoencoder)
    assert loaded.normalization == "global" and loaded.latent_shift is None
    images = _images(3)
    with torch.no_grad():
        expected = ae.encode(images).mode() * 0.4
    assert torch.equal(loaded.encode(images), expected)
    # the folder of the version before the bundle: latent_diffusion.json
    old = tmp_path / "old"
    ae.save_pretrained(old / "autoencoder")
    (old / "latent_diffusion.json").write_text(json.dumps({
        "format_version": 1, "autoencoder_class": "test_latent.TinyAutoencoder",
        "scale_factor": 0.4}))
    legacy = LatentDiffusion.from_pretrained(old, autoencoder_class=TinyAutoencoder)
    assert legacy.normalization == "global" and torch.equal(legacy.encode(images), expected)


def test_bad_channel_statistics_name_the_argument(tmp_path):
    ae = TinyAutoencoder()
    with pytest.raises(ValueError, match="latent_shift and latent_scale go together"):
        LatentDiffusion(ae, latent_shift=[0.0] * 12)
    with pytest.raises(ValueError, match="latent_scale must have 12 values"):
        LatentDiffusion(ae, latent_shift=[0.0] * 12, latent_scale=[1.0] * 4)
    with pytest.raises(ValueError, match="latent_scale must hold positive finite"):
        LatentDiffusion(ae, latent_shift=[0.0] * 12, latent_scale=[1.0] * 11 + [0.0])
    with pytest.raises(TypeError, match="latent_shift must be a sequence"):
        LatentDiffusion(ae, latent_shift="0", latent_scale=[1.0] * 12)
    with pytest.raises(ValueError, match="normalization"):
        LatentDiffusion(ae).fit_scale_factor(_images(4), normalization="layer")
    LatentDiffusion(ae, 0.5, latent_shift=[0.0] * 12,
                    latent_scale=[1.0] * 12).save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "pipeline.json"
    record = json.loads(path.read_text())
    record["latent"]["scale"] = "wide"
    path.write_text(json.dumps(record))
    (tmp_path / "m" / "manifest.json").unlink()  # edited on purpose
    with pytest.raises(ValueError, match="latent 'scale' must be a list of numbers"):
        LatentDiffusion.from_pretrained(tmp_path / "m", autoencoder_class=TinyAutoencoder)


def test_cache_is_invalidated_when_the_normalisation_changes(tmp_path):
    latents = LatentDiffusion(TinyAutoencoder())
    dataset = TensorDataset(_offset_images(8), torch.arange(8) % 2)
    latents.fit_scale_factor(dataset, normalization="global")
    first = latents.encode_dataset(dataset, tmp_path, progress=False)
    latents.fit_scale_factor(dataset, normalization="channel")
    second = latents.encode_dataset(dataset, tmp_path, progress=False)
    assert not second.from_cache and not torch.equal(second.latents, first.latents)
    shift, scale = latents.latent_shift, latents.latent_scale
    latents.set_channel_normalization(shift, scale * 1.01)
    third = latents.encode_dataset(dataset, tmp_path, progress=False)
    assert not third.from_cache
    latents.set_channel_normalization(shift, scale)
    fourth = latents.encode_dataset(dataset, tmp_path, progress=False)
    assert not fourth.from_cache and torch.equal(fourth.latents, second.latents)
    assert latents.encode_dataset(dataset, tmp_path, progress=False).from_cache


def _trainer(data, out, latents: LatentDiffusion) -> Trainer:
    schedule = NoiseSchedule.linear(50)
    sampler = DDIMSampler(schedule, num_steps=2, clip_denoised=False, prediction="v")
    return Trainer(_tiny_unet(12, num_classes=2),
                   SimpleLoss(schedule, prediction="v", min_snr_gamma=5.0), data, batch_size=4,
                   out_dir=out, random_flip=False, warmup_steps=0, lr=1e-3, log_every=100,
                   checkpoint_every=2, sample_every=1000, num_samples=2,
                   sampler=latents.decoding_sampler(sampler), progress=False,
                   tensorboard=False, seed=0)


def test_latent_training_on_normalised_latents_resumes_exactly(tmp_path):
    latents = _fitted()
    dataset = TensorDataset(_offset_images(12), torch.arange(12) % 2)
    data = latents.encode_dataset(dataset, tmp_path / "latents", progress=False)
    straight = _trainer(data, tmp_path / "straight", latents)
    straight.train(4)
    first = _trainer(data, tmp_path / "resumed", latents)
    first.train(2)
    # a fresh process: the model is loaded back, the latents come from the cache
    reloaded = LatentDiffusion(TinyAutoencoder(), latents.scale_factor,
                               latent_shift=latents.latent_shift,
                               latent_scale=latents.latent_scale)
    cached = reloaded.encode_dataset(dataset, tmp_path / "latents", progress=False)
    assert cached.from_cache
    second = _trainer(cached, tmp_path / "resumed", reloaded)
    assert second.resumed_from is not None and second.step == 2
    second.train(4)
    a, b = straight.ema_model.state_dict(), second.ema_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sampler = DDIMSampler(NoiseSchedule.linear(50), num_steps=3, clip_denoised=False,
                          prediction="v")
    images = reloaded.sample(sampler, second.ema_model, 2, model_kwargs={"y": torch.arange(2)},
                             generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()


def test_labelled_helper_still_fits_globally():
    # the default stays LDM's global factor: old scripts get the latents they always got
    latents = LatentDiffusion(TinyAutoencoder())
    latents.fit_scale_factor(_labelled(6))
    assert latents.normalization == "global"
