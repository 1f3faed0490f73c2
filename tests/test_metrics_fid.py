"""FID, streaming feature statistics and KID: against pytorch-fid, numpy and direct formulas."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lib.metrics import (
    FeatureStatistics,
    compute_statistics,
    frechet_distance,
    kernel_inception_distance,
    quantize,
    statistics_from_folder,
    statistics_from_sampler,
)


def random_statistics(rng: np.random.Generator, dim: int, num: int, shift: float = 0.0):
    """Mean and covariance of ``num`` correlated Gaussian samples in ``dim`` dimensions."""
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    samples = rng.normal(size=(num, dim)) @ mixing + shift + rng.normal(size=dim)
    return samples.mean(axis=0), np.cov(samples, rowvar=False)


def pytorch_fid_distance(mu1, sigma1, mu2, sigma2) -> float:
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=False)
        return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


class TinyExtractor(torch.nn.Module):
    """A small fixed feature network: (B, 3, H, W) -> (B, 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(3)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.copy_(torch.randn(6, generator=generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images)).mean(dim=(2, 3))  # (B, 6)


# ---------------------------------------------------------------------------- Fréchet distance
@pytest.mark.parametrize("seed, dim, num", [(0, 8, 100), (1, 64, 300), (2, 32, 20)])
def test_frechet_distance_matches_pytorch_fid(seed: int, dim: int, num: int) -> None:
    # (2, 32, 20): rank-deficient covariances (N < D), the regime of small-sample FID.
    rng = np.random.default_rng(seed)
    mu1, sigma1 = random_statistics(rng, dim, num)
    mu2, sigma2 = random_statistics(rng, dim, num, shift=0.5)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    reference = pytorch_fid_distance(mu1, sigma1, mu2, sigma2)
    assert ours == pytest.approx(reference, rel=1e-6)
    assert ours > 0


def test_frechet_distance_closed_form_for_diagonal_covariances() -> None:
    # For commuting (diagonal) covariances d^2 = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    var1, var2 = rng.uniform(0.1, 3.0, size=10), rng.uniform(0.1, 3.0, size=10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric() -> None:
    rng = np.random.default_rng(5)
    mu1, sigma1 = random_statistics(rng, 48, 200)
    mu2, sigma2 = random_statistics(rng, 48, 200, shift=0.3)
    assert abs(frechet_distance(mu1, sigma1, mu1, sigma1)) < 1e-8 * np.trace(sigma1)
    forward = frechet_distance(mu1, sigma1, mu2, sigma2)
    backward = frechet_distance(mu2, sigma2, mu1, sigma1)
    assert forward == pytest.approx(backward, rel=1e-8)
    # Tensors in float32 are accepted and computed in float64.
    as_tensors = frechet_distance(*(torch.from_numpy(a) for a in (mu1, sigma1, mu2, sigma2)))
    assert as_tensors == pytest.approx(forward, rel=1e-12)


def test_frechet_distance_retries_a_singular_product_with_an_offset(monkeypatch) -> None:
    from scipy import linalg

    real_sqrtm = linalg.sqrtm
    calls = []

    def first_call_fails(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.inf) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(linalg, "sqrtm", first_call_fails)
    rng = np.random.default_rng(6)
    mu1, sigma1 = random_statistics(rng, 6, 50)
    mu2, sigma2 = random_statistics(rng, 6, 50)
    with pytest.warns(RuntimeWarning, match="singular"):
        got = frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-3)
    offset = 1e-3 * np.eye(6)
    np.testing.assert_allclose(calls[1], (sigma1 + offset) @ (sigma2 + offset))
    root = real_sqrtm((sigma1 + offset) @ (sigma2 + offset)).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2) - 2 * np.trace(root)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_rejects_bad_input() -> None:
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match=r"sigma2 must have shape \(4, 4\)"):
        frechet_distance(mu, sigma, mu, np.eye(3))
    with pytest.raises(ValueError, match="mu1 contains NaN"):
        frechet_distance(np.full(4, np.nan), sigma, mu, sigma)
    with pytest.raises(TypeError, match="sigma1"):
        frechet_distance(mu, "not a matrix", mu, sigma)
    # A "covariance" with a negative eigenvalue has an imaginary square root: refused.
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(mu, np.diag([1.0, 1.0, 1.0, -1.0]), mu, np.eye(4))


