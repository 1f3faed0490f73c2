"""Datasets and image conversions: everything between files on disk and tensors in ``[-1, 1]``.

Four sources of training images, each a ``torch.utils.data.Dataset`` whose items are
``(image, label)`` pairs (or bare images for an unlabelled folder), ``image`` a float32 tensor
``(C, H, W)`` in ``[-1, 1]``:

- :class:`ShapesDataset`: coloured shapes (circle, square, triangle, cross) on plain
  backgrounds, generated procedurally and deterministically from a seed, any size and
  resolution. Demos and tests train on it without downloading anything.
- :class:`ImageFolderDataset`: every Pillow-readable image under a folder (recursively),
  resized and center-cropped, labelled by sub-folder name if asked. A corrupt or truncated
  file is skipped with a warning that names it.
- :class:`CaptionedShapesDataset`: the shapes with ``(image, caption)`` items in English or
  Chinese and a ground-truth attribute record per item, for text-to-image training; folders
  of captioned images are read by :class:`ImageFolderDataset` with ``captions=``.
- :func:`torchvision_dataset`: CIFAR-10 or MNIST read from a local root. Nothing is
  downloaded; missing files raise ``FileNotFoundError`` saying where to put them.

:func:`build_dataset` picks one of them from a name or a path (the CLI uses it), and
:func:`image_to_tensor`, :func:`tensor_to_uint8`, :func:`tensor_to_pil` and :func:`save_grid`
convert between ``[-1, 1]`` tensors, ``uint8`` arrays and PIL images.
"""

from __future__ import annotations

import colorsys
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm_lib import _io
from ddpm_lib._checks import check_choice, check_floating, check_int

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

__all__ = [
    "SHAPES",
    "ShapesDataset",
    "ImageFolderDataset",
    "CaptionedShapesDataset",
    "shape_caption",
    "COLORS",
    "SIZES",
    "POSITIONS",
    "list_images",
    "read_image",
    "torchvision_dataset",
    "build_dataset",
    "render_shape",
    "image_to_tensor",
    "tensor_to_uint8",
    "tensor_to_pil",
    "save_grid",
]

# ----------------------------------------------------------------------------- conversions


def image_to_tensor(image: PILImage.Image, channels: int = 3) -> torch.Tensor:
    """A PIL image as a float32 tensor ``(C, H, W)`` in ``[-1, 1]`` (0 -> -1, 255 -> 1).

    ``channels`` is 3 (RGB) or 1 (grayscale); the image is converted to that mode first.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}")
    image = image.convert("RGB" if channels == 3 else "L")
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W) uint8
    return tensor.to(torch.float32).div_(127.5).sub_(1.0)


def tensor_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in ``[-1, 1]`` as ``uint8`` in ``[0, 255]``, same shape (values are clamped).

    The inverse of :func:`image_to_tensor` up to rounding: ``x -> round((x + 1) * 127.5)``.
    """
    check_floating("images", images)
    return ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def tensor_to_pil(image: torch.Tensor) -> PILImage.Image:
    """One image ``(C, H, W)`` in ``[-1, 1]`` (C = 1 or 3) as a PIL image."""
    from PIL import Image

    check_floating("image", image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (1 or 3, H, W); got {tuple(image.shape)}")
    array = tensor_to_uint8(image).permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, upscale: int = 1
) -> Path:
    """Save a batch ``(B, C, H, W)`` in ``[-1, 1]`` as one PNG grid (``nrow`` images a row).

    ``upscale`` enlarges each image by an integer factor (nearest neighbour) so that small
    samples are easy to look at. Returns the path written; parent folders are created.
    """
    from torchvision.utils import save_image

    check_floating("images", images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W); got {tuple(images.shape)}")
    check_int("upscale", upscale, 1)
    images = images.detach().float().cpu().clamp(-1.0, 1.0)
    if upscale > 1:
        images = images.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    path = Path(path)
    with _io.atomic_path(path) as tmp:  # PNG by default, else the format the suffix names
        save_image((images + 1.0) / 2.0, tmp, nrow=nrow, padding=2, pad_value=1.0,
                   format=path.suffix.lstrip(".") or "png")
    return path


