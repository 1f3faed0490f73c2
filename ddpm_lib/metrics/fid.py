"""Fréchet distance (FID) and kernel distance (KID) between two sets of image features.

FID (Heusel et al. 2017) fits a Gaussian to the features of each set and measures

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2}),

computed here in float64 with ``scipy.linalg.sqrtm`` exactly as pytorch-fid does, so numbers
are comparable with published ones when the features come from
:class:`~ddpm_lib.metrics.inception.FIDInceptionV3` with the published weights. FID is biased
upward at small sample counts (the bias decays like ``1/N``); KID (Bińkowski et al. 2018) is an
unbiased estimate of a squared MMD and is the better choice below ~10,000 samples.

Features are accumulated by :class:`FeatureStatistics`, a running float64 mean and covariance
that never holds the images (nor, unless asked, the features). It is fed from a DataLoader or
tensor (:func:`compute_statistics`), a folder of images (:func:`statistics_from_folder`), or a
sampler generating on the fly (:func:`statistics_from_sampler`); those feature sources live in
:mod:`ddpm_lib.metrics.features` and are importable from here too. Every feature extractor is a
``torch.nn.Module`` (or callable) mapping ``(B, C, H, W)`` images in ``[-1, 1]`` to ``(B, D)``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ddpm_lib._checks import check_int

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")

#: Below this many samples, FID figures are not comparable with published ones.
RECOMMENDED_MIN_SAMPLES = 10_000


# ============================================================================ Fréchet distance
def _as_float64(name: str, value: Any, ndim: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a numeric array or tensor; got {type(value).__name__}"
        ) from error
    array = np.atleast_1d(array) if ndim == 1 else np.atleast_2d(array)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def frechet_distance(
    mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^{1/2})``
    (Dowson & Landau 1982; the FID of Heusel et al. 2017 when the statistics are Inception
    pool_3 features).

    Args:
        mu1, mu2: means ``(D,)`` (numpy arrays, tensors or sequences).
        sigma1, sigma2: covariances ``(D, D)``.
        eps: when ``sigma1 sigma2`` is singular and its square root is not finite, ``eps I`` is
            added to both covariances and the root recomputed (with a warning).

    Returns:
        The squared distance as a Python float, computed in float64 with
        ``scipy.linalg.sqrtm``. A negligible imaginary part of the matrix root (from rounding)
        is discarded; a non-negligible one (diagonal above 1e-3) raises ``ValueError``. These
        are pytorch-fid's ``calculate_frechet_distance`` rules, so results agree with it.
    """
    from scipy import linalg

    mu1 = _as_float64("mu1", mu1, 1)
    mu2 = _as_float64("mu2", mu2, 1)
    sigma1 = _as_float64("sigma1", sigma1, 2)
    sigma2 = _as_float64("sigma2", sigma2, 2)
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"mu1 and mu2 must have the same dimension; got {mu1.shape[0]} and {mu2.shape[0]}"
        )
    dim = mu1.shape[0]
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (dim, dim):
            raise ValueError(
                f"{name} must have shape ({dim}, {dim}) to match the means; got {sigma.shape}"
            )
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0; got {eps!r}")

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"the product of the covariances is singular; adding {eps} to their diagonals",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(dim) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(
                f"the square root of sigma1 @ sigma2 has an imaginary component of {largest:.3g}; "
                "the covariances are not valid (positive semi-definite) covariance matrices"
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


# ============================================================================ running statistics
def _as_features(features: Any) -> torch.Tensor:
    """Validate a ``(B, D)`` batch of features (tensor or array) and return a float64 tensor."""
    if isinstance(features, (list, tuple)) and len(features) == 1:
        features = features[0]  # pytorch-fid's InceptionV3 returns a list of one tensor
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(
            f"features must be a (B, D) tensor or array; got {type(features).__name__}"
        )
    if features.ndim == 4 and features.shape[2:] == (1, 1):
        features = features.flatten(1)  # (B, D, 1, 1) pooled maps -> (B, D)
    if features.ndim != 2:
        raise ValueError(
            f"features must have shape (B, D) (a batch of feature vectors); got "
            f"{tuple(features.shape)}"
        )
    if features.dtype.is_complex or features.dtype == torch.bool:
        raise TypeError(f"features must be real numbers; got dtype {features.dtype}")
    features = features.detach().double()
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values")
    return features


class FeatureStatistics:
    """Running mean and covariance of feature vectors, accumulated in float64.

    Batches are merged with the pairwise update of Chan et al. (1979): for a batch with
    ``n_b`` rows, mean ``m_b`` and centred scatter ``M_b``,

        delta = m_b - mean;   n = n_a + n_b;   mean += delta n_b / n
        M += M_b + delta delta^T n_a n_b / n

    and ``covariance = M / (n - 1)`` (the unbiased estimate, as ``np.cov``). The result equals
    ``np.mean``/``np.cov`` of all features stacked, without keeping them (unless
    ``keep_features``, which :func:`kernel_inception_distance` needs).

    Args:
        keep_features: also keep every feature row (on the CPU, float32) in :attr:`features`.

    Statistics are saved in pytorch-fid's ``.npz`` format (``mu``, ``sigma``, plus
    ``num_samples``), so published reference statistics load with :meth:`load`.
    """

    def __init__(self, keep_features: bool = False) -> None:
        self.keep_features = bool(keep_features)
        self._count = 0
        self._mean: torch.Tensor | None = None  # (D,) float64
        self._scatter: torch.Tensor | None = None  # (D, D) float64, sum of centred outer products
        self._covariance: np.ndarray | None = None  # set by load() when the count is unknown
        self._features: list[torch.Tensor] = []
        self._source = "these statistics"

    # ------------------------------------------------------------------ accumulation
    def update(self, features: Any) -> FeatureStatistics:
        """Add a ``(B, D)`` batch of features (tensor or array); returns ``self``.

        Raises ``ValueError`` on NaN / infinite values or a dimension that differs from the
        earlier batches.
        """
        if self._count == 0 and self._covariance is not None:
            raise ValueError(
                f"{self._source} were loaded without a sample count (num_samples); they cannot "
                "be updated, only compared"
            )
        features = _as_features(features)
        if features.shape[0] == 0:
            return self
        if self._mean is not None and features.shape[1] != self._mean.shape[0]:
            raise ValueError(
                f"features must have dimension {self._mean.shape[0]} like the earlier batches; "
                f"got {features.shape[1]}"
            )
        count_b = features.shape[0]
        mean_b = features.mean(dim=0)  # (D,)
        centred = features - mean_b  # (B, D)
        scatter_b = centred.T @ centred  # (D, D)
        if self._mean is None:
            self._mean, self._scatter = mean_b, scatter_b
        else:
            mean_b, scatter_b = mean_b.to(self._mean.device), scatter_b.to(self._mean.device)
            count = self._count + count_b
            delta = mean_b - self._mean
            self._mean = self._mean + delta * (count_b / count)
            correction = torch.outer(delta, delta) * (self._count * count_b / count)  # (D, D)
            self._scatter = self._scatter + scatter_b + correction
        self._count += count_b
        if self.keep_features:
            self._features.append(features.float().cpu())
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Fold another accumulator (e.g. from another process) into this one; returns ``self``."""
        if not isinstance(other, FeatureStatistics):
            raise TypeError(f"other must be a FeatureStatistics; got {type(other).__name__}")
        if other._count == 0:
            if other._covariance is not None:
                raise ValueError("other was loaded without a sample count; it cannot be merged")
            return self
        if self._count == 0 and self._covariance is not None:
            raise ValueError(f"{self._source} were loaded without a sample count; cannot merge")
        if self._mean is None:
            self._count, self._mean, self._scatter = other._count, other._mean, other._scatter
        else:
            assert other._mean is not None and other._scatter is not None  # other._count > 0
            assert self._scatter is not None  # set together with self._mean
            if other._mean.shape != self._mean.shape:
                raise ValueError(
                    f"other must have dimension {self._mean.shape[0]}; got {other._mean.shape[0]}"
                )
            count = self._count + other._count
            delta = other._mean.to(self._mean.device) - self._mean
            self._scatter = (
                self._scatter
                + other._scatter.to(self._mean.device)
                + torch.outer(delta, delta) * (self._count * other._count / count)
            )
            self._mean = self._mean + delta * (other._count / count)
            self._count = count
        if self.keep_features:
            if not other.keep_features:
                raise ValueError("other must keep its features too (keep_features=True)")
            self._features.extend(other._features)
        return self

    # ------------------------------------------------------------------ results
    @property
    def num_samples(self) -> int | None:
        """Number of feature vectors seen; ``None`` for loaded statistics without a count."""
        if self._count == 0 and self._covariance is not None:
            return None
        return self._count

    @property
    def dim(self) -> int | None:
        """Feature dimension ``D`` (``None`` before the first batch)."""
        if self._mean is None:
            return None
        return int(self._mean.shape[0])

    @property
    def mean(self) -> np.ndarray:
        """``(D,)`` float64 mean of the features."""
        if self._mean is None:
            raise ValueError(f"{self._source} are empty: add features with update() first")
        return self._mean.cpu().numpy().copy()

    @property
    def covariance(self) -> np.ndarray:
        """``(D, D)`` float64 unbiased covariance (``np.cov(features, rowvar=False)``)."""
        if self._covariance is not None:
            return self._covariance.copy()
        if self._count < 2:
            raise ValueError(
                f"the covariance needs at least 2 samples; {self._source} hold {self._count}"
            )
        assert self._scatter is not None  # self._count >= 2
        return (self._scatter / (self._count - 1)).cpu().numpy()

    @property
    def features(self) -> np.ndarray:
        """``(N, D)`` float32 array of every feature row (only with ``keep_features=True``)."""
        if not self.keep_features:
            raise ValueError("features are kept only with FeatureStatistics(keep_features=True)")
        if not self._features:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return torch.cat(self._features).numpy()

    def frechet_distance(self, other: FeatureStatistics) -> float:
        """:func:`frechet_distance` between these statistics and ``other``."""
        if not isinstance(other, FeatureStatistics):
            raise TypeError(f"other must be a FeatureStatistics; got {type(other).__name__}")
        return frechet_distance(self.mean, self.covariance, other.mean, other.covariance)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma`` (float64) and ``num_samples`` to a compressed ``.npz``, with
        ``sha256``: the SHA-256 of all of them (:meth:`load` checks it)."""
        from ddpm_lib import _io
        from ddpm_lib._readers import content_digest

        arrays = {"mu": np.asarray(self.mean), "sigma": np.asarray(self.covariance)}
        if self.num_samples is not None:
            arrays["num_samples"] = np.asarray(self.num_samples, dtype=np.int64)
        arrays["sha256"] = np.asarray(content_digest(arrays))
        _io.save_npz(path, arrays, compressed=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        """Read a pytorch-fid / clean-fid ``.npz`` with ``mu`` and ``sigma``.

        When the file also records ``num_samples`` (files written by :meth:`save`), the result
        can be updated further; otherwise it can only be compared. A file written by
        :meth:`save` is checked against its ``sha256``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: naming the file: not a readable ``.npz`` (empty, cut short, corrupt),
                ``mu`` or ``sigma`` missing or of the wrong shape, or arrays that do not match
                the checksum saved with them.
        """
        from ddpm_lib._readers import content_digest, load_npz

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file not found: {str(path)!r}")
        data = load_npz(path, "FID statistics file (.npz)")
        missing = [key for key in ("mu", "sigma") if key not in data]
        if missing:
            raise ValueError(
                f"{str(path)!r} must hold the arrays 'mu' and 'sigma' (pytorch-fid format); "
                f"it has {sorted(data)} (missing key {missing[0]!r})"
            )
        if "sha256" in data:
            stored = str(data.pop("sha256"))
            if content_digest(data) != stored:
                raise ValueError(f"{str(path)!r}: the statistics do not match the SHA-256 saved "
                                 "with them (a corrupted file)")
        try:
            mu = _as_float64("mu", data["mu"], 1)
            sigma = _as_float64("sigma", data["sigma"], 2)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{str(path)!r}: {error}") from None
        try:
            count = int(data["num_samples"]) if "num_samples" in data else None
        except (TypeError, ValueError):
            raise ValueError(f"{str(path)!r}: num_samples must be one integer; got an array "
                             f"of shape {data['num_samples'].shape}") from None
        if sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(
                f"{str(path)!r}: sigma must have shape ({mu.shape[0]}, {mu.shape[0]}); got "
                f"{sigma.shape}"
            )
        stats = cls()
        stats._source = f"the statistics in {str(path)!r}"
        stats._mean = torch.from_numpy(mu)
        if count is not None and count >= 2:
            stats._count = count
            stats._scatter = torch.from_numpy(sigma) * (count - 1)
        else:
            stats._covariance = sigma
        return stats

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples}, dim={self.dim})"


