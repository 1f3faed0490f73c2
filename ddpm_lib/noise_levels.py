r"""The noise-level view of diffusion (Karras et al. 2022, "EDM", Sec. 2 and Table 1).

Every formulation this library knows perturbs data as :math:`x = s(t)\,(x_0 + \sigma(t)\,\epsilon)`;
they differ only in the scaling :math:`s(t)` and the noise level :math:`\sigma(t)`. This module
holds the noise levels:

* :func:`schedule_sigmas`: the levels of a DDPM / VP :class:`~ddpm_lib.NoiseSchedule`,
  :math:`\sigma_t = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}` with :math:`s_t = \sqrt{\bar\alpha_t}`;
  :func:`timesteps_for_sigmas` maps a level back to the timesteps around it.
* :class:`VENoiseLevels`: the geometric ladder of NCSN / NCSNv2 / the VE SDE (:math:`s = 1`).
* :class:`EDMNoiseLevels`: EDM's continuous :math:`\sigma \in [\sigma_{min}, \sigma_{max}]` and
  its :math:`\rho` sampling grid (:math:`s = 1`).

All tables are float64.
"""

from __future__ import annotations

from typing import Any

import torch

from ._checks import check_int, check_real
from .schedule import NoiseSchedule

__all__ = ["EDMNoiseLevels", "VENoiseLevels", "schedule_sigmas", "timesteps_for_sigmas"]


def schedule_sigmas(schedule: NoiseSchedule) -> torch.Tensor:
    r"""The noise levels of a VP schedule: :math:`\sigma_t = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}`.

    With :math:`x = x_t / \sqrt{\bar\alpha_t}` the DDPM forward process :math:`x_t = \sqrt{\bar
    \alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon` reads :math:`x = x_0 + \sigma_t \epsilon`
    (EDM Table 1, "VP"). Returns a float64 ``(T,)`` tensor, increasing in ``t`` for every
    schedule whose :math:`\bar\alpha_t` decreases; :math:`\sigma_t = \infty` where
    :math:`\bar\alpha_t = 0` (a zero-terminal-SNR schedule).
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
    abar = schedule.alphas_cumprod.double()
    return ((1.0 - abar) / abar).sqrt()


def timesteps_for_sigmas(
    schedule: NoiseSchedule, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The two timesteps whose levels enclose ``sigma``, and the weight of the upper one.

    For a ``(B,)`` float tensor of levels returns ``(t_low, t_high, weight)``: long ``(B,)``
    timesteps with :math:`\sigma_{t_{low}} \le \sigma \le \sigma_{t_{high}}` and the float64
    interpolation weight in :math:`\log\sigma`, :math:`w = (\log\sigma - \log\sigma_{t_{low}}) /
    (\log\sigma_{t_{high}} - \log\sigma_{t_{low}})` (0 at a grid level, which is then
    ``t_low``). Raises ``ValueError`` for a level outside :math:`[\sigma_0, \sigma_{T-1}]`
    (relative tolerance 1e-6), where no timestep of the schedule applies.
    """
    sigmas = schedule_sigmas(schedule).to(sigma.device)
    if bool((sigmas[1:] <= sigmas[:-1]).any()):
        raise ValueError("the schedule's sigmas must increase strictly with t to be inverted")
    s = sigma.double()
    if not torch.compiler.is_compiling():
        low_ok = s >= sigmas[0] * (1 - 1e-6)
        high_ok = s <= sigmas[-1] * (1 + 1e-6)
        if not bool((low_ok & high_ok).all()):
            raise ValueError(
                f"sigma must lie in the schedule's range [{float(sigmas[0]):.6g}, "
                f"{float(sigmas[-1]):.6g}]; got values in [{float(s.min()):.6g}, {float(s.max()):.6g}]"
            )
    s = s.clamp(sigmas[0], sigmas[-1])
    log_sigmas, log_s = sigmas.log(), s.log()
    t_high = torch.searchsorted(log_sigmas, log_s).clamp(1, len(sigmas) - 1)
    t_low = t_high - 1
    lo, hi = log_sigmas[t_low], log_sigmas[t_high]
    weight = ((log_s - lo) / (hi - lo)).clamp(0.0, 1.0)
    at_high = weight >= 1.0  # exactly the upper level: report it as its own timestep
    t_low = torch.where(at_high, t_high, t_low)
    weight = torch.where(at_high, torch.zeros_like(weight), weight)
    return t_low, t_high, weight


