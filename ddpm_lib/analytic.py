"""Deprecated: the oracles moved to :mod:`ddpm_lib.oracles` (``ddpm_lib.analytic`` was easy to
confuse with :mod:`ddpm_lib.samplers.analytic_variance`, the Analytic-DPM sampler variance).

``from ddpm_lib.analytic import GaussianOracle`` still works and warns; import from
``ddpm_lib`` or ``ddpm_lib.oracles`` instead. This module will be removed in a later release.
"""

from __future__ import annotations

import warnings

from .oracles import GaussianMixtureOracle, GaussianOracle

__all__ = ["GaussianMixtureOracle", "GaussianOracle"]

warnings.warn(
    "ddpm_lib.analytic is deprecated; import GaussianOracle and GaussianMixtureOracle from "
    "ddpm_lib.oracles (or ddpm_lib)",
    DeprecationWarning,
    stacklevel=2,
)
