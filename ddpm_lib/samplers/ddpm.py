"""Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), optionally respaced (Improved DDPM).

Each step draws ``x_{t-1} ~ p(x_{t-1} | x_t) = N(mu-tilde(x_t, x0_hat), sigma_t^2 I)``, the
model's reverse Gaussian of :meth:`NoiseSchedule.p_mean_variance` (eqs. 1, 7, 11), with no
noise on the last step. With ``num_steps < T`` the chain runs on a subsequence of timesteps
``t_1 < ... < t_N`` with the betas recomputed for it (Improved DDPM, Sec. 4):

    abar'_i = abar_{t_i},    beta'_i = 1 - abar'_i / abar'_{i-1}   (abar'_0 = 1)

so the respaced chain is a DDPM in its own right: its posterior variances and the range of a
learned variance (``learned_range``) come from the new betas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_choice
from .._deprecation import keyword_only_after
from ..schedule import VARIANCE_TYPES, NoiseSchedule
from .analytic_variance import AnalyticVariance, analytic_table
from .base import SPACINGS, Sampler, _DeviceTables, check_num_steps


def respace(schedule: NoiseSchedule, timesteps: torch.Tensor) -> NoiseSchedule:
    """The schedule of the sub-chain on ``timesteps`` (any order), Improved DDPM Sec. 4.

    Returns a :class:`NoiseSchedule` of ``len(timesteps)`` steps whose ``alphas_cumprod`` are
    those of ``schedule`` at the sorted timesteps; its index ``i`` is the ``i``-th smallest.
    """
    abar = schedule.alphas_cumprod.cpu()[timesteps.sort().values]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    return NoiseSchedule(1.0 - abar / abar_prev)


class DDPMSampler(Sampler):
    """Ancestral sampling with the model's reverse Gaussian, ``T`` or ``num_steps`` model calls.

    Args:
        schedule: the forward process the model was trained with.
        variance: ``"fixed_small"`` (beta-tilde_t), ``"fixed_large"`` (beta_t), ``"learned"``
            (the model's second half is log sigma^2) or ``"learned_range"`` (Improved DDPM
            eq. 15); the learned ones need a model output with ``2C`` channels. Or an
            :class:`~ddpm_lib.samplers.analytic_variance.AnalyticVariance` table of the model:
            Analytic-DPM's optimal variance of each (respaced) step.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]`` before forming the mean.
        num_steps: ``None`` for all ``T`` steps; fewer gives respaced DDPM.
        spacing: how the respaced timesteps are chosen (``"linspace"``: evenly, both ends, as
            Improved DDPM; ``"trailing"``; ``"leading"``; ``"logsnr"``, ``"karras"``,
            ``"quadratic"``), see ``ddpm_lib.samplers.grids``.
        dynamic_threshold: Imagen's percentile thresholding of ``x0`` instead of clipping.
        timesteps: explicit descending timesteps of the respaced chain instead of a grid.
        use_clipped_model_output: accepted for a uniform interface; the posterior mean reads
            only the (clipped) ``x0`` and ``x_t``, so DDPM is consistent either way.
    """

    _uses_noise = True
    _reads_eps = False  # mu-tilde(x_t, x0): eq. 7 reads x0 and x_t only

    @keyword_only_after((
        "variance", "prediction", "clip_denoised", "num_steps", "spacing", "dynamic_threshold",
        "timesteps"
    ))
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int | None = None,
        *,
        variance: str | AnalyticVariance = "fixed_small",
        prediction: str = "eps",
        clip_denoised: bool = True,
        spacing: str = "linspace",
        dynamic_threshold: float | None = None,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        use_clipped_model_output: bool = True,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        self.analytic = analytic_table(variance, schedule)
        if self.analytic is not None:
            variance = "fixed_small"  # the mean; the variance comes from the table
        self.variance = check_choice("variance", variance, VARIANCE_TYPES)
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        if num_steps is None and timesteps is None:
            num_steps = schedule.num_timesteps
        if num_steps is not None:
            num_steps = check_num_steps(num_steps, schedule.num_timesteps)
        super().__init__(
            schedule, num_steps=num_steps, prediction=prediction, clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold,
            learn_sigma=variance in ("learned", "learned_range"), timesteps=timesteps,
            use_clipped_model_output=use_clipped_model_output,
        )
        full = self._timestep_list == list(range(schedule.num_timesteps - 1, -1, -1))
        self.respaced_schedule = schedule if full else respace(schedule, self._timesteps)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, variance={self.variance!r}, spacing={self.spacing!r})"

    def _make_timesteps(self) -> torch.Tensor:
        num_timesteps = self.schedule.num_timesteps
        if self.num_steps == num_timesteps:
            return torch.arange(num_timesteps - 1, -1, -1)
        return super()._make_timesteps()

    def _coefficient_table(self) -> torch.Tensor:
        # the update reads the respaced schedule's own tables through p_mean_variance
        if self.analytic is not None:  # one column: Analytic-DPM's noise std of each step
            variances = self.analytic.step_variances(
                self._timesteps, 1.0, 1.0 if self.clip_denoised else None, self.clip_denoised
            )
            return variances.sqrt()[:, None]
        return torch.zeros(self.num_steps, 0, dtype=torch.float64)

    def _update_schedule(self) -> NoiseSchedule:
        return self.respaced_schedule

    def _update(
        self,
        coefficients: Sequence[Any],
        index: int | torch.Tensor,
        tables: _DeviceTables,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None,
        state: tuple[torch.Tensor, ...],
        continuing: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        schedule = tables.schedule
        # position i (0 = noisiest) is index N - 1 - i of the respaced chain
        t = self.num_steps - 1 - index
        thresholding = self.dynamic_threshold is not None
        reverse = schedule.p_mean_variance(
            model_output, x_t, t, prediction=self.prediction, variance=self.variance,
            clip_denoised=self.clip_denoised and not thresholding,
        )
        x0, mean = reverse.x0, reverse.mean
        if thresholding:
            x0 = self._process_x0(x0)
            mean = schedule.q_posterior(x0, x_t, t)[0]
        if noise is None:
            return mean, x0, state
        if self.analytic is not None:  # the table's std is 0 on the last step
            return mean + coefficients[0] * noise, x0, state
        nonzero: float | torch.Tensor
        if isinstance(t, int):
            nonzero = float(t > 0)
        else:  # no noise on the last step; a mask, not `if t > 0`, keeps the loop sync-free
            nonzero = (t > 0).to(x_t.dtype).reshape(-1, *((1,) * (x_t.ndim - 1)))
        return mean + nonzero * torch.exp(0.5 * reverse.log_variance) * noise, x0, state
