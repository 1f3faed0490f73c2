"""What a condition is, in one place: its values, its null value, its dropout, its batching.

A diffusion model may be conditioned on a class label (``y=``), a prompt (the encoded text
kwargs ``context=`` ...), a low-resolution image (``cond_image=``, super-resolution stages) or
a guidance scale (distilled students). Each kind is one small :class:`Condition` object that
knows

- how to read and check a batch of its raw values (labels, prompts, images),
- its **null value**, the unconditional input of classifier-free guidance (Ho & Salimans 2022):
  the class ``-1``, the empty prompt ``""``,
- its **dropout** in training (the probability of replacing a value by the null value, so that
  one network learns both the conditional and the unconditional model),
- how its values become **model keyword arguments** (:meth:`Condition.model_kwargs`), and what
  the unconditional half of a guided batch receives for them
  (:meth:`Condition.null_kwargs`).

The :class:`ddpm_lib.Trainer`, the samplers, the CLI and the metrics ask these objects instead
of branching on the kind of model. :func:`conditions_for` picks the conditions of a model from
what it is (``num_classes``, ``encode_prompts``, ``cond_channels``) and, in training, from the
fields of a dataset item.

:func:`guidance_kwargs` is the one implementation of how conditional and unconditional kwargs
are batched into the ``2B`` model call of guided sampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ._checks import check_int, check_probability, is_int

__all__ = [
    "NULL_CLASS",
    "Condition",
    "ClassLabel",
    "Prompt",
    "LowResImage",
    "conditions_for",
    "default_unconditional_kwargs",
    "guidance_inputs",
    "guidance_kwargs",
]

#: the class label that means "no label" (classifier-free guidance, label dropout)
NULL_CLASS = -1


class Condition:
    """One kind of condition. Subclasses set :attr:`field_type` and implement the methods.

    Args:
        dropout: probability in ``[0, 1]`` of replacing a value by the null value in training.
    """

    #: the Python type of one raw value in a dataset item (``int`` label, ``str`` caption, ...)
    field_type: type = object
    #: the model keyword arguments this condition owns (for :func:`default_unconditional_kwargs`)
    keys: tuple[str, ...] = ()
    #: whether guidance drops this condition in its unconditional half
    guided: bool = True
    #: whether the values are images aligned with ``x0`` (flipped with it in training)
    spatial: bool = False

    def __init__(self, dropout: float = 0.0) -> None:
        self.dropout = check_probability("dropout", dropout, allow_one=True)

    # ------------------------------------------------------------------ values
    def collate(self, values: Any, device: torch.device) -> Any:
        """A batch of raw values as the DataLoader gives them, checked, on ``device``."""
        raise NotImplementedError

    def null_values(self, like: Any) -> Any:
        """The null value for every element of the batch ``like`` (same batch size)."""
        raise NotImplementedError

    def drop(self, values: Any, dropped: torch.Tensor) -> Any:
        """``values`` with the elements where ``dropped`` (a ``(B,)`` bool tensor) is true
        replaced by the null value: the training dropout of classifier-free guidance."""
        raise NotImplementedError

    def randomize(self, values: Any, generator: torch.Generator, batch: int,
                  mine: slice) -> Any:
        """The condition's own training draws, after the dropout (default: none). Draws are
        made for the global ``batch`` from the Trainer's shared ``generator`` and this rank's
        slice ``mine`` is kept, so runs do not depend on the number of processes."""
        return values

    # ------------------------------------------------------------------ model inputs
    def model_kwargs(self, values: Any, model: Any) -> dict[str, Any]:
        """The keyword arguments of ``model(x_t, t, **kwargs)`` for a batch of ``values``."""
        raise NotImplementedError

    @classmethod
    def null_kwargs(cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The unconditional counterparts of this condition's entries of ``kwargs`` (the
        entries it owns, :attr:`keys`), for guidance when the user gave none."""
        return {key: kwargs[key] for key in cls.keys if key in kwargs}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dropout={self.dropout})"


