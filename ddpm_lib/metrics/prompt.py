"""Prompt adherence for the captioned shapes: read the attributes back from the pixels.

:func:`detect_shape_attributes` recovers, from an image of
:class:`ddpm_lib.data.CaptionedShapesDataset` (or a sample of a model trained on it), the five
attributes its caption names, with nothing learned:

- ``background``: the median colour of the one-pixel border, named by the nearest entry of
  the palette (:data:`ddpm_lib.data.COLORS`);
- ``color``: the median colour of the pixels farthest from the background, named the same way;
- the shape's coverage of each pixel: the pixel's colour projected on the segment from the
  background colour to the shape colour (0 = background, 1 = shape), so anti-aliased edges
  count in part;
- ``size``: the covered area against the geometric mean of the areas of :data:`ddpm_lib.data.SIZES`;
- ``position``: the centroid of the coverage against the offsets of :data:`ddpm_lib.data.POSITIONS`;
- ``kind``: template matching: each kind is rendered at the measured centroid and area, and
  the one closest to the coverage map (least squares) wins.

:func:`prompt_accuracy` is the fraction of images whose detected attributes match every
attribute their prompt stated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ddpm_lib._checks import check_floating
from ddpm_lib.conditioning import guidance_inputs

__all__ = [
    "PromptEvaluation",
    "attribute_accuracy",
    "detect_shape_attributes",
    "evaluate_prompt_accuracy",
    "prompt_accuracy",
]


def _nearest(rgb: np.ndarray, names: Sequence[str], palette: Mapping[str, Sequence[float]]) -> str:
    distances = [float(np.sum((rgb - np.asarray(palette[name])) ** 2)) for name in names]
    return names[int(np.argmin(distances))]


def _detect_one(
    image: np.ndarray,
    palette: Mapping[str, Sequence[float]],
    colors: Sequence[str],
    backgrounds: Sequence[str],
    kinds: Sequence[str],
) -> dict[str, str | None]:
    from ddpm_lib.data import POSITIONS, SIZES, render_shape, shape_area

    height, width, _ = image.shape  # (H, W, 3) in [0, 1]
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])  # (P, 3)
    background_rgb = np.median(border, axis=0)
    distance = np.linalg.norm(image - background_rgb, axis=2)  # (H, W)
    result: dict[str, str | None] = {
        "background": _nearest(background_rgb, backgrounds, palette),
        "color": None, "kind": None, "size": None, "position": None,
    }
    if distance.max() < 0.15:  # nothing stands out from the background
        return result
    core = distance >= 0.75 * distance.max()
    color_rgb = np.median(image[core], axis=0)
    result["color"] = _nearest(color_rgb, colors, palette)
    direction = color_rgb - background_rgb
    coverage = ((image - background_rgb) @ direction) / max(float(direction @ direction), 1e-6)
    coverage = np.clip(coverage, 0.0, 1.0)
    coverage[coverage < 0.1] = 0.0  # noise of a sampled background is not shape
    area = float(coverage.sum())
    if area <= 0:
        return result
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    center = (float((coverage * xs).sum() / area), float((coverage * ys).sum() / area))
    small, large = SIZES["small"], SIZES["large"]
    result["size"] = "large" if area / (height * width) > math.sqrt(small * large) else "small"
    dx, dy = center[0] / width - 0.5, center[1] / height - 0.5
    offset = max(abs(x) + abs(y) for x, y in POSITIONS.values())
    if max(abs(dx), abs(dy)) < offset / 2:
        result["position"] = "center"
    else:
        # the named position whose offset is nearest to the centroid's
        result["position"] = min(
            (name for name in POSITIONS if name != "center"),
            key=lambda name: (POSITIONS[name][0] - dx) ** 2 + (POSITIONS[name][1] - dy) ** 2,
        )
    errors = []
    for kind in kinds:
        radius = math.sqrt(area / shape_area(kind, 1.0))
        template = render_shape(kind, width, center, radius, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        errors.append(float(np.sum((template[:height, :, 0] - coverage) ** 2)))
    result["kind"] = kinds[int(np.argmin(errors))]
    return result


def detect_shape_attributes(
    images: torch.Tensor,
    *,
    palette: Mapping[str, Sequence[float]] | None = None,
    colors: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
) -> list[dict[str, str | None]]:
    """The attributes of captioned-shapes images, read from their pixels.

    Args:
        images: ``(B, 3, H, W)`` in ``[-1, 1]`` (square images).
        palette: colour name -> RGB in ``[0, 1]``; default :data:`ddpm_lib.data.COLORS`.
        colors, backgrounds: the names the shape and the background colours are chosen from
            (default: every name of the palette).
        kinds: the shape kinds considered (default :data:`ddpm_lib.data.SHAPES`).

    Returns:
        One dict per image with ``kind``, ``color``, ``background``, ``size`` and
        ``position``; all but ``background`` are ``None`` when no shape stands out.
    """
    from ddpm_lib.data import COLORS, SHAPES

    check_floating("images", images)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (B, 3, H, H); got {tuple(images.shape)}")
    palette = dict(COLORS if palette is None else palette)
    names = tuple(palette)
    colors = tuple(colors or names)
    backgrounds = tuple(backgrounds or names)
    kinds = tuple(kinds or SHAPES)
    for argument, chosen in (("colors", colors), ("backgrounds", backgrounds)):
        unknown = [name for name in chosen if name not in palette]
        if unknown:
            raise ValueError(f"{argument} must be names of the palette {names}; got {unknown}")
    arrays = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    return [_detect_one(array, palette, colors, backgrounds, kinds) for array in arrays]


def _check_attributes(images: torch.Tensor, attributes: Sequence[Mapping[str, str]]) -> None:
    if isinstance(attributes, Mapping) or not isinstance(attributes, Sequence):
        raise TypeError(f"attributes must be a sequence of dicts; got {type(attributes).__name__}")
    if len(attributes) != len(images):
        raise ValueError(
            f"attributes must have one dict per image ({len(images)}); got {len(attributes)}"
        )
    for i, record in enumerate(attributes):
        if not isinstance(record, Mapping):
            raise TypeError(f"attributes[{i}] must be a dict; got {type(record).__name__}")


def prompt_accuracy(
    images: torch.Tensor, attributes: Sequence[Mapping[str, str]], **detector_options: object
) -> float:
    """The fraction of images whose detected attributes match every one their prompt states.

    Args:
        images: ``(B, 3, H, W)`` in ``[-1, 1]``.
        attributes: one dict per image: the attributes its prompt stated (any subset of
            ``kind``, ``color``, ``background``, ``size``, ``position``; an empty dict always
            matches).
        **detector_options: passed to :func:`detect_shape_attributes`.

    Returns:
        A number in ``[0, 1]``.
    """
    _check_attributes(images, attributes)
    detected = detect_shape_attributes(images, **detector_options)  # type: ignore[arg-type]
    hits = [all(found.get(k) == v for k, v in wanted.items())
            for found, wanted in zip(detected, attributes)]
    return float(np.mean(hits)) if hits else float("nan")


def attribute_accuracy(
    images: torch.Tensor, attributes: Sequence[Mapping[str, str]], **detector_options: object
) -> dict[str, float]:
    """Per attribute, the fraction of the images that state it whose detected value matches."""
    _check_attributes(images, attributes)
    detected = detect_shape_attributes(images, **detector_options)  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for key in ("kind", "color", "background", "size", "position"):
        pairs = [(found.get(key), wanted[key]) for found, wanted in zip(detected, attributes)
                 if key in wanted]
        if pairs:
            out[key] = float(np.mean([a == b for a, b in pairs]))
    return out


class PromptEvaluation(NamedTuple):
    """What :func:`evaluate_prompt_accuracy` measured.

    Attributes:
        accuracy: fraction of samples showing every attribute their prompt stated.
        shuffled_accuracy: the same samples scored against the attributes of the prompts in
            a fixed random order: the chance level of a model that ignores the text.
        per_attribute: per stated attribute, the fraction of samples that show it.
        images: the samples ``(N, 3, H, W)`` in ``[-1, 1]``, in the order of ``attributes``.
        prompts: the prompts they were drawn for.
    """

    accuracy: float
    shuffled_accuracy: float
    per_attribute: dict[str, float]
    images: torch.Tensor
    prompts: list[str]


@torch.no_grad()
def evaluate_prompt_accuracy(
    model: Any,
    sampler: Any,
    attributes: Sequence[dict[str, str]],
    image_size: int,
    *,
    guidance_scale: float | None = None,
    languages: Sequence[str] = ("en",),
    negative_prompt: str = "",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> PromptEvaluation:
    """Sample a text-to-image model for prompts built from attributes and score them.

    Prompt ``i`` is :func:`ddpm_lib.data.shape_caption` of ``attributes[i]`` in
    ``languages[i % len(languages)]`` with sentence pattern ``i``; its sample is drawn with
    ``sampler.sample(model, ...)`` and classifier-free guidance against ``negative_prompt``
    (``guidance_scale=None``: the conditional model alone; ``0``: the unconditional model, as
    the guidance formula gives), then read back by :func:`detect_shape_attributes`.

    Args:
        model: a text-conditioned model with ``encode_prompts`` (e.g.
            :class:`ddpm_lib.TextConditionedUNet`), in eval mode.
        sampler: any ddpm_lib sampler.
        attributes: one dict of stated attributes per sample.
        image_size: side of the samples (3 channels).
        guidance_scale: classifier-free guidance weight ``w`` (``None``: no guidance).
        languages: the prompts' languages, cycled.
        negative_prompt: the unconditional prompt of guidance.
        batch_size: samples drawn at once.
        generator: the sampler's noise (default: seeded with 0).

    Returns:
        A :class:`PromptEvaluation`.
    """
    from ddpm_lib.data import shape_caption

    if not callable(getattr(model, "encode_prompts", None)):
        raise TypeError(f"model must have encode_prompts; got {type(model).__name__}")
    _check_attributes(torch.empty(len(attributes)), attributes)
    if not attributes:
        raise ValueError("attributes must not be empty")
    languages = tuple(languages)
    prompts = [
        shape_caption(dict(record), languages[i % len(languages)], i)
        for i, record in enumerate(attributes)
    ]
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        negative = [negative_prompt] * len(chunk) if guidance_scale is not None else None
        model_kwargs, unconditional, _ = guidance_inputs(
            model, prompts=chunk, negative_prompts=negative, guidance_scale=guidance_scale)
        kwargs: dict[str, Any] = {"model_kwargs": model_kwargs}
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
            kwargs["unconditional_kwargs"] = unconditional
        images.append(sampler.sample(
            model, (len(chunk), 3, image_size, image_size), generator=generator, **kwargs,
        ).cpu())
    samples = torch.cat(images)
    # a fixed random pairing of samples with prompts: the chance level
    order = torch.randperm(len(attributes), generator=torch.Generator().manual_seed(12345))
    shuffled = [attributes[int(i)] for i in order]
    return PromptEvaluation(
        accuracy=prompt_accuracy(samples, attributes),
        shuffled_accuracy=prompt_accuracy(samples, shuffled),
        per_attribute=attribute_accuracy(samples, attributes),
        images=samples,
        prompts=prompts,
    )
