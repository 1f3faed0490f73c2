"""Samplers: DDPM (ancestral, respaced), DDIM (with inversion), DPM-Solver++ 1S/2M/3M, UniPC,
PLMS / iPNDM and DEIS; step grids in ``ddpm_lib.samplers.grids``.

Every sampler takes the model as an argument (``sampler.sample(model, shape)``); the loop,
guidance, progress, trajectory and compilation live once in :class:`Sampler`.
"""

from .base import SPACINGS, SampleTrajectory, Sampler, dynamic_threshold, spaced_timesteps
from .ddim import DDIMSampler
from .ddpm import DDPMSampler, respace
from .deis import DEISSampler
from .dpm_solver import DPMSolverSampler
from .pndm import PNDMSampler
from .unipc import UniPCSampler
from .grids import grid_timesteps

__all__ = [
    "SPACINGS",
    "DDIMSampler",
    "DEISSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "PNDMSampler",
    "SampleTrajectory",
    "UniPCSampler",
    "Sampler",
    "dynamic_threshold",
    "grid_timesteps",
    "respace",
    "spaced_timesteps",
]
