"""The sampling loop, written once, and what every sampler shares.

A sampler is a list of model timesteps (:attr:`Sampler.timesteps`, descending) and an update
that maps ``(x_t, model output)`` at one timestep to the sample at the next. This module owns
everything else: the initial noise (or a given ``x_T``), calling the model, classifier-free
guidance, the progress bar, the trajectory, the check for non-finite values and compilation.

Notation (Ho et al. 2020; Song et al. 2021; Lu et al. 2022), with 0-based timesteps:

=====================  ==============================================================
``alpha`` (a_t)         sqrt(abar_t), the signal scale of ``x_t = a_t x0 + s_t eps``
``sigma`` (s_t)         sqrt(1 - abar_t), the noise scale
``x0``, ``eps``         the model's estimates of the clean sample and of the noise
``index`` / position    where a step sits in :attr:`Sampler.timesteps` (0 = noisiest)
=====================  ==============================================================

The hot loop is free of host synchronisation: every per-step coefficient is read from a
table on the sample's device, indexed by a ``(B,)`` tensor of positions; the noise of each
step is drawn eagerly from the ``torch.Generator`` and passed in; non-finite values are
recorded in a device flag that is read every ``NONFINITE_CHECK_EVERY`` steps and at the end.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from .._checks import check_choice, check_finite, check_floating, check_tensor
from ..conditioning import NULL_CLASS, guidance_kwargs  # noqa: F401 (NULL_CLASS: as before)
from ..schedule import (
    PREDICTION_TYPES,
    NoiseSchedule,
    x0_eps_from_prediction,
)
from .grids import (  # noqa: F401 (SPACINGS and spaced_timesteps: re-exported, as before)
    SPACINGS,
    check_timestep_list,
    grid_timesteps,
    spaced_timesteps,
)

COMPILE_CHOICES = ("auto", True, False)
#: the non-finite flag is read (one host sync) every this many steps, and after the last one
NONFINITE_CHECK_EVERY = 50


class SampleTrajectory(NamedTuple):
    """What ``sample(..., return_trajectory=True)`` returns next to the final sample.

    Attributes:
        timesteps: ``(S,)`` long tensor, the model timesteps of the ``S`` steps taken, one per
            model call (:attr:`num_model_calls`), in the order of the calls.
        samples: ``S + 1`` tensors shaped like the sample: the starting ``x_t`` and the sample
            after each step (the last entry is the returned sample).
        predicted_x0: ``S`` tensors, the model's (clipped or thresholded) ``x0`` at each step.
    """

    timesteps: torch.Tensor
    samples: list[torch.Tensor]
    predicted_x0: list[torch.Tensor]

    @property
    def num_model_calls(self) -> int:
        """How many times the model was called (one batched call per step, also with guidance)."""
        return int(self.timesteps.shape[0])


class _DeviceTables(NamedTuple):
    """Per-(device, dtype) copies of what the hot loop reads, built once and cached."""

    coefficients: torch.Tensor  # (N, K) in the sample's dtype: one row per position
    timesteps: torch.Tensor  # (N,) long: model timestep of each position
    positions: torch.Tensor  # (T,) long: position of each timestep, -1 when not used
    schedule: NoiseSchedule  # the sampler's schedule with its tables on the device


def check_num_steps(num_steps: Any, num_timesteps: int, name: str = "num_steps") -> int:
    """Return ``num_steps`` if it is an int in ``[1, num_timesteps]``, else raise naming it."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(num_steps).__name__}")
    if not 1 <= int(num_steps) <= num_timesteps:
        raise ValueError(
            f"{name} must be in [1, {num_timesteps}] (the schedule's num_timesteps); "
            f"got {num_steps}"
        )
    return int(num_steps)


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3) of ``x0`` ``(B, ...)``.

    Per sample, ``s = max(quantile(|x0|, percentile), 1)``; ``x0`` is clamped to ``[-s, s]``
    and divided by ``s``, so the result lies in ``[-1, 1]``. With ``s = 1`` this is clipping.
    """
    batch = x0.shape[0]
    flat = x0.reshape(batch, -1).abs().float()  # quantile needs float32/64
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.reshape(batch, *((1,) * (x0.ndim - 1)))
    return torch.minimum(torch.maximum(x0, -s), s) / s


class GuidanceOptions(NamedTuple):
    """How classifier-free guidance is applied beyond its scale (see :meth:`Sampler.sample`).

    Attributes:
        rescale: ``phi`` of guidance rescale (Lin et al. 2024, Eq. 15-16); 0 turns it off.
        interval: ``(t_lo, t_hi)``: guide only at model timesteps ``t_lo <= t <= t_hi``
            (Kynkaanniemi et al. 2024); ``None``: at every step.
    """

    rescale: float = 0.0
    interval: tuple[float, float] | None = None


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale of Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", Eq. 15-16 (diffusers' ``rescale_noise_cfg``).

    ``rescaled = guided * std(cond) / std(guided)`` (Eq. 15), with standard deviations per
    sample over every non-batch dimension, then ``phi * rescaled + (1 - phi) * guided``
    (Eq. 16). It brings the guided prediction back to the conditional prediction's scale,
    which counters the over-exposure of large guidance scales.

    Args:
        guided: the guided prediction ``(B, ...)``.
        cond: the conditional prediction, same shape.
        phi: the mixing weight in ``[0, 1]``.
    """
    dims = tuple(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)  # (B, 1, ..., 1)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1.0 - phi) * guided


