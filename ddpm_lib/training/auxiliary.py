"""The trainable parts of a loss (a GAN discriminator), trained by the Trainer through one hook.

A loss with parts of its own declares them and computes their losses; the Trainer does the
rest, the same way it does for the model (see :class:`ddpm_lib.Trainer`'s "Losses with
trainable parts")::

    loss_fn.auxiliary_modules() -> {name: (module, adam_options)}     once, at construction
    loss_fn.auxiliary_loss(name) -> scalar tensor | None               after each model step

:class:`AuxiliaryParts` owns, per part, the Adam optimizer (fused where the main one is,
unless ``adam_options`` says otherwise) and a ``GradScaler`` (active under float16 mixed
precision); it places the module on the Trainer's device, gives every process rank 0's
weights, averages the gradients over processes and saves / restores the optimizer and scaler
states in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ddpm_lib.training.distributed import DistributedInfo

__all__ = ["AuxiliaryParts"]


class AuxiliaryParts:
    """The optimizers and grad scalers of a loss's trainable parts (none for most losses).

    Args:
        loss_fn: the Trainer's loss; parts come from its ``auxiliary_modules()`` if it has one.
        dist_info: this process's place (device, world size).
        fp16: float16 mixed precision (the scalers are active).
        fused: the default of Adam's ``fused`` (the main optimizer's choice).
    """

    def __init__(self, loss_fn: Any, dist_info: DistributedInfo, *, fp16: bool,
                 fused: bool | None) -> None:
        self.dist = dist_info
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        declared = getattr(loss_fn, "auxiliary_modules", None)
        parts = declared() if callable(declared) else {}
        if not isinstance(parts, Mapping):
            raise TypeError(f"loss_fn.auxiliary_modules() must return a dict; got {type(parts).__name__}")
        if parts and not callable(getattr(loss_fn, "auxiliary_loss", None)):
            raise TypeError("a loss_fn with auxiliary_modules() must have auxiliary_loss(name)")
        device = dist_info.device
        for name, part in parts.items():
            if not (isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], nn.Module)
                    and isinstance(part[1], Mapping)):
                raise TypeError(
                    f"loss_fn.auxiliary_modules()[{name!r}] must be (nn.Module, dict of Adam "
                    f"options); got {part!r}"
                )
            module, options = part
            module.to(device)
            params = list(module.parameters())
            self.modules[name] = module
            self.optimizers[name] = torch.optim.Adam(params, **{"fused": fused, **options})
            self.scalers[name] = torch.amp.GradScaler(device.type, enabled=fp16)

    def __bool__(self) -> bool:
        return bool(self.modules)

    def synchronize(self) -> None:
        """Give every process rank 0's weights (buffers too); nothing on one process."""
        if not self.dist.enabled:
            return
        with torch.no_grad():
            for module in self.modules.values():
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=0)

    def step(self, loss_fn: Any, autocast: Callable[[], AbstractContextManager[Any]]) -> None:
        """One optimizer step of every part whose ``loss_fn.auxiliary_loss(name)`` is a loss
        (computed inside ``autocast()``); gradients are averaged over processes."""
        for name, module in self.modules.items():
            optimizer, scaler = self.optimizers[name], self.scalers[name]
            module.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn.auxiliary_loss(name)
            if loss is None:
                continue
            scaler.scale(loss).backward()
            if self.dist.enabled:
                for parameter in module.parameters():
                    if parameter.grad is not None:
                        dist.all_reduce(parameter.grad)
                        parameter.grad /= self.dist.world_size
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """``{name: {"optimizer": ..., "scaler": ...}}`` for the checkpoint."""
        return {name: {"optimizer": self.optimizers[name].state_dict(),
                       "scaler": self.scalers[name].state_dict()} for name in self.modules}

    def load_state_dict(self, state: Mapping[str, Any] | None, loss_state: Any = None) -> None:
        """Restore :meth:`state_dict`'s output. ``state=None`` (a checkpoint of a version whose
        loss kept its own optimizer: ``loss_state["optimizer"]`` / ``["scaler"]`` of its one
        part) is converted; without either, the optimizers start afresh."""
        if state is None:
            if not (isinstance(loss_state, Mapping) and "optimizer" in loss_state):
                return
            if len(self.modules) != 1:
                raise ValueError("the loss's saved optimizer state is of one trainable part; "
                                 f"this loss has {len(self.modules)}")
            state = {next(iter(self.modules)): {"optimizer": loss_state["optimizer"],
                                                "scaler": loss_state.get("scaler") or {}}}
        if set(state) != set(self.modules):
            raise ValueError(f"the saved trainable parts of the loss are {sorted(state)}; this "
                             f"loss has {sorted(self.modules)}")
        for name, saved in state.items():
            self.optimizers[name].load_state_dict(saved["optimizer"])
            if saved["scaler"]:
                self.scalers[name].load_state_dict(saved["scaler"])
