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
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ddpm_lib import (
    AutoencoderKL,
    AutoencoderLoss,
    DDIMSampler,
    LatentDiffusion,
    LatentRecipe,
    NoiseSchedule,
    UNet,
)
from ddpm_lib.metrics import FeatureStatistics
from ddpm_lib.metrics import psnr as image_psnr
from ddpm_lib.training.ema import EMA

#: The latent recipes trained; the first is the library's default (:class:`LatentRecipe`),
#: the second the pixel defaults that latent runs had before issue 32.
LATENT_VARIANTS: dict[str, LatentRecipe] = {
    "latent, defaults (LatentRecipe: global scale, v, min-SNR 5, lr 1e-3)": LatentRecipe(),
    "latent, before (global scale, eps, lr 2e-4)": LatentRecipe("eps", None, 2e-4, "global"),
    "latent, channel norm, eps, lr 2e-4": LatentRecipe("eps", None, 2e-4, "channel"),
    "latent, channel norm, eps, min-SNR 5, lr 1e-3": LatentRecipe("eps", 5.0, 1e-3, "channel"),
    "latent, channel norm, eps, lr 1e-3": LatentRecipe("eps", None, 1e-3, "channel"),
    "latent, channel norm, v, min-SNR 5, lr 1e-3": LatentRecipe(normalization="channel"),
}
#: The pixel models trained (``normalization`` unused): the pixel defaults (``ddpm-lib train``,
#: ``SimpleLoss``), and the latent recipe applied to pixels.
PIXEL_VARIANTS: dict[str, LatentRecipe] = {
    "pixel, defaults (eps, lr 2e-4)": LatentRecipe("eps", None, 2e-4),
    "pixel, latent recipe (v, min-SNR 5, lr 1e-3)": LatentRecipe(),
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


def autoencoder_folder(args: argparse.Namespace, kl_weight: float | None = None) -> Path:
    """Where the autoencoder of ``kl_weight`` (default ``--kl-weight``) is cached."""
    kl_weight = args.kl_weight if kl_weight is None else kl_weight
    return Path(args.out) / f"autoencoder_kl{kl_weight:g}_{args.ae_steps}"


def train_autoencoder(images: torch.Tensor, args: argparse.Namespace,
                      kl_weight: float | None = None) -> tuple[Any, float]:
    """The autoencoder (cached in ``--out``) and the CPU seconds its training took."""
    kl_weight = args.kl_weight if kl_weight is None else kl_weight
    folder = autoencoder_folder(args, kl_weight)
    if (folder / "config.json").is_file():
        cpu = float((folder / "cpu_seconds.txt").read_text())
        return AutoencoderKL.from_pretrained(folder).eval(), cpu
    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=1, latent_channels=4, base_channels=16,
                       channel_mults=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                       attention=False)
    loss_fn = AutoencoderLoss(kl_weight=kl_weight)
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


def train_unet(data: torch.Tensor, labels: torch.Tensor, recipe: LatentRecipe,
               steps: int | None, seconds: float | None, args: argparse.Namespace,
               seed: int = 0) -> tuple[Any, int, float, float]:
    """``(EMA model, steps, CPU seconds, mean loss of the last 10%)``: ``steps`` steps, or as
    many as fit into ``seconds`` of process CPU time, with ``recipe``'s loss and learning
    rate; ``seed`` sets the initialisation and the batches."""
    torch.manual_seed(seed)
    unet = make_unet(data.shape[1], data.shape[-1])
    loss_fn = recipe.loss(NoiseSchedule.linear(1000))
    optimizer = torch.optim.Adam(unet.parameters(), lr=recipe.lr)
    ema = EMA(unet, decay=0.999)
    generator = torch.Generator().manual_seed(2 + 1000 * seed)
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


def cached_unet(data: torch.Tensor, labels: torch.Tensor, recipe: LatentRecipe,
                steps: int | None, seconds: float | None, args: argparse.Namespace,
                space: str, seed: int = 0) -> tuple[Any, int, float, float]:
    """:func:`train_unet`, its EMA model and figures cached in ``--out/unets/`` under a name
    made of ``space`` (``"pixel"`` or the autoencoder and normalisation) and the settings,
    so that a rerun (and ``latent_diagnosis.py``) reuses the models part d trained."""
    budget = f"steps{steps}" if steps is not None else f"cpu{seconds:.0f}"
    name = (f"{space}_{recipe.prediction}_lr{recipe.lr:g}_snr{recipe.min_snr_gamma}_{budget}"
            f"_batch{args.d_batch}_seed{seed}")
    folder = Path(args.out) / "unets" / name
    if (folder / "result.json").is_file():
        result = json.loads((folder / "result.json").read_text())
        model = UNet.from_pretrained(folder).eval()
        return model, result["steps"], result["cpu"], result["loss"]
    model, done, cpu, loss = train_unet(data, labels, recipe, steps, seconds, args, seed)
    model.save_pretrained(folder)
    (folder / "result.json").write_text(json.dumps({"steps": done, "cpu": cpu, "loss": loss}))
    return model, done, cpu, loss


