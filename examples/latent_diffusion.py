"""Latent diffusion on the built-in shapes
========================================

Trains a KL autoencoder that compresses 32x32 shapes by f=4 per side (3x32x32 -> 4x8x8
latents), encodes the dataset once into a latent cache, trains a class-conditional UNet on the
latents, and samples images by running DDPM in latent space and decoding (Rombach et al. 2022).
The latent stages follow :class:`ddpm_lib.LatentRecipe`, the settings measured best on real
data in the latent guide: v-prediction, min-SNR-5 loss weighting, Adam at 1e-3, LDM's scale
factor.
On two CPU cores it takes about ten minutes in all (each stage has a time budget, so a busy
machine stops training early instead of running long). Outputs, under ``runs/latent_diffusion``
(``runs/latent_diffusion-quick`` in quick mode):

- ``reconstructions.png``: held-out shapes (odd columns) beside their reconstructions (even),
- ``samples.png``: samples of the latent model, one column per class,
- ``model/``: the whole latent model (``LatentDiffusion.save_pretrained``),

and it prints the reconstruction PSNR and the wall time of sampling in latent space (decoding
included) against a pixel-space UNet of the same width at 32x32, with the same sampler and
steps. Running it again resumes each stage from its last checkpoint (if the autoencoder
trains further, e.g. with a larger ``--ae-minutes``, its latents are encoded again and the
latent UNet starts afresh). ``DDPM_LIB_QUICK=1`` shrinks everything to a few seconds (the
outputs are then noise)::

    python examples/latent_diffusion.py
    python examples/latent_diffusion.py --ae-minutes 30 --ae-steps 20000   # a better autoencoder
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ddpm_lib import (
    AutoencoderKL,
    AutoencoderLoss,
    DDPMSampler,
    LatentDiffusion,
    LatentRecipe,
    NoiseSchedule,
    Trainer,
    UNet,
)
from ddpm_lib.metrics import psnr as image_psnr
from ddpm_lib.data import ShapesDataset, save_grid

from _common import QUICK, run_folder  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser
IMAGE_SIZE = 32


def make_autoencoder() -> AutoencoderKL:
    """The f=4 autoencoder: channel_mults (1, 2, 2) halves the side twice, 4 latent channels.

    No middle attention: at 8x8 it adds about 10% to a training step on the CPU, and within
    this budget more steps buy more reconstruction PSNR than the attention does.
    """
    return AutoencoderKL(in_channels=3, latent_channels=4, base_channels=16,
                         channel_mults=(1, 2, 2), num_res_blocks=1, attention=False,
                         norm_groups=8)


def make_unet(in_channels: int, image_size: int, num_classes: int | None) -> UNet:
    """The denoiser; the latent and the pixel UNet differ only in channels and size."""
    return UNet(in_channels=in_channels, base_channels=32, channel_mults=(1, 2),
                num_res_blocks=1, attention_resolutions=(image_size // 2,),
                image_size=image_size, dropout=0.0, num_classes=num_classes, norm_groups=8)


def reconstruction_psnr(latents: LatentDiffusion, images: torch.Tensor,
                        batch_size: int = 64) -> tuple[float, torch.Tensor]:
    """Mean PSNR (dB, peak-to-peak 2 for images in [-1, 1]) and the reconstructions."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            outputs.append(latents.decode(latents.encode(images[start:start + batch_size])))
    reconstructed = torch.cat(outputs).clamp(-1, 1)
    return float(image_psnr(reconstructed, images).mean()), reconstructed


