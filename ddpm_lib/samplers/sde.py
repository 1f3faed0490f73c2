r"""The score-SDE view of a discrete DDPM (Song et al. 2021) and its samplers.

**Continuous time.** A schedule of ``T`` steps becomes the variance-preserving SDE::

    dx = -1/2 beta(s) x ds + sqrt(beta(s)) dW,        s in [0, 1],

whose marginal at ``s_t = (t + 1) / T`` is *exactly* the discrete ``q(x_t | x0)``: ``log
abar(s)`` interpolates ``log abar_t`` linearly between the points ``(s_t, log abar_t)`` (and
``(0, 0)``), so ``beta(s) = -d log abar / ds = -T log(1 - beta_t)`` on ``(s_{t-1}, s_t]``,
which is ``T beta_t`` to first order (Song et al.'s ``beta(t_i) ~ T beta_i``; for the linear
schedule ``beta(s)`` runs from 0.1 to 20). :class:`VPSDE` holds this map. The model is only
ever called at integer timesteps: at a grid level ``t`` exactly, and at a continuous time ``s``
(the adaptive solver) at the nearest timestep ``round(s T - 1)``.

**The reverse SDE** ``dx = [-1/2 beta x - beta grad log q_s(x)] ds + sqrt(beta) dW`` (run from
``s = 1`` to 0) uses the score ``grad log q = -eps / sigma`` (:meth:`NoiseSchedule.score
<ddpm_lib.schedule.NoiseSchedule.score>`). In the time ``u = int beta ds`` its noise
coefficient is 1, so a step between levels ``abar_a -> abar_b`` (``abar_b > abar_a``) has length
``B = log(abar_b / abar_a)`` and Euler-Maruyama reads::

    x_b = x_a + B (x_a / 2 + score(x_a)) + sqrt(B) z.

**The probability-flow ODE** ``dx = [-1/2 beta x - 1/2 beta score] ds`` is, in Karras et al.'s
(2022) variables ``x_hat = x / alpha`` and ``sigma_hat = sigma / alpha``, simply
``d x_hat / d sigma_hat = eps``; Euler on it is DDIM, and Heun's method (their Algorithm 1)
is second order.

:class:`SDESampler` implements the four methods on the one loop of
:class:`~ddpm_lib.samplers.base.Sampler`: every position of the loop is one model call, and
the update is a small state machine over the call's role (predictor, corrector, Heun's second
evaluation, adaptive trial). The last call of every method returns the model's (clipped)
estimate of ``x0`` at the lowest level (Tweedie's denoising step).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .._checks import check_choice, check_int, check_real
from .._deprecation import keyword_only_after
from ..schedule import NoiseSchedule
from .base import Sampler, _DeviceTables
from .grids import SPACINGS, check_timestep_list, grid_timesteps

METHODS = ("euler_maruyama", "predictor_corrector", "heun", "adaptive")


class VPSDE:
    """The variance-preserving SDE whose marginals at ``s_t = (t + 1) / T`` are the schedule's.

    Args:
        schedule: the discrete forward process.

    All methods take continuous times ``s`` (floats or float64 tensors) in ``[0, 1]``.
    """

    def __init__(self, schedule: NoiseSchedule) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        self.schedule = schedule
        self.num_timesteps = schedule.num_timesteps
        abar = schedule.alphas_cumprod.cpu().double()
        #: ``(T + 1,)`` log abar at ``s = 0, 1/T, ..., 1``
        self._log_abar = torch.cat([abar.new_zeros(1), abar.log()])
        #: ``(T,)`` beta(s) on each interval ``((t) / T, (t + 1) / T]``
        self._beta = -self.num_timesteps * torch.log1p(-schedule.betas.cpu().double())

    def time(self, t: int | torch.Tensor) -> torch.Tensor:
        """The continuous time ``s = (t + 1) / T`` of timestep ``t``."""
        return (torch.as_tensor(t, dtype=torch.float64) + 1.0) / self.num_timesteps

    def timestep(self, s: float | torch.Tensor) -> torch.Tensor:
        """The nearest discrete timestep ``round(s T - 1)``, in ``[0, T - 1]`` (long)."""
        s = torch.as_tensor(s, dtype=torch.float64)
        return (s * self.num_timesteps - 1.0).round().clamp(0, self.num_timesteps - 1).long()

    def log_alphas_cumprod(self, s: float | torch.Tensor) -> torch.Tensor:
        """``log abar(s)``: piecewise linear through ``(s_t, log abar_t)`` and ``(0, 0)``."""
        s = torch.as_tensor(s, dtype=torch.float64).clamp(0.0, 1.0)
        position = s * self.num_timesteps
        left = position.floor().long().clamp(max=self.num_timesteps - 1)
        fraction = position - left
        return torch.lerp(self._log_abar[left], self._log_abar[left + 1], fraction)

    def beta(self, s: float | torch.Tensor) -> torch.Tensor:
        """``beta(s) = -d log abar / ds`` (piecewise constant, ``-T log(1 - beta_t)``)."""
        s = torch.as_tensor(s, dtype=torch.float64)
        interval = (s * self.num_timesteps).ceil().long().clamp(1, self.num_timesteps) - 1
        return self._beta[interval]

    def drift(self, x: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
        """The forward drift ``f(x, s) = -1/2 beta(s) x``."""
        return -0.5 * _like(self.beta(s), x) * x

    def diffusion(self, s: float | torch.Tensor) -> torch.Tensor:
        """The forward diffusion coefficient ``g(s) = sqrt(beta(s))``."""
        return self.beta(s).sqrt()

    def marginal(self, s: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha(s), sigma(s))``: ``x_s = alpha x0 + sigma eps`` under the SDE."""
        abar = self.log_alphas_cumprod(s).exp()
        return abar.sqrt(), (1.0 - abar).sqrt()

    def reverse_drift(
        self, x: torch.Tensor, s: float | torch.Tensor, score: torch.Tensor,
        probability_flow: bool = False,
    ) -> torch.Tensor:
        """``f - g^2 score`` (reverse SDE) or ``f - g^2 score / 2`` (probability-flow ODE)."""
        weight = 0.5 if probability_flow else 1.0
        return self.drift(x, s) - weight * _like(self.beta(s), x) * score