# ----------------------------------------------------------------------------- shapes

SHAPES = ("circle", "square", "triangle", "cross")

# Half-widths, in units of the shape's radius, chosen so every shape covers a similar area.
_SQUARE_HALF = 0.85
_TRIANGLE_INRADIUS = 0.6  # circumradius 1.2
_CROSS_ARM_HALF = 0.33
_CROSS_HALF = 0.95


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of points ``(u, v)`` (in shape radii, v pointing down) inside ``shape``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF
    if shape == "triangle":
        # Equilateral, pointing up: inside all three half-planes n_k . (u, v) <= inradius,
        # outward normals at 90 (the bottom edge), 210 and 330 degrees.
        inside = np.ones(u.shape, dtype=bool)
        for degrees in (90.0, 210.0, 330.0):
            angle = math.radians(degrees)
            inside &= math.cos(angle) * u + math.sin(angle) * v <= _TRIANGLE_INRADIUS
        return inside
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= _CROSS_ARM_HALF) & (av <= _CROSS_HALF)) | (
            (av <= _CROSS_ARM_HALF) & (au <= _CROSS_HALF)
        )
    raise ValueError(f"shape must be one of {', '.join(map(repr, SHAPES))}; got {shape!r}")


def shape_area(shape: str, radius: float) -> float:
    """Exact area (in pixels^2) that :func:`render_shape` covers for a shape of ``radius``."""
    check_choice("shape", shape, SHAPES)
    if shape == "circle":
        unit = math.pi
    elif shape == "square":
        unit = (2 * _SQUARE_HALF) ** 2
    elif shape == "triangle":
        unit = 3 * math.sqrt(3) * _TRIANGLE_INRADIUS**2
    else:
        arm, half = 2 * _CROSS_ARM_HALF, 2 * _CROSS_HALF
        unit = 2 * arm * half - arm * arm
    return unit * radius * radius


def render_shape(
    shape: str,
    image_size: int,
    center: tuple[float, float],
    radius: float,
    color: Sequence[float],
    background: Sequence[float],
    supersample: int = 4,
) -> np.ndarray:
    """Draw one anti-aliased shape on a plain background.

    Args:
        shape: one of :data:`SHAPES`.
        image_size: side of the square image in pixels.
        center: ``(x, y)`` of the shape's centre in pixels (``y`` pointing down).
        radius: the shape's size in pixels (the circle's radius; see ``shape_area``).
        color, background: RGB in ``[0, 1]``.
        supersample: coverage is averaged over ``supersample^2`` points per pixel.

    Returns:
        ``float32`` array ``(H, W, 3)`` in ``[0, 1]``:
        ``background * (1 - coverage) + color * coverage``.
    """
    check_choice("shape", shape, SHAPES)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int; got {image_size!r}")
    if radius <= 0:
        raise ValueError(f"radius must be positive; got {radius!r}")
    n = image_size * supersample
    coords = (np.arange(n, dtype=np.float64) + 0.5) / supersample  # sub-pixel centres
    u, v = np.meshgrid((coords - center[0]) / radius, (coords - center[1]) / radius)  # (n, n)
    # u grows across the columns (x), v down the rows (y)
    mask = _inside(shape, u, v).astype(np.float32)
    coverage = mask.reshape(image_size, supersample, image_size, supersample).mean(axis=(1, 3))
    color_arr = np.asarray(color, dtype=np.float32)
    background_arr = np.asarray(background, dtype=np.float32)
    coverage = coverage[:, :, None]  # (H, W, 1)
    return background_arr * (1.0 - coverage) + color_arr * coverage


