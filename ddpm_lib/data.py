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

The two shapes datasets are defined in ``ddpm_lib/shapes.py`` and importable from here.
:func:`build_dataset` picks one of them from a name or a path (the CLI uses it), and
:func:`image_to_tensor`, :func:`tensor_to_uint8`, :func:`tensor_to_pil` and :func:`save_grid`
convert between ``[-1, 1]`` tensors, ``uint8`` arrays and PIL images.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm_lib import _io
from ddpm_lib import shapes as _shapes
from ddpm_lib._checks import check_choice, check_floating, check_int
from ddpm_lib.shapes import (  # noqa: F401  (re-exported: the shapes datasets live in shapes.py)
    _WORDS,
    ATTRIBUTES,
    CAPTION_LANGUAGES,
    SHAPES,
    CaptionedShapesDataset,
    ShapesDataset,
    render_shape,
    shape_area,
    shape_caption,
)

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

#: RGB (in ``[0, 1]``) of every colour word the captioned shapes use (``ddpm_lib/shapes.py``).
COLORS = _shapes.COLORS
#: The shape's area as a fraction of the image, per size word.
SIZES = _shapes.SIZES
#: Offset of the shape's centre from the middle, as fractions ``(dx, dy)`` of the side.
POSITIONS = _shapes.POSITIONS

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


