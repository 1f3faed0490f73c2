"""DDIM (Song, Meng & Ermon 2021): few-step sampling, deterministic at ``eta = 0``, and inversion.

One step from timestep ``t`` to the next timestep ``s`` of the list (eq. 12):

    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)      (eq. 16)

where ``x0`` and ``eps`` are the model's estimates at ``(x_t, t)``. When ``x0`` is clipped (or
thresholded), ``eps`` is the one of the clipped ``x0`` at ``x_t``, ``eps = (x_t - sqrt(abar_t)
x0) / sqrt(1 - abar_t)``, so that the two still describe ``x_t`` (improved-diffusion's rule;
``use_clipped_model_output=False`` keeps the model's ``eps``, diffusers' default). After the
last timestep the step lands on ``abar = 1``: the clean sample ``x0``. ``eta = 1`` is the DDPM
posterior (fixed_small variance) on the subsequence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .._checks import check_bool, check_choice, check_floating, check_real
from .._deprecation import keyword_only_after
from ..schedule import NoiseSchedule, linear_combination, x0_eps_from_prediction
from .analytic_variance import AnalyticVariance, analytic_table
from .base import SPACINGS, Sampler
from .loop import RunOptions, RunSpec, SampleTrajectory, _DeviceTables


def ddim_update(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_next: Any,
    direction: Any,
    noise_std: Any,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Eq. 12: ``alpha_next x0 + direction eps + noise_std z``.

    ``alpha_next = sqrt(abar_s)``, ``direction = sqrt(1 - abar_s - sigma^2)`` and
    ``noise_std = sigma`` (floats or tensors broadcasting against ``x0``); no noise term when
    ``noise`` is ``None``.
    """
    x_next = linear_combination(alpha_next, x0, direction, eps)
    if noise is not None:
        x_next = linear_combination(1.0, x_next, noise_std, noise)
    return x_next


def ddim_coefficients(
    alphas_cumprod_from: torch.Tensor, alphas_cumprod_to: torch.Tensor, eta: float
) -> torch.Tensor:
    """The per-step constants of :func:`ddim_update` for steps ``abar_t -> abar_s``, float64.

    Returns ``(N, 5)``: ``alpha_t, sigma_t, alpha_s, direction, noise_std`` with
    ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)`` and ``noise_std`` of eq. 16.
    """
    abar_t, abar_s = alphas_cumprod_from.double(), alphas_cumprod_to.double()
    noise_var = (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)  # beta-tilde of the jump
    noise_std = eta * noise_var.clamp(min=0).sqrt()
    direction = (1 - abar_s - noise_std**2).clamp(min=0).sqrt()
    return torch.stack(
        [abar_t.sqrt(), (1 - abar_t).sqrt(), abar_s.sqrt(), direction, noise_std], dim=1
    )


