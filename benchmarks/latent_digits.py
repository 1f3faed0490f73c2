"""Latent against pixel diffusion on real data: scikit-learn's handwritten digits upscaled to
32x32 (part ``d`` of ``bench_latent.py``, issue 32).

Everything is trained here, on one process, so that the CPU times compare:

1. an :class:`ddpm_lib.AutoencoderKL` (f = 4, 4 latent channels, 1 image channel) with
   :class:`ddpm_lib.AutoencoderLoss` (``--kl-weight``), cached in ``--out`` for reruns;
2. the diagnosis: per-channel mean / std, skewness and excess kurtosis of the latents after
   each normalisation (``"global"``: LDM's single factor; ``"channel"``: shift and scale per
   channel), and the reconstruction PSNR;
3. class-conditional UNets of the same layout (the example's ``make_unet``) on the pixels and
   on the latents, each variant trained for ``--steps`` steps with Adam and an EMA (0.999);
   the latent recipe is also trained for as many steps as fit into the pixel model's CPU
   time (equal CPU time);
4. ``--num-eval`` samples of each (DDIM, ``--sample-steps``, clipped to [-1, 1] in pixel
   space, unclipped on latents then decoded), ``--num-eval / 10`` per digit, scored by the
   Fréchet distance of :class:`ddpm_lib.metrics.FeatureStatistics` in the space of the first
   ``--pca`` principal components of the real images, and by a logistic-regression digit
   classifier fit on the real images: accuracy (the sampled digit is the one asked for) and
   mean confidence (its top probability).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ddpm_lib import (AutoencoderKL, AutoencoderLoss, DDIMSampler, LatentDiffusion, NoiseSchedule,
                      SimpleLoss, UNet)
from ddpm_lib.metrics import FeatureStatistics
from ddpm_lib.metrics import psnr as image_psnr
from ddpm_lib.training.ema import EMA

#: name -> (normalisation, prediction, learning rate, min-SNR gamma)
LATENT_VARIANTS: dict[str, tuple[str, str, float, float | None]] = {
    "latent, global scale, eps, lr 2e-4": ("global", "eps", 2e-4, None),
    "latent, channel norm, eps, lr 2e-4": ("channel", "eps", 2e-4, None),
    "latent, channel norm, v, min-SNR 5, lr 1e-3": ("channel", "v", 1e-3, 5.0),
    "latent, channel norm, eps, min-SNR 5, lr 1e-3": ("channel", "eps", 1e-3, 5.0),
    "latent, channel norm, eps, lr 1e-3": ("channel", "eps", 1e-3, None),
    "latent, global scale, v, min-SNR 5, lr 1e-3": ("global", "v", 1e-3, 5.0),
}


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (1797, 1, 32, 32) in [-1, 1], labels (1797,))``: sklearn's 8x8 digits
    (values 0..16) upscaled bilinearly to 32x32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1), torch.tensor(digits.target, dtype=torch.long)


class Judge:
    """PCA features of the real images and a digit classifier fit on them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, components: int) -> None:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        flat = images.flatten(1).double().numpy()
        self.pca = PCA(n_components=components, random_state=0).fit(flat)
        features = self.pca.transform(flat)
        self.real = FeatureStatistics().update(features)
        order = np.random.default_rng(0).permutation(len(flat))
        train, test = order[: len(flat) * 4 // 5], order[len(flat) * 4 // 5:]
        y = labels.numpy()
        held_out = LogisticRegression(max_iter=2000).fit(flat[train], y[train])
        self.classifier_accuracy = float(held_out.score(flat[test], y[test]))
        self.classifier = LogisticRegression(max_iter=2000).fit(flat, y)
        half = order[: len(flat) // 2], order[len(flat) // 2:]
        self.real_split_distance = FeatureStatistics().update(features[half[0]]).frechet_distance(
            FeatureStatistics().update(features[half[1]]))

    def score(self, samples: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        flat = samples.clamp(-1, 1).flatten(1).double().numpy()
        stats = FeatureStatistics().update(self.pca.transform(flat))
        probabilities = self.classifier.predict_proba(flat)
        predicted = probabilities.argmax(axis=1)
        return {"fd": stats.frechet_distance(self.real),
                "accuracy": float((predicted == labels.numpy()).mean()),
                "confidence": float(probabilities.max(axis=1).mean())}


def train_autoencoder(images: torch.Tensor, args: argparse.Namespace) -> tuple[Any, float]:
    """The autoencoder (cached in ``--out``) and the CPU seconds its training took."""
    folder = Path(args.out) / f"autoencoder_kl{args.kl_weight:g}_{args.ae_steps}"
    if (folder / "config.json").is_file():
        cpu = float((folder / "cpu_seconds.txt").read_text())
        return AutoencoderKL.from_pretrained(folder).eval(), cpu
    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=1, latent_channels=4, base_channels=16,
                       channel_mults=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                       attention=False)
    loss_fn = AutoencoderLoss(kl_weight=args.kl_weight)
    optimizer = torch.optim.Adam(ae.parameters(), lr=args.ae_lr)
    generator = torch.Generator().manual_seed(1)
    start = time.process_time()
    ae.train()
    for _ in range(args.ae_steps):
        batch = images[torch.randint(len(images), (args.d_batch,), generator=generator)]
        loss = loss_fn(ae, batch, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    cpu = time.process_time() - start
    ae.eval().save_pretrained(folder)
    (folder / "cpu_seconds.txt").write_text(repr(cpu))
    return ae, cpu


def latent_statistics(z: torch.Tensor) -> list[tuple[float, float, float, float]]:
    """Per channel ``(mean, std, skewness, excess kurtosis)`` of latents ``(N, C, h, w)``."""
    rows = []
    for channel in z.double().transpose(0, 1).flatten(1):
        mean, std = float(channel.mean()), float(channel.std())
        centred = (channel - mean) / std
        rows.append((mean, std, float(centred.pow(3).mean()), float(centred.pow(4).mean() - 3)))
    return rows


def make_unet(in_channels: int, image_size: int) -> UNet:
    """The denoiser (examples/latent_diffusion.py's layout without its self-attention, to keep
    the pixel side within CPU minutes), class-conditional on 10 digits."""
    return UNet(in_channels=in_channels, base_channels=32, channel_mults=(1, 2),
                num_res_blocks=1, attention_resolutions=(),
                image_size=image_size, dropout=0.0, num_classes=10, norm_groups=8)


def train_unet(data: torch.Tensor, labels: torch.Tensor, recipe: tuple[str, float, float | None],
               steps: int | None, seconds: float | None,
               args: argparse.Namespace) -> tuple[Any, int, float, float]:
    """``(EMA model, steps, CPU seconds, mean loss of the last 10%)``: ``steps`` steps, or as
    many as fit into ``seconds`` of process CPU time."""
    prediction, lr, gamma = recipe
    torch.manual_seed(0)
    unet = make_unet(data.shape[1], data.shape[-1])
    schedule = NoiseSchedule.linear(1000)
    loss_fn = SimpleLoss(schedule, prediction=prediction, min_snr_gamma=gamma)
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr)
    ema = EMA(unet, decay=0.999)
    generator = torch.Generator().manual_seed(2)
    losses: list[float] = []
    start, done = time.process_time(), 0
    unet.train()
    while (steps is not None and done < steps) or (
            seconds is not None and time.process_time() - start < seconds):
        index = torch.randint(len(data), (args.d_batch,), generator=generator)
        loss = loss_fn(unet, data[index], generator=generator, y=labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(unet)
        losses.append(float(loss.detach()))
        done += 1
    cpu = time.process_time() - start
    tail = losses[-max(1, len(losses) // 10):]
    return ema.module, done, cpu, float(np.mean(tail))


@torch.no_grad()
def draw(model: Any, prediction: str, shape: tuple[int, ...], clip: bool,
         args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(samples, their labels)``: ``shape[0]`` samples, the same number of each digit."""
    sampler = DDIMSampler(NoiseSchedule.linear(1000), num_steps=args.d_sample_steps,
                          clip_denoised=clip, prediction=prediction)
    labels = torch.arange(shape[0]) % 10
    generator = torch.Generator().manual_seed(3)
    out = [sampler.sample(model, (len(chunk), *shape[1:]), generator=generator,
                          model_kwargs={"y": chunk})
           for chunk in labels.split(100)]
    return torch.cat(out), labels


def diagnose(ae: Any, images: torch.Tensor) -> dict[str, LatentDiffusion]:
    """Print the latents' statistics under each normalisation; return the two models."""
    models = {}
    for normalization in ("global", "channel"):
        latent = LatentDiffusion(ae)
        latent.fit_scale_factor(images, num_samples=len(images), normalization=normalization)
        z = torch.cat([latent.encode(chunk) for chunk in images.split(256)])
        print(f"  {normalization:8s} (scale_factor {latent.scale_factor:.4f}): per channel "
              "mean / std / skewness / excess kurtosis")
        for channel, (mean, std, skew, kurt) in enumerate(latent_statistics(z)):
            print(f"    channel {channel}: {mean:+.3f} / {std:.3f} / {skew:+.2f} / {kurt:+.2f}")
        models[normalization] = latent
    latent = models["global"]
    rec = torch.cat([latent.decode(latent.encode(c)).clamp(-1, 1) for c in images.split(256)])
    print(f"  reconstruction PSNR {float(image_psnr(rec, images).mean()):.2f} dB", flush=True)
    return models


def run(args: argparse.Namespace) -> None:
    images, labels = digits_images()
    judge = Judge(images, labels, args.pca)
    print(f"(d) digits {tuple(images.shape)}; PCA {args.pca} components; classifier held-out "
          f"accuracy {judge.classifier_accuracy:.3f}; Fréchet distance between two halves of "
          f"the real digits {judge.real_split_distance:.4f}; {torch.get_num_threads()} thread(s)")
    ae, ae_cpu = train_autoencoder(images, args)
    print(f"  autoencoder: {args.ae_steps} steps, kl_weight {args.kl_weight:g}, "
          f"{ae_cpu:.0f} CPU s")
    models = diagnose(ae, images)
    rows: list[tuple[str, int, float, float, dict[str, float]]] = []

    def evaluate(name: str, model: Any, prediction: str, latent: LatentDiffusion | None,
                 done: int, cpu: float, loss: float) -> None:
        if latent is None:
            samples, asked = draw(model, prediction, (args.num_eval, 1, 32, 32), True, args)
        else:
            z, asked = draw(model, prediction, (args.num_eval, 4, 8, 8), False, args)
            samples = torch.cat([latent.decode(chunk) for chunk in z.split(256)])
        scores = judge.score(samples, asked)
        rows.append((name, done, cpu, loss, scores))
        print(f"  {name:48s} {done:6d} steps {cpu:7.0f} CPU s  loss {loss:.4f}  "
              f"FD {scores['fd']:.4f}  acc {scores['accuracy']:.3f}  "
              f"conf {scores['confidence']:.3f}", flush=True)

    recipe = (args.pixel_prediction, args.pixel_lr, args.pixel_min_snr)
    pixel, done, pixel_cpu, loss = train_unet(images, labels, recipe, args.steps, None, args)
    snr = f", min-SNR {args.pixel_min_snr:g}" if args.pixel_min_snr else ""
    evaluate(f"pixel, {args.pixel_prediction}{snr}, lr {args.pixel_lr:g}", pixel,
             args.pixel_prediction, None, done, pixel_cpu, loss)
    if args.variants == []:  # the pixel side alone
        print_table(rows, pixel_cpu, ae_cpu)
        return
    best: tuple[str, float] | None = None
    for index, (name, (normalization, prediction, lr, gamma)) in enumerate(
            LATENT_VARIANTS.items()):
        if args.variants is not None and index not in args.variants:
            continue
        latent = models[normalization]
        z = torch.cat([latent.encode(chunk) for chunk in images.split(256)])
        model, done, cpu, loss = train_unet(z, labels, (prediction, lr, gamma), args.steps,
                                            None, args)
        evaluate(name, model, prediction, latent, done, cpu, loss)
        if best is None or rows[-1][4]["fd"] < best[1]:
            best = (name, rows[-1][4]["fd"])
    assert best is not None
    normalization, prediction, lr, gamma = LATENT_VARIANTS[best[0]]
    latent = models[normalization]
    z = torch.cat([latent.encode(chunk) for chunk in images.split(256)])
    model, done, cpu, loss = train_unet(z, labels, (prediction, lr, gamma), None, pixel_cpu,
                                        args)
    evaluate(best[0] + " (equal CPU)", model, prediction, latent, done, cpu, loss)
    print_table(rows, pixel_cpu, ae_cpu)


def print_table(rows: list, pixel_cpu: float, ae_cpu: float) -> None:
    pixel_fd = rows[0][4]["fd"]
    print("\n| model | steps | CPU s | loss | Fréchet (PCA) | / pixel | accuracy | confidence |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, done, cpu, loss, s in rows:
        print(f"| {name} | {done} | {cpu:.0f} | {loss:.4f} | {s['fd']:.4f} | "
              f"{s['fd'] / pixel_fd:.2f}x | {s['accuracy']:.3f} | {s['confidence']:.3f} |")
    print(f"(the autoencoder's training took {ae_cpu:.0f} CPU s once, not counted above; the "
          f"pixel model's {pixel_cpu:.0f} CPU s are the equal-CPU budget)")
    if math.isnan(pixel_fd):
        print("warning: the pixel model's distance is not a number")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("part d (digits, latent vs pixel)")
    group.add_argument("--out", default="runs/bench_latent_digits",
                       help="part d: folder caching the autoencoder")
    group.add_argument("--ae-steps", type=int, default=600)
    group.add_argument("--ae-lr", type=float, default=1e-3)
    group.add_argument("--kl-weight", type=float, default=1e-6)
    group.add_argument("--steps", type=int, default=300, help="part d: UNet training steps")
    group.add_argument("--d-batch", type=int, default=32, help="part d: training batch")
    group.add_argument("--num-eval", type=int, default=300, help="part d: samples scored")
    group.add_argument("--d-sample-steps", type=int, default=25, help="part d: DDIM steps")
    group.add_argument("--pca", type=int, default=32, help="part d: PCA components")
    group.add_argument("--pixel-prediction", default="eps", help="part d: the pixel UNet's")
    group.add_argument("--pixel-lr", type=float, default=2e-4)
    group.add_argument("--pixel-min-snr", type=float, default=None)
    group.add_argument("--variants", type=int, nargs="*", default=None,
                       help="part d: indices of LATENT_VARIANTS to train (default: all; "
                       "none: the pixel model alone)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    namespace = parser.parse_args()
    torch.set_num_threads(namespace.threads)
    run(namespace)
