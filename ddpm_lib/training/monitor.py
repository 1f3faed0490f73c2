"""What a training run shows while it runs: progress bar, ``log.jsonl``, TensorBoard, sample grids.

:class:`Monitor` owns the running sum of the loss since the last log line (all-reduced over
processes when a line is written or a checkpoint saved, so every rank continues from the same
value a resumed run restores), the interval timing behind ``images_per_sec``, the progress bar
and the TensorBoard writer (rank 0 only). The sampling half (the default sampler of the grids,
the grids themselves, the prompts written beside them) are functions of the
:class:`~ddpm_lib.training.Trainer`, which they read but do not change.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ddpm_lib import _io
from ddpm_lib._checks import check_int
from ddpm_lib.conditioning import LowResImage, guidance_inputs
from ddpm_lib.training.distributed import DistributedInfo
from ddpm_lib.training.ema import unwrap_model

if TYPE_CHECKING:
    from ddpm_lib.training.trainer import Trainer

__all__ = ["Monitor", "LOG_FILE", "SAMPLES_DIR", "default_sampler", "sample", "save_samples",
           "default_sample_prompts"]

LOG_FILE = "log.jsonl"
SAMPLES_DIR = "samples"


class Monitor:
    """The loss accumulator, ``log.jsonl``, the progress bar and TensorBoard of one run.

    Args:
        out_dir: the run's folder (``log.jsonl`` and ``tensorboard/`` go there).
        dist: this process's place; only rank 0 writes or shows anything.
        progress: show a tqdm bar; ``tensorboard``: ``None`` writes events when tensorboard
            is installed, ``True`` requires it, ``False`` never writes them.
    """

    def __init__(self, out_dir: Path, dist_info: DistributedInfo, *, progress: bool,
                 tensorboard: bool | None) -> None:
        self.out_dir = out_dir
        self.dist = dist_info
        self.progress = bool(progress)
        self.use_tensorboard = tensorboard
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=dist_info.device)
        self.loss_count = 0
        self.writer: Any = None
        self.bar: Any = None
        self.resumed = False  # a resumed run drops the TensorBoard events of the dead run
        self.start_interval()

    # ------------------------------------------------------------------ the loss
    def add(self, loss: torch.Tensor) -> None:
        """Add one step's (scalar) loss to the running sum."""
        self.loss_sum += loss.detach().double()
        self.loss_count += 1

    def mean_over_ranks(self) -> torch.Tensor:
        """The running sum averaged over processes (a new tensor; the sum is unchanged)."""
        loss_sum = self.loss_sum.clone()
        if self.dist.enabled:
            dist.all_reduce(loss_sum)
            loss_sum /= self.dist.world_size
        return loss_sum

    def state(self) -> dict[str, Any]:
        """The accumulator for a checkpoint, after every rank adopts the mean over ranks (the
        value a resumed run restores on every rank from rank 0's checkpoint)."""
        self.loss_sum.copy_(self.mean_over_ranks())
        return {"loss_sum": self.loss_sum.cpu(), "loss_count": self.loss_count}

    def load_state(self, loss_sum: torch.Tensor, loss_count: int) -> None:
        self.loss_sum.copy_(loss_sum)
        self.loss_count = int(loss_count)

    # ------------------------------------------------------------------ timing, progress
    def start_interval(self) -> None:
        """Start timing a new log interval (steps and seconds outside checkpoints / grids)."""
        self.interval_start = time.perf_counter()
        self.interval_steps = 0
        self.hook_seconds = 0.0

    def timed(self, function: Callable[[], Any]) -> None:
        """Run ``function`` (a checkpoint, a grid) without counting it in ``images_per_sec``."""
        start = time.perf_counter()
        function()
        self.hook_seconds += time.perf_counter() - start

    def open_bar(self, step: int, num_steps: int) -> None:
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=num_steps, initial=step, desc="train", unit="step",
                            dynamic_ncols=True)

    def stepped(self) -> None:
        """One optimizer step done."""
        self.interval_steps += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.flush()

    # ------------------------------------------------------------------ log lines
    def log(self, step: int, epoch: int, batch_size: int, fields: dict[str, Any],
            checkpoint_dir: Path) -> None:
        """Write the line of ``step``: the mean loss since the last line (over all processes),
        ``images_per_sec`` and ``fields`` (lr, grad_norm, ema_decay, grad_scale), then reset."""
        loss = float(self.mean_over_ranks()) / max(self.loss_count, 1)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the training loss is {loss} at step {step}; lower lr or use "
                f"grad_clip / mixed_precision='no' and resume from {checkpoint_dir}"
            )
        elapsed = max(time.perf_counter() - self.interval_start - self.hook_seconds, 1e-9)
        record = {"step": step, "epoch": epoch, "loss": loss, "lr": fields.pop("lr"),
                  "grad_norm": fields.pop("grad_norm"),
                  "images_per_sec": self.interval_steps * batch_size / elapsed,
                  "ema_decay": fields.pop("ema_decay"), "time": time.time(), **fields}
        self.loss_sum.zero_()
        self.loss_count = 0
        self.start_interval()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{record['images_per_sec']:.1f}")
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / LOG_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        writer = self.tensorboard(step)
        if writer is not None:
            for key in ("loss", "lr", "grad_norm", "images_per_sec"):
                if record[key] is not None:
                    writer.add_scalar(f"train/{key}", record[key], step)

    def truncate_log(self, step: int) -> None:
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

    def tensorboard(self, step: int) -> Any:
        """The SummaryWriter (opened at the first use, at ``step``), or ``None``."""
        if self.use_tensorboard is False or not self.dist.is_main:
            return None
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if self.use_tensorboard:
                    raise
                self.use_tensorboard = False
                return None
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"),
                                        purge_step=step if self.resumed else None)
        return self.writer


