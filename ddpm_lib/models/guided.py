"""Classifier-free guidance inside the model call, on chosen output channels: the original DiT
code's ``forward_with_cfg``, as a wrapper that any sampler of ddpm_lib (or any loop) can call.

The samplers guide every prediction channel (``guidance_scale=``). The DiT release guides only
the first three of the four latent channels (``cfg_channels=3``) and takes the fourth and the
variance values from the conditional prediction; :class:`GuidedModel` reproduces that, and with
``cfg_channels=None`` it equals the samplers' own guidance. It depends on nothing else in
ddpm_lib.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_int, check_real

__all__ = ["GuidedModel"]

#: the label of "no class" (the null class of classifier-free guidance)
NULL_CLASS = -1


class GuidedModel(nn.Module):
    """``model`` with classifier-free guidance (Ho & Salimans 2022) applied in each call.

    ``guided(x_t, t, y=labels)`` evaluates ``model`` once on the batch ``[x_t, x_t]`` with the
    labels ``[y, -1]`` (the null class) and returns, along dim 1,
    ``uncond + w (cond - uncond)`` for the first ``cfg_channels`` channels and the conditional
    output for the rest. Sample from it *without* the sampler's ``guidance_scale``::

        guided = GuidedModel(dit, guidance_scale=1.5, cfg_channels=3)   # the DiT release
        sampler = DDPMSampler(schedule, variance="learned_range", num_steps=250)
        x0 = sampler.sample(guided, (n, 4, 32, 32), model_kwargs={"y": labels})

    Args:
        model: ``model(x_t, t, y=..., **kwargs)``, class-conditional with the null class ``-1``.
        guidance_scale: ``w`` (1: the conditional prediction).
        cfg_channels: how many leading output channels are guided; ``None``: the channels of
            ``x_t`` (the whole prediction, the variance values of a ``learn_sigma`` model kept
            conditional), which equals the samplers' ``guidance_scale=w``.

    Other keyword arguments (tensors with a batch dimension) are repeated for both halves.
    """

    def __init__(self, model: nn.Module, guidance_scale: float, *,
                 cfg_channels: int | None = None) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be callable; got {type(model).__name__}")
        check_real("guidance_scale", guidance_scale)
        check_int("cfg_channels", cfg_channels, 1, allow_none=True)
        self.model = model
        self.guidance_scale = float(guidance_scale)
        self.cfg_channels = cfg_channels

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        """``(B, C, ...)`` -> the guided output of ``model`` (same shape as its output)."""
        if not isinstance(y, torch.Tensor):
            raise ValueError(
                "GuidedModel needs class labels y, a (B,) LongTensor (the unconditional half gets "
                f"y = {NULL_CLASS}); got {type(y).__name__}"
            )
        batch = x.shape[0]
        if not isinstance(t, torch.Tensor):
            t = torch.full((batch,), t, device=x.device)
        elif t.ndim == 0:
            t = t.expand(batch)
        both = {key: torch.cat([value, value])
                if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch
                else value for key, value in kwargs.items()}
        out = self.model(torch.cat([x, x]), torch.cat([t, t]),
                         y=torch.cat([y, torch.full_like(y, NULL_CLASS)]), **both)
        cond, uncond = out[:batch], out[batch:]
        k = x.shape[1] if self.cfg_channels is None else self.cfg_channels
        if k > out.shape[1]:
            raise ValueError(f"cfg_channels={k} exceeds the model's {out.shape[1]} output channels")
        guided = uncond[:, :k] + self.guidance_scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([guided, cond[:, k:]], dim=1)

    def extra_repr(self) -> str:
        return f"guidance_scale={self.guidance_scale}, cfg_channels={self.cfg_channels}"
