"""A Stable Diffusion-layout folder of diffusers (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``) read into one :class:`DiffusionPipeline`,
and a pipeline written back in that layout.

Reading (:func:`read_diffusers_folder`, what ``DiffusionPipeline.from_diffusers`` runs):

* ``unet/``: a ``UNet2DConditionModel``, converted by
  :func:`ddpm_lib.interop_sd.unet_from_diffusers_sd` (same outputs);
* ``vae/``: an ``AutoencoderKL``, converted by :func:`ddpm_lib.autoencoder_from_diffusers`,
  with its ``scaling_factor`` as the latents' scale factor;
* ``text_encoder/`` + ``tokenizer/``: the ``transformers`` classes ``model_index.json`` names
  (``CLIPTextModel`` + ``CLIPTokenizer`` for SD 1.x / 2.x; any text model with
  ``last_hidden_state``, e.g. Chinese-CLIP's ``ChineseCLIPTextModel``), wrapped by
  :class:`ddpm_lib.HFTextEncoder` as Stable Diffusion uses them (prompts padded to the
  tokenizer's ``model_max_length``, every token state attended to);
* ``scheduler/scheduler_config.json``: the training schedule (``beta_schedule`` ``linear`` /
  ``scaled_linear`` / ``squaredcos_cap_v2`` / ``sigmoid`` or ``trained_betas``,
  ``rescale_betas_zero_snr``), the ``prediction_type`` and the default sampler: DDIM, or
  DPM-Solver++ for a ``DPMSolverMultistepScheduler``, on the grid diffusers places
  (``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``), so that the pipeline's
  default sampling is the diffusers pipeline's.

Nothing is downloaded: every part is read with ``local_files_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ._readers import read_json
from .schedule import NoiseSchedule

__all__ = ["read_diffusers_folder", "sampler_settings", "schedule_from_config",
           "write_diffusers_folder"]

MODEL_INDEX = "model_index.json"
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: diffusers' prediction_type -> ours
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
#: diffusers scheduler classes whose trajectory one of our samplers reproduces
_DPM_SOLVER = "DPMSolverMultistepScheduler"


def _check_folder(folder: Path) -> dict[str, Any]:
    """``model_index.json`` of ``folder``; a ``ValueError`` saying what is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder")
    index_path = folder / MODEL_INDEX
    missing = [] if index_path.is_file() else [MODEL_INDEX]
    missing += [f"{part}/" for part in PARTS if not (folder / part).is_dir()]
    if missing:
        raise ValueError(
            f"{folder} is not a diffusers Stable Diffusion folder: it lacks {', '.join(missing)} "
            f"(expected {MODEL_INDEX} and the sub-folders {', '.join(p + '/' for p in PARTS)})"
        )
    return read_json(index_path, what="diffusers model index")


def schedule_from_config(config: dict[str, Any], where: Any = "scheduler config") -> NoiseSchedule:
    """The :class:`NoiseSchedule` of a diffusers scheduler config (``num_train_timesteps``,
    ``beta_start``, ``beta_end``, ``beta_schedule`` or ``trained_betas``,
    ``rescale_betas_zero_snr``); ``ValueError`` naming an unknown ``beta_schedule``."""
    steps = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        schedule = NoiseSchedule(config["trained_betas"])
    elif kind == "linear":
        schedule = NoiseSchedule.linear(steps, start, end)
    elif kind == "scaled_linear":
        schedule = NoiseSchedule.scaled_linear(steps, start, end)
    elif kind == "squaredcos_cap_v2":
        schedule = NoiseSchedule.cosine(steps)
    elif kind == "sigmoid":
        schedule = NoiseSchedule.sigmoid(steps, start, end)
    else:
        raise ValueError(f"{where}: beta_schedule={kind!r} is not a schedule ddpm_lib knows; "
                         f"expected one of {BETA_SCHEDULES} or trained_betas")
    if config.get("rescale_betas_zero_snr", False):
        schedule = schedule.rescale_zero_terminal_snr()
    return schedule


def prediction_from_config(config: dict[str, Any], where: Any = "scheduler config") -> str:
    """Our prediction name (``"eps"``, ``"v"``, ``"x0"``) of ``prediction_type``."""
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTIONS:
        raise ValueError(f"{where}: prediction_type={kind!r} is not supported; expected one of "
                         f"{tuple(PREDICTIONS)}")
    return PREDICTIONS[kind]