class ShapesDataset(Dataset):
    """Coloured shapes on plain backgrounds, generated on the fly: a dataset with no download.

    Item ``i`` is ``(image, label)``: ``image`` a float32 tensor ``(3, image_size,
    image_size)`` in ``[-1, 1]``, ``label = i % len(shapes)`` the index of the shape in
    ``shapes`` (so classes are balanced). Everything else about item ``i`` -- the shape's
    centre (jittered around the middle), size, colour (saturated, bright) and background
    colour (muted, dark) -- is drawn from a NumPy generator seeded with ``(seed, i)``, so the
    dataset is deterministic, any item can be generated alone, and different seeds give
    different datasets.

    Args:
        size: number of items (any positive int; items are not stored).
        image_size: side of the square images in pixels.
        seed: selects the dataset.
        shapes: the classes, a subset of :data:`SHAPES` in any order.
        jitter: largest offset of the centre from the middle, as a fraction of the side.
        radius_range: the shape's radius as a fraction of the side, drawn uniformly.
    """

    def __init__(
        self,
        size: int = 10_000,
        image_size: int = 32,
        seed: int = 0,
        shapes: Sequence[str] = SHAPES,
        jitter: float = 0.12,
        radius_range: tuple[float, float] = (0.22, 0.34),
    ) -> None:
        check_int("size", size, 1)
        check_int("image_size", image_size, 4)
        check_int("seed", seed, 0)
        shapes = tuple(shapes)
        if not shapes or len(set(shapes)) != len(shapes):
            raise ValueError(f"shapes must be distinct names from {SHAPES}; got {shapes!r}")
        for shape in shapes:
            check_choice("shapes", shape, SHAPES)
        if not 0.0 <= jitter < 0.5:
            raise ValueError(f"jitter must be in [0, 0.5); got {jitter!r}")
        low, high = radius_range
        if not 0.0 < low <= high < 0.5:
            raise ValueError(f"radius_range must satisfy 0 < low <= high < 0.5; got {radius_range!r}")
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.classes = list(shapes)
        self.jitter = float(jitter)
        self.radius_range = (float(low), float(high))

    def __len__(self) -> int:
        return self.size

    def describe(self, index: int) -> dict[str, Any]:
        """The parameters of item ``index``: shape, label, centre and radius (pixels), colours."""
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of size {self.size}")
        index %= self.size
        rng = np.random.default_rng([self.seed, index])
        label = index % len(self.classes)
        side = self.image_size
        offset = rng.uniform(-self.jitter, self.jitter, size=2) * side
        radius = rng.uniform(*self.radius_range) * side
        hue = rng.uniform()
        color = colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.0))
        background = colorsys.hsv_to_rgb(
            (hue + rng.uniform(0.25, 0.75)) % 1.0, rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.35)
        )
        return {
            "shape": self.classes[label],
            "label": label,
            "center": (side / 2 + offset[0], side / 2 + offset[1]),
            "radius": radius,
            "color": color,
            "background": background,
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        params = self.describe(index)
        array = render_shape(
            params["shape"],
            self.image_size,
            params["center"],
            params["radius"],
            params["color"],
            params["background"],
        )  # (H, W, 3) in [0, 1]
        image = torch.from_numpy(array).permute(2, 0, 1).mul(2.0).sub(1.0)  # (3, H, W)
        return image.contiguous(), params["label"]

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(size={self.size}, image_size={self.image_size}, seed={self.seed}, "
            f"shapes={tuple(self.classes)})"
        )


# ----------------------------------------------------------------------------- image folders


def _image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def list_images(root: str | os.PathLike) -> list[Path]:
    """Every image file under ``root`` (recursively), sorted by path; hidden files are skipped.

    An image file is one whose extension Pillow can open (png, jpg, webp, bmp, tiff, ...).
    This is the one place the package lists a folder of images (datasets and metrics).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root {str(root)!r} is not a folder of images")
    extensions = _image_extensions()
    return sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in extensions and path.is_file() and not path.name.startswith(".")
    )


def read_image(path: str | os.PathLike, mode: str = "RGB") -> PILImage.Image:
    """Decode one image file completely into a PIL image of ``mode`` (``"RGB"`` or ``"L"``).

    The one place the package decodes image files; errors of a corrupt file propagate.
    """
    from PIL import Image

    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L'; got {mode!r}")
    with Image.open(path) as image:
        image.load()
        return image.convert(mode)


CAPTION_FORMATS = ("metadata", "txt")


def _read_text_caption(image_path: Path, index: int) -> str:
    from ddpm_lib._readers import decode_utf8, read_bytes

    path = image_path.with_suffix(".txt")
    if not path.is_file():
        raise ValueError(f"captions='txt': image {str(image_path)!r} has no caption file {path.name!r}")
    where = f"caption file {str(path)!r} (caption {index})"
    return decode_utf8(read_bytes(path, "caption file"), where).strip()


def _read_metadata_captions(root: Path) -> tuple[list[Path], list[str]]:
    """The images and captions of every ``metadata.jsonl`` under ``root`` (sorted by image path)."""
    import json

    from ddpm_lib._readers import read_bytes

    pairs: dict[Path, str] = {}
    for metadata in sorted(root.rglob("metadata.jsonl")):
        data = read_bytes(metadata, "metadata.jsonl file")
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as error:
            line_number = data[:error.start].count(b"\n") + 1
            raise ValueError(
                f"caption file {str(metadata)!r} is not UTF-8 text: byte {error.start} "
                f"(0x{data[error.start]:02x}, line {line_number}) {error.reason}"
            ) from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{str(metadata)!r} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where} is not JSON: {error.msg} (column {error.colno}; cut "
                                 "short or corrupt?)") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where} must be a JSON object; got {type(record).__name__}")
            for key in ("file_name", "text"):
                if key not in record:
                    raise ValueError(f"{where} has no {key!r} field (missing key {key!r}): "
                                     f"{line.strip()[:80]}")
                if not isinstance(record[key], str):
                    raise ValueError(
                        f"{where}: {key!r} must be a string; got {type(record[key]).__name__}"
                    )
            path = metadata.parent / record["file_name"]
            if not path.is_file():
                raise ValueError(f"{where} names a missing file {record['file_name']!r}")
            pairs[path] = record["text"]
    if not pairs:
        raise FileNotFoundError(f"captions='metadata': no metadata.jsonl entries under {str(root)!r}")
    files = sorted(pairs)
    return files, [pairs[path] for path in files]


def _resize_center_crop(image: PILImage.Image, image_size: int) -> PILImage.Image:
    """Resize so the shorter side is ``image_size`` (bicubic, antialiased), then crop the centre."""
    from PIL import Image

    width, height = image.size
    scale = image_size / min(width, height)
    new_w, new_h = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


class ImageFolderDataset(Dataset):
    """Every image under ``root`` (recursively), resized and center-cropped to ``image_size``.

    Any file whose extension Pillow can open is included (png, jpg, webp, bmp, tiff, ...),
    sorted by path so the order is the same on every machine. With ``class_labels=True``, the
    first-level sub-folder of each file is its class: item ``i`` is ``(image, label)`` with
    ``label`` the index of the folder name in the sorted ``classes``; otherwise items are
    bare images. ``image`` is float32 ``(channels, image_size, image_size)`` in ``[-1, 1]``.

    With ``captions``, item ``i`` is ``(image, caption)`` for text-to-image training, the caption
    read as UTF-8 from one of the two usual layouts:

    - ``"metadata"``: ``metadata.jsonl`` files (in ``root`` or any sub-folder), one JSON
      object a line with ``file_name`` (relative to that file's folder) and ``text``: the
      Hugging Face ``imagefolder`` convention. The images listed there are the dataset.
    - ``"txt"``: beside each image ``name.png`` a ``name.txt`` holding its caption.

    A caption file that is not UTF-8, a ``metadata.jsonl`` line that is not a JSON object with
    a string ``file_name`` and ``text``, or one that names a missing file raises ``ValueError``
    naming the file and the line (and the byte that is not UTF-8), at construction.

    A file that cannot be decoded (corrupt, truncated, not an image after all) is skipped with
    a ``UserWarning`` naming it: the next readable file in order is returned in its place, so
    the dataset's length and order stay fixed and training goes on.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        class_labels: bool = False,
        channels: int = 3,
        captions: str | None = None,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"root {str(root)!r} is not a folder of images")
        check_int("image_size", image_size, 1)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels!r}")
        if captions is not None:
            check_choice("captions", captions, CAPTION_FORMATS)
            if class_labels:
                raise ValueError("class_labels=True and captions cannot be combined; choose one")
        if captions == "metadata":
            files, self.captions = _read_metadata_captions(root)
        else:
            files = list_images(root)
        if not files:
            raise FileNotFoundError(f"no image files found under {str(root)!r}")
        if captions == "txt":
            self.captions = [_read_text_caption(path, index) for index, path in enumerate(files)]
        elif captions is None:
            self.captions = []
        self.caption_format = captions
        self.root = root
        self.files = files
        self.image_size = image_size
        self.channels = channels
        self.class_labels = bool(class_labels)
        self.classes: list[str] = []
        self.labels: list[int] = []
        if self.class_labels:
            loose = [path for path in files if path.parent == root]
            if loose:
                raise ValueError(
                    f"class_labels=True needs every image in a class sub-folder of {str(root)!r}; "
                    f"{len(loose)} file(s) lie in the root itself, e.g. {loose[0].name!r}"
                )
            self.classes = sorted({path.relative_to(root).parts[0] for path in files})
            index = {name: i for i, name in enumerate(self.classes)}
            self.labels = [index[path.relative_to(root).parts[0]] for path in files]
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> torch.Tensor | None:
        path = self.files[index]
        try:
            image = _resize_center_crop(read_image(path), self.image_size)
        except Exception as error:  # noqa: BLE001 - any decoding failure means "skip this file"
            self._bad.add(index)
            warnings.warn(
                f"skipping unreadable image {str(path)!r}: {type(error).__name__}: {error}",
                stacklevel=3,
            )
            return None
        return image_to_tensor(image, self.channels)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int | str]:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for offset in range(n):
            candidate = (index + offset) % n
            if candidate in self._bad:
                continue
            image = self._load(candidate)
            if image is not None:
                if self.caption_format is not None:
                    return image, self.captions[candidate]
                return (image, self.labels[candidate]) if self.class_labels else image
        raise RuntimeError(f"none of the {n} files under {str(self.root)!r} could be read")

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={str(self.root)!r}, {len(self)} images, "
            f"image_size={self.image_size}, classes={len(self.classes) or None})"
        )