# ============================================================================ re-exports
# The feature sources live in features.py, which imports FeatureStatistics from here; they are
# re-exported lazily (PEP 562) so that both import paths work without an import cycle.
_FEATURE_SOURCES = frozenset({
    "ImageFolder", "compute_statistics", "eval_mode", "generate_samples", "list_images",
    "quantize", "statistics_from_folder", "statistics_from_sampler",
    "_model_device", "_to_unit_range", "_images_of",
})


def __getattr__(name: str) -> Any:
    if name in _FEATURE_SOURCES:
        from . import features

        return getattr(features, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



# ============================================================================ KID
class KernelDistance(NamedTuple):
    """KID estimate: ``mean`` over subsets of the unbiased MMD^2, and its ``std``."""

    mean: float
    std: float
    num_subsets: int
    subset_size: int


def _mmd2_unbiased(
    x: torch.Tensor, y: torch.Tensor, degree: int, gamma: float, coef0: float
) -> torch.Tensor:
    """Unbiased MMD^2 between rows of ``x`` and ``y`` (both ``(m, D)``, float64).

    ``k(a, b) = (gamma a.b + coef0)^degree``;
    ``MMD^2 = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (m(m-1))
    - 2 sum_{i,j} k(x_i, y_j) / m^2``.
    """
    m = x.shape[0]
    k_xx = (x @ x.T * gamma + coef0) ** degree  # (m, m)
    k_yy = (y @ y.T * gamma + coef0) ** degree  # (m, m)
    k_xy = (x @ y.T * gamma + coef0) ** degree  # (m, m)
    off_diagonal = k_xx.sum() - k_xx.trace() + k_yy.sum() - k_yy.trace()
    return off_diagonal / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m)


