"""Negative log-likelihood in bits per dimension over a dataset (Ho et al. 2020, Table 2).

For every image the full variational bound is evaluated with all ``T`` timesteps:

    -log p(x0) <= L_T + sum_{t=1}^{T-1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, I))                        (the prior term)
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))       (one per timestep, t > 0)
    L_0     = -log p(x0 | x_1), the discretized Gaussian decoder (256 bins on [-1, 1])

by :meth:`ddpm_lib.VLBLoss.bits_per_dim`, each term divided by ``D log 2`` (``D = C H W``).
:func:`nll_bits_per_dim` averages the bound over a dataset and keeps the per-term means, so one
can see where the bits go (typically most of them in the first few timesteps and the decoder).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddpm_lib._checks import check_int

from .features import _model_device, _to_unit_range, eval_mode


@dataclass(frozen=True)
class BitsPerDim:
    """The result of :func:`nll_bits_per_dim` (all values in bits per dimension).

    Attributes:
        mean: the bound averaged over the samples (the NLL figure papers report).
        stderr: standard error of ``mean`` (sample standard deviation / sqrt(N)).
        num_samples: ``N``, the number of images evaluated.
        prior: mean of the prior term ``L_T``.
        decoder: mean of the decoder term ``L_0``.
        terms: ``(T,)`` mean of the per-timestep terms of
            ``VLBLoss.bits_per_dim(..., return_terms=True)["terms"]``: ``terms[0]`` is the
            decoder ``L_0``, ``terms[t]`` the KL at timestep ``t``; ``mean = prior +
            terms.sum()``.
        per_sample: ``(N,)`` bound of every sample (for pooling runs or a histogram).
    """

    mean: float
    stderr: float
    num_samples: int
    prior: float
    decoder: float
    terms: np.ndarray = field(repr=False)
    per_sample: np.ndarray = field(repr=False)

    def breakdown(self, num_groups: int = 4) -> list[tuple[int, int, float]]:
        """Sum of ``terms`` over ``num_groups`` contiguous timestep ranges.

        Returns ``[(t_first, t_last, bits), ...]`` (inclusive bounds), e.g. how many bits/dim
        the first quarter of the chain accounts for.
        """
        num_groups = check_int("num_groups", num_groups, 1)
        edges = np.linspace(0, len(self.terms), min(num_groups, len(self.terms)) + 1).round()
        return [
            (int(a), int(b) - 1, float(self.terms[int(a) : int(b)].sum()))
            for a, b in zip(edges[:-1], edges[1:])
        ]

    def __str__(self) -> str:
        groups = ", ".join(f"t {a}-{b}: {bits:.4f}" for a, b, bits in self.breakdown())
        return (
            f"{self.mean:.4f} +- {self.stderr:.4f} bits/dim over {self.num_samples} samples "
            f"(prior {self.prior:.4f}, decoder {self.decoder:.4f}; timestep terms {groups})"
        )


def _batches(
    dataset: Any, batch_size: int, labels_as: str | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(images, labels)`` batches from a tensor, a Dataset or an iterable of batches.

    ``labels`` is ``None`` when the dataset has none; then ``labels_as`` is an error.
    """
    for images, labels in _raw_batches(dataset, batch_size):
        if labels_as is not None and labels is None:
            raise ValueError(
                f"labels_as={labels_as!r} needs (images, labels) batches; the dataset yields "
                "images only"
            )
        yield images, labels


def _raw_batches(dataset: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, Any]]:
    if isinstance(dataset, torch.Tensor):
        for images in dataset.split(batch_size):
            yield images, None
        return
    if isinstance(dataset, torch.utils.data.Dataset):
        dataset = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    if not isinstance(dataset, Iterable):
        raise TypeError(
            "dataset must be a (N, C, H, W) tensor, a torch Dataset or an iterable of batches; "
            f"got {type(dataset).__name__}"
        )
    for batch in dataset:
        labels = None
        if isinstance(batch, dict):
            images = batch.get("image", batch.get("images"))
            labels = batch.get("label", batch.get("labels"))
        elif isinstance(batch, (tuple, list)):
            images = batch[0]
            labels = batch[1] if len(batch) > 1 else None
        else:
            images = batch
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"batches must hold image tensors; got {type(images).__name__}")
        yield images, labels


