"""Consistency distillation (Song et al. 2023, Algorithm 2), also in latent space and with
the guidance scale distilled in (latent consistency models, Luo et al. 2023).

The teacher's probability-flow ODE is discretised on ``N`` levels ``g_0 > ... > g_{N-1}``
(then clean data, where the consistency function is the identity). A training step, for a
level ``n`` and ``x_n = alpha_n x0 + sigma_n eps``:

    x^_{n+1} = one step of an ODE solver with the teacher from g_n to g_{n+1}
    loss     = d(f_theta(x_n, g_n), f_theta-(x^_{n+1}, g_{n+1}))

with ``f`` the boundary parameterisation of ``ddpm_lib.samplers.consistency``
(``f(x, clean) = x``), ``theta-`` the target network, an EMA of the student
(``theta- <- mu theta- + (1 - mu) theta`` after every optimizer step), and ``d`` a distance:
squared L2 (mean over dimensions), pseudo-Huber ``sqrt(||a - b||^2 + c^2) - c`` (Song &
Dhariwal 2023, ``c = 0.00054 sqrt(dim)``) or a callable the user passes (a feature distance,
LPIPS). The student's fixed point is the consistency function of the solver's discretised
ODE; the finer the grid the closer it is to the exact PF-ODE map.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_int, check_real
from ..samplers.consistency import check_consistency_options, consistency_coefficients
from ..schedule import NoiseSchedule, gather, x0_eps_from_prediction
from ._common import (
    Teacher,
    check_guidance_range,
    check_prediction,
    check_schedule,
    draw_scales,
    draw_t_and_noise,
    grid_positions,
    level_grid,
    level_scales,
    mean_flat,
    prediction_half,
    reduce,
    seeded_generator,
    student_kwargs,
)

__all__ = ["DISTANCES", "ConsistencyDistillation", "pseudo_huber"]

DISTANCES = ("l2", "pseudo_huber")


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """``sqrt(||a - b||^2 + c^2) - c`` per sample ``(B,)``; ``c = 0.00054 sqrt(dim)`` by default
    (Song & Dhariwal 2023, Sec. 3.3)."""
    squared = (a - b).reshape(a.shape[0], -1).pow(2).sum(dim=1)
    if c is None:
        c = 0.00054 * math.sqrt(a[0].numel())
    return (squared + c * c).sqrt() - c


class ConsistencyDistillation:
    """The consistency-distillation loss; the Trainer trains the student with it.

    Args:
        teacher: the teacher ``teacher(x_t, t, **model_kwargs)`` (frozen here).
        schedule: the forward process.
        num_levels: ``N``, the levels of the discretised ODE (``N <= T``); default 40.
        teacher_prediction: what the teacher predicts.
        prediction: what the student predicts (its ``x0`` estimate enters ``f``); default the
            teacher's.
        spacing: the grid of the levels (default ``"trailing"``), or give ``timesteps``.
        solver: the ODE solver between adjacent levels: ``"heun"`` (Heun's second-order
            method in ``x / alpha`` against ``sigma / alpha``, Karras et al. 2022, Algorithm 1:
            two teacher calls a step, one for the step onto clean data), or a name of
            :data:`ddpm_lib.pipeline.SAMPLER_NAMES` (a deterministic one: ``"ddim"``, the
            default, which is Heun's Euler half, ``"dpm-solver"``, ``"unipc"``, ``"deis"``,
            ``"pndm"``) or a sampler class, built on the levels, unclipped, and taking one
            step from a fresh start (multistep solvers take their first, single-step update).
        distance: ``"l2"``, ``"pseudo_huber"`` or a callable ``d(a, b) -> (B,)`` (a feature
            distance).
        huber_c: the ``c`` of the pseudo-Huber distance (default ``0.00054 sqrt(dim)``).
        target_decay: ``mu`` of the target network's EMA (0.95 in Song et al.'s CD).
        sigma_data, timestep_scaling: the boundary parameterisation (must match the
            :class:`ddpm_lib.ConsistencySampler` used to sample the student).
        guidance_scale: a scale or a range ``(w_min, w_max)`` of the teacher's guidance (LCM);
            the student then reads ``guidance_scale=w`` ``(B,)``.
        unconditional_kwargs: the teacher's unconditional half (a dict, or a callable of the
            batch size, e.g. encoded empty prompts); default the null class.
        teacher_reads_guidance: the teacher is a guided student itself (a later round): it
            reads ``guidance_scale=w`` instead of being guided by two calls.
        seed: seeds the drawn guidance scales.

    The target network is the student's copy at the first call (Algorithm 2's
    ``theta- <- theta``), kept and restored with the Trainer's checkpoints
    (:meth:`state_dict`).
    """

    def __init__(
        self,
        teacher: Callable[..., torch.Tensor],
        schedule: NoiseSchedule,
        *,
        num_levels: int = 40,
        teacher_prediction: str = "eps",
        prediction: str | None = None,
        spacing: str = "trailing",
        timesteps: Sequence[int] | torch.Tensor | None = None,
        solver: str | type = "ddim",
        distance: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "l2",
        huber_c: float | None = None,
        target_decay: float = 0.95,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        guidance_scale: float | tuple[float, float] | None = None,
        unconditional_kwargs: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
        teacher_reads_guidance: bool = False,
        seed: int = 0,
    ) -> None:
        self.schedule = check_schedule(schedule)
        self.num_levels = check_int("num_levels", num_levels, 1)
        self.teacher = Teacher(teacher, schedule, teacher_prediction, unconditional_kwargs,
                               teacher_reads_guidance)
        self.prediction = check_prediction(
            "prediction", teacher_prediction if prediction is None else prediction)
        self._grid = level_grid(schedule, self.num_levels, spacing, timesteps, "the ODE grid")
        self._next = torch.cat([self._grid[1:], torch.tensor([-1])])  # -1: clean data
        self._position_of = torch.full((schedule.num_timesteps,), -1, dtype=torch.long)
        self._position_of[self._grid] = torch.arange(self.num_levels)
        if isinstance(distance, str):
            if distance not in DISTANCES:
                raise ValueError(f"distance must be one of {DISTANCES} or a callable; got "
                                 f"{distance!r}")
        elif not callable(distance):
            raise TypeError(f"distance must be one of {DISTANCES} or a callable d(a, b); got "
                            f"{type(distance).__name__}")
        self.distance = distance
        self.huber_c = check_real("huber_c", huber_c, 0, open_min=True, allow_none=True)
        self.target_decay = float(check_real("target_decay", target_decay, 0, 1))
        self.sigma_data, self.timestep_scaling = check_consistency_options(
            sigma_data, timestep_scaling)
        self.guidance = check_guidance_range(guidance_scale)
        self.solver = self._build_solver(solver)
        self.generator = seeded_generator(seed)
        self.target_network: nn.Module | None = None
        self._student: nn.Module | None = None
        self._pending: Mapping[str, Any] | None = None

    def _build_solver(self, solver: Any) -> Any:
        from ..pipeline import SAMPLER_NAMES
        from ..samplers import Sampler

        if isinstance(solver, str) and solver == "heun":
            return "heun"
        if isinstance(solver, str):
            if solver not in SAMPLER_NAMES or solver == "consistency":
                raise ValueError(f"solver must be 'heun', a sampler name of "
                                 f"{tuple(SAMPLER_NAMES)} (not 'consistency') or a Sampler "
                                 f"class; got {solver!r}")
            from .. import samplers

            solver = getattr(samplers, SAMPLER_NAMES[solver])
        if not (isinstance(solver, type) and issubclass(solver, Sampler)):
            raise TypeError(f"solver must be a sampler name or a Sampler class; got {solver!r}")
        built = solver(self.schedule, num_steps=None, timesteps=self._grid,
                       prediction=self.teacher.prediction, clip_denoised=False)
        if built._uses_noise:
            raise ValueError(f"solver must be a deterministic ODE solver; {solver.__name__} adds "
                             "noise at every step (use ddim, dpm-solver, unipc, deis or pndm)")
        return built

    # ------------------------------------------------------------------ the grid
    @property
    def timesteps(self) -> torch.Tensor:
        """``(N,)`` the levels (timesteps) of the discretised ODE, descending."""
        return self._grid.clone()

    def sampler_timesteps(self, num_steps: int) -> list[int]:
        """``num_steps`` of the levels for multistep sampling: every ``N / num_steps``-th
        from the first when it divides ``N``, else the nearest levels to an even spread."""
        check_int("num_steps", num_steps, 1, self.num_levels)
        picks = torch.linspace(0, self.num_levels, num_steps + 1)[:-1].floor().long()
        return self._grid[picks].tolist()

    def sampler_settings(self, num_steps: int = 1) -> dict[str, Any]:
        """The student's sampler as :class:`ddpm_lib.DiffusionPipeline` records it."""
        return {"name": "consistency", "timesteps": self.sampler_timesteps(num_steps),
                "sigma_data": self.sigma_data, "timestep_scaling": self.timestep_scaling}

    def sampler(self, num_steps: int = 1, *, clip_denoised: bool = True) -> Any:
        """A :class:`ddpm_lib.ConsistencySampler` for the student, ``num_steps`` calls."""
        from ..samplers import ConsistencySampler

        return ConsistencySampler(
            self.schedule, timesteps=self.sampler_timesteps(num_steps),
            prediction=self.prediction, clip_denoised=clip_denoised, sigma_data=self.sigma_data,
            timestep_scaling=self.timestep_scaling)

    # ------------------------------------------------------------------ the function
    def consistency_function(
        self, model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor,
        model_kwargs: Mapping[str, Any],
    ) -> torch.Tensor:
        """``f(x, t)`` ``(B, ...)`` of a network at levels ``t`` ``(B,)`` (``-1``: clean data,
        where ``f(x) = x``)."""
        clean = t < 0
        level = t.clamp(min=0)
        abar = gather(self.schedule.alphas_cumprod, level, x)
        abar = torch.where(clean.reshape(abar.shape), torch.ones_like(abar), abar)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        c_skip, c_out = consistency_coefficients(abar, self.sigma_data, self.timestep_scaling)
        output = prediction_half(model(x, level, **model_kwargs), x, "the student")
        x0 = x0_eps_from_prediction(self.prediction, output.to(x.dtype), x, alpha, sigma)[0]
        value = c_skip * (x / alpha) + c_out * x0
        return torch.where(clean.reshape(abar.shape), x, value)

    @torch.no_grad()
    def solver_step(self, x: torch.Tensor, t: torch.Tensor, model_kwargs: Mapping[str, Any],
                    scales: torch.Tensor | None = None) -> torch.Tensor:
        """``x^`` at the next level: one solver step with the (guided) teacher from ``x`` at
        levels ``t`` ``(B,)`` (each one of :attr:`timesteps`)."""
        self.teacher.to(x.device)
        if self.solver == "heun":
            return self._heun_step(x, t, model_kwargs, scales)
        output = self.teacher.output(x, t, model_kwargs, scales)
        self.solver._step_memory = None  # a fresh start: no history of another batch
        return self.solver.step(output, t, x)

    def _heun_step(self, x: torch.Tensor, t: torch.Tensor, model_kwargs: Mapping[str, Any],
                   scales: torch.Tensor | None) -> torch.Tensor:
        """Heun's step in ``x^ = x / alpha``, ``s = sigma / alpha``: ``d = (x^ - x0) / s``,
        Euler ``x^' = x^ + (s' - s) d`` (= DDIM), then the average slope unless ``s' = 0``."""
        position = self._position_of.to(t.device)[t]
        t_next = self._next.to(t.device)[position]
        alpha, sigma = level_scales(self.schedule, t, x)
        alpha_next, sigma_next = level_scales(self.schedule, t_next, x)
        x0 = self.teacher.x0(x, t, alpha, sigma, model_kwargs, scales)
        slope = (x / alpha - x0) / (sigma / alpha)
        step = sigma_next / alpha_next - sigma / alpha
        euler = x / alpha + step * slope
        x_next = alpha_next * euler
        x0_next = self.teacher.x0(x_next, t_next.clamp(min=0), alpha_next, sigma_next.clamp(
            min=1e-12), model_kwargs, scales)
        slope_next = (euler - x0_next) / (sigma_next / alpha_next).clamp(min=1e-12)
        heun = alpha_next * (x / alpha + step * 0.5 * (slope + slope_next))
        return torch.where((t_next < 0).reshape(alpha.shape), x_next, heun)

    # ------------------------------------------------------------------ the loss
    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor | int | None = None,
        noise: torch.Tensor | None = None,
        reduction: str = "mean",
        generator: torch.Generator | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """The loss of the student ``model`` on clean data ``x0`` ``(B, ...)``: ``t`` ``(B,)``
        uniform in ``[0, T - 1]`` picks the level ``t * N // T`` (drawn with ``noise`` from
        ``generator`` when not given). A scalar, or ``(B,)`` with ``reduction="none"``."""
        from ..training.ema import unwrap_model

        num_timesteps = self.schedule.num_timesteps
        t, noise = draw_t_and_noise(x0, t, noise, num_timesteps, generator)
        if isinstance(model, nn.Module):
            self._student = unwrap_model(model)
            self._make_target(self._student)
        positions = grid_positions(t, num_timesteps, self.num_levels)
        level, next_level = self._grid.to(x0.device)[positions], self._next.to(x0.device)[positions]
        x = self.schedule.q_sample(x0, level, noise=noise)
        scales = draw_scales(self.guidance, x0.shape[0], self.generator, x0.device)
        x_next = self.solver_step(x, level, model_kwargs, scales)
        kwargs = student_kwargs(model_kwargs, scales)
        online = self.consistency_function(model, x, level, kwargs)
        with torch.no_grad():
            target_model = self.target_network if self.target_network is not None else model
            target = self.consistency_function(target_model, x_next, next_level, kwargs)
        return reduce(self._distance(online, target.to(online.dtype)), reduction)

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.distance == "l2":
            return mean_flat((a - b) ** 2)
        if self.distance == "pseudo_huber":
            return pseudo_huber(a, b, self.huber_c)
        assert callable(self.distance)
        value = self.distance(a, b)
        if not isinstance(value, torch.Tensor) or value.shape not in ((a.shape[0],), ()):
            raise ValueError(f"distance must return a (B,) tensor (one value per sample) or a "
                             f"scalar; got {getattr(value, 'shape', type(value).__name__)}")
        return value

    # ------------------------------------------------------------------ the target network
    def _make_target(self, student: nn.Module) -> None:
        if self.target_network is not None:
            return
        target = copy.deepcopy(student).eval().requires_grad_(False)
        if self._pending is not None:
            target.load_state_dict(self._pending)
            self._pending = None
        self.target_network = target

    @torch.no_grad()
    def update(self) -> None:
        """``theta- <- mu theta- + (1 - mu) theta`` (the Trainer calls it after each step)."""
        if self.target_network is None or self._student is None:
            return
        for mine, theirs in zip(self.target_network.parameters(), self._student.parameters()):
            mine.lerp_(theirs.detach().to(mine.dtype), 1.0 - self.target_decay)
        for buffer, source in zip(self.target_network.buffers(), self._student.buffers()):
            buffer.copy_(source)

    def state_dict(self) -> dict[str, Any]:
        """The target network's weights and the guidance generator (saved with checkpoints)."""
        target = (self.target_network.state_dict() if self.target_network is not None
                  else self._pending)
        return {"target_network": target, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        weights = state.get("target_network")
        if weights is None:
            return
        if self.target_network is not None:
            self.target_network.load_state_dict(weights)
        else:
            self._pending = weights

    def __repr__(self) -> str:
        return (f"ConsistencyDistillation(num_levels={self.num_levels}, prediction="
                f"{self.prediction!r}, solver={type(self.solver).__name__}, distance="
                f"{self.distance!r}, target_decay={self.target_decay})")
