"""
Noise schedules and losses, checked against the closed form
============================================================

The noise schedules and the DDPM losses at work, in a few seconds on a CPU.

For Gaussian data N(mu, s^2) the best possible noise predictor is known in closed form
(ddpm_lib.GaussianOracle), so we can check the library against the theory:

1. the schedules: how much signal each keeps over time;
2. L_simple of the oracle equals its closed-form minimum, and a worse predictor scores worse;
3. the variational bound in bits/dim (every one of the T terms plus the prior), which is
   lower for the oracle than for the worse predictor and never below the data's entropy;
4. the hybrid loss of Improved DDPM for a model that also predicts its variance.

It also plots how much signal each schedule keeps over time (with matplotlib, when it is
installed) to ``runs/schedule_and_losses/schedules.png``. Run:

.. code-block:: bash

    python examples/schedule_and_losses.py  [--num-timesteps 1000] [--batch-size 64]

With ``DDPM_LIB_QUICK=1`` the batch is 16 and the L_simple check uses 1024 samples.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ddpm_lib import GaussianOracle, HybridLoss, NoiseSchedule, SimpleLoss, VLBLoss
from ddpm_lib.losses import discretized_gaussian_log_likelihood

from _common import QUICK, run_folder  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser


class Scaled(torch.nn.Module):
    """A deliberately worse predictor: the oracle's output times ``factor``."""

    def __init__(self, model: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.factor * self.model(x_t, t)


class WithVariance(torch.nn.Module):
    """Adds a constant 'learned_range' variance output v in [-1, 1] to a noise predictor."""

    def __init__(self, model: torch.nn.Module, v: float) -> None:
        super().__init__()
        self.model, self.v = model, v

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.model(x_t, t)
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)  # (B, 2C, H, W)


