"""What the multistep ODE solvers share: levels, order schedule, history and the linear update.

DPM-Solver++ (``ddpm_lib.samplers.dpm_solver``), UniPC (``ddpm_lib.samplers.unipc``),
DEIS (``ddpm_lib.samplers.deis``) and PLMS / iPNDM (``ddpm_lib.samplers.pndm``) each
move from the level of one model call to the next by a step that is *linear* in the current
sample and in the model's last few outputs ``m_i, m_{i-1}, ...`` (``x0`` estimates for the
data-prediction solvers, ``eps`` for the others):

    x_{i+1} = a_i x_i + sum_k w_{i,k} m_{i-k}

and UniPC also corrects ``x_i`` first, ``x_i <- c_i x_{i-1} + sum_k v_{i,k} m_{i-k}``, with the
new output ``m_i`` (no extra model call). A solver only says how its weights follow from the
levels (``alpha``, ``sigma``, ``lambda = log(alpha / sigma)``) for a given order; this module
computes them once, in float64, for every position and every order the history allows, and
the update picks the row's weights by how many past outputs it holds (fewer after a fresh
start, e.g. ``img2img`` or a :meth:`~ddpm_lib.samplers.base.Sampler.step` loop that skips).

The levels are the model timesteps followed by a final level: ``final_step="denoise"`` ends
with a step from the last timestep to ``sigma = 0`` (which returns that call's ``x0``
estimate: necessarily first order), ``final_step="solver"`` ends with a full-order step to the
level of ``t = 0`` (``sigma_0 = sqrt(beta_0)``), the grid then having ``N + 1`` points of which
the model is called at the first ``N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._checks import check_choice, check_int
from .._deprecation import keyword_only_after
from ..schedule import NoiseSchedule
from .base import SPACINGS, Sampler, _check_bool, _DeviceTables
from .grids import grid_timesteps, spaced_timesteps

FINAL_STEPS = ("denoise", "solver")


def check_order(order: Any, largest: int = 3) -> int:
    """Return ``order`` if it is an int in ``[1, largest]``, else raise naming it."""
    return check_int("order", order, 1, largest)


class Levels:
    """``alpha``, ``sigma`` and ``lambda`` of the ``N + 1`` levels of a run (float64 numpy).

    Level ``i < N`` is the model timestep at position ``i``; level ``N`` the final one (``sigma
    = 0`` and ``lambda = inf`` for ``final_step="denoise"``).
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        abar = alphas_cumprod.double().numpy()
        self.alpha = np.sqrt(abar)
        self.sigma = np.sqrt(1.0 - abar)
        with np.errstate(divide="ignore"):
            self.lam = np.log(self.alpha) - np.log(self.sigma)
            self.rho = self.sigma / self.alpha  # DEIS's sigma / alpha


