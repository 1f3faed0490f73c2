"""``ddpm-lib train``: train a diffusion model (pixel or latent space, labels or captions).

The options are checked and resolved (command line, else the first run's saved ones, else
:data:`ddpm_lib.cli.checks.TRAIN_DEFAULTS`) by :mod:`ddpm_lib.cli.checks` before :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import CLIError, add_threads_option
from .checks import (
    LATENT_NORMALIZATIONS,
    TRAIN_ARGS_FILE,
    TRAIN_DEFAULTS,
    int_list,
    latent_train_defaults,
)


def run(args: argparse.Namespace) -> None:
    """Train with the options resolved by ``checks.validate`` (``args.resolved``)."""
    from pathlib import Path

    import torch

    from ddpm_lib import _io
    from ddpm_lib.schedule import NoiseSchedule

    options = args.resolved  # the checked options of this run (see checks.validate)
    out = Path(args.out)
    dataset, latent, text = _dataset(options, out, args.no_progress)
    if options["super_resolution"]:  # (image, low_res, ...) pairs: train an upsampler
        from ddpm_lib.super_resolution import SuperResolutionPairs

        dataset = SuperResolutionPairs(dataset, options["super_resolution"])
    first = dataset[0]
    image = first[0] if isinstance(first, (tuple, list)) else first
    channels, height, width = image.shape
    torch.manual_seed(options["seed"])  # the model's initialisation and dropout; the Trainer
    # seeds everything else, so --seed reproduces a run
    model = _build_model(options, channels, height, _num_classes(options, dataset), text)
    build = NoiseSchedule.cosine if options["schedule"] == "cosine" else NoiseSchedule.linear
    schedule = build(options["num_timesteps"])
    if options["objective"] != "ddpm":  # the UNet inside its formulation, with the VP view
        from ddpm_lib.score_model import ScoreBasedModel

        model = ScoreBasedModel(model, options["objective"], schedule=schedule)
    trainer = _build_trainer(options, model, schedule, dataset, latent, text, out,
                             args.no_progress)
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _io.write_json(out / TRAIN_ARGS_FILE, options)
        start = "resuming" if trainer.resumed_from else "starting"  # the Trainer says from where
        num_images = len(dataset)  # every built dataset is sized
        print(f"ddpm-lib train: {start}; {num_images} images {channels}x{height}x{width}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"device {trainer.device}, {trainer.dist.world_size} process(es) -> {out}",
              file=sys.stderr)
    trainer.train(options["steps"])
    if options["objective"] != "ddpm" and trainer.dist.is_main:
        _export_score_model(trainer, schedule, out)
    if latent is not None and trainer.dist.is_main:
        latent.unet, latent.schedule = trainer.ema_model, schedule
        latent.prediction = options["prediction"]
        latent.save_pretrained(out)  # out/unet/: the EMA UNet beside out/autoencoder/
    if trainer.dist.is_main:
        print(f"ddpm-lib train: done at step {trainer.step}; checkpoint "
              f"{trainer.latest_checkpoint()}, EMA model {out / 'ema_model'}, "
              f"samples in {out / 'samples'}", file=sys.stderr)


def _export_score_model(trainer: Any, schedule: Any, out: Any) -> None:
    """A score-based run's bundle (``out/ema_model``): its losses have no schedule, so the
    Trainer exported the model alone; the pipeline records the VP view and the EDM sampler."""
    from ddpm_lib.pipeline import DiffusionPipeline

    DiffusionPipeline(trainer.ema_model, schedule, sampler={"name": "edm"}).save_pretrained(
        out / "ema_model")


def _dataset(options: dict[str, Any], out: Any, no_progress: bool) -> tuple[Any, Any, bool]:
    """``(dataset, LatentDiffusion or None, whether it is captioned)``; a latent run's
    dataset holds the latents of the images."""
    from ddpm_lib.data import build_dataset

    text = options["data"] == "captioned-shapes" or options["captions"] is not None
    default_size = {"shapes": 32, "captioned-shapes": 16}.get(options["data"])
    dataset = build_dataset(
        options["data"], root=options["data_root"],
        image_size=options["image_size"] or default_size,
        class_labels=options["class_conditional"], size=options["dataset_size"],
        seed=options["seed"], captions=options["captions"], language=options["language"],
    )
    latent = None
    if options["autoencoder"]:
        latent, dataset = _latent_dataset(options, dataset, out, no_progress)
        options["no_flip"] = True  # a mirrored latent is not the latent of the mirrored image
    return dataset, latent, text


def _num_classes(options: dict[str, Any], dataset: Any) -> int | None:
    if not options["class_conditional"]:
        return None
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise CLIError("--class-conditional needs labelled data (shapes, cifar10, mnist, or "
                       "a folder with one sub-folder per class)")
    return len(classes)


def _build_dit(options: dict[str, Any], channels: int, image_size: int,
               num_classes: int | None, text: bool) -> Any:
    """``--model dit-s/2`` ...: the paper's preset, its size overridden by ``--hidden-size``,
    ``--depth``, ``--num-heads``, ``--patch-size`` (a tiny DiT for a demo)."""
    from ddpm_lib.models.dit import DiT

    size, patch = str(options["model"])[len("dit-"):].split("/")
    overrides = {key: options[key] for key in ("hidden_size", "depth", "num_heads", "patch_size")
                 if options[key] is not None}
    try:
        return getattr(DiT, f"{size}{patch}")(
            input_size=image_size, in_channels=channels, num_classes=num_classes,
            learn_sigma=options["loss"] == "hybrid",
            context_dim=options["text_dim"] if text else None, **overrides,
        )
    except ValueError as error:  # e.g. an image size the patch size does not divide
        raise CLIError(f"--model {options['model']}: {error}") from None


def _build_model(options: dict[str, Any], channels: int, image_size: int,
                 num_classes: int | None, text: bool) -> Any:
    """The UNet (or ``--model``'s DiT) of the run; for captions, GLIDE's: a byte-level
    transformer reads the caption, trained jointly (:class:`ddpm_lib.TextConditionedUNet`)."""
    import math

    from ddpm_lib.models.unet import UNet

    if str(options.get("model", "unet")).startswith("dit-"):
        dit = _build_dit(options, channels, image_size, num_classes, text)
        return _with_text_encoder(options, dit) if text else dit
    base_channels = options["base_channels"]
    model = UNet(
        in_channels=channels,
        base_channels=base_channels,
        channel_mults=int_list("channel_mults", options["channel_mults"]),
        num_res_blocks=options["num_res_blocks"],
        attention_resolutions=int_list("attention_resolutions", options["attention_resolutions"]),
        image_size=image_size,
        dropout=options["dropout"],
        num_classes=num_classes,
        learn_sigma=options["loss"] == "hybrid",
        norm_groups=math.gcd(32, base_channels),
        cond_channels=channels if options["super_resolution"] else None,
        **({"context_dim": options["text_dim"], "text_attention": options["text_attention"]}
           if text else {}),
    )
    return _with_text_encoder(options, model) if text else model


def _with_text_encoder(options: dict[str, Any], model: Any) -> Any:
    """GLIDE's text model: a byte-level transformer beside ``model``, trained jointly."""
    from ddpm_lib.models.text import TextConditionedUNet, TextEncoder

    return TextConditionedUNet(model, TextEncoder(
        dim=options["text_dim"], num_layers=options["text_layers"],
        num_heads=options["text_heads"], max_length=options["text_max_length"],
    ))


def _build_trainer(options: dict[str, Any], model: Any, schedule: Any, dataset: Any,
                   latent: Any, text: bool, out: Any, no_progress: bool) -> Any:
    """The :class:`ddpm_lib.Trainer` of the run, with its loss and the sampler of its grids."""
    from ddpm_lib.losses import HybridLoss, SimpleLoss
    from ddpm_lib.samplers import DDPMSampler
    from ddpm_lib.training import Trainer

    learn_sigma = options["loss"] == "hybrid"
    loss_fn: Any
    if learn_sigma:
        loss_fn = HybridLoss(schedule, prediction=options["prediction"])
    else:
        loss_fn = SimpleLoss(schedule, prediction=options["prediction"],
                             min_snr_gamma=options["min_snr_gamma"])
    sampler: Any = DDPMSampler(
        schedule, variance="learned_range" if learn_sigma else "fixed_small",
        prediction=options["prediction"], num_steps=min(100, options["num_timesteps"]),
        clip_denoised=latent is None)
    if options["objective"] != "ddpm":  # EDM's loss or NCSN's; grids by EDM Heun, 35 calls
        from ddpm_lib.samplers import EDMSampler
        from ddpm_lib.score_losses import DenoisingScoreMatchingLoss, EDMLoss

        loss_fn = (EDMLoss(model.sigma_data) if options["objective"] == "edm"
                   else DenoisingScoreMatchingLoss(model.noise_levels))
        sampler = EDMSampler(model.noise_levels, 18)
    if latent is not None:
        sampler = latent.decoding_sampler(sampler)  # sample grids show decoded images
    return Trainer(
        model, loss_fn, dataset,
        batch_size=options["batch_size"], lr=options["lr"], warmup_steps=options["warmup_steps"],
        grad_clip=options["grad_clip"], ema_decay=options["ema_decay"],
        mixed_precision=options["mixed_precision"], out_dir=out,
        log_every=options["log_every"], checkpoint_every=options["checkpoint_every"],
        sample_every=options["sample_every"], sampler=sampler, seed=options["seed"],
        num_workers=options["num_workers"],
        random_flip=False if options["no_flip"] else (None if text else True),
        class_dropout=options["class_dropout"], caption_dropout=options["caption_dropout"],
        num_samples=options["num_samples"],
        guidance_scale=options["guidance_scale"], keep_checkpoints=options["keep_checkpoints"],
        progress=not no_progress, parallel=options.get("parallel", "ddp"),
        noise_augmentation=_augmentation(options),
    )


def _augmentation(options: dict[str, Any]) -> Any:
    """The noise augmentation of ``--super-resolution`` (DDPM's linear schedule, T = 1000)."""
    if not options["super_resolution"]:
        return None
    from ddpm_lib.augmentation import NoiseAugmentation

    return NoiseAugmentation(max_level=options["augmentation_max_level"],
                             sample_level=options["augmentation_level"])


# ----------------------------------------------------------------------------- latent diffusion

def _load_autoencoder(source: str) -> Any:
    """An autoencoder from a ``train-autoencoder`` run folder (its ``ema_model/``) or a
    pretrained autoencoder folder (``config.json`` + ``model.safetensors``)."""
    from pathlib import Path

    from ddpm_lib import AutoencoderKL

    folder = Path(source)
    if not folder.exists():
        raise FileNotFoundError(f"--autoencoder {source!r} does not exist")
    for candidate in (folder / "ema_model", folder / "autoencoder", folder):
        if (candidate / "config.json").is_file():
            try:
                return AutoencoderKL.from_pretrained(candidate)
            except (ValueError, TypeError, OSError) as error:
                raise CLIError(f"--autoencoder: cannot load {candidate}: {error}") from None
    raise CLIError(
        f"--autoencoder {source!r} is neither a train-autoencoder run (with ema_model/) nor an "
        "autoencoder folder (with config.json); train one with ddpm-lib train-autoencoder"
    )


def _latent_dataset(options: dict[str, Any], dataset: Any, out: Any, no_progress: bool) -> Any:
    """``(LatentDiffusion, latent dataset)`` for ``train --autoencoder``.

    The normalisation (``--latent-normalization``: a shift and a scale per channel, or one
    scale factor) is fitted once and saved with the autoencoder in ``out`` (``pipeline.json``,
    ``autoencoder/``); a resumed run reuses both (a run saved before per-channel statistics
    existed stays scale-only), and refuses an ``--autoencoder`` or an explicit
    ``--latent-normalization`` that differs from the one the run started with. The latents
    are cached in ``out/latents/``.
    """
    import torch

    from ddpm_lib.latent import CONFIG_FILE, LatentDiffusion, autoencoder_fingerprint

    autoencoder = _load_autoencoder(options["autoencoder"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autoencoder.to(device).eval()
    if (out / CONFIG_FILE).is_file() or (out / "pipeline.json").is_file():
        saved = LatentDiffusion.from_pretrained(out, load_unet=False)
        if autoencoder_fingerprint(saved.autoencoder) != autoencoder_fingerprint(autoencoder):
            raise CLIError(
                f"{out} was started with another autoencoder than {options['autoencoder']}; "
                "use a new --out to train on this one"
            )
        _check_resumed_normalization(options, saved, out)
        latent = LatentDiffusion(autoencoder, saved.scale_factor, prediction=options["prediction"],
                                 latent_shift=saved.latent_shift, latent_scale=saved.latent_scale)
    else:
        latent = LatentDiffusion(autoencoder, prediction=options["prediction"])
        options["latent_normalization"] = (options["latent_normalization"]
                                           or latent_train_defaults()["latent_normalization"])
        latent.fit_scale_factor(dataset, batch_size=options["batch_size"],
                                progress=not no_progress,
                                normalization=LATENT_NORMALIZATIONS[options["latent_normalization"]])
        latent.save_pretrained(out)
    print(f"ddpm-lib train: latent space of {options['autoencoder']} (f="
          f"{latent.downsampling_factor}, {latent.latent_channels} channels), scale factor "
          f"{latent.scale_factor:.5f}{_stats_text(latent)}", file=sys.stderr)
    data = latent.encode_dataset(dataset, out / "latents", batch_size=options["batch_size"],
                                 progress=not no_progress)
    if data.from_cache:
        print(f"ddpm-lib train: latents read from {data.cache_path}", file=sys.stderr)
    return latent, data


def _check_resumed_normalization(options: dict[str, Any], saved: Any, out: Any) -> None:
    """A resumed latent run keeps the normalisation it was started with (``pipeline.json``);
    an explicit ``--latent-normalization`` that differs is refused."""
    started = "channel" if saved.normalization == "channel" else "scale"
    wanted = options["latent_normalization"]
    if wanted is not None and wanted != started:
        raise CLIError(f"{out} was started with --latent-normalization {started}; its latents "
                       f"cannot change to {wanted}: use a new --out")
    options["latent_normalization"] = started  # recorded in cli_args.json


def _stats_text(latent: Any) -> str:
    """``", shift and scale per channel (...)"`` for a channel-normalised run, else ``""``."""
    if latent.channel_stats is None:
        return ""
    shift, scale = latent.channel_stats
    return (f", shift and scale per channel (shift {', '.join(f'{v:.3f}' for v in shift)}; "
            f"scale {', '.join(f'{v:.3f}' for v in scale)})")


# ----------------------------------------------------------------------------- options

def add_parser(subparsers: Any) -> None:
    """Register ``train`` and its options."""
    parser = subparsers.add_parser(
        "train",
        help="train a diffusion model (resumes by itself)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a DDPM UNet on the built-in shapes, CIFAR-10 / MNIST from a local folder, or\n"
            "any folder of images. Checkpoints, log.jsonl, sample grids and the final EMA model\n"
            "go to --out. Running the same command again resumes exactly where it stopped, with\n"
            "the options of the first run (options given again override them).\n"
            "Defaults are the DDPM paper's CIFAR-10 recipe; under torchrun it trains on every\n"
            "process (DDP), --batch-size being the global batch."
        ),
        epilog=(
            "examples:\n"
            "  ddpm-lib train --out runs/shapes --image-size 16 --class-conditional \\\n"
            "      --base-channels 32 --channel-mults 1,2 --attention-resolutions '' --steps 3000\n"
            "  ddpm-lib train --data cifar10 --data-root ~/data --out runs/cifar10\n"
            "  ddpm-lib train --data ~/pictures/cats --image-size 64 --out runs/cats\n"
            "  ddpm-lib train --data captioned-shapes --out runs/text --base-channels 32 \\\n"
            "      --channel-mults 1,2,2 --attention-resolutions 4 --text-dim 64 --text-layers 2\n"
            "  ddpm-lib train --out runs/sr --image-size 32 --super-resolution 2 \\\n"
            "      --base-channels 32 --channel-mults 1,2 --attention-resolutions ''\n"
            "  ddpm-lib train --data ~/pictures/captioned --captions metadata --image-size 64 \\\n"
            "      --out runs/captioned\n"
            "  torchrun --nproc_per_node 8 -m ddpm_lib.cli train --data cifar10 --data-root ~/data \\\n"
            "      --out runs/cifar10\n"
            "  ddpm-lib train --out runs/dit --model dit-s/2 --hidden-size 96 --depth 4 \\\n"
            "      --num-heads 4 --image-size 16 --class-conditional --loss hybrid\n"
            "  torchrun --nproc_per_node 8 -m ddpm_lib.cli train --model dit-xl/2 --parallel fsdp \\\n"
            "      --autoencoder runs/ae --data ~/imagenet --image-size 256 --class-conditional \\\n"
            "      --out runs/dit-xl"
        ),
    )
    _add_data_options(parser.add_argument_group("data"))
    optim = parser.add_argument_group("optimisation")
    _add_optimisation_options(optim)
    add_threads_option(optim)
    _add_diffusion_options(parser.add_argument_group("model and diffusion"))
    _add_dit_options(parser.add_argument_group("transformer backbone (DiT)"))
    _add_output_options(parser.add_argument_group("output"))
    parser.set_defaults(func=run)


def _add_data_options(data: Any) -> None:
    d = TRAIN_DEFAULTS
    data.add_argument("--data", default=None, metavar="SOURCE",
                      help="'shapes' (built in, no download), 'captioned-shapes' (built in, with "
                      "captions: trains text-to-image), 'cifar10', 'mnist', or a folder of "
                      f"images (default: {d['data']})")
    data.add_argument("--data-root", default=None, metavar="DIR",
                      help="folder holding CIFAR-10 (cifar-10-batches-py/) or MNIST (MNIST/raw/); "
                      "nothing is downloaded")
    data.add_argument("--image-size", type=int, default=None, metavar="PX",
                      help="resize and center-crop to this size (shapes: default 32; required "
                      "for a folder)")
    data.add_argument("--dataset-size", type=int, default=None, metavar="N",
                      help=f"number of built-in shapes images (default: {d['dataset_size']})")
    data.add_argument("--class-conditional", action="store_true", default=None,
                      help="condition on class labels (sub-folder names for a folder) and train "
                      "for classifier-free guidance")
    data.add_argument("--class-dropout", type=float, default=None, metavar="P",
                      help=f"probability of dropping a label to the null class (default: {d['class_dropout']})")
    data.add_argument("--captions", choices=("metadata", "txt"), default=None,
                      help="train text-to-image on a folder of captioned images: 'metadata' reads "
                      "metadata.jsonl (file_name, text; Hugging Face imagefolder), 'txt' a .txt "
                      "beside each image")
    data.add_argument("--language", choices=("en", "zh"), default=None,
                      help="language of the captioned-shapes captions (default: en)")
    data.add_argument("--caption-dropout", type=float, default=None, metavar="P",
                      help="probability of dropping a caption to the empty prompt, for "
                      f"classifier-free guidance (default: {d['caption_dropout']})")
    data.add_argument("--no-flip", action="store_true", default=None,
                      help="do not flip images left-right at random (captioned data is never "
                      "flipped: 'left' would become 'right')")
    data.add_argument("--num-workers", type=int, default=None, metavar="N",
                      help="data loading processes (default: 0 on CPU, up to 8 per GPU)")
    data.add_argument("--super-resolution", type=int, default=None, metavar="FACTOR",
                      help="train a super-resolution stage of a cascade: the model reads each "
                      "image downsampled by FACTOR (2, 4, 8), noise-augmented, as cond_image")
    data.add_argument("--augmentation-max-level", type=int, default=None, metavar="S",
                      help="--super-resolution: training augmentation levels 0..S of T = 1000 "
                      "(default: 999)")
    data.add_argument("--augmentation-level", type=int, default=None, metavar="S",
                      help="--super-resolution: the level it is sampled at, saved with the "
                      "model (default: ddpm_lib.augmentation.DEFAULT_SAMPLE_LEVEL)")
    data.add_argument("--autoencoder", default=None, metavar="RUN",
                      help="train in the latent space of this autoencoder (a train-autoencoder "
                      "--out folder or a pretrained autoencoder folder): the dataset is encoded "
                      "once into OUT/latents/, no flips. Latent runs default to the measured "
                      "recipe (ddpm_lib.LatentRecipe): --prediction v, --min-snr-gamma 5, "
                      "--lr 1e-3, --latent-normalization scale")
    data.add_argument("--latent-normalization", choices=tuple(LATENT_NORMALIZATIONS),
                      default=None,
                      help="with --autoencoder: 'scale' one scale factor for all channels "
                      "(LDM's rule), 'channel' gives every latent channel mean 0 and variance 1 "
                      "(a shift and a scale per channel) "
                      "for all (LDM's rule); saved in OUT/pipeline.json, kept on resume "
                      "(default: scale)")


def _add_optimisation_options(optim: Any) -> None:
    d = TRAIN_DEFAULTS
    optim.add_argument("--out", required=True, metavar="DIR",
                       help="output folder: checkpoints/, log.jsonl, samples/, ema_model/")
    optim.add_argument("--steps", type=int, default=None,
                       help=f"train until this many optimizer steps in total (default: {d['steps']})")
    optim.add_argument("--batch-size", type=int, default=None,
                       help=f"global batch size over all processes (default: {d['batch_size']})")
    optim.add_argument("--lr", type=float, default=None,
                       help=f"Adam learning rate (default: {d['lr']}; 1e-3 with --autoencoder)")
    optim.add_argument("--warmup-steps", type=int, default=None,
                       help=f"linear learning-rate warm-up (default: {d['warmup_steps']})")
    optim.add_argument("--grad-clip", type=float, default=None,
                       help=f"gradient norm clipping, 0 for none (default: {d['grad_clip']})")
    optim.add_argument("--ema-decay", type=float, default=None,
                       help=f"EMA decay of the weights used for sampling (default: {d['ema_decay']})")
    optim.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                       help="autocast precision (default: no)")
    optim.add_argument("--seed", type=int, default=None, help="seed of the run (default: 0)")


def _add_diffusion_options(model: Any) -> None:
    d = TRAIN_DEFAULTS
    model.add_argument("--base-channels", type=int, default=None,
                       help=f"UNet width (default: {d['base_channels']})")
    model.add_argument("--channel-mults", default=None, metavar="LIST",
                       help=f"width multiplier per resolution (default: {d['channel_mults']})")
    model.add_argument("--num-res-blocks", type=int, default=None,
                       help=f"residual blocks per resolution (default: {d['num_res_blocks']})")
    model.add_argument("--attention-resolutions", default=None, metavar="LIST",
                       help="resolutions with self-attention, '' for none (default: 16)")
    model.add_argument("--dropout", type=float, default=None, help=f"dropout (default: {d['dropout']})")
    model.add_argument("--text-dim", type=int, default=None,
                       help=f"text models: width of the text encoder (default: {d['text_dim']})")
    model.add_argument("--text-layers", type=int, default=None,
                       help=f"text models: transformer layers (default: {d['text_layers']})")
    model.add_argument("--text-heads", type=int, default=None,
                       help=f"text models: attention heads (default: {d['text_heads']})")
    model.add_argument("--text-max-length", type=int, default=None,
                       help="text models: UTF-8 bytes read from a caption (default: "
                       f"{d['text_max_length']})")
    model.add_argument("--text-attention", choices=("joint", "cross"), default=None,
                       help="text models: the text's keys and values joined to the "
                       "self-attention (GLIDE) or a cross-attention layer after it (Latent "
                       f"Diffusion) (default: {d['text_attention']})")
    model.add_argument("--schedule", choices=("linear", "cosine"), default=None,
                       help="noise schedule (default: linear)")
    model.add_argument("--num-timesteps", type=int, default=None,
                       help=f"diffusion steps T (default: {d['num_timesteps']})")
    model.add_argument("--prediction", choices=("eps", "x0", "v"), default=None,
                       help="what the network predicts (default: eps; v with --autoencoder)")
    model.add_argument("--loss", choices=("simple", "hybrid"), default=None,
                       help="simple: L_simple (DDPM); hybrid: L_simple + VLB with learned variances "
                       "(Nichol & Dhariwal) (default: simple)")
    model.add_argument("--objective", choices=("ddpm", "edm", "dsm"), default=None,
                       help="ddpm: the DDPM losses (--loss, --prediction); edm: Karras et al.'s "
                       "preconditioned denoiser and loss; dsm: NCSN's denoising score matching "
                       "over a geometric ladder of levels; edm and dsm runs sample with "
                       "--sampler edm, langevin, ve-sde or any DDPM sampler (default: ddpm)")
    model.add_argument("--min-snr-gamma", type=_gamma, default=None, metavar="GAMMA",
                       help="min-SNR loss weighting (Hang et al. 2023; 5 in the paper) for "
                       "--loss simple, 'none' for none (default: none; 5 with --autoencoder)")


def _gamma(text: str) -> float | str:
    """``--min-snr-gamma``: a number, or ``none`` (no weighting; checked in ``checks``)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'none'; got {text!r}") from None


def _add_dit_options(group: Any) -> None:
    from .checks import MODELS

    group.add_argument("--model", choices=MODELS, default=None, metavar="NAME",
                       help="the network: 'unet' (default) or a DiT preset of Peebles & Xie, "
                       "dit-{s,b,l,xl}/{2,4,8} (dit-xl/2: 28 blocks, width 1152, 16 heads, "
                       "patch 2); the UNet's options do not apply to a DiT")
    group.add_argument("--hidden-size", type=int, default=None, metavar="D",
                       help="DiT: width, overriding the preset's (a multiple of 4 and of "
                       "--num-heads)")
    group.add_argument("--depth", type=int, default=None, help="DiT: number of blocks")
    group.add_argument("--num-heads", type=int, default=None, help="DiT: attention heads")
    group.add_argument("--patch-size", type=int, default=None, metavar="P",
                       help="DiT: patch size, overriding the preset's (must divide the image "
                       "or latent size)")
    group.add_argument("--parallel", choices=("ddp", "fsdp"), default=None,
                       help="under torchrun: replicate the model on every process (ddp, "
                       "default) or shard weights, gradients and optimizer state (fsdp)")


def _add_output_options(output: Any) -> None:
    d = TRAIN_DEFAULTS
    output.add_argument("--log-every", type=int, default=None,
                        help=f"steps between log lines (default: {d['log_every']})")
    output.add_argument("--checkpoint-every", type=int, default=None,
                        help=f"steps between checkpoints (default: {d['checkpoint_every']})")
    output.add_argument("--keep-checkpoints", type=int, default=None,
                        help=f"how many recent checkpoints to keep (default: {d['keep_checkpoints']})")
    output.add_argument("--sample-every", type=int, default=None,
                        help=f"steps between sample grids (default: {d['sample_every']})")
    output.add_argument("--num-samples", type=int, default=None,
                        help=f"images per sample grid (default: {d['num_samples']})")
    output.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance for the grids of a conditional model")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bar")
