"""Shared fixtures: tiny schedules, seeded generators, the Gaussian oracle."""

from __future__ import annotations

import pytest
import torch

from ddpm_lib import GaussianOracle, NoiseSchedule

torch.set_num_threads(2)


@pytest.fixture
def generator() -> torch.Generator:
    """A freshly seeded CPU generator; every test that draws noise takes it from here."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (restored afterwards).

    For files of many tiny tensor ops (small UNets, sampler steps), where a second OpenMP
    thread costs more than it gains; a file opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def schedule() -> NoiseSchedule:
    """The DDPM linear schedule with T = 1000."""
    return NoiseSchedule.linear(1000)


@pytest.fixture
def small_schedule() -> NoiseSchedule:
    """A short linear schedule (T = 50) with the paper's endpoints rescaled to keep abar_T small."""
    return NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)


@pytest.fixture
def oracle(small_schedule: NoiseSchedule) -> GaussianOracle:
    """The exact eps-predictor for data N(0.3, 0.5^2) under ``small_schedule``."""
    return GaussianOracle(small_schedule, mean=0.3, std=0.5)
