"""nll_bits_per_dim: aggregation over a dataset, and the bound on Gaussian data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_lib.metrics import BitsPerDim, nll_bits_per_dim


class RecordingBound:
    """Stands in for VLBLoss: per-sample terms that depend on the image, and a call log."""

    def __init__(self, num_timesteps: int = 5) -> None:
        self.num_timesteps = num_timesteps
        self.calls: list[dict] = []

    def bits_per_dim(self, model, x0, *, progress=False, return_terms=False, generator=None,
                     **model_kwargs):
        self.calls.append({"batch": x0.shape[0], "kwargs": model_kwargs, "x0": x0})
        level = x0.flatten(1).mean(dim=1).double() + 2.0  # (B,) in [1, 3]
        steps = torch.arange(self.num_timesteps, dtype=torch.float64)
        terms = level[:, None] * (steps + 1) / 10  # (B, T)
        prior = 0.01 * level
        decoder = terms[:, 0]
        total = prior + terms.sum(dim=1)
        return {"total": total, "prior": prior, "decoder": decoder, "terms": terms}


def test_mean_stderr_and_breakdown_are_aggregated_over_batches(generator) -> None:
    images = torch.rand(13, 3, 4, 4, generator=generator) * 2 - 1
    bound = RecordingBound()
    result = nll_bits_per_dim(lambda x, t: x, None, images, batch_size=5, loss=bound)
    reference = bound.bits_per_dim(None, images, return_terms=True)
    total = reference["total"].numpy()
    assert isinstance(result, BitsPerDim)
    assert [call["batch"] for call in bound.calls[:-1]] == [5, 5, 3]
    assert result.num_samples == 13
    assert result.mean == pytest.approx(total.mean(), rel=1e-12)
    assert result.stderr == pytest.approx(total.std(ddof=1) / math.sqrt(13), rel=1e-10)
    assert result.prior == pytest.approx(float(reference["prior"].mean()), rel=1e-12)
    assert result.decoder == pytest.approx(float(reference["decoder"].mean()), rel=1e-12)
    np.testing.assert_allclose(result.terms, reference["terms"].mean(dim=0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(result.per_sample, total, rtol=1e-12)
    # The breakdown partitions the timesteps and sums to the terms' total.
    groups = result.breakdown(2)
    assert [(a, b) for a, b, _ in groups] == [(0, 1), (2, 4)]
    assert sum(bits for _, _, bits in groups) == pytest.approx(result.terms.sum(), rel=1e-12)
    assert "bits/dim over 13 samples" in str(result)


def test_datasets_loaders_labels_and_sample_cap(generator) -> None:
    images = torch.rand(10, 1, 4, 4, generator=generator) * 2 - 1
    labels = torch.arange(10)
    dataset = torch.utils.data.TensorDataset(images, labels)
    bound = RecordingBound()
    result = nll_bits_per_dim(
        lambda x, t, y: x, None, dataset, batch_size=4, num_samples=7, labels_as="y",
        model_kwargs={"scale": 2}, loss=bound,
    )
    assert result.num_samples == 7
    assert [call["batch"] for call in bound.calls] == [4, 3]
    assert torch.equal(torch.cat([call["kwargs"]["y"] for call in bound.calls]), labels[:7])
    assert all(call["kwargs"]["scale"] == 2 for call in bound.calls)

    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    from_loader = nll_bits_per_dim(lambda x, t: x, None, loader, loss=RecordingBound())
    from_tensor = nll_bits_per_dim(lambda x, t: x, None, images, loss=RecordingBound())
    assert from_loader.mean == pytest.approx(from_tensor.mean, rel=1e-12)

    # uint8 images are mapped to [-1, 1] before the bound sees them.
    pixels = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8, generator=generator)
    bound = RecordingBound()
    nll_bits_per_dim(lambda x, t: x, None, pixels, loss=bound)
    torch.testing.assert_close(bound.calls[0]["x0"], pixels.float() / 127.5 - 1)


def test_bad_input_is_rejected(generator) -> None:
    images = torch.rand(4, 3, 4, 4, generator=generator) * 2 - 1
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        nll_bits_per_dim(lambda x, t: x, None, images * 3, loss=RecordingBound())
    with pytest.raises(ValueError, match="NaN"):
        nll_bits_per_dim(lambda x, t: x, None, images * float("nan"), loss=RecordingBound())
    with pytest.raises(ValueError, match="empty"):
        nll_bits_per_dim(lambda x, t: x, None, images[:0], loss=RecordingBound())
    with pytest.raises(ValueError, match="labels"):
        nll_bits_per_dim(lambda x, t: x, None, images, labels_as="y", loss=RecordingBound())
    with pytest.raises(ValueError, match="batch_size"):
        nll_bits_per_dim(lambda x, t: x, None, images, batch_size=0, loss=RecordingBound())
    with pytest.raises(TypeError, match="bits_per_dim"):
        nll_bits_per_dim(lambda x, t: x, None, images, loss=object())
    with pytest.raises(TypeError, match="dataset"):
        nll_bits_per_dim(lambda x, t: x, None, 3.0, loss=RecordingBound())


def test_model_runs_in_eval_mode_and_generator_reaches_the_bound(generator) -> None:
    class Model(torch.nn.Module):
        def forward(self, x_t, t):
            return x_t

    class ModeBound(RecordingBound):
        def bits_per_dim(self, model, x0, **kwargs):
            self.modes = getattr(self, "modes", []) + [(model.training, kwargs["generator"])]
            return super().bits_per_dim(model, x0, **kwargs)

    model, bound = Model().train(), ModeBound()
    images = torch.rand(3, 1, 4, 4, generator=generator) * 2 - 1
    nll_bits_per_dim(model, None, images, loss=bound, generator=generator)
    assert bound.modes == [(False, generator)] and model.training


def discretized_gaussian_entropy_bits(mean: float, std: float) -> float:
    """Entropy (bits) of N(mean, std^2) rounded to the 256 levels of [-1, 1], ends clipped."""
    from scipy.stats import norm

    edges = (np.arange(1, 256) - 0.5) / 127.5 - 1.0
    cdf = norm.cdf(edges, mean, std)
    p = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def test_gaussian_data_bound_is_finite_above_the_entropy_and_lower_for_the_oracle(
    small_schedule,
) -> None:
    from ddpm_lib import GaussianOracle

    from ddpm_lib.metrics import quantize

    mean, std = 0.1, 0.3
    x0 = quantize(mean + std * torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64)).double()
    entropy = discretized_gaussian_entropy_bits(mean, std)

    def bound(oracle_mean: float, oracle_std: float, prediction: str = "eps") -> BitsPerDim:
        oracle = GaussianOracle(small_schedule, mean=oracle_mean, std=oracle_std,
                                prediction=prediction)
        return nll_bits_per_dim(oracle, small_schedule, x0, batch_size=32, prediction=prediction,
                                generator=torch.Generator().manual_seed(1))

    exact = bound(mean, std)
    assert math.isfinite(exact.mean) and math.isfinite(exact.stderr) and exact.num_samples == 32
    assert np.isfinite(exact.terms).all() and exact.terms.shape == (small_schedule.num_timesteps,)
    # Any model's expected -log p(x0) is at least the data's entropy; the bound is above it.
    assert exact.mean > entropy
    assert exact.mean == pytest.approx(exact.prior + exact.terms.sum(), rel=1e-9)
    assert exact.decoder == pytest.approx(exact.terms[0], rel=1e-9)
    # A predictor for the wrong Gaussian pays more bits (the same noise for both: paired).
    for wrong in (bound(mean, 0.45), bound(0.3, std)):
        paired_stderr = np.std(wrong.per_sample - exact.per_sample, ddof=1) / math.sqrt(32)
        assert wrong.mean > exact.mean + 5 * paired_stderr
    # The same predictor parameterised by v: the same bound (the same noise), so the
    # prediction type reaches the bound.
    np.testing.assert_allclose(bound(mean, std, "v").per_sample, exact.per_sample, rtol=1e-6)