def _like(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    value = value.to(device=x.device, dtype=x.dtype)
    return value.reshape(*value.shape, *((1,) * (x.ndim - value.ndim))) if value.ndim else value


class _AdaptiveRun:
    """The bookkeeping of one adaptive run (python numbers; the adaptive loop is eager)."""

    def __init__(self, x: torch.Tensor, start: float, step: float) -> None:
        self.s = start  # time reached (accepted)
        self.h = step  # current step size
        self.phase = 0  # 0: first evaluation of a trial, 1: second, 2: final denoising call
        self.calls = 0
        self.accepted = 0
        self.rejected = 0
        self.done = False
        self.x = x  # the sample at time s
        self.x_proposal_prev = x  # x' of the last accepted step (the paper's x'_prev)
        self.first: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def evaluation_time(self) -> float:
        return self.s - self.h if self.phase == 1 else self.s


class SDESampler(Sampler):
    """Samplers of the score-SDE view: reverse SDE, predictor-corrector, PF-ODE Heun, adaptive.

    Args:
        schedule: the forward process the model was trained with.
        num_steps: levels of the grid (``"euler_maruyama"``, ``"predictor_corrector"``,
            ``"heun"``); for ``"adaptive"`` the first trial step is ``1 / num_steps``.
        method:
            * ``"euler_maruyama"``: the reverse SDE, one model call per level.
            * ``"predictor_corrector"``: Song et al. (2021) Algorithm 2 for the VP SDE: the
              reverse-diffusion predictor ``x <- (2 - sqrt(1 - beta)) x + beta score +
              sqrt(beta) z`` (``beta`` of the grid's step), then ``corrector_steps`` Langevin
              steps ``x <- x + e score + sqrt(2 e) z`` at the new level with
              ``e = 2 alpha_t (snr ||z|| / ||score||)^2`` (norms averaged over the batch, as in
              Song et al.'s code). ``1 + (N - 1)(corrector_steps + 1)`` model calls.
            * ``"heun"``: the probability-flow ODE with Heun's method (Karras et al. 2022,
              Algorithm 1): ``2 N - 1`` model calls, the last step to ``sigma = 0`` is Euler.
            * ``"adaptive"``: Jolicoeur-Martineau et al. (2021) Algorithm 1: an Euler-Maruyama
              trial ``x'`` and an improved-Euler ``x''`` sharing the noise; the error
              ``||(x' - x'') / delta|| / sqrt(d)`` with ``delta = max(atol, rtol max(|x'|,
              |x'_prev|))`` (per sample, the largest over the batch) accepts the step when
              ``<= 1`` (then ``x = x''``); the next step is ``min(s, safety h E^-exponent)``.
              The model calls are counted in the trajectory
              (:attr:`SampleTrajectory.num_model_calls
              <ddpm_lib.samplers.SampleTrajectory.num_model_calls>`).
        spacing: the grid of levels (``ddpm_lib.samplers.grids``); ``"linspace"`` (uniform
            in ``t``, from ``T - 1`` to 0, as Song et al.'s uniform grid in ``s``) by default.
        timesteps: an explicit strictly descending grid of levels instead of ``num_steps``.
        snr, corrector_steps: the Langevin corrector's signal-to-noise ratio (0.16, Song et
            al.'s for VP) and number of steps per level.
        atol, rtol: the adaptive solver's tolerances (positive; defaults as in the paper for
            images in ``[-1, 1]``: ``2/256`` and ``0.05``).
        safety, exponent: the step-size update ``h <- safety h E^-exponent`` (0.9, 0.9).
        min_step: the smallest step (in ``s``) before the adaptive solver gives up.
        max_model_calls: the adaptive solver gives up after this many model calls.
        prediction, clip_denoised, dynamic_threshold, learn_sigma: see
            :class:`~ddpm_lib.samplers.base.Sampler`. Clipping acts on ``x0``; the score is
            then recomputed from it (``-eps / sigma`` with the ``eps`` of the clipped ``x0``).
        use_clipped_model_output: ``False`` keeps the model's ``eps`` in the score even when
            ``x0`` is clipped (diffusers-style; not recommended), see
            :class:`~ddpm_lib.samplers.base.Sampler`.

    Raises:
        ValueError: for an unknown method, a bad grid, non-positive tolerances or step
            parameters.
        RuntimeError: (adaptive) when the step size falls below ``min_step`` or
            ``max_model_calls`` is reached; the message gives the step size and time reached.

    :attr:`timesteps` lists the model timestep of every call of a run (a level appears once per
    call made there); :attr:`grid` the distinct levels. :meth:`step`, :meth:`img2img` and
    :meth:`inpaint` need one call per level: ``method="euler_maruyama"`` (the capability flags
    ``supports_step``, ``supports_img2img``, ``supports_inpaint`` say so per instance);
    ``method="adaptive"`` decides its steps on the host and never compiles
    (``supports_compile``).
    """

    method: str
    spacing: str
    snr: float
    corrector_steps: int
    atol: float
    rtol: float
    safety: float
    exponent: float
    min_step: float
    max_model_calls: int
    sde: VPSDE
    _grid: torch.Tensor | None
    _levels: torch.Tensor

    @keyword_only_after((
        "num_steps", "method"
    ))
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int = 100,
        *,
        method: str = "euler_maruyama",
        spacing: str = "linspace",
        timesteps: Sequence[int] | torch.Tensor | None = None,
        snr: float = 0.16,
        corrector_steps: int = 1,
        atol: float = 2.0 / 256,
        rtol: float = 0.05,
        safety: float = 0.9,
        exponent: float = 0.9,
        min_step: float = 1e-5,
        max_model_calls: int = 10_000,
        prediction: str = "eps",
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
        learn_sigma: bool = False,
        use_clipped_model_output: bool = True,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        self.method = check_choice("method", method, METHODS)
        one_call_per_level = self.method == "euler_maruyama"
        self.supports_step = self.supports_img2img = self.supports_inpaint = one_call_per_level
        self.supports_compile = self.method != "adaptive"
        self.snr = _positive("snr", snr, allow_zero=True)
        self.corrector_steps = check_int("corrector_steps", corrector_steps, 0)
        self.atol = _positive("atol", atol)
        self.rtol = _positive("rtol", rtol)
        self.safety = _positive("safety", safety)
        self.exponent = _positive("exponent", exponent)
        self.min_step = _positive("min_step", min_step)
        self.max_model_calls = check_int("max_model_calls", max_model_calls, 2)
        self.sde = VPSDE(schedule)
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self._grid = None if timesteps is None else check_timestep_list(
            timesteps, schedule.num_timesteps
        )
        if self._grid is not None:
            num_steps = len(self._grid)
        self._uses_noise = method != "heun"
        super().__init__(
            schedule, num_steps=num_steps, prediction=prediction, clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold, learn_sigma=learn_sigma,
            use_clipped_model_output=use_clipped_model_output,
        )

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, method={self.method!r}, spacing={self.spacing!r})"

    @property
    def grid(self) -> torch.Tensor:
        """``(N,)`` long tensor: the distinct levels of the grid, descending."""
        return self._levels.clone()

    # ------------------------------------------------------------------ timesteps and tables
    def _make_timesteps(self) -> torch.Tensor:
        num_timesteps = self.schedule.num_timesteps
        if self._grid is not None:
            levels = self._grid
        elif self.method == "adaptive":
            levels = torch.tensor([num_timesteps - 1])
        else:
            levels = grid_timesteps(self.schedule.alphas_cumprod, self.num_steps, self.spacing)
        self._levels = levels
        if self.method == "predictor_corrector":
            # the predictor at level 0; then at each later level the correctors and a predictor
            calls = [levels[:1]] + [level.repeat(self.corrector_steps + 1) for level in levels[1:]]
            return torch.cat(calls)
        if self.method == "heun":
            return torch.cat([levels[:1], levels[1:].repeat_interleave(2)])
        return levels.clone()

    def _coefficient_table(self) -> torch.Tensor:
        abar_all = self.schedule.alphas_cumprod.cpu().double()
        abar = abar_all[self._timesteps]  # (P,) level of each call
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        if self.method == "adaptive":
            return torch.stack([alpha, sigma], dim=1)
        levels = self._levels.tolist()
        level_abar = abar_all[self._levels]
        next_abar = torch.cat([level_abar[1:], level_abar.new_ones(1)])  # clean after the last
        rows = []
        # position -> (role, level index k); a step from level k goes to level k + 1
        roles = self._roles(len(levels))
        for position, (role, k) in enumerate(roles):
            a, b = float(level_abar[k]), float(next_abar[k])
            last = float(k == len(levels) - 1)
            if self.method == "euler_maruyama":
                # B = log(abar_{k+1} / abar_k): the step's length in u = int beta ds
                rows.append([0.0, last, math.log(b / a), 0.0, 0.0, 0.0])
            elif self.method == "predictor_corrector":
                beta = 1.0 - a / b  # the grid step's beta, as the discrete chain's
                step_alpha = float(self.schedule.alphas.cpu()[levels[k]])
                rows.append([float(role == "corrector"), last, 2.0 - math.sqrt(1.0 - beta), beta,
                             math.sqrt(beta), step_alpha])
            else:  # heun, in x_hat = x / alpha, sigma_hat = sigma / alpha
                sigma_hat = math.sqrt((1 - a) / a)
                if role == "heun_second":  # the step into level k from level k - 1
                    previous = float(level_abar[k - 1])
                    h = sigma_hat - math.sqrt((1 - previous) / previous)
                    rows.append([1.0, 0.0, h, math.sqrt(a), 0.0, 0.0])
                else:
                    next_sigma_hat = math.sqrt((1 - b) / b) if b < 1 else 0.0
                    rows.append([0.0, last, next_sigma_hat - sigma_hat, math.sqrt(b), 0.0, 0.0])
        table = torch.tensor(rows, dtype=torch.float64).reshape(len(roles), 6)
        return torch.cat([torch.stack([alpha, sigma], dim=1), table], dim=1)

    def _roles(self, num_levels: int) -> list[tuple[str, int]]:
        """The role and level index of every call of a run."""
        if self.method == "predictor_corrector":
            roles = [("predictor", 0)]
            for k in range(1, num_levels):
                roles += [("corrector", k)] * self.corrector_steps + [("predictor", k)]
            return roles
        if self.method == "heun":
            roles = [("heun_first", 0)]
            for k in range(1, num_levels):
                roles += [("heun_second", k), ("heun_first", k)]
            return roles
        return [("step", k) for k in range(num_levels)]

    def _initial_state(self, x: torch.Tensor) -> tuple[Any, ...]:
        if self.method == "heun":
            return (torch.zeros_like(x), torch.zeros_like(x))  # x_hat and d of the last Euler
        if self.method == "adaptive":
            return (_AdaptiveRun(x, float(self.sde.time(self._levels[0])), 1.0 / self.num_steps),)
        return ()

    # ------------------------------------------------------------------ the update
    def _update(
        self,
        coefficients: Sequence[Any],
        index: int | torch.Tensor,
        tables: _DeviceTables,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None,
        state: tuple[Any, ...],
        continuing: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, ...]]:
        if self.method == "adaptive":
            return self._adaptive_update(model_output, x_t, noise, state)
        alpha, sigma, role, last, c1, c2, c3, c4 = coefficients
        x0, eps = self._clamped_x0_eps(model_output, x_t, alpha, sigma)
        if self.method != "heun" and noise is None:
            raise RuntimeError(f"method={self.method!r} needs the step's noise")
        if self.method == "euler_maruyama":
            # x + B (x / 2 + score) + sqrt(B) z, score = -eps / sigma
            x_next = x_t + c1 * (0.5 * x_t - eps / sigma) + _sqrt(c1) * noise
            return _where(last, x0, x_next), x0, state
        if self.method == "predictor_corrector" and noise is not None:
            score = -eps / sigma
            predicted = _where(last, x0, c1 * x_t + c2 * score + c3 * noise)
            corrected = _langevin(x_t, score, noise, self.snr, c4)
            return _where(role, corrected, predicted), x0, state
        # heun: role 0 = Euler from this level (saves x_hat, d), 1 = Heun's correction
        x_saved, d_saved = state
        x_hat = x_t / alpha
        d = eps
        base = _where(role, x_saved, x_hat)
        derivative = _where(role, 0.5 * (d_saved + d), d)
        x_next = c2 * (base + c1 * derivative)
        state = (_where(role, x_saved, x_hat), _where(role, d_saved, d))
        return _where(last, x0, x_next), x0, state

    def _adaptive_update(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None,
        state: tuple[Any, ...],
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, ...]]:
        (run,) = state
        if noise is None:
            raise RuntimeError("method='adaptive' needs the step's noise")
        run.calls += 1
        t = self.sde.timestep(run.evaluation_time)
        abar = float(self.schedule.alphas_cumprod[int(t)])
        alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
        x0, eps = self._clamped_x0_eps(model_output, x_t, alpha, sigma)
        if run.phase == 2:  # the final denoising call at the lowest level
            run.done = True
            return x0, x0, state
        score = -eps / sigma
        s_end = float(self.sde.time(0))
        # the step's length in u = int beta ds, from s to s - h
        log_abar = self.sde.log_alphas_cumprod
        length = float(log_abar(run.s - run.h) - log_abar(run.s))
        if run.phase == 0:  # Euler-Maruyama trial x' with this step's noise z
            x_proposal = run.x + length * (0.5 * run.x + score) + math.sqrt(length) * noise
            run.first = (score, noise, x_proposal)
            run.phase = 1
            self._check_budget(run, needed=2)
            return x_proposal, x0, state
        first_score, z, x_proposal = run.first
        # improved Euler: the average of x' and the Euler step that uses the score at x'
        x_second = run.x + length * (0.5 * x_proposal + score) + math.sqrt(length) * z
        x_improved = 0.5 * (x_proposal + x_second)
        scale = torch.maximum(x_proposal.abs(), run.x_proposal_prev.abs()) * self.rtol
        delta = scale.clamp(min=self.atol)
        error = ((x_proposal - x_improved) / delta).flatten(1).pow(2).mean(1).sqrt()
        error = float(error.max())
        if error <= 1.0:
            run.accepted += 1
            run.s = run.s - run.h
            run.x = x_improved
            run.x_proposal_prev = x_proposal
        else:
            run.rejected += 1
        factor = self.safety * (max(error, 1e-12) ** -self.exponent)
        remaining = run.s - s_end
        if remaining <= 1e-12:
            run.phase = 2
            run.s = s_end
            self._check_budget(run, needed=1)
            return run.x, x0, state
        run.h = min(run.h * factor, remaining)
        if run.h < self.min_step:
            raise RuntimeError(
                f"SDESampler(method='adaptive') did not converge: the step size fell to "
                f"{run.h:.3g} (< min_step={self.min_step:g}) at time s={run.s:.5f} (timestep "
                f"~{int(self.sde.timestep(run.s))}) after {run.calls} model calls "
                f"({run.accepted} steps accepted, {run.rejected} rejected); loosen atol/rtol"
            )
        run.phase = 0
        self._check_budget(run, needed=3)
        return run.x, x0, state

    def _check_budget(self, run: _AdaptiveRun, needed: int) -> None:
        if run.calls + needed > self.max_model_calls:
            raise RuntimeError(
                f"SDESampler(method='adaptive') did not converge within max_model_calls="
                f"{self.max_model_calls}: time s={run.s:.5f} (timestep "
                f"~{int(self.sde.timestep(run.s))}) reached with step size {run.h:.3g} "
                f"({run.accepted} steps accepted, {run.rejected} rejected); loosen atol/rtol "
                f"or raise max_model_calls"
            )

    # ------------------------------------------------------------------ the loop's hooks
    def _positions(self, start: int) -> Iterable[int]:
        if self.method == "adaptive":
            return itertools.count(start)
        return super()._positions(start)

    def _model_timestep(
        self, index: int, state: tuple[Any, ...], batch: int, device: torch.device
    ) -> torch.Tensor:
        if self.method == "adaptive":
            t = int(self.sde.timestep(state[0].evaluation_time))
            return torch.full((batch,), t, dtype=torch.long, device=device)
        return super()._model_timestep(index, state, batch, device)

    def _finished(self, state: tuple[Any, ...]) -> bool:
        return self.method == "adaptive" and state[0].done

    def _coefficients(
        self, index: int | torch.Tensor, tables: _DeviceTables, like: torch.Tensor
    ) -> Sequence[Any]:
        if self.method == "adaptive":
            return ()
        return super()._coefficients(index, tables, like)

    def _nonfinite_message(self, what: str, position: int) -> str:
        if self.method != "adaptive":
            return super()._nonfinite_message(what, position)
        return (f"{what} contains NaN or inf at model call {position + 1}; SDESampler "
                f"stopped instead of returning a non-finite sample")

    def _capability_reason(self, capability: str) -> str:
        if capability == "compile":
            return ("method='adaptive' decides its step sizes on the host; use compile=False "
                    "or 'auto'")
        return (f"it needs one model call per level: method='euler_maruyama'; "
                f"got method={self.method!r}")


