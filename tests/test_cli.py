"""``ddpm-lib train`` and ``ddpm-lib sample``: outputs, resume, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ddpm_lib.models.unet")
pytest.importorskip("ddpm_lib.samplers")
pytest.importorskip("ddpm_lib.losses")

from ddpm_lib.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--image-size", "8", "--dataset-size", "32", "--batch-size", "8", "--base-channels", "8",
    "--channel-mults", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "",
    "--num-timesteps", "20", "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "4",
    "--num-samples", "4", "--warmup-steps", "2", "--no-progress",
]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A class-conditional run of 4 steps on the built-in shapes."""
    out = tmp_path_factory.mktemp("cli") / "run"
    torch.set_num_threads(1)
    assert main(["train", "--out", str(out), "--steps", "4", "--class-conditional", *TINY]) == 0
    return out


def test_train_writes_checkpoints_logs_samples_and_the_ema_model(trained: Path) -> None:
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [
        "step_000000002", "step_000000004",
    ]
    assert [json.loads(line)["step"] for line in (trained / "log.jsonl").read_text().splitlines()] == [2, 4]
    assert (trained / "samples" / "step_000000004.png").is_file()
    # the export is a pipeline folder that is also a plain UNet folder, with its diffusion
    assert {"config.json", "model.safetensors", "pipeline.json"} <= {
        p.name for p in (trained / "ema_model").iterdir()
    }
    diffusion = json.loads((trained / "ema_model" / "pipeline.json").read_text())["diffusion"]
    assert {"schedule", "prediction", "variance"} <= diffusion.keys()
    saved = json.loads((trained / "cli_args.json").read_text())
    assert saved["class_conditional"] is True and saved["base_channels"] == 8


def test_train_again_resumes_with_the_first_runs_options(trained: Path, capsys, tmp_path) -> None:
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(trained, copy)
    assert main(["train", "--out", str(copy), "--steps", "6", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming from step 4" in err
    assert (copy / "checkpoints" / "step_000000006").is_dir()
    meta = json.loads((copy / "checkpoints" / "step_000000006" / "meta.json").read_text())
    assert meta["model_config"]["base_channels"] == 8 and meta["num_classes"] == 4

    # a different architecture does not fit the checkpoint: one line, exit status 2
    assert main(["train", "--out", str(copy), "--steps", "8", "--base-channels", "16"]) == 2
    assert "does not fit this model" in _error_line(capsys)


def test_sample_png_and_npz_from_every_kind_of_source(trained: Path, tmp_path, capsys) -> None:
    from PIL import Image

    png, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    assert main(["sample", str(trained), "--num", "6", "--steps", "5", "--out", str(png),
                 "--npz", str(npz), "--guidance-scale", "2", "--no-progress"]) == 0
    with Image.open(png) as grid:
        assert grid.size[0] > 8 * 4  # 4 columns (one per class) of 8 px images
    arrays = np.load(npz)
    assert arrays["arr_0"].shape == (6, 8, 8, 3) and arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].tolist() == [0, 1, 2, 3, 0, 1]

    checkpoint = trained / "checkpoints" / "step_000000002"
    for source, sampler in ((checkpoint, "ddim"), (trained / "ema_model", "dpm-solver")):
        out = tmp_path / f"{sampler}.npz"
        assert main(["sample", str(source), "--num", "2", "--sampler", sampler, "--steps", "4",
                     "--class", "3", "--npz", str(out), "--no-progress"]) == 0
        assert np.load(out)["arr_1"].tolist() == [3, 3]
    # same seed, same samples; the checkpoint's EMA and the exported EMA model agree
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    main(["sample", str(trained), "--num", "2", "--sampler", "ddim", "--steps", "3", "--npz", str(a), "--no-progress"])
    main(["sample", str(trained / "ema_model"), "--num", "2", "--sampler", "ddim", "--steps", "3",
          "--npz", str(b), "--no-progress"])
    assert np.array_equal(np.load(a)["arr_0"], np.load(b)["arr_0"])


def test_sample_falls_back_from_a_damaged_checkpoint(trained: Path, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    newest = copy / "checkpoints" / "step_000000004" / "ema.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    assert main(["sample", str(copy), "--num", "1", "--steps", "2", "--npz", str(tmp_path / "x.npz"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipping damaged checkpoint" in err and "step_000000004" in err
    assert "step_000000002" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sample", "/no/such/run"], "does not exist"),
        (["train", "--out", "{tmp}/o", "--data", "/no/such/folder"], "is none of them"),
        (["train", "--out", "{tmp}/o", "--data", "cifar10"], "needs --data-root"),
        (["train", "--out", "{tmp}/o", "--data", "cifar10", "--data-root", "{tmp}"], "cifar-10-batches-py"),
        (["train", "--out", "{tmp}/o", "--channel-mults", "1,x"], "--channel-mults"),
        (["train", "--out", "{tmp}/o", "--image-size", "8", "--attention-resolutions", "",
          "--dataset-size", "10", "--batch-size", "16"], "fewer than one global batch"),
        (["train", "--out", "{tmp}/o", "--image-size", "8"], "attention_resolutions contains 16"),
        (["sample", "{tmp}"], "neither a training folder"),
    ],
)
def test_errors_are_one_line_without_traceback(argv, expected, tmp_path, capsys) -> None:
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"ddpm-lib {argv[0]}: error:") and expected in line


