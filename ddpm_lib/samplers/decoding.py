"""A sampler of latents that hands back decoded images (:class:`DecodingSampler`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ddpm_lib.latent import LatentDiffusion

__all__ = ["DecodingSampler"]


class DecodingSampler:
    """A sampler of latents that returns decoded images: ``sample`` draws latents with
    ``sampler`` and decodes them with ``latent_diffusion``.

    Give it to the :class:`ddpm_lib.Trainer` (``sampler=``) training on a
    :class:`LatentDataset` so that its sample grids show images, not latents. Every other
    attribute is the wrapped sampler's.
    """

    def __init__(self, sampler: Any, latent_diffusion: LatentDiffusion) -> None:
        if getattr(sampler, "clip_denoised", False):
            raise ValueError(
                "the sampler clamps x0 to [-1, 1] (clip_denoised=True), which corrupts latents; "
                "build it with clip_denoised=False"
            )
        self.sampler = sampler
        self.latent_diffusion = latent_diffusion

    def sample(self, model: Any, shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
        """``latent_diffusion.decode(sampler.sample(model, shape, **kwargs))``."""
        latents = self.sampler.sample(model, shape, **kwargs)
        if isinstance(latents, torch.Tensor):
            return self.latent_diffusion.decode(latents)
        return latents  # a trajectory: left to the caller

    def __getattr__(self, name: str) -> Any:
        sampler = self.__dict__.get("sampler")
        if sampler is None:  # during unpickling / copying, before __init__ ran
            raise AttributeError(name)
        return getattr(sampler, name)

    def __repr__(self) -> str:
        return f"DecodingSampler({self.sampler!r})"