def apply_guidance(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    t: torch.Tensor,
    guidance_scale: float,
    options: GuidanceOptions | None = None,
) -> torch.Tensor:
    """Classifier-free guidance ``uncond + w (cond - uncond)`` (Ho & Salimans 2022), then the
    guidance rescale and interval of ``options``.

    Outside the interval the conditional prediction is returned unchanged. The interval test
    is a ``torch.where`` on ``t``, so nothing synchronises with the device and one compiled
    graph serves every step.

    Args:
        cond, uncond: the two predictions ``(B, ...)``.
        t: ``(B,)`` model timesteps of the step.
        guidance_scale: ``w``.
        options: rescale and interval; ``None`` for plain guidance.
    """
    guided = uncond + guidance_scale * (cond - uncond)
    if options is None:
        return guided
    if options.rescale:
        guided = rescale_guidance(guided, cond, options.rescale)
    if options.interval is not None:
        low, high = options.interval
        inside = ((t >= low) & (t <= high)).reshape(-1, *((1,) * (cond.ndim - 1)))  # (B, 1, ..)
        guided = torch.where(inside, guided, cond)
    return guided


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal noise on ``device``, drawn from ``generator`` wherever that lives.

    A CPU generator with a CUDA sample draws on the CPU and copies, so a seed gives the same
    noise on every device (as diffusers' ``randn_tensor``).
    """
    if generator is not None and generator.device.type != torch.device(device).type:
        return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None; got {type(generator).__name__}"
        )
    return generator


class Sampler:
    """Base class of the samplers: owns the loop; a subclass defines timesteps and update.

    Args:
        schedule: the forward process the model was trained with.
        num_steps: number of model calls of a full run, ``1 <= num_steps <= T``.
        prediction: what the model predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        clip_denoised: clamp the predicted ``x0`` to ``[-1, 1]`` at every step (images); an
            update that reads ``eps`` then reads the one of the clamped ``x0`` (see
            ``use_clipped_model_output``). Turn it off for latents or any data not in
            ``[-1, 1]``.
        dynamic_threshold: a percentile in ``(0, 1)`` (Imagen uses 0.995) to threshold ``x0``
            dynamically instead of clipping; ``None`` to not.
        use_clipped_model_output: when ``x0`` is clipped or thresholded, the update reads the
            ``eps = (x_t - alpha_t x0) / sigma_t`` of the clamped ``x0`` and the current
            ``x_t`` (``True``, default: both describe the same ``x_t``, as improved-diffusion
            and diffusers' ``use_clipped_model_output=True``), or the model's own ``eps``
            (``False``: diffusers' ``DDIMScheduler`` default, which under strong guidance pairs
            a clamped ``x0`` with an ``eps`` of an overshooting one and ruins the samples).
            Only samplers whose update reads ``eps`` (DDIM, PLMS / iPNDM, DEIS, the SDE
            samplers) depend on it; DDPM, DPM-Solver++ and UniPC read only ``x0`` and ``x_t``.
        learn_sigma: the model returns ``2C`` channels (prediction, then variance values);
            samplers that do not use a learned variance ignore the second half.
        timesteps: an explicit list of model timesteps instead of the sampler's grid: strictly
            descending ints in ``[0, T - 1]`` (``num_steps`` is then its length, or must equal
            it). See ``ddpm_lib.samplers.grids``.

    A subclass sets ``_uses_noise`` and implements ``_make_timesteps``,
    ``_coefficient_table`` (one float64 row of per-step constants per position) and
    ``_update``; it may override ``_initial_state`` when the update carries state (a
    multistep solver).
    """

    #: whether a step adds fresh Gaussian noise (then it is drawn for every step)
    _uses_noise: bool = False
    #: the step grid (``SPACINGS``) that ``_make_timesteps`` places; set by each subclass
    spacing: str = "linspace"
    #: ``num_steps`` when neither it nor ``timesteps`` is given
    default_num_steps: int = 50
    #: whether the update reads ``eps`` (then ``use_clipped_model_output`` matters)
    _reads_eps: bool = True

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        num_steps: int | None,
        prediction: str = "eps",
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
        learn_sigma: bool = False,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        use_clipped_model_output: bool = True,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        self.schedule = schedule
        given = None
        if timesteps is not None:
            given = check_timestep_list(timesteps, schedule.num_timesteps)
            if num_steps is not None and num_steps != given.numel():
                raise ValueError(
                    f"num_steps must equal len(timesteps) = {given.numel()} when both are "
                    f"given; got num_steps={num_steps!r}"
                )
            num_steps = given.numel()
        elif num_steps is None:
            num_steps = min(self.default_num_steps, schedule.num_timesteps)
        self.num_steps = check_num_steps(num_steps, schedule.num_timesteps)
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        self.clip_denoised = _check_bool("clip_denoised", clip_denoised)
        if dynamic_threshold is not None:
            if not isinstance(dynamic_threshold, numbers.Real) or not 0 < dynamic_threshold < 1:
                raise ValueError(
                    f"dynamic_threshold must be a percentile in (0, 1) or None; "
                    f"got {dynamic_threshold!r}"
                )
            dynamic_threshold = float(dynamic_threshold)
        self.dynamic_threshold = dynamic_threshold
        self.learn_sigma = _check_bool("learn_sigma", learn_sigma)
        self.use_clipped_model_output = _check_bool(
            "use_clipped_model_output", use_clipped_model_output
        )

        timesteps = given if given is not None else self._make_timesteps()
        self._timesteps = timesteps
        self._timestep_list: list[int] = timesteps.tolist()
        self._position_of = {t: i for i, t in enumerate(self._timestep_list)}
        table = self._coefficient_table().to(torch.float64)
        if table.shape[0] != len(self._timestep_list):
            raise RuntimeError("the coefficient table needs one row per timestep")
        self._coefficients64 = table
        self._rows: list[tuple[float, ...]] = [tuple(row) for row in table.tolist()]
        self._device_tables: dict[tuple[torch.device, torch.dtype], _DeviceTables] = {}
        self._compiled: dict[str, Callable] = {}
        self._step_memory: tuple[Any, tuple[torch.Tensor, ...], torch.Size] | None = None

    # ------------------------------------------------------------------ to define
    def _make_timesteps(self) -> torch.Tensor:
        """The ``(N,)`` long tensor of model timesteps, in the order they are visited.

        Not called when the user gives ``timesteps=``. By default the grid of ``self.spacing``.
        """
        return grid_timesteps(self.schedule.alphas_cumprod, self.num_steps, self.spacing)

    def _coefficient_table(self) -> torch.Tensor:
        """``(N, K)`` float64: the per-step constants of the update, one row per position."""
        raise NotImplementedError

    def _update(
        self,
        coefficients: Sequence[Any],
        index: int | torch.Tensor,
        tables: _DeviceTables,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None,
        state: tuple[torch.Tensor, ...],
        continuing: float | torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step: returns ``(x_next, x0, state)``.

        ``coefficients`` is this position's row (python floats, or ``(B, 1, ..., 1)`` tensors);
        ``index`` the position (an int, or a ``(B,)`` long tensor); ``continuing`` is 1 when the
        previous step was the previous position of the same run (0 on the first step), for
        updates that use their history.
        """
        raise NotImplementedError

    def _initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The state carried between steps (empty unless the update is multistep)."""
        return ()

    # ------------------------------------------------------------------ public
    @property
    def timesteps(self) -> torch.Tensor:
        """``(N,)`` long tensor of the model timesteps of a full run, descending."""
        return self._timesteps.clone()

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        clipped = (
            f"use_clipped_model_output={self.use_clipped_model_output}, "
            if self._reads_eps else ""
        )
        return (
            f"{type(self).__name__}(num_steps={self.num_steps}, prediction={self.prediction!r}, "
            f"clip_denoised={self.clip_denoised}, {clipped}schedule={self.schedule!r})"
        )

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
        """Draw samples: start from ``x_T ~ N(0, I)`` and take ``num_steps`` steps.

        Args:
            model: any callable ``model(x_t, t, **model_kwargs)`` with ``t`` a ``(B,)`` long
                tensor, returning a tensor shaped like ``x_t`` (``2C`` channels for a learned
                variance).
            shape: ``(B, ...)``, the shape of the samples, any rank (images ``(B, C, H, W)``,
                latents, 1-D signals ``(B, C, L)`` or ``(B, D)``). May be ``None`` with ``x_T``.
            generator: source of all randomness (initial and per-step noise).
            x_T: the starting noise ``(B, ...)``; drawn from ``generator`` when ``None``. Its
                device and dtype are the sample's.
            model_kwargs: extra keyword arguments of every model call, e.g. ``{"y": labels}``.
            guidance_scale: classifier-free guidance weight ``w`` (Ho & Salimans 2022): the
                model is called once on a ``2B`` batch, conditional then unconditional, and the
                prediction ``uncond + w (cond - uncond)`` is used; ``None`` for no guidance.
            unconditional_kwargs: the unconditional half's model kwargs, replacing those of
                ``model_kwargs`` by name; by default every ``y`` becomes ``-1`` (the null class).
                For a text model, the encoded negative prompts (``""`` for none), e.g.
                ``model.encode_prompts([""] * B)``.
            guidance_rescale: ``phi`` in ``[0, 1]`` of guidance rescale (Lin et al. 2024,
                Eq. 15-16, diffusers' ``guidance_rescale``): the guided prediction is
                rescaled to the per-sample standard deviation of the conditional one and
                mixed with weight ``phi`` (``ddpm_lib.samplers.base.rescale_guidance``); 0
                (default) is off.
                Needs ``guidance_scale``.
            guidance_interval: ``(t_lo, t_hi)`` in model timesteps: guidance is applied only
                at steps with ``t_lo <= t <= t_hi`` and the conditional prediction is used
                elsewhere (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval
                Improves Sample and Distribution Quality"); ``None`` (default): every step.
                Needs ``guidance_scale``. The model is still called on the ``2B`` batch at
                every step (no host synchronisation).
            progress: show a tqdm progress bar.
            return_trajectory: also return a :class:`SampleTrajectory`.
            compile: ``"auto"`` compiles the step (model call and update) with
                ``torch.compile`` on CUDA, with CUDA graphs; ``True`` / ``False`` force it.
            device, dtype: where and in which dtype to sample when ``x_T`` is not given
                (default: the model's device, float32).

        Returns:
            the samples ``(B, ...)`` (in ``[-1, 1]`` when ``clip_denoised``), and the
            trajectory when asked.
        """
        generator = _check_generator(generator)
        x = self._starting_noise(model, shape, x_T, generator, device, dtype)
        return self._run(
            model, x, 0, generator, model_kwargs, guidance_scale, unconditional_kwargs,
            progress, return_trajectory, compile, guidance_rescale=guidance_rescale,
            guidance_interval=guidance_interval,
        )

    @torch.no_grad()
    def img2img(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        strength: float = 0.8,
        *,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        guidance_scale: float | None = None,
        unconditional_kwargs: Mapping[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        progress: bool = False,
        return_trajectory: bool = False,
        compile: bool | str = "auto",
    ) -> torch.Tensor | tuple[torch.Tensor, SampleTrajectory]:
        """SDEdit (Meng et al. 2022): noise ``x0`` part of the way, then denoise it.

        The last ``k = int(strength * num_steps)`` steps are taken (as diffusers' img2img):
        ``x0`` is noised to the first of their timesteps ``t`` with ``q(x_t | x0)`` (eq. 4),
        then denoised. ``strength = 1`` starts from almost pure noise; small values keep
        the image close to ``x0``.

        Args:
            x0: the images to edit ``(B, ...)``, in the data range (``[-1, 1]``).
            strength: in ``(0, 1]``; ``strength * num_steps`` must be at least 1.
            noise: the noise of ``q(x_t | x0)``; drawn from ``generator`` when ``None``.

        The other arguments are those of :meth:`sample`.
        """
        generator = _check_generator(generator)
        check_floating("x0", x0)
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
            raise TypeError(f"strength must be a float in (0, 1]; got {type(strength).__name__}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1]; got {strength!r}")
        num_taken = min(int(self.num_steps * strength), self.num_steps)
        if num_taken < 1:
            raise ValueError(
                f"strength * num_steps must be >= 1 to take a step; got strength={strength!r} "
                f"with num_steps={self.num_steps}"
            )
        start = self.num_steps - num_taken
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.schedule.q_sample(x0, self._timestep_list[start], noise=noise)
        return self._run(
            model, x_t, start, generator, model_kwargs, guidance_scale, unconditional_kwargs,
            progress, return_trajectory, compile, guidance_rescale=guidance_rescale,
            guidance_interval=guidance_interval,
        )

    @torch.no_grad()
    def inpaint(
        self,
        model: Callable[..., torch.Tensor],
        image: torch.Tensor,
        mask: torch.Tensor,
        *,
        resample: int = 1,
        jump_length: int = 1,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        guidance_scale: float | None = None,
        unconditional_kwargs: Mapping[str, Any] | None = None,
        progress: bool = False,
        return_trajectory: bool = False,
        compile: bool | str = "auto",
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, SampleTrajectory]:
        """Fill in the unknown part of ``image`` (RePaint, Lugmayr et al. 2022).

        After every step the known part (``mask == 1``) is replaced by ``image`` noised to the
        level the step reached; with ``resample > 1`` the run goes back up ``jump_length``
        levels (re-noising with the forward process) ``resample - 1`` times at every
        ``jump_length``-th level, so that the generated part harmonises with the known one.
        See ``ddpm_lib.samplers.inpaint``. The other arguments are those of :meth:`sample`
        (guidance works as there).

        Args:
            model: as in :meth:`sample`.
            image: ``(B, ...)`` the images in the data range; only the known part is read.
            mask: 1 where ``image`` is kept, 0 where it is generated (values in ``[0, 1]``);
                any shape that broadcasts to ``image`` (e.g. ``(1, 1, H, W)``).
            resample: RePaint's ``r``, passes over each stretch of ``jump_length`` levels (1:
                plain replacement).
            jump_length: RePaint's ``j``, levels gone back up at each jump.
            x_T: the starting noise (drawn from ``generator`` when ``None``).
            guidance_rescale, guidance_interval: as in :meth:`sample`.

        Returns:
            the inpainted samples (and the trajectory when asked), with the known part equal to
            ``image`` exactly where ``mask == 1``.
        """
        from .inpaint import inpaint

        return inpaint(
            self, model, image, mask, resample=resample, jump_length=jump_length,
            generator=_check_generator(generator), x_T=x_T, model_kwargs=model_kwargs,
            guidance_scale=guidance_scale, unconditional_kwargs=unconditional_kwargs,
            progress=progress, return_trajectory=return_trajectory, compile=compile,
            guidance_rescale=guidance_rescale, guidance_interval=guidance_interval,
        )

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One update from timestep ``t`` to the next of :attr:`timesteps`, for custom loops.

        Args:
            model_output: the model's output for ``(x_t, t)`` (after any guidance).
            t: one of :attr:`timesteps`: an int, or a ``(B,)`` / 0-d long tensor.
            x_t: the current sample ``(B, ...)``.
            generator: source of the step's noise (stochastic samplers).
            noise: the step's standard normal noise, shaped like ``x_t``, instead of drawing.

        Returns:
            ``x_prev``, the sample at the next timestep (the clean sample after the last).

        ``for t in sampler.timesteps: x = sampler.step(model(x, t), t, x)`` reproduces
        :meth:`sample`. A multistep solver remembers the previous ``x0`` between calls: a
        call continues the run when its position follows the previous call's.
        """
        check_floating("x_t", x_t)
        check_tensor("model_output", model_output)
        self._check_output(model_output, x_t, x_t.shape[0])
        index = self._position(t, x_t)
        if self._uses_noise:
            if noise is None:
                noise = randn(x_t.shape, _check_generator(generator), x_t.device, x_t.dtype)
            else:
                check_floating("noise", noise)
                if noise.shape != x_t.shape:
                    raise ValueError(
                        f"noise must have the shape of x_t {tuple(x_t.shape)}; "
                        f"got {tuple(noise.shape)}"
                    )
        else:
            noise = None
        tables = self._tables(x_t.device, x_t.dtype)
        state, continuing = self._recall(index, x_t)
        coefficients = self._coefficients(index, tables, x_t)
        x_prev, _, state = self._update(
            coefficients, index, tables, model_output, x_t, noise, state, continuing
        )
        if state:
            self._step_memory = (index, state, x_t.shape)
        return x_prev

    # ------------------------------------------------------------------ the loop
    def _run(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        start: int,
        generator: torch.Generator | None,
        model_kwargs: Mapping[str, Any] | None,
        guidance_scale: float | None,
        unconditional_kwargs: Mapping[str, Any] | None,
        progress: bool,
        return_trajectory: bool,
        compile: bool | str,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        plan: Iterable[int] | None = None,
        hook: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, SampleTrajectory]:
        """The loop. ``plan`` replaces the in-order positions (a run with jumps back, which
        ``hook.jump(x, level, position)`` re-noises); ``hook.start`` / ``hook.after_step(x, level)``
        see the sample before the first step and after each (inpainting's replacement)."""
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        use_compile = _resolve_compile(compile, x.device)
        guidance_scale = _check_guidance_scale(guidance_scale)
        guidance = _check_guidance_options(guidance_scale, guidance_rescale, guidance_interval)
        batch, device = x.shape[0], x.device
        kwargs = self._model_kwargs(model_kwargs, unconditional_kwargs, guidance_scale, batch)
        tables = self._tables(device, x.dtype)
        if use_compile:
            step = self._compiled_step(device.type)
            cuda_graphs = device.type == "cuda"
        else:
            step, cuda_graphs = self._model_step, False
        state = self._initial_state(x)
        # first position whose model output / sample is non-finite, -1 while none is
        nonfinite = torch.full((2,), -1, dtype=torch.long, device=device)
        first = torch.zeros((), dtype=x.dtype, device=device)
        later = torch.ones((), dtype=x.dtype, device=device)
        samples: list[torch.Tensor] = [x]  # filled when return_trajectory
        predicted_x0: list[torch.Tensor] = []
        called: list[torch.Tensor] = []  # the model timestep of each call, for the trajectory

        # the positions visited: in order, or a plan with jumps back (RePaint resampling)
        positions = self._positions(start) if plan is None else plan
        if progress:
            from tqdm.auto import tqdm

            positions = tqdm(positions, desc=type(self).__name__, leave=False)
        if hook is not None:
            x = hook.start(x, start)
        previous = None
        for i in positions:
            follows = previous is not None and i == previous + 1
            if hook is not None and previous is not None and not follows:
                x = hook.jump(x, previous + 1, i)  # back up: re-noise to position i's level
                state = self._initial_state(x)
            t = self._model_timestep(i, state, batch, device)
            # compiled: the position as a tensor, so that one graph serves every step; eager:
            # a python int, so that the step reads python floats (fewer kernels)
            index = torch.full((batch,), i, dtype=torch.long, device=device) if use_compile else i
            noise = randn(x.shape, generator, device, x.dtype) if self._uses_noise else None
            continuing: torch.Tensor | float
            if use_compile:
                continuing = later if follows else first
            else:
                continuing = 1.0 if follows else 0.0
            arguments = (model, x, t, index, noise, state, continuing, nonfinite, tables, kwargs,
                         guidance_scale, guidance)
            if use_compile and i == start:
                x, x0, state, nonfinite = self._first_compiled_call(step, arguments)
            else:
                x, x0, state, nonfinite = step(*arguments)
            if cuda_graphs:  # the graph's outputs are overwritten by its next replay
                x, x0, nonfinite = x.clone(), x0.clone(), nonfinite.clone()
                state = tuple(s.clone() for s in state)
            if hook is not None:
                x = hook.after_step(x, i + 1)
            if return_trajectory:
                samples.append(x)
                predicted_x0.append(x0)
                called.append(t[0])
            if (i + 1 - start) % NONFINITE_CHECK_EVERY == 0:
                self._raise_if_nonfinite(nonfinite)
            previous = i
            if self._finished(state):
                break
        self._raise_if_nonfinite(nonfinite)
        if return_trajectory:
            timesteps = torch.stack(called).cpu() if called else self._timesteps[:0].clone()
            return x, SampleTrajectory(timesteps, samples, predicted_x0)
        return x

    # the loop's three extension points, for samplers whose run is not "each position once"
    def _positions(self, start: int) -> Iterable[int]:
        """The positions a run visits from ``start``: each once, in order (adaptive: until done)."""
        return range(start, len(self._timestep_list))

    def _model_timestep(
        self, index: int, state: tuple[Any, ...], batch: int, device: torch.device
    ) -> torch.Tensor:
        """The ``(B,)`` model timestep of position ``index`` (adaptive solvers: from ``state``)."""
        return torch.full((batch,), self._timestep_list[index], dtype=torch.long, device=device)

    def _finished(self, state: tuple[Any, ...]) -> bool:
        """Whether the run ends before its positions do (an adaptive solver that reached 0)."""
        return False

    def _model_step(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        index: int | torch.Tensor,
        noise: torch.Tensor | None,
        state: tuple[torch.Tensor, ...],
        continuing: torch.Tensor,
        nonfinite: torch.Tensor,
        tables: _DeviceTables,
        kwargs: dict[str, Any],
        guidance_scale: float | None,
        guidance: GuidanceOptions | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """The loop body, compiled as one graph: model call, guidance, update, finiteness flag.

        ``t`` is the ``(B,)`` model timestep; ``index`` the position, an int or a ``(B,)`` tensor.
        """
        model_output = self._call_model(model, x, t, kwargs, guidance_scale, guidance)
        coefficients = self._coefficients(index, tables, x)
        x_next, x0, state = self._update(
            coefficients, index, tables, model_output, x, noise, state, continuing
        )
        # one float32 sum per tensor: NaN or inf anywhere makes it non-finite (a cheap check)
        sums = torch.stack([model_output.sum(dtype=torch.float32), x_next.sum(dtype=torch.float32)])
        bad = ~torch.isfinite(sums)
        position = index if isinstance(index, int) else index[0]
        nonfinite = torch.where((nonfinite < 0) & bad, position, nonfinite)
        return x_next, x0, state, nonfinite

    def _first_compiled_call(self, step: Callable, arguments: tuple) -> tuple:
        """Run the compiled step the first time; if tracing fails, rerun it eagerly so that the
        user sees our error (a bad model output shape, ...) rather than the compiler's."""
        try:
            return step(*arguments)
        except Exception as compile_error:
            self._model_step(*arguments)  # raises the eager error, if there is one
            raise compile_error

    def _compiled_step(self, device_type: str) -> Callable:
        """The one place that compiles: the loop body, never the user's model in place.

        On CUDA the compiled step also runs as a CUDA graph (``mode="reduce-overhead"``).
        """
        compiled = self._compiled.get(device_type)
        if compiled is None:
            mode = "reduce-overhead" if device_type == "cuda" else None
            compiled = torch.compile(self._model_step, fullgraph=True, dynamic=False, mode=mode)
            self._compiled[device_type] = compiled
        return compiled

    def _call_model(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        t: torch.Tensor,
        kwargs: dict[str, Any],
        guidance_scale: float | None,
        guidance: GuidanceOptions | None = None,
    ) -> torch.Tensor:
        """Call the model; with guidance, once on ``[x, x]`` and combine the two halves.

        A model whose output has a ``.sample`` tensor (a diffusers model) is unwrapped here.
        """
        batch = x.shape[0]
        if guidance_scale is None:
            model_output = _unwrap(model(x, t, **kwargs))
            self._check_output(model_output, x, batch)
            return model_output
        model_output = _unwrap(model(torch.cat([x, x]), torch.cat([t, t]), **kwargs))
        self._check_output(model_output, x, 2 * batch)
        cond, uncond = model_output[:batch], model_output[batch:]
        if not self._learns_variance:
            return apply_guidance(cond, uncond, t, guidance_scale, guidance)
        # guide the prediction half only; keep the conditional variance values
        channels = x.shape[1]
        guided = apply_guidance(
            cond[:, :channels], uncond[:, :channels], t, guidance_scale, guidance
        )
        return torch.cat([guided, cond[:, channels:]], dim=1)

    # ------------------------------------------------------------------ helpers
    @property
    def _learns_variance(self) -> bool:
        return self.learn_sigma

    def _expected_output_shape(self, x: torch.Tensor, batch: int) -> tuple[int, ...]:
        if self._learns_variance:
            return (batch, 2 * x.shape[1], *x.shape[2:])
        return (batch, *x.shape[1:])

    def _check_output(self, model_output: Any, x: torch.Tensor, batch: int) -> None:
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(
                f"model must return a torch.Tensor; got {type(model_output).__name__} "
                "(wrap models that return an output object, e.g. lambda x, t: unet(x, t).sample)"
            )
        expected = self._expected_output_shape(x, batch)
        if tuple(model_output.shape) != expected:
            what = "twice the channels of x_t" if self._learns_variance else "the shape of x_t"
            raise ValueError(
                f"model returned shape {tuple(model_output.shape)}; expected {expected} "
                f"({what}, batch {batch})"
            )

    def _process_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding, else clipping to ``[-1, 1]``, else nothing."""
        if self.dynamic_threshold is not None:
            return dynamic_threshold(x0, self.dynamic_threshold)
        if self.clip_denoised:
            return x0.clamp(-1.0, 1.0)
        return x0

    def _split(
        self, model_output: torch.Tensor, x_t: torch.Tensor, alpha: Any, sigma: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` from the prediction half of the model output at ``(alpha, sigma)``."""
        if self.learn_sigma:
            model_output = model_output[:, : x_t.shape[1]]
        return x0_eps_from_prediction(self.prediction, model_output, x_t, alpha, sigma)

    @property
    def _clamps(self) -> bool:
        """Whether ``x0`` is kept in ``[-1, 1]`` (clipping or dynamic thresholding)."""
        return self.clip_denoised or self.dynamic_threshold is not None

    def _clamped_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, alpha: Any, sigma: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` for the update: ``x0`` clipped or thresholded (:meth:`_process_x0`),
        and, when it is and ``use_clipped_model_output``, the ``eps`` that matches it at
        ``x_t``: ``eps = (x_t - alpha x0) / sigma``. Without clamping, the model's pair."""
        x0, eps = self._split(model_output, x_t, alpha, sigma)
        if not self._clamps:
            return x0, eps
        x0 = self._process_x0(x0)
        if self.use_clipped_model_output:
            eps = (x_t - alpha * x0) / sigma
        return x0, eps

    def _coefficients(
        self, index: int | torch.Tensor, tables: _DeviceTables, like: torch.Tensor
    ) -> Sequence[Any]:
        """This position's row: python floats for an int, ``(B, 1, ..., 1)`` tensors otherwise."""
        if isinstance(index, int):
            return self._rows[index]
        rows = tables.coefficients[index]  # (B, K)
        return rows.t().reshape(rows.shape[1], rows.shape[0], *((1,) * (like.ndim - 1))).unbind(0)

    def _tables(self, device: torch.device, dtype: torch.dtype) -> _DeviceTables:
        key = (torch.device(device), dtype)
        tables = self._device_tables.get(key)
        if tables is None:
            positions = torch.full((self.schedule.num_timesteps,), -1, dtype=torch.long)
            positions[self._timesteps] = torch.arange(len(self._timesteps))
            tables = _DeviceTables(
                coefficients=self._coefficients64.to(device=device, dtype=dtype),
                timesteps=self._timesteps.to(device),
                positions=positions.to(device),
                schedule=self._schedule_on(device),
            )
            self._device_tables[key] = tables
        return tables

    def _schedule_on(self, device: torch.device) -> NoiseSchedule:
        """The schedule the update reads (a copy moved to ``device``; the user's is untouched)."""
        schedule = self._update_schedule()
        if schedule.device == torch.device(device):
            return schedule
        return copy.copy(schedule).to(device)

    def _update_schedule(self) -> NoiseSchedule:
        return self.schedule

    def _position(self, t: Any, x_t: torch.Tensor) -> int | torch.Tensor:
        """Map a timestep to its position: an int for an int, a ``(B,)`` tensor otherwise."""
        if isinstance(t, torch.Tensor) and t.ndim == 0 and t.device.type == "cpu":
            t = int(t)
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):
            position = self._position_of.get(int(t))
            if position is None:
                raise ValueError(self._not_a_timestep(f"got t={int(t)}"))
            return position
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(
                f"t must be an int or an integer tensor of timesteps; got "
                f"{type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}"
            )
        batch = x_t.shape[0]
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) to match x_t; got {tuple(t.shape)}")
        t = t.to(x_t.device).long()
        num_timesteps = self.schedule.num_timesteps
        inside = t.clamp(0, num_timesteps - 1)
        positions = self._tables(x_t.device, x_t.dtype).positions[inside]
        valid = (t == inside) & (positions >= 0)
        if t.device.type == "cpu":
            if not bool(valid.all()):
                raise ValueError(self._not_a_timestep(f"got t={t.tolist()}"))
        else:
            torch._assert_async(valid.all())
        return positions

    def _not_a_timestep(self, received: str) -> str:
        shown = self._timestep_list if len(self._timestep_list) <= 12 else (
            [*self._timestep_list[:6], "...", *self._timestep_list[-3:]]
        )
        return f"t must be one of this sampler's timesteps {shown}; {received}"

    def _recall(
        self, index: int | torch.Tensor, x_t: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], float | torch.Tensor]:
        """The state of the previous :meth:`step` call, and whether this call continues it."""
        memory = self._step_memory
        if memory is None or memory[2] != x_t.shape or not memory[1]:
            return self._initial_state(x_t), 0.0
        last, state, _ = memory
        if isinstance(index, int) and isinstance(last, int):
            return state, float(index == last + 1)
        last = torch.as_tensor(last, device=x_t.device)
        continuing = (torch.as_tensor(index, device=x_t.device) == last + 1).to(x_t.dtype)
        return state, continuing.reshape(-1, *((1,) * (x_t.ndim - 1)))

    def _starting_noise(
        self,
        model: Any,
        shape: Sequence[int] | None,
        x_T: torch.Tensor | None,
        generator: torch.Generator | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> torch.Tensor:
        if shape is not None:
            if isinstance(shape, torch.Size):
                shape = tuple(shape)
            if (
                not isinstance(shape, (tuple, list))
                or len(shape) < 1
                or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                           and int(s) > 0 for s in shape)
            ):
                raise ValueError(f"shape must be a tuple of positive ints (B, ...); got {shape!r}")
            shape = tuple(int(s) for s in shape)
        if x_T is not None:
            check_floating("x_T", x_T)
            if shape is not None:
                if shape[0] != x_T.shape[0]:
                    raise ValueError(
                        f"shape has batch size {shape[0]} but x_T has batch size {x_T.shape[0]}; "
                        f"shape must equal x_T.shape {tuple(x_T.shape)}"
                    )
                if shape != tuple(x_T.shape):
                    raise ValueError(f"shape {shape} must equal x_T.shape {tuple(x_T.shape)}")
            return x_T
        if shape is None:
            raise ValueError("shape must be given when x_T is None; got shape=None")
        if device is None:
            device = _model_device(model)
        if dtype is None:
            dtype = torch.get_default_dtype()
        return randn(shape, generator, torch.device(device), dtype)

    def _model_kwargs(
        self,
        model_kwargs: Mapping[str, Any] | None,
        unconditional_kwargs: Mapping[str, Any] | None,
        guidance_scale: float | None,
        batch: int,
    ) -> dict[str, Any]:
        """The kwargs of every model call; with guidance, conditional and unconditional batched."""
        for name, value in (("model_kwargs", model_kwargs),
                            ("unconditional_kwargs", unconditional_kwargs)):
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a dict or None; got {type(value).__name__}")
        for name, value in (("model_kwargs", model_kwargs),
                            ("unconditional_kwargs", unconditional_kwargs)):
            for key, entry in (value or {}).items():  # a NaN condition is refused here
                if isinstance(entry, torch.Tensor):
                    check_finite(f"{name}[{key!r}]", entry)
        cond = dict(model_kwargs or {})
        for key, value in cond.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] != batch:
                raise ValueError(
                    f"model_kwargs[{key!r}] has batch size {value.shape[0]}; expected {batch} "
                    f"(the batch of the samples)"
                )
        if guidance_scale is None:
            if unconditional_kwargs is not None:
                raise ValueError("unconditional_kwargs is only used with guidance_scale; got None")
            return cond
        return guidance_kwargs(cond, unconditional_kwargs, batch)

    def _raise_if_nonfinite(self, nonfinite: torch.Tensor) -> None:
        model_position, sample_position = (int(v) for v in nonfinite.tolist())
        if model_position >= 0:
            raise FloatingPointError(self._nonfinite_message("the model output", model_position))
        if sample_position >= 0:
            raise FloatingPointError(self._nonfinite_message("the sample", sample_position))

    def _nonfinite_message(self, what: str, position: int) -> str:
        return (
            f"{what} contains NaN or inf at step {position + 1} of {self.num_steps} "
            f"(t = {self._timestep_list[position]}); {type(self).__name__} stopped instead of "
            f"returning a non-finite sample"
        )


def _unwrap(model_output: Any) -> Any:
    """The tensor of a diffusers output object (``UNet2DOutput.sample``); anything else as is."""
    if not isinstance(model_output, torch.Tensor):
        sample = getattr(model_output, "sample", None)
        if isinstance(sample, torch.Tensor):
            return sample
    return model_output


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
    return value


def _check_guidance_scale(guidance_scale: Any) -> float | None:
    if guidance_scale is None:
        return None
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
        raise TypeError(
            f"guidance_scale must be a float or None; got {type(guidance_scale).__name__}"
        )
    if not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale must be finite; got {guidance_scale!r}")
    return float(guidance_scale)


def _check_guidance_options(
    guidance_scale: float | None, guidance_rescale: Any, guidance_interval: Any
) -> GuidanceOptions | None:
    """Validate ``guidance_rescale`` and ``guidance_interval``; ``None`` when both are off."""
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, numbers.Real):
        raise TypeError(
            f"guidance_rescale must be a float in [0, 1]; got {type(guidance_rescale).__name__}"
        )
    if not 0.0 <= float(guidance_rescale) <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1]; got {guidance_rescale!r}")
    interval = None
    if guidance_interval is not None:
        if (
            not isinstance(guidance_interval, (tuple, list))
            or len(guidance_interval) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                       for v in guidance_interval)
        ):
            raise TypeError(
                "guidance_interval must be a pair (t_lo, t_hi) of model timesteps or None; "
                f"got {guidance_interval!r}"
            )
        low, high = (float(v) for v in guidance_interval)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"guidance_interval must be finite; got {tuple(guidance_interval)}")
        if low > high:
            raise ValueError(
                f"guidance_interval must have t_lo <= t_hi; got {tuple(guidance_interval)}"
            )
        interval = (low, high)
    if guidance_scale is None and (guidance_rescale or interval is not None):
        raise ValueError(
            "guidance_rescale and guidance_interval modify classifier-free guidance and need "
            f"guidance_scale; got guidance_scale=None with guidance_rescale={guidance_rescale!r}, "
            f"guidance_interval={guidance_interval!r}"
        )
    if not guidance_rescale and interval is None:
        return None
    return GuidanceOptions(float(guidance_rescale), interval)


def _resolve_compile(compile: Any, device: torch.device) -> bool:
    if not any(compile is choice or (isinstance(compile, str) and compile == choice)
               for choice in COMPILE_CHOICES):
        raise ValueError(f"compile must be 'auto', True or False; got {compile!r}")
    if compile == "auto":
        return device.type == "cuda"
    return bool(compile)


def _model_device(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for buffer in model.buffers():
            return buffer.device
    return torch.device("cpu")
