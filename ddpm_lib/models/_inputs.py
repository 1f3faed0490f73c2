"""Validation of the inputs every denoising network here takes (``x_t``, ``t``, class labels
``y`` and the text inputs ``context`` / ``context_mask`` / ``context_pooled``), shared by
:class:`ddpm_lib.UNet` and :class:`ddpm_lib.DiT` so that both fail with the same messages.
Under ``torch.compile`` the checks that would synchronise with the device are skipped."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import is_real
from .attention import masked_mean


def check_x(x: Any, in_channels: int, model: str) -> None:
    """``x`` must be a floating-point ``(B, in_channels, H, W)`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, {in_channels}, H, W); got {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"x has {x.shape[1]} channels but this {model} was built with "
            f"in_channels={in_channels}; got x of shape {tuple(x.shape)}"
        )


def check_timesteps(t: Any, x: torch.Tensor) -> torch.Tensor:
    """``t`` (an int, a 0-d or a ``(B,)`` tensor) as a ``(B,)`` tensor on ``x``'s device."""
    compiling = torch.compiler.is_compiling()
    batch = x.shape[0]
    if not (is_real(t) or isinstance(t, torch.Tensor)):
        raise TypeError(f"t must be a (B,) tensor of timesteps; got {type(t).__name__}")
    if not isinstance(t, torch.Tensor):
        return torch.full((batch,), t, device=x.device)
    if not compiling:
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must hold integer or real timesteps; got dtype {t.dtype}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
            raise ValueError(
                f"t must have shape ({batch},) to match x's batch; got {tuple(t.shape)}"
            )
    if t.ndim == 0:
        t = t.expand(batch)
    return t.to(x.device)


def check_labels(y: Any, batch: int, num_classes: int) -> torch.Tensor:
    """Class labels ``y``: an integer ``(B,)`` tensor in ``[0, num_classes - 1]`` or ``-1``."""
    if torch.compiler.is_compiling():
        return y
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a LongTensor of class labels; got {type(y).__name__}")
    if y.dtype.is_floating_point or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer tensor of class labels; got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"y must have shape ({batch},) to match the batch; got "
                         f"{tuple(y.shape)}")
    n = num_classes
    if y.device.type == "cpu":
        if y.numel() and (int(y.min()) < -1 or int(y.max()) >= n):
            raise ValueError(
                f"y must hold labels in [0, {n - 1}] or -1 for no label; got values in "
                f"[{int(y.min())}, {int(y.max())}]"
            )
    else:
        torch._assert_async(((y >= -1) & (y < n)).all())
    return y


def check_condition(
    network: Any, model: str, num_classes: int | None, y: Any, batch: int,
    extra: dict[str, Any],
) -> torch.Tensor | None:
    """The checked labels of a network's conditioning (``None`` for an unconditional one).

    ``model`` ("UNet", "DiT") names the architecture in the messages, ``network`` is the
    instance (its class is named for unexpected arguments); ``extra`` holds keyword arguments
    of ``forward`` that no part of the network reads (a subclass overriding embed() does).
    """
    if extra:
        raise TypeError(
            f"{type(network).__name__} got unexpected keyword arguments {sorted(extra)}; "
            "override embed() in a subclass to condition on them"
        )
    if num_classes is None:
        if y is not None:
            raise ValueError(
                f"y was given, but this {model} is unconditional (num_classes=None); build it "
                "with num_classes=N to condition on labels, or pass y=None"
            )
        return None
    if y is None:
        raise ValueError(
            f"this {model} is class-conditional (num_classes={num_classes}): pass y, a "
            f"LongTensor of shape (B,) with labels in [0, {num_classes - 1}], or -1 for no "
            "label"
        )
    return check_labels(y, batch, num_classes)


def check_context(
    context: Any, context_mask: Any, context_pooled: Any, x: torch.Tensor, context_dim: int,
    model: str,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Validate the text inputs; return them in ``x``'s dtype (mask as bool) and the pooled
    vector (the masked mean of ``context`` when not given)."""
    batch, dim = x.shape[0], context_dim
    if not torch.compiler.is_compiling():
        if context is None:
            raise ValueError(
                f"this {model} was built with context_dim={dim} and needs context=, a tensor "
                f"of shape (B, L, {dim}) (e.g. TextConditionedUNet.encode_prompts(prompts); "
                "the empty prompt '' is the unconditional input); got None"
            )
        if not isinstance(context, torch.Tensor) or not context.is_floating_point():
            received = (context.dtype if isinstance(context, torch.Tensor)
                        else type(context).__name__)
            raise TypeError(
                f"context must be a floating-point tensor of shape ({batch}, L, {dim}); got "
                f"{received}"
            )
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != dim:
            raise ValueError(
                f"context must have shape ({batch}, L, {dim}) (batch of x, context_dim="
                f"{dim}); got {tuple(context.shape)}"
            )
        if context_mask is not None:
            if not isinstance(context_mask, torch.Tensor) or context_mask.is_floating_point():
                raise TypeError(
                    "context_mask must be a bool (or 0/1 integer) tensor, True for real "
                    "tokens; got "
                    + (str(context_mask.dtype) if isinstance(context_mask, torch.Tensor)
                       else type(context_mask).__name__)
                )
            if context_mask.shape != context.shape[:2]:
                raise ValueError(
                    f"context_mask must have shape {tuple(context.shape[:2])} like context's "
                    f"first two dimensions; got {tuple(context_mask.shape)}"
                )
        if context_pooled is not None and (
            not isinstance(context_pooled, torch.Tensor)
            or context_pooled.shape != (batch, dim)
        ):
            raise ValueError(
                f"context_pooled must be a tensor of shape ({batch}, {dim}); got "
                + (str(tuple(context_pooled.shape)) if isinstance(context_pooled, torch.Tensor)
                   else type(context_pooled).__name__)
            )
    if context_mask is not None:
        context_mask = context_mask.to(device=x.device, dtype=torch.bool)
        if torch.compiler.is_compiling():
            pass
        elif context_mask.device.type == "cpu":
            if not bool(context_mask.any(dim=1).all()):
                raise ValueError(
                    "context_mask has a row without any real token (all False); every "
                    "sample needs at least one (the empty prompt '' still has its "
                    "begin/end tokens)"
                )
        else:
            torch._assert_async(context_mask.any(dim=1).all())
    context = context.to(device=x.device, dtype=x.dtype)
    if context_pooled is None:
        context_pooled = masked_mean(context, context_mask)
    return context, context_mask, context_pooled.to(device=x.device, dtype=x.dtype)
