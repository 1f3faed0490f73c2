"""One bundle for a trained model: :class:`DiffusionPipeline`.

A trained diffusion model is more than its network: it was trained on a noise schedule, to
predict ``eps``, ``x0`` or ``v``, maybe with a learned variance, maybe in the latent space of an
autoencoder with a scale factor, maybe with a text encoder; and it has sampler settings that
work for it. The bundle holds all of it, saves it as one folder and loads it back, so every
user of a trained model (the :class:`ddpm_lib.Trainer`'s export, every ``ddpm-lib`` command,
:class:`ddpm_lib.LatentDiffusion`) reads the same facts the same way.

The folder (``save_pretrained``)::

    pipeline.json        format, the classes and sub-folders of the parts, the diffusion
                         settings (schedule, prediction, variance), the latent scaling, the
                         default sampler
    <model>/             the denoiser, written by its own ``save_pretrained`` ("." by default:
                         the folder is then also a plain model folder, ``UNet.from_pretrained``)
    autoencoder/         latent models only

:meth:`DiffusionPipeline.from_pretrained` also reads what earlier versions wrote: a Trainer
``out_dir`` (its newest good checkpoint), one checkpoint folder, a pretrained model folder with
``diffusion.json`` / ``schedule.json`` beside it, a :class:`ddpm_lib.LatentDiffusion` folder
(``latent_diffusion.json``) and a latent training run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checks import check_choice
from .conditioning import ClassLabel, Condition, Prompt, conditions_for
from ._pipeline_formats import PIPELINE_FILE
from .models.pretrained import model_config
from .schedule import PREDICTION_TYPES, NoiseSchedule, default_variance

__all__ = ["DiffusionPipeline", "SAMPLER_NAMES", "PIPELINE_FILE", "make_sampler", "model_config"]


#: sampler name (as the CLI spells it) -> class name in ddpm_lib.samplers
SAMPLER_NAMES = {
    "ddpm": "DDPMSampler",
    "ddim": "DDIMSampler",
    "dpm-solver": "DPMSolverSampler",
    "unipc": "UniPCSampler",
    "pndm": "PNDMSampler",
    "deis": "DEISSampler",
    "sde": "SDESampler",
    "edm": "EDMSampler",
    "langevin": "AnnealedLangevinSampler",
    "ve-sde": "VESDESampler",
    "consistency": "ConsistencySampler",  # a consistency-distilled model (ddpm_lib.distillation)
}
#: the samplers over noise levels: they take a model's own levels (``noise_levels=``)
LEVEL_SAMPLER_NAMES = ("edm", "langevin", "ve-sde")


def make_sampler(
    name: str,
    schedule: NoiseSchedule,
    *,
    prediction: str = "eps",
    variance: Any = "fixed_small",
    learn_sigma: bool = False,
    clip_denoised: bool = True,
    num_steps: int | None = None,
    steps_offset: int = 0,
    **options: Any,
) -> Any:
    """A sampler by name (:data:`SAMPLER_NAMES`) for a model with these settings.

    ``variance`` is used by ``"ddpm"`` (a variance type or an Analytic-DPM table); a table
    also goes to ``"ddim"``. ``learn_sigma`` tells the others that the model's output has twice
    the channels. ``ddpm``
    defaults to 100 respaced steps; the others to their class's default. ``options`` go to the
    constructor (``eta``, ``order``, ``spacing``, ``method``...). ``steps_offset`` moves every
    timestep of a ``spacing="leading"`` grid up by that many (diffusers' ``steps_offset``, 1 in
    Stable Diffusion's scheduler configs; like diffusers, other grids and explicit
    ``timesteps`` are left as they are). ``noise_levels`` (a
    :class:`ddpm_lib.ScoreBasedModel`'s) replaces ``schedule`` for the samplers over noise
    levels (``edm``, ``langevin``, ``ve-sde``) and is ignored by the others.
    """
    from . import samplers
    from ._checks import check_int

    check_choice("sampler", name, SAMPLER_NAMES)
    check_int("steps_offset", steps_offset, 0)
    cls = getattr(samplers, SAMPLER_NAMES[name])
    kwargs: dict[str, Any] = {"prediction": prediction, "clip_denoised": clip_denoised}
    if name in LEVEL_SAMPLER_NAMES:  # over a score-based model's levels, else the schedule's
        source = options.pop("noise_levels", None) or schedule
        return cls(source, num_steps=num_steps, learn_sigma=learn_sigma, **kwargs, **options)
    options.pop("noise_levels", None)
    if name == "ddpm":
        steps = num_steps if num_steps is not None else min(100, schedule.num_timesteps)
        kwargs.update(variance=variance, num_steps=steps)
    else:
        if not isinstance(variance, str):  # an Analytic-DPM table (AnalyticVariance)
            if name != "ddim":
                raise ValueError(f"an Analytic-DPM variance table serves the ddpm and ddim "
                                 f"samplers; got sampler {name!r}")
            kwargs["variance"] = variance
        kwargs.update(num_steps=num_steps, learn_sigma=learn_sigma)
    sampler = cls(schedule, **kwargs, **options)
    if not steps_offset or options.get("timesteps") is not None \
            or getattr(sampler, "spacing", None) != "leading":
        return sampler
    shifted = sampler.timesteps + steps_offset  # the same grid, moved up
    if int(shifted.max()) >= schedule.num_timesteps:
        raise ValueError(f"steps_offset={steps_offset} moves the first timestep of "
                         f"{sampler.timesteps.tolist()[:3]}... past T - 1 = "
                         f"{schedule.num_timesteps - 1}; use fewer steps or a smaller offset")
    kwargs.pop("num_steps")
    options.pop("spacing", None)
    return cls(schedule, timesteps=shifted, **kwargs, **options)


class DiffusionPipeline:
    """A trained model with everything needed to use it; saved and loaded as one folder.

    Args:
        model: the denoising network ``model(x_t, t, **kwargs)`` (a :class:`ddpm_lib.UNet`,
            a :class:`ddpm_lib.TextConditionedUNet`, a DiT, any module with
            ``save_pretrained`` to be saved).
        schedule: the :class:`ddpm_lib.NoiseSchedule` it was trained with.
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        variance: the reverse variance of ancestral sampling; default ``"learned_range"``
            for a model with ``learn_sigma`` in its config, else ``"fixed_small"``.
        autoencoder: for a latent model: the autoencoder whose latents the model denoises.
        scale_factor: the latents' scale (``z = scale_factor * E(x)``), with ``autoencoder``.
        latent_shift, latent_scale: the latents' per-channel normalisation
            (``z_c = (E(x)_c - latent_shift[c]) * latent_scale[c]``), with ``autoencoder``;
            see :class:`ddpm_lib.LatentDiffusion`.
        sampler: default sampler settings, ``{"name": "ddim", "num_steps": 50, ...}``
            (default: DDIM, 50 steps).

    The arguments are kept as attributes of the same names, with ``learn_sigma`` (read from
    the model's config), ``sampler_settings`` and ``source`` (the folder it was loaded from,
    or ``None``).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        *,
        prediction: str = "eps",
        variance: str | None = None,
        autoencoder: nn.Module | None = None,
        scale_factor: float | None = None,
        sampler: Mapping[str, Any] | None = None,
        latent_shift: Sequence[float] | torch.Tensor | None = None,
        latent_scale: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        self.model = model
        self.schedule = schedule
        self.prediction = check_choice("prediction", prediction, PREDICTION_TYPES)
        self.learn_sigma = bool(model_config(model).get("learn_sigma", False))
        self.variance = default_variance(self.learn_sigma, variance)
        self.latent: Any = None
        if autoencoder is not None:
            from .latent import LatentDiffusion

            self.latent = LatentDiffusion(autoencoder, scale_factor, latent_shift=latent_shift,
                                          latent_scale=latent_scale)
        elif scale_factor is not None or latent_shift is not None or latent_scale is not None:
            raise ValueError("scale_factor (and latent_shift, latent_scale), the latents' "
                             "normalisation, needs an autoencoder")
        self.sampler_settings = _check_sampler_settings(sampler)
        self.source: Path | None = None
        try:  # the saved settings must build a sampler: fail now, not at the first sample()
            self.make_sampler()
        except TypeError as error:
            raise ValueError(f"sampler settings {self.sampler_settings} do not fit the "
                             f"sampler: {error}") from None

    # ------------------------------------------------------------------ what it is
    @property
    def autoencoder(self) -> nn.Module | None:
        """The autoencoder of a latent model, else ``None``."""
        return self.latent.autoencoder if self.latent is not None else None

    @property
    def scale_factor(self) -> float | None:
        """The latents' scale factor of a latent model, else ``None``."""
        return self.latent.scale_factor if self.latent is not None else None

    @property
    def conditions(self) -> list[Condition]:
        """What the model is conditioned on (:func:`ddpm_lib.conditioning.conditions_for`)."""
        return conditions_for(self.model)

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a class-conditional model, else ``None``."""
        for condition in self.conditions:
            if isinstance(condition, ClassLabel):
                return condition.num_classes
        return None

    @property
    def is_text_model(self) -> bool:
        """Whether the model reads prompts (it has ``encode_prompts``)."""
        return any(isinstance(condition, Prompt) for condition in self.conditions)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of what the model denoises (latents for a latent model)."""
        config = model_config(self.model)
        size, channels = config.get("image_size", config.get("input_size")), config.get(
            "in_channels")
        if not isinstance(size, int) or not isinstance(channels, int):
            raise ValueError(
                f"the model's config gives no image_size / in_channels ({type(self.model).__name__}); "
                "pass the shape to the sampler yourself"
            )
        return (channels, size, size)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> DiffusionPipeline:
        """Move every part to ``device``; returns ``self``."""
        self.model.to(device)
        if self.latent is not None:
            self.latent.to(device)
        return self

    def eval(self) -> DiffusionPipeline:
        """Put every part in eval mode; returns ``self``."""
        self.model.eval()
        if self.latent is not None:
            self.latent.autoencoder.eval()
        return self

    def make_sampler(self, name: str | None = None, **options: Any) -> Any:
        """A sampler for this model: ``name`` (default: the saved setting, else ``"ddim"``)
        with the model's schedule, prediction and variance, no clipping in latent space, and
        the saved options updated by ``options``."""
        settings = dict(self.sampler_settings)
        saved_name = settings.pop("name", "ddim")
        if name is not None and name != saved_name:
            settings = {}  # the saved options belong to the saved sampler
        settings.update(options)
        settings.setdefault("clip_denoised", self.latent is None)
        settings.setdefault("noise_levels", getattr(self.model, "noise_levels", None))
        return make_sampler(
            name or saved_name, self.schedule, prediction=self.prediction,
            variance=self.variance, learn_sigma=self.learn_sigma, **settings,
        )

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        num_samples: int | None = None,
        *,
        labels: torch.Tensor | Sequence[int] | None = None,
        prompts: Sequence[str] | None = None,
        negative_prompts: Sequence[str] | None = None,
        guidance_scale: float | None = None,
        sampler: Any = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_latents: bool = False,
        **sample_kwargs: Any,
    ) -> Any:
        """Draw images: ``(N, C, H, W)``, decoded by the autoencoder for a latent model.

        Args:
            num_samples: ``N``; default: one per prompt, one per label, else 1.
            labels: class labels of a class-conditional model (default: every class in turn).
            prompts, negative_prompts: one each a sample, for a text model (the negative
                prompts are the unconditional half of guidance; default ``""``).
            guidance_scale: classifier-free guidance weight (``None``: none).
            sampler: a sampler object, a name of :data:`SAMPLER_NAMES`, or ``None`` for the
                saved default (:meth:`make_sampler`).
            num_steps: the steps of a sampler given by name (default: the saved setting).
            generator, progress: as in :meth:`ddpm_lib.Sampler.sample`; ``sample_kwargs``
                too (``x_T=``, ``guidance_rescale=`` ...).
            return_latents: also return the latents of a latent model.
        """
        from .conditioning import guidance_inputs

        if sampler is None or isinstance(sampler, str):
            options = {} if num_steps is None else {"num_steps": num_steps}
            sampler = self.make_sampler(sampler, **options)
        elif num_steps is not None:
            raise ValueError("num_steps goes with a sampler given by name; this sampler object "
                             f"has its own ({getattr(sampler, 'num_steps', None)})")
        model_kwargs, unconditional, count = guidance_inputs(
            self.model, num_samples, labels=labels, prompts=prompts,
            negative_prompts=negative_prompts, guidance_scale=guidance_scale,
            device=self.device,
        )
        if unconditional is not None:
            sample_kwargs["unconditional_kwargs"] = unconditional
        x = sampler.sample(
            self.model, (count, *self.sample_shape), generator=generator,
            model_kwargs=model_kwargs, guidance_scale=guidance_scale, progress=progress,
            **sample_kwargs,
        )
        if self.latent is None:
            return x
        images = self.latent.decode(x)
        return (images, x) if return_latents else images

    # ------------------------------------------------------------------ save / load
    def to_dict(self) -> dict[str, Any]:
        """The settings that ``pipeline.json`` records (no weights)."""
        return {
            "schedule": self.schedule.to_dict(),
            "prediction": self.prediction,
            "variance": self.variance,
            "learn_sigma": self.learn_sigma,
        }

    def save_pretrained(self, directory: str | os.PathLike, *, model_folder: str = ".") -> Path:
        """Write the bundle into ``directory`` (see the module's docstring for the layout).

        Args:
            directory: the folder (created if needed).
            model_folder: the sub-folder of the denoiser (``"."``: the folder itself, so that
                it is also a plain model folder; :class:`ddpm_lib.LatentDiffusion` uses
                ``"unet"``).

        Returns:
            the folder.
        """
        from ._pipeline_formats import write_bundle

        if self.latent is not None:
            self.latent._require_scale("save")
        return write_bundle(
            Path(directory), model=self.model, model_folder=model_folder,
            autoencoder=self.autoencoder, scale_factor=self.scale_factor,
            diffusion=self.to_dict(), sampler=self.sampler_settings,
            channel_stats=self.latent.channel_stats if self.latent is not None else None,
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        use_ema: bool = True,
        device: str | torch.device | None = None,
        default_schedule: NoiseSchedule | None = None,
        model_class: type | None = None,
        autoencoder_class: type | None = None,
    ) -> DiffusionPipeline:
        """Load a trained model from any folder the library writes (models in eval mode).

        ``source`` is a pipeline folder (``pipeline.json``), a Trainer ``out_dir`` (its newest
        good checkpoint; ``use_ema`` picks the averaged weights), one checkpoint folder, a
        pretrained model folder (``config.json``, with ``diffusion.json`` / ``schedule.json``
        beside it when an earlier version exported it), a latent model folder
        (``latent_diffusion.json``) or a latent training run. A folder that records no
        schedule gets ``default_schedule`` (DDPM's linear, T = 1000, when ``None``) and
        eps-prediction. ``model_class`` / ``autoencoder_class`` override the saved classes
        (your own subclasses).

        Raises:
            FileNotFoundError: ``source`` does not exist.
            ValueError: a folder that is not one of the above, or whose files are corrupt
                (the message names the file).
        """
        from ._pipeline_formats import read_parts, schedule_of

        if (Path(source) / "model_index.json").is_file():  # a diffusers pipeline folder
            return cls.from_diffusers(source, device=device)
        parts = read_parts(Path(source), use_ema=use_ema, model_class=model_class,
                           autoencoder_class=autoencoder_class)
        if parts.model is None:
            raise ValueError(f"{source} holds no denoising model (only an autoencoder); "
                             "load it with ddpm_lib.LatentDiffusion.from_pretrained")
        diffusion = parts.diffusion
        own = getattr(parts.model, "schedule", None)  # a ScoreBasedModel's VP view
        pipeline = cls(
            parts.model,
            schedule_of(parts, own if isinstance(own, NoiseSchedule) else default_schedule),
            prediction=diffusion.get("prediction", "eps"), variance=diffusion.get("variance"),
            autoencoder=parts.autoencoder, scale_factor=parts.scale_factor,
            sampler=parts.sampler, latent_shift=(parts.channel_stats or (None, None))[0],
            latent_scale=(parts.channel_stats or (None, None))[1],
        )
        pipeline.source = parts.where
        if device is not None:
            pipeline.to(device)
        return pipeline.eval()

    @classmethod
    def from_diffusers(
        cls, folder: str | os.PathLike, *, scheduler: Any = None,
        sampler: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
    ) -> DiffusionPipeline:
        """Load a diffusers Stable Diffusion folder (``model_index.json``, ``unet/``,
        ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; SD 1.x / 2.x layouts) as
        one pipeline: the UNet and the VAE converted to ddpm_lib's (same outputs), the text
        encoder wrapped by :class:`ddpm_lib.HFTextEncoder`, the scheduler config mapped to the
        schedule, the prediction and a default sampler on diffusers' grid (see
        ``ddpm_lib._diffusers_folder``). :meth:`from_pretrained` reads such a folder too.

        Args:
            folder: the diffusers folder (nothing is downloaded).
            scheduler: a diffusers scheduler object whose trajectory the default sampler
                should follow (``DDIMScheduler`` or ``DPMSolverMultistepScheduler``), instead
                of the folder's.
            sampler: default sampler settings instead of those derived from the scheduler.
            device: where to put the models.

        Raises:
            FileNotFoundError: ``folder`` does not exist.
            ValueError: a part is missing, or a setting cannot be converted (UNet blocks, beta
                schedule, prediction type, a text encoder of another width); the message says
                which.
        """
        from ._diffusers_folder import read_diffusers_folder

        return read_diffusers_folder(folder, scheduler=scheduler,
                                     sampler=None if sampler is None else dict(sampler),
                                     device=device)

    def save_diffusers(self, directory: str | os.PathLike) -> Path:
        """Write the pipeline in the diffusers Stable Diffusion layout (for a latent text
        model with an :class:`ddpm_lib.HFTextEncoder` and a ``text_attention="transformer"``
        UNet, e.g. one read by :meth:`from_diffusers`); diffusers'
        ``StableDiffusionPipeline.from_pretrained`` loads it. Returns the folder."""
        from ._diffusers_folder import write_diffusers_folder

        return write_diffusers_folder(self, directory)

    def __repr__(self) -> str:
        latent = (f", autoencoder={type(self.autoencoder).__name__}, "
                  f"scale_factor={self.scale_factor}" if self.latent is not None else "")
        return (f"DiffusionPipeline(model={type(self.model).__name__}, prediction="
                f"{self.prediction!r}, variance={self.variance!r}, T="
                f"{self.schedule.num_timesteps}{latent})")


