"""``ddpm-lib train --super-resolution`` and ``ddpm-lib sample`` on a cascade."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ddpm_lib import Cascade
from ddpm_lib.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--dataset-size", "8", "--base-channels", "8", "--channel-mults", "1,2",
        "--attention-resolutions", "", "--steps", "2", "--batch-size", "4",
        "--num-timesteps", "20", "--no-progress", "--warmup-steps", "1"]


def test_train_an_upsampler_and_sample_the_cascade(tmp_path) -> None:
    base, sr, cascade = tmp_path / "base", tmp_path / "sr", tmp_path / "cascade"
    assert main(["train", "--out", str(base), "--image-size", "8", *TINY]) == 0
    assert main(["train", "--out", str(sr), "--image-size", "16", "--super-resolution", "2",
                 "--augmentation-level", "50", *TINY]) == 0
    assert (sr / "ema_model" / "noise_augmentation.json").is_file()
    out = tmp_path / "c.png"
    assert main(["sample", str(base), "--stage", str(sr), "--save-cascade", str(cascade),
                 "--num", "2", "--nrow", "2", "--out", str(out), "--no-progress"]) == 0
    assert Image.open(out).size == (2 * 16 + 3 * 2, 16 + 2 * 2)  # two 16x16 images, padded
    loaded = Cascade.from_pretrained(cascade)
    assert loaded.factors == [2] and loaded.stages[1].augmentation.sample_level == 50
    npz = tmp_path / "c.npz"
    assert main(["sample", str(cascade), "--noise-level", "10", "--num", "2", "--npz", str(npz),
                 "--no-progress"]) == 0
    import numpy as np

    assert np.load(npz)["arr_0"].shape == (2, 16, 16, 3)
    assert torch.is_tensor(loaded.sample(1))


def test_cascade_options_are_checked(tmp_path, capsys) -> None:
    base = tmp_path / "base"
    assert main(["train", "--out", str(base), "--image-size", "8", *TINY]) == 0
    assert main(["sample", str(base), "--noise-level", "3"]) == 2
    assert "--noise-level is for a cascade" in capsys.readouterr().err
    assert main(["sample", str(base), "--stage", str(base)]) == 2
    assert "not a super-resolution model" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--augmentation-level", "5"]) == 2
    assert "--super-resolution FACTOR" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--super-resolution", "2",
                 "--augmentation-max-level", "1000"]) == 2
    assert "[0, 999]" in capsys.readouterr().err
