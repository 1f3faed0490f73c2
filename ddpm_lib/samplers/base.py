"""What every sampler shares: its timesteps, its coefficient table, ``step`` and the public
runs (``sample``, ``img2img``, ``inpaint``) that hand a :class:`~ddpm_lib.samplers.loop.RunSpec`
to the one loop (``ddpm_lib.samplers.loop``; guidance in ``ddpm_lib.samplers.guidance``).

A sampler is a list of model timesteps (:attr:`Sampler.timesteps`, descending) and an update
that maps ``(x_t, model output)`` at one timestep to the sample at the next. The loop owns
everything else: the initial noise (or a given ``x_T``), calling the model, classifier-free
guidance, the progress bar, the trajectory, the check for non-finite values and compilation.

Notation (Ho et al. 2020; Song et al. 2021; Lu et al. 2022), with 0-based timesteps:

=====================  ==============================================================
``alpha`` (a_t)         sqrt(abar_t), the signal scale of ``x_t = a_t x0 + s_t eps``
``sigma`` (s_t)         sqrt(1 - abar_t), the noise scale
``x0``, ``eps``         the model's estimates of the clean sample and of the noise
``index`` / position    where a step sits in :attr:`Sampler.timesteps` (0 = noisiest)
=====================  ==============================================================

The names that lived here before the split (``SampleTrajectory``, ``GuidanceOptions``,
``apply_guidance``, ``rescale_guidance``, ``randn``, ...) are still importable from here.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .._checks import (
    check_bool,
    check_choice,
    check_finite,
    check_floating,
    check_real,
    check_tensor,
    is_int,
)
from ..conditioning import NULL_CLASS, guidance_kwargs  # noqa: F401 (NULL_CLASS: as before)
from ..schedule import (
    PREDICTION_TYPES,
    NoiseSchedule,
    x0_eps_from_prediction,
)
from .grids import (  # noqa: F401 (SPACINGS, spaced_timesteps, check_num_steps: as before)
    SPACINGS,
    check_num_steps,
    check_timestep_list,
    grid_timesteps,
    spaced_timesteps,
)
from .guidance import (  # noqa: F401 (re-exported: these lived here before)
    GuidanceOptions,
    _check_guidance_options,
    _check_guidance_scale,
    apply_guidance,
    rescale_guidance,
)
from .inpaint import inpaint_run
from .loop import (  # noqa: F401 (re-exported: these lived here before)
    COMPILE_CHOICES,
    NONFINITE_CHECK_EVERY,
    RunOptions,
    RunSpec,
    SampleTrajectory,
    SamplingLoop,
    _DeviceTables,
    _model_device,
    _unwrap,
    check_generator,
    randn,
    starting_noise,
)


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


class Sampler(SamplingLoop):
    """Base class of the samplers: runs the one loop; a subclass defines timesteps and update.

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
    multistep solver). A sampler that cannot take single steps, start later or follow a plan
    sets ``supports_step`` / ``supports_img2img`` / ``supports_inpaint`` (and
    ``supports_compile``) to ``False``: see :class:`~ddpm_lib.samplers.loop.SamplingLoop`.
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
        options = RunOptions.from_arguments(locals())
        x = starting_noise(model, shape, x_T, generator, device, dtype)
        return self._run(RunSpec(model, x, options))

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
        self._require("img2img")
        options = RunOptions.from_arguments(locals())
        check_floating("x0", x0)
        check_real("strength", strength, 0, 1, open_min=True)
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
        return self._run(RunSpec(model, x_t, options, start=start))

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
        self._require("inpaint")
        options = RunOptions.from_arguments(locals())
        x_T, plan, hook = inpaint_run(
            self.schedule, self._timestep_list, image, mask, resample, jump_length, x_T,
            generator,
        )
        return self._run(RunSpec(model, x_T, options, plan=plan, hook=hook))

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
        self._require("step")
        check_floating("x_t", x_t)
        check_tensor("model_output", model_output)
        self._check_output(model_output, x_t, x_t.shape[0])
        index = self._position(t, x_t)
        if self._uses_noise:
            if noise is None:
                noise = randn(x_t.shape, check_generator(generator), x_t.device, x_t.dtype)
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

    # ------------------------------------------------------------------ helpers
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
        if is_int(t):
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


_check_bool = check_bool  # the name samplers in other modules import
