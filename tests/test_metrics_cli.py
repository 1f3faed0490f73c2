"""``ddpm-lib fid`` and ``ddpm-lib bpd``: figures, sample counts, warnings and one-line errors.

The Inception network is replaced by a tiny feature extractor through the CLI's single loading
function (the network itself is tested in test_metrics_inception.py).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lib import cli
from ddpm_lib.cli import bpd as bpd_cli
from ddpm_lib.cli import fid as fid_cli
from ddpm_lib.metrics import WEIGHTS_ENV, WEIGHTS_FILENAME, FeatureStatistics, frechet_distance


class TinyExtractor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images)).mean(dim=(2, 3))  # (B, 4)


def write_folder(folder, pixels: np.ndarray) -> None:
    folder.mkdir()
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{index:04d}.png")


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) // 2 + 40, 0, 255).astype(np.uint8)
    write_folder(tmp_path / "real", real)
    write_folder(tmp_path / "fake", fake)
    return tmp_path / "real", tmp_path / "fake", real, fake


@pytest.fixture
def tiny_extractor(monkeypatch) -> TinyExtractor:
    extractor = TinyExtractor()
    monkeypatch.setattr(fid_cli, "_load_extractor", lambda args, device: extractor)
    return extractor


def features_of(extractor, pixels: np.ndarray) -> np.ndarray:
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        return extractor(images).double().numpy()


def fid_of(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def test_fid_between_two_folders(folders, tiny_extractor, capsys) -> None:
    real_dir, fake_dir, real, fake = folders
    status = cli.main(["fid", str(real_dir), str(fake_dir), "--no-progress", "--kid",
                       "--kid-subsets", "5", "--kid-subset-size", "6"])
    out, err = capsys.readouterr()
    assert status == 0, err
    expected = fid_of(features_of(tiny_extractor, real), features_of(tiny_extractor, fake))
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert float(lines["FID"]) == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert lines["samples"] == "12 vs 12"
    assert "KID" in lines
    assert "warning: only 12 samples" in err and "10000" in err


def test_fid_against_saved_statistics_and_image_batches(folders, tiny_extractor, tmp_path,
                                                        capsys) -> None:
    real_dir, fake_dir, real, fake = folders
    stats_path = tmp_path / "real_stats.npz"
    assert cli.main(["fid", str(real_dir), "--save-stats", str(stats_path), "--no-progress"]) == 0
    assert "saved statistics of 12 images" in capsys.readouterr().out
    saved = FeatureStatistics.load(stats_path)
    np.testing.assert_allclose(saved.mean, features_of(tiny_extractor, real).mean(0), rtol=1e-5)

    # The same images as a guided-diffusion style batch (arr_0, uint8 NHWC) against the .npz.
    np.savez(tmp_path / "batch.npz", arr_0=real)
    assert cli.main(["fid", str(tmp_path / "batch.npz"), str(stats_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert abs(float(out.split("FID: ")[1].split()[0])) < 1e-3
    assert "samples: 12 vs 12" in out

    # Published statistics carry no sample count.
    np.savez(tmp_path / "published.npz", mu=saved.mean, sigma=saved.covariance)
    assert cli.main(["fid", str(fake_dir), str(tmp_path / "published.npz"), "--no-progress"]) == 0
    assert "samples: 12 vs unknown" in capsys.readouterr().out


def test_fid_errors_are_one_line(folders, tmp_path, monkeypatch, capsys) -> None:
    real_dir, fake_dir, _, _ = folders
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "no-hub"))
    cases = [
        (["fid", str(real_dir), str(fake_dir)], WEIGHTS_FILENAME),
        (["fid", str(real_dir), str(tmp_path / "missing")], "missing"),
        (["fid", str(real_dir)], "expected two paths"),
        (["fid", str(real_dir), "--checkpoint", str(tmp_path / "nowhere"), "--num-samples", "4"],
         "checkpoint not found"),
        (["fid", str(real_dir), "--checkpoint", str(real_dir), "--num-samples", "4"],
         "is neither a training folder"),  # the message of every command's one loader
        (["fid", str(real_dir), "--checkpoint", str(real_dir)], "--num-samples"),
    ]
    for argv, fragment in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ddpm-lib fid: error:"), err
        assert fragment in err, (argv, err)


class StandInSampler:
    def sample(self, model, shape, *, generator=None, model_kwargs=None):
        return torch.rand(shape, generator=generator) * 2 - 1


def test_fid_from_a_checkpoint_samples_the_requested_number(folders, tiny_extractor,
                                                            monkeypatch, capsys) -> None:
    real_dir, _, _, _ = folders
    model = torch.nn.Identity()
    model.config = {"image_size": 8, "in_channels": 3}
    loaded = []

    def load(path, device, args):  # a stand-in pipeline: the model and what fid reads of it
        loaded.append(path)
        return SimpleNamespace(model=model, schedule=None, latent=None, num_classes=None)

    monkeypatch.setattr(fid_cli, "load_eval_pipeline", load)
    monkeypatch.setattr(fid_cli, "build_sampler", lambda args, pipe, steps: StandInSampler())
    argv = ["fid", str(real_dir), "--checkpoint", "ckpt", "--num-samples", "9", "--batch-size",
            "4", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert loaded == ["ckpt"]
    assert "samples: 9 vs 12" in out  # every reference image is used
    first = float(out.split("FID: ")[1].split()[0])
    assert cli.main(argv) == 0  # the same seed gives the same figure
    assert float(capsys.readouterr().out.split("FID: ")[1].split()[0]) == first


def test_bpd_prints_the_figure_count_breakdown_and_warning(tmp_path, monkeypatch, capsys,
                                                           small_schedule) -> None:
    from ddpm_lib import GaussianOracle

    oracle = GaussianOracle(small_schedule, mean=0.0, std=0.4)
    oracle.in_channels = 3
    pipe = SimpleNamespace(model=oracle, schedule=small_schedule, prediction="eps",
                           variance="fixed_small", latent=None, num_classes=None)
    monkeypatch.setattr(bpd_cli, "load_eval_pipeline", lambda path, device, args: pipe)
    rng = np.random.default_rng(1)
    pixels = np.clip(rng.normal(127.5, 51, (6, 4, 4, 3)), 0, 255).astype(np.uint8)
    np.save(tmp_path / "data.npy", pixels)
    argv = ["bpd", "ckpt", str(tmp_path / "data.npy"), "--batch-size", "4", "--device", "cpu",
            "--no-progress", "--groups", "2"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert lines["samples"] == "6"
    figure = float(lines["bits/dim"].split()[0])
    assert math.isfinite(figure) and figure > 0
    assert "terms t=0..24" in out and "terms t=25..49" in out
    assert "warning: only 6 samples" in err
    assert cli.main(argv) == 0  # --seed fixes the noise: the same figure again
    assert capsys.readouterr().out == out

    assert cli.main(["bpd", "ckpt", str(tmp_path / "nothing")]) == 2
    assert "data not found" in capsys.readouterr().err


def test_fid_and_bpd_from_a_pretrained_unet_directory(folders, tiny_extractor, tmp_path,
                                                      capsys) -> None:
    import json

    from ddpm_lib import NoiseSchedule, UNet

    real_dir, _, _, _ = folders
    model = UNet(in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), image_size=8, norm_groups=4, num_classes=3,
                 learn_sigma=True, dropout=0.0)
    model.save_pretrained(tmp_path / "ckpt")
    schedule = NoiseSchedule.linear(10, beta_start=1e-3, beta_end=0.3)
    (tmp_path / "ckpt" / "schedule.json").write_text(json.dumps(schedule.to_dict()))
    common = ["--device", "cpu", "--no-progress"]
    for sampler in ("ddpm", "ddim", "dpm_solver"):
        argv = ["fid", str(real_dir), "--checkpoint", str(tmp_path / "ckpt"), "--num-samples",
                "3", "--batch-size", "3", "--sampler", sampler, "--steps", "2", *common]
        assert cli.main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "samples: 3 vs 12" in out and math.isfinite(float(out.split("FID: ")[1].split()[0]))

    argv = ["bpd", str(tmp_path / "ckpt"), str(real_dir), *common]
    assert cli.main(argv) == 2
    assert "--class-label" in capsys.readouterr().err  # a class-conditional model needs it
    assert cli.main([*argv, "--class-label", "1", "--num-samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "samples: 4" in out and math.isfinite(float(out.split("bits/dim: ")[1].split()[0]))
