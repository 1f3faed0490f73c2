"""Datasets: the built-in shapes, image folders, torchvision roots, and the conversions."""

from __future__ import annotations

import math
import struct
import warnings

import numpy as np
import pytest
import torch

from ddpm_lib.data import (
    SHAPES,
    ImageFolderDataset,
    ShapesDataset,
    build_dataset,
    image_to_tensor,
    render_shape,
    save_grid,
    shape_area,
    tensor_to_pil,
    tensor_to_uint8,
    torchvision_dataset,
)

Image = pytest.importorskip("PIL.Image")


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape", SHAPES)
def test_render_shape_covers_its_exact_area(shape: str) -> None:
    """Coverage summed over the pixels equals the closed-form area (anti-aliasing error < 1%)."""
    radius = 20.0
    image = render_shape(shape, 64, (32.0, 31.0), radius, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 8)
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    covered = float(image[:, :, 0].sum())
    assert covered == pytest.approx(shape_area(shape, radius), rel=0.01)


def test_shapes_are_told_apart_by_their_geometry() -> None:
    """Circle vs square: the square fills its corners, the circle does not; the triangle points up."""
    white, black = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    circle = render_shape("circle", 32, (16, 16), 12, white, black)[:, :, 0]
    square = render_shape("square", 32, (16, 16), 12, white, black)[:, :, 0]
    triangle = render_shape("triangle", 32, (16, 16), 12, white, black)[:, :, 0]
    corner = (6, 6)  # pixel [6, 7]^2: offsets 9..10 from the centre, inside the square
    # (half-side 0.85 * 12 = 10.2) and outside the circle (nearest point 9 * sqrt(2) > 12)
    assert square[corner] == 1.0 and circle[corner] == 0.0
    top_rows, bottom_rows = triangle[:12].sum(), triangle[16:].sum()
    assert bottom_rows > 2 * top_rows  # wide base at the bottom, apex at the top


def test_shapes_dataset_is_deterministic_balanced_and_in_range() -> None:
    dataset = ShapesDataset(size=40, image_size=16, seed=3)
    image, label = dataset[5]
    again, label_again = ShapesDataset(size=40, image_size=16, seed=3)[5]
    other, _ = ShapesDataset(size=40, image_size=16, seed=4)[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert torch.equal(image, again) and label == label_again
    assert not torch.equal(image, other)
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert np.bincount(labels).tolist() == [10, 10, 10, 10]
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert len({tuple(im.flatten()[:6].tolist()) for im in images}) == len(dataset)


def test_shapes_dataset_labels_match_the_drawn_shape() -> None:
    """The label is the drawn class: re-rendering item i's parameters gives the same image."""
    dataset = ShapesDataset(size=8, image_size=24, seed=0, shapes=("cross", "circle"))
    for index in range(8):
        params = dataset.describe(index)
        assert params["shape"] == dataset.classes[dataset[index][1]]
        drawn = render_shape(
            params["shape"], 24, params["center"], params["radius"], params["color"],
            params["background"],
        )
        assert torch.allclose(dataset[index][0], torch.from_numpy(drawn).permute(2, 0, 1) * 2 - 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, "size"),
        ({"image_size": 2}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"shapes": ("circle", "hexagon")}, "hexagon"),
        ({"jitter": 0.7}, "jitter"),
        ({"radius_range": (0.3, 0.1)}, "radius_range"),
    ],
)
def test_shapes_dataset_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**kwargs)


# ----------------------------------------------------------------------------- conversions


def test_uint8_round_trip_and_endpoints() -> None:
    array = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([array, array[::-1], np.zeros_like(array)], axis=-1)
    tensor = image_to_tensor(Image.fromarray(rgb))
    assert tensor.shape == (3, 16, 16)
    assert tensor.min() == -1.0 and tensor.max() == 1.0
    assert torch.equal(tensor_to_uint8(tensor).permute(1, 2, 0), torch.from_numpy(rgb))
    assert np.array_equal(np.asarray(tensor_to_pil(tensor)), rgb)
    gray = image_to_tensor(Image.fromarray(rgb), channels=1)
    assert gray.shape == (1, 16, 16)


def test_save_grid_writes_an_upscaled_png(tmp_path) -> None:
    images = torch.linspace(-1, 1, 4 * 3 * 5 * 5).reshape(4, 3, 5, 5)
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=2, upscale=3)
    with Image.open(path) as grid:
        # 2 x 2 images of 15 px with 2 px padding around each
        assert grid.size == (2 * 15 + 3 * 2, 2 * 15 + 3 * 2)
    with pytest.raises(ValueError, match="upscale"):
        save_grid(images, tmp_path / "x.png", upscale=0)


