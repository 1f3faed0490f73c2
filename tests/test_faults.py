"""Fault injection: every writer and every loader of the library, under the faults of real runs.

A disk that fills up after N bytes (N across the length of what is written) or a rename that
fails, a process SIGKILLed while it saves, files cut short, bit-flipped, empty or of another
kind. A new writer or loader is added to these lists and to the tables below.

Writers (each: a failed save leaves the previous file or folder byte-for-byte as it was, no
temporary file behind, and it still loads to what was saved):

- ``PretrainedModel.save_pretrained``: ``UNet``, ``AutoencoderKL``, ``TextEncoder``
- ``TextConditionedUNet.save_pretrained``
- ``HFTextEncoder.save_pretrained`` (transformers writes its files itself: a failing part)
- ``LatentDiffusion.save_pretrained`` and ``DiffusionPipeline.save_pretrained`` (the bundle)
- ``AnalyticVariance.save`` (``.json`` and ``.safetensors``)
- ``FeatureStatistics.save`` (``.npz``)
- the latent cache (``LatentDiffusion.encode_dataset``)
- ``save_checkpoint`` (also the Trainer's checkpoints, through it)
- ``save_grid`` (also the Trainer's sample grids)
- the ``_io`` primitives under all of them, and the CLI's ``cli_args.json`` / ``--npz``
  (``_io.write_json`` / ``_io.save_npz``): tests/test_io.py

Loaders (each: a truncated, bit-flipped, empty or wrong-type file raises ``ValueError`` or
``FileNotFoundError`` naming the file):

- ``UNet`` / ``AutoencoderKL`` / ``TextEncoder`` ``.from_pretrained`` (``PretrainedModel``)
- ``TextConditionedUNet.from_pretrained``, ``HFTextEncoder.from_pretrained``
- ``LatentDiffusion.from_pretrained``, ``DiffusionPipeline.from_pretrained``
- ``AnalyticVariance.load``, ``FeatureStatistics.load``
- the latent cache (a damaged cache is re-encoded with a warning saying why; a bit flipped in
  any of its tensors or captions is detected)
- ``load_checkpoint`` / ``load_latest_checkpoint``
- ``ImageFolderDataset`` caption files (``captions="txt"``) and ``metadata.jsonl``
- ``FIDInceptionV3.from_pretrained`` (the weights file)
- ``encode_prompts`` (a prompt that cannot be UTF-8 encoded)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _fault_helpers import DiskFull, fail_after, flip_bit, names, safetensors_offsets, snapshot
from test_io import tiny_latent_model, tiny_text_model

from ddpm_lib import (
    AnalyticVariance,
    AutoencoderKL,
    DiffusionPipeline,
    LatentDiffusion,
    NoiseSchedule,
    _io,
)
from ddpm_lib.metrics.fid import FeatureStatistics
from ddpm_lib.models.text import TextConditionedUNet, TextEncoder
from ddpm_lib.models.unet import UNet
from ddpm_lib.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SCHEDULE = NoiseSchedule.linear(20)


# ----------------------------------------------------------------------------- the writers
def tiny_unet(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
                image_size=8, norm_groups=4)


def tiny_autoencoder(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4)


def images(seed: int, n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def cache_model() -> LatentDiffusion:
    return LatentDiffusion(tiny_autoencoder(0), 0.5)


def write_cache(target: Path, version: int) -> None:
    dataset = [(image, version * 10 + i, f"caption {version} {i}")
               for i, image in enumerate(images(version))]
    with warnings.catch_warnings():  # replacing a cache of another dataset says so: expected
        warnings.simplefilter("ignore", UserWarning)
        cache_model().encode_dataset(dataset, target.parent, progress=False)


def read_cache(target: Path) -> dict:
    from safetensors.torch import load_file

    return dict(load_file(str(target)))


def write_checkpoint(target: Path, version: int) -> None:
    save_checkpoint(target.parent, 7, {"model": state(tiny_unet(version))},
                    {"step": 7, "version": version}, {"note": f"v{version}"})


def read_checkpoint(target: Path) -> dict:
    loaded = load_checkpoint(target)
    return {**loaded.weights["model"], "state": loaded.state["version"], "meta": loaded.meta}


def write_grid(target: Path, version: int) -> None:
    from ddpm_lib.data import save_grid

    save_grid(images(version), target)


def read_grid(target: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(target) as image:
        return np.asarray(image.convert("RGB"))


def write_stats(target: Path, version: int) -> None:
    stats = FeatureStatistics()
    stats.update(torch.randn(16, 4, generator=torch.Generator().manual_seed(version)))
    stats.save(target)


def read_stats(target: Path) -> dict:
    stats = FeatureStatistics.load(target)
    return {"mu": stats.mean, "sigma": stats.covariance, "n": stats.num_samples}


def write_table(target: Path, version: int) -> None:
    gamma = torch.linspace(0.1, 0.9, 20) * (1 + version)
    AnalyticVariance(SCHEDULE, gamma.clamp(max=0.99), num_samples=4 + version).save(target)


def read_table(target: Path) -> dict:
    table = AnalyticVariance.load(target, SCHEDULE)
    return {"gamma": table.gamma, "n": table.num_samples}


def write_pipeline(target: Path, version: int) -> None:
    DiffusionPipeline(tiny_unet(version), SCHEDULE, prediction="v").save_pretrained(target)


def read_pipeline(target: Path) -> dict:
    pipeline = DiffusionPipeline.from_pretrained(target)
    return {**state(pipeline.model), "prediction": pipeline.prediction}


def read_latent(target: Path) -> dict:
    model = LatentDiffusion.from_pretrained(target)
    return {**{f"ae.{k}": v for k, v in state(model.autoencoder).items()},
            **state(model.unet), "scale": model.scale_factor}


def read_text_model(target: Path) -> dict:
    model = TextConditionedUNet.from_pretrained(target)
    return state(model)


WRITERS = {  # name: (file or folder name, write(target, version), read(target))
    "UNet.save_pretrained": ("unet", lambda t, v: tiny_unet(v).save_pretrained(t),
                             lambda t: state(UNet.from_pretrained(t))),
    "AutoencoderKL.save_pretrained": (
        "ae", lambda t, v: tiny_autoencoder(v).save_pretrained(t),
        lambda t: state(AutoencoderKL.from_pretrained(t))),
    "TextEncoder.save_pretrained": (
        "encoder", lambda t, v: tiny_text_model(v).text_encoder.save_pretrained(t),
        lambda t: state(TextEncoder.from_pretrained(t))),
    "TextConditionedUNet.save_pretrained": (
        "text_model", lambda t, v: tiny_text_model(v).save_pretrained(t), read_text_model),
    "LatentDiffusion.save_pretrained": (
        "latent", lambda t, v: tiny_latent_model(v, 0.5 + v).save_pretrained(t), read_latent),
    "DiffusionPipeline.save_pretrained": ("pipeline", write_pipeline, read_pipeline),
    "AnalyticVariance.save(.json)": ("table.json", write_table, read_table),
    "AnalyticVariance.save(.safetensors)": ("table.safetensors", write_table, read_table),
    "FeatureStatistics.save": ("stats.npz", write_stats, read_stats),
    "latent cache": ("latents.safetensors", write_cache, read_cache),
    "save_checkpoint": ("step_000000007", write_checkpoint, read_checkpoint),
    "save_grid": ("grid.png", write_grid, read_grid),
}


def equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a, b) or (torch.isnan(a) == torch.isnan(b)).all()
            and torch.equal(a.nan_to_num(), b.nan_to_num()))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def fail_the_renames(monkeypatch) -> None:
    """Everything is written, then renaming it into place fails."""
    real_replace = os.replace

    def replace(src, dst):
        if os.path.basename(str(src)).startswith(".tmp-"):
            raise DiskFull("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(_io, "_exchange", lambda first, second: (_ for _ in ()).throw(
        DiskFull("rename failed")))


@pytest.mark.parametrize("point", [0.0, 0.5, 0.999, "rename"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_that_fails_at_any_point_keeps_the_previous_version(
        tmp_path, monkeypatch, writer, point):
    name, write, read = WRITERS[writer]
    target = tmp_path / "run" / name
    write(target, 0)
    before, loaded_before, listing = snapshot(target), read(target), names(target.parent)
    if point == "rename":
        fail_the_renames(monkeypatch)
    else:  # the disk fills up after this fraction of the bytes the new version writes
        counter = fail_after(monkeypatch, float("inf"))
        write(tmp_path / "measure" / name, 1)
        total = counter.written
        monkeypatch.undo()
        assert total > 0, f"{writer} wrote nothing through the library's writers"
        fail_after(monkeypatch, int(point * total))
    with pytest.raises((DiskFull, RuntimeError)):  # torch's zip writer re-raises as RuntimeError
        write(target, 1)
    monkeypatch.undo()
    assert snapshot(target) == before, f"{writer}: the previous version was changed"
    assert names(target.parent) == listing, "a temporary file or folder was left behind"
    assert equal(read(target), loaded_before)
    write(target, 1)  # the fault was the only thing in the way
    assert not equal(read(target), loaded_before)


def test_hf_text_encoder_save_that_fails_keeps_the_previous_folder(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from ddpm_lib import HFTextEncoder

    def encoder(seed: int) -> HFTextEncoder:
        torch.manual_seed(seed)
        tokenizer = transformers.ByT5Tokenizer()  # no vocabulary file: nothing downloaded
        config = transformers.CLIPTextConfig(
            vocab_size=384, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=20,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return HFTextEncoder(transformers.CLIPTextModel(config).eval(), tokenizer,
                             max_length=20)

    encoder(0).save_pretrained(tmp_path / "hf")
    before = snapshot(tmp_path / "hf")
    failing = encoder(1)
    monkeypatch.setattr(failing.tokenizer, "save_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(DiskFull("disk full")))
    with pytest.raises(DiskFull):  # the model was written, the tokenizer fails
        failing.save_pretrained(tmp_path / "hf")
    assert snapshot(tmp_path / "hf") == before and names(tmp_path) == ["hf"]
    loaded = HFTextEncoder.from_pretrained(tmp_path / "hf")
    assert equal(state(loaded.model), state(encoder(0).model))
    # a damaged part of the transformers model is refused naming the folder and the file
    weights = next((tmp_path / "hf" / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"hf.*{weights.name}"):
        HFTextEncoder.from_pretrained(tmp_path / "hf")


# ----------------------------------------------------------------------------- a killed save
KILLED_SAVER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    torch.set_num_threads(1)
    from pathlib import Path
    import test_faults as t
    root = Path(sys.argv[1])
    names = ["TextConditionedUNet.save_pretrained", "AnalyticVariance.save(.safetensors)",
             "save_checkpoint", "latent cache"]
    version = 0
    while True:
        for name in names:
            folder, write, _ = t.WRITERS[name]
            write(root / name / folder, version % 2)
        if version == 0:
            print("saved", flush=True)
        version += 1
""")


