"""Training: the :class:`Trainer`, its weight EMA, checkpoints and distributed helpers."""

from ddpm_lib.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from ddpm_lib.training.distributed import DistributedInfo, GlobalBatchSampler, setup_distributed
from ddpm_lib.training.ema import EMA, unwrap_model
from ddpm_lib.training.trainer import MIXED_PRECISION, Trainer

__all__ = [
    "Trainer",
    "EMA",
    "MIXED_PRECISION",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest_checkpoint",
    "list_checkpoints",
    "DistributedInfo",
    "GlobalBatchSampler",
    "setup_distributed",
    "unwrap_model",
]


def __getattr__(name: str) -> object:
    # TrainedModel / load_trained_model: deprecated, see ddpm_lib.training.checkpoint
    from ddpm_lib.training import checkpoint

    return getattr(checkpoint, name)