def _check_range(sigma_min: Any, sigma_max: Any) -> tuple[float, float]:
    sigma_min = float(check_real("sigma_min", sigma_min, 0.0, open_min=True))
    sigma_max = float(check_real("sigma_max", sigma_max, 0.0, open_min=True))
    if sigma_min >= sigma_max:
        raise ValueError(
            f"sigma_min must be < sigma_max; got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
        )
    return sigma_min, sigma_max


class VENoiseLevels:
    r"""The geometric ladder of noise levels of NCSN (Song & Ermon 2019), NCSNv2 and the VE SDE.

    :math:`\sigma_i = \sigma_{max} (\sigma_{min} / \sigma_{max})^{i / (N - 1)}`, ``i = 0 .. N-1``:
    ``sigmas`` is float64 ``(N,)`` and *decreasing* (NCSN's :math:`\sigma_1 > \dots >
    \sigma_L`, the order a sampler visits them); one level (``N = 1``) is :math:`\sigma_{max}`.
    The forward process is :math:`x = x_0 + \sigma\,\epsilon` (:math:`s = 1`).

    Args:
        sigma_min, sigma_max: the smallest and largest level, ``0 < sigma_min < sigma_max``
            (NCSN on CIFAR-10: 0.01 and 50; the VE SDE's CIFAR-10 setting: 0.01 and 50).
        num_levels: ``N >= 1`` (NCSN: 10; NCSNv2 on CIFAR-10: 232).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, num_levels: int = 10) -> None:
        self.sigma_min, self.sigma_max = _check_range(sigma_min, sigma_max)
        self.num_levels = check_int("num_levels", num_levels, 1)
        n = self.num_levels
        i = torch.arange(n, dtype=torch.float64)
        ratio = self.sigma_min / self.sigma_max
        self.sigmas = self.sigma_max * ratio ** (i / (n - 1)) if n > 1 else torch.tensor(
            [self.sigma_max], dtype=torch.float64)

    def __len__(self) -> int:
        return self.num_levels

    def __repr__(self) -> str:
        return (f"VENoiseLevels(sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r}, "
                f"num_levels={self.num_levels})")

    def index_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """The ``(B,)`` long index of the ladder level nearest to each ``sigma`` in log scale."""
        distance = (sigma.double().log()[:, None] - self.sigmas.to(sigma.device).log()[None]).abs()
        return distance.argmin(dim=1)


class EDMNoiseLevels:
    r"""EDM's continuous noise levels (Karras et al. 2022) and its :math:`\rho` sampling grid.

    Training draws :math:`\sigma` continuously (see :class:`ddpm_lib.EDMLoss`); sampling visits

    .. math:: \sigma_i = \Big(\sigma_{max}^{1/\rho} + \tfrac{i}{N-1}\big(\sigma_{min}^{1/\rho}
              - \sigma_{max}^{1/\rho}\big)\Big)^{\rho}, \quad i = 0 .. N-1, \qquad \sigma_N = 0

    (EDM eq. 5), as :meth:`grid`. The forward process is :math:`x = x_0 + \sigma\,\epsilon`.

    Args:
        sigma_min, sigma_max: the range, ``0 < sigma_min < sigma_max`` (EDM: 0.002, 80).
        rho: the grid's exponent, ``> 0`` (EDM: 7; ``rho = 1`` is uniform in sigma).
        sigma_data: the data's standard deviation used by the preconditioning (EDM: 0.5).
    """

    def __init__(
        self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
        sigma_data: float = 0.5,
    ) -> None:
        self.sigma_min, self.sigma_max = _check_range(sigma_min, sigma_max)
        self.rho = float(check_real("rho", rho, 0.0, open_min=True))
        self.sigma_data = float(check_real("sigma_data", sigma_data, 0.0, open_min=True))

    def __repr__(self) -> str:
        return (f"EDMNoiseLevels(sigma_min={self.sigma_min!r}, sigma_max={self.sigma_max!r}, "
                f"rho={self.rho!r}, sigma_data={self.sigma_data!r})")

    def grid(self, num_steps: int) -> torch.Tensor:
        """The float64 ``(num_steps + 1,)`` decreasing grid of EDM eq. 5, ending in 0."""
        n = check_int("num_steps", num_steps, 1)
        ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
        max_inv, min_inv = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        sigmas = (max_inv + ramp * (min_inv - max_inv)) ** self.rho
        return torch.cat([sigmas, sigmas.new_zeros(1)])

