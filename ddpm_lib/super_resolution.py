"""Super-resolution data: ``(high_res, low_res)`` training pairs made on the fly, resizing and
the side-by-side grids of an upsampler.

A super-resolution stage of a cascade (SR3; Ho et al. 2022; GLIDE's and Imagen's upsamplers)
is trained on real images and their downsampled copies, which need no captions.
:class:`SuperResolutionPairs` wraps any image dataset: item ``i`` is
``(high_res, low_res, *rest)`` where ``rest`` keeps the wrapped item's label or caption, so a
text- or class-conditional upsampler trains from the same items. The high-resolution image
comes first because it is what the :class:`ddpm_lib.Trainer` denoises (``x0``); the
low-resolution one is the model's ``cond_image``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ._checks import check_choice, check_int

__all__ = [
    "DOWNSAMPLE_MODES",
    "SuperResolutionPairs",
    "downsample",
    "side_by_side",
    "upsample",
]

#: ``"area"`` (the mean of each ``f x f`` block) or ``"bicubic"`` (antialiased, clamped)
DOWNSAMPLE_MODES = ("area", "bicubic")


def _check_images(images: Any, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor; got {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise ValueError(f"{name} must be (C, H, W) or (B, C, H, W); got {tuple(images.shape)}")
    return images


def downsample(images: torch.Tensor, factor: int, mode: str = "area") -> torch.Tensor:
    """Shrink ``(B, C, H, W)`` (or ``(C, H, W)``) images by an integer ``factor``.

    ``"area"`` averages each ``factor x factor`` block (what ADM's and Imagen's data
    pipelines use); ``"bicubic"`` is antialiased bicubic resampling, clamped to ``[-1, 1]``.
    ``H`` and ``W`` must be divisible by ``factor``.
    """
    images = _check_images(images)
    factor = check_int("factor", factor, 1)
    check_choice("mode", mode, DOWNSAMPLE_MODES)
    height, width = images.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"the image size {(height, width)} must be divisible by factor={factor}")
    if factor == 1:
        return images
    batch = images[None] if images.ndim == 3 else images
    size = (height // factor, width // factor)
    if mode == "area":
        low = F.interpolate(batch, size=size, mode="area")
    else:
        low = F.interpolate(batch, size=size, mode="bicubic", align_corners=False,
                            antialias=True).clamp(-1.0, 1.0)
    return low[0] if images.ndim == 3 else low


def upsample(images: torch.Tensor, factor: int, mode: str = "bicubic") -> torch.Tensor:
    """Enlarge ``(B, C, h, w)`` images by ``factor``: ``"bicubic"`` (clamped to ``[-1, 1]``,
    the baseline an upsampler must beat), ``"bilinear"`` or ``"nearest"``."""
    images = _check_images(images)
    factor = check_int("factor", factor, 1)
    check_choice("mode", mode, ("bicubic", "bilinear", "nearest"))
    batch = images[None] if images.ndim == 3 else images
    options = {} if mode == "nearest" else {"align_corners": False}
    high = F.interpolate(batch, scale_factor=factor, mode=mode, **options).clamp(-1.0, 1.0)
    return high[0] if images.ndim == 3 else high


def side_by_side(low_res: torch.Tensor, samples: torch.Tensor,
                 originals: torch.Tensor | None = None) -> torch.Tensor:
    """Interleave ``(B, C, h, w)`` conditions (nearest-upsampled), ``(B, C, H, W)`` samples and
    optional originals into ``(k B, C, H, W)``: a grid with ``nrow=k`` shows one triple a
    row (low-res | sample | original)."""
    factor = samples.shape[-1] // low_res.shape[-1]
    columns = [upsample(low_res.to(samples), factor, "nearest"), samples]
    if originals is not None:
        columns.append(originals.to(samples))
    return torch.stack(columns, dim=1).flatten(0, 1)


class SuperResolutionPairs(Dataset):
    """``(high_res, low_res, *rest)`` pairs from any image dataset, made on the fly.

    Args:
        dataset: items are images ``(C, H, W)`` in ``[-1, 1]`` or tuples ``(image, ...)``
            (the other fields, a label or a caption, are kept in ``rest``).
        factor: the scale factor (2, 4, 8, ...): ``low_res`` is ``(C, H / factor, W / factor)``.
        mode: ``"area"`` or ``"bicubic"`` (antialiased) downsampling, :func:`downsample`.

    The pairs are deterministic (no randomness): the noise augmentation of the condition is
    drawn by the Trainer (:class:`ddpm_lib.NoiseAugmentation`), so that it resumes exactly.
    """

    def __init__(self, dataset: Dataset, factor: int, *, mode: str = "area") -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style Dataset; got {type(dataset).__name__}")
        self.dataset = dataset
        self.factor = check_int("factor", factor, 2)
        self.mode = check_choice("mode", mode, DOWNSAMPLE_MODES)
        first = self[0] if len(self) else None  # fail now on an unusable layout
        self.image_shape = tuple(first[0].shape) if first is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        image, rest = (item[0], tuple(item[1:])) if isinstance(item, (tuple, list)) else (item, ())
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            raise TypeError(f"the wrapped dataset's images must be (C, H, W) tensors; item "
                            f"{index} holds {type(image).__name__}")
        return (image, downsample(image, self.factor, self.mode), *rest)

    def __repr__(self) -> str:
        return (f"SuperResolutionPairs({type(self.dataset).__name__}, factor={self.factor}, "
                f"mode={self.mode!r})")
