r"""The base of the samplers that walk noise levels: annealed Langevin, the VE SDE and EDM.

These samplers work in the noise-level view of Karras et al. (2022, Sec. 2): the sample is
:math:`x = x_0 + \sigma\epsilon` (no scaling) and the model is a *denoiser*
:math:`D(x;\sigma) \approx E[x_0 \mid x]` (``ddpm_lib.denoisers``), called with a float
``(B,)`` tensor of levels in place of the integer timestep. Where the levels come from decides
what the model must be:

==================================================  ===========================================
``schedule``                                        the model passed to ``sample``
==================================================  ===========================================
a :class:`~ddpm_lib.NoiseSchedule` (DDPM / VP)      the DDPM model ``model(x_t, t)``
                                                    (``prediction`` eps, x0 or v), converted
                                                    by :class:`~ddpm_lib.VPDenoiser`
a :class:`~ddpm_lib.noise_levels.VENoiseLevels`     a denoiser ``D(x, sigma)``: a VE score
                                                    model through
                                                    :class:`~ddpm_lib.ScoreDenoiser`
a :class:`~ddpm_lib.noise_levels.EDMNoiseLevels`    a denoiser ``D(x, sigma)``, e.g. an
                                                    :class:`~ddpm_lib.EDMPrecond`
==================================================  ===========================================

Every position of the one loop (:class:`~ddpm_lib.samplers.loop.SamplingLoop`) is one model
call at the level in :attr:`NoiseLevelSampler.timesteps` (floats: the :math:`\sigma` of each
call, which the trajectory records too); guidance combines the two denoiser outputs (the
same as combining ``eps``, the map between them being affine at a fixed ``x``, ``sigma``).
The run starts from :math:`x = \sigma_0\, x_T` with :math:`x_T \sim N(0, I)` and ends at
:math:`\sigma = 0`, in the data space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from .._checks import check_bool, check_choice, check_int, check_real
from ..denoisers import SIGMA_LOOKUPS, VPDenoiser
from ..noise_levels import EDMNoiseLevels, VENoiseLevels, schedule_sigmas
from ..schedule import PREDICTION_TYPES, NoiseSchedule
from .base import Sampler
from .loop import RunOptions, RunSpec, SampleTrajectory, _DeviceTables, randn, starting_noise

__all__ = [
    "SIGMA_SPACINGS",
    "NoiseLevelSampler",
    "check_sigmas",
    "level_range",
    "sampling_sigmas",
]

#: how a sampler places ``num_steps`` levels between the smallest and the largest
SIGMA_SPACINGS = ("karras", "geometric")


def level_range(source: NoiseSchedule | VENoiseLevels | EDMNoiseLevels) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of a level source (a VP schedule: its first and last level)."""
    if isinstance(source, NoiseSchedule):
        sigmas = schedule_sigmas(source)
        if not bool(torch.isfinite(sigmas[-1])):
            raise ValueError("a schedule with abar = 0 at its last step (zero terminal SNR) has "
                             "sigma = inf there; pass sigmas= explicitly")
        return float(sigmas[0]), float(sigmas[-1])
    if isinstance(source, (VENoiseLevels, EDMNoiseLevels)):
        return source.sigma_min, source.sigma_max
    raise TypeError("schedule must be a NoiseSchedule, VENoiseLevels or EDMNoiseLevels; got "
                    f"{type(source).__name__}")


def sampling_sigmas(
    source: NoiseSchedule | VENoiseLevels | EDMNoiseLevels, num_steps: int, spacing: str, rho: float | None = None
) -> torch.Tensor:
    r"""The float64 ``(num_steps,)`` decreasing levels a sampler visits (the final 0 excluded).

    ``"karras"``: EDM eq. 5 between the source's ``sigma_min`` and ``sigma_max`` with ``rho``
    (default: the source's for :class:`EDMNoiseLevels`, else 7); ``"geometric"``: the VE ladder
    :math:`\sigma_{max}(\sigma_{min}/\sigma_{max})^{i/(N-1)}` (a :class:`VENoiseLevels` of
    ``num_steps`` levels gives exactly its own ladder).
    """
    spacing = check_choice("spacing", spacing, SIGMA_SPACINGS)
    num_steps = check_int("num_steps", num_steps, 1)
    sigma_min, sigma_max = level_range(source)
    if spacing == "geometric":
        return VENoiseLevels(sigma_min, sigma_max, num_steps).sigmas
    if rho is None:
        rho = source.rho if isinstance(source, EDMNoiseLevels) else 7.0
    return EDMNoiseLevels(sigma_min, sigma_max, rho).grid(num_steps)[:-1]