def sampler_settings(config: dict[str, Any], class_name: str | None = None) -> dict[str, Any]:
    """The sampler settings (``DiffusionPipeline(sampler=...)``) whose trajectory is that of
    the diffusers scheduler ``class_name`` built from ``config``.

    ``DPMSolverMultistepScheduler`` (``dpmsolver++``) maps to DPM-Solver++ (``"dpm-solver"``:
    its ``solver_order``, grid and final step); every other scheduler to DDIM on the grid
    diffusers' ``DDIMScheduler`` places with the same config (``timestep_spacing``,
    ``steps_offset``, ``set_alpha_to_one``, ``clip_sample``): for Stable Diffusion 1.x's
    ``PNDMScheduler`` too, whose PLMS steps ddpm_lib's samplers do not take. The number of
    steps is left to the sampler's default (set ``num_steps`` to choose it).
    """
    name = class_name or config.get("_class_name")
    if name == _DPM_SOLVER:
        algorithm = config.get("algorithm_type", "dpmsolver++")
        if algorithm != "dpmsolver++":
            raise ValueError(f"a {_DPM_SOLVER} with algorithm_type={algorithm!r} has no "
                             "ddpm_lib sampler; expected 'dpmsolver++'")
        spacing = config.get("timestep_spacing", "linspace")
        if config.get("use_karras_sigmas"):
            spacing = "karras"
        elif config.get("use_lu_lambdas"):
            spacing = "logsnr"
        final = "denoise" if config.get("final_sigmas_type", "zero") == "zero" else "solver"
        settings: dict[str, Any] = {
            "name": "dpm-solver", "order": int(config.get("solver_order", 2)),
            "spacing": spacing, "final_step": final,
            "lower_order_final": bool(config.get("lower_order_final", True)),
        }
    else:
        spacing = config.get("timestep_spacing", "leading")
        if config.get("clip_sample", True) and config.get("clip_sample_range", 1.0) != 1.0:
            raise ValueError(f"clip_sample_range={config.get('clip_sample_range')!r} is not "
                             "supported; ddpm_lib clips x0 to [-1, 1]")
        settings = {"name": "ddim", "spacing": spacing,
                    "set_alpha_to_one": bool(config.get("set_alpha_to_one", True)),
                    # DDIMScheduler's default clips x0 (SD's configs say clip_sample: false)
                    "clip_denoised": bool(config.get("clip_sample", True))}
    offset = int(config.get("steps_offset", 0))
    if spacing == "leading" and offset:  # diffusers adds steps_offset to "leading" grids only
        settings["steps_offset"] = offset
    return settings


def _transformers_part(folder: Path, index: dict[str, Any], part: str, fallback: str) -> Any:
    import transformers

    entry = index.get(part)
    name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else fallback
    cls = getattr(transformers, str(name), None)
    if cls is None:
        raise ValueError(f"{folder / MODEL_INDEX} names {part} class {name!r}, which "
                         "transformers does not have")
    return cls.from_pretrained(folder / part, local_files_only=True)