def nll_bits_per_dim(
    model: Any,
    schedule: Any,
    dataset: Any,
    *,
    variance: str = "fixed_small",
    prediction: str = "eps",
    batch_size: int = 64,
    num_samples: int | None = None,
    device: torch.device | str | None = None,
    model_kwargs: dict | None = None,
    labels_as: str | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
    loss: Any = None,
) -> BitsPerDim:
    """Negative log-likelihood bound of ``model`` on ``dataset`` in bits per dimension.

    Args:
        model: the denoiser ``model(x_t, t, **model_kwargs)``.
        schedule: the :class:`~ddpm_lib.NoiseSchedule` it was trained with.
        dataset: ``(N, C, H, W)`` tensor, a ``torch.utils.data.Dataset`` (items ``image`` or
            ``(image, label)``) or an iterable of batches (a ``DataLoader``). Images are
            ``uint8`` or floats in ``[-1, 1]`` on the 256-level grid (the decoder is discrete).
        variance: ``"fixed_small"``, ``"fixed_large"``, ``"learned"`` or ``"learned_range"``.
        prediction: what the model predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        batch_size: batch size when ``dataset`` is a tensor or a Dataset.
        num_samples: evaluate only the first ``num_samples`` images.
        device: where the model runs (default: the device of its parameters).
        model_kwargs: extra keyword arguments for every model call.
        labels_as: the model keyword that receives the dataset's labels (``"y"`` for a
            class-conditional UNet); ``None`` ignores labels.
        progress: show a progress bar with the running mean.
        generator: source of the noise of every term (on ``device``); a seed reproduces the
            figure exactly.
        loss: a ``VLBLoss`` (or compatible object with ``bits_per_dim``) to use instead of
            ``VLBLoss(schedule, variance=variance, prediction=prediction)``.

    Each batch costs ``T`` model evaluations (all timesteps), so this is ``T`` times the price
    of one training step per image. The model runs in eval mode (its training flag is restored
    afterwards), without gradients.

    Returns:
        :class:`BitsPerDim` with the mean, its standard error and the per-term breakdown.
    """
    loss = _vlb_loss(loss, schedule, variance, prediction)
    batch_size = check_int("batch_size", batch_size, 1)
    if num_samples is not None:
        num_samples = check_int("num_samples", num_samples, 1)
    if isinstance(dataset, torch.Tensor) and dataset.ndim < 2:
        raise ValueError(f"dataset must be a (N, C, H, W) tensor; got {tuple(dataset.shape)}")
    device = torch.device(device) if device is not None else _model_device(model)
    model_kwargs = dict(model_kwargs or {})
    if labels_as is not None and labels_as in model_kwargs:
        raise ValueError(f"labels_as={labels_as!r} is also given in model_kwargs")

    bar = _progress_bar(dataset, num_samples) if progress else None
    running = _RunningBound()
    try:
        for images, labels in _batches(dataset, batch_size, labels_as):
            if num_samples is not None:
                images = images[: num_samples - running.count]
                labels = labels[: num_samples - running.count] if labels is not None else None
            if images.shape[0] == 0:
                break
            x0 = _check_images(images).to(device)
            kwargs = dict(model_kwargs)
            if labels_as is not None:
                kwargs[labels_as] = torch.as_tensor(labels).to(device)
            with torch.no_grad(), eval_mode(model):
                result = loss.bits_per_dim(
                    model, x0, progress=False, return_terms=True, generator=generator, **kwargs
                )
            running.add(result, x0.shape[0])
            if bar is not None:
                bar.update(x0.shape[0])
                bar.set_postfix(bpd=f"{float(torch.cat(running.totals).mean()):.4f}")
            if num_samples is not None and running.count >= num_samples:
                break
    finally:
        if bar is not None:
            bar.close()
    return running.result()


def _vlb_loss(loss: Any, schedule: Any, variance: str, prediction: str) -> Any:
    """``loss``, or the ``VLBLoss`` of the schedule when it is ``None``; checked to have
    ``bits_per_dim``."""
    if loss is None:
        from ..losses import VLBLoss

        loss = VLBLoss(schedule, variance=variance, prediction=prediction)
    if not callable(getattr(loss, "bits_per_dim", None)):
        raise TypeError(f"loss must have a bits_per_dim method; got {type(loss).__name__}")
    return loss


def _progress_bar(dataset: Any, num_samples: int | None) -> Any:
    """A tqdm bar over ``num_samples`` (else ``len(dataset)``, when it has one) images."""
    from tqdm.auto import tqdm

    total_samples = num_samples
    if total_samples is None:
        try:
            total_samples = len(dataset)
        except TypeError:
            total_samples = None
    return tqdm(total=total_samples, desc="bits/dim", unit="img")


class _RunningBound:
    """The running sums of :func:`nll_bits_per_dim`: per-sample totals (float64, on the CPU),
    the prior and decoder sums and the per-timestep term sums, over ``count`` images."""

    def __init__(self) -> None:
        self.totals: list[torch.Tensor] = []
        self.prior_sum = 0.0
        self.decoder_sum = 0.0
        self.terms_sum: torch.Tensor | None = None
        self.count = 0

    def add(self, result: dict[str, torch.Tensor], batch: int) -> None:
        """Add the ``bits_per_dim(..., return_terms=True)`` result of a batch of ``batch``."""
        total = result["total"].detach().double().cpu()  # (B,)
        if total.shape != (batch,) or not bool(torch.isfinite(total).all()):
            raise ValueError(
                f"bits_per_dim returned {tuple(total.shape)} values (non-finite: "
                f"{int((~torch.isfinite(total)).sum())}); expected {batch} finite ones"
            )
        self.totals.append(total)
        self.prior_sum += float(result["prior"].double().sum())
        self.decoder_sum += float(result["decoder"].double().sum())
        batch_terms = result["terms"].detach().double().sum(dim=0).cpu()  # (T,)
        self.terms_sum = batch_terms if self.terms_sum is None else self.terms_sum + batch_terms
        self.count += batch

    def result(self) -> BitsPerDim:
        count = self.count
        if count == 0:
            raise ValueError("dataset is empty: no images were evaluated")
        assert self.terms_sum is not None  # at least one batch was evaluated
        per_sample = torch.cat(self.totals).numpy()
        stderr = float(per_sample.std(ddof=1) / math.sqrt(count)) if count > 1 else math.nan
        return BitsPerDim(
            mean=float(per_sample.mean()),
            stderr=stderr,
            num_samples=count,
            prior=self.prior_sum / count,
            decoder=self.decoder_sum / count,
            terms=(self.terms_sum / count).numpy(),
            per_sample=per_sample,
        )

def _check_images(images: torch.Tensor) -> torch.Tensor:
    """Convert a batch to float ``[-1, 1]`` and check its range (the decoder needs it)."""
    images = _to_unit_range(images)
    if images.ndim < 2:
        raise ValueError(f"image batches must be (B, C, H, W); got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < -1.0 - 1e-4 or high > 1.0 + 1e-4:
        raise ValueError(
            f"images must lie in [-1, 1] (or be uint8); got values in [{low:.4g}, {high:.4g}]"
        )
    return images
