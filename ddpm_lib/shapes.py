"""Procedural shapes datasets: coloured shapes drawn from a seed, with or without captions.

- :class:`ShapesDataset`: coloured shapes (circle, square, triangle, cross) on plain
  backgrounds, generated deterministically from a seed, any size and resolution, ``(image,
  label)`` items. Demos and tests train on it without downloading anything.
- :class:`CaptionedShapesDataset`: the shapes with ``(image, caption)`` items in English or
  Chinese (:func:`shape_caption`) and a ground-truth attribute record per item, for
  text-to-image training; :data:`COLORS`, :data:`SIZES` and :data:`POSITIONS` are the words it
  draws from.

:func:`render_shape` draws one anti-aliased shape and :func:`shape_area` gives its exact area.
Everything here is re-exported by :mod:`ddpm_lib.data`, where it is documented.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm_lib._checks import check_choice, check_int

__all__ = [
    "SHAPES",
    "ShapesDataset",
    "CaptionedShapesDataset",
    "shape_caption",
    "render_shape",
    "COLORS",
    "SIZES",
    "POSITIONS",
]

# ----------------------------------------------------------------------------- shapes

SHAPES = ("circle", "square", "triangle", "cross")

# Half-widths, in units of the shape's radius, chosen so every shape covers a similar area.
_SQUARE_HALF = 0.85
_TRIANGLE_INRADIUS = 0.6  # circumradius 1.2
_CROSS_ARM_HALF = 0.33
_CROSS_HALF = 0.95


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of points ``(u, v)`` (in shape radii, v pointing down) inside ``shape``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= _SQUARE_HALF
    if shape == "triangle":
        # Equilateral, pointing up: inside all three half-planes n_k . (u, v) <= inradius,
        # outward normals at 90 (the bottom edge), 210 and 330 degrees.
        inside = np.ones(u.shape, dtype=bool)
        for degrees in (90.0, 210.0, 330.0):
            angle = math.radians(degrees)
            inside &= math.cos(angle) * u + math.sin(angle) * v <= _TRIANGLE_INRADIUS
        return inside
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= _CROSS_ARM_HALF) & (av <= _CROSS_HALF)) | (
            (av <= _CROSS_ARM_HALF) & (au <= _CROSS_HALF)
        )
    raise ValueError(f"shape must be one of {', '.join(map(repr, SHAPES))}; got {shape!r}")


def shape_area(shape: str, radius: float) -> float:
    """Exact area (in pixels^2) that :func:`render_shape` covers for a shape of ``radius``."""
    check_choice("shape", shape, SHAPES)
    if shape == "circle":
        unit = math.pi
    elif shape == "square":
        unit = (2 * _SQUARE_HALF) ** 2
    elif shape == "triangle":
        unit = 3 * math.sqrt(3) * _TRIANGLE_INRADIUS**2
    else:
        arm, half = 2 * _CROSS_ARM_HALF, 2 * _CROSS_HALF
        unit = 2 * arm * half - arm * arm
    return unit * radius * radius


def render_shape(
    shape: str,
    image_size: int,
    center: tuple[float, float],
    radius: float,
    color: Sequence[float],
    background: Sequence[float],
    supersample: int = 4,
) -> np.ndarray:
    """Draw one anti-aliased shape on a plain background.

    Args:
        shape: one of :data:`SHAPES`.
        image_size: side of the square image in pixels.
        center: ``(x, y)`` of the shape's centre in pixels (``y`` pointing down).
        radius: the shape's size in pixels (the circle's radius; see ``shape_area``).
        color, background: RGB in ``[0, 1]``.
        supersample: coverage is averaged over ``supersample^2`` points per pixel.

    Returns:
        ``float32`` array ``(H, W, 3)`` in ``[0, 1]``:
        ``background * (1 - coverage) + color * coverage``.
    """
    check_choice("shape", shape, SHAPES)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int; got {image_size!r}")
    if radius <= 0:
        raise ValueError(f"radius must be positive; got {radius!r}")
    n = image_size * supersample
    coords = (np.arange(n, dtype=np.float64) + 0.5) / supersample  # sub-pixel centres
    u, v = np.meshgrid((coords - center[0]) / radius, (coords - center[1]) / radius)  # (n, n)
    # u grows across the columns (x), v down the rows (y)
    mask = _inside(shape, u, v).astype(np.float32)
    coverage = mask.reshape(image_size, supersample, image_size, supersample).mean(axis=(1, 3))
    color_arr = np.asarray(color, dtype=np.float32)
    background_arr = np.asarray(background, dtype=np.float32)
    coverage = coverage[:, :, None]  # (H, W, 1)
    return background_arr * (1.0 - coverage) + color_arr * coverage


class ShapesDataset(Dataset):
    """Coloured shapes on plain backgrounds, generated on the fly: a dataset with no download.

    Item ``i`` is ``(image, label)``: ``image`` a float32 tensor ``(3, image_size,
    image_size)`` in ``[-1, 1]``, ``label = i % len(shapes)`` the index of the shape in
    ``shapes`` (so classes are balanced). Everything else about item ``i`` -- the shape's
    centre (jittered around the middle), size, colour (saturated, bright) and background
    colour (muted, dark) -- is drawn from a NumPy generator seeded with ``(seed, i)``, so the
    dataset is deterministic, any item can be generated alone, and different seeds give
    different datasets.

    Args:
        size: number of items (any positive int; items are not stored).
        image_size: side of the square images in pixels.
        seed: selects the dataset.
        shapes: the classes, a subset of :data:`SHAPES` in any order.
        jitter: largest offset of the centre from the middle, as a fraction of the side.
        radius_range: the shape's radius as a fraction of the side, drawn uniformly.
    """

    def __init__(
        self,
        size: int = 10_000,
        image_size: int = 32,
        seed: int = 0,
        shapes: Sequence[str] = SHAPES,
        jitter: float = 0.12,
        radius_range: tuple[float, float] = (0.22, 0.34),
    ) -> None:
        check_int("size", size, 1)
        check_int("image_size", image_size, 4)
        check_int("seed", seed, 0)
        shapes = tuple(shapes)
        if not shapes or len(set(shapes)) != len(shapes):
            raise ValueError(f"shapes must be distinct names from {SHAPES}; got {shapes!r}")
        for shape in shapes:
            check_choice("shapes", shape, SHAPES)
        if not 0.0 <= jitter < 0.5:
            raise ValueError(f"jitter must be in [0, 0.5); got {jitter!r}")
        low, high = radius_range
        if not 0.0 < low <= high < 0.5:
            raise ValueError(f"radius_range must satisfy 0 < low <= high < 0.5; got {radius_range!r}")
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.classes = list(shapes)
        self.jitter = float(jitter)
        self.radius_range = (float(low), float(high))

    def __len__(self) -> int:
        return self.size

    def describe(self, index: int) -> dict[str, Any]:
        """The parameters of item ``index``: shape, label, centre and radius (pixels), colours."""
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of size {self.size}")
        index %= self.size
        rng = np.random.default_rng([self.seed, index])
        label = index % len(self.classes)
        side = self.image_size
        offset = rng.uniform(-self.jitter, self.jitter, size=2) * side
        radius = rng.uniform(*self.radius_range) * side
        hue = rng.uniform()
        color = colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.0))
        background = colorsys.hsv_to_rgb(
            (hue + rng.uniform(0.25, 0.75)) % 1.0, rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.35)
        )
        return {
            "shape": self.classes[label],
            "label": label,
            "center": (side / 2 + offset[0], side / 2 + offset[1]),
            "radius": radius,
            "color": color,
            "background": background,
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        params = self.describe(index)
        array = render_shape(
            params["shape"],
            self.image_size,
            params["center"],
            params["radius"],
            params["color"],
            params["background"],
        )  # (H, W, 3) in [0, 1]
        image = torch.from_numpy(array).permute(2, 0, 1).mul(2.0).sub(1.0)  # (3, H, W)
        return image.contiguous(), params["label"]

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(size={self.size}, image_size={self.image_size}, seed={self.seed}, "
            f"shapes={tuple(self.classes)})"
        )



# ----------------------------------------------------------------------------- captioned shapes

#: RGB (in ``[0, 1]``) of every colour word the captioned shapes use; far apart, so that the
#: nearest palette entry names a pixel's colour without doubt.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.12, 0.1),
    "green": (0.12, 0.72, 0.2),
    "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.12),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "gray": (0.5, 0.5, 0.5),
}
#: The shape's area as a fraction of the image, per size word.
SIZES: dict[str, float] = {"small": 0.10, "large": 0.20}
#: Offset of the shape's centre from the middle, as fractions ``(dx, dy)`` of the side.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.0, 0.0),
    "left": (-0.22, 0.0),
    "right": (0.22, 0.0),
    "top": (0.0, -0.22),
    "bottom": (0.0, 0.22),
}
ATTRIBUTES = ("kind", "color", "background", "size", "position")
CAPTION_LANGUAGES = ("en", "zh")

_WORDS = {
    "en": {
        "circle": "circle", "square": "square", "triangle": "triangle", "cross": "cross",
        "small": "small", "large": "large",
        "center": "in the center", "left": "on the left", "right": "on the right",
        "top": "at the top", "bottom": "at the bottom",
        **{name: name for name in COLORS},
    },
    "zh": {
        "circle": "圆形", "square": "正方形", "triangle": "三角形", "cross": "十字",
        "small": "小的", "large": "大的",
        "center": "中间", "left": "左边", "right": "右边", "top": "上方", "bottom": "下方",
        "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "white": "白色",
        "black": "黑色", "gray": "灰色",
    },
}
_NUM_TEMPLATES = {"en": 4, "zh": 3}


def shape_caption(
    attributes: dict[str, str], language: str = "en", template: int = 0
) -> str:
    """A caption (or prompt) that states the given attributes of a captioned shape.

    Args:
        attributes: any subset of ``kind`` (one of :data:`SHAPES`), ``color`` and
            ``background`` (keys of :data:`COLORS`), ``size`` (:data:`SIZES`) and ``position``
            (:data:`POSITIONS`). Missing ones are not mentioned (a missing kind reads "shape").
        language: ``"en"`` or ``"zh"`` (Chinese words and word order).
        template: which of the language's sentence patterns (4 in English, 3 in Chinese),
            taken modulo their number.

    Returns:
        The caption, e.g. ``"a small red circle on the left on a black background"`` or
        ``"黑色背景上左边有一个小的红色圆形"``.

    Raises:
        ValueError: an unknown key, attribute value or language.
    """
    check_choice("language", language, CAPTION_LANGUAGES)
    allowed = {
        "kind": SHAPES, "color": tuple(COLORS), "background": tuple(COLORS),
        "size": tuple(SIZES), "position": tuple(POSITIONS),
    }
    if not isinstance(attributes, dict):
        raise TypeError(f"attributes must be a dict; got {type(attributes).__name__}")
    for key, value in attributes.items():
        check_choice("attributes key", key, ATTRIBUTES)
        check_choice(f"attributes[{key!r}]", value, allowed[key])
    check_int("template", template)
    words = _WORDS[language]
    said = {key: words[value] for key, value in attributes.items()}
    template %= _NUM_TEMPLATES[language]
    if language == "en":
        noun = " ".join(said[key] for key in ("size", "color") if key in said)
        noun = f"{noun} {said.get('kind', 'shape')}".strip()
        noun = ("an " if noun[0] in "aeiou" else "a ") + noun
        where = f" {said['position']}" if "position" in said else ""
        background = said.get("background")
        if template == 0:
            return f"{noun}{where}" + (f" on a {background} background" if background else "")
        if template == 1:
            return (f"a {background} background with " if background else "") + f"{noun}{where}"
        if template == 2:
            return f"{noun}{where}" + (f", {background} background" if background else "")
        return f"there is {noun}{where}" + (f"; the background is {background}" if background else "")
    noun = "一个" + said.get("size", "") + said.get("color", "") + said.get("kind", "图形")
    where = said.get("position", "")
    background = said.get("background")
    if template == 0:
        return (f"{background}背景上" if background else "") + f"{where}有{noun}"
    if template == 1:
        return noun + (f"，在{where}" if where else "") + (f"，{background}背景" if background else "")
    return (f"在{background}背景上画着" if background else "画着") + noun + (
        f"，位于{where}" if where else ""
    )


class CaptionedShapesDataset(Dataset):
    """Captioned shapes for text-to-image training: items are ``(image, caption)``.

    Each image shows one shape with five attributes, each named by its caption:

    - ``kind``: one of ``kinds`` (default :data:`SHAPES`: circle, square, triangle, cross);
    - ``color``: the shape's colour, one of ``colors`` (a name of :data:`COLORS`);
    - ``background``: the plain background's colour, one of ``backgrounds``;
    - ``size``: ``"small"`` or ``"large"`` (its area, :data:`SIZES`, the same for every kind);
    - ``position``: ``"center"``, ``"left"``, ``"right"``, ``"top"`` or ``"bottom"``.

    Item ``i`` draws, from a NumPy generator seeded with ``(seed, i)``, one allowed combination
    of attributes (uniformly), a small jitter of the position and area, a sentence pattern of
    :func:`shape_caption` and whether the caption mentions the size and the position (each
    with probability ``mention_probability``; kind and both colours are always mentioned).
    :meth:`attributes` gives the complete ground truth, so samples drawn for a caption can be
    scored against it (:func:`ddpm_lib.metrics.prompt_accuracy`).

    Args:
        size: number of items.
        image_size: side of the square images in pixels (16 suits a CPU).
        seed: selects the dataset.
        language: ``"en"`` or ``"zh"``: the language of the captions.
        kinds, colors, backgrounds: the attribute values used (a shape never has the colour of
            its background).
        holdout: combinations never generated, each a dict of some attributes; e.g.
            ``[{"kind": "circle", "color": "red", "background": "white"}]`` leaves out every
            red circle on white, so that a model can be asked for it as a new combination of
            attributes it has seen.
        mention_probability: how often the caption states the size and the position.

    Images are float32 ``(3, image_size, image_size)`` in ``[-1, 1]``.
    """

    def __init__(
        self,
        size: int = 10_000,
        image_size: int = 16,
        seed: int = 0,
        language: str = "en",
        kinds: Sequence[str] = SHAPES,
        colors: Sequence[str] = ("red", "green", "blue", "yellow"),
        backgrounds: Sequence[str] = ("black", "white", "gray"),
        holdout: Sequence[dict[str, str]] = (),
        mention_probability: float = 0.5,
    ) -> None:
        check_int("size", size, 1)
        check_int("image_size", image_size, 8)
        check_int("seed", seed, 0)
        self.language = check_choice("language", language, CAPTION_LANGUAGES)
        values = {}
        for name, given, allowed in (
            ("kinds", kinds, SHAPES), ("colors", colors, tuple(COLORS)),
            ("backgrounds", backgrounds, tuple(COLORS)),
        ):
            given = tuple(given)
            if not given or len(set(given)) != len(given):
                raise ValueError(f"{name} must be distinct names from {allowed}; got {given!r}")
            for value in given:
                check_choice(name, value, allowed)
            values[name] = given
        if not 0.0 <= mention_probability <= 1.0:
            raise ValueError(f"mention_probability must be in [0, 1]; got {mention_probability!r}")
        holdout = [dict(rule) for rule in holdout]
        for rule in holdout:
            shape_caption(rule)  # validates its keys and values
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.kinds, self.colors, self.backgrounds = (
            values["kinds"], values["colors"], values["backgrounds"]
        )
        self.holdout = holdout
        self.mention_probability = float(mention_probability)
        combinations = []
        for kind in self.kinds:
            for color in self.colors:
                for background in self.backgrounds:
                    if color == background:
                        continue
                    for size_word in SIZES:
                        for position in POSITIONS:
                            combo = {"kind": kind, "color": color, "background": background,
                                     "size": size_word, "position": position}
                            if not any(all(combo[k] == v for k, v in rule.items()) for rule in holdout):
                                combinations.append(combo)
        if not combinations:
            raise ValueError("holdout leaves no combination of attributes to generate")
        #: Every combination of attributes the dataset draws from (uniformly).
        self.combinations: list[dict[str, str]] = combinations

    def __len__(self) -> int:
        return self.size

    def describe(self, index: int) -> dict[str, Any]:
        """Everything about item ``index``: attributes, caption, centre and radius (pixels)."""
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of size {self.size}")
        index %= self.size
        rng = np.random.default_rng([self.seed, index])
        attributes = dict(self.combinations[int(rng.integers(len(self.combinations)))])
        side = self.image_size
        dx, dy = POSITIONS[attributes["position"]]
        jitter = rng.uniform(-0.03, 0.03, size=2)
        center = (side * (0.5 + dx + jitter[0]), side * (0.5 + dy + jitter[1]))
        area = SIZES[attributes["size"]] * side * side * rng.uniform(0.92, 1.08)
        radius = math.sqrt(area / shape_area(attributes["kind"], 1.0))
        mentioned = {key: attributes[key] for key in ("kind", "color", "background")}
        for key in ("size", "position"):
            if rng.uniform() < self.mention_probability:
                mentioned[key] = attributes[key]
        template = int(rng.integers(_NUM_TEMPLATES[self.language]))
        return {
            "attributes": attributes,
            "caption": shape_caption(mentioned, self.language, template),
            "mentioned": mentioned,
            "center": center,
            "radius": radius,
        }

    def attributes(self, index: int) -> dict[str, str]:
        """The ground truth of item ``index``: ``kind``, ``color``, ``background``, ``size``,
        ``position``."""
        return self.describe(index)["attributes"]

    def caption(self, index: int) -> str:
        """The caption of item ``index`` (what ``dataset[index][1]`` is)."""
        return self.describe(index)["caption"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        params = self.describe(index)
        attributes = params["attributes"]
        array = render_shape(
            attributes["kind"], self.image_size, params["center"], params["radius"],
            COLORS[attributes["color"]], COLORS[attributes["background"]],
        )  # (H, W, 3) in [0, 1]
        image = torch.from_numpy(array).permute(2, 0, 1).mul(2.0).sub(1.0)  # (3, H, W)
        return image.contiguous(), params["caption"]

    def __repr__(self) -> str:
        return (
            f"CaptionedShapesDataset(size={self.size}, image_size={self.image_size}, "
            f"seed={self.seed}, language={self.language!r}, "
            f"{len(self.combinations)} combinations)"
        )
