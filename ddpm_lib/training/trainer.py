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
    ema     <- EMA(theta) with warm-up

All of the Trainer's randomness (data order, t, eps, flips, label dropout) comes from its own
generators seeded by ``seed``; it is drawn for the global batch and sliced, so results do not
depend on how many processes share the batch. Randomness inside the model (dropout) comes
from torch's global RNG, which the Trainer never seeds but saves and restores with every
checkpoint, along with NumPy's and Python's.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ddpm_lib import _io
from ddpm_lib._checks import check_choice, check_int, check_probability, check_real
from ddpm_lib.conditioning import ClassLabel, Prompt, conditions_for, guidance_inputs
from ddpm_lib.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from ddpm_lib.training.distributed import GlobalBatchSampler, setup_distributed
from ddpm_lib.training.ema import EMA, unwrap_model

__all__ = ["Trainer", "MIXED_PRECISION"]

MIXED_PRECISION = ("no", "bf16", "fp16")
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "log.jsonl"
SAMPLES_DIR = "samples"
EXPORT_DIR = "ema_model"


def _rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # ("MT19937", keys, pos, has_gauss, cached_gaussian)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_version, list(py_internal), py_gauss],
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class Trainer:
    """Train a diffusion model: EMA, mixed precision, clipping, warm-up, exact resume, DDP.

    Args:
        model: any ``nn.Module`` called as ``model(x_t, t, **model_kwargs)``. If it has an int
            ``num_classes`` it is trained class-conditionally (``y=`` labels, -1 = null class).
        loss_fn: ``loss_fn(model, x0, t=None, noise=None, **model_kwargs) -> loss``, e.g.
            :class:`ddpm_lib.SimpleLoss`. When it has a ``schedule`` (or ``num_timesteps``) the
            Trainer draws ``t`` and ``noise`` itself (needed for world-size-invariant runs);
            otherwise it passes ``generator=`` and lets the loss draw them. A loss with state
            of its own (e.g. :class:`ddpm_lib.AutoencoderLoss`' discriminator) exposes
            ``state_dict()`` / ``load_state_dict()``, which checkpoints save and restore, and
            ``update()``, called after every optimizer step of the model.
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
    ) -> None:
        # ---------------------------------------------------------------- validation
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
        self.lr = float(lr)
        self.warmup_steps = warmup_steps
        self.seed = seed
        self.guidance_scale = guidance_scale
        self.loss_fn = loss_fn
        self.dataset = dataset
        self._progress = bool(progress)
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / CHECKPOINT_DIR

        # ---------------------------------------------------------------- what the data is
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        first = dataset[0]
        self._wrapped = isinstance(first, (tuple, list))  # (image,) or (image, label, ...)
        if isinstance(first, torch.Tensor):
            image = first
        elif self._wrapped and len(first) >= 1 and isinstance(first[0], torch.Tensor):
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
                stacklevel=2,
            )
        self.image_shape = tuple(image.shape)
        # what the model is conditioned on: the item's field after the image (a label or a
        # caption), read, dropped and encoded by its Condition (ddpm_lib.conditioning)
        fields = list(first[1:2]) if self._wrapped else []
        self.conditions = conditions_for(
            unwrap_model(model), fields, class_dropout=self.class_dropout,
            caption_dropout=self.caption_dropout,
        )
        self._captioned = any(isinstance(c, Prompt) for c in self.conditions)
        self._text_model = self._captioned
        self.random_flip = not self._captioned if random_flip is None else bool(random_flip)
        if sample_prompts is not None:
            if not isinstance(sample_prompts, (list, tuple)) or not sample_prompts or not all(
                isinstance(prompt, str) for prompt in sample_prompts
            ):
                raise TypeError(f"sample_prompts must be a non-empty list of str; got {sample_prompts!r}")
            sample_prompts = list(sample_prompts)
        self.sample_prompts = sample_prompts
        self.num_classes = next((c.num_classes for c in self.conditions
                                 if isinstance(c, ClassLabel)), None)

        schedule = getattr(loss_fn, "schedule", None)
        self.num_timesteps = getattr(loss_fn, "num_timesteps", None) or getattr(
            schedule, "num_timesteps", None
        )
        self.sampler = sampler

        # ---------------------------------------------------------------- placement, DDP
        self.dist = setup_distributed(device)
        self.device = self.dist.device
        if self.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by the number of processes "
                f"({self.dist.world_size})"
            )
        self.local_batch_size = self.batch_size // self.dist.world_size
        self.model = model.to(self.device)
        if self.dist.enabled:
            device_ids = [self.device] if self.device.type == "cuda" else None
            # DDP broadcasts rank 0's weights here, before the EMA copies them.
            self._train_model: nn.Module = nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids
            )
        else:
            self._train_model = self.model
        self.ema = EMA(self.model, decay=ema_decay)
        params = list(self.model.parameters())
        # PyTorch's fused Adam (one kernel over all tensors) where it has one: on a CPU it
        # takes a quarter of the per-tensor loop's time, which small models feel on every step.
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        self.optimizer = torch.optim.Adam(
            params, lr=self.lr, betas=adam_betas, weight_decay=weight_decay, fused=fused or None
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.mixed_precision == "fp16"
        )
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.mixed_precision
        )

        self.data_sampler = GlobalBatchSampler(
            len(dataset), self.batch_size, self.dist.world_size, self.dist.rank, seed
        )
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1) if self.device.type == "cuda" else 0
        self.num_workers = num_workers
        self._loader = DataLoader(
            dataset,
            batch_size=self.local_batch_size,
            sampler=self.data_sampler,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),  # worker seeds; not the global RNG
        )
        # The shared generator draws t, noise, flips and label dropout for the global batch.
        self._generator = torch.Generator(self.device).manual_seed(seed)
        # Only used when the loss draws its own t and noise: different on every rank.
        self._loss_generator = torch.Generator(self.device).manual_seed(
            seed + 7919 * (self.dist.rank + 1)
        )

        # ---------------------------------------------------------------- state
        self.step = 0
        self.epoch = 0
        self._position = 0  # batches of the current epoch already used
        self._batch_iter: Iterator[Any] | None = None
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_count = 0
        self._last_grad_norm: torch.Tensor | None = None
        self._writer: Any = None
        self._use_tensorboard = tensorboard
        self.resumed_from: Path | None = None
        if self.sampler is None and self.sample_every is not None:
            self.sampler = self._default_sampler()
        if self.dist.is_main:
            remove_stale_temporaries(self.checkpoint_dir)
        if resume:
            self._resume()

    # ------------------------------------------------------------------ public properties
    @property
    def ema_model(self) -> nn.Module:
        """The exponential moving average of the trained model (eval mode); sample from this."""
        return self.ema.module

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
        progress = self._progress_bar(num_steps)
        self.model.train()
        self._interval_start = time.perf_counter()
        self._interval_steps = 0
        self._hook_seconds = 0.0
        last_checkpoint = last_sample = -1
        try:
            while self.step < num_steps:
                batch = self._next_batch()
                self._train_step(batch)
                self.step += 1
                self._interval_steps += 1
                if progress is not None:
                    progress.update(1)
                if self.step % self.log_every == 0:
                    self._log(progress)
                if self.step % self.checkpoint_every == 0:
                    self._timed(self.save_checkpoint)
                    last_checkpoint = self.step
                if self.sample_every is not None and self.step % self.sample_every == 0:
                    self._timed(self.save_samples)
                    last_sample = self.step
                if deadline is not None and self._past(deadline):
                    break
            if last_checkpoint != self.step:
                self.save_checkpoint()
            if self.sample_every is not None and last_sample != self.step:
                self.save_samples()
            self.export()
        finally:
            if progress is not None:
                progress.close()
            if self._writer is not None:
                self._writer.flush()
        return self.step

    def _past(self, deadline: float) -> bool:
        """Whether the time budget is spent, agreed by all processes (rank 0 decides)."""
        past = time.monotonic() >= deadline
        if not self.dist.enabled:
            return past
        flag = torch.tensor([1 if past else 0], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _timed(self, function: Callable[[], Any]) -> None:
        start = time.perf_counter()
        function()
        self._hook_seconds += time.perf_counter() - start

    def _next_batch(self) -> Any:
        while True:
            if self._batch_iter is None:
                self.data_sampler.set_epoch(self.epoch)
                self.data_sampler.set_start(self._position)
                self._batch_iter = iter(self._loader)
            try:
                batch = next(self._batch_iter)
            except StopIteration:
                self._batch_iter = None
                self.epoch += 1
                self._position = 0
                continue
            self._position += 1
            return batch

    def _train_step(self, batch: Any) -> None:
        device = self.device
        x0 = batch[0] if self._wrapped else batch
        x0 = x0.to(device, non_blocking=True).float()  # (b, C, H, W), b = local batch
        global_b, local_b = self.batch_size, self.local_batch_size
        mine = slice(self.dist.rank * local_b, (self.dist.rank + 1) * local_b)
        generator = self._generator
        loss_kwargs: dict[str, Any] = {}
        # Everything is drawn for the global batch (the same on every rank), then sliced.
        if self.num_timesteps is not None:
            t = torch.randint(0, self.num_timesteps, (global_b,), generator=generator, device=device)
            noise = torch.randn((global_b, *x0.shape[1:]), generator=generator, device=device)
            loss_kwargs["t"], loss_kwargs["noise"] = t[mine], noise[mine]
        else:
            loss_kwargs["generator"] = self._loss_generator
        if self.random_flip:
            flip = torch.rand(global_b, generator=generator, device=device)[mine] < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        values = []
        for position, condition in enumerate(self.conditions, start=1):
            value = condition.collate(batch[position], device)
            if condition.dropout > 0:  # classifier-free guidance: some go to the null value
                drop = torch.rand(global_b, generator=generator, device=device)[mine]
                value = condition.drop(value, drop < condition.dropout)
            values.append(value)

        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(
            device.type, dtype=self._autocast_dtype or torch.float32,
            enabled=self._autocast_dtype is not None,
        ):
            # A text encoder runs in the graph of this step's loss, so it trains jointly (and
            # its gradients are all-reduced with the UNet's under DDP).
            for condition, value in zip(self.conditions, values):
                loss_kwargs.update(condition.model_kwargs(value, unwrap_model(self.model)))
            loss = self.loss_fn(self._train_model, x0, **loss_kwargs)
        if loss.ndim:
            loss = loss.mean()
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            self._last_grad_norm = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.grad_clip
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        update = getattr(self.loss_fn, "update", None)
        if callable(update):  # a loss with trainable parts of its own (a discriminator)
            update()
        self.ema.update(self.model)
        self._loss_sum += loss.detach().double()
        self._loss_count += 1

    # ------------------------------------------------------------------ logging
    def _progress_bar(self, num_steps: int) -> Any:
        if not self._show_progress():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=num_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def _show_progress(self) -> bool:
        return self._progress and self.dist.is_main

    def _log(self, progress: Any) -> None:
        loss_sum = self._loss_sum.clone()
        if self.dist.enabled:
            dist.all_reduce(loss_sum)
            loss_sum /= self.dist.world_size
        loss = float(loss_sum) / max(self._loss_count, 1)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the training loss is {loss} at step {self.step}; lower lr or use "
                f"grad_clip / mixed_precision='no' and resume from {self.checkpoint_dir}"
            )
        elapsed = max(time.perf_counter() - self._interval_start - self._hook_seconds, 1e-9)
        record = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": loss,
            "lr": self.lr_at(self.step - 1),
            "grad_norm": float(self._last_grad_norm) if self._last_grad_norm is not None else None,
            "images_per_sec": self._interval_steps * self.batch_size / elapsed,
            "ema_decay": self.ema.current_decay(),
            "time": time.time(),
        }
        if self.mixed_precision == "fp16":
            record["grad_scale"] = float(self.scaler.get_scale())
        self._loss_sum.zero_()
        self._loss_count = 0
        self._interval_start = time.perf_counter()
        self._interval_steps = 0
        self._hook_seconds = 0.0
        if progress is not None:
            progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{record['images_per_sec']:.1f}")
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for key in ("loss", "lr", "grad_norm", "images_per_sec"):
                if record[key] is not None:
                    writer.add_scalar(f"train/{key}", record[key], self.step)

    def _tensorboard(self) -> Any:
        if self._use_tensorboard is False or not self.dist.is_main:
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if self._use_tensorboard:
                    raise
                self._use_tensorboard = False
                return None
            self._writer = SummaryWriter(
                str(self.out_dir / "tensorboard"), purge_step=self.step if self.resumed_from else None
            )
        return self._writer

    # ------------------------------------------------------------------ sampling
    def _default_sampler(self) -> Any:
        """DDPM respaced to 100 steps on the loss's schedule, with its prediction and variance.

        Ancestral sampling is the forgiving choice while the model is still being trained:
        deterministic samplers turn its early errors into washed-out images.
        """
        schedule = getattr(self.loss_fn, "schedule", None)
        if schedule is None:
            raise ValueError(
                "sample_every needs a sampler: pass sampler=..., or a loss_fn with a .schedule"
            )
        from ddpm_lib.samplers import DDPMSampler

        prediction = getattr(self.loss_fn, "prediction", "eps")
        variance = getattr(self.loss_fn, "variance", None)
        config = getattr(unwrap_model(self.model), "config", None)
        if not (isinstance(variance, str) and variance.startswith("learned")):
            learned = isinstance(config, dict) and config.get("learn_sigma")
            variance = "learned_range" if learned else "fixed_small"
        return DDPMSampler(
            schedule, variance=variance, prediction=prediction,
            num_steps=min(100, schedule.num_timesteps),
        )

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
        if self.sampler is None:
            self.sampler = self._default_sampler()
        for name, value in (("prompts", prompts), ("negative_prompts", negative_prompts)):
            if value is not None and (not isinstance(value, (list, tuple)) or not all(
                    isinstance(prompt, str) for prompt in value)):
                raise TypeError(f"{name} must be a list of str; got {value!r}")
        if prompts is not None and num_samples is None:
            num_samples = len(prompts)
        num_samples = check_int("num_samples", num_samples or self.num_samples, 1)
        model = self.ema_model if use_ema else self.model
        if generator is None:
            generator = torch.Generator(self.device).manual_seed(self.seed)
        if self._text_model and prompts is None:
            fixed = self.default_sample_prompts()
            prompts = [fixed[i % len(fixed)] for i in range(num_samples)]
        if not self.conditions:
            guidance_scale = None
        elif guidance_scale is None:
            guidance_scale = self.guidance_scale
        was_training = model.training
        model.eval()
        try:
            model_kwargs, unconditional_kwargs, _ = guidance_inputs(
                unwrap_model(model), num_samples, labels=labels, prompts=prompts,
                negative_prompts=negative_prompts, guidance_scale=guidance_scale,
                device=self.device,
            )
            images = self.sampler.sample(
                model,
                (num_samples, *self.image_shape),
                generator=generator,
                model_kwargs=model_kwargs,
                guidance_scale=guidance_scale,
                **({"unconditional_kwargs": unconditional_kwargs} if unconditional_kwargs else {}),
            )
        finally:
            model.train(was_training)
        return images

    def default_sample_prompts(self) -> list[str]:
        """The prompts of the sample grids: ``sample_prompts``, else the captions of the
        first ``num_samples`` dataset items."""
        if self.sample_prompts is None:
            count = min(self.num_samples, len(self.dataset))
            self.sample_prompts = [str(self.dataset[i][1]) for i in range(count)]
        return self.sample_prompts

    def save_samples(self) -> Path | None:
        """Sample a grid from the EMA model into ``out_dir/samples/step_<step>.png`` (rank 0)."""
        if not self.dist.is_main:
            return None
        from ddpm_lib.data import save_grid

        images = self.sample()
        if self.num_classes is not None and self.num_classes <= 16:
            nrow = self.num_classes  # one column per class
        else:
            nrow = max(1, round(math.sqrt(images.shape[0])))
        upscale = max(1, 64 // max(self.image_shape[1:]))
        path = save_grid(
            images, self.out_dir / SAMPLES_DIR / f"step_{self.step:09d}.png", nrow=nrow,
            upscale=upscale,
        )
        if self._text_model:  # the prompts of the grid, in reading order, beside it
            fixed = self.default_sample_prompts()
            prompts = [fixed[i % len(fixed)] for i in range(images.shape[0])]
            _io.write_text(path.with_suffix(".txt"), "\n".join(prompts) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            from torchvision.utils import make_grid

            writer.add_image("samples", make_grid((images.cpu() + 1) / 2, nrow=nrow), self.step)
        return path

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict[str, Any]:
        model = unwrap_model(self.model)
        config = getattr(model, "config", None)
        schedule = getattr(self.loss_fn, "schedule", None)
        diffusion: dict[str, Any] = {"loss": type(self.loss_fn).__name__}
        if schedule is not None and hasattr(schedule, "to_dict"):
            diffusion["schedule"] = schedule.to_dict()
        for key in ("prediction", "variance", "learn_sigma"):
            value = getattr(self.loss_fn, key, None)
            if isinstance(value, (str, bool, int, float)):
                diffusion[key] = value
        return {
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "model_config": dict(config) if isinstance(config, dict) else None,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "diffusion": diffusion,
            "trainer": {
                "batch_size": self.batch_size,
                "lr": self.lr,
                "warmup_steps": self.warmup_steps,
                "grad_clip": self.grad_clip,
                "ema_decay": self.ema.decay,
                "mixed_precision": self.mixed_precision,
                "seed": self.seed,
                "random_flip": self.random_flip,
                "class_dropout": self.class_dropout,
                "caption_dropout": self.caption_dropout,
                "world_size": self.dist.world_size,
            },
        }

    def save_checkpoint(self) -> Path | None:
        """Save everything needed to continue bit for bit; returns the folder (rank 0 only).

        Every rank must call it (it gathers each rank's RNG state); only rank 0 writes.
        """
        rng = _rng_state(self.device)
        rng["loss_generator"] = self._loss_generator.get_state()
        if self.dist.enabled:
            # Every rank continues from the mean over ranks of the loss not yet logged, which is
            # what a resumed run restores on every rank from rank 0's checkpoint.
            dist.all_reduce(self._loss_sum)
            self._loss_sum /= self.dist.world_size
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rng_states = gathered
        else:
            rng_states = [rng]
        if not self.dist.is_main:
            return None
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "position": self._position,
            "global_batch_size": self.batch_size,
            "world_size": self.dist.world_size,
            "seed": self.seed,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema_num_updates": self.ema.num_updates,
            "generator": self._generator.get_state(),
            "rng": rng_states,
            "loss_sum": self._loss_sum.cpu(),
            "loss_count": self._loss_count,
            "lr_schedule": {"lr": self.lr, "warmup_steps": self.warmup_steps},
        }
        loss_state = getattr(self.loss_fn, "state_dict", None)
        if callable(loss_state):
            state["loss_fn"] = loss_state()
        weights = {
            "model": unwrap_model(self.model).state_dict(),
            "ema": self.ema.module.state_dict(),
        }
        path = save_checkpoint(self.checkpoint_dir, self.step, weights, state, self._meta())
        prune_checkpoints(self.checkpoint_dir, self.keep_checkpoints)
        return path

    def _resume(self) -> None:
        checkpoint: Checkpoint | None = None
        if self.dist.is_main:
            checkpoint = load_latest_checkpoint(self.checkpoint_dir, map_location="cpu")
        if self.dist.enabled:
            chosen = [str(checkpoint.path) if checkpoint is not None else None]
            dist.broadcast_object_list(chosen, src=0)
            if not self.dist.is_main and chosen[0] is not None:
                checkpoint = load_checkpoint(chosen[0], map_location="cpu")
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
            self._say(f"resuming from step {self.step} (epoch {self.epoch}, batch "
                      f"{self._position} of it) of {checkpoint.path}")

    def _say(self, message: str) -> None:
        """One line on stderr from the main process: what a resume or a finished run did."""
        if self.dist.is_main:
            print(f"Trainer: {message}", file=sys.stderr, flush=True)

    def load_checkpoint(self, checkpoint: Checkpoint | str | os.PathLike) -> None:
        """Restore the complete training state from a checkpoint (folder or loaded)."""
        if not isinstance(checkpoint, Checkpoint):
            try:
                checkpoint = load_checkpoint(checkpoint, map_location="cpu")
            except CheckpointError as error:
                raise ValueError(str(error)) from error
        state, path = checkpoint.state, checkpoint.path
        if state["global_batch_size"] != self.batch_size:
            raise ValueError(
                f"checkpoint {path} was trained with batch_size={state['global_batch_size']}; "
                f"got batch_size={self.batch_size} (resume with the same batch size or use a "
                "new out_dir)"
            )
        for name, module in (("model", unwrap_model(self.model)), ("ema", self.ema.module)):
            try:
                module.load_state_dict(checkpoint.weights[name])
            except (RuntimeError, KeyError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise ValueError(
                    f"checkpoint {path} does not fit this model ({name} weights): {first_line}"
                ) from error
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:
            raise ValueError(f"checkpoint {path}: optimizer state does not fit: {error}") from error
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if "loss_fn" in state and callable(getattr(self.loss_fn, "load_state_dict", None)):
            try:
                self.loss_fn.load_state_dict(state["loss_fn"])  # type: ignore[attr-defined]
            except (ValueError, RuntimeError, KeyError) as error:
                raise ValueError(f"checkpoint {path}: the loss's state does not fit: {error}") from error
        self.ema.num_updates = int(state["ema_num_updates"])
        self._generator.set_state(state["generator"])
        rng_states = state["rng"]
        if len(rng_states) == self.dist.world_size:
            mine = rng_states[self.dist.rank]
            _set_rng_state(mine, self.device)
            self._loss_generator.set_state(mine["loss_generator"])
        else:
            warnings.warn(
                f"checkpoint {path} was written by {len(rng_states)} process(es), this run has "
                f"{self.dist.world_size}: the global RNG states are not restored",
                stacklevel=2,
            )
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._batch_iter = None
        self._loss_sum.copy_(state["loss_sum"])
        self._loss_count = int(state["loss_count"])
        self.resumed_from = path
        if self.dist.is_main:
            self._truncate_log(self.step)

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after ``step`` by a run that died before its next checkpoint."""
        log = self.out_dir / LOG_FILE
        if not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        _io.write_text(log, "".join(line + "\n" for line in kept))

    def export(self) -> Path | None:
        """Write the EMA model to ``out_dir/ema_model`` (rank 0) for sampling and evaluation.

        A diffusion model (the loss has a ``schedule``) is written as a
        :class:`ddpm_lib.DiffusionPipeline` folder: the model's own ``save_pretrained`` files
        (so ``UNet.from_pretrained`` still reads it) and ``pipeline.json`` with the schedule,
        prediction and variance; ``ddpm-lib sample`` / ``fid`` / ``bpd`` read it. Other models
        (an autoencoder) are written by their ``save_pretrained`` alone. Models without
        ``save_pretrained`` are not exported (``None``).
        """
        model = self.ema_model
        if not self.dist.is_main or not callable(getattr(model, "save_pretrained", None)):
            return None
        target = self.out_dir / EXPORT_DIR
        schedule = getattr(self.loss_fn, "schedule", None)
        if schedule is None:
            model.save_pretrained(target)  # type: ignore[operator]
            return target
        from ddpm_lib.pipeline import DiffusionPipeline

        diffusion = self._meta()["diffusion"]
        DiffusionPipeline(
            model, schedule, prediction=diffusion.get("prediction", "eps"),
            variance=diffusion.get("variance"),
        ).save_pretrained(target)
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