# ----------------------------------------------------------------------------- torchvision

_TORCHVISION = {
    "cifar10": (
        "CIFAR-10",
        "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and "
        "extract it there, so that {root}/cifar-10-batches-py/data_batch_1 exists",
    ),
    "mnist": (
        "MNIST",
        "put the four files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (un-gzipped) in {root}/MNIST/raw/",
    ),
}


class _TorchvisionImages(Dataset):
    """Wraps a torchvision dataset of PIL images: items become ``(image in [-1, 1], label)``."""

    def __init__(self, base: Any, image_size: int | None, channels: int, name: str) -> None:
        self.base = base
        self.image_size = image_size
        self.channels = channels
        self.name = name
        self.classes = list(getattr(base, "classes", []))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = _resize_center_crop(image, self.image_size)
        return image_to_tensor(image, self.channels), int(label)

    def __repr__(self) -> str:
        return f"torchvision_dataset({self.name!r}, {len(self)} images, image_size={self.image_size})"


def torchvision_dataset(
    name: str, root: str | os.PathLike, *, train: bool = True, image_size: int | None = None
) -> Dataset:
    """CIFAR-10 (``"cifar10"``, 3x32x32) or MNIST (``"mnist"``, 1x28x28) from a local folder.

    Items are ``(image, label)`` with ``image`` float32 in ``[-1, 1]``, resized and
    center-cropped to ``image_size`` when given. Nothing is downloaded: when the files are not
    under ``root``, ``FileNotFoundError`` says which files to put where.
    """
    name = check_choice("name", name, tuple(_TORCHVISION))
    check_int("image_size", image_size, 1, allow_none=True)
    import torchvision.datasets as tv_datasets

    title, where = _TORCHVISION[name]
    root = Path(root).expanduser()
    cls = {"cifar10": tv_datasets.CIFAR10, "mnist": tv_datasets.MNIST}[name]
    try:
        base = cls(str(root), train=train, download=False)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"{title} not found under {str(root)!r}: {where.format(root=root)} "
            f"(nothing is downloaded automatically)"
        ) from error
    return _TorchvisionImages(base, image_size, 3 if name == "cifar10" else 1, name)


