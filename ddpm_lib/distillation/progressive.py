"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): one student step = two teacher
DDIM steps.

The teacher samples with deterministic DDIM on a grid of ``2N`` timesteps
``g_0 > g_1 > ... > g_{2N-1}`` (then clean data); the student learns to take the grid of ``N``
``g_0 > g_2 > ...``, one step for two. For a student level ``t = g_{2i}`` with ``t' = g_{2i+1}``
and ``t'' = g_{2i+2}`` (clean data after the last), ``alpha = sqrt(abar)``,
``sigma = sqrt(1 - abar)`` and ``z_t = alpha_t x + sigma_t eps``:

    x^   = teacher's x0 at (z_t, t)            z_t'  = alpha_t' x^  + (sigma_t' / sigma_t) (z_t - alpha_t x^)
    x^'  = teacher's x0 at (z_t', t')          z_t'' = alpha_t'' x^' + (sigma_t'' / sigma_t') (z_t' - alpha_t' x^')
    x~   = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)

``x~`` is the ``x0`` for which one DDIM step of the student from ``z_t`` lands on ``z_t''``,
the teacher's two unclipped steps. The loss is ``w_t ||x~ - x0_student(z_t)||^2`` with
the truncated-SNR weight ``w_t = max(SNR_t, 1)`` (or ``SNR_t + 1``), the paper's
weightings, which stay finite where ``SNR_t -> 0`` (unlike the eps loss).

Guided distillation (Meng et al. 2023, stage one): the teacher's prediction is the guided
``uncond + w (cond - uncond)`` with ``w`` drawn per sample from a range, and the student reads
``w`` as an input (``guidance_scale=`` keyword, see
:class:`ddpm_lib.distillation.GuidanceConditionedUNet`), so one student serves every scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .._checks import check_choice, check_int
from ..schedule import NoiseSchedule, x0_eps_from_prediction
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

__all__ = ["WEIGHTINGS", "ProgressiveDistillation", "two_step_target"]

#: ``"truncated_snr"``: ``max(SNR, 1)``; ``"snr_plus_one"``: ``SNR + 1`` (Salimans & Ho, Sec. 4)
WEIGHTINGS = ("truncated_snr", "snr_plus_one")


