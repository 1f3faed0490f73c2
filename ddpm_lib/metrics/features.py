"""Where the features come from: :class:`~ddpm_lib.metrics.fid.FeatureStatistics` fed from a
DataLoader or tensor (:func:`compute_statistics`), a folder of images (:func:`statistics_from_folder`,
:class:`ImageFolder`), or a sampler generating on the fly (:func:`statistics_from_sampler`,
:func:`generate_samples`, :func:`quantize`).

Every feature extractor is a ``torch.nn.Module`` (or callable) mapping ``(B, C, H, W)`` images in
``[-1, 1]`` to ``(B, D)``; images are never held, only the running float64 statistics. The
names are re-exported by :mod:`ddpm_lib.metrics.fid` and :mod:`ddpm_lib.metrics`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_lib._checks import check_int

from .fid import IMAGE_EXTENSIONS, FeatureStatistics, _as_features

__all__ = [
    "ImageFolder",
    "compute_statistics",
    "eval_mode",
    "generate_samples",
    "list_images",
    "quantize",
    "statistics_from_folder",
    "statistics_from_sampler",
]


# ============================================================================ feature sources
def _model_device(module: Any) -> torch.device:
    """The device of a module's first parameter or buffer; the CPU for anything else."""
    if isinstance(module, torch.nn.Module):
        for tensor in module.parameters():
            return tensor.device
        for buffer in module.buffers():
            return buffer.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(*modules: Any) -> Iterator[None]:
    """Put every ``torch.nn.Module`` among ``modules`` in eval mode, restoring it afterwards.

    Metrics must not run with dropout or batch statistics; the caller's training state is
    left as it was.
    """
    saved = [
        (module, module.training) for module in modules if isinstance(module, torch.nn.Module)
    ]
    for module, _ in saved:
        module.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.train(training)


def _images_of(batch: Any) -> torch.Tensor:
    """The images of a batch: a tensor, the first element of a tuple/list, or ``batch["image"]``."""
    if isinstance(batch, dict):
        for key in ("image", "images", "pixel_values", "x"):
            if key in batch:
                return batch[key]
        raise ValueError(f"a dict batch must hold 'image' or 'images'; got keys {sorted(batch)}")
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("got an empty batch")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batches must be image tensors (B, C, H, W); got {type(batch).__name__}")
    return batch


def _to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[0, 255]`` -> float ``[-1, 1]``; floating images pass through."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point; got dtype {images.dtype}")
    return images


def _progress_bar(enabled: bool, total: int | None, desc: str) -> Any:
    """A tqdm bar counting images, or ``None`` when disabled (tqdm is imported only then)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


def compute_statistics(
    images: Iterable | torch.Tensor,
    extractor: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 50,
    num_samples: int | None = None,
    keep_features: bool = False,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> FeatureStatistics:
    """Stream images through ``extractor`` and return their :class:`FeatureStatistics`.

    Args:
        images: a ``(N, C, H, W)`` tensor (split into ``batch_size`` chunks) or any iterable of
            batches, e.g. a ``DataLoader``; a batch is an image tensor, a tuple/list whose first
            element is one (``(images, labels)``), or a dict with an ``"image"`` entry. Images
            are ``uint8`` in ``[0, 255]`` or floating point in ``[-1, 1]``.
        extractor: maps ``(B, C, H, W)`` float images in ``[-1, 1]`` to ``(B, D)`` features;
            e.g. :class:`~ddpm_lib.metrics.inception.FIDInceptionV3`. Run in eval mode under
            ``torch.inference_mode`` (its training flag is restored afterwards).
        num_samples: stop after this many images (all of them when ``None``).
        keep_features: keep the features too (for :func:`kernel_inception_distance`).
        progress: show a tqdm bar.
        device: where the extractor runs; by default the device of its parameters.

    Returns:
        The float64 statistics; only the running mean and covariance are held in memory.
    """
    if not callable(extractor):
        raise TypeError(
            f"extractor must be callable (a torch.nn.Module); got {type(extractor).__name__}"
        )
    batch_size = check_int("batch_size", batch_size, 1)
    if num_samples is not None:
        num_samples = check_int("num_samples", num_samples, 1)
    device = torch.device(device) if device is not None else _model_device(extractor)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W); got {tuple(images.shape)}")
        images = images.split(batch_size)
    elif not isinstance(images, Iterable):
        raise TypeError(
            f"images must be a tensor or an iterable of batches; got {type(images).__name__}"
        )
    stats = FeatureStatistics(keep_features=keep_features)
    bar = _progress_bar(progress, num_samples or _length_in_samples(images), "features")
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(extractor))
        if bar is not None:
            stack.callback(bar.close)
        _accumulate(images, extractor, stats, num_samples, device, bar)
    if stats.num_samples == 0:
        raise ValueError("no images were read: the source is empty")
    return stats


def _accumulate(
    images: Iterable,
    extractor: Callable[[torch.Tensor], torch.Tensor],
    stats: FeatureStatistics,
    num_samples: int | None,
    device: torch.device,
    bar: Any,
) -> None:
    """Feed every batch of ``images`` through ``extractor`` into ``stats``."""
    for batch in images:
        batch = _to_unit_range(_images_of(batch))
        if batch.ndim != 4:
            raise ValueError(f"image batches must be (B, C, H, W); got {tuple(batch.shape)}")
        if num_samples is not None:
            batch = batch[: num_samples - (stats.num_samples or 0)]
        with torch.inference_mode():
            features = extractor(batch.to(device))
        features = _as_features(features)
        if features.shape[0] != batch.shape[0]:
            raise ValueError(
                f"extractor returned {features.shape[0]} feature rows for "
                f"{batch.shape[0]} images; expected one (B, D) row per image"
            )
        stats.update(features)
        if bar is not None:
            bar.update(batch.shape[0])
        if num_samples is not None and (stats.num_samples or 0) >= num_samples:
            break


def _length_in_samples(images: Iterable) -> int | None:
    dataset = getattr(images, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


# ---------------------------------------------------------------------------- image folders
def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted by path.

    The same listing as the training datasets use: :func:`ddpm_lib.data.list_images`.
    """
    from ddpm_lib.data import list_images as _list_images

    return _list_images(folder)