def build_dataset(
    source: str,
    *,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    class_labels: bool = True,
    size: int = 10_000,
    seed: int = 0,
    train: bool = True,
    captions: str | None = None,
    language: str = "en",
) -> Dataset:
    """A dataset from a name or a path: what ``ddpm-lib train --data`` accepts.

    - ``"shapes"``: :class:`ShapesDataset` (``size`` items, ``image_size`` default 32, ``seed``).
    - ``"captioned-shapes"``: :class:`CaptionedShapesDataset` (``(image, caption)`` items,
      ``image_size`` default 16, captions in ``language``).
    - ``"cifar10"`` / ``"mnist"``: :func:`torchvision_dataset` read from ``root``.
    - anything else: a folder, read by :class:`ImageFolderDataset` (``image_size`` required;
      labels from sub-folders when ``class_labels``; ``(image, caption)`` items when
      ``captions`` is ``"metadata"`` or ``"txt"``).
    """
    if not isinstance(source, str) or not source:
        raise ValueError(
            f"source must be 'shapes', 'captioned-shapes', 'cifar10', 'mnist' or a folder; "
            f"got {source!r}"
        )
    if source == "shapes":
        return ShapesDataset(size=size, image_size=image_size or 32, seed=seed)
    if source == "captioned-shapes":
        return CaptionedShapesDataset(size=size, image_size=image_size or 16, seed=seed,
                                      language=language)
    if source in _TORCHVISION:
        if root is None:
            title, where = _TORCHVISION[source]
            raise ValueError(f"{title} needs a data root: {where.format(root='ROOT')}")
        return torchvision_dataset(source, root, train=train, image_size=image_size)
    if image_size is None:
        raise ValueError(f"an image folder needs image_size; got None for {source!r}")
    if captions is not None:
        return ImageFolderDataset(source, image_size, captions=captions)
    return ImageFolderDataset(source, image_size, class_labels=class_labels)