def plot_schedules(schedules: dict[str, NoiseSchedule], path: Path) -> None:
    """alpha-bar_t and log SNR_t of each schedule against t, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("   (install matplotlib for a plot of the schedules)")
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, schedule in schedules.items():
        abar = schedule.alphas_cumprod.cpu().numpy()
        left.plot(abar, label=name)
        log_snr = torch.log(schedule.alphas_cumprod / (1 - schedule.alphas_cumprod)).cpu().numpy()
        right.plot(log_snr, label=name)
    left.set(xlabel="timestep t", ylabel="alpha-bar_t (signal variance kept)")
    right.set(xlabel="timestep t", ylabel="log SNR_t = log(abar / (1 - abar))")
    left.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"   plot: {path}")


def _schedules(T: int, out: Path) -> dict[str, NoiseSchedule]:
    """1. The schedules' alpha-bar at a few steps, and their plot."""
    schedules = {
        "linear": NoiseSchedule.linear(T),
        "cosine": NoiseSchedule.cosine(T),
        "scaled_linear": NoiseSchedule.scaled_linear(T),
        "sigmoid": NoiseSchedule.sigmoid(T),
        "linear, zero SNR": NoiseSchedule.linear(T).rescale_zero_terminal_snr(),
    }
    steps = [0, T // 4, T // 2, 3 * T // 4, T - 1]
    print(f"1. Noise schedules (T = {T}): alpha-bar_t, the fraction of signal variance kept")
    print(f"   {'t':>18} " + " ".join(f"{t:>9d}" for t in steps))
    for name, schedule in schedules.items():
        values = " ".join(f"{float(schedule.alphas_cumprod[t]):9.2e}" for t in steps)
        print(f"   {name:>18} {values}")
    plot_schedules(schedules, out / "schedules.png")
    return schedules


def _simple_loss(schedule: NoiseSchedule, oracle: GaussianOracle, worse: Scaled,
                 x0: torch.Tensor, steps: list[int], generator: torch.Generator) -> None:
    """2. The simple loss against its closed-form minimum."""
    mean, std = oracle.mean, oracle.std
    loss_fn = SimpleLoss(schedule)  # L_simple = E ||eps - eps_theta(x_t, t)||^2
    print("\n2. L_simple for data N(0.1, 0.4^2): oracle vs closed-form minimum vs worse predictor")
    print(f"   {'t':>6} {'minimum':>10} {'oracle':>10} {'1.2 x oracle':>13}")
    for t in steps:
        noise = torch.randn(x0.shape, generator=generator)
        best = loss_fn(oracle, x0, t=t, noise=noise)
        bad = loss_fn(worse, x0, t=t, noise=noise)
        print(
            f"   {t:>6} {float(oracle.min_simple_loss(t)):10.5f} {float(best):10.5f} {float(bad):13.5f}"
        )
    for prediction in ("x0", "v"):
        weighted = SimpleLoss(schedule, prediction=prediction, min_snr_gamma=5.0)
        model = GaussianOracle(schedule, mean=mean, std=std, prediction=prediction)
        value = weighted(model, x0, generator=generator)
        print(f"   {prediction}-objective with min-SNR-5 weights, uniform t: {float(value):.5f}")


def _bound(schedule: NoiseSchedule, oracle: GaussianOracle, worse: Scaled, batch_size: int,
           generator: torch.Generator) -> torch.Tensor:
    """3. The variational bound in bits/dim; returns the 8-bit images it was computed on."""
    mean, std, T = oracle.mean, oracle.std, schedule.num_timesteps
    # 8-bit images: clamp to [-1, 1] and round to the 256 levels the decoder's bins expect.
    images = mean + std * torch.randn(batch_size, 3, 4, 4, generator=generator)
    images = torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
    vlb = VLBLoss(schedule, variance="fixed_small")
    tic = time.perf_counter()
    terms = vlb.bits_per_dim(oracle, images, return_terms=True, generator=generator)
    seconds = time.perf_counter() - tic
    worse_bpd = vlb.bits_per_dim(worse, images, generator=generator)
    grid = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    log_p = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, mean), math.log(std))
    entropy = float(-(log_p.exp() * log_p).sum() / math.log(2))
    print(
        f"\n3. Variational bound over all {T} steps ({seconds:.2f} s for {batch_size} images)"
    )
    print(f"   data entropy (lower bound)  {entropy:8.4f} bits/dim")
    print(f"   oracle                      {float(terms['total'].mean()):8.4f} bits/dim")
    print(f"     = prior L_T               {float(terms['prior'].mean()):8.2e}")
    print(f"     + decoder L_0             {float(terms['decoder'].mean()):8.4f}")
    print(f"     + KL terms L_1..L_T-1     {float(terms['terms'][:, 1:].sum(1).mean()):8.4f}")
    print(f"   1.2 x oracle                {float(worse_bpd.mean()):8.4f} bits/dim")
    per_t = VLBLoss(schedule)(oracle, images, t=T // 2, generator=generator)
    print(f"   one training term L_t at t = {T // 2}: {float(per_t):.2e} bits/dim")
    return images


def _hybrid(schedule: NoiseSchedule, oracle: GaussianOracle, images: torch.Tensor,
            generator: torch.Generator) -> None:
    """4. The hybrid loss."""
    # The VLB term is what trains the variance (the mean gets only L_simple's gradient). The
    # best sigma^2 is beta-tilde_t plus the error left in the mean, E[(mu-tilde - mu_theta)^2];
    # for this data that is nearer beta_t (v = +1) than beta-tilde_t (v = -1).
    hybrid = HybridLoss(schedule, vlb_weight=1e-3)
    print("\n4. Hybrid loss L_simple + 1e-3 * T * L_t, learned_range variance v in [-1, 1]")
    for t_value in (1, 10):
        t = torch.full((images.shape[0],), t_value)
        noise = torch.randn(images.shape, generator=generator)
        x_t = schedule.q_sample(images, t, noise)
        for v in (-1.0, 0.0, 1.0):
            parts = hybrid.terms(WithVariance(oracle, v)(x_t, t), images, x_t, t, noise)
            print(
                f"   t = {t_value:>2}, v = {v:+.0f}: L_simple {float(parts['simple'].mean()):.4f}"
                f"   L_t {float(parts['vlb'].mean()):.4f} bits/dim"
                f"   total {float(parts['loss'].mean()):.4f}"
            )


def main() -> None:
    parser = example_parser(__doc__)
    parser.add_argument("--num-timesteps", type=int, default=1000,
                        help="diffusion steps T of the schedules (default: 1000)")
    parser.add_argument("--batch-size", type=int, default=16 if QUICK else 64,
                        help="images per loss evaluation (default: 64; 16 with DDPM_LIB_QUICK=1)")
    default_out = run_folder("schedule_and_losses")
    parser.add_argument("--out", default=default_out,
                        help=f"folder of the schedule plot (default: {default_out})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and noise (default: 0)")
    args = parser.parse_args()
    T = args.num_timesteps
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()

    schedules = _schedules(T, Path(args.out))
    schedule = schedules["linear"]
    mean, std = 0.1, 0.4
    oracle = GaussianOracle(schedule, mean=mean, std=std)  # exact eps-predictor for N(0.1, 0.4^2)
    worse = Scaled(oracle, 1.2)
    generator = torch.Generator().manual_seed(args.seed)
    x0 = mean + std * torch.randn(1024 if QUICK else 4096, 3, 4, 4, generator=generator)
    _simple_loss(schedule, oracle, worse, x0, [0, T // 4, T // 2, 3 * T // 4, T - 1], generator)
    images = _bound(schedule, oracle, worse, args.batch_size, generator)
    _hybrid(schedule, oracle, images, generator)
    print(f"\nDone in {time.perf_counter() - start:.1f} s.")


if __name__ == "__main__":
    main()
