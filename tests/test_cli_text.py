"""``ddpm-lib train`` on captions and ``ddpm-lib sample --prompt`` (tiny and fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("ddpm_lib.models.text")

from ddpm_lib.cli import main  # noqa: E402

TINY = [
    "--image-size", "8", "--dataset-size", "32", "--batch-size", "8", "--base-channels", "8",
    "--channel-mults", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "4",
    "--num-timesteps", "20", "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "2",
    "--num-samples", "4", "--warmup-steps", "2", "--no-progress",
    "--text-dim", "16", "--text-layers", "1", "--text-heads", "2", "--text-max-length", "96",
]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A text-to-image run of 2 steps on the built-in captioned shapes (Chinese captions)."""
    out = tmp_path_factory.mktemp("cli_text") / "run"
    torch.set_num_threads(1)
    assert main(["train", "--out", str(out), "--steps", "2", "--data", "captioned-shapes",
                 "--language", "zh", *TINY]) == 0
    return out


def test_train_on_captioned_shapes_writes_a_text_model(text_run: Path) -> None:
    from ddpm_lib import TextConditionedUNet

    config = json.loads((text_run / "ema_model" / "config.json").read_text())
    assert config["_class_name"] == "TextConditionedUNet"
    model = TextConditionedUNet.from_pretrained(text_run / "ema_model")
    assert model.unet.context_dim == 16 and model.text_encoder.max_length == 96
    prompts = (text_run / "samples" / "step_000000002.txt").read_text(encoding="utf-8")
    assert len(prompts.splitlines()) == 4 and any(ord(ch) > 0x4E00 for ch in prompts)
    saved = json.loads((text_run / "cli_args.json").read_text())
    assert saved["data"] == "captioned-shapes" and saved["caption_dropout"] == 0.1


def test_sample_with_prompts_from_the_run_and_the_exported_model(text_run: Path, tmp_path) -> None:
    from PIL import Image

    for source in (text_run, text_run / "ema_model"):
        out = tmp_path / f"{source.name}.png"
        assert main(["sample", str(source), "--prompt", "a red circle on a white background",
                     "--prompt", "黑色背景上有一个黄色正方形", "--num", "3", "--steps", "3",
                     "--guidance-scale", "3", "--negative-prompt", "a blue cross",
                     "--guidance-rescale", "0.7",
                     "--out", str(out), "--no-progress"]) == 0
        with Image.open(out) as grid:
            # 3 columns (samples of a prompt), 2 rows (the prompts), 8 px + 2 px padding
            assert grid.size == (2 + 3 * 10, 2 + 2 * 10)


def test_train_on_a_folder_with_metadata_captions(tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as handle:
        for i in range(8):
            Image.new("RGB", (12, 12), (30 * i, 100, 50)).save(folder / f"{i}.png")
            handle.write(json.dumps({"file_name": f"{i}.png", "text": f"colour {i}"}) + "\n")
    out = tmp_path / "run"
    args = [arg for arg in TINY if arg not in ("--dataset-size", "32")]
    assert main(["train", "--out", str(out), "--steps", "1", "--data", str(folder),
                 "--captions", "metadata", *args]) == 0
    assert (out / "ema_model" / "text_encoder" / "config.json").is_file()


def test_text_option_errors(text_run: Path, tmp_path, capsys) -> None:
    out = str(tmp_path / "x.png")
    assert main(["sample", str(text_run), "--out", out]) == 2
    assert "is a text-to-image model: give --prompt" in _error_line(capsys)
    assert main(["sample", str(text_run), "--prompt", "a", "--negative-prompt", "b",
                 "--out", out]) == 2
    assert "--negative-prompt acts through guidance" in _error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "o"), "--data", "shapes",
                 "--captions", "txt"]) == 2
    assert "--captions is for a folder" in _error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "o"), "--data", "captioned-shapes",
                 "--class-conditional"]) == 2
    assert "cannot be combined" in _error_line(capsys)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    assert main(["train", "--out", str(tmp_path / "o"), "--data", str(folder),
                 "--captions", "metadata", "--image-size", "8"]) == 2
    assert "metadata.jsonl' line 1 names a missing file 'gone.png'" in _error_line(capsys)
    plain = tmp_path / "plain"
    assert main(["train", "--out", str(plain), "--steps", "1", "--data", "shapes",
                 *TINY[:TINY.index("--text-dim")]]) == 0
    capsys.readouterr()
    assert main(["sample", str(plain), "--prompt", "a red circle", "--out", out]) == 2
    assert "need a text-to-image model" in _error_line(capsys)


def test_train_with_cross_attention_and_min_snr(tmp_path, monkeypatch, capsys) -> None:
    import ddpm_lib.losses
    from ddpm_lib import TextConditionedUNet

    built: list[ddpm_lib.losses.SimpleLoss] = []

    class RecordingLoss(ddpm_lib.losses.SimpleLoss):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(ddpm_lib.losses, "SimpleLoss", RecordingLoss)
    out = tmp_path / "cross"
    args = ["train", "--out", str(out), "--steps", "1", "--data", "captioned-shapes", *TINY]
    assert main([*args, "--text-attention", "cross", "--min-snr-gamma", "5",
                 "--prediction", "v"]) == 0
    model = TextConditionedUNet.from_pretrained(out / "ema_model")
    assert model.unet.text_attention == "cross"
    assert [loss.min_snr_gamma for loss in built] == [5.0] and built[0].prediction == "v"
    # Resuming without the options keeps the first run's.
    assert main([*args[:4], "2", *args[5:]]) == 0
    assert [loss.min_snr_gamma for loss in built] == [5.0, 5.0]
    saved = json.loads((out / "cli_args.json").read_text())
    assert saved["text_attention"] == "cross" and saved["min_snr_gamma"] == 5.0
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "o"), "--data", "shapes",
                 "--text-attention", "cross"]) == 2
    assert "--text-attention cross is for a text model" in _error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "o"), "--data", "shapes", "--loss", "hybrid",
                 "--min-snr-gamma", "5"]) == 2
    assert "--min-snr-gamma weighs --loss simple; got --loss hybrid" in _error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "o"), "--steps", "1", "--data", "shapes",
                 "--min-snr-gamma", "-1", *TINY[:TINY.index("--text-dim")]]) == 2
    assert "--min-snr-gamma must be > 0; got -1.0" in _error_line(capsys)  # before any work
