"""The sampling loop, written once: what a run is and how it is carried out.

A run is described by one object, :class:`RunSpec`: the model, the starting sample and its
position, the shared run options (:class:`RunOptions`: generator, model kwargs, guidance,
progress, trajectory, compilation) and, for runs that are not "every position once, in order",
a plan of positions and a :class:`RunHook` (inpainting's replacement and jumps back).
:class:`SamplingLoop`, the base of :class:`~ddpm_lib.samplers.base.Sampler`, carries it out:
model call, classifier-free guidance, the sampler's update, the non-finite check and
compilation, in one loop body that compiles once per shape.

The hot loop is free of host synchronisation: every per-step coefficient is read from a
table on the sample's device, indexed by a ``(B,)`` tensor of positions; the noise of each
step is drawn eagerly from the ``torch.Generator`` and passed in; non-finite values are
recorded in a device flag that is read every ``NONFINITE_CHECK_EVERY`` steps and at the end.

Dependencies are one-way: ``guidance`` <- ``loop`` <- ``inpaint`` <- ``base``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from .._checks import check_floating, is_int
from ..schedule import NoiseSchedule
from .guidance import (
    GuidanceOptions,
    _check_guidance_options,
    _check_guidance_scale,
    apply_guidance,
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


@dataclass(frozen=True, eq=False)
class RunOptions:
    """The run and guidance arguments that ``sample``, ``img2img``, ``inpaint`` and ``invert``
    share, declared once (their meaning: :meth:`Sampler.sample
    <ddpm_lib.samplers.Sampler.sample>`). They are checked when the run starts."""

    generator: torch.Generator | None = None
    model_kwargs: Mapping[str, Any] | None = None
    guidance_scale: float | None = None
    unconditional_kwargs: Mapping[str, Any] | None = None
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    progress: bool = False
    return_trajectory: bool = False
    compile: bool | str = "auto"

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> RunOptions:
        """The options among a public method's arguments (its ``locals()``); the others are
        ignored, the missing ones take their defaults. The generator is checked here, first."""
        names = [field.name for field in fields(cls)]
        options = cls(**{name: arguments[name] for name in names if name in arguments})
        check_generator(options.generator)
        return options


class RunHook(Protocol):
    """What a run with a plan calls (inpainting's :class:`~ddpm_lib.samplers.inpaint.Replacement`).

    Levels are positions of the sampler's timesteps; level ``len(timesteps)`` is clean data.
    """

    def start(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The sample before the first step, at ``level``."""
        ...

    def after_step(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The sample after the step that reached ``level``."""
        ...

    def jump(self, x: torch.Tensor, level: int, back_to: int) -> torch.Tensor:
        """The sample re-noised from ``level`` up to the noisier ``back_to``."""
        ...


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One run of the loop.

    Attributes:
        model: the model, ``model(x_t, t, **model_kwargs)``.
        x: the sample ``(B, ...)`` at position ``start`` (its device and dtype are the run's).
        options: generator, model kwargs, guidance, progress, trajectory, compilation.
        start: the first position of :attr:`Sampler.timesteps` visited (img2img: later than 0).
        plan: the positions visited, in order, instead of ``start, start + 1, ...`` (a run with
            jumps back, RePaint's resampling); ``None`` for the sampler's own positions.
        hook: called before the first step, after each step and at each jump back.
    """

    model: Callable[..., torch.Tensor]
    x: torch.Tensor
    options: RunOptions
    start: int = 0
    plan: Iterable[int] | None = None
    hook: RunHook | None = None


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


def check_generator(generator: Any) -> torch.Generator | None:
    """``generator`` if it is a ``torch.Generator`` or ``None``, else a TypeError naming it."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None; got {type(generator).__name__}"
        )
    return generator


def starting_noise(
    model: Any,
    shape: Sequence[int] | None,
    x_T: torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """``x_T`` when given (checked against ``shape``), else ``N(0, I)`` noise of ``shape``."""
    if shape is not None:
        if isinstance(shape, torch.Size):
            shape = tuple(shape)
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) < 1
            or not all(is_int(s)
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


class SamplingLoop:
    """The loop of :class:`~ddpm_lib.samplers.base.Sampler` (its base class): runs a
    ``RunSpec``, and declares what a sampler supports besides ``sample()``.

    A sampler that cannot do something sets the flag to ``False`` (as a class attribute, or
    per instance when it depends on the configuration) and says why in
    ``_capability_reason()``; the public methods ask ``_require()``.
    """

    #: ``step()`` on single steps (a custom loop)
    supports_step: bool = True
    #: ``img2img()`` (a run from a later position)
    supports_img2img: bool = True
    #: ``inpaint()`` (a run with a plan and a hook)
    supports_inpaint: bool = True
    #: ``compile=True`` (a loop body with no host decision)
    supports_compile: bool = True

    # provided by the sampler (ddpm_lib.samplers.base.Sampler)
    num_steps: int
    learn_sigma: bool
    _uses_noise: bool
    _timesteps: torch.Tensor
    _timestep_list: list[int]
    _compiled: dict[str, Callable]
    _tables: Callable[[torch.device, torch.dtype], _DeviceTables]
    _coefficients: Callable[[Any, _DeviceTables, torch.Tensor], Sequence[Any]]
    _initial_state: Callable[[torch.Tensor], tuple[Any, ...]]
    _update: Callable[..., tuple[torch.Tensor, torch.Tensor, tuple[Any, ...]]]
    _model_kwargs: Callable[..., dict[str, Any]]

    # ------------------------------------------------------------------ capabilities
    def _require(self, capability: str) -> None:
        """Raise ``NotImplementedError`` naming the sampler and the method it cannot do."""
        if not getattr(self, f"supports_{capability}"):
            raise NotImplementedError(
                f"{type(self).__name__}.{capability} is not available "
                f"({self._capability_reason(capability)})"
            )

    def _capability_reason(self, capability: str) -> str:
        """Why this sampler does not support ``capability`` (for the error message)."""
        return f"{type(self).__name__} does not support it"

    def _resolve_compile(self, compile: Any, device: torch.device) -> bool:
        if not any(compile is choice or (isinstance(compile, str) and compile == choice)
                   for choice in COMPILE_CHOICES):
            raise ValueError(f"compile must be 'auto', True or False; got {compile!r}")
        if not self.supports_compile:
            if compile is True:
                raise ValueError(
                    f"compile=True is not available with {type(self).__name__} "
                    f"({self._capability_reason('compile')})"
                )
            return False
        if compile == "auto":
            return device.type == "cuda"
        return bool(compile)

    # ------------------------------------------------------------------ the loop
    def _run(self, spec: RunSpec) -> torch.Tensor | tuple[torch.Tensor, SampleTrajectory]:
        """Carry out ``spec``: check its options, pick the (compiled) step, run the loop."""
        options, x = spec.options, spec.x
        if not callable(spec.model):
            raise TypeError(f"model must be callable; got {type(spec.model).__name__}")
        use_compile = self._resolve_compile(options.compile, x.device)
        guidance_scale = _check_guidance_scale(options.guidance_scale)
        guidance = _check_guidance_options(
            guidance_scale, options.guidance_rescale, options.guidance_interval
        )
        kwargs = self._model_kwargs(
            options.model_kwargs, options.unconditional_kwargs, guidance_scale, x.shape[0]
        )
        constants = (self._tables(x.device, x.dtype), kwargs, guidance_scale, guidance)
        if use_compile:
            step = self._compiled_step(x.device.type)
        else:
            step = self._model_step
        return self._iterate(spec, step, use_compile, constants)

    def _iterate(
        self, spec: RunSpec, step: Callable, use_compile: bool, constants: tuple
    ) -> torch.Tensor | tuple[torch.Tensor, SampleTrajectory]:
        """The loop over the positions; ``constants`` are the step's last four arguments."""
        x, start, hook = spec.x, spec.start, spec.hook
        batch, device = x.shape[0], x.device
        cuda_graphs = use_compile and device.type == "cuda"
        state = self._initial_state(x)
        # first position whose model output / sample is non-finite, -1 while none is
        nonfinite = torch.full((2,), -1, dtype=torch.long, device=device)
        first = torch.zeros((), dtype=x.dtype, device=device)
        later = torch.ones((), dtype=x.dtype, device=device)
        samples: list[torch.Tensor] = [x]  # filled when return_trajectory
        predicted_x0: list[torch.Tensor] = []
        called: list[torch.Tensor] = []  # the model timestep of each call, for the trajectory

        # the positions visited: in order, or a plan with jumps back (RePaint resampling)
        positions = self._positions(start) if spec.plan is None else spec.plan
        if spec.options.progress:
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
            noise = None
            if self._uses_noise:
                noise = randn(x.shape, spec.options.generator, device, x.dtype)
            continuing: torch.Tensor | float
            if use_compile:
                continuing = later if follows else first
            else:
                continuing = 1.0 if follows else 0.0
            arguments = (spec.model, x, t, index, noise, state, continuing, nonfinite, *constants)
            if use_compile and i == start:
                x, x0, state, nonfinite = self._first_compiled_call(step, arguments)
            else:
                x, x0, state, nonfinite = step(*arguments)
            if cuda_graphs:  # the graph's outputs are overwritten by its next replay
                x, x0, nonfinite = x.clone(), x0.clone(), nonfinite.clone()
                state = tuple(s.clone() for s in state)
            if hook is not None:
                x = hook.after_step(x, i + 1)
            if spec.options.return_trajectory:
                samples.append(x)
                predicted_x0.append(x0)
                called.append(t[0])
            if (i + 1 - start) % NONFINITE_CHECK_EVERY == 0:
                self._raise_if_nonfinite(nonfinite)
            previous = i
            if self._finished(state):
                break
        self._raise_if_nonfinite(nonfinite)
        if spec.options.return_trajectory:
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

    # ------------------------------------------------------------------ the loop body
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

    # ------------------------------------------------------------------ checks
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


def _model_device(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for buffer in model.buffers():
            return buffer.device
    return torch.device("cpu")
