"""The ``ddpm_lib.cli`` package: every error the library raises on bad input is one line,
``fid --checkpoint`` samples with every sampler of ``sample`` (the one sampler builder), and
``python -m ddpm_lib.cli`` still runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ddpm_lib import DiffusionPipeline, NoiseSchedule, UNet, cli
from ddpm_lib.cli._common import build_sampler, is_user_error, sampler_name
from ddpm_lib.metrics.fid import quantize
from ddpm_lib.pipeline import SAMPLER_NAMES
from ddpm_lib.training.checkpoint import CheckpointError


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and " error: " in err, err
    return err.strip()


def _safetensors_error() -> Exception:
    import safetensors

    return safetensors.SafetensorError("Error while deserializing header: HeaderTooLarge")


@pytest.mark.parametrize("error", [
    ValueError("bad value"), TypeError("bad type"), FileNotFoundError("no such file 'x'"),
    CheckpointError("step_3/meta.json is corrupt"), KeyError("in_channels"),
    json.JSONDecodeError("Expecting value", "{", 1), IsADirectoryError("a folder"),
    cli.CLIError("bad option"), "safetensors",
    FloatingPointError("the sample contains NaN or inf at step 3 of 10 (t = 700)"),
    ImportError('HFTextEncoder needs transformers: pip install "ddpm-lib[transformers]"'),
], ids=lambda e: type(e).__name__ if not isinstance(e, str) else e)
def test_every_error_of_bad_input_is_one_line(error, tmp_path, monkeypatch, capsys) -> None:
    raised = _safetensors_error() if error == "safetensors" else error

    def run(args) -> None:
        raise raised

    monkeypatch.setattr(cli.sample, "run", run)
    assert cli.main(["sample", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith("ddpm-lib sample: error: ")
    if isinstance(raised, KeyError):
        assert "'in_channels'" in line and "missing" in line
    else:
        assert str(raised).split("\n")[0] in line


def test_a_bug_is_not_hidden_as_an_error_line(tmp_path, monkeypatch) -> None:
    def run(args) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli.sample, "run", run)
    assert not is_user_error(RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["sample", str(tmp_path)])


def _tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=3, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                attention_resolutions=(), image_size=8, dropout=0.0, norm_groups=4)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A pipeline folder of a tiny UNet (T = 20)."""
    DiffusionPipeline(_tiny_unet(), NoiseSchedule.linear(20)).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_corrupt_folders_are_one_line_errors_of_every_command(folder, tmp_path, capsys) -> None:
    data = tmp_path / "data.npy"
    np.save(data, np.zeros((2, 8, 8, 3), np.uint8))
    broken = {
        "pipeline.json": "{not json",
        "model.safetensors": "not a safetensors file",
        "config.json": json.dumps({"in_channels": 3, "no_such_option": 1}),
    }
    for name, text in broken.items():
        copy = tmp_path / name.replace(".", "_")
        copy.mkdir()
        for path in folder.iterdir():
            (copy / path.name).write_bytes(path.read_bytes())
        (copy / name).write_text(text)
        for argv in (["sample", str(copy), "--num", "1", "--steps", "1", "--out",
                      str(tmp_path / "x.png")],
                     ["bpd", str(copy), str(data), "--device", "cpu"],
                     ["fid", str(data), "--checkpoint", str(copy), "--num-samples", "2"]):
            assert cli.main(argv) == 2, (name, argv)
            assert _error_line(capsys).startswith(f"ddpm-lib {argv[0]}: error: "), name
        assert not (tmp_path / "x.png").exists()


class _Extractor(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, 8, 8) -> (B, 3)
        return images.mean(dim=(2, 3))