def _check_sampler_settings(settings: Any) -> dict[str, Any]:
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise TypeError(f"sampler must be a dict of settings or None; got {type(settings).__name__}")
    settings = dict(settings)
    if "name" in settings:
        check_choice("sampler['name']", settings["name"], SAMPLER_NAMES)
    try:
        json.dumps(settings)  # saved in pipeline.json
    except (TypeError, ValueError) as error:
        raise TypeError(f"sampler settings must be JSON values (they are saved); got "
                        f"{settings!r}: {error}") from None
    return settings


@dataclass
class TrainedModel:
    """Deprecated: what :func:`load_trained_model` returns; use :class:`DiffusionPipeline`.

    ``model`` (eval mode), ``schedule``, ``prediction``, ``learn_sigma``, ``variance``,
    ``num_classes`` and ``source`` (the folder read).
    """

    model: torch.nn.Module
    schedule: Any
    prediction: str
    learn_sigma: bool
    variance: str
    num_classes: int | None
    source: Path


def load_trained_model(
    source: str | os.PathLike,
    *,
    use_ema: bool = True,
    device: str | torch.device | None = None,
    default_schedule: Any = None,
) -> TrainedModel:
    """Deprecated: :meth:`DiffusionPipeline.from_pretrained` reads the same folders (and more)."""
    pipe = DiffusionPipeline.from_pretrained(
        source, use_ema=use_ema, device=device, default_schedule=default_schedule)
    assert pipe.source is not None
    return TrainedModel(model=pipe.model, schedule=pipe.schedule, prediction=pipe.prediction,
                        learn_sigma=pipe.learn_sigma, variance=pipe.variance,
                        num_classes=pipe.num_classes, source=pipe.source)
