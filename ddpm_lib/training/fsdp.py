"""Fully sharded data parallelism (PyTorch's FSDP2, ``torch.distributed.fsdp.fully_shard``) for
the :class:`ddpm_lib.Trainer`: ``Trainer(..., parallel="fsdp")`` under ``torchrun``.

DDP keeps a whole copy of the weights, their gradients and Adam's two moments on every process;
FSDP keeps ``1 / W`` of each (``W`` processes) and gathers a block's weights just for its
forward and backward. What this module does, and where the Trainer calls it:

- :func:`shard_model` (at construction): rank 0's weights are broadcast (as DDP does), then
  every element of every ``nn.ModuleList`` (DiT's blocks, the UNet's levels), every direct
  child of the model that holds such blocks and the model itself become FSDP units, bottom-up,
  in place: the
  parameters turn into ``DTensor`` shards and ``model(x_t, t, ...)`` works unchanged.
  Gradients are averaged over processes by the reduce-scatter, as DDP's all-reduce does.
- :class:`ShardedEMA`: the weight average kept as shards too (a second sharded copy, updated
  shard by shard with no communication). :meth:`ShardedEMA.gather` assembles the full
  averaged model on rank 0 (a collective) before it is saved, sampled or exported.
- :func:`full_weights`, :func:`full_optimizer_state` (at every checkpoint, on every rank) and
  :func:`load_weights`, :func:`load_optimizer_state` (at resume): checkpoints hold the full,
  unsharded tensors, and the optimizer state in ``torch.optim``'s own layout (parameter
  indices in ``model.parameters()`` order). So a checkpoint does not depend on the number of
  processes nor on the parallelism: an FSDP run resumes on another number of processes, under
  DDP or on one process, and the other way round.

``trainer.model`` is the sharded model itself (its ``state_dict()`` holds ``DTensor`` shards):
sample from ``trainer.ema_model`` on rank 0, as the Trainer's grids and export do. Tested on
CPU with gloo (a class-conditional DiT: ``tests/test_training_fsdp.py``). A text model's encoder
is a unit of its own, called by ``encode_prompts`` before the model's forward; a text DiT
trained, sampled and exported under ``torchrun --parallel fsdp`` (by hand, not in the tests,
and its numbers were not compared with one process).

With one process there is nothing to shard over and ``parallel="fsdp"`` trains as one process.
Every function here also takes an unsharded model (then it is ``state_dict()`` and
``load_state_dict``), so the Trainer calls them whatever its parallelism.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from ddpm_lib.training.ema import EMA, unwrap_model

if TYPE_CHECKING:
    from ddpm_lib.training.trainer import Trainer

__all__ = [
    "PARALLEL",
    "ShardedEMA",
    "described_model",
    "full_optimizer_state",
    "full_value",
    "full_weights",
    "gather_ema",
    "is_sharded",
    "load_optimizer_state",
    "load_weights",
    "shard_for_training",
    "shard_model",
]

PARALLEL = ("ddp", "fsdp")


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or the module inside its wrappers) was sharded by ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap_model(model), FSDPModule)


def _units(model: nn.Module) -> Iterator[nn.Module]:
    """The modules that become FSDP units, children before parents (``fully_shard`` is applied
    bottom-up): the elements of every ``ModuleList`` (blocks), then the model's direct
    children that hold blocks (sub-networks, which may be called on their own, as a text
    encoder is by ``encode_prompts``). The rest (embeddings, final layer) belongs to the
    model's own unit."""
    seen: set[int] = set()
    for module in reversed(list(model.modules())):  # deepest first
        if isinstance(module, nn.ModuleList):
            for item in module:
                if id(item) not in seen and any(True for _ in item.parameters()):
                    seen.add(id(item))
                    yield item
    for child in model.children():  # sub-networks (a text encoder beside its UNet / DiT)
        if id(child) not in seen and not isinstance(child, nn.ModuleList) and any(
                isinstance(inner, nn.ModuleList) for inner in child.modules()):
            seen.add(id(child))
            yield child


