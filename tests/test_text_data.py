"""Captioned data for text-to-image: the captioned shapes, folder captions, the attribute detector."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import ddpm_lib
from ddpm_lib.data import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    CaptionedShapesDataset,
    ImageFolderDataset,
    build_dataset,
    list_images,
    shape_caption,
)
from ddpm_lib.metrics import attribute_accuracy, detect_shape_attributes, prompt_accuracy

Image = pytest.importorskip("PIL.Image")


# ----------------------------------------------------------------------------- captioned shapes


@pytest.mark.parametrize("language", ["en", "zh"])
def test_captions_name_every_always_mentioned_attribute(language: str) -> None:
    """Each caption contains the words of kind and both colours, and those of size / position
    exactly when they are mentioned; items are (image in [-1, 1], str)."""
    from ddpm_lib.data import _WORDS

    words = _WORDS[language]
    dataset = CaptionedShapesDataset(size=60, image_size=16, seed=1, language=language)
    templates, mentioned_size = set(), 0
    for i in range(len(dataset)):
        image, caption = dataset[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert -1.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert isinstance(caption, str) and caption == dataset.caption(i)
        info = dataset.describe(i)
        truth = dataset.attributes(i)
        assert set(truth) == {"kind", "color", "background", "size", "position"}
        assert truth["color"] != truth["background"]
        for key in ("kind", "color", "background"):
            assert words[truth[key]] in caption
        other = "small" if truth["size"] == "large" else "large"
        assert words[other] not in caption  # never states a wrong size
        mentioned_size += "size" in info["mentioned"]
        assert (words[truth["size"]] in caption) == ("size" in info["mentioned"])
        templates.add(caption.replace(words[truth["kind"]], "K")[:6])
    assert 10 < mentioned_size < 50  # about half
    assert len(templates) >= 3  # several sentence patterns
    if language == "zh":
        assert all(ord(ch) < 128 for ch in dataset.caption(0)) is False


def test_same_seed_same_items_and_languages_share_attributes() -> None:
    en = CaptionedShapesDataset(size=20, seed=5, language="en")
    zh = CaptionedShapesDataset(size=20, seed=5, language="zh")
    again = CaptionedShapesDataset(size=20, seed=5, language="en")
    other = CaptionedShapesDataset(size=20, seed=6, language="en")
    for i in range(20):
        assert torch.equal(en[i][0], again[i][0]) and en[i][1] == again[i][1]
        assert torch.equal(en[i][0], zh[i][0]) and en.attributes(i) == zh.attributes(i)
    assert any(en.attributes(i) != other.attributes(i) for i in range(20))


def test_holdout_combinations_are_never_generated() -> None:
    rule = {"kind": "circle", "color": "red", "background": "white"}
    dataset = CaptionedShapesDataset(size=400, seed=0, holdout=[rule])
    full = CaptionedShapesDataset(size=400, seed=0)
    assert len(full.combinations) - len(dataset.combinations) == len(SIZES) * len(POSITIONS)
    seen = [dataset.attributes(i) for i in range(len(dataset))]
    assert not any(all(a[k] == v for k, v in rule.items()) for a in seen)
    assert any(a["kind"] == "circle" and a["color"] == "red" for a in seen)  # the parts are seen


def test_shape_caption_subsets_and_patterns() -> None:
    assert shape_caption({"kind": "circle", "color": "red", "background": "white"}) == (
        "a red circle on a white background"
    )
    full = {"kind": "cross", "color": "blue", "background": "gray", "size": "large",
            "position": "left"}
    assert shape_caption(full, template=1) == "a gray background with a large blue cross on the left"
    assert shape_caption({"color": "yellow"}) == "a yellow shape"
    assert shape_caption(full, "zh", 0) == "灰色背景上左边有一个大的蓝色十字"
    assert shape_caption({"kind": "square", "color": "green"}, "zh", 2) == "画着一个绿色正方形"
    captions = {shape_caption(full, "en", k) for k in range(4)}
    assert len(captions) == 4


def test_captioned_shapes_bad_input() -> None:
    with pytest.raises(ValueError, match="language"):
        CaptionedShapesDataset(language="fr")
    with pytest.raises(ValueError, match="colors"):
        CaptionedShapesDataset(colors=("red", "purple"))
    with pytest.raises(ValueError, match="holdout leaves no"):
        CaptionedShapesDataset(kinds=("circle",), holdout=[{"kind": "circle"}])
    with pytest.raises(ValueError, match="attributes\\['size'\\]"):
        shape_caption({"size": "huge"})
    with pytest.raises(ValueError, match="attributes key"):
        shape_caption({"shape": "circle"})
    with pytest.raises(IndexError):
        CaptionedShapesDataset(size=3)[3]


def test_build_dataset_captioned_shapes() -> None:
    dataset = build_dataset("captioned-shapes", size=5, language="zh")
    assert isinstance(dataset, CaptionedShapesDataset) and dataset.image_size == 16
    assert dataset.language == "zh"


# ----------------------------------------------------------------------------- the detector


@pytest.mark.parametrize("language, image_size", [("en", 16), ("zh", 16), ("en", 24)])
def test_detector_reads_real_items(language: str, image_size: int) -> None:
    """On dataset images the detector recovers every attribute of >= 98% of the items."""
    dataset = CaptionedShapesDataset(size=300, image_size=image_size, seed=11, language=language)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    truth = [dataset.attributes(i) for i in range(len(dataset))]
    assert prompt_accuracy(images, truth) >= 0.98
    per_attribute = attribute_accuracy(images, truth)
    assert set(per_attribute) == {"kind", "color", "background", "size", "position"}
    assert min(per_attribute.values()) >= 0.98


def test_detector_tolerates_sample_noise_and_detects_mismatch() -> None:
    """Mild noise (as in samples) keeps it accurate; a prompt the image does not show fails."""
    dataset = CaptionedShapesDataset(size=200, seed=2)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    truth = [dataset.attributes(i) for i in range(len(dataset))]
    noisy = (images + 0.06 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0)))
    assert prompt_accuracy(noisy.clamp(-1, 1), truth) >= 0.95
    shifted = truth[1:] + truth[:1]  # another item's attributes: mostly wrong
    assert prompt_accuracy(images, shifted) < 0.1
    # only the stated attributes are checked
    backgrounds = [{"background": record["background"]} for record in truth]
    assert prompt_accuracy(images, backgrounds) == 1.0
    assert prompt_accuracy(images, [{}] * len(images)) == 1.0


def test_detector_plain_background_has_no_shape() -> None:
    image = torch.full((1, 3, 16, 16), -1.0)
    image[:, 2] = COLORS["blue"][2] * 2 - 1
    (found,) = detect_shape_attributes(image)
    assert found["kind"] is None and found["color"] is None


def test_detector_bad_input() -> None:
    images = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="one dict per image"):
        prompt_accuracy(images, [{}])
    with pytest.raises(TypeError, match="attributes"):
        prompt_accuracy(images, {"kind": "circle"})
    with pytest.raises(ValueError, match="images must have shape"):
        prompt_accuracy(torch.zeros(2, 1, 16, 16), [{}, {}])
    with pytest.raises(ValueError, match="colors"):
        detect_shape_attributes(images, colors=["purple"])


# ----------------------------------------------------------------------------- folders with captions


def _write_images(folder, names, size=6):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.new("RGB", (size, size), (10 * k, 50, 200)).save(folder / name)


def test_metadata_jsonl_captions(tmp_path) -> None:
    _write_images(tmp_path, ["a.png", "b.png"])
    _write_images(tmp_path / "sub", ["c.png"])
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "b.png", "text": "一只蓝色的鸟"}, ensure_ascii=False) + "\n\n"
        + json.dumps({"file_name": "a.png", "text": "a blue square", "extra": 1}) + "\n",
        encoding="utf-8",
    )
    (tmp_path / "sub" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "c.png", "text": "third"}) + "\n"
    )
    dataset = ImageFolderDataset(tmp_path, image_size=4, captions="metadata")
    assert len(dataset) == 3
    items = [dataset[i] for i in range(3)]
    assert [caption for _, caption in items] == ["a blue square", "一只蓝色的鸟", "third"]
    assert items[0][0].shape == (3, 4, 4)
    expected = (10 * 0 / 127.5) - 1.0  # red channel of a.png
    assert float(items[0][0][0, 0, 0]) == pytest.approx(expected)


def test_txt_captions_and_build_dataset(tmp_path) -> None:
    _write_images(tmp_path, ["x.png", "y.jpg"])
    (tmp_path / "x.txt").write_text("first caption\n", encoding="utf-8")
    (tmp_path / "y.txt").write_text("第二个", encoding="utf-8")
    dataset = build_dataset(str(tmp_path), image_size=4, captions="txt")
    assert [dataset[i][1] for i in range(2)] == ["first caption", "第二个"]


def test_folder_caption_bad_input(tmp_path) -> None:
    bad = tmp_path / "notutf8"
    _write_images(bad, ["x.png"])
    (bad / "x.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"x\.txt.*not UTF-8"):
        ImageFolderDataset(bad, image_size=4, captions="txt")
    missing = tmp_path / "missing_txt"
    _write_images(missing, ["x.png"])
    with pytest.raises(ValueError, match=r"no caption file 'x\.txt'"):
        ImageFolderDataset(missing, image_size=4, captions="txt")

    meta = tmp_path / "meta"
    _write_images(meta, ["a.png"])
    (meta / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl' line 2 is not JSON"):
        ImageFolderDataset(meta, image_size=4, captions="metadata")
    (meta / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(ValueError, match=r"line 1 names a missing file 'gone\.png'"):
        ImageFolderDataset(meta, image_size=4, captions="metadata")
    (meta / "metadata.jsonl").write_text('{"file_name": "a.png", "text": 3}\n')
    with pytest.raises(ValueError, match=r"line 1: 'text' must be a string"):
        ImageFolderDataset(meta, image_size=4, captions="metadata")
    (meta / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(ValueError, match=r"line 1 has no 'text' field"):
        ImageFolderDataset(meta, image_size=4, captions="metadata")
    (meta / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "\xff"}\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        ImageFolderDataset(meta, image_size=4, captions="metadata")
    with pytest.raises(ValueError, match="captions must be one of"):
        ImageFolderDataset(meta, image_size=4, captions="json")
    with pytest.raises(ValueError, match="cannot be combined"):
        ImageFolderDataset(missing, image_size=4, captions="metadata", class_labels=True)


def test_corrupt_captioned_image_is_skipped_with_a_warning(tmp_path) -> None:
    _write_images(tmp_path, ["a.png", "c.png"])
    (tmp_path / "b.png").write_bytes(b"\x89PNG truncated")
    for name, text in (("a", "A"), ("b", "B"), ("c", "C")):
        (tmp_path / f"{name}.txt").write_text(text)
    dataset = ImageFolderDataset(tmp_path, image_size=4, captions="txt")
    assert len(dataset) == 3
    with pytest.warns(UserWarning, match="b.png"):
        image, caption = dataset[1]
    assert caption == "C"  # the next readable item, image and caption together
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [dataset[i][1] for i in range(3)] == ["A", "C", "C"]  # warned once only


# ----------------------------------------------------------------------------- one image reader


def test_fid_folder_reader_uses_the_data_listing(tmp_path) -> None:
    from ddpm_lib.metrics import ImageFolder
    from ddpm_lib.metrics import list_images as fid_list_images

    _write_images(tmp_path, ["b.png", "a.webp", ".hidden.png"])
    (tmp_path / "notes.txt").write_text("x")
    assert fid_list_images(tmp_path) == list_images(tmp_path)
    assert [p.name for p in list_images(tmp_path)] == ["a.webp", "b.png"]
    folder = ImageFolder(tmp_path)
    assert folder[1].dtype == torch.uint8 and folder[1].shape == (3, 6, 6)
    assert int(folder[1][2, 0, 0]) == 200


def test_submodules_are_lazy_attributes() -> None:
    import importlib
    import sys

    for name in ("interop", "data", "metrics"):
        module = getattr(ddpm_lib, name)
        assert module is sys.modules[f"ddpm_lib.{name}"]
        assert module is importlib.import_module(f"ddpm_lib.{name}")
    assert "interop" in dir(ddpm_lib)
    assert ddpm_lib.prompt_accuracy is prompt_accuracy
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ddpm_lib.nope  # noqa: B018
    assert set(SHAPES) == {"circle", "square", "triangle", "cross"}
