r"""Analytic-DPM (Bao et al. 2022): the optimal reverse variance from the score's mean norm,
and Watson et al.'s (2021) dynamic-programming choice of timesteps with its closed-form cost.

**The optimal variance.** A step from level ``t`` to a lower-noise level ``s`` of the DDIM
family (Song et al. 2021, eq. 12; DDPM is ``lambda^2 = beta-tilde``) samples::

    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - lambda^2) eps + lambda z.

With ``x0`` and ``eps`` replaced by their conditional means, the Gaussian reverse step
``N(mu(x_t), sigma^2 I)`` of least KL has (Bao et al., Theorem 1)::

    sigma*^2 = lambda^2 + (sqrt((1 - abar_t) / alpha) - sqrt(1 - abar_s - lambda^2))^2 (1 - Gamma_t)
             = lambda^2 + c^2 Var_x0(t),      alpha = abar_t / abar_s,
    Gamma_t  = E_q ||eps_theta(x_t, t)||^2 / d,     Var_x0(t) = (1 - abar_t) / abar_t (1 - Gamma_t)

where ``c = sqrt(abar_s) - sqrt(1 - abar_s - lambda^2) sqrt(abar_t / (1 - abar_t))`` is the
weight of ``x0`` in the step and ``Var_x0(t)`` the mean per-dimension variance of ``x0`` given
``x_t``. ``Gamma_t`` is estimated once per model by Monte Carlo on the training data
(:meth:`AnalyticVariance.estimate`); a respaced sampler uses the same table with ``s`` the
next timestep of its list.

**Clipping** (Bao et al., Theorem 2 and Sec. 5): ``Var_x0`` lies in ``[0, (1 - abar_t) /
abar_t]`` (``0 <= Gamma_t <= 1``) and, for data in ``[-1, 1]``, below 1, so the estimate is
clipped to these bounds. The last step returns the mean (no noise), and the noise of the step
into the lowest level is capped so that, seen through the final ``x0 = x / sqrt(abar)``, its
mean absolute size stays under half an 8-bit bin: ``sqrt(2 / pi) sigma / sqrt(abar) <= 1 /
255`` (our reading of the paper's clip of ``sigma_2``; ``clip_last=False`` turns it off).

**Gaussian data** ``N(mu, s^2 I)``: ``Gamma_t = (1 - abar_t) / (abar_t s^2 + 1 - abar_t)``
exactly (:meth:`AnalyticVariance.gaussian`), so ``Var_x0(t) = s^2 (1 - abar_t) / (abar_t s^2
+ 1 - abar_t)``, the posterior variance of ``x0``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import check_choice, check_int
from ..schedule import PREDICTION_TYPES, NoiseSchedule

_FORMAT = "ddpm_lib.AnalyticVariance"
#: half the width of one 8-bit bin of data in [-1, 1]
_HALF_BIN = 1.0 / 255.0


def schedule_fingerprint(schedule: NoiseSchedule) -> str:
    """A short hash of the schedule's betas (float64): tables are tied to their schedule."""
    betas = schedule.betas.detach().cpu().double().contiguous().numpy().tobytes()
    return hashlib.sha256(betas).hexdigest()[:16]


