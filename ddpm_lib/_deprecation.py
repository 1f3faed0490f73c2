"""Deprecation paths shared by the public classes.

:func:`keyword_only_after` lets a constructor that became keyword-only after its first
arguments accept the positional calls of the previous release for one more release, with a
``DeprecationWarning`` that names the keyword each positional value became.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ddpm_lib._checks import is_int

F = TypeVar("F", bound=Callable[..., None])


def keyword_only_after(
    legacy: Sequence[str], positional: Sequence[str] = ("num_steps",), first: str = "schedule"
) -> Callable[[F], F]:
    """Decorate ``__init__(self, first, *positional, *, ...)`` to accept the old positional order.

    Args:
        legacy: the names of the parameters after the first one, in their positional order of
            the previous release.
        positional: the names that stay positional after the first one (``num_steps``).
        first: the name of the first parameter (for the message).

    A call whose positional values fit ``positional`` passes through untouched: where the old
    order put another parameter there (``DDPMSampler(schedule, variance)``), the value is
    taken as the new ``positional`` one when it could be one (an int or ``None``). Any other
    positional value is passed by the name it had in ``legacy``, with a ``DeprecationWarning``
    naming that keyword; a value given both ways is a ``TypeError``, as in Python.
    """
    legacy, positional = tuple(legacy), tuple(positional)
    kept = 0  # the leading positions that mean the same in both orders
    while kept < len(positional) and kept < len(legacy) and legacy[kept] == positional[kept]:
        kept += 1

    def decorate(init: F) -> F:
        @functools.wraps(init)
        def wrapper(self: Any, leading: Any, *args: Any, **kwargs: Any) -> None:
            if _fits(args, positional, kept):
                return init(self, leading, *args, **kwargs)
            name = type(self).__name__
            if len(args) > len(legacy):
                raise TypeError(
                    f"{name}() takes at most {len(legacy) + 1} positional arguments after self "
                    f"({len(args) + 1} given); pass the options by keyword"
                )
            moved = dict(zip(legacy[kept:], args[kept:]))
            for key in moved:
                if key in kwargs:
                    raise TypeError(f"{name}() got multiple values for argument {key!r}")
            given = ", ".join(f"{key}={value!r}" for key, value in moved.items())
            warnings.warn(
                f"positional arguments after {' and '.join((first, *positional))} are "
                f"deprecated and become keyword-only in the next release: {name} got {given} "
                f"positionally; pass {', '.join(moved)} by keyword",
                DeprecationWarning,
                stacklevel=2,
            )
            return init(self, leading, *args[:kept], **moved, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _fits(args: tuple[Any, ...], positional: tuple[str, ...], kept: int) -> bool:
    """Whether ``args`` are the new positional values (see :func:`keyword_only_after`)."""
    if len(args) > len(positional):
        return False
    return all(value is None or is_int(value) for value in args[kept:])