class MultistepSampler(Sampler):
    """Base class of the multistep solvers (see the module docstring).

    A subclass sets ``_form`` (``"x0"`` or ``"eps"``: what its history holds), ``_max_order``,
    ``_history`` (how many past outputs a step may read, as a function of the order) and
    ``_uses_corrector``, and implements ``_predictor_weights`` (and, with a corrector,
    ``_corrector_weights``).
    """

    _form: str = "x0"
    _max_order: int = 3
    _uses_corrector: bool = False
    _reads_eps = False  # the "x0" form; the "eps" solvers set it

    @keyword_only_after((
        "num_steps", "order", "prediction", "clip_denoised", "spacing", "final_step",
        "lower_order_final", "dynamic_threshold", "learn_sigma", "timesteps",
        "use_clipped_model_output"
    ))
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int | None,
        *,
        order: int,
        prediction: str,
        clip_denoised: bool,
        spacing: str,
        final_step: str,
        lower_order_final: bool,
        dynamic_threshold: float | None,
        learn_sigma: bool,
        timesteps: Sequence[int] | torch.Tensor | None,
        use_clipped_model_output: bool = True,
    ) -> None:
        self.order = check_order(order, self._max_order)
        self.spacing = check_choice("spacing", spacing, SPACINGS)
        self.final_step = check_choice("final_step", final_step, FINAL_STEPS)
        self.lower_order_final = _check_bool("lower_order_final", lower_order_final)
        self._history_length = self._history(self.order)
        super().__init__(
            schedule, num_steps=num_steps, prediction=prediction, clip_denoised=clip_denoised,
            dynamic_threshold=dynamic_threshold, learn_sigma=learn_sigma, timesteps=timesteps,
            use_clipped_model_output=use_clipped_model_output,
        )

    def __repr__(self) -> str:
        return (
            f"{super().__repr__()[:-1]}, order={self.order}, spacing={self.spacing!r}, "
            f"final_step={self.final_step!r})"
        )

    # ------------------------------------------------------------------ to define
    def _history(self, order: int) -> int:
        """How many past outputs a step of this ``order`` reads (predictor and corrector)."""
        return order - 1

    def _predictor_weights(self, levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
        """``(a, w)`` of the step from level ``i`` to ``i + 1``: ``w[k]`` weighs ``m_{i-k}``."""
        raise NotImplementedError

    def _corrector_weights(self, levels: Levels, i: int, order: int) -> tuple[float, np.ndarray]:
        """``(c, v)`` of the correction of ``x_i``: ``c`` weighs ``x_{i-1}``, ``v[k]`` ``m_{i-k}``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ grid and levels
    def _make_timesteps(self) -> torch.Tensor:
        return self._grid()[: self.num_steps]

    def _grid(self) -> torch.Tensor:
        """The ``N`` model timesteps, plus the final level's timestep 0 when it is on the grid.

        diffusers' solvers space ``N + 1`` points and drop the last (0) for ``linspace`` and
        ``leading``; the schedule grids (``logsnr``, ``karras``, ``quadratic``) do the same
        with ``final_step="solver"`` (their last point, 0, is then the final level) and place
        ``N`` points down to 0 with ``final_step="denoise"``.
        """
        num_timesteps, n = self.schedule.num_timesteps, self.num_steps
        plus_one = self.spacing in ("linspace", "leading") or (
            self.spacing != "trailing" and self.final_step == "solver"
        )
        if not plus_one:
            return grid_timesteps(self.schedule.alphas_cumprod, n, self.spacing)
        if n + 1 > num_timesteps:
            raise ValueError(
                f"num_steps must be <= {num_timesteps - 1} with spacing={self.spacing!r} "
                f"(it spaces num_steps + 1 points); got {n}"
            )
        if self.spacing in ("linspace", "leading"):
            return spaced_timesteps(num_timesteps, n + 1, self.spacing)
        return grid_timesteps(self.schedule.alphas_cumprod, n + 1, self.spacing)

    def _levels(self) -> Levels:
        abar = self.schedule.alphas_cumprod.cpu().double()
        calls = abar[self._timesteps]
        if self.final_step == "solver" and self._timestep_list[-1] > 0:
            final = abar[:1]  # the level of t = 0
        else:
            final = abar.new_ones(1)  # sigma = 0
        return Levels(torch.cat([calls, final]))

    def planned_orders(self) -> list[int]:
        """The order of each of the ``N`` steps in a full run.

        ``min(order, i + 1)`` (the first steps have less history); with ``lower_order_final``
        also at most ``N - i`` (the last steps lower the order again, as diffusers does for
        short runs); a step to ``sigma = 0`` is first order: it returns the last (clipped)
        ``x0`` estimate.
        """
        n = self.num_steps
        orders = []
        for i in range(n):
            order = min(self.order, i + 1)
            if self.lower_order_final:
                order = min(order, n - i)
            orders.append(order)
        if self._levels().sigma[-1] == 0:
            orders[-1] = 1
        return orders

    # ------------------------------------------------------------------ coefficient table
    def _coefficient_table(self) -> torch.Tensor:
        """Per position: ``alpha, sigma, a, c, clamp``, then for ``v = 0..H`` past outputs held the
        predictor's weights ``w`` (``H + 1`` values: ``m_i .. m_{i-H}``, padded with zeros),
        then (corrector) the weights ``v`` likewise."""
        levels = self._levels()
        orders = self.planned_orders()
        history = self._history_length
        rows = []
        for i in range(self.num_steps):
            row = [levels.alpha[i], levels.sigma[i]]
            a = None
            predictor_blocks, corrector_blocks = [], []
            c = 0.0
            for held in range(history + 1):
                order = min(orders[i], held + 1)
                a, w = self._predictor_weights(levels, i, order)
                predictor_blocks.append(_pad(w, history + 1))
                if self._uses_corrector:
                    # the correction of x_i has the order of the step that made x_i
                    if held == 0 or i == 0:
                        corrector_blocks.append(np.zeros(history + 1))
                    else:
                        c, v = self._corrector_weights(levels, i, min(orders[i - 1], held))
                        corrector_blocks.append(_pad(v, history + 1))
            # 1 on the last step when its result is a noisy sample to clamp (final_step="solver")
            clamp = float(i == self.num_steps - 1 and levels.sigma[-1] > 0 and self._clamps)
            row += [a, c, clamp]
            for block in predictor_blocks + corrector_blocks:
                row += list(block)
            rows.append(row)
        return torch.tensor(np.array(rows, dtype=np.float64))

    # ------------------------------------------------------------------ the update
    def _initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        history = [torch.zeros_like(x) for _ in range(self._history_length)]
        held = x.new_zeros((x.shape[0],) + (1,) * (x.ndim - 1))
        previous = [torch.zeros_like(x)] if self._uses_corrector else []
        return (*history, *previous, held)

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
        history = self._history_length
        alpha, sigma, a, c, clamp = coefficients[:5]
        weights = coefficients[5:]
        past = list(state[:history])  # m_{i-1}, ..., m_{i-H}
        x_previous = state[history] if self._uses_corrector else None
        held = state[-1] * continuing  # how many of ``past`` belong to this run
        masks = [(held == v).to(x_t.dtype) for v in range(history + 1)]

        # with clipping, the eps form reads the eps of the clipped x0 (unless
        # use_clipped_model_output=False); without, the eps of the model's x0 as before
        x0, eps = self._clamped_x0_eps(model_output, x_t, alpha, sigma)
        if self._form == "x0":
            m = x0
        elif self._clamps:
            m = eps
        else:
            m = (x_t - alpha * x0) / sigma
        outputs = [m, *past]  # m_i, m_{i-1}, ..., m_{i-H}

        x = x_t
        if self._uses_corrector:
            offset = (history + 1) * (history + 1)
            blocks = _select(weights[offset:], masks, history + 1)
            corrected = c * x_previous
            for k in range(history + 1):
                corrected = corrected + blocks[k] * outputs[k]
            # no correction without history (the first step of a run)
            x = torch.where(held > 0, corrected, x_t)
        blocks = _select(weights, masks, history + 1)
        x_next = a * x
        for k in range(history + 1):
            x_next = x_next + blocks[k] * outputs[k]
        if self._clamps and self.final_step == "solver":
            # the run ends on the noisy level of t = 0: the returned sample is clamped too
            x_next = x_next + clamp * (x_next.clamp(-1.0, 1.0) - x_next)
        held_next = torch.clamp(held + 1, max=float(history))
        new_state = [*outputs[:history]]
        if self._uses_corrector:
            new_state.append(x)
        return x_next, x0, (*new_state, held_next)


def _pad(values: Any, length: int) -> np.ndarray:
    out = np.zeros(length)
    out[: len(values)] = values
    return out


def _select(weights: Sequence[Any], masks: list[torch.Tensor], length: int) -> list[Any]:
    """``sum_v masks[v] * block_v``: the weights of the block of the history actually held."""
    selected = []
    for k in range(length):
        total = 0.0
        for v, mask in enumerate(masks):
            total = total + mask * weights[v * length + k]
        selected.append(total)
    return selected