# ----------------------------------------------------------------------------- captioned shapes

#: RGB (in ``[0, 1]``) of every colour word the captioned shapes use; far apart, so that the
#: nearest palette entry names a pixel's colour without doubt.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.12, 0.1),
    "green": (0.12, 0.72, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.12),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "gray": (0.5, 0.5, 0.5),
}
#: The shape's area as a fraction of the image, per size word.
SIZES: dict[str, float] = {"small": 0.10, "large": 0.20}
#: Offset of the shape's centre from the middle, as fractions ``(dx, dy)`` of the side.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.0, 0.0),
    "left": (-0.22, 0.0),
    "right": (0.22, 0.0),
    "top": (0.0, -0.22),
    "bottom": (0.0, 0.22),
}
ATTRIBUTES = ("kind", "color", "background", "size", "position")
CAPTION_LANGUAGES = ("en", "zh")

_WORDS = {
    "en": {
        "circle": "circle", "square": "square", "triangle": "triangle", "cross": "cross",
        "small": "small", "large": "large",
        "center": "in the center", "left": "on the left", "right": "on the right",
        "top": "at the top", "bottom": "at the bottom",
        **{name: name for name in COLORS},
    },
    "zh": {
        "circle": "圆形", "square": "正方形", "triangle": "三角形", "cross": "十字",
        "small": "小的", "large": "大的",
        "center": "中间", "left": "左边", "right": "右边", "top": "上方", "bottom": "下方",
        "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "white": "白色",
        "black": "黑色", "gray": "灰色",
    },
}
_NUM_TEMPLATES = {"en": 4, "zh": 3}


