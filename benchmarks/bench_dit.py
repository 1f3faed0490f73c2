"""Benchmark: ddpm_lib.DiT against diffusers' DiTTransformer2DModel, the paper's Gflops, and DiT
against a UNet trained for the same time.

Four parts (``--part speed | flops | quality | latent | all``):

* **speed**: one DiT configuration (default DiT-S/2 at 32 x 32 x 4, batch 2) built in diffusers
  with random weights and converted with :func:`ddpm_lib.dit_from_diffusers` (outputs checked
  to agree); forward+backward wall-clock and CPU time (medians, the two sides interleaved) and
  the peak memory of one step from ``torch.profiler`` (see ``bench_unet.py``), as ratios
  ours / diffusers: below 1 means ours is faster / smaller.
* **flops**: forward multiply-adds of every preset at the paper's input (32 x 32 x 4, one
  image) from ``torch.utils.flop_counter`` on the meta device (no memory), against Table 4
  (the paper counts a multiply-add as one flop, as fvcore does; the counter counts two).
* **quality** (pixel space): a DiT and a UNet of about the same size, class-conditional,
  trained with ``SimpleLoss`` for the same CPU time each (``--train-seconds`` of this
  process's CPU time, not wall-clock, since the machine is shared) on the built-in shapes
  (16 x 16 pixels, 4 classes), then ``--samples`` images each with 25-step DDIM. The Fréchet
  distance (:func:`ddpm_lib.frechet_distance`) is computed on features defined here: the 32
  leading principal components of real images (fitted on 4096 of them). The floor is the
  distance between two disjoint sets of real images of the same size.
* **latent** (the paper's setting): the same on 32 x 32 shapes in the latent space of an f=4
  :class:`ddpm_lib.AutoencoderKL` (4 channels, 8 x 8 latents; trained here for
  ``--ae-steps`` and cached in ``--out``; LDM's scale factor): a DiT (patch 2, 16 tokens) and
  a UNet of the same size on the latents, samples decoded and scored as images (PCA of real
  32 x 32 images). The autoencoder's reconstructions give a second floor.

Usage::

    python benchmarks/bench_dit.py --threads 1     # all parts, ~25 minutes (quality ~6)
    python benchmarks/bench_dit.py --part quality --train-seconds 600 --samples 1024
    python benchmarks/bench_dit.py --part latent --train-seconds 150 --samples 512
    python benchmarks/bench_dit.py --part speed --size b --patch 4 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_unet import interleaved_times, peak_step_memory  # noqa: E402

from ddpm_lib import DDIMSampler, DiT, NoiseSchedule, SimpleLoss, Trainer, UNet  # noqa: E402
from ddpm_lib import dit_from_diffusers, frechet_distance  # noqa: E402
from ddpm_lib.data import ShapesDataset  # noqa: E402

# Table 4 of Peebles & Xie (2023): forward Gflops at 256 x 256 (latent 32 x 32 x 4)
PAPER_GFLOPS = {
    "s2": 6.06, "s4": 1.41, "s8": 0.36, "b2": 23.01, "b4": 5.56, "b8": 1.42,
    "l2": 80.71, "l4": 19.70, "l8": 5.01, "xl2": 118.64, "xl4": 29.05, "xl8": 7.39,
}
PAPER_PARAMS_M = {"s": 33, "b": 130, "l": 458, "xl": 675}


# ----------------------------------------------------------------------------- speed
def speed(size: str, patch: int, batch: int, repeats: int) -> None:
    from diffusers import DiTTransformer2DModel

    ours_like = getattr(DiT, f"{size}{patch}")
    with torch.device("meta"):
        reference = ours_like()
    torch.manual_seed(0)
    theirs = DiTTransformer2DModel(
        num_attention_heads=reference.num_heads,
        attention_head_dim=reference.hidden_size // reference.num_heads,
        in_channels=4, out_channels=8, num_layers=reference.depth, sample_size=32,
        patch_size=patch, num_embeds_ada_norm=1000,
    )
    with torch.no_grad():  # adaLN-Zero starts at zero; move off it so every path computes
        for parameter in theirs.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        state = theirs.state_dict()
        for key, value in state.items():  # one shared embedding, as in converted checkpoints
            if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    ours = dit_from_diffusers(theirs)
    x = torch.randn(batch, 4, 32, 32)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, 1000, (batch,))
    theirs.eval(), ours.eval()
    with torch.no_grad():
        difference = (ours(x, t, y=y) - theirs(x, t, class_labels=y).sample).abs().max()
    print(f"DiT-{size.upper()}/{patch}, batch {batch}, 32x32x4, {torch.get_num_threads()} "
          f"thread(s); outputs agree to {float(difference):.1e}")
    theirs.train(), ours.train()

    def step_ours() -> None:
        ours(x, t, y=y).square().mean().backward()

    def step_theirs() -> None:
        theirs(x, t, class_labels=y).sample.square().mean().backward()

    tasks = {"ours": step_ours, "diffusers": step_theirs}
    wall, cpu = interleaved_times(tasks, warmup=2, repeats=repeats)
    memory = {key: peak_step_memory(task) for key, task in tasks.items()}
    print(f"{'forward+backward':<18}{'ours':>12}{'diffusers':>12}{'ratio':>8}")
    for label, values in (("wall-clock (s)", wall), ("CPU time (s)", cpu)):
        a, b = statistics.median(values["ours"]), statistics.median(values["diffusers"])
        print(f"{label:<18}{a:>12.3f}{b:>12.3f}{a / b:>8.3f}")
    a, b = memory["ours"] / 2**20, memory["diffusers"] / 2**20
    print(f"{'peak memory (MiB)':<18}{a:>12.1f}{b:>12.1f}{a / b:>8.3f}")


# ----------------------------------------------------------------------------- flops
def flops() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    print(f"{'preset':<10}{'params (M)':>12}{'paper':>8}{'Gflops':>10}{'paper':>9}")
    for name, paper in PAPER_GFLOPS.items():
        with torch.device("meta"):
            model = getattr(DiT, name)().eval()
            x, t, y = torch.empty(1, 4, 32, 32), torch.zeros(1).long(), torch.zeros(1).long()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x, t, y=y)
        gflops = counter.get_total_flops() / 2e9  # multiply-adds
        params = sum(p.numel() for p in model.parameters()) / 1e6
        label = f"DiT-{name[:-1].upper()}/{name[-1]}"
        print(f"{label:<10}{params:>12.1f}{PAPER_PARAMS_M[name[:-1]]:>8}{gflops:>10.2f}"
              f"{paper:>9.2f}")


# ----------------------------------------------------------------------------- quality
class PCAFeatures:
    """Projection of flattened images onto the ``k`` leading principal components of a set of
    real images: the feature space of the Fréchet distance here."""

    def __init__(self, images: torch.Tensor, k: int = 32) -> None:
        flat = images.flatten(1).double()
        self.mean = flat.mean(0)
        _, _, vh = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.components = vh[:k]  # (k, D)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.flatten(1).double() - self.mean) @ self.components.T  # (N, k)


def fd(features: torch.Tensor, reference: torch.Tensor) -> float:
    stats = [(f.mean(0).numpy(), torch.cov(f.T).numpy()) for f in (features, reference)]
    return frechet_distance(*stats[0], *stats[1])


def train_and_sample(model: torch.nn.Module, data: Any, train_seconds: float, samples: int,
                     seed: int, shape: tuple[int, int, int], clip: bool) -> tuple[Any, ...]:
    """Train ``model`` with ``SimpleLoss`` for ``train_seconds`` of CPU time, then draw
    ``samples`` with 25-step DDIM from its EMA (labels cycling over the 4 classes).
    Returns ``(samples, steps, wall seconds, CPU seconds)`` of the training."""
    schedule = NoiseSchedule.linear(1000)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, SimpleLoss(schedule), data, batch_size=32, lr=1e-3,
                          warmup_steps=100, ema_decay=0.999, out_dir=out, log_every=10**9,
                          checkpoint_every=10**9, progress=False, tensorboard=False,
                          seed=seed, class_dropout=0.0, random_flip=clip)
        start, cpu = time.perf_counter(), time.process_time()
        # equal CPU time (this process's), not wall-clock: the machine is shared
        while time.process_time() - cpu < train_seconds:
            steps = trainer.train(trainer.step + 25)
        trained, cpu = time.perf_counter() - start, time.process_time() - cpu
        sampler = DDIMSampler(schedule, 25, clip_denoised=clip)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            images = sampler.sample(trainer.ema_model.eval(), (samples, *shape),
                                    model_kwargs={"y": torch.arange(samples) % 4},
                                    generator=generator)
    return images, steps, trained, cpu


def shapes(size: int, image_size: int, seed: int) -> torch.Tensor:
    data = ShapesDataset(size=size, image_size=image_size, seed=seed)
    return torch.stack([data[i][0] for i in range(size)])


def report(name: str, model: torch.nn.Module, result: tuple[Any, ...], score: float) -> None:
    _, steps, trained, cpu = result
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{name:<5} {params:5.2f}M parameters, {steps} steps in {trained:.0f} s "
          f"({cpu:.0f} s CPU): FD {score:.2f}", flush=True)


def quality(train_seconds: float, samples: int, seed: int) -> None:
    """Pixel space: 16 x 16 shapes."""
    data = ShapesDataset(size=8192, image_size=16, seed=seed)
    features = PCAFeatures(shapes(4096, 16, seed))
    reference = features(shapes(samples, 16, seed + 1))
    torch.manual_seed(seed)
    models = {
        # 0.72M and 0.70M parameters
        "DiT": DiT(input_size=16, patch_size=2, in_channels=3, hidden_size=96, depth=4,
                   num_heads=4, num_classes=4, learn_sigma=False),
        "UNet": UNet(in_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(8,), image_size=16, dropout=0.0, num_classes=4,
                     norm_groups=8),
    }
    print(f"quality, pixels: {train_seconds:.0f} CPU seconds of training each, {samples} samples "
          f"(25-step DDIM), Fréchet distance on 32 PCA components of real 16x16 shapes; "
          f"{torch.get_num_threads()} thread(s)")
    print(f"real vs real (floor): FD {fd(features(shapes(samples, 16, seed + 2)), reference):.2f}")
    for name, model in models.items():
        result = train_and_sample(model, data, train_seconds, samples, seed, (3, 16, 16), True)
        report(name, model, result, fd(features(result[0]), reference))


def train_autoencoder(images: torch.Tensor, steps: int, folder: Path) -> Any:
    """An f=4 AutoencoderKL (4 latent channels) on 32 x 32 shapes, cached in ``folder``."""
    from ddpm_lib import AutoencoderKL, AutoencoderLoss

    if (folder / "config.json").is_file():
        return AutoencoderKL.from_pretrained(folder).eval()
    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=3, latent_channels=4, base_channels=16,
                       channel_mults=(1, 2, 2), num_res_blocks=1, norm_groups=8, attention=False)
    loss_fn, optimizer = AutoencoderLoss(kl_weight=1e-6), torch.optim.Adam(ae.parameters(), 2e-3)
    generator = torch.Generator().manual_seed(1)
    start = time.process_time()
    for _ in range(steps):
        batch = images[torch.randint(len(images), (32,), generator=generator)]
        loss = loss_fn(ae, batch, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"autoencoder: {steps} steps, {time.process_time() - start:.0f} s CPU", flush=True)
    ae.eval().save_pretrained(folder)
    return ae


class Latents(torch.utils.data.Dataset):
    """``(latent, label)`` items; ``unbounded_values`` tells the Trainer not to expect
    ``[-1, 1]``."""

    unbounded_values = True

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor) -> None:
        self.latents, self.labels = latents, labels

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.latents[index], int(self.labels[index])


def quality_latent(train_seconds: float, samples: int, seed: int, ae_steps: int,
                   out: Path) -> None:
    """Latent space (the paper's setting): 32 x 32 shapes through an f=4 autoencoder, 8 x 8 x 4
    latents; the samples are decoded and scored as images."""
    from ddpm_lib import LatentDiffusion

    data = ShapesDataset(size=8192, image_size=32, seed=seed)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([int(data[i][1]) for i in range(len(data))])
    ae = train_autoencoder(images, ae_steps, out / f"autoencoder_{ae_steps}")
    latent = LatentDiffusion(ae)
    latent.fit_scale_factor(images, num_samples=2048)
    with torch.no_grad():
        z = torch.cat([latent.encode(chunk) for chunk in images.split(256)])  # (N, 4, 8, 8)
        rec = torch.cat([latent.decode(chunk) for chunk in z[:samples].split(256)]).clamp(-1, 1)
    features = PCAFeatures(images[:4096])
    reference = features(shapes(samples, 32, seed + 1))
    torch.manual_seed(seed)
    models = {
        # 0.73M and 0.70M parameters
        "DiT": DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=96, depth=4,
                   num_heads=4, num_classes=4, learn_sigma=False),
        "UNet": UNet(in_channels=4, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), image_size=8, dropout=0.0, num_classes=4,
                     norm_groups=8),
    }
    print(f"quality, latents: {train_seconds:.0f} CPU seconds of training each, {samples} samples "
          f"(25-step DDIM, decoded), Fréchet distance on 32 PCA components of real 32x32 "
          f"shapes; {torch.get_num_threads()} thread(s)")
    print(f"real vs real (floor): FD {fd(features(shapes(samples, 32, seed + 2)), reference):.2f}"
          f"; autoencoder reconstructions: FD {fd(features(rec), reference):.2f}")
    for name, model in models.items():
        result = train_and_sample(model, Latents(z, labels), train_seconds, samples, seed,
                                  (4, 8, 8), False)
        with torch.no_grad():
            decoded = torch.cat([latent.decode(c) for c in result[0].split(256)]).clamp(-1, 1)
        report(name, model, result, fd(features(decoded), reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "flops", "quality", "latent", "all"),
                        default="all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", choices=("s", "b", "l", "xl"), default="s")
    parser.add_argument("--patch", type=int, choices=(2, 4, 8), default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--train-seconds", type=float, default=150.0)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ae-steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_dit",
                        help="where the latent part caches its autoencoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("flops", "all"):
        flops()
    if args.part in ("speed", "all"):
        speed(args.size, args.patch, args.batch, args.repeats)
    if args.part in ("quality", "all"):
        quality(args.train_seconds, args.samples, args.seed)
    if args.part in ("latent", "all"):
        quality_latent(args.train_seconds, args.samples, args.seed, args.ae_steps, args.out)


if __name__ == "__main__":
    main()