def two_step_target(
    z_t: torch.Tensor, x0_first: torch.Tensor, x0_second_fn: Callable[[torch.Tensor], torch.Tensor],
    levels: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The closed-form target ``x~`` of Algorithm 2 (module docstring).

    Args:
        z_t: the student's input ``(B, ...)`` at level ``t``.
        x0_first: the teacher's ``x0`` at ``(z_t, t)``.
        x0_second_fn: the teacher's ``x0`` at level ``t'`` as a function of ``z_t'``.
        levels: ``(alpha, sigma)`` of ``t``, ``t'``, ``t''`` (tensors broadcasting against
            ``z_t``; ``sigma = 0`` is clean data).
    """
    (alpha, sigma), (alpha_mid, sigma_mid), (alpha_next, sigma_next) = levels
    z_mid = alpha_mid * x0_first + (sigma_mid / sigma) * (z_t - alpha * x0_first)
    x0_second = x0_second_fn(z_mid)
    z_next = alpha_next * x0_second + (sigma_next / sigma_mid) * (z_mid - alpha_mid * x0_second)
    ratio = sigma_next / sigma
    return (z_next - ratio * z_t) / (alpha_next - ratio * alpha)


class ProgressiveDistillation:
    """The loss of one round of progressive distillation: ``2N`` teacher steps -> ``N``.

    Called like the library's losses, so the :class:`ddpm_lib.Trainer` trains the student with
    it (``Trainer(student, ProgressiveDistillation(teacher, ...), dataset, ...)``); the driver
    :func:`ddpm_lib.distillation.distill_progressive` runs the rounds ``N -> N/2 -> ... -> 1``.

    Args:
        teacher: the teacher ``teacher(x_t, t, **model_kwargs)`` (frozen here).
        schedule: the forward process of teacher and student.
        student_steps: ``N``, the student's steps; the teacher's grid has ``2N <= T``.
        teacher_prediction: what the teacher predicts (``"eps"``, ``"x0"``, ``"v"``).
        prediction: what the student predicts; default the teacher's. Salimans & Ho use
            ``"v"`` or ``"x0"``: an eps student cannot express ``x0`` at the first step, where
            ``alpha_t`` is near 0.
        spacing: the grid of the teacher's ``2N`` steps (a spacing of
            :data:`ddpm_lib.samplers.SPACINGS`; default ``"trailing"``, which starts at
            ``T - 1``), or give ``teacher_timesteps`` (``2N`` descending timesteps).
        weighting: ``"truncated_snr"`` (``max(SNR_t, 1)``) or ``"snr_plus_one"``.
        guidance_scale: guided distillation: a scale ``w`` or a range ``(w_min, w_max)`` drawn
            uniformly per sample; the student is called with ``guidance_scale=w`` ``(B,)``.
        unconditional_kwargs: the unconditional half of the teacher's guidance (a dict, or a
            callable of the batch size); default: the null class ``y = -1``.
        teacher_reads_guidance: the teacher is a guided student itself (a later round): it
            reads ``guidance_scale=w`` instead of being guided by two calls.
        seed: seeds the drawn guidance scales (their generator is saved with checkpoints).

    A training step: the Trainer's timestep ``t`` picks the student position ``t * N // T``,
    ``z_t = q(x0, eps)`` at that level, the target is :func:`~ddpm_lib.distillation.two_step_target`, and the loss is
    the weighted squared error of the student's ``x0``, one value per sample (mean over
    dimensions). :meth:`sampler` samples the distilled student (DDIM on the ``N`` steps).
    """

    def __init__(
        self,
        teacher: Callable[..., torch.Tensor],
        schedule: NoiseSchedule,
        *,
        student_steps: int,
        teacher_prediction: str = "eps",
        prediction: str | None = None,
        spacing: str = "trailing",
        teacher_timesteps: Sequence[int] | torch.Tensor | None = None,
        weighting: str = "truncated_snr",
        guidance_scale: float | tuple[float, float] | None = None,
        unconditional_kwargs: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
        teacher_reads_guidance: bool = False,
        seed: int = 0,
    ) -> None:
        self.schedule = check_schedule(schedule)
        self.student_steps = check_int("student_steps", student_steps, 1)
        self.teacher = Teacher(teacher, schedule, teacher_prediction, unconditional_kwargs,
                               teacher_reads_guidance)
        self.prediction = check_prediction(
            "prediction", teacher_prediction if prediction is None else prediction)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        self.guidance = check_guidance_range(guidance_scale)
        self.spacing = spacing
        self._grid = level_grid(schedule, 2 * self.student_steps, spacing, teacher_timesteps,
                                "the teacher's grid")
        # the three levels of each student position: t = g_2i, t' = g_2i+1, t'' = g_2i+2
        # (-1: clean data)
        extended = torch.cat([self._grid, torch.tensor([-1])])
        self._levels = torch.stack([extended[0:-1:2], extended[1::2], extended[2::2]], dim=1)
        self.generator = seeded_generator(seed)

    # ------------------------------------------------------------------ the grids
    @property
    def teacher_timesteps(self) -> torch.Tensor:
        """``(2N,)`` the teacher's DDIM timesteps, descending."""
        return self._grid.clone()

    @property
    def student_timesteps(self) -> torch.Tensor:
        """``(N,)`` the student's timesteps: every other teacher timestep, from the first."""
        return self._grid[::2].clone()

    def sampler_settings(self) -> dict[str, Any]:
        """The student's sampler as :class:`ddpm_lib.DiffusionPipeline` records it."""
        return {"name": "ddim", "timesteps": self.student_timesteps.tolist(), "eta": 0.0}

    def sampler(self, *, clip_denoised: bool = True) -> Any:
        """A :class:`ddpm_lib.DDIMSampler` on the student's ``N`` timesteps (``eta = 0``)."""
        from ..samplers import DDIMSampler

        return DDIMSampler(self.schedule, timesteps=self.student_timesteps,
                           prediction=self.prediction, clip_denoised=clip_denoised)

    # ------------------------------------------------------------------ the loss
    @torch.no_grad()
    def target(
        self, z_t: torch.Tensor, positions: torch.Tensor, model_kwargs: Mapping[str, Any],
        scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x~`` ``(B, ...)``, the target of the student at ``z_t`` and grid positions
        ``positions`` ``(B,)`` (two unclipped teacher DDIM steps, in closed form)."""
        self.teacher.to(z_t.device)
        dtype = torch.promote_types(z_t.dtype, torch.float32)
        z = z_t.to(dtype)
        levels = self._levels.to(z.device)[positions]  # (B, 3)
        scales_of = [level_scales(self.schedule, levels[:, k], z) for k in range(3)]
        t, t_mid = levels[:, 0], levels[:, 1]
        (alpha, sigma), (alpha_mid, sigma_mid), _ = scales_of
        x0_first = self.teacher.x0(z, t, alpha, sigma, model_kwargs, scales)

        def second(z_mid: torch.Tensor) -> torch.Tensor:
            return self.teacher.x0(z_mid, t_mid, alpha_mid, sigma_mid, model_kwargs, scales)

        return two_step_target(z, x0_first, second, scales_of)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``w_t`` ``(B,)`` float64 of timesteps ``t``: ``max(SNR, 1)`` or ``SNR + 1``."""
        abar = self.schedule.alphas_cumprod.to(t.device)[t]
        snr = abar / (1 - abar)
        return snr.clamp(min=1.0) if self.weighting == "truncated_snr" else snr + 1.0

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
        """The distillation loss of the student ``model`` on clean data ``x0`` ``(B, ...)``.

        ``t`` ``(B,)`` uniform in ``[0, T - 1]`` picks the student positions ``t * N // T``;
        ``t`` and ``noise`` are drawn from ``generator`` when not given (the Trainer gives
        them). Returns a scalar, or ``(B,)`` with ``reduction="none"``.
        """
        num_timesteps = self.schedule.num_timesteps
        t, noise = draw_t_and_noise(x0, t, noise, num_timesteps, generator)
        positions = grid_positions(t, num_timesteps, self.student_steps)
        student_t = self._levels.to(x0.device)[positions, 0]
        z_t = self.schedule.q_sample(x0, student_t, noise=noise)
        scales = draw_scales(self.guidance, x0.shape[0], self.generator, x0.device)
        target = self.target(z_t, positions, model_kwargs, scales)
        output = prediction_half(model(z_t, student_t, **student_kwargs(model_kwargs, scales)),
                                 z_t, "the student")
        alpha, sigma = level_scales(self.schedule, student_t, target)
        x0_student = x0_eps_from_prediction(self.prediction, output.to(target.dtype), z_t.to(
            target.dtype), alpha, sigma)[0]
        per_sample = mean_flat((target - x0_student) ** 2) * self.weight(student_t).to(
            target.dtype)
        return reduce(per_sample, reduction)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The generator of the guidance scales (the Trainer saves it with checkpoints)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (f"ProgressiveDistillation(student_steps={self.student_steps}, prediction="
                f"{self.prediction!r}, weighting={self.weighting!r}, guidance={self.guidance})")
