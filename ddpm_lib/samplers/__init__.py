"""Samplers: DDPM (ancestral, respaced), DDIM (with inversion), DPM-Solver++ 2M, the score-SDE
samplers, Analytic-DPM's variance, DP-optimal timesteps and inpainting.

Every sampler takes the model as an argument (``sampler.sample(model, shape)``); the loop,
guidance, progress, trajectory and compilation live once in :class:`Sampler`.
"""

from .analytic_variance import AnalyticVariance, optimal_timesteps
from .base import SPACINGS, SampleTrajectory, Sampler, dynamic_threshold, spaced_timesteps
from .ddim import DDIMSampler
from .ddpm import DDPMSampler, respace
from .dpm_solver import DPMSolverSampler
from .inpaint import repaint_plan
from .sde import SDESampler, VPSDE
from .grids import grid_timesteps

__all__ = [
    "AnalyticVariance",
    "SPACINGS",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "SDESampler",
    "SampleTrajectory",
    "Sampler",
    "dynamic_threshold",
    "optimal_timesteps",
    "repaint_plan",
    "grid_timesteps",
    "respace",
    "spaced_timesteps",
    "VPSDE",
]