class ClassLabel(Condition):
    """A class label ``y`` in ``[0, num_classes)``; the null class is ``-1``.

    Args:
        num_classes: the number of classes of the model.
        dropout: label dropout of classifier-free guidance (0.1 in Ho & Salimans 2022).
    """

    field_type = int
    keys = ("y",)

    def __init__(self, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(dropout)
        self.num_classes = check_int("num_classes", num_classes, 1, expected="a positive int")

    def collate(self, values: Any, device: torch.device) -> torch.Tensor:
        labels = torch.as_tensor(values).to(device, non_blocking=True).long()
        if labels.ndim != 1:
            raise ValueError(f"class labels must be a (B,) batch; got shape {tuple(labels.shape)}")
        return labels

    def check(self, labels: torch.Tensor, name: str = "labels") -> torch.Tensor:
        """Raise unless every label is in ``[-1, num_classes)`` (``-1``: the null class)."""
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor; got dtype {labels.dtype}")
        if labels.numel() and labels.device.type == "cpu":
            low, high = int(labels.min()), int(labels.max())
            if low < NULL_CLASS or high >= self.num_classes:
                raise ValueError(
                    f"{name} must be in [0, {self.num_classes - 1}] (or -1, the null class); "
                    f"got values in [{low}, {high}]"
                )
        return labels

    def default_values(self, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``0, 1, ..., K-1, 0, 1, ...``: every class in turn (sample grids, FID)."""
        return torch.arange(count, device=device) % self.num_classes

    def null_values(self, like: torch.Tensor) -> torch.Tensor:
        return torch.full_like(like, NULL_CLASS)

    def drop(self, values: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return torch.where(dropped, torch.full_like(values, NULL_CLASS), values)

    def model_kwargs(self, values: torch.Tensor, model: Any) -> dict[str, Any]:
        return {"y": values}

    @classmethod
    def null_kwargs(cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if "y" not in kwargs:
            return {}
        y = kwargs["y"]
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"model_kwargs['y'] must be a tensor of labels; got {type(y).__name__}")
        return {"y": torch.full_like(y, NULL_CLASS)}

    def __repr__(self) -> str:
        return f"ClassLabel(num_classes={self.num_classes}, dropout={self.dropout})"


class Prompt(Condition):
    """A text prompt, encoded by the model's own ``encode_prompts``; the null prompt is ``""``.

    Args:
        dropout: caption dropout (0.1 as GLIDE trains with 20% and Stable Diffusion with 10%).
    """

    field_type = str
    keys = ("context", "context_mask", "context_pooled")

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__(dropout)

    def collate(self, values: Any, device: torch.device) -> list[str]:
        from .models.text import check_prompts

        return check_prompts(list(values), "captions")

    def null_values(self, like: Sequence[str]) -> list[str]:
        return [""] * len(like)

    def drop(self, values: Sequence[str], dropped: torch.Tensor) -> list[str]:
        return ["" if gone else value for value, gone in zip(values, dropped.tolist())]

    def model_kwargs(self, values: Sequence[str], model: Any) -> dict[str, Any]:
        encode = getattr(model, "encode_prompts", None)
        if not callable(encode):
            raise TypeError(
                f"prompts need a text model with encode_prompts (such as "
                f"ddpm_lib.TextConditionedUNet); got {type(model).__name__}"
            )
        return dict(encode(list(values)))

    @classmethod
    def null_kwargs(cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if any(key in kwargs for key in cls.keys):
            raise ValueError(
                "guidance_scale needs a condition to drop: a text model's unconditional half "
                "reads the encoded empty (or negative) prompts; pass "
                "unconditional_kwargs=model.encode_prompts([''] * batch)"
            )
        return {}


class LowResImage(Condition):
    """A low-resolution image that a super-resolution stage is conditioned on (``cond_image=``).

    Guidance never drops it: the unconditional half of a guided batch sees the same image (the
    guidance of a cascade's upsampler acts on its text or label only).

    Args:
        dropout: probability of replacing the image by zeros in training (0: never).
        augmentation: a :class:`ddpm_lib.NoiseAugmentation`: in training each image is
            corrupted at a random level ``s`` and the model also gets ``noise_level=s``
            (:meth:`randomize`); ``None``: the image as it is.
    """

    field_type = torch.Tensor
    keys = ("cond_image", "noise_level")
    guided = False
    spatial = True

    def __init__(self, dropout: float = 0.0, augmentation: Any = None) -> None:
        super().__init__(dropout)
        from .augmentation import NoiseAugmentation

        if augmentation is not None and not isinstance(augmentation, NoiseAugmentation):
            raise TypeError(f"augmentation must be a NoiseAugmentation or None; got "
                            f"{type(augmentation).__name__}")
        self.augmentation = augmentation

    def randomize(self, values: torch.Tensor, generator: torch.Generator, batch: int,
                  mine: slice) -> Any:
        """Noise conditioning augmentation: ``s ~ U{0..max_level}`` then ``eps ~ N(0, I)``,
        each for the global batch; returns ``(z_s, s)`` for this rank."""
        if self.augmentation is None:
            return values
        device = values.device
        levels = self.augmentation.draw_levels(batch, generator, device)[mine]
        noise = torch.randn((batch, *values.shape[1:]), generator=generator,
                            device=device)[mine]
        return self.augmentation.augment(values, levels, noise), levels

    def collate(self, values: Any, device: torch.device) -> torch.Tensor:
        images = torch.as_tensor(values).to(device, non_blocking=True).float()
        if images.ndim != 4:
            raise ValueError(f"cond_image must be a (B, C, h, w) batch; got {tuple(images.shape)}")
        return images

    def null_values(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like)

    def drop(self, values: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return torch.where(dropped.reshape(-1, 1, 1, 1), torch.zeros_like(values), values)

    def model_kwargs(self, values: Any, model: Any) -> dict[str, Any]:
        if isinstance(values, tuple):  # augmented: (z_s, s)
            return {"cond_image": values[0], "noise_level": values[1]}
        return {"cond_image": values}

    def __repr__(self) -> str:
        return f"LowResImage(dropout={self.dropout}, augmentation={self.augmentation!r})"


#: the conditions the samplers know of, for the default unconditional kwargs of guidance
_KINDS: tuple[type[Condition], ...] = (ClassLabel, Prompt, LowResImage)


def conditions_for(model: Any, fields: Sequence[Any] | None = None, *,
                   class_dropout: float = 0.1, caption_dropout: float = 0.1,
                   noise_augmentation: Any = None) -> list[Condition]:
    """The conditions of ``model`` (a model with an int ``num_classes`` reads labels, one with
    ``encode_prompts`` prompts, one with ``cond_channels`` in its config a low-resolution
    image, first), checked against a dataset item's ``fields`` when given.

    Args:
        model: the network (unwrapped from DDP).
        fields: the values of a dataset item after the image (``(image, label)``: ``[label]``;
            an image-conditioned model's items are ``(image, low_res, ...)``), or ``None``
            (sampling: the conditions come from the model alone).
        class_dropout, caption_dropout: the training dropout of each kind.
        noise_augmentation: the :class:`ddpm_lib.NoiseAugmentation` of an image-conditioned
            model's condition (``None``: none).

    Raises:
        TypeError: captions for a model without a text encoder.
        ValueError: other disagreements of the fields and the model (a text model without
            captions, a class-conditional model without labels or with captions).
    """
    image = _image_condition(model, fields, noise_augmentation)
    if fields is not None:
        fields = list(fields)[1:2] if image else list(fields)[:1]
    num_classes = getattr(model, "num_classes", None)
    if not (is_int(num_classes) and num_classes >= 1):
        num_classes = None
    text = callable(getattr(model, "encode_prompts", None))
    if fields is not None:
        captioned = bool(fields) and isinstance(fields[0], str)
        if captioned and not text:
            raise TypeError(
                "dataset items are (image, caption) but the model has no encode_prompts "
                "method; use a text-conditioned model such as ddpm_lib.TextConditionedUNet"
            )
        if text and not captioned:
            raise ValueError(
                "the model is text-conditioned (it has encode_prompts) but dataset items carry "
                f"no caption; give (image, caption: str) items (fields after the image: "
                f"{[type(field).__name__ for field in fields]})"
            )
        if num_classes is not None and captioned:
            raise ValueError(
                f"the model is class-conditional (num_classes={num_classes}) and items are "
                "(image, caption): the Trainer trains on one condition; use num_classes=None"
            )
        if num_classes is not None and not fields:
            raise ValueError(
                f"the model is class-conditional (num_classes={num_classes}) but dataset "
                "items carry no labels; give (image, label) pairs or an unconditional model"
            )
    if text:
        return image + [Prompt(caption_dropout)]
    if num_classes is not None:
        return image + [ClassLabel(num_classes, class_dropout)]
    return image


def _image_condition(model: Any, fields: Sequence[Any] | None,
                     augmentation: Any) -> list[Condition]:
    """``[LowResImage]`` for a model with ``cond_channels`` (checked against the item's first
    field after the image), else ``[]``."""
    from .models.pretrained import model_config

    config = model_config(model)
    cond_channels = config.get("cond_channels")
    if not isinstance(cond_channels, int):
        if augmentation is not None:
            raise ValueError("noise_augmentation needs an image-conditioned model (built with "
                             "cond_channels=C); this one reads no cond_image")
        return []
    if augmentation is not None and not config.get("noise_level_embedding", True):
        raise ValueError("noise_augmentation needs a model that reads noise_level: build it "
                         "with noise_level_embedding=True")
    if fields is not None:
        low_res = fields[0] if fields else None
        if not isinstance(low_res, torch.Tensor) or low_res.ndim != 3 or (
                low_res.shape[0] != cond_channels):
            found = (tuple(low_res.shape) if isinstance(low_res, torch.Tensor)
                     else type(low_res).__name__)
            raise ValueError(
                f"the model is image-conditioned (cond_channels={cond_channels}): dataset items "
                f"must be (image, low_res ({cond_channels}, h, w), ...), such as "
                f"ddpm_lib.SuperResolutionPairs gives; the field after the image is {found}"
            )
    return [LowResImage(augmentation=augmentation)]


def default_unconditional_kwargs(
    model_kwargs: Mapping[str, Any], given: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The unconditional half's kwargs: ``model_kwargs`` with each condition's entries replaced
    by its null (``y`` by ``-1``), then by the user's ``given`` entries (negative prompts...).

    Raises ``ValueError`` when the null needs the model and the user gave none (prompts: pass
    the encoded empty or negative prompts).
    """
    uncond = dict(model_kwargs)
    for kind in _KINDS:
        if not kind.guided:
            continue
        if given is not None and kind is Prompt:
            continue  # the user's unconditional kwargs stand in for the encoded null prompt
        uncond.update(kind.null_kwargs(model_kwargs))
    uncond.update(given or {})
    return uncond


def guidance_kwargs(
    model_kwargs: Mapping[str, Any] | None,
    unconditional_kwargs: Mapping[str, Any] | None,
    batch: int,
) -> dict[str, Any]:
    """The kwargs of the ``2B`` model call of classifier-free guidance: each batched entry is
    ``cat([conditional, unconditional])``; an entry without a batch dimension must be the same
    in both halves.

    Args:
        model_kwargs: the conditional kwargs (batch ``B``).
        unconditional_kwargs: the unconditional half's kwargs, replacing those of
            ``model_kwargs`` by name (after the default nulls of
            :func:`default_unconditional_kwargs`: ``y = -1``).
        batch: ``B``.
    """
    cond = dict(model_kwargs or {})
    uncond = default_unconditional_kwargs(cond, unconditional_kwargs)
    if not uncond.keys() - cond.keys() and all(uncond[k] is cond[k] for k in cond):
        raise ValueError(
            "guidance_scale needs a condition to drop: pass model_kwargs={'y': labels} "
            "(the unconditional half gets y = -1) or unconditional_kwargs (for a text "
            "model: unconditional_kwargs=model.encode_prompts([''] * batch))"
        )
    batched = {}
    for key in cond.keys() | uncond.keys():
        if key not in cond or key not in uncond:
            raise ValueError(
                f"model_kwargs and unconditional_kwargs must have the same keys; "
                f"{key!r} is in only one"
            )
        batched[key] = _batch_pair(key, cond[key], uncond[key], batch)
    return batched


def _batch_pair(key: str, c: Any, u: Any, batch: int) -> Any:
    if isinstance(c, torch.Tensor) and c.ndim > 0:
        if not isinstance(u, torch.Tensor) or u.shape != c.shape:
            raise ValueError(
                f"unconditional_kwargs[{key!r}] must be a tensor of shape "
                f"{tuple(c.shape)} like model_kwargs[{key!r}]; got "
                f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}"
            )
        return torch.cat([c, u.to(c.device)])
    if c is u or (not isinstance(c, torch.Tensor) and not isinstance(u, torch.Tensor)
                  and c == u):
        return c
    raise ValueError(
        f"model_kwargs[{key!r}] is not batched (no batch dimension), so it cannot "
        f"differ between the conditional and unconditional halves"
    )


def guidance_inputs(
    model: Any,
    num_samples: int | None = None,
    *,
    labels: Any = None,
    prompts: Sequence[str] | None = None,
    negative_prompts: Sequence[str] | None = None,
    guidance_scale: float | None = None,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], dict[str, Any] | None, int]:
    """The sampler inputs of ``model`` for labels or prompts: ``(model_kwargs,
    unconditional_kwargs or None, number of samples)``.

    A class-conditional model's ``labels`` default to every class in turn; a text model needs
    one prompt a sample (``negative_prompts``, one a sample, are the unconditional half of
    guidance; default ``""``). Giving a condition the model does not read is an error, and so
    is ``guidance_scale`` for an unconditional model.
    """
    from .models.text import check_prompts

    conditions = conditions_for(model)
    kinds = {type(condition) for condition in conditions}
    if prompts is not None or negative_prompts is not None:
        if Prompt not in kinds:
            raise ValueError("prompts / negative_prompts need a text model (with encode_prompts)")
    if labels is not None and ClassLabel not in kinds:
        raise ValueError("labels need a class-conditional model (an int num_classes); this one "
                         "has none")
    if negative_prompts is not None and guidance_scale is None:
        raise ValueError("negative_prompts act through guidance: give guidance_scale too")
    if guidance_scale is not None and not conditions:
        raise ValueError("guidance_scale needs a conditional model (class labels or prompts); "
                         "this one is unconditional")
    check_int("num_samples", num_samples, 1, allow_none=True,
              expected="a positive int")
    model_kwargs: dict[str, Any] = {}
    unconditional: dict[str, Any] | None = None
    count = num_samples
    for condition in conditions:
        if isinstance(condition, Prompt):
            if prompts is None:
                raise ValueError("a text model samples from prompts: give prompts=[...]")
            prompts = check_prompts(prompts)
            count = len(prompts) if count is None else count
            for name, value in (("prompts", prompts), ("negative_prompts", negative_prompts)):
                if value is not None and len(value) != count:
                    raise ValueError(f"{name} must have one prompt per sample ({count}); got "
                                     f"{len(value)}")
            model_kwargs.update(condition.model_kwargs(prompts, model))
            if guidance_scale is not None:
                negative = (check_prompts(negative_prompts, "negative_prompts")
                            if negative_prompts is not None else condition.null_values(prompts))
                unconditional = condition.model_kwargs(negative, model)
        elif isinstance(condition, ClassLabel):
            if labels is None:
                labels = condition.default_values(count or condition.num_classes)
            labels = torch.as_tensor(labels)
            labels = condition.check(labels.reshape(-1) if labels.ndim == 0 else labels)
            if count is not None and labels.shape[0] != count:
                raise ValueError(f"labels must have one label per sample ({count}); got "
                                 f"{labels.shape[0]}")
            count = labels.shape[0]
            model_kwargs.update(condition.model_kwargs(labels.to(device), model))
    return model_kwargs, unconditional, count or 1