def shape_caption(
    attributes: dict[str, str], language: str = "en", template: int = 0
) -> str:
    """A caption (or prompt) that states the given attributes of a captioned shape.

    Args:
        attributes: any subset of ``kind`` (one of :data:`SHAPES`), ``color`` and
            ``background`` (keys of :data:`COLORS`), ``size`` (:data:`SIZES`) and ``position``
            (:data:`POSITIONS`). Missing ones are not mentioned (a missing kind reads "shape").
        language: ``"en"`` or ``"zh"`` (Chinese words and word order).
        template: which of the language's sentence patterns (4 in English, 3 in Chinese),
            taken modulo their number.

    Returns:
        The caption, e.g. ``"a small red circle on the left on a black background"`` or
        ``"黑色背景上左边有一个小的红色圆形"``.

    Raises:
        ValueError: an unknown key, attribute value or language.
    """
    check_choice("language", language, CAPTION_LANGUAGES)
    allowed = {
        "kind": SHAPES, "color": tuple(COLORS), "background": tuple(COLORS),
        "size": tuple(SIZES), "position": tuple(POSITIONS),
    }
    if not isinstance(attributes, dict):
        raise TypeError(f"attributes must be a dict; got {type(attributes).__name__}")
    for key, value in attributes.items():
        check_choice("attributes key", key, ATTRIBUTES)
        check_choice(f"attributes[{key!r}]", value, allowed[key])
    check_int("template", template)
    words = _WORDS[language]
    said = {key: words[value] for key, value in attributes.items()}
    template %= _NUM_TEMPLATES[language]
    if language == "en":
        noun = " ".join(said[key] for key in ("size", "color") if key in said)
        noun = f"{noun} {said.get('kind', 'shape')}".strip()
        noun = ("an " if noun[0] in "aeiou" else "a ") + noun
        where = f" {said['position']}" if "position" in said else ""
        background = said.get("background")
        if template == 0:
            return f"{noun}{where}" + (f" on a {background} background" if background else "")
        if template == 1:
            return (f"a {background} background with " if background else "") + f"{noun}{where}"
        if template == 2:
            return f"{noun}{where}" + (f", {background} background" if background else "")
        return f"there is {noun}{where}" + (f"; the background is {background}" if background else "")
    noun = "一个" + said.get("size", "") + said.get("color", "") + said.get("kind", "图形")
    where = said.get("position", "")
    background = said.get("background")
    if template == 0:
        return (f"{background}背景上" if background else "") + f"{where}有{noun}"
    if template == 1:
        return noun + (f"，在{where}" if where else "") + (f"，{background}背景" if background else "")
    return (f"在{background}背景上画着" if background else "画着") + noun + (
        f"，位于{where}" if where else ""
    )


