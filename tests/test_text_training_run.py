"""A short text-to-image training run: its samples follow the prompt better than chance."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ddpm_lib.models.text")

from ddpm_lib import (  # noqa: E402
    DDIMSampler,
    NoiseSchedule,
    SimpleLoss,
    TextConditionedUNet,
    TextEncoder,
    Trainer,
    UNet,
)
from ddpm_lib.data import CaptionedShapesDataset  # noqa: E402
from ddpm_lib.metrics import evaluate_prompt_accuracy  # noqa: E402


def test_short_run_beats_the_shuffled_prompt_baseline(tmp_path) -> None:
    """Seconds of training on one easy attribute (the background: black, white or gray) give
    samples whose background matches the prompt far more often than a shuffled prompt's."""
    torch.manual_seed(0)
    backgrounds = ("black", "white", "gray")
    dataset = CaptionedShapesDataset(size=512, image_size=8, seed=0, colors=("red", "blue"),
                                     backgrounds=backgrounds, mention_probability=0.0)
    schedule = NoiseSchedule.linear(100, beta_start=1e-3, beta_end=0.2)
    model = TextConditionedUNet(
        UNet(in_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
             attention_resolutions=(4,), image_size=8, dropout=0.0, norm_groups=8, context_dim=32),
        TextEncoder(dim=32, num_layers=1, num_heads=2, max_length=72),
    )
    trainer = Trainer(model, SimpleLoss(schedule), dataset, batch_size=16, lr=3e-3,
                      warmup_steps=10, ema_decay=0.9, out_dir=tmp_path, checkpoint_every=10_000,
                      log_every=10_000, progress=False, tensorboard=False, seed=0)
    trainer.train(150)
    attributes = [{"background": backgrounds[i % 3]} for i in range(30)]
    evaluation = evaluate_prompt_accuracy(
        trainer.ema_model.eval(), DDIMSampler(schedule, num_steps=10), attributes, 8,
        guidance_scale=3.0, languages=("en", "zh"),
        generator=torch.Generator().manual_seed(0),
    )
    assert evaluation.shuffled_accuracy < 0.6  # chance: a third
    assert evaluation.accuracy >= 0.8
    assert evaluation.accuracy > evaluation.shuffled_accuracy + 0.3