def kernel_inception_distance(
    features1: Any,
    features2: Any,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    generator: torch.Generator | None = None,
) -> KernelDistance:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with a cubic kernel.

    ``k(a, b) = (gamma a.b + coef0)^degree`` with ``gamma = 1 / D`` by default. The MMD^2 is
    estimated on ``num_subsets`` random subsets of ``subset_size`` rows drawn without
    replacement from each set (``subset_size`` is reduced to the smaller set's size), and the
    mean and standard deviation over subsets are returned, as torch-fidelity and clean-fid do.

    Args:
        features1, features2: ``(N1, D)`` and ``(N2, D)`` arrays or tensors; ``N >= 2``.
        generator: draws the subsets (a seed reproduces the figure).

    Returns:
        :class:`KernelDistance` (KID is often reported x 1000).
    """
    x_all = _as_features(features1)
    y_all = _as_features(features2)
    if x_all.shape[1] != y_all.shape[1]:
        raise ValueError(
            f"features1 and features2 must have the same dimension; got {x_all.shape[1]} and "
            f"{y_all.shape[1]}"
        )
    for name, feats in (("features1", x_all), ("features2", y_all)):
        if feats.shape[0] < 2:
            raise ValueError(f"{name} must have at least 2 rows; got {feats.shape[0]}")
    num_subsets = check_int("num_subsets", num_subsets, 1)
    subset_size = check_int("subset_size", subset_size, 1)
    subset_size = min(subset_size, x_all.shape[0], y_all.shape[0])
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2; got {subset_size}")
    degree = check_int("degree", degree, 1)
    gamma = 1.0 / x_all.shape[1] if gamma is None else float(gamma)
    y_all = y_all.to(x_all.device)
    values = torch.empty(num_subsets, dtype=torch.float64)
    for index in range(num_subsets):
        rows_x = torch.randperm(x_all.shape[0], generator=generator)[:subset_size]
        rows_y = torch.randperm(y_all.shape[0], generator=generator)[:subset_size]
        values[index] = _mmd2_unbiased(
            x_all[rows_x.to(x_all.device)], y_all[rows_y.to(y_all.device)], degree, gamma, coef0
        )
    std = float(values.std(unbiased=False)) if num_subsets > 1 else math.nan
    return KernelDistance(float(values.mean()), std, num_subsets, subset_size)