def time_sampling(sample: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sample()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = example_parser(__doc__)
    default_out = run_folder("latent_diffusion")
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument("--ae-steps", type=int, default=20 if QUICK else 12000,
                        help="autoencoder steps at most; the time budget usually ends first "
                        "(default: 12000; 20 with DDPM_LIB_QUICK=1)")
    parser.add_argument("--ae-minutes", type=float, default=0.05 if QUICK else 6.0,
                        help="time budget of the autoencoder in minutes (default: 6)")
    parser.add_argument("--unet-steps", type=int, default=20 if QUICK else 6000,
                        help="latent UNet steps at most; the time budget usually ends first "
                        "(default: 6000; 20 with DDPM_LIB_QUICK=1)")
    parser.add_argument("--unet-minutes", type=float, default=0.05 if QUICK else 2.5,
                        help="time budget of the latent UNet in minutes (default: 2.5)")
    parser.add_argument("--dataset-size", type=int, default=256 if QUICK else 6000,
                        help="training images of the built-in shapes, generated on the fly "
                        "(default: 6000; 256 with DDPM_LIB_QUICK=1)")
    parser.add_argument("--sampling-steps", type=int, default=5 if QUICK else 100,
                        help="DDPM steps (respaced) of the sample grid and the timing "
                        "(default: 100)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data, the initialisation and the noise (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    progress = not args.no_progress
    dataset = ShapesDataset(size=args.dataset_size, image_size=IMAGE_SIZE, seed=args.seed)
    held_out = ShapesDataset(size=256 if not QUICK else 32, image_size=IMAGE_SIZE,
                             seed=args.seed + 1)

    # 1. The autoencoder: L1 + L2 + KL (weight 1e-6) through the ordinary Trainer. (No
    #    discriminator: at this budget it would only slow the reconstruction down.)
    torch.manual_seed(args.seed)
    autoencoder = make_autoencoder()
    ae_trainer = Trainer(
        autoencoder, AutoencoderLoss(kl_weight=1e-6, l2_weight=1.0), dataset, batch_size=8,
        lr=2e-3,
        warmup_steps=100, ema_decay=0.995, out_dir=out / "autoencoder", log_every=100,
        checkpoint_every=500, seed=args.seed, random_flip=True, progress=progress,
    )
    ae_trainer.train(args.ae_steps, max_seconds=args.ae_minutes * 60)
    ae_seconds = time.perf_counter() - begin

    # 2. Latents: LDM's scale factor (a shift and a scale per channel, every channel mean 0
    #    and variance 1, is LatentRecipe(normalization="channel")), then the whole dataset
    #    encoded once (cached).
    recipe = LatentRecipe()
    latents = LatentDiffusion(ae_trainer.ema_model.eval())
    recipe.fit(latents, dataset)
    images = torch.stack([held_out[i][0] for i in range(len(held_out))])
    psnr, reconstructed = reconstruction_psnr(latents, images)
    pairs = torch.stack([images[:32], reconstructed[:32]], 1).flatten(0, 1)
    save_grid(pairs, out / "reconstructions.png", nrow=16, upscale=2)
    latent_data = latents.encode_dataset(dataset, out / "latents", batch_size=128,
                                         progress=progress)
    if not latent_data.from_cache and (out / "unet").exists():
        # the autoencoder has changed since the latent UNet was trained: start that one afresh
        shutil.rmtree(out / "unet")
    print(f"autoencoder: {ae_trainer.step} steps, reconstruction PSNR {psnr:.2f} dB on "
          f"{len(images)} held-out images; {latents.normalization} normalisation (scale factor "
          f"{latents.scale_factor:.4f}); latents "
          f"{tuple(latent_data.latents.shape[1:])}")

    # 3. The latent UNet: class-conditional DDPM on 4x8x8 latents, no flips; the recipe's loss
    #    (v-prediction, min-SNR 5), learning rate and an unclipped sampler that reads v.
    schedule = NoiseSchedule.linear(1000)
    num_classes = len(dataset.classes)
    torch.manual_seed(args.seed)
    unet = make_unet(latents.latent_channels, IMAGE_SIZE // latents.downsampling_factor,
                     num_classes)
    sampler = recipe.sampler(DDPMSampler, schedule, args.sampling_steps)
    unet_start = time.perf_counter()
    trainer = Trainer(
        unet, recipe.loss(schedule), latent_data, batch_size=32, lr=recipe.lr, warmup_steps=100,
        ema_decay=0.995, out_dir=out / "unet", log_every=100, checkpoint_every=500,
        sampler=latents.decoding_sampler(sampler), seed=args.seed, random_flip=False,
        class_dropout=0.1, guidance_scale=2.0, progress=progress,
    )
    trainer.train(args.unet_steps, max_seconds=args.unet_minutes * 60)
    unet_seconds = time.perf_counter() - unet_start
    model = LatentDiffusion(latents.autoencoder, latents.scale_factor,
                            unet=trainer.ema_model.eval(), schedule=schedule,
                            prediction=recipe.prediction, latent_shift=latents.latent_shift,
                            latent_scale=latents.latent_scale)
    model.save_pretrained(out / "model")

    # 4. Samples: 8 per class, one class per column, decoded.
    labels = torch.arange(8 * num_classes) % num_classes
    samples = model.sample(sampler, n=len(labels), model_kwargs={"y": labels},
                           guidance_scale=2.0, generator=torch.Generator().manual_seed(args.seed))
    save_grid(samples, out / "samples.png", nrow=num_classes, upscale=2)

    # 5. Sampling time: latent (decoding included) vs a pixel UNet of the same width, the same
    #    sampler and steps (random weights: the time does not depend on them), one after the
    #    other. benchmarks/bench_latent.py --part b repeats this interleaved, at 64x64 too.
    pixel_unet = make_unet(3, IMAGE_SIZE, num_classes).eval()
    pixel_sampler = DDPMSampler(schedule, num_steps=args.sampling_steps)
    n = 4
    kwargs = {"y": torch.arange(n) % num_classes}
    latent_time = time_sampling(lambda: model.sample(sampler, n=n, model_kwargs=kwargs), 1)
    pixel_time = time_sampling(lambda: pixel_sampler.sample(
        pixel_unet, (n, 3, IMAGE_SIZE, IMAGE_SIZE), model_kwargs=kwargs), 1)
    total = (time.perf_counter() - begin) / 60
    print(f"sampling {n} images, DDPM {args.sampling_steps} steps: latent {latent_time:.2f} s "
          f"(decoding included) vs pixel {pixel_time:.2f} s at {IMAGE_SIZE}x{IMAGE_SIZE}: "
          f"{pixel_time / latent_time:.1f}x faster in latent space")
    print(f"done in {total:.1f} min (autoencoder {ae_seconds / 60:.1f}, latent UNet "
          f"{unet_seconds / 60:.1f} min, {trainer.step} steps): {out / 'reconstructions.png'}, "
          f"{out / 'samples.png'} (columns: {', '.join(dataset.classes)}), {out / 'model'}")
    return {"psnr": psnr, "latent_seconds": latent_time, "pixel_seconds": pixel_time,
            "minutes": total}


if __name__ == "__main__":
    main()