# ----------------------------------------------------------------------------- image folders


def _write(path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def test_image_folder_recursive_labels_resize_and_center_crop(tmp_path) -> None:
    # A wide image: red | green | blue thirds; resize to 8 on the short side + center crop
    # must keep only the green middle.
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :20, 0] = 255
    wide[:, 20:40, 1] = 255
    wide[:, 40:, 2] = 255
    _write(tmp_path / "cats" / "deep" / "wide.png", wide)
    _write(tmp_path / "dogs" / "white.jpg", np.full((10, 10, 3), 255, np.uint8))
    _write(tmp_path / "dogs" / "gray.bmp", np.full((9, 12, 3), 0, np.uint8))
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")

    dataset = ImageFolderDataset(tmp_path, image_size=8, class_labels=True)
    assert len(dataset) == 3 and dataset.classes == ["cats", "dogs"]
    items = {path.name: dataset[i] for i, path in enumerate(dataset.files)}
    image, label = items["wide.png"]
    assert label == 0 and image.shape == (3, 8, 8)
    inner = image[:, :, 1:-1]  # bicubic resampling blurs the outermost columns a little
    assert inner[1].min() > 0.9 and inner[0].max() < -0.9 and inner[2].max() < -0.9
    assert image[1].min() > 0.5 and image[0].max() < -0.5 and image[2].max() < -0.5
    white, white_label = items["white.jpg"]
    assert white_label == 1 and white.min() > 0.95
    assert items["gray.bmp"][0].max() < -0.95

    unlabelled = ImageFolderDataset(tmp_path, image_size=8)
    assert isinstance(unlabelled[0], torch.Tensor)


def test_image_folder_skips_corrupt_and_truncated_files_with_a_warning(tmp_path) -> None:
    (tmp_path / "a_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _write(tmp_path / "b_good.png", np.full((8, 8, 3), 200, np.uint8))
    good_jpeg = tmp_path / "c_truncated.jpg"
    _write(good_jpeg, np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    data = good_jpeg.read_bytes()
    good_jpeg.write_bytes(data[: len(data) // 2])

    dataset = ImageFolderDataset(tmp_path, image_size=8)
    assert len(dataset) == 3
    with pytest.warns(UserWarning, match="a_corrupt.png"):
        substitute = dataset[0]
    assert torch.equal(substitute, dataset[1])  # the next good file takes its place
    with pytest.warns(UserWarning, match="c_truncated.jpg"):
        wrapped = dataset[2]
    assert torch.equal(wrapped, dataset[1])  # wraps around, past the known bad first file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known bad file is skipped silently the second time
        dataset[0]


def test_image_folder_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolderDataset(tmp_path / "empty", image_size=8)
    _write(tmp_path / "loose" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="class sub-folder"):
        ImageFolderDataset(tmp_path / "loose", image_size=8, class_labels=True)
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderDataset(tmp_path / "loose", image_size=0)


# ----------------------------------------------------------------------------- torchvision


def _write_idx(path, array: np.ndarray) -> None:
    """Write the MNIST idx format: magic (0, 0, uint8 code 8, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_is_read_from_a_local_root_without_download(tmp_path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((3, 28, 28), np.uint8)
    images[1] = 255
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.array([7, 1, 4]))
    dataset = torchvision_dataset("mnist", tmp_path, image_size=32)
    assert len(dataset) == 3
    image, label = dataset[1]
    assert image.shape == (1, 32, 32) and label == 1 and image.min() == 1.0
    assert dataset[0][0].max() == -1.0


@pytest.mark.parametrize(("name", "where"), [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST/raw")])
def test_missing_torchvision_files_say_where_to_put_them(tmp_path, name: str, where: str) -> None:
    with pytest.raises(FileNotFoundError, match=where) as info:
        torchvision_dataset(name, tmp_path)
    assert str(tmp_path) in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created


def test_build_dataset_dispatch(tmp_path) -> None:
    shapes = build_dataset("shapes", image_size=8, size=5, seed=1)
    assert isinstance(shapes, ShapesDataset) and len(shapes) == 5 and shapes.image_size == 8
    with pytest.raises(ValueError, match="data root"):
        build_dataset("cifar10")
    with pytest.raises(ValueError, match="image_size"):
        build_dataset(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        build_dataset(str(tmp_path / "nope"), image_size=8)
    assert math.isclose(shape_area("circle", 1.0), math.pi)