def test_a_process_killed_while_saving_leaves_a_complete_version(tmp_path):
    """SIGKILL during a loop that saves a model folder, a table, a checkpoint and a latent
    cache over and over: each then loads as one complete version, old or new."""
    savers = ["TextConditionedUNet.save_pretrained", "AnalyticVariance.save(.safetensors)",
              "save_checkpoint", "latent cache"]
    versions = {}
    for name in savers:
        folder, write, read = WRITERS[name]
        for version in (0, 1):
            write(tmp_path / f"reference{version}" / name / folder, version)
        versions[name] = [read(tmp_path / f"reference{v}" / name / folder) for v in (0, 1)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for delay in (0.3,):  # one kill: a process start costs seconds
        root = tmp_path / f"killed_{delay}"
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_SAVER, str(root), str(Path(__file__).parent)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            line = process.stdout.readline()
            assert line.strip() == b"saved", line + process.stdout.read()
            time.sleep(delay)  # somewhere in the second or a later round of saves
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == -signal.SIGKILL
        for name in savers:
            folder, _, read = WRITERS[name]
            loaded = read(root / name / folder)
            assert equal(loaded, versions[name][0]) or equal(loaded, versions[name][1]), name


# ----------------------------------------------------------------------------- the loaders
def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bit-flipped":
        flip_bit(path, len(data) // 2)
    elif how == "wrong-type":  # JSON of the wrong kind where JSON is expected, JSON elsewhere
        path.write_bytes(b"[1, 2, 3]\n" if path.suffix == ".json" else b'{"a": "JSON file"}')
    else:
        raise AssertionError(how)


LOADERS = {  # name: (writer of the file(s), the files to damage)
    "UNet.from_pretrained": ("UNet.save_pretrained",
                             ["config.json", "model.safetensors", "manifest.json"]),
    "AutoencoderKL.from_pretrained": ("AutoencoderKL.save_pretrained",
                                      ["config.json", "model.safetensors"]),
    "TextEncoder.from_pretrained": ("TextEncoder.save_pretrained", ["model.safetensors"]),
    "TextConditionedUNet.from_pretrained": (
        "TextConditionedUNet.save_pretrained",
        ["config.json", "unet/model.safetensors", "text_encoder/config.json", "manifest.json"]),
    "LatentDiffusion.from_pretrained": (
        "LatentDiffusion.save_pretrained",
        ["pipeline.json", "autoencoder/model.safetensors", "unet/config.json", "manifest.json"]),
    "DiffusionPipeline.from_pretrained": ("DiffusionPipeline.save_pretrained",
                                          ["pipeline.json", "model.safetensors"]),
    "AnalyticVariance.load(.json)": ("AnalyticVariance.save(.json)", ["."]),
    "AnalyticVariance.load(.safetensors)": ("AnalyticVariance.save(.safetensors)", ["."]),
    "FeatureStatistics.load": ("FeatureStatistics.save", ["."]),
    "load_checkpoint": ("save_checkpoint",
                        ["model.safetensors", "training_state.pt", "meta.json", "manifest.json"]),
}
CASES = [(loader, file, how) for loader, (_, files) in LOADERS.items() for file in files
         for how in ("truncated", "bit-flipped", "empty", "wrong-type")]


@pytest.mark.parametrize("loader,file,how", CASES)
def test_a_damaged_file_gives_an_error_naming_it(tmp_path, loader, file, how):
    folder, write, read = WRITERS[LOADERS[loader][0]]
    target = tmp_path / folder
    write(target, 0)
    damaged = target if file == "." else target / file
    damage(damaged, how)
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        read(target)
    message = str(caught.value)
    named = [str(damaged)] + [f"{folder}: {damaged.relative_to(folder).as_posix()}"
                              for folder in damaged.parents if tmp_path in folder.parents]
    assert any(name in message for name in named), message  # as a path or "folder: file"
    assert "\n" not in message.strip(), "one line"


def test_a_wrong_type_or_missing_key_is_said(tmp_path):
    _, write, read = WRITERS["UNet.save_pretrained"]
    write(tmp_path / "m", 0)
    (tmp_path / "m" / "config.json").write_text('"a string"')
    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object; got str"):
        read(tmp_path / "m")
    write_table(tmp_path / "t.json", 0)
    record = json.loads((tmp_path / "t.json").read_text())
    del record["gamma"]
    (tmp_path / "t.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"t\.json.*missing key 'gamma'"):
        read_table(tmp_path / "t.json")
    write_stats(tmp_path / "s.npz", 0)
    np.savez(tmp_path / "s.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match=r"s\.npz.*missing key 'sigma'"):
        read_stats(tmp_path / "s.npz")
    # a readable checkpoint file that is not what torch.load(weights_only=True) takes
    write_checkpoint(tmp_path / "step_000000007", 0)
    folder = tmp_path / "step_000000007"
    (folder / "training_state.pt").write_bytes(b"not a torch file")
    _io.write_manifest(folder, step=7)  # the manifest agrees: the decoder must say it
    with pytest.raises(ValueError, match=r"step_000000007: training_state\.pt cannot be decoded"):
        load_checkpoint(folder)


def test_a_truncated_fid_weights_file_is_named(tmp_path):
    from ddpm_lib.metrics.inception import FIDInceptionV3

    path = tmp_path / "pt_inception.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    for how in ("truncated", "empty", "wrong-type"):
        damage(path, how)
        with pytest.raises(ValueError, match=rf"{path.name}.*(cannot be decoded|empty)"):
            FIDInceptionV3.from_pretrained(path)
        torch.save({"w": torch.zeros(1000)}, path)


# ----------------------------------------------------------------------------- caches
@pytest.mark.parametrize("part", ["latents", "field_0", "captions", "key"])
def test_a_bit_flipped_anywhere_in_the_latent_cache_is_detected(tmp_path, part):
    """Every tensor, the captions and the metadata are covered by the cache's one checksum."""
    target = tmp_path / "latents.safetensors"
    write_cache(target, 0)
    if part in ("latents", "field_0"):  # field_0: the labels
        start, end = safetensors_offsets(target)[part]
        flip_bit(target, (start + end) // 2, bit=0)
    else:  # inside the JSON header's metadata: a caption's letter, a key's hex digit
        data = target.read_bytes()
        needle = b"caption 0 2" if part == "captions" else b'"key":"'
        offset = data.index(needle) + len(needle) - 1 - (part == "captions")
        flip_bit(target, offset, bit=0)
    dataset = [(image, i, f"caption 0 {i}") for i, image in enumerate(images(0))]
    with pytest.warns(UserWarning, match=r"latents\.safetensors is not used, encoding the "
                                         r"dataset again: .*(SHA-256|another autoencoder|not)"):
        again = cache_model().encode_dataset(dataset, tmp_path, progress=False)
    assert not again.from_cache
    assert [item[1] for item in again] == [0, 1, 2, 3]
    assert [item[2] for item in again] == [f"caption 0 {i}" for i in range(4)]
    assert cache_model().encode_dataset(dataset, tmp_path, progress=False).from_cache


@pytest.mark.parametrize("how", ["truncated", "empty", "wrong-type"])
def test_a_damaged_latent_cache_is_re_encoded_saying_why(tmp_path, how):
    target = tmp_path / "latents.safetensors"
    write_cache(target, 0)
    damage(target, how)
    dataset = [(image, i, f"caption 0 {i}") for i, image in enumerate(images(0))]
    with pytest.warns(UserWarning, match=r"not used, encoding the dataset again: it is not a "
                                         r"readable latent cache"):
        assert not cache_model().encode_dataset(dataset, tmp_path, progress=False).from_cache


def test_fid_statistics_and_tables_check_their_checksum(tmp_path):
    # a value changed but the file rewritten intact (a zip CRC would not see it)
    write_stats(tmp_path / "s.npz", 0)
    with np.load(tmp_path / "s.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["sigma"] = arrays["sigma"].copy()
    arrays["sigma"][0, 0] += 1e-12
    np.savez(tmp_path / "s.npz", **arrays)
    with pytest.raises(ValueError, match=r"s\.npz.*do not match the SHA-256"):
        FeatureStatistics.load(tmp_path / "s.npz")
    write_table(tmp_path / "t.safetensors", 0)
    start, _ = safetensors_offsets(tmp_path / "t.safetensors")["gamma"]
    flip_bit(tmp_path / "t.safetensors", start + 3, bit=0)
    with pytest.raises(ValueError, match=r"t\.safetensors.*does not match the SHA-256"):
        AnalyticVariance.load(tmp_path / "t.safetensors", SCHEDULE)
    write_table(tmp_path / "t.json", 0)
    record = json.loads((tmp_path / "t.json").read_text())
    record["num_samples"] = 5
    (tmp_path / "t.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"t\.json.*does not match the SHA-256"):
        AnalyticVariance.load(tmp_path / "t.json", SCHEDULE)
    # pytorch-fid's files have no checksum: still read
    np.savez(tmp_path / "plain.npz", mu=np.zeros(2), sigma=np.eye(2))
    assert FeatureStatistics.load(tmp_path / "plain.npz").num_samples is None


# ----------------------------------------------------------------------------- captions, prompts
def caption_folder(tmp_path: Path) -> Path:
    from ddpm_lib.data import save_grid

    root = tmp_path / "images"
    for i in range(3):
        save_grid(images(i, 1), root / f"{i}.png")
    return root


def test_caption_files_name_the_caption_and_the_byte(tmp_path):
    from ddpm_lib.data import ImageFolderDataset

    root = caption_folder(tmp_path)
    for i in range(3):
        (root / f"{i}.txt").write_text(f"caption {i}")
    (root / "1.txt").write_bytes(b"caf\xe9 au lait")  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"1\.txt' \(caption 1\) is not UTF-8 text: byte 3 "
                                         r"\(0xe9\)"):
        ImageFolderDataset(root, image_size=8, captions="txt")


@pytest.mark.parametrize("how", ["truncated", "not-utf8", "wrong-type", "missing-key"])
def test_a_damaged_metadata_jsonl_saversthe_file_and_line(tmp_path, how):
    from ddpm_lib.data import ImageFolderDataset

    root = caption_folder(tmp_path)
    lines = [json.dumps({"file_name": f"{i}.png", "text": f"caption {i}"}) for i in range(3)]
    text = "\n".join(lines) + "\n"
    metadata = root / "metadata.jsonl"
    expected = {"truncated": r"line 3 is not JSON", "not-utf8": r"byte \d+ \(0xff, line 2\)",
                "wrong-type": r"line 1 must be a JSON object; got list",
                "missing-key": r"line 1 has no 'text' field \(missing key 'text'\)"}[how]
    if how == "truncated":
        metadata.write_text(text[: len(text) - 12])
    elif how == "not-utf8":
        metadata.write_bytes(text.encode().replace(b"caption 1", b"caption \xff"))
    elif how == "wrong-type":
        metadata.write_text("[1, 2]\n" + text)
    else:
        metadata.write_text('{"file_name": "0.png"}\n')
    with pytest.raises(ValueError, match=rf"metadata\.jsonl'? ?.*{expected}"):
        ImageFolderDataset(root, image_size=8, captions="metadata")


def test_encode_prompts_saversthe_prompt_that_cannot_be_encoded():
    model = tiny_text_model(0)
    with pytest.raises(ValueError, match=r"prompts\[1\] cannot be encoded as UTF-8: character "
                                         r"2 \('\\udce9'\)"):
        model.encode_prompts(["fine", "ca\udce9"])  # a lone surrogate (surrogateescape)
    assert model.encode_prompts(["fine", "café"])["context"].shape[0] == 2
