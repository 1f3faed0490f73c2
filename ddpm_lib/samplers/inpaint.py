"""Inpainting by replacement, with RePaint's resampling (Lugmayr et al. 2022), on the one loop.

The sampler runs as usual over its timesteps; the known part of the image (``mask == 1``)
joins the sample at every level the run reaches, noised to that level with the forward
process (DDPM eq. 4), and the generated part is whatever the sampler produced::

    x_{level} <- mask * q_sample(image, level) + (1 - mask) * x_{level}

At the end (the clean level) the known part is ``image`` itself. Replacement alone lets the
generated part ignore the known one (each step only sees it through ``x``); RePaint's
resampling fixes this by going back up: every ``jump_length`` levels the sample is re-noised
with ``q(x_{t'} | x_t) = N(sqrt(abar_{t'} / abar_t) x_t, (1 - abar_{t'} / abar_t) I)`` to the
level ``jump_length`` positions earlier, and that stretch is run again, ``resample - 1``
extra times (the paper's jump length ``j`` and resampling count ``r``; its Fig. 3 schedule).

The plan of positions (with its jumps back) and the :class:`Replacement` hook go into the
:class:`~ddpm_lib.samplers.loop.RunSpec` that :meth:`Sampler.inpaint
<ddpm_lib.samplers.Sampler.inpaint>` hands to the loop, which calls the hook before the first
step, after each step and at each jump; nothing here calls the model or knows the sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_finite, check_floating, check_int, check_tensor
from ..schedule import NoiseSchedule
from .loop import randn


def repaint_plan(num_positions: int, start: int, resample: int, jump_length: int) -> list[int]:
    """The positions a RePaint run visits, from ``start`` to ``num_positions - 1``.

    After the step that reaches level ``p`` (``p`` a multiple of ``jump_length`` from
    ``start``, before the end), the run goes back to position ``p - jump_length`` and repeats
    the stretch, ``resample - 1`` times; the plan then goes on. Its length is
    ``n + (resample - 1) * jump_length * floor((n - 1) / jump_length)`` for ``n`` positions.

    Returns:
        the list of positions, e.g. ``[0, 1, 0, 1, 2, 3, 2, 3, 4]`` for 5 positions with
        ``resample=2, jump_length=2``.
    """
    plan: list[int] = []
    left: dict[int, int] = {}  # level -> jumps back still to take from it
    position = start
    while position < num_positions:
        plan.append(position)
        position += 1
        level = position - start
        if position < num_positions and level % jump_length == 0:
            remaining = left.setdefault(position, resample - 1)
            if remaining > 0:
                left[position] = remaining - 1
                position -= jump_length
    return plan


class Replacement:
    """The loop's hook for inpainting: replaces the known part and re-noises at jumps.

    Levels are positions of ``sampler.timesteps``: level ``p`` is the noise level of
    timestep ``timesteps[p]``, and level ``len(timesteps)`` is the clean data.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        timesteps: Sequence[int],
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None,
    ) -> None:
        self.schedule = schedule
        self.timesteps = timesteps
        self.image = image
        self.mask = mask
        self.generator = generator

    def _noised_image(self, level: int) -> torch.Tensor:
        if level >= len(self.timesteps):
            return self.image
        noise = randn(self.image.shape, self.generator, self.image.device, self.image.dtype)
        return self.schedule.q_sample(self.image, self.timesteps[level], noise=noise)

    def _replace(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return torch.lerp(x, self._noised_image(level), self.mask)  # mask known + (1 - mask) x

    def start(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Before the first step: the known part at the starting level."""
        return self._replace(x, level)

    def after_step(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """After the step that reached ``level``: the known part at that level."""
        return self._replace(x, level)

    def jump(self, x: torch.Tensor, level: int, back_to: int) -> torch.Tensor:
        """Re-noise the whole sample from ``level`` up to the (noisier) level ``back_to``."""
        abar = self.schedule.alphas_cumprod
        ratio = float(abar[self.timesteps[back_to]] / abar[self.timesteps[level]])
        noise = randn(x.shape, self.generator, x.device, x.dtype)
        return ratio**0.5 * x + (1.0 - ratio) ** 0.5 * noise


def check_mask(mask: Any, image: torch.Tensor) -> torch.Tensor:
    """``mask`` as a tensor in the image's dtype and device; it must broadcast to ``image``."""
    check_tensor("mask", mask)
    try:
        shape = torch.broadcast_shapes(mask.shape, image.shape)
    except RuntimeError:
        shape = None
    if shape != image.shape:
        raise ValueError(
            f"mask must broadcast to the image shape {tuple(image.shape)} (e.g. (1, 1, H, W)); "
            f"got shape {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        mask = mask.to(image.dtype)
    elif not mask.is_floating_point():
        mask = mask.to(image.dtype)
    check_finite("mask", mask)  # a NaN would pass the range check below (NaN < 0 is False)
    mask = mask.to(device=image.device, dtype=image.dtype)
    if mask.numel() and (float(mask.min()) < 0 or float(mask.max()) > 1):
        raise ValueError(
            f"mask values must be in [0, 1] (1 = keep); got values in "
            f"[{float(mask.min())}, {float(mask.max())}]"
        )
    return mask


def _check_count(name: str, value: Any) -> int:
    return int(check_int(name, value, 1))


def inpaint_run(
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    image: Any,
    mask: Any,
    resample: Any,
    jump_length: Any,
    x_T: Any,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, list[int], Replacement]:
    """The checked arguments of :meth:`Sampler.inpaint <ddpm_lib.samplers.Sampler.inpaint>`
    as what its run needs: the starting noise, the RePaint plan of positions and the hook.

    ``timesteps`` are the sampler's model timesteps in the order of its positions.
    """
    check_finite("image", check_floating("image", image))
    mask = check_mask(mask, image)
    resample = _check_count("resample", resample)
    jump_length = _check_count("jump_length", jump_length)
    num_positions = len(timesteps)
    if resample > 1 and jump_length >= num_positions:
        raise ValueError(
            f"jump_length must be < the number of steps ({num_positions}) for resampling to "
            f"jump back; got jump_length={jump_length}"
        )
    if x_T is None:
        x_T = randn(image.shape, generator, image.device, image.dtype)
    else:
        check_finite("x_T", check_floating("x_T", x_T))
        if x_T.shape != image.shape:
            raise ValueError(
                f"x_T must have the shape of image {tuple(image.shape)}; got {tuple(x_T.shape)}"
            )
    plan = repaint_plan(num_positions, 0, resample, jump_length)
    return x_T, plan, Replacement(schedule, timesteps, image, mask, generator)
