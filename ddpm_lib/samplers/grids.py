"""Step grids: which of the ``T`` training timesteps a sampler calls the model at.

Every sampler takes ``spacing=`` (one of ``SPACINGS``) or an explicit ``timesteps=[...]``.
The grids, with ``lambda_t = log(alpha_t / sigma_t) = 0.5 log(abar_t / (1 - abar_t))`` the half
log-SNR (it decreases with ``t``):

==============  =====================================================================
``linspace``    ``round(linspace(0, T - 1, N))``: both ends (Lin et al. 2024, Table 2)
``leading``     ``k * (T // N)``: starts below ``T - 1``
``trailing``    ``round(T - k T / N) - 1``: starts at ``T - 1``
``logsnr``      uniform in ``lambda`` from ``lambda_{T-1}`` to ``lambda_0`` (Lu et al. 2022,
                the grid of diffusers' ``use_lu_lambdas=True``)
``karras``      ``sigma_k = (s_max^(1/rho) + k/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``
                with ``s = sigma_t / alpha_t`` and ``rho = 7`` (Karras et al. 2022, eq. 5)
``quadratic``   ``int((k sqrt(0.8 T) / (N - 1))^2)`` (DDIM's "quad" sequence, Song et al. 2021)
==============  =====================================================================

The continuous grids (``logsnr``, ``karras``) are mapped to the training timestep nearest in
``lambda``; where two points would share a timestep, the later ones move up by one, so a grid
always has ``N`` distinct timesteps (or raises).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._checks import check_choice, check_int, is_int

SPACINGS = ("leading", "trailing", "linspace", "logsnr", "karras", "quadratic")
#: the grids that read the schedule (the others depend on ``T`` and ``N`` only)
SCHEDULE_SPACINGS = ("logsnr", "karras", "quadratic")
#: Karras et al.'s exponent of the sigma grid
KARRAS_RHO = 7.0


def spaced_timesteps(num_timesteps: int, num_steps: int, spacing: str) -> torch.Tensor:
    """``num_steps`` of the ``T`` training timesteps, descending, spaced as diffusers spaces them.

    Args:
        num_timesteps: ``T``, the length of the training schedule.
        num_steps: ``N <= T``, how many timesteps to keep.
        spacing: ``"linspace"`` (``round(linspace(0, T - 1, N))``: both ends), ``"leading"``
            (``k * (T // N)``: starts below ``T - 1``) or ``"trailing"``
            (``round(T - k T / N) - 1``: starts at ``T - 1``); Lin et al. (2024), Table 2, and
            diffusers' ``timestep_spacing`` with ``steps_offset=0`` (where diffusers' trailing
            list has a stray ``-1`` at the end, for a few N, it is left out).

    Returns:
        ``(N,)`` long tensor of distinct timesteps in ``[0, T - 1]``, descending.

    Raises:
        ValueError: an unknown spacing, or one that cannot place ``N`` distinct timesteps.
    """
    import numpy as np  # numpy's rounding and float arange are what diffusers uses

    check_choice("spacing", spacing, SPACINGS[:3])
    steps: Any
    if spacing == "linspace":
        steps = np.linspace(0, num_timesteps - 1, num_steps).round()[::-1]
    elif spacing == "leading":
        steps = (np.arange(0, num_steps) * (num_timesteps // num_steps)).round()[::-1]
    else:  # trailing
        steps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
        # for some N (61 of T = 1000) float rounding gives arange one more point, near 0, and
        # diffusers a timestep -1; the first N points are the intended ones
        steps = steps[:num_steps]
    timesteps = torch.from_numpy(steps.astype(np.int64).copy())
    _check_grid(timesteps, num_steps, num_timesteps, spacing)
    return timesteps


def half_log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``lambda = 0.5 log(abar / (1 - abar))`` (float64), decreasing in ``t``."""
    abar = alphas_cumprod.double()
    return 0.5 * (torch.log(abar) - torch.log1p(-abar))


def grid_timesteps(alphas_cumprod: torch.Tensor, num_steps: int, spacing: str) -> torch.Tensor:
    """The ``N = num_steps`` timesteps of ``spacing`` for a schedule's ``alphas_cumprod`` (T,).

    Args:
        alphas_cumprod: ``(T,)`` the schedule's ``abar_t``, decreasing.
        num_steps: ``N``, ``1 <= N <= T``.
        spacing: one of ``SPACINGS`` (see the module docstring for the formulas).

    Returns:
        ``(N,)`` long tensor of distinct timesteps in ``[0, T - 1]``, descending. A one-step
        grid is ``[T - 1]``.

    Raises:
        ValueError: an unknown spacing, or ``N`` distinct timesteps cannot be placed.
    """
    import numpy as np

    check_choice("spacing", spacing, SPACINGS)
    num_timesteps = int(alphas_cumprod.shape[0])
    if spacing not in SCHEDULE_SPACINGS:
        return spaced_timesteps(num_timesteps, num_steps, spacing)
    if num_steps > num_timesteps:
        raise ValueError(
            f"spacing={spacing!r} cannot place num_steps={num_steps} distinct timesteps in "
            f"[0, {num_timesteps - 1}]"
        )
    if num_steps == 1:
        return torch.tensor([num_timesteps - 1])
    lambdas = half_log_snr(alphas_cumprod.cpu()).numpy()  # (T,) decreasing
    ramp = np.linspace(0.0, 1.0, num_steps)
    if spacing == "quadratic":
        ascending = (np.linspace(0, np.sqrt(num_timesteps * 0.8), num_steps) ** 2).astype(np.int64)
        return _distinct(ascending, num_steps, num_timesteps, spacing)
    if spacing == "logsnr":
        targets = lambdas[-1] + ramp * (lambdas[0] - lambdas[-1])  # lambda_{T-1} .. lambda_0
    else:  # karras: sigma = exp(-lambda), the VE noise level sigma_t / alpha_t
        sigma_max, sigma_min = np.exp(-lambdas[-1]), np.exp(-lambdas[0])
        inv_rho = 1.0 / KARRAS_RHO
        sigmas = (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho))
        targets = -KARRAS_RHO * np.log(sigmas)
    # nearest training timestep in lambda, for each target (both arrays are monotone)
    nearest = np.abs(lambdas[None, :] - targets[:, None]).argmin(axis=1)  # (N,) descending
    return _distinct(nearest[::-1], num_steps, num_timesteps, spacing)


