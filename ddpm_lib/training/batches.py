"""What the Trainer feeds the loss: the items of the dataset, batched, placed and randomised.

:func:`inspect_items` reads item 0 once (its layout, its image shape, that it lies in
``[-1, 1]``). :class:`Batches` owns the data order (a :class:`GlobalBatchSampler` and its
resumable position: ``epoch`` and ``position`` batches into it) and the Trainer's two
generators, and turns each batch into the loss's inputs. For every global batch it draws, in
this order and always for the whole global batch before taking this rank's slice::

    t      ~ U{0, ..., T-1}                  (when the loss has a schedule)
    noise  ~ N(0, I)
    flip   ~ U[0, 1) < 1/2                    (random_flip)
    drop_c ~ U[0, 1) < dropout_c              (each condition c with a dropout, in order)
    c's own draws                             (Condition.randomize: a super-resolution
                                               stage's noise augmentation s, then eps)

so a run's numbers do not depend on the number of processes, and the order is fixed: changing
it would change every run (and the resumed continuation of every old checkpoint).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ddpm_lib.conditioning import Condition
from ddpm_lib.training.distributed import DistributedInfo, GlobalBatchSampler

__all__ = ["inspect_items", "Batches"]


def inspect_items(dataset: Dataset, stacklevel: int = 2) -> tuple[bool, tuple[int, ...], list[Any]]:
    """Read item 0: ``(wrapped, image_shape, fields)``.

    ``wrapped`` is true for ``(image, ...)`` items (tuples or lists), ``fields`` holds the field
    after the image (a label or a caption; empty for bare images). Raises ``TypeError`` /
    ``ValueError`` for items that are not float images ``(C, H, W)`` in ``[-1, 1]`` (unless the
    dataset says ``unbounded_values``, as latents do), and warns for images in ``[0, 1]``.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("dataset is empty")
    first = dataset[0]
    wrapped = isinstance(first, (tuple, list))  # (image,) or (image, label, ...)
    if isinstance(first, torch.Tensor):
        image = first
    elif wrapped and len(first) >= 1 and isinstance(first[0], torch.Tensor):
        image = first[0]
    else:
        raise TypeError(
            "dataset items must be image tensors (C, H, W) or (image, label) pairs; "
            f"item 0 is {type(first).__name__}"
        )
    if not image.is_floating_point() or image.ndim != 3:
        raise ValueError(
            f"dataset images must be float tensors (C, H, W) in [-1, 1]; item 0 has dtype "
            f"{image.dtype} and shape {tuple(image.shape)}"
        )
    low, high = float(image.min()), float(image.max())
    bounded = not getattr(dataset, "unbounded_values", False)  # latents are not in [-1, 1]
    if bounded and (low < -1.001 or high > 1.001):
        raise ValueError(
            f"dataset images must lie in [-1, 1]; item 0 has values in [{low:.3g}, {high:.3g}]"
        )
    if bounded and low >= 0.0:
        warnings.warn(
            f"item 0 of the dataset has values in [{low:.3g}, {high:.3g}]: images should be "
            "in [-1, 1], not [0, 1] (use x * 2 - 1)",
            stacklevel=stacklevel + 1,
        )
    # up to two fields: (image, label | caption) or (image, low_res, label | caption)
    return wrapped, tuple(image.shape), list(first[1:3]) if wrapped else []