def _broadcast_from_rank0(model: nn.Module) -> None:
    """Every process starts from rank 0's parameters and buffers (what DDP does at wrapping)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def shard_model(model: nn.Module, *, broadcast: bool = True) -> nn.Module:
    """Shard ``model`` in place over the default process group and return it.

    ``broadcast`` first copies rank 0's parameters and buffers to every process. The model
    must already be on this process's device. Its class becomes an FSDP subclass of its own
    (``isinstance(model, DiT)`` still holds) with ``DTensor`` parameters.
    """
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("shard_model needs an initialised process group (start with torchrun)")
    if broadcast:
        _broadcast_from_rank0(model)
    for unit in _units(model):
        fully_shard(unit)
    fully_shard(model)
    # Settle now which unit is the root (FSDP does it at the first forward otherwise): a text
    # model's encoder runs by itself in encode_prompts, before the model's forward, and would
    # make itself a root. (A private hook of FSDP2, checked to exist.)
    state = getattr(model, "_get_fsdp_state", None)
    if callable(state):
        state()._lazy_init()
    return model


def shard_for_training(model: nn.Module, *, ema_decay: float) -> ShardedEMA:
    """What the Trainer does with ``parallel="fsdp"``: broadcast rank 0's weights, build the
    sharded EMA from them, then shard ``model`` in place; returns the EMA."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("FSDP needs an initialised process group (start with torchrun)")
    _broadcast_from_rank0(model)
    ema = ShardedEMA(model, decay=ema_decay)
    shard_model(model, broadcast=False)
    return ema


def full_value(value: Any) -> Any:
    """A ``DTensor`` (such as ``clip_grad_norm_``'s norm of sharded gradients) as the full
    tensor on every process (a collective); anything else unchanged."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def _full_tensor(value: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """A DTensor's full tensor (a collective: every rank calls it) on the CPU where ``keep``."""
    from torch.distributed.tensor import DTensor

    full = value.full_tensor() if isinstance(value, DTensor) else value
    return full.detach().cpu().clone() if keep else None


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``full`` laid out as the DTensor ``like`` (no communication: every
    rank holds ``full``); ``full`` on ``like``'s device and dtype when ``like`` is a tensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = full.to(device=like.device, dtype=like.dtype)
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def _full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0 (on the CPU), ``{}`` elsewhere; call on every rank
    (one tensor gathered at a time)."""
    keep = dist.get_rank() == 0
    out = {}
    for key, value in model.state_dict().items():
        full = _full_tensor(value, keep)
        if full is not None:
            out[key] = full
    return out


@torch.no_grad()
def _load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unsharded state dict (held by every rank) into a sharded model; ``KeyError``
    naming the keys that are missing or unexpected, ``RuntimeError`` for a wrong shape."""
    from torch.distributed.tensor import DTensor

    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for key, target in own.items():
        full = state[key]
        shape = tuple(target.shape)  # a DTensor's shape is the full one
        if tuple(full.shape) != shape:
            raise RuntimeError(f"size mismatch for {key}: {tuple(full.shape)} in the "
                               f"checkpoint, {shape} in the model")
        local = _shard_like(full, target)
        if isinstance(target, DTensor) and isinstance(local, DTensor):
            target.to_local().copy_(local.to_local())
        else:
            target.copy_(local)


