"""Process-group set-up and a resumable, world-size-invariant DistributedSampler.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup_distributed` joins the
process group (NCCL on CUDA, gloo on CPU) and returns the rank, world size and device. On a
single process it does nothing.

:class:`GlobalBatchSampler` decides the data order. Each epoch is a permutation of the dataset
drawn from ``(seed, epoch)``; global batch ``k`` is the slice ``[k * B, (k + 1) * B)`` of it
and rank ``r`` of ``W`` takes the contiguous part ``[r * B / W, (r + 1) * B / W)`` of that
slice. So the images of every global batch do not depend on the number of processes, which
is what makes a 2-process run equal a 1-process run with the same global batch, and the
position inside an epoch is one integer, which is what makes resuming mid-epoch exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

__all__ = ["DistributedInfo", "setup_distributed", "GlobalBatchSampler"]


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, samples and checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def setup_distributed(device: str | torch.device | None = None) -> DistributedInfo:
    """Join the ``torchrun`` process group when there is one and pick this process's device.

    ``device=None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. The backend
    is NCCL for CUDA devices and gloo otherwise. An already initialised group is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if world_size > 1 or (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():  # pragma: no cover - builds without torch.distributed
            raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return DistributedInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
    return DistributedInfo(0, 1, 0, device)


class GlobalBatchSampler(DistributedSampler):
    """Indices for one rank: its contiguous share of each global batch of a seeded permutation.

    Args:
        dataset_size: number of items.
        global_batch_size: images per optimizer step, over all processes.
        num_replicas: number of processes (must divide ``global_batch_size``).
        rank: this process.
        seed: the permutation of epoch ``e`` is drawn from ``seed`` and ``e``.
        shuffle: permute (True) or keep the dataset order (False).

    Each epoch yields ``len(dataset) // global_batch_size`` batches' worth of indices
    (the incomplete last global batch is dropped), ``global_batch_size / num_replicas`` per batch,
    to be grouped by a ``DataLoader(batch_size=global_batch_size // num_replicas)``.
    :meth:`set_epoch` selects the epoch and :meth:`set_start` the number of batches to skip.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if global_batch_size < 1 or global_batch_size % num_replicas:
            raise ValueError(
                f"global_batch_size must be a positive multiple of the number of processes "
                f"({num_replicas}); got {global_batch_size}"
            )
        if dataset_size < global_batch_size:
            raise ValueError(
                f"the dataset has {dataset_size} items, fewer than one global batch of "
                f"{global_batch_size}"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas - 1}]; got {rank}")
        # DistributedSampler's own fields, kept meaningful for code that reads them.
        self.dataset = range(dataset_size)  # type: ignore[assignment]  # a sized stand-in
        self.dataset_size = dataset_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = True
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // num_replicas
        self.batches_per_epoch = dataset_size // global_batch_size
        self.start = 0
        self.num_samples = self.batches_per_epoch * self.local_batch_size
        self.total_size = self.batches_per_epoch * global_batch_size

    def set_start(self, batches: int) -> None:
        """Skip the first ``batches`` batches of the current epoch (used when resuming)."""
        if not 0 <= batches <= self.batches_per_epoch:
            raise ValueError(f"batches must be in [0, {self.batches_per_epoch}]; got {batches}")
        self.start = batches

    def permutation(self, epoch: int) -> torch.Tensor:
        """The dataset order of ``epoch`` (the same on every rank and every world size)."""
        n = self.dataset_size
        if not self.shuffle:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.epoch)[: self.total_size]
        order = order.view(self.batches_per_epoch, self.num_replicas, self.local_batch_size)
        mine = order[self.start :, self.rank]  # (batches left, local batch)
        return iter(mine.reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start) * self.local_batch_size
