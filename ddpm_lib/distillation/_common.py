"""What progressive and consistency distillation share: the teacher's (guided) prediction,
the step grid and its levels, the guidance scales drawn for the student, the check that a
student fits its teacher."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_bool, check_choice, check_int, check_real
from ..conditioning import guidance_kwargs
from ..samplers.grids import SPACINGS, check_timestep_list, grid_timesteps
from ..schedule import PREDICTION_TYPES, NoiseSchedule, gather, x0_eps_from_prediction

Model = Callable[..., torch.Tensor]
#: the keyword argument through which a guided student reads its guidance scale ``(B,)``
GUIDANCE_KWARG = "guidance_scale"


def check_teacher(teacher: Any) -> Model:
    """``teacher`` if callable (frozen and in eval mode when a module), else a TypeError."""
    if not callable(teacher):
        raise TypeError(f"teacher must be callable as teacher(x_t, t, **kwargs); got "
                        f"{type(teacher).__name__}")
    if isinstance(teacher, nn.Module):
        teacher.eval().requires_grad_(False)
    return teacher


def check_schedule(schedule: Any) -> NoiseSchedule:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
    return schedule


def level_grid(
    schedule: NoiseSchedule, num_levels: int, spacing: str,
    timesteps: Sequence[int] | torch.Tensor | None, what: str,
) -> torch.Tensor:
    """The ``(num_levels,)`` descending timesteps of a distillation grid (of ``spacing``, or
    the given ``timesteps``); ``what`` names the grid in errors."""
    num_timesteps = schedule.num_timesteps
    if timesteps is not None:
        grid = check_timestep_list(timesteps, num_timesteps)
        if grid.numel() != num_levels:
            raise ValueError(f"{what} must have {num_levels} timesteps; got {grid.numel()}")
        return grid
    check_choice("spacing", spacing, SPACINGS)
    if num_levels > num_timesteps:
        raise ValueError(
            f"{what} of {num_levels} steps is finer than the schedule's T = {num_timesteps} "
            f"timesteps; ask for at most {num_timesteps}"
        )
    return grid_timesteps(schedule.alphas_cumprod, num_levels, spacing)


def level_scales(
    schedule: NoiseSchedule, timesteps: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, sigma)`` ``(B, 1, ..., 1)`` of levels given as timesteps ``(B,)``, where the
    timestep ``-1`` stands for clean data (``alpha = 1``, ``sigma = 0``)."""
    abar = gather(schedule.alphas_cumprod, timesteps.clamp(min=0), like)
    abar = torch.where((timesteps < 0).reshape(abar.shape), torch.ones_like(abar), abar)
    return abar.sqrt(), (1 - abar).clamp(min=0).sqrt()


def grid_positions(t: torch.Tensor, num_timesteps: int, num_positions: int) -> torch.Tensor:
    """Map uniform timesteps ``t`` ``(B,)`` in ``[0, T - 1]`` to grid positions in
    ``[0, num_positions - 1]``: ``t * N // T`` (uniform when ``N`` divides ``T``), so that
    the Trainer's draws of ``t`` pick the positions (and its exact resume covers them)."""
    return torch.div(t * num_positions, num_timesteps, rounding_mode="floor")


def check_prediction(name: str, value: Any) -> str:
    return check_choice(name, value, PREDICTION_TYPES)


def check_guidance_range(guidance_scale: Any) -> tuple[float, float] | None:
    """``None``, one scale ``w`` (as ``(w, w)``) or a range ``(w_min, w_max)`` of scales."""
    if guidance_scale is None:
        return None
    if isinstance(guidance_scale, numbers.Real) and not isinstance(guidance_scale, bool):
        value = float(check_real("guidance_scale", guidance_scale, 0))
        return value, value
    if (not isinstance(guidance_scale, (tuple, list)) or len(guidance_scale) != 2):
        raise TypeError(f"guidance_scale must be a float, a (min, max) pair or None; got "
                        f"{guidance_scale!r}")
    low = float(check_real("guidance_scale[0]", guidance_scale[0], 0))
    high = float(check_real("guidance_scale[1]", guidance_scale[1], low))
    return low, high


def seeded_generator(seed: Any) -> torch.Generator:
    return torch.Generator().manual_seed(check_int("seed", seed, 0))