class DDIMSampler(Sampler):
    """Denoising Diffusion Implicit Models: ``num_steps`` model calls, ``eta`` in ``[0, 1]``.

    Args:
        schedule: the forward process the model was trained with.
        num_steps: number of steps (model calls), ``1 <= num_steps <= T``; default 50.
        eta: noise of each step relative to DDPM's (eq. 16): 0 deterministic, 1 DDPM-like.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]``; the direction term then uses
            the ``eps`` of the clamped ``x0`` at ``x_t`` (see ``use_clipped_model_output``).
        spacing: ``"trailing"`` (default; starts at ``T - 1``), ``"leading"`` or
            ``"linspace"``: the timesteps of diffusers' ``DDIMScheduler`` for that spacing;
            or a grid of ``ddpm_lib.samplers.grids`` (``"logsnr"``, ``"karras"``,
            ``"quadratic"``).
        dynamic_threshold, learn_sigma, timesteps: see :class:`~ddpm_lib.samplers.base.Sampler`.
        use_clipped_model_output: ``True`` (default): with clipping or thresholding, eq. 12
            reads the ``eps`` re-derived from the clamped ``x0`` and ``x_t``; ``False``: the
            model's ``eps`` (diffusers' ``DDIMScheduler`` default, which falls apart under
            strong classifier-free guidance). See :class:`~ddpm_lib.samplers.base.Sampler`.
        variance: an :class:`~ddpm_lib.samplers.analytic_variance.AnalyticVariance` table of
            the model: each step's noise is Analytic-DPM's optimal one for this ``eta`` (with
            ``eta = 0``, Analytic-DDIM: the direction of eq. 12 with ``sigma = 0`` plus the
            optimal noise); ``None`` for eq. 16's.
        set_alpha_to_one: ``True`` (default): the last step lands on ``abar = 1``, the clean
            sample; ``False``: on ``abar_0``, the level of ``t = 0`` (diffusers'
            ``set_alpha_to_one=False``, the setting of Stable Diffusion's scheduler configs).

    Each step goes to the next timestep of :attr:`timesteps` and the last one to ``abar = 1``,
    so with ``eta = 0`` the trajectory is diffusers' ``DDIMScheduler`` with
    ``set_alpha_to_one=True`` (with ``set_alpha_to_one=False`` here, its ``False``).
    (diffusers steps to ``t - T // N``, which is the next timestep only for "leading", and for
    "trailing" when ``N`` divides ``T``.)
    """

    eta: float
    spacing: str

    @keyword_only_after((
        "num_steps", "eta", "prediction", "clip_denoised", "spacing", "dynamic_threshold",
        "learn_sigma", "timesteps", "variance"
    ))
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int | None = None,
        *,
        eta: float = 0.0,
        prediction: str = "eps",
        clip_denoised: bool = True,
        spacing: str = "trailing",
        dynamic_threshold: float | None = None,
        learn_sigma: bool = False,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        variance: AnalyticVariance | None = None,
        use_clipped_model_output: bool = True,
        set_alpha_to_one: bool = True,
    ) -> None:
        self.set_alpha_to_one = check_bool("set_alpha_to_one", set_alpha_to_one)
        self.analytic = analytic_table(variance, schedule, allow_strings=False)
        self.eta = float(check_real("eta", eta, 0, 1))
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self._uses_noise = self.eta > 0 or self.analytic is not None
        super().__init__(
            schedule, num_steps=num_steps, prediction=prediction, clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold, learn_sigma=learn_sigma, timesteps=timesteps,
            use_clipped_model_output=use_clipped_model_output,
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, eta={self.eta}, spacing={self.spacing!r})"

    def _coefficient_table(self) -> torch.Tensor:
        abar = self.schedule.alphas_cumprod.cpu()[self._timesteps]
        final = abar.new_ones(1) if self.set_alpha_to_one else self.schedule.alphas_cumprod[:1]
        abar_next = torch.cat([abar[1:], final.cpu().to(abar.dtype)])  # the last step's level
        table = ddim_coefficients(abar, abar_next, self.eta)
        if self.analytic is not None:  # the noise std becomes Analytic-DPM's optimal one
            variances = self.analytic.step_variances(
                self._timesteps, self.eta, 1.0 if self.clip_denoised else None, self.clip_denoised
            )
            table[:, 4] = variances.sqrt()
        return table

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
        alpha, sigma, alpha_next, direction, noise_std = coefficients
        x0, eps = self._clamped_x0_eps(model_output, x_t, alpha, sigma)
        return ddim_update(x0, eps, alpha_next, direction, noise_std, noise), x0, state

    @torch.no_grad()
    def invert(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        *,
        model_kwargs: Mapping[str, Any] | None = None,
        guidance_scale: float | None = None,
        unconditional_kwargs: Mapping[str, Any] | None = None,
        progress: bool = False,
        return_trajectory: bool = False,
        compile: bool | str = "auto",
    ) -> torch.Tensor | tuple[torch.Tensor, SampleTrajectory]:
        """Deterministic DDIM encoding ``x0 -> x_T``: the eta = 0 steps run backwards.

        The timesteps are visited in ascending order; the step to timestep ``s`` calls the
        model at ``(x, s)`` and applies eq. 12 from the current level (``abar = 1`` at the
        start) to ``abar_s`` with ``eta = 0`` (as diffusers' ``DDIMInverseScheduler``).
        :meth:`sample` with ``x_T = invert(model, x0)``, ``eta = 0`` and the same timesteps
        reconstructs ``x0`` up to the discretisation error (exactly when ``eps`` does not
        depend on ``x``).

        Args:
            x0: clean samples ``(B, ...)``.

        The other arguments are those of :meth:`sample`.

        Returns:
            ``x_T`` shaped like ``x0`` (and the trajectory when asked).
        """
        check_floating("x0", x0)
        inversion = getattr(self, "_inversion", None)
        if inversion is None:
            inversion = _DDIMInversion(self)
            self._inversion = inversion
        options = RunOptions.from_arguments(locals())  # no generator: deterministic
        return inversion._run(RunSpec(model, x0, options))


class _DDIMInversion(Sampler):
    """The reverse of a :class:`DDIMSampler` at ``eta = 0``, run by :meth:`DDIMSampler.invert`.

    Position ``i`` calls the model at the ``i``-th smallest timestep ``s`` and moves from the
    previous level ``abar_r`` (1 at the start) to ``abar_s``. The model output is read at its
    own timestep (``eps`` from its prediction at ``s``); ``x0`` is then the level-``r`` estimate
    ``(x - sqrt(1 - abar_r) eps) / sqrt(abar_r)``.
    """

    def __init__(self, sampler: DDIMSampler) -> None:
        self._forward = sampler
        super().__init__(
            sampler.schedule, num_steps=sampler.num_steps, prediction=sampler.prediction,
            clip_denoised=False, learn_sigma=sampler.learn_sigma,
        )

    def _make_timesteps(self) -> torch.Tensor:
        return self._forward._timesteps.flip(0)  # ascending

    def _coefficient_table(self) -> torch.Tensor:
        abar_to = self.schedule.alphas_cumprod.cpu()[self._timesteps]
        abar_from = torch.cat([abar_to.new_ones(1), abar_to[:-1]])
        model_level = torch.stack([abar_to.sqrt(), (1 - abar_to).sqrt()], dim=1)
        return torch.cat([model_level, ddim_coefficients(abar_from, abar_to, 0.0)], dim=1)

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
        alpha_model, sigma_model, alpha, sigma, alpha_next, direction, noise_std = coefficients
        _, eps = self._split(model_output, x_t, alpha_model, sigma_model)
        x0, _ = x0_eps_from_prediction("eps", eps, x_t, alpha, sigma)
        return ddim_update(x0, eps, alpha_next, direction, noise_std, None), x0, state