# ---------------------------------------------------------------------- sample grids
def default_sampler(loss_fn: Any, model: torch.nn.Module) -> Any:
    """DDPM respaced to 100 steps on the loss's schedule, with its prediction and variance.

    Ancestral sampling is the forgiving choice while the model is still being trained:
    deterministic samplers turn its early errors into washed-out images.
    """
    schedule = getattr(loss_fn, "schedule", None)
    if schedule is None:
        raise ValueError(
            "sample_every needs a sampler: pass sampler=..., or a loss_fn with a .schedule"
        )
    from ddpm_lib.models.pretrained import model_config
    from ddpm_lib.samplers import DDPMSampler
    from ddpm_lib.schedule import default_variance

    prediction = getattr(loss_fn, "prediction", "eps")
    variance = getattr(loss_fn, "variance", None)  # a learned one of the loss is the model's
    learned = variance if isinstance(variance, str) and variance.startswith("learned") else None
    variance = default_variance(bool(model_config(unwrap_model(model)).get("learn_sigma")),
                                learned)
    return DDPMSampler(
        schedule, variance=variance, prediction=prediction,
        num_steps=min(100, schedule.num_timesteps),
    )


def _check_prompt_list(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, (list, tuple)) or not all(
            isinstance(prompt, str) for prompt in value)):
        raise TypeError(f"{name} must be a list of str; got {value!r}")