@torch.no_grad()
def draw(model: Any, sampler: Any, shape: tuple[int, ...],
         seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(samples, their labels)``: ``shape[0]`` samples with ``sampler``, the same number of
    each digit."""
    labels = torch.arange(shape[0]) % 10
    generator = torch.Generator().manual_seed(seed)
    out = [sampler.sample(model, (len(chunk), *shape[1:]), generator=generator,
                          model_kwargs={"y": chunk})
           for chunk in labels.split(100)]
    return torch.cat(out), labels


def ddim(recipe: LatentRecipe, clip: bool, args: argparse.Namespace) -> DDIMSampler:
    """The benchmark's sampler: DDIM, ``--d-sample-steps``, clipped in pixel space only."""
    return DDIMSampler(NoiseSchedule.linear(1000), args.d_sample_steps, clip_denoised=clip,
                       prediction=recipe.prediction)


def score_samples(judge: Judge, model: Any, sampler: Any, latent: LatentDiffusion | None,
                  args: argparse.Namespace) -> dict[str, float]:
    """``judge.score`` of ``--num-eval`` samples of ``model`` (decoded if ``latent``)."""
    if latent is None:
        samples, asked = draw(model, sampler, (args.num_eval, 1, 32, 32))
    else:
        shape = (args.num_eval, latent.latent_channels, 8, 8)
        z, asked = draw(model, sampler, shape)
        samples = torch.cat([latent.decode(chunk) for chunk in z.split(256)])
    return judge.score(samples, asked)


def encode_all(latent: LatentDiffusion, images: torch.Tensor) -> torch.Tensor:
    """The latents of every image, in chunks."""
    return torch.cat([latent.encode(chunk) for chunk in images.split(256)])


Row = tuple[str, int, float, float, dict[str, float], LatentRecipe]


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
    ae_name = autoencoder_folder(args).name
    rows: list[Row] = []

    def evaluate(name: str, recipe: LatentRecipe, latent: LatentDiffusion | None,
                 steps: int | None, seconds: float | None) -> float:
        if latent is None:
            data, space = images, "pixel"
        else:
            data, space = encode_all(latent, images), f"{ae_name}_{recipe.normalization}"
        model, done, cpu, loss = cached_unet(data, labels, recipe, steps, seconds, args, space)
        scores = score_samples(judge, model, ddim(recipe, latent is None, args), latent, args)
        rows.append((name, done, cpu, loss, scores, recipe))
        print(f"  {name:48s} {done:6d} steps {cpu:7.0f} CPU s  loss {loss:.4f}  "
              f"FD {scores['fd']:.4f}  acc {scores['accuracy']:.3f}  "
              f"conf {scores['confidence']:.3f}", flush=True)
        return cpu

    pixel_cpu = None
    for index, (name, recipe) in enumerate(PIXEL_VARIANTS.items()):
        if args.pixel_variants is None or index in args.pixel_variants:
            cpu = evaluate(name, recipe, None, args.steps, None)
            pixel_cpu = cpu if pixel_cpu is None else pixel_cpu
    for index, (name, recipe) in enumerate(LATENT_VARIANTS.items()):
        if args.variants is None or index in args.variants:
            evaluate(name, recipe, models[recipe.normalization], args.steps, None)
    if pixel_cpu is not None and args.variants != []:  # the defaults at the pixel model's CPU
        recipe = LatentRecipe()
        evaluate("latent, defaults, equal CPU", recipe, models[recipe.normalization], None,
                 pixel_cpu)
    print_table(rows, ae_cpu)


def print_table(rows: list[Row], ae_cpu: float) -> None:
    """The markdown table; "/ pixel" is the distance over the first pixel model's, "/ same"
    over the pixel model's trained with the same prediction, learning rate and weighting."""
    pixels = [row for row in rows if row[0].startswith("pixel")]
    first = pixels[0][4]["fd"] if pixels else math.nan

    def same(recipe: LatentRecipe) -> float:
        for row in pixels:
            if (row[5].prediction, row[5].lr, row[5].min_snr_gamma) == (
                    recipe.prediction, recipe.lr, recipe.min_snr_gamma):
                return row[4]["fd"]
        return math.nan

    print("\n| model | steps | CPU s | loss | Fréchet (PCA) | / pixel | / pixel, same recipe "
          "| accuracy | confidence |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    def ratio(fd: float, reference: float) -> str:
        return "" if math.isnan(reference) else f"{fd / reference:.2f}x"

    for name, done, cpu, loss, s, recipe in rows:
        print(f"| {name} | {done} | {cpu:.0f} | {loss:.4f} | {s['fd']:.2f} | "
              f"{ratio(s['fd'], first)} | {ratio(s['fd'], same(recipe))} | "
              f"{s['accuracy']:.3f} | {s['confidence']:.3f} |")
    print(f"(the autoencoder's training took {ae_cpu:.0f} CPU s once, not counted above; the "
          "first pixel model's CPU seconds are the equal-CPU budget)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("part d (digits, latent vs pixel)")
    group.add_argument("--out", default="runs/bench_latent_digits",
                       help="part d: folder caching the autoencoder and the trained UNets "
                       "(use a new one for fresh CPU times)")
    group.add_argument("--ae-steps", type=int, default=600)
    group.add_argument("--ae-lr", type=float, default=1e-3)
    group.add_argument("--kl-weight", type=float, default=1e-6)
    group.add_argument("--steps", type=int, default=300, help="part d: UNet training steps")
    group.add_argument("--d-batch", type=int, default=32, help="part d: training batch")
    group.add_argument("--num-eval", type=int, default=300, help="part d: samples scored")
    group.add_argument("--d-sample-steps", type=int, default=25, help="part d: DDIM steps")
    group.add_argument("--pca", type=int, default=32, help="part d: PCA components")
    group.add_argument("--pixel-variants", type=int, nargs="*", default=None,
                       help="part d: indices of PIXEL_VARIANTS to train (default: all)")
    group.add_argument("--variants", type=int, nargs="*", default=None,
                       help="part d: indices of LATENT_VARIANTS to train (default: all; "
                       "none: the pixel models alone)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    namespace = parser.parse_args()
    torch.set_num_threads(namespace.threads)
    run(namespace)