class Teacher:
    """The teacher's ``x0`` estimate at ``(x_t, t)``, guided with per-sample scales ``w``
    ``(B,)``: ``uncond + w (cond - uncond)`` (the library's convention; ``w = 1`` is the
    conditional model). Unclipped, as both distillations need.

    Args:
        model: the teacher network.
        schedule: its forward process.
        prediction: what it predicts.
        unconditional_kwargs: the unconditional half's kwargs (a dict, or a callable of the
            batch size returning one, for a text model's encoded empty prompts); default: each
            condition's null (``y = -1``).
        reads_guidance: the teacher is itself a guided student: it reads ``w`` as its
            ``guidance_scale=`` input instead of being called twice (later rounds).
    """

    def __init__(self, model: Model, schedule: NoiseSchedule, prediction: str,
                 unconditional_kwargs: Mapping[str, Any] | Callable[[int], Mapping[str, Any]]
                 | None = None, reads_guidance: bool = False) -> None:
        self.model = check_teacher(model)
        self.schedule = schedule
        self.prediction = check_prediction("teacher_prediction", prediction)
        if unconditional_kwargs is not None and not (
                callable(unconditional_kwargs) or isinstance(unconditional_kwargs, Mapping)):
            raise TypeError(f"unconditional_kwargs must be a dict, a callable or None; got "
                            f"{type(unconditional_kwargs).__name__}")
        self.unconditional_kwargs = unconditional_kwargs
        self.reads_guidance = check_bool("teacher_reads_guidance", reads_guidance)

    def to(self, device: torch.device) -> None:
        if isinstance(self.model, nn.Module):
            self.model.to(device)

    def output(self, x_t: torch.Tensor, t: torch.Tensor, model_kwargs: Mapping[str, Any],
               scales: torch.Tensor | None) -> torch.Tensor:
        """The (guided) prediction half of the teacher's output, shaped like ``x_t``."""
        batch = x_t.shape[0]
        if scales is None:
            return prediction_half(self.model(x_t, t, **model_kwargs), x_t)
        if self.reads_guidance:
            return prediction_half(self.model(x_t, t, **student_kwargs(model_kwargs, scales)), x_t)
        uncond = self.unconditional_kwargs
        if callable(uncond):
            uncond = uncond(batch)
        kwargs = guidance_kwargs(model_kwargs, uncond, batch)
        both = prediction_half(self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), **kwargs),
                                torch.cat([x_t, x_t]))
        cond, uncond_out = both[:batch], both[batch:]
        w = scales.to(x_t.dtype).reshape(batch, *((1,) * (x_t.ndim - 1)))
        return uncond_out + w * (cond - uncond_out)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
           model_kwargs: Mapping[str, Any], scales: torch.Tensor | None) -> torch.Tensor:
        """The teacher's unclipped ``x0`` estimate at ``(x_t, t)`` (levels ``alpha, sigma``)."""
        output = self.output(x_t, t, model_kwargs, scales)
        return x0_eps_from_prediction(self.prediction, output, x_t, alpha, sigma)[0]


def prediction_half(output: Any, x_t: torch.Tensor, who: str = "teacher") -> torch.Tensor:
    """The prediction of a model output (a learned variance's second half dropped)."""
    if not isinstance(output, torch.Tensor):
        sample = getattr(output, "sample", None)
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"{who} must return a torch.Tensor; got {type(output).__name__}")
        output = sample
    if output.shape == x_t.shape:
        return output
    if output.ndim >= 2 and output.shape[1] == 2 * x_t.shape[1]:
        return output[:, : x_t.shape[1]]
    raise ValueError(f"{who} returned shape {tuple(output.shape)}; expected {tuple(x_t.shape)} "
                     "(or twice its channels with a learned variance)")


def draw_scales(guidance: tuple[float, float] | None, batch: int, generator: torch.Generator,
                device: torch.device) -> torch.Tensor | None:
    """``(B,)`` guidance scales uniform in the range (Meng et al. 2023), or ``None``."""
    if guidance is None:
        return None
    low, high = guidance
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return (low + (high - low) * u).to(device=device, dtype=torch.float32)


def student_kwargs(model_kwargs: Mapping[str, Any], scales: torch.Tensor | None) -> dict[str, Any]:
    """The student's kwargs: the condition, and its guidance scale when guided."""
    kwargs = dict(model_kwargs)
    if scales is not None:
        kwargs[GUIDANCE_KWARG] = scales
    return kwargs


def check_student(student: nn.Module, teacher: Any) -> None:
    """A student initialised from ``teacher`` must hold every teacher parameter, shaped alike
    (extra parameters, a guidance embedding, are allowed). Raises a ValueError naming the
    first parameter that is missing or shaped differently."""
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module; got {type(student).__name__}")
    if not isinstance(teacher, nn.Module):
        return
    mine = dict(student.named_parameters())
    for name, parameter in teacher.named_parameters():
        if name not in mine:
            raise ValueError(f"student does not match the teacher's architecture: it has no "
                             f"parameter {name!r} (the student is initialised from the teacher)")
        if mine[name].shape != parameter.shape:
            raise ValueError(
                f"student does not match the teacher's architecture: parameter {name!r} has "
                f"shape {tuple(mine[name].shape)}, the teacher's {tuple(parameter.shape)}")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def draw_t_and_noise(x0: torch.Tensor, t: Any, noise: Any, num_timesteps: int,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Trainer's ``t`` and ``noise``, or drawn from ``generator`` when not given."""
    from .._checks import check_floating, check_timesteps

    check_floating("x0", x0)
    batch = x0.shape[0]
    if t is None:
        device = x0.device if generator is None else generator.device
        t = torch.randint(0, num_timesteps, (batch,), generator=generator, device=device)
    t = check_timesteps(t, num_timesteps, batch, x0.device)
    if noise is None:
        device = x0.device if generator is None else generator.device
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
    check_floating("noise", noise)
    if noise.shape != x0.shape:
        raise ValueError(f"noise must be shaped like x0 {tuple(x0.shape)}; got {tuple(noise.shape)}")
    return t, noise.to(x0.device)
