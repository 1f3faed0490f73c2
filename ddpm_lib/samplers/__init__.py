"""Samplers: DDPM (ancestral, respaced), DDIM (with inversion), DPM-Solver++ 1S/2M/3M, UniPC,
PLMS / iPNDM, DEIS, the score-SDE samplers and consistency sampling; over noise levels
(``ddpm_lib.samplers.levels``) annealed Langevin dynamics, the VE SDE and EDM's Euler / Heun; step
grids in ``ddpm_lib.samplers.grids``;
Analytic-DPM's variance, DP-optimal timesteps and inpainting.

Every sampler takes the model as an argument (``sampler.sample(model, shape)``); the loop,
guidance, progress, trajectory and compilation live once in :class:`Sampler`.
"""

from .analytic_variance import AnalyticVariance, optimal_timesteps
from .consistency import ConsistencySampler, consistency_coefficients
from .base import SPACINGS, SampleTrajectory, Sampler, dynamic_threshold, spaced_timesteps
from .ddim import DDIMSampler
from .ddpm import DDPMSampler, respace
from .deis import DEISSampler
from .dpm_solver import DPMSolverSampler
from .inpaint import repaint_plan
from .loop import SamplingLoop
from .multistep import MultistepSampler
from .pndm import PNDMSampler
from .sde import SDESampler, VPSDE
from .unipc import UniPCSampler
from .edm import EDMSampler
from .langevin import AnnealedLangevinSampler
from .levels import NoiseLevelSampler
from .sde_ve import VESDESampler
from .grids import grid_timesteps

__all__ = [
    "AnnealedLangevinSampler",
    "EDMSampler",
    "NoiseLevelSampler",
    "VESDESampler",
    "AnalyticVariance",
    "ConsistencySampler",
    "consistency_coefficients",
    "SPACINGS",
    "DDIMSampler",
    "DEISSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "MultistepSampler",
    "PNDMSampler",
    "SDESampler",
    "SampleTrajectory",
    "UniPCSampler",
    "Sampler",
    "SamplingLoop",
    "dynamic_threshold",
    "optimal_timesteps",
    "repaint_plan",
    "grid_timesteps",
    "respace",
    "spaced_timesteps",
    "VPSDE",
]