def read_diffusers_folder(
    folder: str | os.PathLike, *, scheduler: Any = None, sampler: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> Any:
    """The :class:`DiffusionPipeline` of a diffusers Stable Diffusion folder (see the module
    docstring); ``scheduler`` (a diffusers scheduler object) replaces the folder's for the
    default sampler, ``sampler`` (settings) replaces that default."""
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers import UNet2DConditionModel

    from .interop import autoencoder_from_diffusers
    from .interop_sd import sd_unet_kwargs, unet_from_diffusers_sd
    from .models.hf_text import HFTextEncoder
    from .models.text import TextConditionedUNet
    from .pipeline import DiffusionPipeline

    folder = Path(folder)
    index = _check_folder(folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = read_json(config_path, what="scheduler config")
    schedule = schedule_from_config(scheduler_config, config_path)
    prediction = prediction_from_config(scheduler_config, config_path)
    unet_config = UNet2DConditionModel.load_config(folder / "unet", local_files_only=True)
    context_dim = sd_unet_kwargs(unet_config)["context_dim"]  # refuses unconvertible blocks
    text_model = _transformers_part(folder, index, "text_encoder", "CLIPTextModel")
    width = getattr(text_model.config, "hidden_size", None)
    if width != context_dim:
        raise ValueError(
            f"{folder / 'text_encoder'}: the text encoder's hidden_size is {width}, but the "
            f"UNet's cross_attention_dim is {context_dim}; the two must be equal (a text "
            "encoder from another model?)")
    tokenizer = _transformers_part(folder, index, "tokenizer", "AutoTokenizer")
    limit = getattr(tokenizer, "model_max_length", None)  # CLIP: 77
    encoder = HFTextEncoder(
        text_model, tokenizer, max_length=limit if isinstance(limit, int) and limit <= 512
        else None,
        use_attention_mask=bool(getattr(text_model.config, "use_attention_mask", False)))
    unet = unet_from_diffusers_sd(
        UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True))
    vae: Any = DiffusersAutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
    if sampler is None:
        sampler = (sampler_settings(dict(scheduler.config), type(scheduler).__name__)
                   if scheduler is not None else sampler_settings(scheduler_config))
    pipeline = DiffusionPipeline(
        TextConditionedUNet(unet, encoder), schedule, prediction=prediction,
        autoencoder=autoencoder_from_diffusers(vae),
        scale_factor=float(vae.config.scaling_factor), sampler=sampler,
    )
    pipeline.source = folder
    if device is not None:
        pipeline.to(device)
    return pipeline.eval()


def _scheduler(pipeline: Any) -> Any:
    """The diffusers scheduler of ``pipeline``'s schedule, prediction and default sampler."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    settings = dict(pipeline.sampler_settings)
    prediction = {ours: theirs for theirs, ours in PREDICTIONS.items()}[pipeline.prediction]
    spacing = settings.get("spacing", "leading")
    common = {
        "num_train_timesteps": pipeline.schedule.num_timesteps,
        "trained_betas": pipeline.schedule.betas.cpu().tolist(), "prediction_type": prediction,
        "steps_offset": int(settings.get("steps_offset", 0)),
        "timestep_spacing": spacing if spacing in ("leading", "linspace", "trailing")
        else "leading",
    }
    if settings.get("name") == "dpm-solver":
        return DPMSolverMultistepScheduler(
            **common, solver_order=int(settings.get("order", 2)),
            use_karras_sigmas=spacing == "karras", use_lu_lambdas=spacing == "logsnr",
            final_sigmas_type="zero" if settings.get("final_step") == "denoise"
            else "sigma_min",
            lower_order_final=bool(settings.get("lower_order_final", True)))
    return DDIMScheduler(**common, clip_sample=bool(settings.get("clip_denoised", False)),
                         set_alpha_to_one=bool(settings.get("set_alpha_to_one", True)))


def write_diffusers_folder(pipeline: Any, folder: str | os.PathLike) -> Path:
    """Write ``pipeline`` (a text model with a Stable Diffusion-layout UNet, an
    :class:`HFTextEncoder` and an autoencoder) as a diffusers ``StableDiffusionPipeline``
    folder, atomically; ``StableDiffusionPipeline.from_pretrained`` and
    ``DiffusionPipeline.from_diffusers`` read it back. The scheduler is a ``DDIMScheduler``
    (or ``DPMSolverMultistepScheduler`` for a DPM-Solver default) with the schedule's betas
    as ``trained_betas``."""
    from diffusers import StableDiffusionPipeline

    from ._io import atomic_folder
    from .interop_sd import autoencoder_to_diffusers, unet_to_diffusers
    from .models.hf_text import HFTextEncoder
    from .models.unet import UNet

    model: Any = pipeline.model
    unet, encoder = getattr(model, "unet", None), getattr(model, "text_encoder", None)
    if not isinstance(encoder, HFTextEncoder) or not isinstance(unet, UNet) \
            or pipeline.autoencoder is None:
        raise ValueError(
            "only a latent text-to-image pipeline with an HFTextEncoder (a transformers text "
            "model) and a UNet has the diffusers Stable Diffusion layout; got model "
            f"{type(model).__name__} with text encoder {type(encoder).__name__} and "
            f"{'an' if pipeline.autoencoder is not None else 'no'} autoencoder")
    if pipeline.latent.normalization != "global":
        raise ValueError("the diffusers layout stores one latent scale factor; this pipeline "
                         "normalises its latents per channel")
    theirs: Any = StableDiffusionPipeline(
        vae=autoencoder_to_diffusers(pipeline.autoencoder, scaling_factor=pipeline.scale_factor),
        text_encoder=encoder.model, tokenizer=encoder.tokenizer, unet=unet_to_diffusers(unet),
        scheduler=_scheduler(pipeline), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_folder(folder) as staging:
        theirs.save_pretrained(staging, safe_serialization=True)
    return Path(folder)