def _distinct(ascending: Any, num_steps: int, num_timesteps: int, spacing: str) -> torch.Tensor:
    """Move repeated timesteps of an ascending list up (then down) by one until all differ."""
    steps = [int(s) for s in ascending]
    for k in range(1, len(steps)):
        steps[k] = max(steps[k], steps[k - 1] + 1)
    steps[-1] = min(steps[-1], num_timesteps - 1)
    for k in range(len(steps) - 2, -1, -1):
        steps[k] = min(steps[k], steps[k + 1] - 1)
    timesteps = torch.tensor(steps[::-1], dtype=torch.long)
    _check_grid(timesteps, num_steps, num_timesteps, spacing)
    return timesteps


def _check_grid(timesteps: torch.Tensor, num_steps: int, num_timesteps: int, spacing: str) -> None:
    valid = (
        timesteps.numel() == num_steps
        and int(timesteps.min()) >= 0
        and int(timesteps.max()) < num_timesteps
        and bool((timesteps[:-1] > timesteps[1:]).all())
    )
    if not valid:
        raise ValueError(
            f"spacing={spacing!r} cannot place num_steps={num_steps} distinct timesteps in "
            f"[0, {num_timesteps - 1}]; got {timesteps.tolist()[:8]}..."
        )


def check_num_steps(num_steps: Any, num_timesteps: int, name: str = "num_steps") -> int:
    """Return ``num_steps`` if it is an int in ``[1, num_timesteps]``, else raise naming it."""
    check_int(name, num_steps)
    if not 1 <= int(num_steps) <= num_timesteps:
        raise ValueError(
            f"{name} must be in [1, {num_timesteps}] (the schedule's num_timesteps); "
            f"got {num_steps}"
        )
    return int(num_steps)


def check_timestep_list(timesteps: Any, num_timesteps: int) -> torch.Tensor:
    """Validate an explicit ``timesteps=[...]`` argument and return it as a ``(N,)`` long tensor.

    Args:
        timesteps: a non-empty sequence (list, tuple, 1-D integer tensor or array) of ints,
            strictly descending, each in ``[0, num_timesteps - 1]``.
        num_timesteps: ``T``.

    Raises:
        TypeError: not a sequence of ints.
        ValueError: empty, not strictly descending, or outside ``[0, T - 1]``.
    """
    if isinstance(timesteps, torch.Tensor):
        if timesteps.dtype.is_floating_point or timesteps.dtype == torch.bool:
            raise TypeError(
                f"timesteps must be a sequence of ints; got a tensor of dtype {timesteps.dtype}"
            )
        if timesteps.ndim != 1:
            raise ValueError(f"timesteps must be 1-D; got shape {tuple(timesteps.shape)}")
        values = [int(v) for v in timesteps.tolist()]
    else:
        if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, Sequence) and not (
            hasattr(timesteps, "tolist") and hasattr(timesteps, "dtype")
        ):
            raise TypeError(
                f"timesteps must be a sequence of ints; got {type(timesteps).__name__}"
            )
        items = timesteps.tolist() if hasattr(timesteps, "tolist") else list(timesteps)
        if not all(is_int(v) for v in items):
            raise TypeError(f"timesteps must be a sequence of ints; got {list(items)[:8]}")
        values = [int(v) for v in items]
    if not values:
        raise ValueError("timesteps must hold at least one timestep; got an empty list")
    if any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"timesteps must be strictly descending; got {values}")
    if values[0] > num_timesteps - 1 or values[-1] < 0:
        raise ValueError(
            f"timesteps must lie in [0, {num_timesteps - 1}] (the schedule's timesteps); "
            f"got {values}"
        )
    return torch.tensor(values, dtype=torch.long)
