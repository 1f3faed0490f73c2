"""``ddpm-lib train --model dit-s/2`` (a preset shrunk by overrides), then ``sample``, ``fid`` and
``bpd`` of the run through its bundle; the options of the wrong backbone as one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lib.cli import fid as fid_cli
from ddpm_lib.cli import main

TINY_DIT = [
    "--model", "dit-s/2", "--hidden-size", "16", "--depth", "2", "--num-heads", "2",
    "--image-size", "8", "--dataset-size", "32", "--batch-size", "8", "--num-timesteps", "20",
    "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "4", "--num-samples", "4",
    "--warmup-steps", "2", "--no-progress",
]


class TinyExtractor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images)).mean(dim=(2, 3))  # (B, 4)


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory) -> Path:
    """A class-conditional DiT with learned variances (``--loss hybrid``), 4 steps."""
    out = tmp_path_factory.mktemp("cli_dit") / "run"
    torch.set_num_threads(1)
    assert main(["train", "--out", str(out), "--steps", "4", "--class-conditional", "--loss",
                 "hybrid", *TINY_DIT]) == 0
    return out


def test_train_dit_exports_a_dit_bundle(dit_run: Path) -> None:
    from ddpm_lib import DiffusionPipeline, DiT
    from ddpm_lib.training import load_checkpoint

    config = json.loads((dit_run / "ema_model" / "config.json").read_text())
    assert config["hidden_size"] == 16 and config["depth"] == 2 and config["patch_size"] == 2
    pipe = DiffusionPipeline.from_pretrained(dit_run / "ema_model")
    assert isinstance(pipe.model, DiT) and pipe.model.learn_sigma and pipe.model.num_classes == 4
    assert pipe.variance == "learned_range"
    ema = load_checkpoint(dit_run / "checkpoints" / "step_000000004").weights["ema"]
    for key, value in pipe.model.state_dict().items():
        assert torch.equal(value, ema[key]), key
    assert (dit_run / "samples" / "step_000000004.png").is_file()
    assert json.loads((dit_run / "cli_args.json").read_text())["model"] == "dit-s/2"


def test_sample_fid_and_bpd_of_a_dit_run(dit_run: Path, tmp_path, monkeypatch, capsys) -> None:
    npz = tmp_path / "s.npz"
    assert main(["sample", str(dit_run), "--num", "4", "--sampler", "ddim", "--steps", "3",
                 "--guidance-scale", "1.5", "--npz", str(npz), "--no-progress"]) == 0
    arrays = np.load(npz)
    assert arrays["arr_0"].shape == (4, 8, 8, 3) and arrays["arr_1"].tolist() == [0, 1, 2, 3]

    real = tmp_path / "real"
    real.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(real / f"{index}.png")
    monkeypatch.setattr(fid_cli, "_load_extractor", lambda args, device: TinyExtractor())
    common = ["--device", "cpu", "--no-progress"]
    assert main(["fid", str(real), "--checkpoint", str(dit_run), "--num-samples", "3",
                 "--batch-size", "3", "--sampler", "ddpm", "--steps", "2", *common]) == 0
    out = capsys.readouterr().out
    assert "samples: 3 vs 6" in out and math.isfinite(float(out.split("FID: ")[1].split()[0]))
    assert main(["bpd", str(dit_run), str(real), "--class-label", "1", *common]) == 0
    out = capsys.readouterr().out
    assert math.isfinite(float(out.split("bits/dim: ")[1].split()[0]))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model", "dit-s/2", "--base-channels", "8"], "--base-channels is an option of the UNet"),
        (["--hidden-size", "16"], "--hidden-size is an option of the DiT"),
        (["--model", "dit-s/2", "--hidden-size", "18", "--num-heads", "4"], "divisible by"),
        (["--model", "dit-s/8", "--image-size", "12"], "divisible by patch_size=8"),
    ],
)
def test_dit_option_errors_are_one_line(extra, expected, tmp_path, capsys) -> None:
    argv = ["train", "--out", str(tmp_path / "x"), "--steps", "1", "--no-progress",
            "--image-size", "8", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err, err


def test_an_unknown_model_is_refused_by_the_parser(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "x"), "--model", "dit-m/2"])
    assert "invalid choice: 'dit-m/2'" in capsys.readouterr().err