# ---------------------------------------------------------------------------- statistics
def test_streaming_statistics_equal_numpy_on_the_full_array() -> None:
    rng = np.random.default_rng(7)
    # A large common offset makes the naive sum-of-squares formula lose digits; Chan's does not.
    features = rng.normal(size=(203, 12)) * rng.uniform(0.1, 2, size=12) + 1e3
    stats = FeatureStatistics()
    for chunk in np.array_split(features, [1, 50, 51, 150]):  # uneven, including 1-row batches
        stats.update(torch.from_numpy(chunk) if len(chunk) == 99 else chunk)  # tensor or array
    one_batch = FeatureStatistics().update(features)
    assert stats.num_samples == 203 and stats.dim == 12
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        stats.covariance, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(stats.covariance, one_batch.covariance, rtol=1e-9, atol=1e-12)
    assert stats.mean.dtype == np.float64 and stats.covariance.dtype == np.float64


def test_merge_equals_one_accumulator_and_keeps_features() -> None:
    rng = np.random.default_rng(8)
    features = rng.normal(size=(40, 5))
    left = FeatureStatistics(keep_features=True).update(features[:13])
    right = FeatureStatistics(keep_features=True).update(features[13:])
    merged = left.merge(right)
    np.testing.assert_allclose(merged.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, np.cov(features, rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(merged.features, features.astype(np.float32))


def test_statistics_reject_bad_features() -> None:
    stats = FeatureStatistics().update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats.covariance
    with pytest.raises(ValueError, match="dimension 3"):
        stats.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        stats.update(np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        FeatureStatistics().mean
    with pytest.raises(ValueError, match="keep_features"):
        stats.features


def test_save_load_round_trip_in_pytorch_fid_format(tmp_path) -> None:
    from pytorch_fid.fid_score import compute_statistics_of_path

    rng = np.random.default_rng(9)
    stats = FeatureStatistics().update(rng.normal(size=(30, 7)))
    path = tmp_path / "stats.npz"
    stats.save(path)
    mu, sigma = compute_statistics_of_path(str(path), None, 1, 7, "cpu")  # pytorch-fid's reader
    np.testing.assert_array_equal(mu, stats.mean)
    np.testing.assert_array_equal(sigma, stats.covariance)
    loaded = FeatureStatistics.load(path)
    assert loaded.num_samples == 30
    np.testing.assert_allclose(loaded.covariance, stats.covariance, rtol=1e-14)
    more = rng.normal(size=(10, 7))
    loaded.update(more)  # the sample count was saved: accumulation can go on
    assert loaded.num_samples == 40

    # A reference file without a count (e.g. published TTUR / pytorch-fid statistics).
    np.savez(tmp_path / "ref.npz", mu=stats.mean.astype(np.float32), sigma=stats.covariance)
    reference = FeatureStatistics.load(tmp_path / "ref.npz")
    assert reference.num_samples is None
    assert stats.frechet_distance(reference) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="without a sample count"):
        reference.update(more)
    np.savez(tmp_path / "bad.npz", mean=stats.mean)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        FeatureStatistics.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        FeatureStatistics.load(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------- sources
def test_compute_statistics_from_a_loader_equals_numpy_on_all_features(generator) -> None:
    extractor = TinyExtractor()
    images = torch.rand(23, 3, 8, 8, generator=generator) * 2 - 1
    labels = torch.arange(23)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=5
    )
    stats = compute_statistics(loader, extractor, keep_features=True)
    with torch.no_grad():
        features = extractor(images).double().numpy()
    assert stats.num_samples == 23
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-5,
                               atol=1e-9)
    # A tensor source, a sample cap that cuts a batch, and uint8 input mapped to [-1, 1].
    capped = compute_statistics(images, extractor, batch_size=4, num_samples=10)
    assert capped.num_samples == 10
    np.testing.assert_allclose(capped.mean, features[:10].mean(axis=0), rtol=1e-6)
    as_uint8 = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=generator)
    from_uint8 = compute_statistics(as_uint8, extractor)
    with torch.no_grad():
        expected = extractor(as_uint8.float() / 127.5 - 1).double().numpy()
    np.testing.assert_allclose(from_uint8.mean, expected.mean(axis=0), rtol=1e-6)