@pytest.mark.parametrize("options", [
    ["--sampler", "unipc", "--order", "2"],
    ["--sampler", "pndm", "--spacing", "quadratic", "--final-step", "denoise"],
    ["--sampler", "deis"],
    ["--sampler", "sde", "--method", "heun"],
    ["--sampler", "ddim", "--eta", "1"],
    ["--sampler", "dpm_solver"],  # the old spelling
])
def test_fid_samples_with_the_samplers_of_sample(options, folder, tmp_path, monkeypatch,
                                                 capsys) -> None:
    """The sampler that ``fid --checkpoint`` draws with is the one ``sample`` builds from the
    same options: the features of fid's images are those of that sampler's images."""
    reference = tmp_path / "ref"
    reference.mkdir()
    for index in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * index, np.uint8)).save(reference / f"{index}.png")
    seen: list[torch.Tensor] = []

    def extractor(images: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return _Extractor()(images)

    monkeypatch.setattr(cli.fid, "_load_extractor", lambda args, device: extractor)
    argv = ["fid", str(reference), "--checkpoint", str(folder), "--num-samples", "3",
            "--batch-size", "3", "--steps", "2", "--device", "cpu", "--no-progress", *options]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "samples: 3 vs 3" in capsys.readouterr().out
    args = cli.build_parser().parse_args(["sample", str(folder), "--steps", "2", *options])
    cli.validate(args)
    sampler = build_sampler(args, DiffusionPipeline.from_pretrained(folder))
    assert type(sampler).__name__ == SAMPLER_NAMES[sampler_name(options[1])]
    pipe = DiffusionPipeline.from_pretrained(folder)
    images = sampler.sample(pipe.model, (3, 3, 8, 8),
                            generator=torch.Generator().manual_seed(0))  # fid's --seed 0
    assert len(seen) == 2  # the samples, then the reference
    assert torch.allclose(seen[0], quantize(images), atol=1e-6)


def test_fid_refuses_sampler_options_of_another_sampler(folder, tmp_path, capsys) -> None:
    np.save(tmp_path / "ref.npy", np.zeros((2, 8, 8, 3), np.uint8))
    argv = ["fid", str(tmp_path / "ref.npy"), "--checkpoint", str(folder), "--num-samples", "2"]
    assert cli.main([*argv, "--sampler", "ddim", "--order", "2"]) == 2
    assert "--order is an option of --sampler dpm-solver" in _error_line(capsys)
    assert cli.main([*argv, "--sampler", "dpm-solver", "--order", "4"]) == 2
    assert "must be in [1, 3]" in _error_line(capsys)


def test_python_dash_m_runs_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "ddpm_lib.cli", "fid", "--help"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for option in ("--sampler", "unipc", "--order", "--eta", "--method", "--analytic-variance"):
        assert option in done.stdout


def test_an_os_error_names_its_file_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    def run(args) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "grid.png"))

    monkeypatch.setattr(cli.sample, "run", run)
    assert cli.main(["sample", str(tmp_path)]) == 2
    assert _error_line(capsys).endswith(f"{tmp_path / 'grid.png'}: No space left on device")


def test_a_mask_of_another_size_is_refused_not_stretched(folder, tmp_path, capsys) -> None:
    Image.new("RGB", (16, 16), "white").save(tmp_path / "image.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "mask.png")
    out = tmp_path / "x.png"
    argv = ["sample", str(folder), "--inpaint", str(tmp_path / "image.png"), "--mask",
            str(tmp_path / "mask.png"), "--steps", "2", "--num", "1", "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 2
    line = _error_line(capsys)
    assert "is 8x8 pixels but --inpaint" in line and "is 16x16" in line and not out.exists()
    Image.new("L", (16, 16), 255).save(tmp_path / "mask.png")  # the same size: resized together
    assert cli.main(argv) == 0 and out.is_file()


def test_a_damaged_npz_is_one_line_naming_it(tmp_path, capsys) -> None:
    batch = tmp_path / "batch.npz"
    np.savez(batch, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    batch.write_bytes(batch.read_bytes()[:60])  # cut short
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    assert cli.main(["fid", str(batch), str(tmp_path), "--no-progress"]) == 2
    assert str(batch) in _error_line(capsys)
