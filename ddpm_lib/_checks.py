"""Input validation shared by every public entry point.

Each helper raises ``ValueError`` / ``TypeError`` with a message that names the argument,
the value received and what was expected, so bad input fails at the API boundary instead of
deep inside a kernel. None of them synchronises a CUDA device with the host: range checks on
accelerator tensors are queued as asynchronous device asserts, and all checks are skipped
while ``torch.compile`` traces.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, TypeGuard

import torch


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A ``TypeError``, and a ``ValueError`` too, so that code
    catching either (the CLI catches ``ValueError``) reports it."""


def is_int(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is an integer (numpy integers included, ``bool`` not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> TypeGuard[float]:
    """Whether ``value`` is a real number (ints, floats, numpy scalars; ``bool`` not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a ``bool`` (not merely truthy), else raise naming it."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool; got {type(value).__name__} {value!r}")
    return value


def _bounds(minimum: Any, maximum: Any, open_min: bool = False, open_max: bool = False) -> str:
    """``">= 1"``, ``"<= 5"``, ``"in [0, 1)"``: the range a value must lie in, in words."""
    if minimum is not None and maximum is not None:
        return f"in {'(' if open_min else '['}{minimum}, {maximum}{')' if open_max else ']'}"
    if minimum is not None:
        return f"{'>' if open_min else '>='} {minimum}"
    return f"{'<' if open_max else '<='} {maximum}"


def check_int(
    name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
    allow_none: bool = False, expected: str | None = None,
) -> Any:
    """Return ``value`` if it is an integer (``bool`` refused, numpy integers accepted) in
    ``[minimum, maximum]`` (either bound optional), or ``None`` when ``allow_none``.

    Raises :class:`ArgumentTypeError` for another type (``"num_steps must be an int; got
    float 2.5"``) and ``ValueError`` for a value out of range (``"num_steps must be >= 1;
    got 0"``). ``expected`` words both messages instead (``"a positive int"``: ``"num_classes
    must be a positive int; got 0"``).
    """
    if value is None and allow_none:
        return None
    if not is_int(value):
        raise ArgumentTypeError(f"{name} must be {expected or 'an int'}"
                                f"{' or None' if allow_none else ''}; "
                                f"got {type(value).__name__} {value!r}")
    number: Any = value
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {expected or _bounds(minimum, maximum)}; "
                         f"got {value!r}")
    return int(value)


def check_real(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None, *,
    open_min: bool = False, open_max: bool = False, finite: bool = True,
    allow_none: bool = False, expected: str | None = None,
) -> Any:
    """Return ``value`` if it is a real number (``bool`` refused; ints, floats, numpy scalars
    accepted) in the range given by ``minimum`` / ``maximum`` (``open_min`` / ``open_max``
    exclude the bound), finite unless ``finite=False``, or ``None`` when ``allow_none``.

    Raises :class:`ArgumentTypeError` for another type and ``ValueError`` for NaN, an
    infinity or a value out of range, each naming the argument, the value and the range.
    ``expected`` words the three messages instead (``"a finite float >= 0"``).
    """
    if value is None and allow_none:
        return None
    if not is_real(value):
        raise ArgumentTypeError(f"{name} must be {expected or 'a real number'}"
                                f"{' or None' if allow_none else ''}"
                                f"; got {type(value).__name__} {value!r}")
    value = value if isinstance(value, (int, float)) else float(value)  # numpy scalars
    bounds = "" if minimum is None and maximum is None else " " + _bounds(
        minimum, maximum, open_min, open_max)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be "
                         f"{expected or ('a finite ' if finite else 'a ') + 'number' + bounds}; "
                         f"got {value!r}")
    below = minimum is not None and (value <= minimum if open_min else value < minimum)
    above = maximum is not None and (value >= maximum if open_max else value > maximum)
    if below or above:
        raise ValueError(f"{name} must be "
                         f"{expected or _bounds(minimum, maximum, open_min, open_max)}; "
                         f"got {value!r}")
    return value


def check_probability(name: str, value: Any, *, allow_one: bool = False) -> float:
    """Return ``value`` as a float if it is a probability in ``[0, 1)`` (``[0, 1]`` with
    ``allow_one``): dropout rates, condition-dropout rates, EMA decays."""
    interval = "[0, 1]" if allow_one else "[0, 1)"
    if not is_real(value):
        raise ArgumentTypeError(
            f"{name} must be a float in {interval}; got {type(value).__name__} {value!r}")
    number: Any = value
    if not (0 <= number <= 1 if allow_one else 0 <= number < 1):  # NaN fails both
        raise ValueError(f"{name} must be a float in {interval}; got {value!r}")
    return float(number)


def check_int_tuple(
    name: str, value: Any, minimum: int | None = None, *, allow_empty: bool = False,
) -> tuple[int, ...]:
    """Return ``value`` as a tuple if it is a sequence (not a string) of ints each
    ``>= minimum``; empty only with ``allow_empty``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ArgumentTypeError(f"{name} must be a sequence of ints; got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    for item in value:
        check_int(f"each entry of {name}", item, minimum)
    return tuple(value)


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a ``ValueError`` naming both."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_tensor(name: str, value: Any) -> torch.Tensor:
    """Raise ``TypeError`` unless ``value`` is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    return value


def check_floating(name: str, value: Any) -> torch.Tensor:
    """Raise unless ``value`` is a floating-point tensor with a batch dimension."""
    check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {value.dtype}")
    if value.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension; got a 0-d tensor")
    return value


def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` naming ``name`` when the floating-point tensor ``value`` holds a NaN
    or an infinity (how many, and the index of the first); other dtypes pass."""
    if value.is_floating_point() or value.is_complex():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0].tolist())
            kind = "NaN" if bool(torch.isnan(value).any()) else "infinite"
            raise ValueError(f"{name} must be finite; got {int(bad.sum())} NaN or infinite "
                             f"value(s) ({kind} first at index {first}, shape "
                             f"{tuple(value.shape)})")
    return value


def check_same_shape(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``value`` has the shape of ``ref``."""
    if value.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)}; got {tuple(value.shape)}"
        )


def check_timesteps(
    t: Any, num_timesteps: int, batch_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Validate timestep indices and return them as a ``(B,)`` long tensor.

    Accepts a Python int, a 0-d integer tensor (broadcast to the batch) or an integer tensor of
    shape ``(B,)``. Values must lie in ``[0, num_timesteps - 1]``. On the CPU the range is
    checked eagerly; on an accelerator it is checked by an asynchronous device assert, so a
    compiled or CUDA-graph loop is never forced to synchronise.
    """
    if isinstance(t, bool) or not isinstance(t, (int, torch.Tensor)):
        raise TypeError(f"t must be an int or an integer torch.Tensor; got {type(t).__name__}")
    if isinstance(t, int):
        if not 0 <= t < num_timesteps:
            raise ValueError(f"t must be in [0, {num_timesteps - 1}]; got {t}")
        return torch.full((batch_size,), t, dtype=torch.long, device=device)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"t must be an integer tensor of timestep indices; got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch_size)
    elif t.ndim != 1 or t.shape[0] != batch_size:
        raise ValueError(
            f"t must have shape ({batch_size},) to match the batch; got {tuple(t.shape)}"
        )
    if torch.compiler.is_compiling():
        return t.long()
    if t.device.type == "cpu":
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
            raise ValueError(
                f"t must be in [0, {num_timesteps - 1}]; got values in "
                f"[{int(t.min())}, {int(t.max())}]"
            )
    else:
        torch._assert_async(((t >= 0) & (t < num_timesteps)).all())
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    return t.long()