class Batches:
    """The data order, its resumable position and the random draws of every global batch.

    Args:
        dataset: the Trainer's dataset; ``wrapped``: whether its items are tuples.
        batch_size: the global batch; each rank loads ``batch_size / world_size`` items.
        dist: this process's place (rank, world size, device).
        seed: seeds the data order, the shared generator (t, noise, flips, dropout: the same on
            every rank) and the loss's own generator (different on every rank).
        num_workers: DataLoader workers.
        conditions: the model's :class:`~ddpm_lib.conditioning.Condition` objects, one per
            item field after the image.
        random_flip: flip images left-right with probability 1/2.
        num_timesteps: ``T`` when the loss takes ``t`` and ``noise`` (``None``: it draws them
            itself from ``loss_generator``).
    """

    def __init__(
        self, dataset: Dataset, *, wrapped: bool, batch_size: int, dist: DistributedInfo,
        seed: int, num_workers: int, conditions: Sequence[Condition], random_flip: bool,
        num_timesteps: int | None,
    ) -> None:
        self.wrapped = wrapped
        self.batch_size = batch_size
        self.local_batch_size = batch_size // dist.world_size
        self.dist = dist
        self.device = dist.device
        self.conditions = list(conditions)
        self.random_flip = random_flip
        self.num_timesteps = num_timesteps
        self.sampler = GlobalBatchSampler(len(dataset), batch_size, dist.world_size,  # type: ignore[arg-type]
                                          dist.rank, seed)
        self.loader = DataLoader(
            dataset,
            batch_size=self.local_batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),  # worker seeds; not the global RNG
        )
        # The shared generator draws t, noise, flips and label dropout for the global batch.
        self.generator = torch.Generator(self.device).manual_seed(seed)
        # Only used when the loss draws its own t and noise: different on every rank.
        self.loss_generator = torch.Generator(self.device).manual_seed(seed + 7919 * (dist.rank + 1))
        self.epoch = 0
        self.position = 0  # batches of the current epoch already used
        self._iter: Iterator[Any] | None = None

    @staticmethod
    def default_num_workers(device: torch.device) -> int:
        """0 on a CPU (workers cost more than they save there), up to 8 per GPU."""
        return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0

    def seek(self, epoch: int, position: int) -> None:
        """Continue at batch ``position`` of ``epoch`` (what a checkpoint recorded)."""
        self.epoch, self.position, self._iter = int(epoch), int(position), None

    def next(self) -> Any:
        """This rank's share of the next global batch, as the DataLoader collates it."""
        while True:
            if self._iter is None:
                self.sampler.set_epoch(self.epoch)
                self.sampler.set_start(self.position)
                self._iter = iter(self.loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self.epoch += 1
                self.position = 0
                continue
            self.position += 1
            return batch

    def draw(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any], list[Any]]:
        """``(x0, loss_kwargs, condition_values)`` of one batch, with this step's draws.

        ``x0`` is ``(b, C, H, W)`` float on the device (flipped where drawn), ``loss_kwargs``
        holds ``t`` and ``noise`` (or the loss's ``generator``), and ``condition_values`` one
        collated, partly dropped value per condition, for :meth:`condition_kwargs`.
        """
        device, generator = self.device, self.generator
        x0 = batch[0] if self.wrapped else batch
        x0 = x0.to(device, non_blocking=True).float()  # (b, C, H, W), b = local batch
        global_b, local_b = self.batch_size, self.local_batch_size
        mine = slice(self.dist.rank * local_b, (self.dist.rank + 1) * local_b)
        loss_kwargs: dict[str, Any] = {}
        if self.num_timesteps is not None:
            t = torch.randint(0, self.num_timesteps, (global_b,), generator=generator, device=device)
            noise = torch.randn((global_b, *x0.shape[1:]), generator=generator, device=device)
            loss_kwargs["t"], loss_kwargs["noise"] = t[mine], noise[mine]
        else:
            loss_kwargs["generator"] = self.loss_generator
        flip = None
        if self.random_flip:
            flip = torch.rand(global_b, generator=generator, device=device)[mine] < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        values = []
        for position, condition in enumerate(self.conditions, start=1):
            value = condition.collate(batch[position], device)
            if flip is not None and condition.spatial:  # a low-res image flips with x0
                value = torch.where(flip[:, None, None, None], value.flip(-1), value)
            if condition.dropout > 0:  # classifier-free guidance: some go to the null value
                drop = torch.rand(global_b, generator=generator, device=device)[mine]
                value = condition.drop(value, drop < condition.dropout)
            values.append(condition.randomize(value, generator, global_b, mine))
        return x0, loss_kwargs, values

    def condition_kwargs(self, values: Sequence[Any], model: Any) -> dict[str, Any]:
        """The model's keyword arguments for the drawn ``values`` (a text model encodes its
        prompts here: call it inside the step's autocast and graph so the encoder trains)."""
        kwargs: dict[str, Any] = {}
        for condition, value in zip(self.conditions, values):
            kwargs.update(condition.model_kwargs(value, model))
        return kwargs
