"""ddpm_lib: Denoising Diffusion Probabilistic Models in PyTorch.

The public names below are imported lazily, so ``import ddpm_lib`` costs little more than
``import torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "NoiseSchedule": "ddpm_lib.schedule",
    "GaussianOracle": "ddpm_lib.oracles",
    "GaussianMixtureOracle": "ddpm_lib.oracles",

    "SimpleLoss": "ddpm_lib.losses",
    "VLBLoss": "ddpm_lib.losses",
    "HybridLoss": "ddpm_lib.losses",
    "AutoencoderLoss": "ddpm_lib.autoencoder_loss",
    "DenoisingScoreMatchingLoss": "ddpm_lib.score_losses",
    "EDMLoss": "ddpm_lib.score_losses",

    "schedule_sigmas": "ddpm_lib.noise_levels",
    "VENoiseLevels": "ddpm_lib.noise_levels",
    "EDMNoiseLevels": "ddpm_lib.noise_levels",
    "EDMPrecond": "ddpm_lib.denoisers",
    "VPDenoiser": "ddpm_lib.denoisers",
    "VPModel": "ddpm_lib.denoisers",
    "ScoreDenoiser": "ddpm_lib.denoisers",
    "DenoiserScore": "ddpm_lib.denoisers",
    "as_denoiser": "ddpm_lib.denoisers",
    "ScoreBasedModel": "ddpm_lib.score_model",

    "UNet": "ddpm_lib.models.unet",
    "DiT": "ddpm_lib.models.dit",
    "GuidedModel": "ddpm_lib.models.guided",
    "TextEncoder": "ddpm_lib.models.text",
    "HFTextEncoder": "ddpm_lib.models.hf_text",
    "TextConditionedUNet": "ddpm_lib.models.text",
    "unet_from_diffusers": "ddpm_lib.interop",
    "dit_from_diffusers": "ddpm_lib.interop_dit",
    "dit_from_original": "ddpm_lib.interop_dit",
    "AutoencoderKL": "ddpm_lib.models.autoencoder",
    "DiagonalGaussian": "ddpm_lib.models.autoencoder",
    "autoencoder_from_diffusers": "ddpm_lib.interop",
    "unet_to_diffusers": "ddpm_lib.interop_sd",
    "autoencoder_to_diffusers": "ddpm_lib.interop_sd",
    "DiffusersAdapter": "ddpm_lib.interop",

    "DDPMSampler": "ddpm_lib.samplers",
    "DDIMSampler": "ddpm_lib.samplers",
    "DPMSolverSampler": "ddpm_lib.samplers",
    "UniPCSampler": "ddpm_lib.samplers",
    "PNDMSampler": "ddpm_lib.samplers",
    "DEISSampler": "ddpm_lib.samplers",
    "Sampler": "ddpm_lib.samplers",
    "SampleTrajectory": "ddpm_lib.samplers",
    "SDESampler": "ddpm_lib.samplers",
    "VPSDE": "ddpm_lib.samplers",
    "AnnealedLangevinSampler": "ddpm_lib.samplers",
    "VESDESampler": "ddpm_lib.samplers",
    "EDMSampler": "ddpm_lib.samplers",
    "AnalyticVariance": "ddpm_lib.samplers",
    "optimal_timesteps": "ddpm_lib.samplers",

    "Trainer": "ddpm_lib.training",

    # learned fast sampling (ddpm_lib.distillation)
    "ConsistencySampler": "ddpm_lib.samplers",
    "ProgressiveDistillation": "ddpm_lib.distillation",
    "ConsistencyDistillation": "ddpm_lib.distillation",
    "GuidanceConditionedUNet": "ddpm_lib.distillation",
    "distill_progressive": "ddpm_lib.distillation",
    "distill_consistency": "ddpm_lib.distillation",

    "DiffusionPipeline": "ddpm_lib.pipeline",
    "ClassLabel": "ddpm_lib.conditioning",
    "Prompt": "ddpm_lib.conditioning",
    "LowResImage": "ddpm_lib.conditioning",

    "LatentDiffusion": "ddpm_lib.latent",
    "LatentDataset": "ddpm_lib.latent",
    "LatentRecipe": "ddpm_lib.latent_recipe",

    "frechet_distance": "ddpm_lib.metrics",
    "nll_bits_per_dim": "ddpm_lib.metrics",
    "prompt_accuracy": "ddpm_lib.metrics",
    "psnr": "ddpm_lib.metrics",

    "CaptionedShapesDataset": "ddpm_lib.data",

    "Cascade": "ddpm_lib.cascade",
    "CascadeStage": "ddpm_lib.cascade",
    "NoiseAugmentation": "ddpm_lib.augmentation",
    "SuperResolutionPairs": "ddpm_lib.super_resolution",
    "sr_unet_from_diffusers": "ddpm_lib.interop_sr",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


# submodules reachable as attributes after ``import ddpm_lib`` (imported on first use, as SciPy)
_SUBMODULES = ("analytic", "cli", "conditioning", "data", "denoisers", "distillation",
               "interop", "interop_dit",
               "losses", "metrics", "models", "noise_levels", "oracles", "pipeline", "samplers",
               "schedule", "score_losses", "score_model", "training", "interop_sd",
               "augmentation", "cascade", "interop_sr", "super_resolution")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"ddpm_lib.{name}")  # also sets the attribute
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ddpm_lib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