class AnalyticVariance:
    """The table ``Gamma_t = E ||eps_theta(x_t, t)||^2 / d`` of a model, and the variances from it.

    Args:
        schedule: the forward process of the model.
        gamma: ``(T,)`` the estimates, ``NaN`` at timesteps that were not estimated.
        num_samples: how many data samples each estimate averages (recorded with the table).

    Build it with :meth:`estimate` (a trained model), :meth:`gaussian` (the exact table of
    Gaussian data) or :meth:`load`; pass it as ``variance=`` to
    :class:`~ddpm_lib.samplers.ddpm.DDPMSampler` or :class:`~ddpm_lib.samplers.ddim.DDIMSampler`,
    or to :func:`optimal_timesteps`.
    """

    def __init__(
        self, schedule: NoiseSchedule, gamma: Sequence[float] | torch.Tensor,
        num_samples: int | None = None,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        gamma = torch.as_tensor(gamma, dtype=torch.float64).detach().cpu()
        if gamma.shape != (schedule.num_timesteps,):
            raise ValueError(
                f"gamma must have shape ({schedule.num_timesteps},) (one value per timestep); "
                f"got {tuple(gamma.shape)}"
            )
        known = gamma[~gamma.isnan()]
        if bool((known < 0).any()) or bool(torch.isinf(known).any()):
            raise ValueError("gamma must hold finite values >= 0 (or NaN where not estimated)")
        self.gamma = gamma
        self.num_samples = num_samples
        self.fingerprint = schedule_fingerprint(schedule)
        self._alphas_cumprod = schedule.alphas_cumprod.detach().cpu().double()

    def __repr__(self) -> str:
        estimated = int((~self.gamma.isnan()).sum())
        return (f"AnalyticVariance(timesteps={estimated}/{self.gamma.numel()}, "
                f"num_samples={self.num_samples}, fingerprint={self.fingerprint!r})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def gaussian(cls, schedule: NoiseSchedule, std: float) -> AnalyticVariance:
        """The exact table of data ``N(mu, std^2 I)`` (any ``mu``), with the exact predictor."""
        abar = schedule.alphas_cumprod.cpu().double()
        return cls(schedule, (1 - abar) / (abar * float(std) ** 2 + 1 - abar))

    @classmethod
    @torch.no_grad()
    def estimate(
        cls,
        model: Callable[..., torch.Tensor],
        schedule: NoiseSchedule,
        dataset: Any,
        num_samples: int = 1000,
        batch_size: int = 256,
        progress: bool = True,
        generator: torch.Generator | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        prediction: str = "eps",
        learn_sigma: bool = False,
        device: torch.device | str | None = None,
    ) -> AnalyticVariance:
        """Monte-Carlo estimate of ``Gamma_t`` on the training data (Bao et al., eq. 8).

        ``num_samples`` data points (drawn without replacement while the data lasts) are noised
        to every timestep with fresh noise, and ``||eps_theta(x_t, t)||^2 / d`` is averaged;
        the ``(point, timestep)`` pairs are evaluated in batches of ``batch_size``.

        Args:
            model: the trained model, ``model(x_t, t)``.
            schedule: its forward process.
            dataset: a tensor ``(N, ...)`` or a dataset whose items are tensors or tuples whose
                first entry is the tensor (images in the data range).
            num_samples: data points per timestep.
            batch_size: model inputs per call.
            progress: show a tqdm progress bar.
            generator: source of the data choice and of the noise.
            timesteps: estimate only these (default: all ``T``).
            prediction: what the model predicts (``"eps"``, ``"x0"``, ``"v"``); converted to eps.
            learn_sigma: the model returns ``2C`` channels; the first ``C`` are used.
            device: where to run (default: the model's device).

        Returns:
            the table, with ``NaN`` at timesteps not estimated.
        """
        from .base import _model_device, randn

        check_choice("prediction", prediction, PREDICTION_TYPES)
        check_int("num_samples", num_samples, 1)
        check_int("batch_size", batch_size, 1)
        num_timesteps = schedule.num_timesteps
        if timesteps is None:
            chosen = torch.arange(num_timesteps)
        else:
            chosen = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1)
            if chosen.numel() == 0 or int(chosen.min()) < 0 or int(chosen.max()) >= num_timesteps:
                raise ValueError(
                    f"timesteps must be a non-empty list in [0, {num_timesteps - 1}]; "
                    f"got {chosen.tolist()[:8]}"
                )
        device = torch.device(device) if device is not None else _model_device(model)
        data = _draw(dataset, num_samples, generator).to(device)
        num_points = data.shape[0]
        schedule_on = schedule
        if schedule.device != device:
            schedule_on = NoiseSchedule(schedule.betas).to(device)
        totals = torch.zeros(num_timesteps, dtype=torch.float64)
        pairs = chosen.numel() * num_points
        chunks = range(0, pairs, batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="Analytic-DPM Gamma_t", leave=False)
        for first in chunks:
            pair = torch.arange(first, min(first + batch_size, pairs))
            t = chosen[pair // num_points].to(device)
            x0 = data[(pair % num_points).to(device)]
            noise = randn(x0.shape, generator, device, x0.dtype)
            x_t = schedule_on.q_sample(x0, t, noise=noise)
            output = model(x_t, t)
            output = getattr(output, "sample", output)
            if learn_sigma:
                output = output[:, : x_t.shape[1]]
            eps = schedule_on.split_prediction(output, x_t, t, prediction)[1]
            squared = eps.double().flatten(1).pow(2).mean(1)  # ||eps||^2 / d per input
            totals.index_add_(0, t.cpu(), squared.cpu())
        gamma = torch.full((num_timesteps,), float("nan"), dtype=torch.float64)
        gamma[chosen] = totals[chosen] / num_points
        return cls(schedule, gamma, num_samples=num_points)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the table: ``.safetensors`` (float64 tensor + metadata), else JSON; both
        record ``sha256``, the SHA-256 of the table, its sample count and its schedule's
        fingerprint (:meth:`load` checks it)."""
        from ddpm_lib import _io

        path = Path(path)
        digest = _table_digest(self.gamma, self.fingerprint, self.num_samples)
        if path.suffix == ".safetensors":  # written atomically: a failed save keeps the old table
            metadata = {"format": _FORMAT, "fingerprint": self.fingerprint,
                        "num_samples": str(self.num_samples), "sha256": digest}
            _io.save_safetensors(path, {"gamma": self.gamma.contiguous()}, metadata=metadata)
        else:
            values = [None if math.isnan(v) else v for v in self.gamma.tolist()]
            record = {"format": _FORMAT, "fingerprint": self.fingerprint,
                      "num_samples": self.num_samples, "gamma": values, "sha256": digest}
            _io.write_text(path, json.dumps(record))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, schedule: NoiseSchedule) -> AnalyticVariance:
        """Read a table written by :meth:`save` for ``schedule``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: naming the file: not such a table (empty, cut short, not JSON or
                safetensors, a missing key), a table that does not match its checksum
                (corrupted), or one estimated with another schedule (its fingerprint differs).
        """
        from ddpm_lib._readers import load_safetensors, read_json

        path = Path(path)
        where = f"path {str(path)!r}"
        try:
            if path.suffix == ".safetensors":
                tensors, metadata = load_safetensors(path, "AnalyticVariance table")
                gamma = tensors["gamma"]
                count = metadata.get("num_samples")
                num_samples: int | None = int(count) if count not in (None, "None") else None
            else:
                metadata = read_json(path, what="AnalyticVariance table")
                gamma = torch.tensor([float("nan") if v is None else v
                                      for v in metadata["gamma"]], dtype=torch.float64)
                num_samples = metadata.get("num_samples")
        except KeyError as error:
            raise ValueError(f"{where} is not an AnalyticVariance table (missing key "
                             f"{error.args[0]!r})") from None
        except (TypeError, ValueError) as error:
            if str(path) in str(error):
                raise
            raise ValueError(f"{where} is not an AnalyticVariance table: {error}") from None
        if metadata.get("format") != _FORMAT:
            raise ValueError(f"{where} is not an AnalyticVariance table")
        stored = metadata.get("sha256")
        if stored is not None and stored != _table_digest(
                gamma, str(metadata.get("fingerprint")), num_samples):
            raise ValueError(f"{where}: the table does not match the SHA-256 saved with it "
                             "(a corrupted file)")
        expected = schedule_fingerprint(schedule)
        if metadata.get("fingerprint") != expected:
            raise ValueError(
                f"the Analytic-DPM table {str(path)!r} was estimated with another schedule "
                f"(fingerprint {metadata.get('fingerprint')!r}); expected {expected!r} for "
                f"{schedule!r}"
            )
        return cls(schedule, gamma, num_samples=num_samples)

    def check_schedule(self, schedule: NoiseSchedule, name: str = "variance") -> None:
        """Raise ``ValueError`` unless the table was made for ``schedule``."""
        expected = schedule_fingerprint(schedule)
        if self.fingerprint != expected:
            raise ValueError(
                f"{name} is an Analytic-DPM table of another schedule (fingerprint "
                f"{self.fingerprint!r}); expected one estimated for {schedule!r} "
                f"(fingerprint {expected!r})"
            )

    # ------------------------------------------------------------------ variances
    def x0_variance(
        self, timesteps: torch.Tensor, data_range: float | None = 1.0
    ) -> torch.Tensor:
        """``Var_x0(t) = (1 - abar_t) / abar_t (1 - Gamma_t)``, clipped to its bounds, float64.

        ``data_range``: the half-width of the data's range (1 for ``[-1, 1]``) bounds it by
        ``data_range^2`` (Bao et al., Theorem 2); ``None`` for no such bound. The result is
        made non-decreasing in ``t`` (a running maximum over the estimated timesteps), as the
        true posterior variance is: this removes the dips of Monte-Carlo noise.
        """
        timesteps = torch.as_tensor(timesteps, dtype=torch.long)
        gamma = self.gamma[timesteps]
        if bool(gamma.isnan().any()):
            missing = timesteps[gamma.isnan()].tolist()[:8]
            raise ValueError(
                f"variance has no Gamma_t estimate at timesteps {missing}; estimate them "
                f"(AnalyticVariance.estimate(..., timesteps=...))"
            )
        # the clipped estimate at every timestep, then its running maximum over t: the mean
        # posterior variance of x0 cannot decrease as the noise grows (x_t is a noisier copy of
        # x_s for s < t), so a dip is Monte-Carlo noise -- where 1 - Gamma_t is small an
        # estimate of Gamma_t above 1 would otherwise make a step look free of error
        abar = self._alphas_cumprod
        ratio = (1 - abar) / abar
        variance = (ratio * (1 - self.gamma.nan_to_num(1.0))).clamp(min=0.0)
        variance = torch.minimum(variance, ratio)
        if data_range is not None:
            variance = variance.clamp(max=float(data_range) ** 2)
        return variance.cummax(0).values[timesteps]

    def step_variances(
        self,
        timesteps: torch.Tensor,
        eta: float = 1.0,
        data_range: float | None = 1.0,
        clip_last: bool = True,
    ) -> torch.Tensor:
        """``(N,)`` the optimal noise variance of each step of a run over ``timesteps``.

        Step ``k`` goes from ``timesteps[k]`` to ``timesteps[k + 1]`` (the clean data after the
        last) with ``lambda^2 = eta^2 beta-tilde`` of the jump (``eta = 1``: DDPM, and DDIM with
        ``eta = 1``). The last step's variance is 0 (the mean is returned); with
        ``clip_last`` the step into the lowest level is capped (see the module docstring).
        """
        timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
        abar_t = self._alphas_cumprod[timesteps]
        abar_s = torch.cat([abar_t[1:], abar_t.new_ones(1)])
        lambda2 = eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
        weight = abar_s.sqrt() - (1 - abar_s - lambda2).clamp(min=0).sqrt() * (
            abar_t / (1 - abar_t)
        ).sqrt()
        variance = lambda2 + weight**2 * self.x0_variance(timesteps, data_range)
        variance[-1] = 0.0
        if clip_last and len(variance) > 1:
            bound = (math.sqrt(math.pi / 2) * _HALF_BIN * float(abar_t[-1].sqrt())) ** 2
            variance[-2] = min(float(variance[-2]), bound)
        return variance


def analytic_table(
    variance: Any, schedule: NoiseSchedule, allow_strings: bool = True
) -> AnalyticVariance | None:
    """The samplers' check of ``variance=``: an :class:`AnalyticVariance` of ``schedule``, or
    ``None`` (a string, left to the sampler, or ``None``)."""
    if isinstance(variance, AnalyticVariance):
        variance.check_schedule(schedule)
        return variance
    if variance is None or (allow_strings and isinstance(variance, str)):
        return None
    raise TypeError(
        f"variance must be {'a string or ' if allow_strings else ''}an AnalyticVariance"
        f"{'' if allow_strings else ' or None'}; got {type(variance).__name__}"
    )


def _permutation(size: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.randperm(size, generator=generator, device=device).cpu()


def _draw(dataset: Any, num_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """``min(num_samples, len(dataset))`` items as one tensor (drawn without replacement)."""
    if isinstance(dataset, torch.Tensor):
        size = dataset.shape[0]
        pick = _permutation(size, generator)[:num_samples].to(dataset.device)
        return dataset[pick].float() if not dataset.is_floating_point() else dataset[pick]
    try:
        size = len(dataset)
    except TypeError as error:
        raise TypeError(
            f"dataset must be a tensor or a sized dataset; got {type(dataset).__name__}"
        ) from error
    if size == 0:
        raise ValueError("dataset must not be empty")
    items = []
    for index in _permutation(size, generator)[:num_samples].tolist():
        item = dataset[index]
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f"dataset items must be tensors or tuples starting with one; got "
                f"{type(item).__name__}"
            )
        items.append(item)
    return torch.stack(items).float()


def optimal_timesteps(
    schedule: NoiseSchedule,
    variance: AnalyticVariance,
    num_steps: int,
    data_range: float | None = 1.0,
) -> list[int]:
    r"""The ``num_steps`` timesteps of least total KL cost (Watson et al. 2021; Bao et al. Sec. 4).

    A DDPM run over descending timesteps ``T - 1 = t_1 > ... > t_K = 0`` with the optimal
    variance has the variational bound ``sum_k J(t_{k+1} | t_k) + L_last(t_K)`` (plus the
    prior term), where per dimension (Bao et al., Theorem 1)::

        J(s | t) = 1/2 log(sigma*^2(s | t) / beta-tilde(s | t)),
        L_last(t) = 1/2 log(2 pi e Var_x0(t))      (the Gaussian decoder to the clean data).

    The ends are fixed (``T - 1`` and 0, as Watson et al.'s paths from ``T`` to 0), so the
    prior and decoder terms are the same for every path; the least-cost path through the
    ``T x T`` cost matrix with ``K`` nodes is found by dynamic programming in ``O(K T^2)``
    (vectorised: ``T = 1000``, ``K = 100`` takes about a second). ``K = 1`` is ``[T - 1]``.

    Args:
        schedule: the forward process.
        variance: the model's :class:`AnalyticVariance` table (every timestep estimated).
        num_steps: ``K``, the number of timesteps (model calls), ``1 <= K <= T``.
        data_range: as in :meth:`AnalyticVariance.x0_variance`.

    Returns:
        the timesteps, descending, from ``T - 1`` to 0: a list to pass as ``timesteps=``.
    """
    import numpy as np

    from .base import check_num_steps

    if not isinstance(variance, AnalyticVariance):
        raise TypeError(f"variance must be an AnalyticVariance; got {type(variance).__name__}")
    variance.check_schedule(schedule)
    num_timesteps = schedule.num_timesteps
    num_steps = check_num_steps(num_steps, num_timesteps)
    cost_matrix, last_cost = _kl_costs(schedule, variance, data_range)
    cost, last = cost_matrix.numpy(), last_cost.numpy()
    # best[t]: least cost of a path from T - 1 to t with k nodes; parents[k][s]: the node before s
    best = np.full(num_timesteps, np.inf)
    best[-1] = 0.0
    parents = []
    for _ in range(num_steps - 1):
        total = best[None, :] + cost  # (s, t): reach t, then step t -> s
        parent = total.argmin(axis=1)
        best = total[np.arange(num_timesteps), parent]
        parents.append(parent)
    # the path ends at t = 0 (Watson et al.: from T to 0), so the decoder term is the same for
    # every path; a single step goes from T - 1 straight to the data
    node = 0 if num_steps > 1 else num_timesteps - 1
    path = [node]
    for parent in reversed(parents):
        node = int(parent[node])
        path.append(node)
    path.reverse()
    return path


def _kl_costs(
    schedule: NoiseSchedule, variance: AnalyticVariance, data_range: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, T)`` cost ``J(s | t)`` (``inf`` unless ``s < t``) and ``(T,)`` last-step cost."""
    abar = schedule.alphas_cumprod.cpu().double()
    num_timesteps = abar.numel()
    x0_var = variance.x0_variance(torch.arange(num_timesteps), data_range)
    abar_s, abar_t = abar[:, None], abar[None, :]
    below = torch.arange(num_timesteps)[:, None] < torch.arange(num_timesteps)[None, :]
    ratio = torch.where(below, abar_t / abar_s, torch.zeros(()).double())
    lambda2 = (1 - abar_s) / (1 - abar_t) * (1 - ratio)  # beta-tilde of the jump t -> s
    weight = abar_s.sqrt() - (1 - abar_s - lambda2).clamp(min=0).sqrt() * (
        abar_t / (1 - abar_t)
    ).sqrt()
    sigma2 = lambda2 + weight**2 * x0_var[None, :]
    cost = 0.5 * torch.log(sigma2 / lambda2)
    cost = torch.where(below, cost, torch.full((), math.inf, dtype=torch.float64))
    last = 0.5 * torch.log(2 * math.pi * math.e * x0_var.clamp(min=1e-30))
    return cost, last


def _table_digest(gamma: torch.Tensor, fingerprint: str, num_samples: Any) -> str:
    """SHA-256 of a saved table: ``gamma`` (float64, unestimated NaN entries as a mask, so the
    JSON round trip hashes the same), the fingerprint and the sample count."""
    from ddpm_lib._readers import content_digest

    values = gamma.detach().cpu().to(torch.float64)
    missing = torch.isnan(values)
    return content_digest({"gamma": torch.where(missing, 0.0, values), "missing": missing},
                          {"fingerprint": fingerprint, "num_samples": num_samples})
