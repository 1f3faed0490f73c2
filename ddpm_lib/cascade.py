"""Cascaded diffusion: a base model followed by super-resolution stages (Ho et al. 2022).

``Cascade([base, stage_2, ...])`` chains :class:`ddpm_lib.DiffusionPipeline` bundles: the base
(pixel or latent, unconditional, class- or text-conditional) samples ``(N, C, h, w)`` images;
each later stage is an image-conditioned model (``UNet(cond_channels=C)``) whose resolution is
a whole multiple of the previous stage's output, and which reads that output as
``cond_image``, noise-augmented at its sampling level (:class:`ddpm_lib.NoiseAugmentation`)::

    x^(1) = base.sample(prompts)                                      (N, C, h, w)
    x^(k) = stage_k.sample(cond_image = augment(x^(k-1), s_k), noise_level = s_k, prompts)

Each stage has its own schedule, sampler, number of steps, guidance scale and augmentation
(:class:`CascadeStage`); prompts and labels go to every stage that reads them. The folder
(``save_pretrained``)::

    cascade.json          format, and per stage: its folder, guidance scale, sampler settings,
                          noise augmentation
    stage_0/ stage_1/ ... DiffusionPipeline folders (a stage's folder also works on its own)

A super-resolution model exported by the :class:`ddpm_lib.Trainer` keeps its augmentation in
``noise_augmentation.json`` beside ``pipeline.json``; :meth:`CascadeStage.from_pretrained`
reads it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._checks import check_int, check_real
from .augmentation import NoiseAugmentation
from .pipeline import DiffusionPipeline

__all__ = [
    "AUGMENTATION_FILE",
    "CASCADE_FILE",
    "Cascade",
    "CascadeStage",
    "condition_kwargs",
    "read_augmentation",
    "write_augmentation",
]

CASCADE_FILE = "cascade.json"
AUGMENTATION_FILE = "noise_augmentation.json"
_FORMAT = "ddpm_lib.cascade"


def write_augmentation(folder: str | os.PathLike, augmentation: NoiseAugmentation) -> Path:
    """Write ``augmentation`` as ``folder/noise_augmentation.json`` (atomically)."""
    from ._io import write_json

    path = Path(folder) / AUGMENTATION_FILE
    write_json(path, augmentation.to_dict())
    return path


def read_augmentation(folder: str | os.PathLike) -> NoiseAugmentation | None:
    """The augmentation saved in ``folder`` by :func:`write_augmentation` (or in the
    ``ema_model/`` export of a Trainer ``out_dir``), else ``None``."""
    from ._readers import read_json

    path = Path(folder) / AUGMENTATION_FILE
    if not path.is_file():
        path = Path(folder) / "ema_model" / AUGMENTATION_FILE
    if not path.is_file():
        return None
    try:
        return NoiseAugmentation.from_dict(read_json(path))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a valid noise augmentation: {error}") from None


def condition_kwargs(low_res: torch.Tensor, augmentation: NoiseAugmentation | None, *,
                     level: int | None = None, generator: torch.Generator | None = None,
                     already_noised: bool = False) -> dict[str, Any]:
    """The model kwargs of an upsampler for the conditions ``low_res`` ``(B, C, h, w)``.

    With an ``augmentation`` the condition is corrupted at ``level`` (default: its
    ``sample_level``) with noise from ``generator`` and ``noise_level`` is set; with
    ``already_noised`` (truncated augmentation: ``low_res`` is the previous stage's ``x_s``)
    only ``noise_level`` is set. Without one: ``{"cond_image": low_res}``.
    """
    if augmentation is None:
        if level is not None:
            raise ValueError("level needs a noise augmentation; this stage has none")
        return {"cond_image": low_res}
    level = augmentation.sample_level if level is None else augmentation.check_level(level)
    levels = torch.full((low_res.shape[0],), level, dtype=torch.long, device=low_res.device)
    if not already_noised:
        noise = torch.randn(low_res.shape, generator=generator, device=low_res.device,
                            dtype=low_res.dtype)
        low_res = augmentation.augment(low_res, levels, noise)
    return {"cond_image": low_res, "noise_level": levels}


def _output_shape(pipeline: DiffusionPipeline) -> tuple[int, int, int]:
    """``(C, H, W)`` of what the pipeline's ``sample`` returns (decoded for a latent one)."""
    channels, height, width = pipeline.sample_shape
    if pipeline.latent is not None:
        factor = pipeline.latent.downsampling_factor
        return (pipeline.latent.in_channels, height * factor, width * factor)
    return (channels, height, width)


class CascadeStage:
    """One stage of a :class:`Cascade`: a pipeline and how it is sampled there.

    Args:
        pipeline: a :class:`ddpm_lib.DiffusionPipeline` (or a folder it loads from).
        augmentation: the noise augmentation of a super-resolution stage's condition
            (default: the one saved in the folder, else none; a folder is read for it only
            when ``pipeline`` is one).
        sample_level: override the augmentation's sampling level (in ``[0, T - 1]``).
        sampler: a sampler name of :data:`ddpm_lib.pipeline.SAMPLER_NAMES` (default: the
            pipeline's saved one) and ``num_steps`` its steps.
        guidance_scale: classifier-free guidance of a class- or text-conditional stage.
    """

    def __init__(self, pipeline: DiffusionPipeline | str | os.PathLike, *,
                 augmentation: NoiseAugmentation | None = None, sample_level: int | None = None,
                 sampler: str | None = None, num_steps: int | None = None,
                 guidance_scale: float | None = None) -> None:
        if isinstance(pipeline, (str, os.PathLike)):
            folder = Path(pipeline)
            pipeline = DiffusionPipeline.from_pretrained(folder)
            augmentation = augmentation if augmentation is not None else read_augmentation(
                folder)
        if not isinstance(pipeline, DiffusionPipeline):
            raise TypeError(f"a cascade stage must be a DiffusionPipeline or its folder; got "
                            f"{type(pipeline).__name__}")
        if augmentation is not None and not isinstance(augmentation, NoiseAugmentation):
            raise TypeError(f"augmentation must be a NoiseAugmentation; got "
                            f"{type(augmentation).__name__}")
        if sample_level is not None:
            if augmentation is None:
                raise ValueError("sample_level needs a noise augmentation; this stage has none")
            augmentation = augmentation.with_sample_level(sample_level)
        self.pipeline = pipeline
        self.augmentation = augmentation
        self.sampler = sampler
        self.num_steps = check_int("num_steps", num_steps, 1, allow_none=True)
        self.guidance_scale = check_real("guidance_scale", guidance_scale, allow_none=True)
        pipeline.make_sampler(sampler)  # an unknown name fails now
        from .models.pretrained import model_config

        config = model_config(pipeline.model)
        self.cond_channels: int | None = config.get("cond_channels")
        if augmentation is not None and self.cond_channels is None:
            raise ValueError("augmentation belongs to a super-resolution stage; this model has "
                             "no cond_channels")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **options: Any) -> CascadeStage:
        """A stage from a pipeline folder (with its ``noise_augmentation.json``)."""
        return cls(folder, **options)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of this stage's samples."""
        return _output_shape(self.pipeline)

    def to_dict(self) -> dict[str, Any]:
        """This stage's settings as ``cascade.json`` records them (no weights)."""
        return {"guidance_scale": self.guidance_scale, "sampler": self.sampler,
                "num_steps": self.num_steps,
                "augmentation": self.augmentation.to_dict() if self.augmentation else None}

    def __repr__(self) -> str:
        return (f"CascadeStage({self.pipeline!r}, output_shape={self.output_shape}, "
                f"augmentation={self.augmentation!r}, guidance_scale={self.guidance_scale})")


