"""Input validation shared by every public entry point.

Each helper raises ``ValueError`` / ``TypeError`` with a message that names the argument,
the value received and what was expected, so bad input fails at the API boundary instead of
deep inside a kernel. None of them synchronises a CUDA device with the host: range checks on
accelerator tensors are queued as asynchronous device asserts, and all checks are skipped
while ``torch.compile`` traces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


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


def check_probability(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a real number in ``[0, 1]``, else raise naming it."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1]; got {type(value).__name__}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1]; got {value!r}")
    return float(value)