class CaptionedShapesDataset(Dataset):
    """Captioned shapes for text-to-image training: items are ``(image, caption)``.

    Each image shows one shape with five attributes, each named by its caption:

    - ``kind``: one of ``kinds`` (default :data:`SHAPES`: circle, square, triangle, cross);
    - ``color``: the shape's colour, one of ``colors`` (a name of :data:`COLORS`);
    - ``background``: the plain background's colour, one of ``backgrounds``;
    - ``size``: ``"small"`` or ``"large"`` (its area, :data:`SIZES`, the same for every kind);
    - ``position``: ``"center"``, ``"left"``, ``"right"``, ``"top"`` or ``"bottom"``.

    Item ``i`` draws, from a NumPy generator seeded with ``(seed, i)``, one allowed combination
    of attributes (uniformly), a small jitter of the position and area, a sentence pattern of
    :func:`shape_caption` and whether the caption mentions the size and the position (each
    with probability ``mention_probability``; kind and both colours are always mentioned).
    :meth:`attributes` gives the complete ground truth, so samples drawn for a caption can be
    scored against it (:func:`ddpm_lib.metrics.prompt_accuracy`).

    Args:
        size: number of items.
        image_size: side of the square images in pixels (16 suits a CPU).
        seed: selects the dataset.
        language: ``"en"`` or ``"zh"``: the language of the captions.
        kinds, colors, backgrounds: the attribute values used (a shape never has the colour of
            its background).
        holdout: combinations never generated, each a dict of some attributes; e.g.
            ``[{"kind": "circle", "color": "red", "background": "white"}]`` leaves out every
            red circle on white, so that a model can be asked for it as a new combination of
            attributes it has seen.
        mention_probability: how often the caption states the size and the position.

    Images are float32 ``(3, image_size, image_size)`` in ``[-1, 1]``.
    """

    def __init__(
        self,
        size: int = 10_000,
        image_size: int = 16,
        seed: int = 0,
        language: str = "en",
        kinds: Sequence[str] = SHAPES,
        colors: Sequence[str] = ("red", "green", "blue", "yellow"),
        backgrounds: Sequence[str] = ("black", "white", "gray"),
        holdout: Sequence[dict[str, str]] = (),
        mention_probability: float = 0.5,
    ) -> None:
        check_int("size", size, 1)
        check_int("image_size", image_size, 8)
        check_int("seed", seed, 0)
        self.language = check_choice("language", language, CAPTION_LANGUAGES)
        values = {}
        for name, given, allowed in (
            ("kinds", kinds, SHAPES), ("colors", colors, tuple(COLORS)),
            ("backgrounds", backgrounds, tuple(COLORS)),
        ):
            given = tuple(given)
            if not given or len(set(given)) != len(given):
                raise ValueError(f"{name} must be distinct names from {allowed}; got {given!r}")
            for value in given:
                check_choice(name, value, allowed)
            values[name] = given
        if not 0.0 <= mention_probability <= 1.0:
            raise ValueError(f"mention_probability must be in [0, 1]; got {mention_probability!r}")
        holdout = [dict(rule) for rule in holdout]
        for rule in holdout:
            shape_caption(rule)  # validates its keys and values
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.kinds, self.colors, self.backgrounds = (
            values["kinds"], values["colors"], values["backgrounds"]
        )
        self.holdout = holdout
        self.mention_probability = float(mention_probability)
        combinations = []
        for kind in self.kinds:
            for color in self.colors:
                for background in self.backgrounds:
                    if color == background:
                        continue
                    for size_word in SIZES:
                        for position in POSITIONS:
                            combo = {"kind": kind, "color": color, "background": background,
                                     "size": size_word, "position": position}
                            if not any(all(combo[k] == v for k, v in rule.items()) for rule in holdout):
                                combinations.append(combo)
        if not combinations:
            raise ValueError("holdout leaves no combination of attributes to generate")
        #: Every combination of attributes the dataset draws from (uniformly).
        self.combinations: list[dict[str, str]] = combinations

    def __len__(self) -> int:
        return self.size

    def describe(self, index: int) -> dict[str, Any]:
        """Everything about item ``index``: attributes, caption, centre and radius (pixels)."""
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of size {self.size}")
        index %= self.size
        rng = np.random.default_rng([self.seed, index])
        attributes = dict(self.combinations[int(rng.integers(len(self.combinations)))])
        side = self.image_size
        dx, dy = POSITIONS[attributes["position"]]
        jitter = rng.uniform(-0.03, 0.03, size=2)
        center = (side * (0.5 + dx + jitter[0]), side * (0.5 + dy + jitter[1]))
        area = SIZES[attributes["size"]] * side * side * rng.uniform(0.92, 1.08)
        radius = math.sqrt(area / shape_area(attributes["kind"], 1.0))
        mentioned = {key: attributes[key] for key in ("kind", "color", "background")}
        for key in ("size", "position"):
            if rng.uniform() < self.mention_probability:
                mentioned[key] = attributes[key]
        template = int(rng.integers(_NUM_TEMPLATES[self.language]))
        return {
            "attributes": attributes,
            "caption": shape_caption(mentioned, self.language, template),
            "mentioned": mentioned,
            "center": center,
            "radius": radius,
        }

    def attributes(self, index: int) -> dict[str, str]:
        """The ground truth of item ``index``: ``kind``, ``color``, ``background``, ``size``,
        ``position``."""
        return self.describe(index)["attributes"]

    def caption(self, index: int) -> str:
        """The caption of item ``index`` (what ``dataset[index][1]`` is)."""
        return self.describe(index)["caption"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        params = self.describe(index)
        attributes = params["attributes"]
        array = render_shape(
            attributes["kind"], self.image_size, params["center"], params["radius"],
            COLORS[attributes["color"]], COLORS[attributes["background"]],
        )  # (H, W, 3) in [0, 1]
        image = torch.from_numpy(array).permute(2, 0, 1).mul(2.0).sub(1.0)  # (3, H, W)
        return image.contiguous(), params["caption"]

    def __repr__(self) -> str:
        return (
            f"CaptionedShapesDataset(size={self.size}, image_size={self.image_size}, "
            f"seed={self.seed}, language={self.language!r}, "
            f"{len(self.combinations)} combinations)"
        )
