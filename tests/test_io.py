"""The atomic-write helper (ddpm_lib/_io.py): files, folder swaps, manifests, leftovers."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ddpm_lib import _io
from ddpm_lib.models.text import TextConditionedUNet, TextEncoder
from ddpm_lib.models.unet import UNet

from _fault_helpers import DiskFull, fail_after, names, snapshot


@pytest.mark.parametrize("limit", [0, 1, 100])
def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch, limit):
    path = tmp_path / "table.json"
    _io.write_json(path, {"old": list(range(50))})
    before = path.read_bytes()
    fail_after(monkeypatch, limit)
    with pytest.raises(DiskFull):
        _io.write_json(path, {"new": list(range(500))})
    with pytest.raises((DiskFull, RuntimeError)):  # torch's zip writer may re-raise its own
        _io.torch_save({"new": torch.arange(1000)}, path)
    assert path.read_bytes() == before
    assert names(tmp_path) == ["table.json"]  # no temporary file left behind
    monkeypatch.undo()
    entry = _io.write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and entry["bytes"] == 3


def test_file_helpers_round_trip(tmp_path):
    import numpy as np
    from safetensors.torch import load_file

    _io.save_safetensors(tmp_path / "w.safetensors", {"w": torch.ones(2, 3)}, {"k": "v"})
    assert torch.equal(load_file(tmp_path / "w.safetensors")["w"], torch.ones(2, 3))
    _io.torch_save({"a": torch.arange(3)}, tmp_path / "s.pt")
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=True)["a"], torch.arange(3))
    written = _io.save_npz(tmp_path / "stats", {"mu": np.zeros(2)}, compressed=True)
    assert written.name == "stats.npz" and np.load(written)["mu"].shape == (2,)
    _io.write_text(tmp_path / "deep" / "t.txt", "é\n")
    assert (tmp_path / "deep" / "t.txt").read_text(encoding="utf-8") == "é\n"
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'; got 'a'"):
        with _io.atomic_open(tmp_path / "x", "a"):
            pass


def test_a_safetensors_save_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    _io.save_safetensors(path, {"w": torch.zeros(4)})
    before = path.read_bytes()
    fail_after(monkeypatch, 10)
    with pytest.raises(DiskFull):
        _io.save_safetensors(path, {"w": torch.ones(400)})
    assert path.read_bytes() == before and names(tmp_path) == ["w.safetensors"]


def write_parts(folder, version: str) -> None:
    (folder / "a.txt").write_text(f"a {version}")
    with _io.atomic_folder(folder / "part") as part:
        (part / "b.txt").write_text(f"b {version}")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_folder_swap_replaces_the_whole_folder_and_keeps_foreign_files(
        tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_io, "_exchange", lambda first, second: False)
    target = tmp_path / "model"
    with _io.atomic_folder(target) as tmp:
        write_parts(tmp, "old")
        (tmp / "only_old.txt").write_text("dropped by the next save")
    manifest = _io.verify_folder(target)
    assert set(manifest["files"]) == {"a.txt", "only_old.txt", "part/manifest.json"}
    (target / "notes.txt").write_text("mine")  # a file no save wrote
    with _io.atomic_folder(target) as tmp:
        write_parts(tmp, "new")
    assert names(tmp_path) == ["model"]
    assert names(target) == ["a.txt", "manifest.json", "notes.txt", "part"]
    assert (target / "a.txt").read_text() == "a new"
    assert (target / "part" / "b.txt").read_text() == "b new"
    assert (target / "notes.txt").read_text() == "mine"
    with _io.atomic_folder(target) as tmp:  # a save without the part drops all of it
        (tmp / "a.txt").write_text("a newer")
    assert names(target) == ["a.txt", "manifest.json", "notes.txt"]
    assert "notes.txt" not in _io.verify_folder(target)["files"]  # still not the save's


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("limit", [0, 5, 200])
def test_a_folder_save_that_fails_midway_leaves_the_old_folder(
        tmp_path, monkeypatch, exchange, limit):
    if not exchange:
        monkeypatch.setattr(_io, "_exchange", lambda first, second: False)
    target = tmp_path / "model"
    with _io.atomic_folder(target) as tmp:
        write_parts(tmp, "old")
        _io.write_json(tmp / "config.json", {"version": "old"})
    before = snapshot(target)
    fail_after(monkeypatch, limit)
    with pytest.raises(DiskFull):
        with _io.atomic_folder(target) as tmp:
            write_parts(tmp, "new")
            _io.write_json(tmp / "config.json", {"version": "new" * 100})
    assert snapshot(target) == before and names(tmp_path) == ["model"]
    assert _io.verify_folder(target) is not None


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "_exchange", lambda first, second: False)
    target = tmp_path / "model"
    with _io.atomic_folder(target) as tmp:
        write_parts(tmp, "old")
    before = snapshot(target)
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(str(src)).startswith(".tmp-model-"):
            raise DiskFull("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DiskFull):
        with _io.atomic_folder(target) as tmp:
            write_parts(tmp, "new")
    monkeypatch.undo()
    assert snapshot(target) == before and names(tmp_path) == ["model"]


def test_a_crash_between_the_two_renames_is_finished_by_the_next_reader(tmp_path):
    """Killed after the old folder was moved aside and before the new one was moved in."""
    target = tmp_path / "model"
    with _io.atomic_folder(target) as tmp:
        write_parts(tmp, "old")
    new = tmp_path / "staging"
    with _io.atomic_folder(new) as tmp:
        write_parts(tmp, "new")
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    token = f"model-{dead}-abcdef"
    os.replace(target, tmp_path / f".old-{token}")
    os.replace(new, tmp_path / f".tmp-{token}")
    assert _io.verify_folder(target) is not None  # the reader recovers the complete new one
    assert (target / "a.txt").read_text() == "a new" and names(tmp_path) == ["model"]


def test_leftovers_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    target = tmp_path / "model"
    with _io.atomic_folder(target) as tmp:
        write_parts(tmp, "v1")
    dead = 2 ** 22 + 12345
    for name in (f".tmp-model-{dead}-aaaa", f".old-model-{dead}-bbbb",
                 f".tmp-model-x-{dead}-cccc"):  # the last one belongs to "model-x"
        (tmp_path / name).mkdir()
    (tmp_path / f".tmp-model-{os.getppid()}-dddd").mkdir()  # a live process may be writing it
    with _io.atomic_folder(target) as tmp:
        write_parts(tmp, "v2")
    assert names(tmp_path) == [f".tmp-model-{os.getppid()}-dddd", f".tmp-model-x-{dead}-cccc",
                               "model"]
    assert _io.clean_leftovers(tmp_path) == [tmp_path / f".tmp-model-x-{dead}-cccc"]


def test_the_manifest_refuses_a_folder_that_mixes_two_saves(tmp_path):
    for version in ("old", "new"):
        with _io.atomic_folder(tmp_path / version) as tmp:
            write_parts(tmp, version)
            (tmp / "c.txt").write_text(version)
    mixed = tmp_path / "new"
    damages = [
        (lambda: (mixed / "c.txt").write_text("old"),  # same size, other content
         r"new: c.txt does not match its SHA-256 .* mixes parts"),
        (lambda: (mixed / "c.txt").write_text("older"),
         r"new: c.txt has 5 bytes, manifest.json says 3"),
        (lambda: (mixed / "c.txt").unlink(), r"new: c.txt is missing"),
        (lambda: (mixed / "manifest.json").write_text("{"), r"new: manifest.json is unreadable"),
    ]
    for damage, message in damages:
        damage()
        with pytest.raises(ValueError, match=message):
            _io.verify_folder(mixed)
    (mixed / "manifest.json").unlink()
    assert _io.verify_folder(mixed) is None  # a folder of an older version: nothing to check


def tiny_text_model(seed: int) -> TextConditionedUNet:
    torch.manual_seed(seed)
    encoder = TextEncoder(dim=16, num_layers=1, num_heads=2, max_length=8)
    unet = UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
                image_size=8, norm_groups=4, context_dim=16)
    return TextConditionedUNet(unet, encoder)


def test_text_model_mixed_from_two_saves_is_refused_naming_the_folder(tmp_path):
    tiny_text_model(0).save_pretrained(tmp_path / "a")
    tiny_text_model(1).save_pretrained(tmp_path / "b")
    # the new UNet beside the old text encoder: every part loads, the mix must not
    os.replace(tmp_path / "a" / "unet", tmp_path / "unet_a")
    os.replace(tmp_path / "b" / "unet", tmp_path / "a" / "unet")
    with pytest.raises(ValueError, match=r"a: unet/manifest.json does not match its SHA-256"):
        TextConditionedUNet.from_pretrained(tmp_path / "a")


def test_text_model_save_that_fails_midway_keeps_the_old_model(tmp_path, monkeypatch):
    tiny_text_model(0).save_pretrained(tmp_path / "m")
    before = snapshot(tmp_path / "m")
    monkeypatch.setattr(TextEncoder, "save_pretrained",
                        lambda self, directory: (_ for _ in ()).throw(DiskFull("disk full")))
    with pytest.raises(DiskFull):
        tiny_text_model(1).save_pretrained(tmp_path / "m")
    monkeypatch.undo()
    assert snapshot(tmp_path / "m") == before and names(tmp_path) == ["m"]
    reference = tiny_text_model(0).unet.state_dict()
    loaded = TextConditionedUNet.from_pretrained(tmp_path / "m").unet.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["format"] == 1


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_saving_into_the_working_folder_keeps_it_usable(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_io, "_exchange", lambda first, second: False)
    (tmp_path / "run" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "run" / "sub")
    for version in ("old", "new"):
        with _io.atomic_folder("..") as tmp:  # the folder that holds the working folder
            (tmp / "a.txt").write_text(version)
    assert os.getcwd() == str(tmp_path / "run" / "sub")  # the same path, in the new folder
    with open("../a.txt") as handle:
        assert handle.read() == "new"
    assert names(tmp_path) == ["run"] and names(tmp_path / "run") == [
        "a.txt", "manifest.json", "sub"]


def tiny_latent_model(seed: int, scale_factor: float):
    from ddpm_lib import AutoencoderKL, LatentDiffusion, NoiseSchedule

    torch.manual_seed(seed)
    autoencoder = AutoencoderKL(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                norm_groups=4)
    unet = UNet(in_channels=autoencoder.latent_channels, base_channels=8, channel_mults=(1,),
                num_res_blocks=1, attention_resolutions=(), image_size=8, norm_groups=4)
    return LatentDiffusion(autoencoder, scale_factor, unet=unet,
                           schedule=NoiseSchedule.linear(50), prediction="v")


def test_latent_model_is_saved_whole_and_a_mix_is_refused(tmp_path, monkeypatch):
    from ddpm_lib import AutoencoderKL, LatentDiffusion

    tiny_latent_model(0, 0.5).save_pretrained(tmp_path / "m")
    before = snapshot(tmp_path / "m")
    # the UNet fails to save after the autoencoder was written: the old model stays whole
    monkeypatch.setattr(UNet, "save_pretrained",
                        lambda self, directory: (_ for _ in ()).throw(DiskFull("disk full")))
    with pytest.raises(DiskFull):
        tiny_latent_model(1, 2.0).save_pretrained(tmp_path / "m")
    monkeypatch.undo()
    assert snapshot(tmp_path / "m") == before and names(tmp_path) == ["m"]
    loaded = LatentDiffusion.from_pretrained(tmp_path / "m")
    assert loaded.scale_factor == 0.5 and loaded.prediction == "v"
    # the new autoencoder beside the old UNet and scale factor: refused, naming the folder
    tiny_latent_model(1, 2.0).save_pretrained(tmp_path / "n")
    os.replace(tmp_path / "m" / "autoencoder", tmp_path / "old_autoencoder")
    os.replace(tmp_path / "n" / "autoencoder", tmp_path / "m" / "autoencoder")
    assert isinstance(AutoencoderKL.from_pretrained(tmp_path / "m" / "autoencoder"),
                      AutoencoderKL)  # the part alone is intact
    with pytest.raises(ValueError, match=r"m: autoencoder/manifest.json does not match"):
        LatentDiffusion.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_a_table_saved_over_another_keeps_it_when_the_write_fails(tmp_path, monkeypatch, suffix):
    from ddpm_lib import AnalyticVariance, NoiseSchedule

    schedule = NoiseSchedule.linear(20)
    path = tmp_path / f"table{suffix}"
    AnalyticVariance(schedule, torch.linspace(0.1, 0.9, 20), num_samples=4).save(path)
    before = path.read_bytes()
    fail_after(monkeypatch, 10)  # every writer: JSON handles and safetensors alike
    with pytest.raises(DiskFull):
        AnalyticVariance(schedule, torch.linspace(0.2, 0.8, 20), num_samples=8).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and names(tmp_path) == [path.name]
    assert AnalyticVariance.load(path, schedule).num_samples == 4
