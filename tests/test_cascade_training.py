"""Training a super-resolution stage with the Trainer: augmentation draws, exact resume,
grids, export, and a cascade of exported stages."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ddpm_lib import (
    Cascade,
    NoiseAugmentation,
    NoiseSchedule,
    SimpleLoss,
    SuperResolutionPairs,
    Trainer,
    UNet,
)
from ddpm_lib.cascade import AUGMENTATION_FILE, read_augmentation
from ddpm_lib.samplers import DDIMSampler
from ddpm_lib.shapes import ShapesDataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _sr_unet(**overrides) -> UNet:
    config = {"in_channels": 3, "cond_channels": 3, "base_channels": 8, "channel_mults": (1, 2),
              "num_res_blocks": 1, "attention_resolutions": (), "image_size": 16,
              "norm_groups": 4, "dropout": 0.1}
    config.update(overrides)
    return UNet(**config)


def _trainer(out_dir, model=None, **overrides) -> Trainer:
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.3)
    torch.manual_seed(0)  # the same initial weights in every call
    model = model if model is not None else _sr_unet()
    options = {"batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "out_dir": out_dir,
               "log_every": 1, "checkpoint_every": 3, "progress": False, "tensorboard": False,
               "seed": 3,
               "noise_augmentation": NoiseAugmentation(schedule, max_level=30, sample_level=5)}
    options.update(overrides)
    pairs = SuperResolutionPairs(ShapesDataset(size=10, image_size=16), 2)
    return Trainer(model, SimpleLoss(schedule), pairs, **options)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in trainer.ema_model.state_dict().items()})
    return out


def test_augmented_training_resumes_exactly(tmp_path) -> None:
    reference = _trainer(tmp_path / "once")
    reference.train(6)
    first = _trainer(tmp_path / "split")
    first.train(4)
    second = _trainer(tmp_path / "split")
    assert second.step == 4 and second.resumed_from is not None
    second.train(6)
    expected, got = _state(reference), _state(second)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    # another augmentation (other draws) trains other weights: the draws reach the model
    other = _trainer(tmp_path / "other", noise_augmentation=NoiseAugmentation(
        NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.3), max_level=49, sample_level=5))
    other.train(6)
    assert not torch.equal(_state(other)["model.out.conv.weight"],
                           expected["model.out.conv.weight"])


def test_the_loss_sees_augmented_conditions_and_their_levels(tmp_path) -> None:
    seen: list[dict] = []

    class Spy(UNet):
        def forward(self, x, t, y=None, **kwargs):
            seen.append({k: v.detach().clone() for k, v in kwargs.items()})
            return super().forward(x, t, y, **kwargs)

    torch.manual_seed(0)
    spy = Spy(**_sr_unet().config)
    trainer = _trainer(tmp_path / "spy", model=spy, random_flip=False)
    trainer.train(1)
    batch = seen[0]
    assert batch["cond_image"].shape == (4, 3, 8, 8) and batch["noise_level"].shape == (4,)
    assert batch["noise_level"].dtype == torch.long and int(batch["noise_level"].max()) <= 30
    clean = torch.stack([trainer.dataset[i][1] for i in range(len(trainer.dataset))])
    # every condition is a corrupted copy of one of the clean low-res images
    assert not any(torch.allclose(batch["cond_image"][0], image) for image in clean)


def test_grids_show_low_res_sample_original_and_export_keeps_the_augmentation(tmp_path) -> None:
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.3)
    trainer = _trainer(tmp_path / "run", sample_every=2, num_samples=2,
                       sampler=DDIMSampler(schedule, num_steps=2))
    trainer.train(2)
    grids = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert grids, "no sample grid written"
    width, height = Image.open(grids[-1]).size
    assert width > height  # 3 columns (low-res | sample | original), 2 rows
    exported = tmp_path / "run" / "ema_model"
    assert (exported / AUGMENTATION_FILE).is_file()
    assert read_augmentation(exported).sample_level == 5

    base_trainer = Trainer(
        UNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
             image_size=8, norm_groups=4),
        SimpleLoss(schedule), ShapesDataset(size=4, image_size=8), batch_size=2,
        out_dir=tmp_path / "base", progress=False, tensorboard=False, warmup_steps=1)
    base_trainer.train(1)
    cascade = Cascade([tmp_path / "base" / "ema_model", exported])
    assert cascade.stages[1].augmentation.sample_level == 5
    images = cascade.sample(2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16)


def test_a_random_flip_flips_the_low_res_condition_with_the_image(tmp_path) -> None:
    seen: list[tuple] = []

    class Spy(UNet):
        def forward(self, x, t, y=None, **kwargs):
            seen.append((x.detach().clone(), kwargs["cond_image"].detach().clone()))
            return super().forward(x, t, y, **kwargs)

    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.3)
    spy = Spy(**_sr_unet().config)
    pairs = SuperResolutionPairs(ShapesDataset(size=8, image_size=16, jitter=0.4), 2)
    trainer = Trainer(spy, _X0Loss(schedule), pairs, batch_size=8, out_dir=tmp_path / "flip",
                      progress=False, tensorboard=False, random_flip=True, seed=1)
    trainer.train(1)
    x0, cond = seen[0]
    # the condition is the downsampled training image, flipped or not
    torch.testing.assert_close(cond, torch.nn.functional.avg_pool2d(x0, 2))
    originals = [pairs[i][0] for i in range(8)]
    was_flipped = [not any(torch.equal(image, original) for original in originals)
                   for image in x0]
    assert any(was_flipped), "no image of the batch was flipped: the test shows nothing"


class _X0Loss:
    """Calls the model on the clean images (t = 0), so a spy sees x0 itself."""

    def __init__(self, schedule):
        self.num_timesteps = schedule.num_timesteps

    def __call__(self, model, x0, t=None, noise=None, **kwargs):
        return model(x0, torch.zeros_like(t), **kwargs).pow(2).mean()
