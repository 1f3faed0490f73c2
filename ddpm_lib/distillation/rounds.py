"""The drivers: distillation through the :class:`ddpm_lib.Trainer`, resumable at any point.

:func:`~ddpm_lib.distillation.distill_progressive` runs the rounds ``N -> N/2 -> ... -> final_steps``; round ``k``
trains in ``out_dir/steps_<N>/`` (the Trainer's checkpoints: an interrupted round resumes
exactly from its newest checkpoint) and writes its student as a
:class:`ddpm_lib.DiffusionPipeline` to ``out_dir/steps_<N>/student/`` with the sampler that
serves it (DDIM on its ``N`` timesteps), then ``done.json``. A finished round is not trained
again; the next round's teacher is always read back from the saved student, and each round
draws its dropout noise from torch's global RNG seeded per round inside
``torch.random.fork_rng`` (the caller's RNG state is untouched), so a run stopped and started
again between or inside rounds ends with the same weights as one that never stopped.

:func:`~ddpm_lib.distillation.distill_consistency` is one round of consistency distillation in ``out_dir`` (student in
``out_dir/student/``, sampled with :class:`ddpm_lib.ConsistencySampler`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_int
from ..schedule import NoiseSchedule
from ._common import check_student
from .consistency import ConsistencyDistillation
from .progressive import ProgressiveDistillation

__all__ = ["DistillationRun", "distill_consistency",
           "distill_progressive"]

#: the Trainer's settings a distillation uses unless ``trainer_options`` says otherwise
DISTILL_TRAINER_DEFAULTS: dict[str, Any] = {
    "batch_size": 64, "lr": 1e-4, "warmup_steps": 0, "ema_decay": 0.995, "log_every": 100,
    "checkpoint_every": 500, "progress": False, "tensorboard": False, "class_dropout": 0.1,
}
DONE_FILE = "done.json"
STUDENT_DIR = "student"


@dataclass
class DistillationRun:
    """What a driver returns.

    Attributes:
        students: the folders of the saved students, one a round (a
            :class:`ddpm_lib.DiffusionPipeline` each), in order.
        steps: the sampling steps of each round's student.
        training_steps: optimizer steps of each round (the cost of distillation).
        pipeline: the last student's pipeline (loaded back, eval mode); ``pipeline.sample()``
            uses its distilled sampler.
    """

    students: list[Path]
    steps: list[int]
    training_steps: list[int]
    pipeline: Any


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def _initial_student(teacher: Any, student: nn.Module | None, guided: bool) -> nn.Module:
    """The first round's student: the given one (checked against the teacher and loaded with
    its weights) or a copy of the teacher, with a guidance embedding when guided."""
    if student is None:
        if guided:
            from ..models.unet import UNet
            from .guidance import with_guidance_embedding

            if not isinstance(teacher, UNet):
                raise TypeError("guided distillation needs a student that reads guidance_scale: "
                                "pass student= (the teacher is not a ddpm_lib.UNet, so no "
                                "GuidanceConditionedUNet can be copied from it)")
            student = with_guidance_embedding(teacher)
        else:
            if not isinstance(teacher, nn.Module):
                raise TypeError(f"teacher must be a torch.nn.Module to be copied into the "
                                f"student; got {type(teacher).__name__} (pass student=)")
            student = copy.deepcopy(teacher)
    else:
        check_student(student, teacher)
        if isinstance(teacher, nn.Module):
            student.load_state_dict(teacher.state_dict(), strict=False)
    # a text model's encoder stays frozen: the Trainer encodes the captions with the student's
    # encoder and the teacher reads the same encoding
    encoder = getattr(student, "text_encoder", None)
    if not callable(getattr(student, "save_pretrained", None)):
        raise TypeError(f"the student must have save_pretrained (a ddpm_lib model) so that each "
                        f"round is saved; got {type(student).__name__}")
    student.train().requires_grad_(True)
    if isinstance(encoder, nn.Module):
        encoder.requires_grad_(False)
    return student


def _train_round(
    student: nn.Module, loss: Any, dataset: Any, folder: Path, num_steps: int, seed: int,
    options: Mapping[str, Any], sampler: Mapping[str, Any], done: Mapping[str, Any],
    bundle: Mapping[str, Any],
) -> int:
    """Train one round in ``folder`` (resuming there) and save its student; returns the
    optimizer steps of the round."""
    from .. import _io
    from ..pipeline import DiffusionPipeline
    from ..training import Trainer

    settings = {**DISTILL_TRAINER_DEFAULTS, **options}
    use_ema = settings.pop("use_ema", True)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # the student's dropout: the same in every run of this round
        trainer = Trainer(student, loss, dataset, out_dir=folder, seed=seed, **settings)
        trainer.train(num_steps)
    trained = trainer.ema_model if use_ema else trainer.model
    DiffusionPipeline(trained, loss.schedule, prediction=loss.prediction, sampler=sampler,
                      **bundle).save_pretrained(folder / STUDENT_DIR)
    _io.write_json(folder / DONE_FILE, {**done, "training_steps": trainer.step})
    return trainer.step


def _finished(folder: Path) -> int | None:
    """The training steps of a finished round in ``folder``, or ``None``."""
    import json

    path = folder / DONE_FILE
    if not path.is_file() or not (folder / STUDENT_DIR).is_dir():
        return None
    return int(json.loads(path.read_text())["training_steps"])


def _load_student(folder: Path, device: Any) -> Any:
    from ..pipeline import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder / STUDENT_DIR, device=device)


def distill_progressive(
    teacher: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    dataset: Any,
    *,
    out_dir: str | os.PathLike,
    teacher_steps: int,
    steps_per_round: int,
    final_steps: int = 1,
    teacher_prediction: str = "eps",
    prediction: str | None = None,
    student: nn.Module | None = None,
    trainer_options: Mapping[str, Any] | None = None,
    bundle_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    **loss_options: Any,
) -> DistillationRun:
    """Progressive distillation of ``teacher`` from ``teacher_steps`` DDIM steps down to
    ``final_steps``, halving each round (Salimans & Ho 2022, Algorithm 2).

    Args:
        teacher: the trained model (a :class:`ddpm_lib.UNet` or any module with
            ``save_pretrained``), sampled by DDIM on ``teacher_steps`` steps.
        schedule: its forward process.
        dataset: the training data (items as for the :class:`ddpm_lib.Trainer`).
        out_dir: the run's folder (module docstring for the layout).
        teacher_steps: a power of two ``>= 2``, at most ``T``: the first round's teacher grid.
        steps_per_round: optimizer steps of each round.
        final_steps: the last round's student steps (a power of two below ``teacher_steps``).
        teacher_prediction, prediction: the teacher's and the students' predictions.
        student: the first round's student (by default a copy of the teacher, with a
            guidance embedding for guided distillation); it must hold the teacher's
            parameters, whose values it receives.
        trainer_options: :class:`ddpm_lib.Trainer` settings over
            ``DISTILL_TRAINER_DEFAULTS``, and ``use_ema`` (save the EMA student, default).
        bundle_options: more arguments of each student's :class:`ddpm_lib.DiffusionPipeline`
            (a latent model's ``autoencoder`` and ``scale_factor``).
        seed: seeds each round's Trainer (``seed + round``) and dropout.
        loss_options: :class:`~ddpm_lib.distillation.ProgressiveDistillation` options (``spacing``, ``weighting``,
            ``guidance_scale``, ``unconditional_kwargs``).

    Returns:
        a :class:`~ddpm_lib.distillation.DistillationRun`.
    """
    teacher_steps = check_int("teacher_steps", teacher_steps, 2)
    final_steps = check_int("final_steps", final_steps, 1)
    for name, value in (("teacher_steps", teacher_steps), ("final_steps", final_steps)):
        if not _is_power_of_two(value):
            raise ValueError(f"{name} must be a power of two (each round halves the steps); "
                             f"got {value}")
    if final_steps >= teacher_steps:
        raise ValueError(f"final_steps must be below teacher_steps = {teacher_steps}; got "
                         f"{final_steps}")
    if teacher_steps > schedule.num_timesteps:
        raise ValueError(f"teacher_steps = {teacher_steps} is a grid finer than the schedule's "
                         f"T = {schedule.num_timesteps} timesteps")
    check_int("steps_per_round", steps_per_round, 1)
    out = Path(out_dir)
    guided = loss_options.get("guidance_scale") is not None
    run = DistillationRun([], [], [], None)
    steps, current_teacher, current_prediction = teacher_steps // 2, teacher, teacher_prediction
    round_index = 0
    while steps >= final_steps:
        folder = out / f"steps_{steps}"
        loss = ProgressiveDistillation(
            current_teacher, schedule, student_steps=steps, teacher_prediction=current_prediction,
            prediction=prediction, teacher_reads_guidance=guided and round_index > 0,
            seed=seed + round_index, **loss_options)
        done = _finished(folder)
        round_student: nn.Module
        if done is None:
            if round_index == 0:
                round_student = _initial_student(teacher, student, guided)
            else:
                copied = copy.deepcopy(current_teacher)  # a saved student: a module
                assert isinstance(copied, nn.Module)
                round_student = copied.train().requires_grad_(True)
            done = _train_round(round_student, loss, dataset, folder, steps_per_round,
                                seed + round_index, trainer_options or {},
                                loss.sampler_settings(),
                                {"method": "progressive", "steps": steps}, bundle_options or {})
        device = next(iter(getattr(current_teacher, "parameters", lambda: iter(()))()), None)
        pipe = _load_student(folder, device.device if device is not None else None)
        run.students.append(folder / STUDENT_DIR)
        run.steps.append(steps)
        run.training_steps.append(done)
        run.pipeline = pipe
        current_teacher, current_prediction = pipe.model, loss.prediction
        steps //= 2
        round_index += 1
    return run


def distill_consistency(
    teacher: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    dataset: Any,
    *,
    out_dir: str | os.PathLike,
    train_steps: int,
    num_steps: int = 1,
    teacher_prediction: str = "eps",
    prediction: str | None = None,
    student: nn.Module | None = None,
    trainer_options: Mapping[str, Any] | None = None,
    bundle_options: Mapping[str, Any] | None = None,
    seed: int = 0,
    **loss_options: Any,
) -> DistillationRun:
    """Consistency distillation of ``teacher`` (Song et al. 2023, Algorithm 2) through the
    Trainer in ``out_dir`` (resumed exactly when interrupted).

    Args:
        teacher: the trained model; ``schedule``, ``dataset``, ``out_dir``,
            ``teacher_prediction``, ``prediction``, ``student``, ``trainer_options``,
            ``bundle_options`` and ``seed`` as in
            :func:`~ddpm_lib.distillation.distill_progressive`.
        train_steps: optimizer steps.
        num_steps: the sampling steps recorded in the student's pipeline (1: one-step).
        loss_options: :class:`~ddpm_lib.distillation.ConsistencyDistillation` options (``num_levels``, ``solver``,
            ``distance``, ``target_decay``, ``guidance_scale``, ...).
    """
    check_int("train_steps", train_steps, 1)
    out = Path(out_dir)
    loss = ConsistencyDistillation(teacher, schedule, teacher_prediction=teacher_prediction,
                                   prediction=prediction, seed=seed, **loss_options)
    check_int("num_steps", num_steps, 1, loss.num_levels)
    done = _finished(out)
    if done is None:
        guided = loss.guidance is not None
        done = _train_round(_initial_student(teacher, student, guided), loss, dataset, out,
                            train_steps, seed, trainer_options or {},
                            loss.sampler_settings(num_steps),
                            {"method": "consistency", "steps": num_steps}, bundle_options or {})
    parameter = next(iter(getattr(teacher, "parameters", lambda: iter(()))()), None)
    pipe = _load_student(out, parameter.device if parameter is not None else None)
    return DistillationRun([out / STUDENT_DIR], [num_steps], [done], pipe)