class ImageFolder(torch.utils.data.Dataset):
    """Images of a folder (recursively) as ``uint8`` tensors ``(C, H, W)``, RGB by default.

    ``mode`` is a PIL mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel). Files are listed
    and decoded by :func:`ddpm_lib.data.list_images` and :func:`ddpm_lib.data.read_image`,
    at their stored size (no resizing: FID compares the pixels as saved).
    """

    def __init__(self, folder: str | os.PathLike, mode: str = "RGB") -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L'; got {mode!r}")
        self.folder = Path(folder)
        self.mode = mode
        self.files = list_images(folder)
        if not self.files:
            raise ValueError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}, ...) found in {str(self.folder)!r}"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from ddpm_lib.data import read_image

        array = np.asarray(read_image(self.files[index], self.mode), dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W) uint8


def _collate_same_size(items: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(item.shape) for item in items}
    if len(shapes) > 1:
        raise ValueError(
            f"images in one batch must have the same size; got {sorted(shapes)}. Resize them "
            "first, or use batch_size=1"
        )
    return torch.stack(items)


def statistics_from_folder(
    folder: str | os.PathLike,
    extractor: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 50,
    num_workers: int = 0,
    num_samples: int | None = None,
    keep_features: bool = False,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> FeatureStatistics:
    """:func:`compute_statistics` of the images in ``folder`` (recursively, sorted by path).

    Images are read with PIL, converted to RGB and passed to ``extractor`` in ``[-1, 1]`` at
    their stored size (the FID Inception network resizes them to 299x299 itself).
    """
    dataset = ImageFolder(folder)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=check_int("batch_size", batch_size, 1),
        num_workers=num_workers,
        collate_fn=_collate_same_size,
    )
    return compute_statistics(
        loader,
        extractor,
        batch_size=batch_size,
        num_samples=num_samples,
        keep_features=keep_features,
        progress=progress,
        device=device,
    )


# ---------------------------------------------------------------------------- samplers
def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round ``[-1, 1]`` images to the 256 levels of a saved 8-bit image (still in ``[-1, 1]``)."""
    levels = ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return levels / 127.5 - 1.0


def generate_samples(
    sampler: Any,
    model: Callable,
    num_samples: int,
    shape: tuple[int, ...],
    *,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    model_kwargs: dict | Callable[[int, torch.Generator | None], dict] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield batches ``(b, *shape)`` of ``sampler.sample(model, ...)`` until ``num_samples``.

    ``model_kwargs`` is passed to every call, or, when it is a function
    ``model_kwargs(b, generator) -> dict``, called for each batch (e.g. to draw class labels).
    """
    num_samples = check_int("num_samples", num_samples, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    if not callable(getattr(sampler, "sample", None)):
        raise TypeError(f"sampler must have a sample() method; got {type(sampler).__name__}")
    shape = tuple(int(s) for s in shape)
    done = 0
    while done < num_samples:
        count = min(batch_size, num_samples - done)
        kwargs = model_kwargs(count, generator) if callable(model_kwargs) else model_kwargs
        with torch.no_grad():
            images = sampler.sample(
                model, (count, *shape), generator=generator, model_kwargs=kwargs
            )
        # a sampler that decodes latents (LatentDiffusion.decoding_sampler) returns images of
        # another shape than the one it samples: only the batch and the image rank must match
        if images.ndim != 1 + len(shape) or images.shape[0] != count:
            raise ValueError(
                f"sampler.sample returned shape {tuple(images.shape)}; expected {count} samples "
                f"of rank {len(shape)} (sampled shape {(count, *shape)})"
            )
        done += count
        yield images


def statistics_from_sampler(
    sampler: Any,
    model: Callable,
    extractor: Callable[[torch.Tensor], torch.Tensor],
    num_samples: int,
    shape: tuple[int, ...],
    *,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    model_kwargs: dict | Callable[[int, torch.Generator | None], dict] | None = None,
    quantize_samples: bool = True,
    keep_features: bool = False,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> FeatureStatistics:
    """Generate ``num_samples`` images with ``sampler`` and ``model`` and return their statistics.

    Args:
        sampler: any object with ``sample(model, shape, generator=, model_kwargs=)`` returning
            images in ``[-1, 1]`` (the ddpm_lib samplers).
        model: the denoiser passed to the sampler (run in eval mode, then restored).
        extractor: the feature network (see :func:`compute_statistics`).
        num_samples: how many images to generate; never held all at once.
        shape: the shape of one image, ``(C, H, W)``.
        generator: seeds the whole run (reproducible on one device).
        model_kwargs: fixed kwargs, or ``f(b, generator) -> dict`` per batch (class labels).
        quantize_samples: round samples to 8 bits first, so that the figure equals the one
            computed from the same samples saved as PNG files (the usual protocol).
    """
    batches = generate_samples(
        sampler, model, num_samples, shape,
        batch_size=batch_size, generator=generator, model_kwargs=model_kwargs,
    )
    if quantize_samples:
        batches = (quantize(images) for images in batches)
    with eval_mode(model):  # the batches are generated lazily, inside this block
        return compute_statistics(
            batches,
            extractor,
            batch_size=batch_size,
            num_samples=num_samples,
            keep_features=keep_features,
            progress=progress,
            device=device,
        )
