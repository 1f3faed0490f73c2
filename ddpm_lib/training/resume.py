"""What a Trainer's checkpoint holds and how a Trainer continues from one.

:func:`save_training_state` writes (through :func:`~ddpm_lib.training.checkpoint.save_checkpoint`)
the model and EMA weights and a training state: the step and data position, the optimizer and
grad scaler, the EMA's update count, the Trainer's generator and every rank's global RNG
states, the loss accumulator, the loss's own state and its trainable parts' optimizers.
:func:`restore_training_state` puts all of it back, so that a resumed run continues bit for bit;
it converts the checkpoints of versions whose :class:`ddpm_lib.AutoencoderLoss` kept its
discriminator's optimizer in ``state["loss_fn"]``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from ddpm_lib.training import fsdp
from ddpm_lib.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

if TYPE_CHECKING:
    from ddpm_lib.training.trainer import Trainer

__all__ = ["training_meta", "save_training_state", "resume_latest", "restore_training_state"]


def training_meta(trainer: Trainer) -> dict[str, Any]:
    """``meta.json`` of a checkpoint: the model class and config, the diffusion, the settings."""
    model = fsdp.described_model(trainer)  # under FSDP: the plain EMA copy, not FSDP<Class>
    config = getattr(model, "config", None)
    schedule = getattr(trainer.loss_fn, "schedule", None)
    diffusion: dict[str, Any] = {"loss": type(trainer.loss_fn).__name__}
    if schedule is not None and hasattr(schedule, "to_dict"):
        diffusion["schedule"] = schedule.to_dict()
    for key in ("prediction", "variance", "learn_sigma"):
        value = getattr(trainer.loss_fn, key, None)
        if isinstance(value, (str, bool, int, float)):
            diffusion[key] = value
    return {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_config": dict(config) if isinstance(config, dict) else None,
        "num_classes": trainer.num_classes,
        "image_shape": list(trainer.image_shape),
        "diffusion": diffusion,
        "trainer": {
            "batch_size": trainer.batch_size,
            "lr": trainer.lr,
            "warmup_steps": trainer.warmup_steps,
            "grad_clip": trainer.grad_clip,
            "ema_decay": trainer.ema.decay,
            "mixed_precision": trainer.mixed_precision,
            "seed": trainer.seed,
            "random_flip": trainer.random_flip,
            "class_dropout": trainer.class_dropout,
            "caption_dropout": trainer.caption_dropout,
            "world_size": trainer.dist.world_size,
        },
    }


def save_training_state(trainer: Trainer) -> Path | None:
    """Save everything needed to continue bit for bit; returns the folder (rank 0 only).

    Every rank must call it (it gathers each rank's RNG state); only rank 0 writes.
    """
    rng = rng_state(trainer.device)
    rng["loss_generator"] = trainer.batches.loss_generator.get_state()
    loss_log = trainer.monitor.state()  # the same on every rank from here on
    weights = fsdp.full_weights(trainer)  # collectives under FSDP: every rank takes part
    optimizer_state = fsdp.full_optimizer_state(trainer)
    if trainer.dist.enabled:
        gathered: list[Any] = [None] * trainer.dist.world_size
        dist.all_gather_object(gathered, rng)
        rng_states = gathered
    else:
        rng_states = [rng]
    if not trainer.dist.is_main:
        return None
    state = {
        "step": trainer.step,
        "epoch": trainer.epoch,
        "position": trainer.batches.position,
        "global_batch_size": trainer.batch_size,
        "world_size": trainer.dist.world_size,
        "seed": trainer.seed,
        "optimizer": optimizer_state,
        "scaler": trainer.scaler.state_dict(),
        "ema_num_updates": trainer.ema.num_updates,
        "generator": trainer.batches.generator.get_state(),
        "rng": rng_states,
        **loss_log,
        "lr_schedule": {"lr": trainer.lr, "warmup_steps": trainer.warmup_steps},
    }
    loss_state = getattr(trainer.loss_fn, "state_dict", None)
    if callable(loss_state):
        state["loss_fn"] = loss_state()
    if trainer._auxiliary:
        state["auxiliary"] = trainer._auxiliary.state_dict()
    path = save_checkpoint(trainer.checkpoint_dir, trainer.step, weights, state, training_meta(trainer))
    prune_checkpoints(trainer.checkpoint_dir, trainer.keep_checkpoints)
    return path


def resume_latest(trainer: Trainer) -> None:
    """Continue from the newest good checkpoint of ``trainer.checkpoint_dir`` (rank 0 picks it)."""
    checkpoint: Checkpoint | None = None
    if trainer.dist.is_main:
        checkpoint = load_latest_checkpoint(trainer.checkpoint_dir, map_location="cpu")
    if trainer.dist.enabled:
        chosen = [str(checkpoint.path) if checkpoint is not None else None]
        dist.broadcast_object_list(chosen, src=0)
        if not trainer.dist.is_main and chosen[0] is not None:
            checkpoint = load_checkpoint(chosen[0], map_location="cpu")
    if checkpoint is not None:
        restore_training_state(trainer, checkpoint)
        trainer._say(f"resuming from step {trainer.step} (epoch {trainer.epoch}, batch "
                  f"{trainer.batches.position} of it) of {checkpoint.path}")


def restore_training_state(trainer: Trainer, checkpoint: Checkpoint | str | os.PathLike) -> None:
    """Restore the complete training state from a checkpoint (folder or loaded)."""
    if not isinstance(checkpoint, Checkpoint):
        try:
            checkpoint = load_checkpoint(checkpoint, map_location="cpu")
        except CheckpointError as error:
            raise ValueError(str(error)) from error
    state, path = checkpoint.state, checkpoint.path
    if state["global_batch_size"] != trainer.batch_size:
        raise ValueError(
            f"checkpoint {path} was trained with batch_size={state['global_batch_size']}; "
            f"got batch_size={trainer.batch_size} (resume with the same batch size or use a "
            "new out_dir)"
        )
    try:
        fsdp.load_weights(trainer, checkpoint.weights)
    except (RuntimeError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"checkpoint {path} does not fit this model: {first_line}") from error
    try:
        fsdp.load_optimizer_state(trainer, state["optimizer"])
    except ValueError as error:
        raise ValueError(f"checkpoint {path}: optimizer state does not fit: {error}") from error
    if state["scaler"]:
        trainer.scaler.load_state_dict(state["scaler"])
    _load_loss_state(trainer, state, path)
    trainer.ema.num_updates = int(state["ema_num_updates"])
    _load_rng_states(trainer, state, path)
    trainer.step = int(state["step"])
    trainer.batches.seek(state["epoch"], state["position"])
    trainer.monitor.load_state(state["loss_sum"], state["loss_count"])
    trainer.resumed_from = path
    trainer.monitor.resumed = True
    if trainer.dist.is_main:
        trainer.monitor.truncate_log(trainer.step)


def _load_loss_state(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """The loss's own state and its parts' optimizers (a checkpoint of a version whose
    loss kept its optimizer in ``state["loss_fn"]`` is converted)."""
    try:
        if "loss_fn" in state and callable(getattr(trainer.loss_fn, "load_state_dict", None)):
            trainer.loss_fn.load_state_dict(state["loss_fn"])
        trainer._auxiliary.load_state_dict(state.get("auxiliary"), state.get("loss_fn"))
    except (ValueError, RuntimeError, KeyError) as error:
        raise ValueError(f"checkpoint {path}: the loss's state does not fit: {error}") from error


def _load_rng_states(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    trainer.batches.generator.set_state(state["generator"])
    rng_states = state["rng"]
    if len(rng_states) == trainer.dist.world_size:
        mine = rng_states[trainer.dist.rank]
        set_rng_state(mine, trainer.device)
        trainer.batches.loss_generator.set_state(mine["loss_generator"])
    else:
        warnings.warn(
            f"checkpoint {path} was written by {len(rng_states)} process(es), this run has "
            f"{trainer.dist.world_size}: the global RNG states are not restored",
            stacklevel=4,
        )
