"""Datasets and image conversions: everything between files on disk and tensors in ``[-1, 1]``.

Three sources of training images, each a ``torch.utils.data.Dataset`` whose items are
``(image, label)`` pairs (or bare images for an unlabelled folder), ``image`` a float32 tensor
``(C, H, W)`` in ``[-1, 1]``:

- :class:`ShapesDataset`: coloured shapes (circle, square, triangle, cross) on plain
  backgrounds, generated procedurally and deterministically from a seed, any size and
  resolution. Demos and tests train on it without downloading anything.
- :class:`ImageFolderDataset`: every Pillow-readable image under a folder (recursively),
  resized and center-cropped, labelled by sub-folder name if asked. A corrupt or truncated
  file is skipped with a warning that names it.
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

from ddpm_lib._checks import check_choice, check_floating

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

__all__ = [
    "SHAPES",
    "ShapesDataset",
    "ImageFolderDataset",
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
    if not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f"upscale must be a positive int; got {upscale!r}")
    images = images.detach().float().cpu().clamp(-1.0, 1.0)
    if upscale > 1:
        images = images.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images + 1.0) / 2.0, path, nrow=nrow, padding=2, pad_value=1.0)
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
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int; got {size!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
            raise ValueError(f"image_size must be an int >= 4; got {image_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
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
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"root {str(root)!r} is not a folder of images")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int; got {image_size!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels!r}")
        extensions = _image_extensions()
        files = sorted(
            path
            for path in root.rglob("*")
            if path.suffix.lower() in extensions and path.is_file() and not path.name.startswith(".")
        )
        if not files:
            raise FileNotFoundError(f"no image files found under {str(root)!r}")
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
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as image:
                image.load()
                image = _resize_center_crop(image.convert("RGB"), self.image_size)
        except Exception as error:  # noqa: BLE001 - any decoding failure means "skip this file"
            self._bad.add(index)
            warnings.warn(
                f"skipping unreadable image {str(path)!r}: {type(error).__name__}: {error}",
                stacklevel=3,
            )
            return None
        return image_to_tensor(image, self.channels)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
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
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ValueError(f"image_size must be a positive int or None; got {image_size!r}")
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
) -> Dataset:
    """A dataset from a name or a path: what ``ddpm-lib train --data`` accepts.

    - ``"shapes"``: :class:`ShapesDataset` (``size`` items, ``image_size`` default 32, ``seed``).
    - ``"cifar10"`` / ``"mnist"``: :func:`torchvision_dataset` read from ``root``.
    - anything else: a folder, read by :class:`ImageFolderDataset` (``image_size`` required;
      labels from sub-folders when ``class_labels``).
    """
    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be 'shapes', 'cifar10', 'mnist' or a folder; got {source!r}")
    if source == "shapes":
        return ShapesDataset(size=size, image_size=image_size or 32, seed=seed)
    if source in _TORCHVISION:
        if root is None:
            title, where = _TORCHVISION[source]
            raise ValueError(f"{title} needs a data root: {where.format(root='ROOT')}")
        return torchvision_dataset(source, root, train=train, image_size=image_size)
    if image_size is None:
        raise ValueError(f"an image folder needs image_size; got None for {source!r}")
    return ImageFolderDataset(source, image_size, class_labels=class_labels)