# ---------------------------------------------------------------------- helpers
def _where(flag: Any, if_true: torch.Tensor, if_false: torch.Tensor) -> torch.Tensor:
    """``if_true`` where ``flag`` is 1: a python branch for a float, a blend for a tensor."""
    if isinstance(flag, float):
        return if_true if flag else if_false
    return torch.where(flag > 0.5, if_true, if_false)


def _sqrt(value: Any) -> Any:
    return math.sqrt(value) if isinstance(value, float) else value.sqrt()


def _langevin(
    x: torch.Tensor, score: torch.Tensor, noise: torch.Tensor, snr: float, step_alpha: Any
) -> torch.Tensor:
    """One Langevin step with Song et al.'s step rule ``e = 2 alpha (snr ||z|| / ||g||)^2``."""
    batch = x.shape[0]
    # the norms are averaged over the batch, as Song et al.'s code does: a per-sample ratio
    # explodes for a sample whose score is near 0 (in few dimensions)
    noise_norm = noise.reshape(batch, -1).norm(dim=1).mean()
    score_norm = score.reshape(batch, -1).norm(dim=1).mean().clamp(min=1e-12)
    step = 2.0 * (snr * noise_norm / score_norm) ** 2 * step_alpha
    return x + step * score + _sqrt(2.0 * step) * noise


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    return float(check_real(name, value, 0, open_min=not allow_zero))