class Cascade:
    """A base model and super-resolution stages sampled as one model.

    Args:
        stages: the base first, then each upsampler: :class:`CascadeStage` objects,
            :class:`ddpm_lib.DiffusionPipeline` objects or their folders (wrapped in a
            :class:`CascadeStage` with its defaults).

    Raises:
        ValueError: fewer than two stages, an image-conditioned base, a later stage without
            ``cond_channels``, or stages that do not chain: a stage's ``cond_channels`` must
            be the previous output's channels and its size a whole multiple (>= 2) of it.
    """

    def __init__(self, stages: Sequence[CascadeStage | DiffusionPipeline | str | os.PathLike]):
        if isinstance(stages, (str, os.PathLike)) or not isinstance(stages, Sequence):
            raise TypeError(f"stages must be a list of stages; got {type(stages).__name__}")
        self.stages = [s if isinstance(s, CascadeStage) else CascadeStage(s) for s in stages]
        if len(self.stages) < 2:
            raise ValueError(f"a cascade needs a base and at least one super-resolution stage; "
                             f"got {len(self.stages)} stage(s)")
        if self.stages[0].cond_channels is not None:
            raise ValueError("stages[0] (the base) must not be image-conditioned; it has "
                             f"cond_channels={self.stages[0].cond_channels}")
        self.factors = [self._check_link(i) for i in range(1, len(self.stages))]

    def _check_link(self, index: int) -> int:
        previous, stage = self.stages[index - 1], self.stages[index]
        channels, height, width = previous.output_shape
        if stage.cond_channels is None:
            raise ValueError(f"stages[{index}] is not a super-resolution model: its model has "
                             "no cond_channels")
        if stage.pipeline.latent is not None:
            raise ValueError(f"stages[{index}]: super-resolution stages must be pixel models")
        if stage.cond_channels != channels:
            raise ValueError(f"stages[{index}] reads cond_channels={stage.cond_channels} but "
                             f"stages[{index - 1}] outputs {channels} channels")
        _, high_h, high_w = stage.output_shape
        factor = high_h // height
        if factor < 2 or high_h != factor * height or high_w != factor * width:
            raise ValueError(
                f"the stages' sizes do not chain: stages[{index}] samples {(high_h, high_w)}, "
                f"which is not a whole multiple (>= 2) of stages[{index - 1}]'s {(height, width)}"
            )
        augmentation = stage.augmentation
        if augmentation is not None and augmentation.variant == "truncated":
            base = previous.pipeline
            if base.latent is not None or not torch.equal(
                    base.schedule.alphas_cumprod, augmentation.schedule.alphas_cumprod):
                raise ValueError(
                    f"stages[{index}]'s truncated augmentation needs stages[{index - 1}] to be "
                    "a pixel model on the augmentation's schedule")
        return factor

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the final samples."""
        return self.stages[-1].output_shape

    def to(self, device: str | torch.device) -> Cascade:
        """Move every stage to ``device``; returns ``self``."""
        for stage in self.stages:
            stage.pipeline.to(device)
        return self

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        *,
        prompts: Sequence[str] | None = None,
        negative_prompts: Sequence[str] | None = None,
        labels: Any = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_stages: bool = False,
    ) -> Any:
        """Sample through every stage: ``(N, C, H, W)`` images in ``[-1, 1]``.

        Args:
            num_samples: ``N`` (default: one per prompt, per label, else 1).
            prompts, negative_prompts, labels: given to every stage that reads them.
            generator: the one source of randomness (all stages draw from it in turn).
            progress: progress bars.
            return_stages: return the list of every stage's output instead (low to high).
        """
        # each stage gives (its samples, its x_s for a truncated next stage or None)
        images, x_s = self._sample_base(num_samples, prompts, negative_prompts, labels,
                                        generator, progress)
        outputs = [images]
        for index in range(1, len(self.stages)):
            stage = self.stages[index]
            low_res = x_s if x_s is not None else outputs[-1]
            kwargs = condition_kwargs(low_res, stage.augmentation, generator=generator,
                                      already_noised=x_s is not None)
            images, x_s = self._sample_stage(index, outputs[-1].shape[0], kwargs, prompts,
                                             negative_prompts, labels, generator, progress)
            outputs.append(images)
        return outputs if return_stages else outputs[-1]

    def _reads(self, stage: CascadeStage, prompts: Any, negative: Any, labels: Any) -> dict:
        pipe = stage.pipeline
        return {"prompts": prompts if pipe.is_text_model else None,
                "negative_prompts": negative if pipe.is_text_model else None,
                "labels": labels if pipe.num_classes is not None else None,
                "guidance_scale": stage.guidance_scale}

    def _sampler(self, index: int) -> Any:
        stage = self.stages[index]
        options = {} if stage.num_steps is None else {"num_steps": stage.num_steps}
        sampler = stage.pipeline.make_sampler(stage.sampler, **options)
        following = self.stages[index + 1] if index + 1 < len(self.stages) else None
        augmentation = following.augmentation if following is not None else None
        if augmentation is None or augmentation.variant != "truncated":
            return sampler, None
        # truncated: stop the reverse process at s; the trajectory's x_s is the next condition
        level = augmentation.sample_level
        steps = [int(t) for t in sampler.timesteps if int(t) > level] + [level]
        options.update(timesteps=steps, num_steps=len(steps))
        return stage.pipeline.make_sampler(stage.sampler, **options), len(steps) - 1

    def _sample_base(self, num_samples: Any, prompts: Any, negative: Any, labels: Any,
                     generator: Any, progress: bool) -> Any:
        stage = self.stages[0]
        sampler, truncate_at = self._sampler(0)
        reads = self._reads(stage, prompts, negative, labels)
        if truncate_at is None:
            return stage.pipeline.sample(num_samples, sampler=sampler, generator=generator,
                                         progress=progress, **reads), None
        images, trajectory = stage.pipeline.sample(
            num_samples, sampler=sampler, generator=generator, progress=progress,
            return_trajectory=True, **reads)
        return images, trajectory.samples[truncate_at]

    def _sample_stage(self, index: int, count: int, cond: Mapping[str, Any], prompts: Any,
                      negative: Any, labels: Any, generator: Any, progress: bool) -> Any:
        from .conditioning import guidance_inputs

        stage = self.stages[index]
        pipe = stage.pipeline
        reads = self._reads(stage, prompts, negative, labels)
        model_kwargs, unconditional, _ = guidance_inputs(pipe.model, count, device=pipe.device,
                                                         **reads)
        model_kwargs.update(cond)
        extra: dict[str, Any] = {}
        if unconditional is not None:
            extra["unconditional_kwargs"] = {**cond, **unconditional}
        sampler, truncate_at = self._sampler(index)
        shape = (count, *pipe.sample_shape)
        run = dict(generator=generator, model_kwargs=model_kwargs, progress=progress,
                   guidance_scale=stage.guidance_scale, **extra)
        if truncate_at is None:
            return sampler.sample(pipe.model, shape, **run), None
        images, trajectory = sampler.sample(pipe.model, shape, return_trajectory=True, **run)
        return images, trajectory.samples[truncate_at]

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``cascade.json`` and one pipeline folder per stage (``stage_<i>``)."""
        from ._io import write_json

        directory = Path(directory)
        records = []
        for index, stage in enumerate(self.stages):
            folder = f"stage_{index}"
            stage.pipeline.save_pretrained(directory / folder)
            records.append({"folder": folder, **stage.to_dict()})
        write_json(directory / CASCADE_FILE, {"format": _FORMAT, "format_version": 1,
                                              "stages": records})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *,
                        device: str | torch.device | None = None) -> Cascade:
        """Load a cascade written by :meth:`save_pretrained` (models in eval mode).

        Raises:
            FileNotFoundError: no ``cascade.json`` in ``directory``.
            ValueError: a malformed ``cascade.json`` (the message names it).
        """
        from ._readers import read_json

        directory = Path(directory)
        path = directory / CASCADE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a cascade folder (no {CASCADE_FILE})")
        record = read_json(path)
        stages = record.get("stages")
        if record.get("format") != _FORMAT or not isinstance(stages, list):
            raise ValueError(f"{path}: not a cascade description (format {_FORMAT!r} with a "
                             "'stages' list)")
        built = []
        for entry in stages:
            if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str):
                # a malformed file is a ValueError, as everywhere the library reads files
                raise ValueError(f"{path}: each stage must be an object with a 'folder'")  # noqa: TRY004
            augmentation = entry.get("augmentation")
            pipeline = DiffusionPipeline.from_pretrained(directory / entry["folder"],
                                                         device=device)
            built.append(CascadeStage(
                pipeline, augmentation=(NoiseAugmentation.from_dict(augmentation)
                                        if augmentation is not None else None),
                sampler=entry.get("sampler"), num_steps=entry.get("num_steps"),
                guidance_scale=entry.get("guidance_scale")))
        return cls(built)

    def __repr__(self) -> str:
        sizes = " -> ".join("x".join(map(str, s.output_shape[1:])) for s in self.stages)
        return f"Cascade({len(self.stages)} stages: {sizes})"