def sample(trainer: Trainer, num_samples: int | None, *, generator: torch.Generator | None,
           labels: torch.Tensor | None, guidance_scale: float | None, use_ema: bool,
           prompts: list[str] | None, negative_prompts: list[str] | None) -> torch.Tensor:
    """:meth:`Trainer.sample` (documented there)."""
    if trainer.sampler is None:
        trainer.sampler = default_sampler(trainer.loss_fn, trainer.model)
    _check_prompt_list("prompts", prompts)
    _check_prompt_list("negative_prompts", negative_prompts)
    if prompts is not None and num_samples is None:
        num_samples = len(prompts)
    num_samples = check_int("num_samples", num_samples or trainer.num_samples, 1)
    model = trainer.ema_model if use_ema else trainer.model
    if generator is None:
        generator = torch.Generator(trainer.device).manual_seed(trainer.seed)
    if trainer._text_model and prompts is None:
        fixed = default_sample_prompts(trainer)
        prompts = [fixed[i % len(fixed)] for i in range(num_samples)]
    if not trainer.conditions:
        guidance_scale = None
    elif guidance_scale is None:
        guidance_scale = trainer.guidance_scale
    was_training = model.training
    model.eval()
    try:
        model_kwargs, unconditional_kwargs, _ = guidance_inputs(
            unwrap_model(model), num_samples, labels=labels, prompts=prompts,
            negative_prompts=negative_prompts, guidance_scale=guidance_scale,
            device=trainer.device,
        )
        if _image_conditioned(trainer):  # an upsampler: the first items' low-res images
            from ddpm_lib.cascade import condition_kwargs

            low_res, _ = _grid_pairs(trainer, num_samples)
            model_kwargs.update(condition_kwargs(low_res, trainer.noise_augmentation,
                                                 generator=generator))
            if unconditional_kwargs:
                unconditional_kwargs = {**model_kwargs, **unconditional_kwargs}
        return trainer.sampler.sample(
            model,
            (num_samples, *trainer.image_shape),
            generator=generator,
            model_kwargs=model_kwargs,
            guidance_scale=guidance_scale,
            **({"unconditional_kwargs": unconditional_kwargs} if unconditional_kwargs else {}),
        )
    finally:
        model.train(was_training)


def default_sample_prompts(trainer: Trainer) -> list[str]:
    """:meth:`Trainer.default_sample_prompts` (documented there)."""
    if trainer.sample_prompts is None:
        count = min(trainer.num_samples, len(trainer.dataset))
        field = 2 if _image_conditioned(trainer) else 1  # (image, low_res, caption) pairs
        trainer.sample_prompts = [str(trainer.dataset[i][field]) for i in range(count)]
    return trainer.sample_prompts


def save_samples(trainer: Trainer) -> Path | None:
    """:meth:`Trainer.save_samples` (documented there)."""
    if not trainer.dist.is_main:
        return None
    from ddpm_lib.data import save_grid

    images = trainer.sample()
    if _image_conditioned(trainer):  # rows of low-res | sample | original
        from ddpm_lib.super_resolution import side_by_side

        low_res, high_res = _grid_pairs(trainer, images.shape[0])
        images, nrow = side_by_side(low_res, images, high_res), 3
    elif trainer.num_classes is not None and trainer.num_classes <= 16:
        nrow = trainer.num_classes  # one column per class
    else:
        nrow = max(1, round(math.sqrt(images.shape[0])))
    upscale = max(1, 64 // max(trainer.image_shape[1:]))
    path = save_grid(
        images, trainer.out_dir / SAMPLES_DIR / f"step_{trainer.step:09d}.png", nrow=nrow,
        upscale=upscale,
    )
    if trainer._text_model:  # the prompts of the grid, in reading order, beside it
        fixed = default_sample_prompts(trainer)
        prompts = [fixed[i % len(fixed)] for i in range(images.shape[0])]
        _io.write_text(path.with_suffix(".txt"), "\n".join(prompts) + "\n")
    writer = trainer.monitor.tensorboard(trainer.step)
    if writer is not None:
        from torchvision.utils import make_grid

        writer.add_image("samples", make_grid((images.cpu() + 1) / 2, nrow=nrow), trainer.step)
    return path


def _image_conditioned(trainer: Trainer) -> bool:
    return any(isinstance(c, LowResImage) for c in trainer.conditions)


def _grid_pairs(trainer: Trainer, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low_res, high_res)`` of the first ``count`` dataset items (cycled), on the device."""
    items = [trainer.dataset[i % len(trainer.dataset)] for i in range(count)]
    high = torch.stack([item[0] for item in items]).to(trainer.device)
    low = torch.stack([item[1] for item in items]).to(trainer.device)
    return low, high