class ShardedEMA(EMA):
    """:class:`ddpm_lib.training.EMA` of a model trained with FSDP, the average sharded as the
    model is.

    Built from the model *before* it is sharded: ``sharded`` is a copy sharded the same way
    (so every average shard lies beside its parameter shard, and :meth:`update` is local).
    ``module`` is the full averaged model, plain ``nn.Module`` on rank 0 (up to date after
    :meth:`gather`, which every rank calls), the sharded copy on the other ranks. The warm-up
    and the update counter are :class:`~ddpm_lib.training.EMA`'s.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if is_sharded(model):
            raise ValueError("ShardedEMA must be built from the model before it is sharded")
        super().__init__(model, decay=decay, warmup=warmup)
        self.sharded = shard_model(copy.deepcopy(self.module), broadcast=False)
        self.sharded.requires_grad_(False)
        self._full = self.module  # plain copy: the gathered average (rank 0)
        if dist.get_rank() != 0:
            self.module = self.sharded  # no full copy off rank 0
            del self._full
        self._gathered_at = 0

    def _pairs_for(
        self, model: nn.Module
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        sharded = getattr(self, "sharded", None)
        if sharded is None:  # EMA.__init__'s check, before the copy is sharded
            return super()._pairs_for(model)
        ema_params: list[torch.Tensor] = list(sharded.parameters())
        params: list[torch.Tensor] = list(model.parameters())
        ema_buffers, buffers = list(sharded.buffers()), list(model.buffers())
        if len(ema_params) != len(params) or len(ema_buffers) != len(buffers):
            raise ValueError("model must have the same parameters and buffers as the EMA copy")
        return ema_params, params, ema_buffers, buffers

    def gather(self) -> None:
        """Assemble the full average into ``module`` on rank 0 (every rank must call it; it
        does nothing when the average has not changed since the last call)."""
        if self._gathered_at == self.num_updates and self.num_updates:
            return
        state = _full_state_dict(self.sharded)
        if dist.get_rank() == 0:
            self._full.load_state_dict(state)
        self._gathered_at = self.num_updates

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full averaged weights on rank 0 (``{}`` elsewhere); every rank calls it."""
        return _full_state_dict(self.sharded)

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load full averaged weights (held by every rank) into the shards and rank 0's copy."""
        _load_full_state_dict(self.sharded, state)
        if dist.get_rank() == 0:
            self._full.load_state_dict(state)
        self._gathered_at = -1  # gather again before the next use

    def state_dict(self) -> dict[str, Any]:
        """``{"module": full averaged state dict (rank 0), "num_updates", "decay"}``."""
        return {"module": self.full_state_dict(), "num_updates": self.num_updates,
                "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_full_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])

    def to(self, device: torch.device | str) -> EMA:
        raise RuntimeError("a ShardedEMA stays on the devices of its shards")


def gather_ema(trainer: Trainer) -> None:
    """Bring the full EMA model up to date on rank 0 (every rank calls it; a no-op unless
    the Trainer shards)."""
    if isinstance(trainer.ema, ShardedEMA):
        trainer.ema.gather()


def described_model(trainer: Trainer) -> nn.Module:
    """The model whose class and ``config`` a checkpoint records: the trained model, or under
    FSDP (on rank 0, where checkpoints are written) the plain EMA copy, since ``fully_shard``
    turns the model's class into a generated ``FSDP<Class>`` that no loader knows."""
    model = unwrap_model(trainer.model)
    if is_sharded(model) and isinstance(trainer.ema, ShardedEMA) and not is_sharded(
            trainer.ema.module):
        return trainer.ema.module
    return model


def full_weights(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    """``{"model": ..., "ema": ...}``, full state dicts (every rank calls it; complete on rank
    0, possibly empty elsewhere)."""
    model = unwrap_model(trainer.model)
    if not is_sharded(model):
        return {"model": model.state_dict(), "ema": trainer.ema.module.state_dict()}
    ema = trainer.ema
    assert isinstance(ema, ShardedEMA)
    return {"model": _full_state_dict(model), "ema": ema.full_state_dict()}


def load_weights(trainer: Trainer, weights: dict[str, dict[str, torch.Tensor]]) -> None:
    """Load full ``{"model", "ema"}`` state dicts (every rank holds them) into the Trainer's
    model and EMA, sharded or not. Raises ``RuntimeError`` / ``KeyError`` as
    ``load_state_dict`` does for weights of another model."""
    model = unwrap_model(trainer.model)
    if not is_sharded(model):
        model.load_state_dict(weights["model"])
        trainer.ema.module.load_state_dict(weights["ema"])
        return
    ema = trainer.ema
    assert isinstance(ema, ShardedEMA)
    _load_full_state_dict(model, weights["model"])
    ema.load_full_state_dict(weights["ema"])


def full_optimizer_state(trainer: Trainer) -> dict[str, Any]:
    """The optimizer's state in ``torch.optim``'s layout (``state`` and ``param_groups`` by
    parameter index), full tensors; every rank calls it (complete on rank 0, ``{}``
    elsewhere)."""
    model = unwrap_model(trainer.model)
    if not is_sharded(model):
        return trainer.optimizer.state_dict()
    local = trainer.optimizer.state_dict()  # by index, moments as DTensor shards
    keep = dist.get_rank() == 0
    state: dict[int, dict[str, Any]] = {}
    for index in sorted(local["state"]):
        moments = {}
        for key, value in local["state"][index].items():
            full = _full_tensor(value, keep) if torch.is_tensor(value) else value
            moments[key] = full
        state[index] = moments
    return {"state": state, "param_groups": local["param_groups"]} if keep else {}


def load_optimizer_state(trainer: Trainer, state: dict[str, Any]) -> None:
    """Load a state of :func:`full_optimizer_state`'s (or ``optimizer.state_dict()``'s)
    layout into the Trainer's optimizer, sharded or not; ``ValueError`` if it does not fit."""
    model = unwrap_model(trainer.model)
    if not is_sharded(model):
        trainer.optimizer.load_state_dict(state)
        return
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    sharded: dict[int, dict[str, Any]] = {}
    for index, moments in state.get("state", {}).items():
        if not 0 <= int(index) < len(params):
            raise ValueError(f"it holds the state of parameter {index}; the model has "
                             f"{len(params)}")
        param = params[int(index)]
        sharded[int(index)] = {
            key: _shard_like(value, param) if torch.is_tensor(value) and value.ndim
            and tuple(value.shape) == tuple(param.shape) else value
            for key, value in moments.items()
        }
    trainer.optimizer.load_state_dict({"state": sharded,
                                       "param_groups": state.get("param_groups", [])})
