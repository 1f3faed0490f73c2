"""Samplers: DDPM (ancestral, respaced), DDIM (with inversion) and DPM-Solver++ 2M.

Every sampler takes the model as an argument (``sampler.sample(model, shape)``); the loop,
guidance, progress, trajectory and compilation live once in :class:`Sampler`.
"""

from .base import SPACINGS, SampleTrajectory, Sampler, dynamic_threshold, spaced_timesteps
from .ddim import DDIMSampler
from .ddpm import DDPMSampler, respace
from .dpm_solver import DPMSolverSampler
from .inpaint import repaint_plan
from .sde import SDESampler, VPSDE

__all__ = [
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "SDESampler",
    "SampleTrajectory",
    "Sampler",
    "dynamic_threshold",
    "repaint_plan",
    "respace",
    "spaced_timesteps",
    "VPSDE",
]
