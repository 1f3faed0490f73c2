"""Exponential moving average of a model's weights, with warm-up.

The averaged model is what DDPM samples from: Ho et al. (2020) keep an EMA with decay 0.9999.
Early in training that decay would average in the random initialisation for ~10k steps, so
the decay is warmed up as in TensorFlow's ``ExponentialMovingAverage``::

    decay_n = min(decay, (1 + n) / (10 + n))      n = updates done so far
    ema <- decay_n * ema + (1 - decay_n) * theta

Buffers (e.g. running statistics) are copied, not averaged. The update counter ``n`` is part
of the state dict, so a resumed run continues the warm-up exactly where it stopped -- the
bug of trainers that restore the averaged weights but restart the warm-up.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ddpm_lib._checks import check_probability

__all__ = ["EMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class EMA:
    """An averaged copy of ``model``: ``ema.module`` (eval mode, no gradients).

    Args:
        model: the model being trained (wrappers such as DDP are looked through).
        decay: the target decay, in ``[0, 1)``; 0.9999 in DDPM.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` for update ``n`` (0-based) instead of
            ``decay`` from the start.

    Call :meth:`update` after every optimizer step. ``state_dict()`` holds the averaged
    weights and the update counter; ``load_state_dict`` restores both.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        check_probability("decay", decay)
        source = unwrap_model(model)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        self._pairs_for(source)  # fail now, not at the first update, if the copy differs

    def _pairs_for(
        self, model: nn.Module
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        ema_params: list[torch.Tensor] = [p for p in self.module.parameters()]
        params: list[torch.Tensor] = [p for p in model.parameters()]
        ema_buffers = [b for b in self.module.buffers()]
        buffers = [b for b in model.buffers()]
        if len(ema_params) != len(params) or len(ema_buffers) != len(buffers):
            raise ValueError("model must have the same parameters and buffers as the EMA copy")
        return ema_params, params, ema_buffers, buffers

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema <- d * ema + (1 - d) * theta`` for every parameter; buffers are copied."""
        ema_params, params, ema_buffers, buffers = self._pairs_for(unwrap_model(model))
        weight = 1.0 - self.current_decay()
        floating = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
        if floating:
            ema_float = [e for e, _ in floating]
            new = [p.detach().to(e.dtype) for e, p in floating]
            torch._foreach_lerp_(ema_float, new, weight)  # e + weight * (p - e)
        for ema_buffer, buffer in zip(ema_buffers, buffers):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"module": averaged state dict, "num_updates": int, "decay": float}``."""
        return {
            "module": self.module.state_dict(),
            "num_updates": self.num_updates,
            "decay": self.decay,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the decay given at construction is kept)."""
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])

    def to(self, device: torch.device | str) -> EMA:
        """Move the averaged copy to ``device``; returns ``self``."""
        self.module.to(device)
        return self

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, warmup={self.warmup}, num_updates={self.num_updates})"