def test_sample_option_errors(trained: Path, capsys, tmp_path) -> None:
    out = str(tmp_path / "x.png")
    assert main(["sample", str(trained), "--class", "9", "--out", out]) == 2
    assert "--class must be in [0, 3]" in _error_line(capsys)
    assert main(["sample", str(trained), "--eta", "0.5", "--out", out]) == 2
    assert "--eta is an option of --sampler ddim; not of --sampler ddpm" in _error_line(capsys)


def test_console_entry_point_prints_one_line(tmp_path) -> None:
    """Through a real process (python -m ddpm_lib.cli): exit status 2, one line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "ddpm_lib.cli", "sample", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "ddpm_lib.cli", "train", "--help"], capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    assert "--class-conditional" in help_text and "resumes exactly" in help_text


def test_sample_inpaint(trained: Path, tmp_path, capsys) -> None:
    """--inpaint IMAGE --mask MASK: the white part of the mask keeps the image's pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    picture = tmp_path / "picture.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(picture)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, :8] = 255  # keep the left half
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_path)
    out = tmp_path / "inpainted.npz"
    assert main(["sample", str(trained), "--num", "2", "--sampler", "ddim", "--steps", "4",
                 "--inpaint", str(picture), "--mask", str(mask_path), "--resample", "2",
                 "--jump-length", "2", "--guidance-scale", "2", "--npz", str(out),
                 "--no-progress"]) == 0
    images = np.load(out)["arr_0"]  # (2, 8, 8, 3): the model's size
    with Image.open(picture) as opened:
        expected = np.asarray(opened.convert("RGB").resize((8, 8), Image.Resampling.BICUBIC))
    assert np.abs(images[:, :, :4].astype(int) - expected[None, :, :4]).max() <= 1
    assert main(["sample", str(trained), "--inpaint", str(picture), "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "--inpaint IMAGE and --mask MASK go together" in _error_line(capsys)
    assert main(["sample", str(trained), "--resample", "3", "--out", str(tmp_path / "x.png")]) == 2
    assert "add --inpaint" in _error_line(capsys)


def test_sample_with_an_analytic_dpm_table(trained: Path, tmp_path, capsys) -> None:
    from ddpm_lib import NoiseSchedule
    from ddpm_lib.samplers import AnalyticVariance
    from ddpm_lib.training.checkpoint import load_trained_model

    schedule = load_trained_model(str(trained), use_ema=True, device="cpu").schedule
    table = AnalyticVariance.gaussian(schedule, 0.5).save(tmp_path / "gamma.json")
    out = tmp_path / "a.npz"
    for sampler in ("ddpm", "ddim"):
        assert main(["sample", str(trained), "--num", "2", "--sampler", sampler, "--steps", "3",
                     "--analytic-variance", str(table), "--npz", str(out), "--no-progress"]) == 0
        assert np.load(out)["arr_0"].shape == (2, 8, 8, 3)
    other = AnalyticVariance.gaussian(NoiseSchedule.linear(7), 0.5).save(tmp_path / "other.json")
    assert main(["sample", str(trained), "--analytic-variance", str(other), "--npz", str(out)]) == 2
    assert "another schedule" in _error_line(capsys)