def check_sigmas(sigmas: Any, source: NoiseSchedule | VENoiseLevels | EDMNoiseLevels) -> torch.Tensor:
    """An explicit grid: a 1-D strictly decreasing sequence of finite levels ``> 0``."""
    values = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    if values.ndim != 1 or values.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence; got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all() & (values > 0).all()):
        raise ValueError(f"sigmas must be finite and > 0; got {values.tolist()}")
    if values.numel() > 1 and not bool((values[1:] < values[:-1]).all()):
        raise ValueError(f"sigmas must decrease strictly; got {values.tolist()}")
    if isinstance(source, NoiseSchedule):
        low, high = level_range(source)
        if values[-1] < low * (1 - 1e-6) or values[0] > high * (1 + 1e-6):
            raise ValueError(f"sigmas must lie in the schedule's range [{low:.6g}, {high:.6g}] "
                             f"(a DDPM model knows no other level); got {values.tolist()}")
    return values


class _PredictionHalf(nn.Module):
    """A model that also returns variance values (``learn_sigma``), without them."""

    def __init__(self, model: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        out = self.model(x_t, t, **model_kwargs)
        return out[:, : x_t.shape[1]]


class NoiseLevelSampler(Sampler):
    r"""Base of the samplers over noise levels (see the module docstring).

    Args:
        schedule: where the levels come from: a :class:`~ddpm_lib.NoiseSchedule` (the model is
            a DDPM model), a :class:`~ddpm_lib.noise_levels.VENoiseLevels` or an
            :class:`~ddpm_lib.noise_levels.EDMNoiseLevels` (the model is a denoiser).
        num_steps: the number of levels of the grid (each sampler says how many model calls
            that makes).
        sigmas: an explicit strictly decreasing grid of levels instead (``num_steps`` is then
            its length); with a ``NoiseSchedule`` within its range.
        spacing: ``"karras"`` or ``"geometric"``
            (``ddpm_lib.samplers.levels.sampling_sigmas``).
        rho: the ``"karras"`` grid's exponent (default: the source's, else 7).
        prediction: what a DDPM model predicts (``"eps"``, ``"x0"``, ``"v"``); with a
            ``NoiseSchedule`` only.
        sigma_lookup: how a DDPM model is called between its levels (:class:`~ddpm_lib.VPDenoiser`).
        clip_denoised: clamp every denoiser output to ``[-1, 1]`` (images).
        learn_sigma: the DDPM model also returns variance values (ignored).

    A subclass implements ``_calls()``: the level of every model call and the coefficient
    table, one row per call, and ``_update``.
    """

    supports_step = False
    supports_img2img = False
    supports_inpaint = False
    default_num_steps = 18
    default_spacing = "karras"

    def __init__(
        self,
        schedule: NoiseSchedule | VENoiseLevels | EDMNoiseLevels,
        num_steps: int | None = None,
        *,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        spacing: str | None = None,
        rho: float | None = None,
        prediction: str = "eps",
        sigma_lookup: str = "nearest",
        clip_denoised: bool = True,
        learn_sigma: bool = False,
    ) -> None:
        level_range(schedule)  # the type check
        self.noise_levels = schedule
        #: the VP schedule of a DDPM model, else None
        self.schedule = schedule if isinstance(schedule, NoiseSchedule) else None  # type: ignore[assignment]
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        self.sigma_lookup = check_choice("sigma_lookup", sigma_lookup, SIGMA_LOOKUPS)
        self.clip_denoised = check_bool("clip_denoised", clip_denoised)
        self.learn_sigma = check_bool("learn_sigma", learn_sigma)
        self.dynamic_threshold = None
        self.use_clipped_model_output = True
        self.spacing = check_choice("spacing", spacing or self.default_spacing, SIGMA_SPACINGS)
        if rho is not None:
            rho = float(check_real("rho", rho, 0.0, open_min=True))
        self.rho = rho
        if sigmas is not None:
            grid = check_sigmas(sigmas, schedule)
            if num_steps is not None and num_steps != grid.numel():
                raise ValueError(f"num_steps must equal len(sigmas) = {grid.numel()} when both "
                                 f"are given; got num_steps={num_steps!r}")
        else:
            if num_steps is None:
                num_steps = (schedule.num_levels if isinstance(schedule, VENoiseLevels)
                             else self.default_num_steps)
            grid = sampling_sigmas(schedule, check_int("num_steps", num_steps, 1),
                                   self.spacing, rho)
        self.num_steps = int(grid.numel())
        #: float64 ``(N,)``: the grid of levels, decreasing (the final 0 not included)
        self.sigmas = grid
        call_sigmas, table = self._calls()
        self._timesteps = call_sigmas.to(torch.float64)
        self._timestep_list: list[float] = self._timesteps.tolist()  # type: ignore[assignment]
        self._coefficients64 = table.to(torch.float64)
        self._rows = [tuple(row) for row in self._coefficients64.tolist()]
        self._device_tables = {}
        self._compiled = {}
        self._step_memory = None
        self._dtype = torch.float32

    # ------------------------------------------------------------------ to define
    def _calls(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(levels (P,), table (P, K))``: the sigma of each model call and its constants."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public
    @property
    def timesteps(self) -> torch.Tensor:
        """float64 ``(P,)``: the level :math:`\\sigma` of every model call of a run, in order."""
        return self._timesteps.clone()

    @property
    def num_model_calls(self) -> int:
        """Model calls of a full run (one per position; guidance batches its two halves)."""
        return len(self._timestep_list)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_steps={self.num_steps}, "
                f"sigma_max={self._timestep_list[0]:.4g}, calls={self.num_model_calls}, "
                f"clip_denoised={self.clip_denoised}, schedule={self.noise_levels!r})")

    def denoiser(self, model: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """The model as the denoiser ``D(x, sigma, **model_kwargs)`` the sampler calls: a DDPM
        model converted by :class:`~ddpm_lib.VPDenoiser`; any other model as it is. A model
        that converts a denoiser to a DDPM model (a :class:`~ddpm_lib.VPModel`, a
        :class:`~ddpm_lib.ScoreBasedModel`) gives its own ``denoiser``: exact at every level."""
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        own = getattr(model, "denoiser", None)
        if isinstance(model, nn.Module) and callable(own):
            return own
        if not isinstance(self.noise_levels, NoiseSchedule):
            return model
        inner = _PredictionHalf(model) if self.learn_sigma else model
        return VPDenoiser(cast(nn.Module, inner), self.noise_levels, self.prediction,
                          self.sigma_lookup)

    @torch.no_grad()
    def sample(
        self,
        model: Callable[..., torch.Tensor],
        shape: Sequence[int] | None,
        *,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        guidance_scale: float | None = None,
        unconditional_kwargs: Mapping[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        progress: bool = False,
        return_trajectory: bool = False,
        compile: bool | str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, SampleTrajectory]:
        """Draw samples from :math:`x = \\sigma_0 x_T` down to :math:`\\sigma = 0`.

        The arguments are those of :meth:`Sampler.sample <ddpm_lib.samplers.Sampler.sample>`,
        except that ``x_T`` is standard normal noise (scaled here by the first level) and
        ``guidance_interval`` is ``(sigma_lo, sigma_hi)`` in noise levels. The trajectory's
        ``timesteps`` are the float levels of the calls.
        """
        options = RunOptions.from_arguments(locals())
        noise = starting_noise(model, shape, x_T, generator, device, dtype)
        x = self._start(noise, generator)
        return self._run(RunSpec(self.denoiser(model), x, options))

    # ------------------------------------------------------------------ the loop's hooks
    def _start(self, noise: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The sample before the first call (EDM adds its first churn here)."""
        return noise * self._timestep_list[0]

    def _run(self, spec: RunSpec) -> torch.Tensor | tuple[torch.Tensor, SampleTrajectory]:
        self._dtype = spec.x.dtype  # the dtype of the levels handed to the model
        return super()._run(spec)

    def _model_timestep(
        self, index: int, state: tuple[Any, ...], batch: int, device: torch.device
    ) -> torch.Tensor:
        return torch.full((batch,), self._timestep_list[index], dtype=self._dtype, device=device)

    def _tables(self, device: torch.device, dtype: torch.dtype) -> _DeviceTables:
        key = (torch.device(device), dtype)
        tables = self._device_tables.get(key)
        if tables is None:
            tables = _DeviceTables(
                coefficients=self._coefficients64.to(device=device, dtype=dtype),
                timesteps=self._timesteps.to(device=device, dtype=dtype),
                positions=torch.zeros(0, dtype=torch.long, device=device),
                schedule=cast(NoiseSchedule, None),  # the updates read only the table
            )
            self._device_tables[key] = tables
        return tables

    @property
    def _learns_variance(self) -> bool:
        return False  # the denoiser returns the prediction only (learn_sigma is sliced off)

    def _noise(self, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return randn(like.shape, generator, like.device, like.dtype)

    def _nonfinite_message(self, what: str, position: int) -> str:
        return (f"{what} contains NaN or inf at model call {position + 1} of "
                f"{self.num_model_calls} (sigma = {self._timestep_list[position]:.4g}); "
                f"{type(self).__name__} stopped instead of returning a non-finite sample")

    def _capability_reason(self, capability: str) -> str:
        return (f"{type(self).__name__} walks noise levels, not timesteps; use "
                f"sample()")