def test_compute_statistics_rejects_a_bad_extractor(generator) -> None:
    images = torch.rand(4, 3, 8, 8, generator=generator)
    with pytest.raises(ValueError, match="feature rows"):
        compute_statistics(images, lambda x: torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        compute_statistics(images, lambda x: x)  # returns images, not features
    with pytest.raises(ValueError, match="NaN"):
        compute_statistics(images, lambda x: torch.full((x.shape[0], 2), float("nan")))
    with pytest.raises(TypeError, match="extractor must be callable"):
        compute_statistics(images, "inception")
    with pytest.raises(ValueError, match="empty"):
        compute_statistics([], TinyExtractor())


def test_statistics_from_folder_reads_png_files(tmp_path, generator) -> None:
    pixels = torch.randint(0, 256, (7, 8, 8, 3), dtype=torch.uint8, generator=generator)
    (tmp_path / "sub").mkdir()
    for index, image in enumerate(pixels.numpy()):
        folder = tmp_path / "sub" if index % 2 else tmp_path  # recursive listing
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    extractor = TinyExtractor()
    stats = statistics_from_folder(tmp_path, extractor, batch_size=3)
    order = sorted(range(7), key=lambda i: str(tmp_path / "sub" / f"{i:03d}.png")
                   if i % 2 else str(tmp_path / f"{i:03d}.png"))
    images = pixels[order].permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        features = extractor(images).double().numpy()
    assert stats.num_samples == 7
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-5,
                               atol=1e-9)

    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(tmp_path / "zz_small.png")
    with pytest.raises(ValueError, match="same size"):
        statistics_from_folder(tmp_path, extractor, batch_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        statistics_from_folder(tmp_path / "empty", extractor)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        statistics_from_folder(tmp_path / "nowhere", extractor)


class StandInSampler:
    """Follows the sampler contract: ``sample(model, shape, generator=, model_kwargs=)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], dict | None]] = []

    def sample(self, model, shape, *, generator=None, model_kwargs=None):
        self.calls.append((tuple(shape), model_kwargs))
        x_T = torch.randn(shape, generator=generator)
        t = torch.zeros(shape[0], dtype=torch.long)
        return (x_T - model(x_T, t, **(model_kwargs or {}))).clamp(-1, 1)


def test_statistics_from_sampler_streams_generated_batches() -> None:
    def model(x_t, t, y=None):
        shift = 0.0 if y is None else y.view(-1, 1, 1, 1).float() * 0.1
        return 0.5 * x_t + shift

    def labels(count, generator):
        return {"y": torch.randint(0, 3, (count,), generator=generator)}

    extractor = TinyExtractor()
    sampler = StandInSampler()
    stats = statistics_from_sampler(
        sampler, model, extractor, 11, (3, 8, 8), batch_size=4,
        generator=torch.Generator().manual_seed(1), model_kwargs=labels,
    )
    assert stats.num_samples == 11
    assert [shape for shape, _ in sampler.calls] == [(4, 3, 8, 8), (4, 3, 8, 8), (3, 3, 8, 8)]
    assert all(kwargs["y"].shape == (shape[0],) for shape, kwargs in sampler.calls)

    # The same seed gives the same images; the statistics are those of the quantized images.
    generator = torch.Generator().manual_seed(1)
    images = []
    for count in (4, 4, 3):
        kwargs = labels(count, generator)
        images.append(StandInSampler().sample(model, (count, 3, 8, 8), generator=generator,
                                              model_kwargs=kwargs))
    images = quantize(torch.cat(images))
    with torch.no_grad():
        features = extractor(images).double().numpy()
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-6)


def test_quantize_rounds_to_256_levels() -> None:
    x = torch.tensor([-1.5, -1.0, -0.0039, 0.0, 0.5, 1.0, 2.0])
    levels = (quantize(x) + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert float(quantize(x).min()) == -1.0 and float(quantize(x).max()) == 1.0
    # 127.5 rounds (half to even) to 128.
    assert torch.allclose(quantize(x)[3], torch.tensor(128 / 127.5 - 1), atol=1e-6)
    assert torch.allclose(quantize(x)[4], torch.tensor(191 / 127.5 - 1), atol=1e-6)


# ---------------------------------------------------------------------------- KID
def direct_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """O(m^2) loops over pairs with the cubic kernel k(a, b) = (a.b / D + 1)^3."""
    m, dim = x.shape

    def kernel(a, b):
        return (float(np.dot(a, b)) / dim + 1.0) ** 3

    same = sum(kernel(x[i], x[j]) + kernel(y[i], y[j])
               for i in range(m) for j in range(m) if i != j)
    cross = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return same / (m * (m - 1)) - 2.0 * cross / (m * m)


def test_kid_matches_a_direct_implementation() -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(size=(30, 4))
    y = rng.normal(size=(25, 4)) * 1.5 + 0.4
    # One subset of every row: the estimator on the full sets (it is permutation invariant).
    full = kernel_inception_distance(x[:25], y, num_subsets=1, subset_size=25)
    assert full.mean == pytest.approx(direct_mmd2_unbiased(x[:25], y), rel=1e-10)
    # Random subsets: replay the same index draws.
    kid = kernel_inception_distance(x, y, num_subsets=4, subset_size=12,
                                    generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    values = []
    for _ in range(4):
        rows_x = torch.randperm(30, generator=replay)[:12].numpy()
        rows_y = torch.randperm(25, generator=replay)[:12].numpy()
        values.append(direct_mmd2_unbiased(x[rows_x], y[rows_y]))
    assert kid.mean == pytest.approx(np.mean(values), rel=1e-10)
    assert kid.std == pytest.approx(np.std(values), rel=1e-8)
    assert (kid.num_subsets, kid.subset_size) == (4, 12)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_otherwise() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same = kernel_inception_distance(x, y, num_subsets=20, subset_size=100,
                                     generator=torch.Generator().manual_seed(0))
    shifted = kernel_inception_distance(x, y + 0.5, num_subsets=20, subset_size=100,
                                        generator=torch.Generator().manual_seed(0))
    assert abs(same.mean) < 3 * same.std / np.sqrt(20) + 1e-3
    assert shifted.mean > 10 * abs(same.mean) and shifted.mean > 0


def test_kid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same dimension"):
        kernel_inception_distance(np.ones((5, 3)), np.ones((5, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        kernel_inception_distance(np.ones((1, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        kernel_inception_distance(np.full((3, 3), np.nan), np.ones((5, 3)))
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_inception_distance(np.ones((3, 3)), np.ones((5, 3)), num_subsets=0)


def test_importing_metrics_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ddpm_lib.metrics, ddpm_lib\n"
        "assert ddpm_lib.frechet_distance is ddpm_lib.metrics.frechet_distance\n"
        "heavy = [m for m in ('scipy', 'PIL', 'torchvision', 'pytorch_fid') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_extractor_runs_in_eval_mode_and_its_mode_is_restored(generator) -> None:
    class Recorder(TinyExtractor):
        modes: list[bool] = []

        def forward(self, images):
            self.modes.append(self.training)
            return super().forward(images)

    extractor = Recorder().train()
    compute_statistics(torch.rand(4, 3, 8, 8, generator=generator), extractor, batch_size=2)
    assert extractor.modes == [False, False] and extractor.training


def test_psnr_is_the_peak_over_the_mean_squared_error_in_db():
    from ddpm_lib import psnr

    reference = torch.zeros(2, 3, 4, 4)
    images = reference.clone()
    images[0] += 0.2  # MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB
    images[1, 0] += 0.6  # a third of the values off by 0.6: MSE 0.12 -> 10 log10(4 / 0.12)
    expected = torch.tensor([20.0, 10 * math.log10(4 / 0.12)])
    assert torch.allclose(psnr(images, reference), expected, atol=1e-4)
    assert torch.allclose(psnr(images / 2, reference / 2, data_range=1.0), expected, atol=1e-4)
    assert psnr(reference, reference).tolist() == pytest.approx([10 * math.log10(4e10)] * 2)
    with pytest.raises(ValueError, match=r"reference must have the shape of images"):
        psnr(images, reference[:1])
    with pytest.raises(ValueError, match=r"data_range must be > 0; got 0"):
        psnr(images, reference, data_range=0)
