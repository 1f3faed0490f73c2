"""The training loop: one class that trains any model with any loss, resumes exactly, and
runs unchanged on one CPU, one GPU or many processes under ``torchrun``.

One optimizer step (Ho et al. 2020, Algorithm 1, with the paper's CIFAR-10 recipe)::

    x0, y   <- this rank's share of the next global batch
    t, eps  <- uniform timesteps and N(0, I) noise for the whole global batch (sliced)
    x0      <- x0 flipped left-right with probability 1/2            (random_flip)
    y       <- -1 (the null class) with probability class_dropout    (classifier-free guidance)
    text    <- model.encode_prompts(captions, "" with prob. caption_dropout)   (text models)
    loss    <- loss_fn(model, x0, t=t, noise=eps, y=y)               (under autocast)
    theta   <- Adam(theta, clip(grad, grad_clip), lr * min(1, (step + 1) / warmup_steps))
    phi     <- Adam(phi, grad loss_fn.auxiliary_loss(name))          (a loss's own parts)
    ema     <- EMA(theta) with warm-up

All of the Trainer's randomness (data order, t, eps, flips, label dropout) comes from its own
generators seeded by ``seed``; it is drawn for the global batch and sliced, so results do not
depend on how many processes share the batch. Randomness inside the model (dropout) comes
from torch's global RNG, which the Trainer never seeds but saves and restores with every
checkpoint, along with NumPy's and Python's.

The parts: :mod:`ddpm_lib.training.batches` (what the data is, the data order and the draws
above), :mod:`ddpm_lib.training.monitor` (progress bar, ``log.jsonl``, TensorBoard, sample
grids), :mod:`ddpm_lib.training.auxiliary` (the optimizers of a loss's trainable parts) and
:mod:`ddpm_lib.training.checkpoint` (the files). This module is the loop that joins them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ddpm_lib._checks import check_choice, check_int, check_probability, check_real
from ddpm_lib.conditioning import ClassLabel, Prompt, conditions_for
from ddpm_lib.training import fsdp, monitor
from ddpm_lib.training.auxiliary import AuxiliaryParts
from ddpm_lib.training.batches import Batches, inspect_items
from ddpm_lib.training.checkpoint import Checkpoint, list_checkpoints, remove_stale_temporaries
from ddpm_lib.training.distributed import GlobalBatchSampler, setup_distributed
from ddpm_lib.training.ema import EMA, unwrap_model
from ddpm_lib.training.monitor import LOG_FILE, SAMPLES_DIR, Monitor  # noqa: F401 (re-exported)
from ddpm_lib.training.resume import (
    restore_training_state,
    resume_latest,
    save_training_state,
    training_meta,
)

__all__ = ["Trainer", "MIXED_PRECISION"]

MIXED_PRECISION = ("no", "bf16", "fp16")
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "ema_model"


class Trainer:
    """Train a diffusion model: EMA, mixed precision, clipping, warm-up, exact resume, DDP.

    Args:
        model: any ``nn.Module`` called as ``model(x_t, t, **model_kwargs)``. If it has an int
            ``num_classes`` it is trained class-conditionally (``y=`` labels, -1 = null class).
        loss_fn: ``loss_fn(model, x0, t=None, noise=None, **model_kwargs) -> loss``, e.g.
            :class:`ddpm_lib.SimpleLoss`. When it has a ``schedule`` (or ``num_timesteps``) the
            Trainer draws ``t`` and ``noise`` itself (needed for world-size-invariant runs);
            otherwise it passes ``generator=`` and lets the loss draw them. A loss with state
            or trainable parts of its own: see "Losses with trainable parts" below.
        dataset: items are images ``(C, H, W)`` in ``[-1, 1]``, ``(image, label)`` pairs (as
            torchvision datasets give; more fields are ignored) or ``(image,)`` (TensorDataset).
            A dataset whose ``unbounded_values`` attribute is true (latents,
            :class:`ddpm_lib.LatentDataset`) is not checked to lie in ``[-1, 1]``.
            For a text-to-image model (one with an ``encode_prompts`` method, such as
            :class:`ddpm_lib.TextConditionedUNet`) items are ``(image, caption: str)``: each
            batch's captions are encoded by ``model.encode_prompts`` (inside the forward pass,
            so the text encoder trains jointly) and passed to the model as keyword arguments.
        batch_size: the global batch (all processes together); split evenly over processes.
        lr: Adam's learning rate after warm-up (2e-4 in DDPM).
        warmup_steps: the learning rate ramps linearly to ``lr`` over this many steps.
        grad_clip: clip the global gradient norm to this (``None`` or 0: no clipping).
        ema_decay: decay of the weight EMA, warmed up as ``min(decay, (1 + n) / (10 + n))``.
        mixed_precision: ``"no"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + GradScaler).
        out_dir: where checkpoints, ``log.jsonl``, sample grids and TensorBoard events go.
            A checkpoint already there is resumed from (``resume=True``); a line on stderr
            says from which step and epoch.
        log_every: write a line to ``log.jsonl`` (and TensorBoard) every this many steps.
        checkpoint_every: save a checkpoint every this many steps (and at the end of ``train``).
        sample_every: save a PNG grid of EMA samples every this many steps (``None``: never).
        sampler: the sampler for those grids; default ``DDPMSampler`` respaced to 100 steps.
        seed: seeds the data order, timesteps, noise, flips and label dropout.
        num_workers: DataLoader workers; ``None``: 0 on a CPU, up to 8 per GPU.
        random_flip: flip images left-right with probability 1/2 (DDPM's CIFAR-10 recipe).
            ``None`` (default): flip unless the items are captioned, since a flip would
            contradict captions that say "left" or "right".
        class_dropout: probability of replacing a label by the null class -1 (conditional
            models only), which trains the unconditional model used by classifier-free guidance.
        caption_dropout: probability of replacing a caption by the empty prompt ``""`` (text
            models), the unconditional input of classifier-free guidance (GLIDE).
        sample_prompts: the fixed prompts of the sample grids of a text model (one image
            each, cycled to ``num_samples``); default: the captions of the first
            ``num_samples`` dataset items.
        num_samples: images per sample grid.
        guidance_scale: classifier-free guidance scale for the grids (conditional models).
        keep_checkpoints: how many of the newest checkpoints to keep.
        device: ``None`` picks ``cuda:LOCAL_RANK`` if CUDA is available, else the CPU.
        resume: resume from the newest good checkpoint in ``out_dir`` (at construction).
        progress: show a tqdm progress bar (rank 0 only).
        tensorboard: write TensorBoard events; ``None``: when tensorboard is installed.
        adam_betas, weight_decay: passed to ``torch.optim.Adam`` (its fused implementation
            on a CPU or a CUDA device).
        parallel: how several processes (``torchrun``) share the work: ``"ddp"`` (default:
            a full copy of the model on every process, gradients all-reduced) or ``"fsdp"``
            (PyTorch's ``fully_shard``: weights, gradients, Adam moments and the EMA sharded
            over the processes, for models too large for one device; bf16 or no mixed
            precision). Checkpoints hold full tensors either way and resume under either, on
            any number of processes (``ddpm_lib.training.fsdp``). One process ignores it.
        noise_augmentation: for a super-resolution model (``cond_channels`` in its config,
            items ``(image, low_res, ...)`` as :class:`ddpm_lib.SuperResolutionPairs` gives):
            a :class:`ddpm_lib.NoiseAugmentation` whose random levels and noise corrupt the
            condition (drawn from the Trainer's generator, so resumes are exact); exported
            beside the model. Its grids show low-res | sample | original on each row.

    Losses with trainable parts (a GAN discriminator) declare them; the Trainer trains them
    with the same device placement, mixed precision, DDP and checkpoints as the model:

    - ``loss_fn.auxiliary_modules() -> {name: (module, adam_options)}``, called once at
      construction: the Trainer moves each ``module`` to its device and builds its
      ``torch.optim.Adam(module.parameters(), **adam_options)`` (fused where the model's is,
      unless ``adam_options`` sets ``fused``) and a ``GradScaler`` (float16 mixed precision).
    - ``loss_fn.auxiliary_loss(name) -> scalar tensor | None``, called after every optimizer
      step of the model, inside the step's autocast: the loss of part ``name`` for the last
      training call of the loss (``None``: no step of that part this time). The Trainer
      back-propagates it, averages the gradients over processes and steps the optimizer.
      Every process starts from rank 0's weights of each part (at each ``train()``).
    - ``loss_fn.update()`` (if present), called after those steps: a counter of the loss.
    - ``loss_fn.state_dict()`` / ``load_state_dict()`` (if present): the loss's own state
      (a part's weights, its counter), saved and restored with every checkpoint beside the
      parts' optimizer and scaler states (``trainer.auxiliary_optimizers``).

    ``trainer.model`` (the model being trained), ``trainer.ema_model`` (the averaged copy used
    for sampling) and ``trainer.step`` (optimizer steps done) are public.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        dataset: Dataset,
        *,
        batch_size: int = 128,
        lr: float = 2e-4,
        warmup_steps: int = 5000,
        grad_clip: float | None = 1.0,
        ema_decay: float = 0.9999,
        mixed_precision: str = "no",
        out_dir: str | os.PathLike,
        log_every: int = 1000,
        checkpoint_every: int = 1000,
        sample_every: int | None = None,
        sampler: Any = None,
        seed: int = 0,
        num_workers: int | None = None,
        random_flip: bool | None = None,
        class_dropout: float = 0.1,
        caption_dropout: float = 0.1,
        sample_prompts: list[str] | None = None,
        num_samples: int = 16,
        guidance_scale: float | None = None,
        keep_checkpoints: int = 3,
        device: str | torch.device | None = None,
        resume: bool = True,
        progress: bool = True,
        tensorboard: bool | None = None,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        parallel: str = "ddp",
        noise_augmentation: Any = None,
    ) -> None:
        self.noise_augmentation = noise_augmentation
        self._check_arguments(
            model, loss_fn, dataset, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
            grad_clip=grad_clip, mixed_precision=mixed_precision, out_dir=out_dir,
            log_every=log_every, checkpoint_every=checkpoint_every, sample_every=sample_every,
            seed=seed, num_workers=num_workers, class_dropout=class_dropout,
            caption_dropout=caption_dropout, num_samples=num_samples,
            keep_checkpoints=keep_checkpoints, sample_prompts=sample_prompts,
        )
        self.guidance_scale = guidance_scale
        self.sampler = sampler
        self.parallel = check_choice("parallel", parallel, fsdp.PARALLEL)
        if self.parallel == "fsdp" and self.mixed_precision == "fp16":
            raise ValueError("mixed_precision='fp16' is not supported with parallel='fsdp' "
                             "(its grad scaler does not handle sharded gradients); use 'bf16'")

        self._inspect_data(model, dataset)

        self._place(model, device, ema_decay=ema_decay, adam_betas=adam_betas,
                    weight_decay=weight_decay)
        if num_workers is None:
            num_workers = Batches.default_num_workers(self.device)
        self.num_workers = num_workers
        self.batches = Batches(
            dataset, wrapped=self._wrapped, batch_size=self.batch_size, dist=self.dist,
            seed=seed, num_workers=num_workers, conditions=self.conditions,
            random_flip=not self._captioned if random_flip is None else bool(random_flip),
            num_timesteps=self.num_timesteps,
        )
        self.monitor = Monitor(self.out_dir, self.dist, progress=progress,
                               tensorboard=tensorboard)

        self.step = 0
        self._last_grad_norm: torch.Tensor | None = None
        self.resumed_from: Path | None = None
        if self.sampler is None and self.sample_every is not None:
            self.sampler = monitor.default_sampler(self.loss_fn, self.model)
        if self.dist.is_main:
            remove_stale_temporaries(self.checkpoint_dir)
        if resume:
            resume_latest(self)

    def _check_arguments(self, model: Any, loss_fn: Any, dataset: Any, *, batch_size: Any,
                         lr: Any, warmup_steps: Any, grad_clip: Any, mixed_precision: Any,
                         out_dir: Any, log_every: Any, checkpoint_every: Any, sample_every: Any,
                         seed: Any, num_workers: Any, class_dropout: Any, caption_dropout: Any,
                         num_samples: Any, keep_checkpoints: Any, sample_prompts: Any) -> None:
        """Check the constructor's arguments and keep the plain settings as attributes."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}")
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style Dataset; got {type(dataset).__name__}")
        self.batch_size = check_int("batch_size", batch_size, 1)
        check_real("lr", lr, 0, open_min=True)
        check_int("warmup_steps", warmup_steps, 0)
        self.grad_clip = None if not grad_clip else float(check_real("grad_clip", grad_clip, 0,
                                                                     finite=False))
        self.mixed_precision = check_choice("mixed_precision", mixed_precision, MIXED_PRECISION)
        if out_dir is None:
            raise ValueError("out_dir must be a folder path; got None")
        self.log_every = check_int("log_every", log_every, 1)
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
        self.sample_every = check_int("sample_every", sample_every, 1, allow_none=True)
        check_int("seed", seed, 0)
        check_int("num_workers", num_workers, 0, allow_none=True)
        self.class_dropout = check_probability("class_dropout", class_dropout, allow_one=True)
        self.caption_dropout = check_probability("caption_dropout", caption_dropout,
                                                 allow_one=True)
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.keep_checkpoints = check_int("keep_checkpoints", keep_checkpoints, 1)
        if sample_prompts is not None:
            if not isinstance(sample_prompts, (list, tuple)) or not sample_prompts or not all(
                isinstance(prompt, str) for prompt in sample_prompts
            ):
                raise TypeError(f"sample_prompts must be a non-empty list of str; got {sample_prompts!r}")
            sample_prompts = list(sample_prompts)
        self.sample_prompts: list[str] | None = sample_prompts
        self.lr = float(lr)
        self.warmup_steps = warmup_steps
        self.seed = seed
        self.loss_fn = loss_fn
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / CHECKPOINT_DIR

    def _inspect_data(self, model: nn.Module, dataset: Dataset) -> None:
        """What the data is, and what the model is conditioned on: the item's field after the
        image (a label or a caption), read, dropped and encoded by its Condition."""
        self._wrapped, self.image_shape, fields = inspect_items(dataset, stacklevel=3)
        self.conditions = conditions_for(
            unwrap_model(model), fields, class_dropout=self.class_dropout,
            caption_dropout=self.caption_dropout, noise_augmentation=self.noise_augmentation,
        )
        self._captioned = any(isinstance(c, Prompt) for c in self.conditions)
        self._text_model = self._captioned
        self.num_classes = next((c.num_classes for c in self.conditions
                                 if isinstance(c, ClassLabel)), None)
        schedule = getattr(self.loss_fn, "schedule", None)
        self.num_timesteps = getattr(self.loss_fn, "num_timesteps", None) or getattr(
            schedule, "num_timesteps", None
        )

    def _place(self, model: nn.Module, device: str | torch.device | None, *, ema_decay: float, adam_betas: tuple[float, float],
               weight_decay: float) -> None:
        """Join the process group, move the model to the device, wrap it in DDP; build the
        EMA, the optimizers and the grad scaler."""
        self.dist = setup_distributed(device)
        self.device = self.dist.device
        if self.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by the number of processes "
                f"({self.dist.world_size})"
            )
        self.local_batch_size = self.batch_size // self.dist.world_size
        self.model = model.to(self.device)
        if self.dist.enabled and self.parallel == "fsdp":  # sharded in place (training/fsdp.py)
            self.ema: EMA = fsdp.shard_for_training(self.model, ema_decay=ema_decay)
            self._train_model: nn.Module = self.model
        elif self.dist.enabled:
            device_ids = [self.device] if self.device.type == "cuda" else None
            # DDP broadcasts rank 0's weights here, before the EMA copies them.
            self._train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids
            )
        else:
            self._train_model = self.model
        if not fsdp.is_sharded(self.model):
            self.ema = EMA(self.model, decay=ema_decay)
        params = list(self.model.parameters())
        # PyTorch's fused Adam (one kernel over all tensors) where it has one: on a CPU it
        # takes a quarter of the per-tensor loop's time, which small models feel on every step.
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        self.optimizer = torch.optim.Adam(
            params, lr=self.lr, betas=adam_betas, weight_decay=weight_decay, fused=fused or None
        )
        fp16 = self.mixed_precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.mixed_precision
        )
        self._auxiliary = AuxiliaryParts(self.loss_fn, self.dist, fp16=fp16, fused=fused or None)

    # ------------------------------------------------------------------ public properties
    @property
    def ema_model(self) -> nn.Module:
        """The exponential moving average of the trained model (eval mode); sample from this."""
        return self.ema.module

    @property
    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The Adam optimizers of the loss's trainable parts, by name (empty for most losses)."""
        return self._auxiliary.optimizers

    @property
    def epoch(self) -> int:
        """Passes over the data completed."""
        return self.batches.epoch

    @property
    def random_flip(self) -> bool:
        """Whether images are flipped left-right with probability 1/2."""
        return self.batches.random_flip

    @random_flip.setter
    def random_flip(self, value: bool) -> None:
        self.batches.random_flip = bool(value)

    @property
    def data_sampler(self) -> GlobalBatchSampler:
        """The sampler of the data order (a permutation per epoch, split over processes)."""
        return self.batches.sampler

    def lr_at(self, step: int) -> float:
        """Learning rate of the optimizer step that follows ``step`` completed steps."""
        if self.warmup_steps == 0:
            return self.lr
        return self.lr * min(1.0, (step + 1) / self.warmup_steps)

    # ------------------------------------------------------------------ training
    def train(self, num_steps: int, *, max_seconds: float | None = None) -> int:
        """Train until the step counter ``step`` reaches ``num_steps`` (a resumed run stops at the same total).

        Saves a checkpoint every ``checkpoint_every`` steps and at the end, a log line every
        ``log_every`` steps (only then, so that a resumed run's log is the uninterrupted one's),
        a sample grid every ``sample_every`` steps and at the end.

        ``max_seconds`` stops earlier, after the first step that ends past this wall-clock
        budget (measured from the call; all processes stop at the same step), with the same
        checkpoint at the end: for time-limited jobs and demos. Returns ``step``. A run that
        has already reached ``num_steps`` trains nothing and says so on stderr.
        """
        check_int("num_steps", num_steps, 0)
        check_real("max_seconds", max_seconds, 0, open_min=True, finite=False, allow_none=True)
        if self.step >= num_steps:
            self._say(f"already done: step {self.step} (epoch {self.epoch}) has reached "
                      f"num_steps={num_steps}; nothing to train (ask for more steps to continue)")
            return self.step
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.monitor.open_bar(self.step, num_steps)
        self.model.train()
        self._auxiliary.synchronize()
        self.monitor.start_interval()
        last_checkpoint = last_sample = -1
        try:
            while self.step < num_steps:
                self._train_step(self.batches.next())
                self.step += 1
                self.monitor.stepped()
                if self.step % self.log_every == 0:
                    self._log()
                if self.step % self.checkpoint_every == 0:
                    self.monitor.timed(self.save_checkpoint)
                    last_checkpoint = self.step
                if self.sample_every is not None and self.step % self.sample_every == 0:
                    self.monitor.timed(self.save_samples)
                    last_sample = self.step
                if deadline is not None and self._past(deadline):
                    break
            if last_checkpoint != self.step:
                self.save_checkpoint()
            if self.sample_every is not None and last_sample != self.step:
                self.save_samples()
            self.export()
        finally:
            self.monitor.close()
        return self.step

    def _past(self, deadline: float) -> bool:
        """Whether the time budget is spent, agreed by all processes (rank 0 decides)."""
        past = time.monotonic() >= deadline
        if not self.dist.enabled:
            return past
        flag = torch.tensor([1 if past else 0], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _autocast(self) -> AbstractContextManager[Any]:
        return torch.autocast(
            self.device.type, dtype=self._autocast_dtype or torch.float32,
            enabled=self._autocast_dtype is not None,
        )

    def _train_step(self, batch: Any) -> None:
        x0, loss_kwargs, values = self.batches.draw(batch)
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._autocast():
            # A text encoder runs in the graph of this step's loss, so it trains jointly (and
            # its gradients are all-reduced with the UNet's under DDP).
            loss_kwargs.update(self.batches.condition_kwargs(values, unwrap_model(self.model)))
            loss = self.loss_fn(self._train_model, x0, **loss_kwargs)
        if loss.ndim:
            loss = loss.mean()
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            self._last_grad_norm = fsdp.full_value(torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.grad_clip
            ))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self._auxiliary:  # a loss with trainable parts of its own (a discriminator)
            self._auxiliary.step(self.loss_fn, self._autocast)
        update = getattr(self.loss_fn, "update", None)
        if callable(update):
            update()
        self.ema.update(self.model)
        self.monitor.add(loss)

    def _log(self) -> None:
        grad_norm = self._last_grad_norm
        fields: dict[str, Any] = {
            "lr": self.lr_at(self.step - 1),
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "ema_decay": self.ema.current_decay(),
        }
        if self.mixed_precision == "fp16":
            fields["grad_scale"] = float(self.scaler.get_scale())
        self.monitor.log(self.step, self.epoch, self.batch_size, fields, self.checkpoint_dir)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        *,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        use_ema: bool = True,
        prompts: list[str] | None = None,
        negative_prompts: list[str] | None = None,
    ) -> torch.Tensor:
        """Draw ``num_samples`` images ``(N, C, H, W)`` in ``[-1, 1]`` with the Trainer's ``sampler``.

        ``generator`` defaults to one seeded with ``seed`` (the same noise every time, so grids
        of successive steps are comparable). For a conditional model, ``labels`` default to
        ``0, 1, ..., K-1, 0, 1, ...`` and ``guidance_scale`` to the Trainer's.

        For a text model, ``prompts`` (one a sample; ``num_samples`` defaults to their number)
        default to ``sample_prompts`` cycled to ``num_samples``; with a ``guidance_scale``
        the unconditional half of classifier-free guidance reads ``negative_prompts`` (one a
        sample, default ``""``). Both are encoded once, by the sampled model's own encoder.
        """
        return monitor.sample(
            self, num_samples, generator=generator, labels=labels,
            guidance_scale=guidance_scale, use_ema=use_ema, prompts=prompts,
            negative_prompts=negative_prompts,
        )

    def default_sample_prompts(self) -> list[str]:
        """The prompts of the sample grids: ``sample_prompts``, else the captions of the
        first ``num_samples`` dataset items."""
        return monitor.default_sample_prompts(self)

    def save_samples(self) -> Path | None:
        """Sample a grid from the EMA model into ``out_dir/samples/step_<step>.png`` (rank 0);
        a text model's prompts go beside it (``.txt``), the grid to TensorBoard too."""
        fsdp.gather_ema(self)  # every rank: the full EMA model on rank 0
        return monitor.save_samples(self)

    # ------------------------------------------------------------------ checkpoints

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Save everything needed to continue bit for bit; returns the folder (rank 0 only).

        Every rank must call it (it gathers each rank's RNG state); only rank 0 writes.
        """
        return save_training_state(self)

    def load_checkpoint(self, checkpoint: Checkpoint | str | os.PathLike) -> None:
        """Restore the complete training state from a checkpoint (folder or loaded)."""
        restore_training_state(self, checkpoint)

    def _say(self, message: str) -> None:
        """One line on stderr from the main process: what a resume or a finished run did."""
        if self.dist.is_main:
            print(f"Trainer: {message}", file=sys.stderr, flush=True)

    def export(self) -> Path | None:
        """Write the EMA model to ``out_dir/ema_model`` (rank 0) for sampling and evaluation.

        A diffusion model (the loss has a ``schedule``) is written as a
        :class:`ddpm_lib.DiffusionPipeline` folder: the model's own ``save_pretrained`` files
        (so ``UNet.from_pretrained`` still reads it) and ``pipeline.json`` with the schedule,
        prediction and variance; ``ddpm-lib sample`` / ``fid`` / ``bpd`` read it. Other models
        (an autoencoder) are written by their ``save_pretrained`` alone. Models without
        ``save_pretrained`` are not exported (``None``).
        """
        fsdp.gather_ema(self)  # every rank: the full EMA model on rank 0
        model = self.ema_model
        if not self.dist.is_main or not callable(getattr(model, "save_pretrained", None)):
            return None
        target = self.out_dir / EXPORT_DIR
        schedule = getattr(self.loss_fn, "schedule", None)
        if schedule is None:
            model.save_pretrained(target)  # type: ignore[operator]
            return target
        from ddpm_lib.pipeline import DiffusionPipeline

        diffusion = training_meta(self)["diffusion"]
        DiffusionPipeline(
            model, schedule, prediction=diffusion.get("prediction", "eps"),
            variance=diffusion.get("variance"),
        ).save_pretrained(target)
        if self.noise_augmentation is not None:  # what a cascade stage samples with
            from ddpm_lib.cascade import write_augmentation

            write_augmentation(target, self.noise_augmentation)
        return target

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint folder in ``out_dir`` (not verified), or ``None``."""
        found = list_checkpoints(self.checkpoint_dir)
        return found[-1] if found else None

    def __repr__(self) -> str:
        return (
            f"Trainer(step={self.step}, batch_size={self.batch_size}, lr={self.lr}, "
            f"device={self.device}, world_size={self.dist.world_size}, out_dir={str(self.out_dir)!r})"
        )
