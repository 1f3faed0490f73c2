"""The ``ddpm-lib`` command line: ``train``, ``sample``, ``fid``, ``bpd`` and ``train-autoencoder``.

Run ``ddpm-lib --help`` (or ``python -m ddpm_lib.cli --help``). Each sub-command is defined by
a ``_add_<name>_parser(subparsers)`` function that registers its options and sets
``func`` to the function that runs it. Errors the user can fix (a missing path, a bad option,
an incompatible checkpoint) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence, Sized
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch


from ddpm_lib._cli_checks import (
    SAMPLER_STEPS,
    TRAIN_ARGS_FILE as _TRAIN_ARGS_FILE,
    TRAIN_DEFAULTS as _TRAIN_DEFAULTS,
    CLIError,
    int_list as _int_list,
    sampler_options,
    validate,
)

__all__ = ["CLIError", "build_parser", "default_threads", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-lib",
        description="Train, sample and evaluate denoising diffusion models.",
    )
    from ddpm_lib import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm-lib`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate(args)  # every argument, before any work or write
        with _torch_threads(args.threads):
            args.func(args)
    except (CLIError, FileNotFoundError, ValueError, TypeError) as error:
        message = str(error) or type(error).__name__
        print(f"ddpm-lib {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpm-lib {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def default_threads() -> int:
    """The torch CPU threads of a command without ``--threads``: ``OMP_NUM_THREADS`` when it is
    set to a positive integer, else 1.

    One thread, because ``benchmarks/bench_threads.py`` measured ``ddpm-lib sample`` on the
    shared 2-core machine 5.7x slower on torch's default of one thread per core (2) than on
    one, the cores being busy with other jobs: oversubscribed OpenMP threads wait for each
    other at every operation. On a dedicated many-core CPU, give ``--threads`` (or
    ``OMP_NUM_THREADS``) the number of cores for large models; on a GPU it matters little.
    """
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run a command on ``count`` torch CPU threads (``--threads``, else :func:`default_threads`),
    restoring the previous number afterwards (``main`` may be called in-process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count if count is not None else default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _add_threads_option(parser: Any) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="torch CPU threads (torch.set_num_threads). Default: 1, or OMP_NUM_THREADS when "
        "set: on a machine shared with other jobs one thread was 5.7x faster than two "
        "(benchmarks/bench_threads.py); on a dedicated many-core CPU give the number of cores")


# ----------------------------------------------------------------------------- train / sample

class _OneLineWarnings:
    """Print warnings as ``ddpm-lib COMMAND: warning: ...`` lines, without source lines."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __enter__(self) -> None:
        import warnings

        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("default")
        command = self.command

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            print(f"ddpm-lib {command}: warning: {message}", file=sys.stderr)

        warnings.showwarning = show

    def __exit__(self, *exc: Any) -> None:
        self._catcher.__exit__(*exc)


def _run_train(args: argparse.Namespace) -> None:
    with _OneLineWarnings("train"):
        _train(args)


def _run_sample(args: argparse.Namespace) -> None:
    with _OneLineWarnings("sample"):
        _sample(args)


def _train(args: argparse.Namespace) -> None:
    import math
    from pathlib import Path

    import torch

    from ddpm_lib.data import build_dataset
    from ddpm_lib.losses import HybridLoss, SimpleLoss
    from ddpm_lib.models.unet import UNet
    from ddpm_lib.samplers import DDPMSampler
    from ddpm_lib.schedule import NoiseSchedule
    from ddpm_lib.training import Trainer

    options = args.resolved  # the checked options of this run (see _cli_checks.validate)
    out = Path(args.out)
    text = options["data"] == "captioned-shapes" or options["captions"] is not None
    default_size = {"shapes": 32, "captioned-shapes": 16}.get(options["data"])
    dataset = build_dataset(
        options["data"],
        root=options["data_root"],
        image_size=options["image_size"] or default_size,
        class_labels=options["class_conditional"],
        size=options["dataset_size"],
        seed=options["seed"],
        captions=options["captions"],
        language=options["language"],
    )
    latent = None
    if options["autoencoder"]:
        latent, dataset = _latent_dataset(options, dataset, out, args.no_progress)
        options["no_flip"] = True  # a mirrored latent is not the latent of the mirrored image
    first = dataset[0]
    image = first[0] if isinstance(first, (tuple, list)) else first
    channels, height, width = image.shape
    num_classes = None
    if options["class_conditional"]:
        classes = getattr(dataset, "classes", None)
        if not classes:
            raise CLIError("--class-conditional needs labelled data (shapes, cifar10, mnist, or "
                           "a folder with one sub-folder per class)")
        num_classes = len(classes)
    if options["schedule"] == "cosine":
        schedule = NoiseSchedule.cosine(options["num_timesteps"])
    else:
        schedule = NoiseSchedule.linear(options["num_timesteps"])
    learn_sigma = options["loss"] == "hybrid"
    base_channels = options["base_channels"]
    model: torch.nn.Module = UNet(
        in_channels=channels,
        base_channels=base_channels,
        channel_mults=_int_list("channel_mults", options["channel_mults"]),
        num_res_blocks=options["num_res_blocks"],
        attention_resolutions=_int_list("attention_resolutions", options["attention_resolutions"]),
        image_size=height,
        dropout=options["dropout"],
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        norm_groups=math.gcd(32, base_channels),
        **({"context_dim": options["text_dim"], "text_attention": options["text_attention"]}
           if text else {}),
    )
    if text:  # GLIDE: a byte-level transformer reads the caption, trained jointly
        from ddpm_lib.models.text import TextConditionedUNet, TextEncoder

        model = TextConditionedUNet(model, TextEncoder(
            dim=options["text_dim"], num_layers=options["text_layers"],
            num_heads=options["text_heads"], max_length=options["text_max_length"],
        ))
    loss_fn: HybridLoss | SimpleLoss
    if learn_sigma:
        loss_fn = HybridLoss(schedule, prediction=options["prediction"])
    else:
        loss_fn = SimpleLoss(schedule, prediction=options["prediction"],
                             min_snr_gamma=options["min_snr_gamma"])
    sampler = DDPMSampler(schedule, variance="learned_range" if learn_sigma else "fixed_small",
                          prediction=options["prediction"],
                          num_steps=min(100, options["num_timesteps"]), clip_denoised=latent is None)
    if latent is not None:
        sampler = latent.decoding_sampler(sampler)  # sample grids show decoded images
    torch.manual_seed(options["seed"])  # the model's dropout; the Trainer seeds everything else
    trainer = Trainer(
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
        progress=not args.no_progress,
    )
    if trainer.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        from ddpm_lib import _io

        _io.write_json(out / _TRAIN_ARGS_FILE, options)
        start = "resuming" if trainer.resumed_from else "starting"  # the Trainer says from where
        num_images = len(dataset)  # type: ignore[arg-type]  # every built dataset is sized
        print(f"ddpm-lib train: {start}; {num_images} images {channels}x{height}x{width}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"device {trainer.device}, {trainer.dist.world_size} process(es) -> {out}",
              file=sys.stderr)
    trainer.train(options["steps"])
    if latent is not None and trainer.dist.is_main:
        latent.unet, latent.schedule = trainer.ema_model, schedule
        latent.prediction = options["prediction"]
        latent.save_pretrained(out)  # out/unet/: the EMA UNet beside out/autoencoder/
    if trainer.dist.is_main:
        print(f"ddpm-lib train: done at step {trainer.step}; checkpoint "
              f"{trainer.latest_checkpoint()}, EMA model {out / 'ema_model'}, "
              f"samples in {out / 'samples'}", file=sys.stderr)


def _sample(args: argparse.Namespace) -> None:

    import torch

    from ddpm_lib.data import save_grid, tensor_to_uint8

    if args.out is None and args.npz is None:
        args.out = "samples.png"
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise CLIError(f"--device: not a device: {args.device!r}") from None
    loaded = _load_pipeline(args.source, device, use_ema=not args.no_ema)
    latent = loaded.latent
    sampler = _sample_sampler(args, loaded, pixels=latent is None)
    num_classes = loaded.num_classes
    if args.label is not None and num_classes is None:
        raise CLIError("--class needs a class-conditional model; this one is unconditional")
    if args.label is not None and num_classes is not None and not 0 <= args.label < num_classes:
        raise CLIError(f"--class must be in [0, {num_classes - 1}]; got {args.label}")
    text = callable(getattr(loaded.model, "encode_prompts", None))
    if text and not args.prompt:
        raise CLIError(f"{args.source} is a text-to-image model: give --prompt \"...\"")
    if not text and (args.prompt or args.negative_prompt is not None):
        raise CLIError("--prompt / --negative-prompt need a text-to-image model; this one has no "
                       "text encoder")
    if args.guidance_scale is not None and num_classes is None and not text:
        raise CLIError("--guidance-scale needs a class-conditional model; this one is unconditional")

    generator = torch.Generator(device).manual_seed(args.seed)
    if num_classes is not None:
        labels = (torch.full((args.num,), args.label) if args.label is not None
                  else torch.arange(args.num) % num_classes)
    prompts: list[str] = []
    if text:  # --num samples of each prompt, prompt after prompt (one grid row each)
        prompts = [prompt for prompt in args.prompt for _ in range(args.num)]
        args.num = len(prompts)
    images = []
    config: dict[str, Any] = getattr(loaded.model, "config", {})
    config = config.get("unet", config)  # a text model: the UNet's part
    image_shape = (int(config["in_channels"]), int(config["image_size"]),
                   int(config["image_size"]))
    inpaint = _inpaint_inputs(args, image_shape, device)
    for start in range(0, args.num, args.batch_size):
        count = min(args.batch_size, args.num - start)
        kwargs = {}
        unconditional = None
        if num_classes is not None:
            kwargs["y"] = labels[start:start + count].to(device)
        if text:
            encode_prompts = loaded.model.encode_prompts
            assert callable(encode_prompts)  # checked above: a text-to-image model
            kwargs.update(encode_prompts(prompts[start:start + count]))
            if args.guidance_scale is not None:
                unconditional = encode_prompts([args.negative_prompt or ""] * count)
        options: dict[str, Any] = {"model_kwargs": kwargs, "guidance_scale": args.guidance_scale,
                                   "progress": not args.no_progress}
        if unconditional:
            options["unconditional_kwargs"] = unconditional
        if args.guidance_rescale:
            options["guidance_rescale"] = args.guidance_rescale
        if inpaint is not None:  # RePaint: the known part of --inpaint where --mask is white
            batch = sampler.inpaint(loaded.model, inpaint[0].expand(count, *image_shape),
                                    inpaint[1], resample=args.resample,
                                    jump_length=args.jump_length, generator=generator, **options)
        else:
            batch = sampler.sample(loaded.model, (count, *image_shape), generator=generator,
                                   **options)
        assert isinstance(batch, torch.Tensor)  # no trajectory was asked for
        if latent is not None:
            batch = latent.decode(batch)
        images.append(batch.float().cpu())
    samples = torch.cat(images)
    written = []
    if args.out is not None:
        nrow = args.nrow or (
            len(prompts) // len(args.prompt) if text
            else num_classes if num_classes and num_classes <= 16 and args.label is None
            else max(1, round(args.num ** 0.5)))
        written.append(str(save_grid(samples, args.out, nrow=nrow, upscale=args.upscale)))
    if args.npz is not None:

        uint8 = tensor_to_uint8(samples).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        from ddpm_lib import _io

        arrays = {"arr_0": uint8} if num_classes is None else {"arr_0": uint8, "arr_1": labels.numpy()}
        _io.save_npz(args.npz, arrays)
        written.append(args.npz)
    print(f"ddpm-lib sample: {args.num} samples from {loaded.source} -> {', '.join(written)}",
          file=sys.stderr)


def _sample_sampler(args: argparse.Namespace, loaded: Any, pixels: bool) -> Any:
    """The sampler of ``ddpm-lib sample``: ``--sampler`` with the options given for it.

    The model's prediction and learned variance come from the run; ``--steps`` defaults per
    sampler (:data:`ddpm_lib._cli_checks.SAMPLER_STEPS`, at most T); clipping is on for pixel
    runs and off for latents unless ``--clip-denoised`` / ``--no-clip-denoised`` says.
    """
    from ddpm_lib import samplers

    schedule = loaded.schedule
    num_timesteps = schedule.num_timesteps
    if args.steps is not None and args.steps > num_timesteps:
        raise CLIError(f"--steps must be at most the model's T = {num_timesteps}; got {args.steps}")
    name, keywords = sampler_options(args)
    keywords.update(
        num_steps=args.steps or min(SAMPLER_STEPS[args.sampler], num_timesteps),
        prediction=loaded.prediction,
        clip_denoised=pixels if args.clip_denoised is None else args.clip_denoised,
    )
    analytic = None
    if args.analytic_variance is not None:  # Analytic-DPM's table, saved by AnalyticVariance.save
        analytic = samplers.AnalyticVariance.load(args.analytic_variance, schedule)
    if args.sampler == "ddpm":
        keywords["variance"] = analytic or loaded.variance
    else:
        keywords["learn_sigma"] = loaded.learn_sigma
        if analytic is not None:
            keywords["variance"] = analytic
    return getattr(samplers, name)(schedule, **keywords)


def _inpaint_inputs(args: argparse.Namespace, image_shape: tuple[int, ...], device: Any) -> Any:
    """``(image (1, C, H, W), mask (1, 1, H, W))`` from ``--inpaint`` / ``--mask``, or ``None``.

    Both are resized to the model's size; the mask is read as grayscale, white (>= 128) = keep.
    """
    if args.inpaint is None:  # validate() checked that --mask comes with --inpaint
        return None
    from PIL import Image

    from ddpm_lib.data import image_to_tensor

    channels, height, width = image_shape
    tensors = []
    for option, path, kind in (("--inpaint", args.inpaint, Image.Resampling.BICUBIC),
                               ("--mask", args.mask, Image.Resampling.NEAREST)):
        try:
            with Image.open(path) as opened:
                picture = opened.convert("RGB" if option == "--inpaint" else "L")
        except (OSError, ValueError) as error:
            raise CLIError(f"{option}: cannot read an image from {path!r} ({error})") from None
        if picture.size != (width, height):
            picture = picture.resize((width, height), kind)
        tensors.append(image_to_tensor(picture, channels if option == "--inpaint" else 1))
    image, mask = tensors[0][None].to(device), (tensors[1][None] > 0).float().to(device)
    if not 0.0 < float(mask.mean()) < 1.0:
        print("ddpm-lib sample: warning: --mask keeps every pixel or none", file=sys.stderr)
    return image, mask


def _add_train_parser(subparsers: Any) -> None:
    d = _TRAIN_DEFAULTS
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
            "  ddpm-lib train --data ~/pictures/captioned --captions metadata --image-size 64 \\\n"
            "      --out runs/captioned\n"
            "  torchrun --nproc_per_node 8 -m ddpm_lib.cli train --data cifar10 --data-root ~/data \\\n"
            "      --out runs/cifar10"
        ),
    )
    data = parser.add_argument_group("data")
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
    data.add_argument("--autoencoder", default=None, metavar="RUN",
                      help="train in the latent space of this autoencoder (a train-autoencoder "
                      "--out folder or a pretrained autoencoder folder): the dataset is encoded "
                      "once into OUT/latents/, no flips")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--out", required=True, metavar="DIR",
                       help="output folder: checkpoints/, log.jsonl, samples/, ema_model/")
    optim.add_argument("--steps", type=int, default=None,
                       help=f"train until this many optimizer steps in total (default: {d['steps']})")
    optim.add_argument("--batch-size", type=int, default=None,
                       help=f"global batch size over all processes (default: {d['batch_size']})")
    optim.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default: {d['lr']})")
    optim.add_argument("--warmup-steps", type=int, default=None,
                       help=f"linear learning-rate warm-up (default: {d['warmup_steps']})")
    optim.add_argument("--grad-clip", type=float, default=None,
                       help=f"gradient norm clipping, 0 for none (default: {d['grad_clip']})")
    optim.add_argument("--ema-decay", type=float, default=None,
                       help=f"EMA decay of the weights used for sampling (default: {d['ema_decay']})")
    optim.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                       help="autocast precision (default: no)")
    optim.add_argument("--seed", type=int, default=None, help="seed of the run (default: 0)")

    model = parser.add_argument_group("model and diffusion")
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
                       help="what the network predicts (default: eps)")
    model.add_argument("--loss", choices=("simple", "hybrid"), default=None,
                       help="simple: L_simple (DDPM); hybrid: L_simple + VLB with learned variances "
                       "(Nichol & Dhariwal) (default: simple)")
    model.add_argument("--min-snr-gamma", type=float, default=None, metavar="GAMMA",
                       help="min-SNR loss weighting (Hang et al. 2023; 5 in the paper) for "
                       "--loss simple (default: none)")

    output = parser.add_argument_group("output")
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
    _add_threads_option(optim)
    parser.set_defaults(func=_run_train)


def _add_sample_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="draw images from a trained model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Draw samples from a training folder (its newest good checkpoint), one checkpoint\n"
            "folder, or a pretrained folder (config.json + model.safetensors) and save them as a\n"
            "PNG grid and/or an .npz of uint8 images (arr_0, N x H x W x C; labels in arr_1)."
        ),
        epilog=(
            "examples:\n"
            "  ddpm-lib sample runs/shapes --out grid.png\n"
            "  ddpm-lib sample runs/shapes --sampler dpm-solver --steps 20 --guidance-scale 3 --out g.png\n"
            "  ddpm-lib sample runs/cifar10/ema_model --num 50000 --batch-size 500 --npz samples.npz\n"
            "  ddpm-lib sample runs/text --prompt 'a red circle on a white background' \\\n"
            "      --prompt '黑色背景上有一个黄色正方形' --num 8 --guidance-scale 3 --out t.png"
        ),
    )
    parser.add_argument("source", metavar="MODEL",
                        help="training --out folder, checkpoint folder, or pretrained folder")
    parser.add_argument("--out", default=None, metavar="PNG",
                        help="write a grid of the samples here (default: samples.png unless --npz)")
    parser.add_argument("--npz", default=None, metavar="FILE", help="write the samples as uint8 arrays")
    parser.add_argument("--num", type=int, default=16,
                        help="number of samples; of each prompt for a text model (default: 16)")
    _add_sampler_options(parser)
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="classifier-free guidance for a class-conditional or text model (e.g. 3)")
    parser.add_argument("--guidance-rescale", type=float, default=0.0, metavar="PHI",
                        help="rescale the guided prediction to the conditional one's std and mix "
                        "with weight PHI (Lin et al. 2024; 0.7 in the paper; default: 0, off)")
    parser.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                        help="text-to-image models: the prompt, in any language; repeat for "
                        "several (--num samples of each, one grid row per prompt)")
    parser.add_argument("--negative-prompt", default=None, metavar="TEXT",
                        help="text models with --guidance-scale: guide away from this prompt "
                        "instead of the empty one")
    parser.add_argument("--class", dest="label", type=int, default=None, metavar="K",
                        help="sample only class K (default: all classes in turn)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default: 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per model call (default: 64)")
    parser.add_argument("--no-ema", action="store_true",
                        help="use the raw weights of a checkpoint instead of their EMA")
    parser.add_argument("--nrow", type=int, default=None, help="images per grid row")
    parser.add_argument("--upscale", type=int, default=1, help="enlarge grid images by this factor")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--analytic-variance", default=None, metavar="TABLE",
                        help="Analytic-DPM's optimal variance from TABLE (written by "
                             "AnalyticVariance.save) for --sampler ddpm / ddim")
    _add_threads_option(parser)
    inpaint = parser.add_argument_group("inpainting (RePaint)")
    inpaint.add_argument("--inpaint", default=None, metavar="IMAGE",
                         help="fill in IMAGE where --mask is black (resized to the model's size)")
    inpaint.add_argument("--mask", default=None, metavar="MASK",
                         help="grayscale image: white = keep the pixel of IMAGE, black = generate")
    inpaint.add_argument("--resample", type=int, default=1, metavar="R",
                         help="RePaint resamplings per jump (default: 1, plain replacement)")
    inpaint.add_argument("--jump-length", type=int, default=1, metavar="J",
                         help="steps gone back up at each RePaint jump (default: 1)")
    parser.set_defaults(func=_run_sample)


def _add_sampler_options(parser: Any) -> None:
    """``--sampler`` and the options of each sampler (checked by ``_cli_checks.validate``)."""
    from ddpm_lib.samplers import SPACINGS
    from ddpm_lib.samplers.sde import METHODS
    from ddpm_lib.samplers.unipc import VARIANTS

    group = parser.add_argument_group(
        "sampler", "An option is accepted only by the samplers that have it (--order for ddim\n"
        "is an error); not given, it keeps the sampler's default.")
    steps = ", ".join(f"{name} {count}" for name, count in SAMPLER_STEPS.items())
    group.add_argument(
        "--sampler", choices=tuple(SAMPLER_STEPS), default="ddpm",
        help="ddpm: ancestral, respaced, the most forgiving (a briefly trained model); ddim: "
        "deterministic with --eta 0; dpm-solver: DPM-Solver++ multistep; unipc: UniPC "
        "predictor-corrector (15-25 steps); pndm: iPNDM / PLMS (5-10 steps with --spacing "
        "quadratic --final-step denoise); deis: DEIS multistep; sde: the score-SDE samplers "
        "(--method) (default: ddpm)")
    group.add_argument("--steps", type=int, default=None,
                       help=f"sampling steps, at most T (default: {steps}; ddpm with --steps T is "
                       "the paper's full chain)")
    group.add_argument("--spacing", choices=SPACINGS, default=None,
                       help="the grid of timesteps (default: ddpm linspace, ddim trailing, sde "
                       "linspace, the multistep solvers logsnr)")
    group.add_argument("--order", type=int, default=None,
                       help="dpm-solver, unipc, deis: 1-3 (default: 2, deis 3); pndm: 1-4 "
                       "(default: 4)")
    group.add_argument("--final-step", choices=("solver", "denoise"), default=None,
                       help="dpm-solver, unipc, pndm, deis: end with a full-order step to t = 0 "
                       "(solver) or a step to sigma = 0 (denoise) (default: solver)")
    group.add_argument("--eta", type=float, default=None,
                       help="ddim: noise, 0 deterministic, 1 like DDPM (default: 0)")
    group.add_argument("--variant", choices=VARIANTS, default=None,
                       help="unipc: the B(h) of the update (default: bh2)")
    group.add_argument("--method", choices=METHODS, default=None,
                       help="sde: euler_maruyama (the reverse SDE), predictor_corrector (with "
                       "Langevin corrector steps), heun (the probability-flow ODE, Karras et "
                       "al.), adaptive (Jolicoeur-Martineau et al.) (default: euler_maruyama)")
    group.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                       help="clamp the predicted x0 to [-1, 1] at every step (default: on for "
                       "pixel runs, off for latent runs)")
    group.add_argument("--dynamic-threshold", type=float, default=None, metavar="P",
                       help="Imagen's dynamic thresholding of x0 at percentile P in (0, 1) "
                       "(0.995 in the paper) instead of clipping (default: off)")


# ----------------------------------------------------------------------------- fid / bpd
def _device(name: str | None) -> torch.device:
    """``--device``: the given device, else CUDA when available, else the CPU."""
    import torch

    if name:
        try:
            return torch.device(name)
        except RuntimeError as error:
            raise CLIError(f"--device: not a device: {name!r}") from error
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint_for_eval(path: str, device: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """``(model, schedule)`` of a trained model for ``fid --checkpoint`` and ``bpd``, read by
    the one loader of trained models (:class:`ddpm_lib.DiffusionPipeline`): any folder that
    ``sample`` reads. The saved prediction and variance fill ``--prediction`` /
    ``--variance`` unless they were given; ``--schedule`` / ``--timesteps`` only serve a
    folder that records no schedule. ``args.latent_model`` is the latent model's
    autoencoder part (``None`` in pixel space), to decode samples."""
    import os

    from .schedule import NoiseSchedule

    default_schedule = None
    if args.schedule is not None or args.timesteps is not None:
        build = NoiseSchedule.cosine if args.schedule == "cosine" else NoiseSchedule.linear
        default_schedule = build(args.timesteps or 1000)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    pipe = _load_pipeline(path, device, default_schedule=default_schedule)
    if pipe.is_text_model:
        raise CLIError(
            f"{path} is a text-to-image model: fid --checkpoint and bpd evaluate unconditional "
            f"and class-conditional models; draw images with `ddpm-lib sample {path} --prompt "
            "...` and compute fid on their folder"
        )
    if args.prediction is None:
        args.prediction = pipe.prediction
    if args.variance == "auto":
        args.variance = pipe.variance
    args.latent_model = pipe.latent
    return pipe.model, pipe.schedule


def _model_setting(model: Any, name: str, default: Any = None) -> Any:
    """``model.<name>`` or ``model.config[name]`` (the UNet's constructor arguments)."""
    if hasattr(model, name):
        return getattr(model, name)
    config = getattr(model, "config", None)
    if isinstance(config, dict) and name in config:
        return config[name]
    return getattr(config, name, default)


def _variance_of(model: Any, args: argparse.Namespace) -> str:
    from .schedule import default_variance

    variance = None if args.variance == "auto" else args.variance
    return default_variance(bool(_model_setting(model, "learn_sigma", False)), variance)


def _read_image_array(path: str) -> Any:
    """A ``.npy`` / ``.npz`` image batch (``arr_0``, ``(N, H, W, C)`` uint8, the format of the
    guided-diffusion reference batches) as a ``(N, C, H, W)`` uint8 tensor."""
    import numpy as np
    import torch

    if path.endswith(".npz"):
        with np.load(path) as data:
            keys = [key for key in ("arr_0", "images") if key in data.files]
            if not keys:
                raise CLIError(
                    f"{path!r} holds neither statistics ('mu', 'sigma') nor images ('arr_0'); "
                    f"it has {sorted(data.files)}"
                )
            array = data[keys[0]]
    else:
        array = np.load(path)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise CLIError(
            f"{path!r}: expected uint8 images of shape (N, H, W, C) with C = 1 or 3; got "
            f"{array.dtype} {array.shape}"
        )
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def _is_statistics_file(path: str) -> bool:
    import numpy as np

    if not path.endswith(".npz"):
        return False
    with np.load(path) as data:
        return "mu" in data.files and "sigma" in data.files


def _load_extractor(args: argparse.Namespace, device: Any) -> Any:
    """The FID feature network: the TF InceptionV3 from ``--inception-weights`` (or env)."""
    from .metrics import load_fid_inception

    return load_fid_inception(args.inception_weights, device=device)


def _statistics_of(
    path: str, extractor: Any, args: argparse.Namespace, keep: bool, num_samples: int | None
) -> Any:
    """Statistics of an image folder, a ``.npz`` of statistics or a ``.npy``/``.npz`` batch."""
    import os

    from .metrics import FeatureStatistics, compute_statistics, statistics_from_folder

    if not os.path.exists(path):
        raise FileNotFoundError(f"not found: {path!r} (expected an image folder or a .npz file)")
    if _is_statistics_file(path):
        if keep:
            raise CLIError(f"--kid needs images on both sides; {path!r} holds only statistics")
        return FeatureStatistics.load(path)
    common = dict(
        batch_size=args.batch_size,
        num_samples=num_samples,
        keep_features=keep,
        progress=not args.no_progress,
    )
    if os.path.isdir(path):
        return statistics_from_folder(path, extractor(), num_workers=args.num_workers, **common)
    if path.endswith((".npy", ".npz")):
        return compute_statistics(_read_image_array(path), extractor(), **common)
    raise CLIError(f"{path!r} is neither an image folder nor a .npz / .npy file")


def _build_sampler(args: argparse.Namespace, schedule: Any, model: Any) -> Any:
    """The sampler named by ``--sampler`` with ``--steps`` steps (default per sampler)."""
    from . import samplers

    learn_sigma = bool(_model_setting(model, "learn_sigma", False))
    clip = getattr(args, "latent_model", None) is None  # latents are not clipped
    if args.sampler == "ddpm":
        return samplers.DDPMSampler(
            schedule,
            variance=_variance_of(model, args),
            prediction=args.prediction or "eps",
            num_steps=args.steps, clip_denoised=clip,
        )
    if args.sampler == "ddim":
        return samplers.DDIMSampler(
            schedule, num_steps=args.steps or 50, prediction=args.prediction or "eps",
            learn_sigma=learn_sigma, clip_denoised=clip,
        )
    if args.sampler == "dpm_solver":
        return samplers.DPMSolverSampler(
            schedule, num_steps=args.steps or 20, prediction=args.prediction or "eps",
            learn_sigma=learn_sigma, clip_denoised=clip,
        )
    raise CLIError(f"--sampler must be ddpm, ddim or dpm_solver; got {args.sampler!r}")


def _sample_statistics(args: argparse.Namespace, extractor: Any, keep: bool) -> Any:
    """Statistics of ``--num-samples`` images generated from ``--checkpoint``."""
    import torch

    from .metrics import statistics_from_sampler

    device = _device(args.device)
    model, schedule = load_checkpoint_for_eval(args.checkpoint, device, args)
    sampler = _build_sampler(args, schedule, model)
    latent = getattr(args, "latent_model", None)
    if latent is not None:  # samples latents, decoded to images for the features
        sampler = latent.decoding_sampler(sampler)
    image_size = args.image_size or _model_setting(model, "image_size")
    channels = _model_setting(model, "in_channels", 3)
    if image_size is None:
        raise CLIError("the model does not record its image size; pass --image-size")
    num_classes = _model_setting(model, "num_classes")

    def class_labels(count: int, generator: Any) -> dict:
        labels = torch.randint(num_classes, (count,), generator=generator, device=device)
        return {"y": labels}

    generator = torch.Generator(device=device).manual_seed(args.seed)
    return statistics_from_sampler(
        sampler,
        model,
        extractor(),
        args.num_samples,
        (channels, image_size, image_size),
        batch_size=args.batch_size,
        generator=generator,
        model_kwargs=class_labels if num_classes else None,
        keep_features=keep,
        progress=not args.no_progress,
    )


def _warn_small(command: str, num_samples: int | None, what: str) -> None:
    from .metrics import RECOMMENDED_MIN_SAMPLES

    if num_samples is not None and num_samples < RECOMMENDED_MIN_SAMPLES:
        print(
            f"ddpm-lib {command}: warning: only {num_samples} samples; {what}",
            file=sys.stderr,
        )


def _run_fid(args: argparse.Namespace) -> None:
    from functools import lru_cache

    import torch

    from .metrics import kernel_inception_distance

    @lru_cache(maxsize=None)
    def extractor() -> Any:  # loaded only when some side needs features
        return _load_extractor(args, _device(args.device))

    if args.save_stats:
        stats = _statistics_of(args.paths[0], extractor, args, False, args.num_samples)
        stats.save(args.save_stats)
        print(f"saved statistics of {stats.num_samples} images to {args.save_stats}")
        return
    keep = args.kid
    if args.checkpoint:
        first = _sample_statistics(args, extractor, keep)
        second = _statistics_of(args.paths[0], extractor, args, keep, None)  # all references
    else:
        first = _statistics_of(args.paths[0], extractor, args, keep, args.num_samples)
        second = _statistics_of(args.paths[1], extractor, args, keep, args.num_samples)
    if first.dim != second.dim:
        raise CLIError(
            f"the two sides have features of dimension {first.dim} and {second.dim}; "
            "statistics must come from the same network"
        )
    fid = first.frechet_distance(second)
    counts = [first.num_samples, second.num_samples]
    shown = " vs ".join("unknown" if n is None else str(n) for n in counts)
    print(f"FID: {fid:.4f}")
    print(f"samples: {shown}")
    if keep:
        kid = kernel_inception_distance(
            first.features,
            second.features,
            num_subsets=args.kid_subsets,
            subset_size=args.kid_subset_size,
            generator=torch.Generator().manual_seed(args.seed),
        )
        print(f"KID: {kid.mean:.6f} +- {kid.std:.6f} (subsets of {kid.subset_size})")
    known = [n for n in counts if n is not None]
    _warn_small(
        "fid",
        min(known) if known else None,
        "FID is biased upward at small N (the bias shrinks like 1/N), so it is not comparable "
        "with published figures; use >= 10000 samples (50000 is standard) or --kid",
    )


def _with_class_label(model: Any, label: int) -> Any:
    """``model`` called with ``y = label`` for every image (a module, so eval mode reaches it)."""
    import torch

    class WithClassLabel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: Any) -> Any:
            y = torch.full((x_t.shape[0],), label, dtype=torch.long, device=x_t.device)
            return self.model(x_t, t, y=y, **model_kwargs)

    return WithClassLabel()


def _run_bpd(args: argparse.Namespace) -> None:
    import os

    import torch

    from .metrics import ImageFolder, nll_bits_per_dim

    device = _device(args.device)
    model, schedule = load_checkpoint_for_eval(args.checkpoint, device, args)
    if getattr(args, "latent_model", None) is not None:
        raise CLIError(f"{args.checkpoint} is a latent model: its bits/dim would be those of the "
                       "latents, not of the images; bpd evaluates pixel-space models")
    if os.path.isdir(args.data):
        channels = _model_setting(model, "in_channels", 3)
        data = ImageFolder(args.data, mode="L" if channels == 1 else "RGB")
    elif args.data.endswith((".npy", ".npz")):
        data = _read_image_array(args.data)
    else:
        raise CLIError(f"{args.data!r} is neither an image folder nor a .npy / .npz image batch")
    variance = _variance_of(model, args)
    num_classes = _model_setting(model, "num_classes")
    if num_classes and args.class_label is None:
        raise CLIError(
            f"the model is class-conditional ({num_classes} classes): give the class of the "
            "images with --class-label (-1: the null class, if it was trained with label dropout)"
        )
    if args.class_label is not None:
        if not num_classes:
            raise CLIError("--class-label needs a class-conditional model")
        if not -1 <= args.class_label < num_classes:
            raise CLIError(
                f"--class-label must be in [-1, {num_classes - 1}]; got {args.class_label}"
            )
        model = _with_class_label(model, args.class_label)
    result = nll_bits_per_dim(
        model,
        schedule,
        data,
        variance=variance,
        prediction=args.prediction or "eps",
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        device=device,
        progress=not args.no_progress,
        generator=torch.Generator(device=device).manual_seed(args.seed),
    )
    print(f"bits/dim: {result.mean:.4f} +- {result.stderr:.4f}")
    print(f"samples: {result.num_samples}")
    print(f"prior L_T: {result.prior:.4f}  decoder L_0: {result.decoder:.4f}")
    for first_t, last_t, bits in result.breakdown(args.groups):
        print(f"terms t={first_t}..{last_t}: {bits:.4f}")
    _warn_small(
        "bpd",
        result.num_samples,
        "papers report bits/dim on the whole test set (10000 images for CIFAR-10)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``fid --checkpoint`` and ``bpd``: how the checkpoint's model runs."""
    parser.add_argument("--prediction", choices=("eps", "x0", "v"), default=None,
                        help="what the model predicts (default: as the run saved it, else eps)")
    parser.add_argument("--variance", default="auto",
                        choices=("auto", "fixed_small", "fixed_large", "learned", "learned_range"),
                        help="reverse variance; auto: as the run saved it, else learned_range "
                        "if the model learns sigma, else fixed_small")
    parser.add_argument("--schedule", choices=("linear", "cosine"), default=None,
                        help="noise schedule of a folder that records none (default: linear)")
    parser.add_argument("--timesteps", type=int, default=None,
                        help="T of a folder that records no schedule (default: 1000)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_threads_option(parser)


def _add_fid_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fid",
        help="Fréchet Inception Distance between image folders, .npz statistics or a model",
        description=(
            "FID between two image sets, each an image folder, a .npz of statistics (mu, sigma; "
            "pytorch-fid format) or a .npy/.npz uint8 image batch; or between --num-samples "
            "images generated from --checkpoint and a reference. Uses the TF FID InceptionV3: "
            "give its weights file (pt_inception-2015-12-05-6726825d.pth) with "
            "--inception-weights or DDPM_LIB_FID_WEIGHTS."
        ),
    )
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="image folders / .npz files (two; one with --checkpoint)")
    parser.add_argument("--checkpoint", default=None,
                        help="pretrained model directory to sample from")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="images to generate (with --checkpoint) or to read per side")
    parser.add_argument("--sampler", choices=("ddpm", "ddim", "dpm_solver"), default="ddim",
                        help="sampler for --checkpoint (default: ddim)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: T for ddpm, 50 ddim, 20 dpm_solver)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image size, when the model does not record it")
    parser.add_argument("--inception-weights", default=None,
                        help="path of pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--save-stats", default=None, metavar="OUT.npz",
                        help="only compute the statistics of PATH and save them")
    parser.add_argument("--kid", action="store_true", help="also report KID (keeps features)")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=0,
                        help="DataLoader workers reading image folders")
    _add_model_options(parser)
    parser.set_defaults(func=_run_fid)


def _add_bpd_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bpd",
        help="negative log-likelihood bound in bits/dim of a model on a dataset",
        description=(
            "The full variational bound (all T terms, the prior and the discrete decoder) of "
            "CHECKPOINT on DATA (an image folder or a .npy/.npz uint8 image batch) in bits/dim, "
            "with its standard error and a per-term breakdown."
        ),
    )
    parser.add_argument("checkpoint", help="pretrained model directory")
    parser.add_argument("data", help="image folder or .npy/.npz uint8 (N, H, W, C) batch")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--class-label", type=int, default=None,
                        help="class of every image, for a class-conditional model")
    parser.add_argument("--groups", type=int, default=4,
                        help="timestep ranges in the printed breakdown (default: 4)")
    _add_model_options(parser)
    parser.set_defaults(func=_run_bpd)


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

    The scale factor is fitted once and saved with the autoencoder in ``out``
    (``latent_diffusion.json``, ``autoencoder/``); a resumed run reuses both, and refuses an
    ``--autoencoder`` that differs from the one the run started with. The latents are cached in
    ``out/latents/``.
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
        latent = LatentDiffusion(autoencoder, saved.scale_factor)
    else:
        latent = LatentDiffusion(autoencoder)
        latent.fit_scale_factor(dataset, batch_size=options["batch_size"],
                                progress=not no_progress)
        latent.save_pretrained(out)
    print(f"ddpm-lib train: latent space of {options['autoencoder']} (f="
          f"{latent.downsampling_factor}, {latent.latent_channels} channels), scale factor "
          f"{latent.scale_factor:.5f}", file=sys.stderr)
    data = latent.encode_dataset(dataset, out / "latents", batch_size=options["batch_size"],
                                 progress=not no_progress)
    if data.from_cache:
        print(f"ddpm-lib train: latents read from {data.cache_path}", file=sys.stderr)
    return latent, data


def _load_pipeline(source: str, device: Any, *, use_ema: bool = True,
                   default_schedule: Any = None) -> Any:
    """The :class:`ddpm_lib.DiffusionPipeline` of any folder the library writes (the one loader
    of ``sample``, ``fid --checkpoint`` and ``bpd``); bad folders become one-line errors."""
    from ddpm_lib.pipeline import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(source, use_ema=use_ema, device=device,
                                                 default_schedule=default_schedule)
    except (ValueError, TypeError, KeyError) as error:
        raise CLIError(str(error)) from None


def _run_train_autoencoder(args: argparse.Namespace) -> None:
    with _OneLineWarnings("train-autoencoder"):
        _train_autoencoder(args)


def _reconstruction_psnr(autoencoder: Any, images: Any) -> float:
    """Mean PSNR in dB of ``decode(encode(x).mode())`` over images in ``[-1, 1]`` (peak 2)."""
    import torch

    from ddpm_lib.metrics import psnr

    with torch.no_grad():
        reconstructed = autoencoder.decode(autoencoder.encode(images).mode()).clamp(-1, 1)
    return float(psnr(reconstructed, images).mean())


def _train_autoencoder(args: argparse.Namespace) -> None:
    import math
    from pathlib import Path

    import torch

    from ddpm_lib.data import build_dataset, save_grid
    from ddpm_lib import AutoencoderKL, AutoencoderLoss
    from ddpm_lib.training import Trainer

    out = Path(args.out)
    dataset = build_dataset(args.data, image_size=args.image_size or 32, class_labels=False,
                            size=args.dataset_size, seed=args.seed)
    first = dataset[0]
    image = first[0] if isinstance(first, (tuple, list)) else first
    channel_mults = _int_list("channel_mults", args.channel_mults)
    torch.manual_seed(args.seed)
    autoencoder = AutoencoderKL(
        in_channels=image.shape[0], latent_channels=args.latent_channels,
        base_channels=args.base_channels, channel_mults=channel_mults,
        num_res_blocks=args.num_res_blocks, norm_groups=math.gcd(32, args.base_channels),
    )
    factor = 2 ** (len(channel_mults) - 1)
    loss_options: dict[str, Any] = {"kl_weight": args.kl_weight, "l2_weight": args.l2_weight}
    if args.adversarial_start is not None:
        loss_options.update(discriminator=True, adversarial_start=args.adversarial_start)
    loss_fn = AutoencoderLoss(**loss_options)
    trainer = Trainer(
        autoencoder, loss_fn, dataset, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision, out_dir=out, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, sample_every=None, seed=args.seed,
        num_workers=args.num_workers, random_flip=True, progress=not args.no_progress,
    )
    if trainer.dist.is_main:
        start = "resuming" if trainer.resumed_from else "starting"  # the Trainer says from where
        print(f"ddpm-lib train-autoencoder: {start}; {len(cast(Sized, dataset))} images "
              f"{'x'.join(map(str, image.shape))} -> latents {args.latent_channels}x"
              f"{image.shape[1] // factor}x{image.shape[2] // factor} (f={factor}), "
              f"{sum(p.numel() for p in autoencoder.parameters()) / 1e6:.2f}M parameters -> {out}",
              file=sys.stderr)
    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    trainer.train(args.steps, max_seconds=max_seconds)
    if trainer.dist.is_main:
        # held-out images: the same generator with another seed (or the first of the folder)
        held_out = (build_dataset("shapes", image_size=image.shape[1], size=16, seed=args.seed + 1)
                    if args.data == "shapes" else dataset)
        images = torch.stack([held_out[i][0] if isinstance(held_out[i], (tuple, list))
                              else held_out[i] for i in range(min(16, len(cast(Sized, held_out))))])
        model = cast(AutoencoderKL, trainer.ema_model).eval()
        images = images.to(next(model.parameters()).device)
        psnr = _reconstruction_psnr(model, images)
        with torch.no_grad():
            reconstructed = model.decode(model.encode(images).mode())
        pairs = torch.stack([images, reconstructed], 1).flatten(0, 1)  # original, reconstruction
        grid = save_grid(pairs, out / "reconstructions.png", nrow=8,
                         upscale=max(1, 64 // image.shape[1]))
        print(f"ddpm-lib train-autoencoder: done at step {trainer.step}; reconstruction PSNR "
              f"{psnr:.2f} dB on {len(images)} held-out images ({grid}: original, "
              f"reconstruction); EMA autoencoder {out / 'ema_model'} "
              f"(use: ddpm-lib train --autoencoder {out} ...)", file=sys.stderr)
        if not math.isfinite(psnr):
            raise CLIError("the reconstructions are not finite; lower --lr")


def _add_train_autoencoder_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train-autoencoder",
        help="train a KL autoencoder for latent diffusion (resumes by itself)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train an AutoencoderKL (Rombach et al. 2022) with AutoencoderLoss (L1 reconstruction,\n"
            "KL term, optional PatchGAN discriminator) on the built-in shapes or a folder of\n"
            "images. Checkpoints, log.jsonl and the final EMA autoencoder (OUT/ema_model) go to\n"
            "--out; at the end OUT/reconstructions.png shows held-out images beside their\n"
            "reconstructions and the PSNR is printed. Then train a latent diffusion model with\n"
            "ddpm-lib train --autoencoder OUT."
        ),
        epilog=(
            "example:\n"
            "  ddpm-lib train-autoencoder --out runs/ae --image-size 32 --channel-mults 1,2,2 \\\n"
            "      --steps 4000 && ddpm-lib train --autoencoder runs/ae --out runs/ldm \\\n"
            "      --class-conditional --base-channels 64 --channel-mults 1,2 --steps 20000"
        ),
    )
    parser.add_argument("--data", default="shapes", metavar="SOURCE",
                        help="'shapes' (built in) or a folder of images (default: shapes)")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="resize and center-crop to this size (shapes: default 32)")
    parser.add_argument("--dataset-size", type=int, default=10_000, metavar="N",
                        help="number of built-in shapes images (default: 10000)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--steps", type=int, default=20_000, help="optimizer steps (default: 20000)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop earlier after this long (a checkpoint is written)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default: 2e-4)")
    parser.add_argument("--warmup-steps", type=int, default=500,
                        help="linear learning-rate warm-up (default: 500)")
    parser.add_argument("--grad-clip", type=float, default=1.0,
                        help="gradient norm clipping, 0 for none (default: 1)")
    parser.add_argument("--ema-decay", type=float, default=0.999,
                        help="EMA decay of the saved weights (default: 0.999)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--latent-channels", type=int, default=4,
                        help="channels of the latents (default: 4)")
    parser.add_argument("--base-channels", type=int, default=64, help="width (default: 64)")
    parser.add_argument("--channel-mults", default="1,2,2", metavar="LIST",
                        help="width multiplier per resolution; f = 2^(len - 1) (default: 1,2,2: f=4)")
    parser.add_argument("--num-res-blocks", type=int, default=1,
                        help="residual blocks per resolution (default: 1)")
    parser.add_argument("--kl-weight", type=float, default=1e-6,
                        help="weight of the KL term (default: 1e-6, LDM's KL-f4/f8)")
    parser.add_argument("--l2-weight", type=float, default=0.0,
                        help="weight of an extra mean squared error term (default: 0, L1 only)")
    parser.add_argument("--adversarial-start", type=int, default=None, metavar="STEP",
                        help="add a PatchGAN discriminator, switched on after this step "
                        "(LDM: 50001; default: no discriminator)")
    parser.add_argument("--log-every", type=int, default=100, help="steps between log lines")
    parser.add_argument("--checkpoint-every", type=int, default=1000,
                        help="steps between checkpoints (default: 1000)")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N",
                        help="data loading processes (default: 0 on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_threads_option(parser)
    parser.set_defaults(func=_run_train_autoencoder)


_SUBCOMMANDS: list = [
    _add_train_parser,
    _add_sample_parser,
    _add_fid_parser,
    _add_bpd_parser,
    _add_train_autoencoder_parser,
]


if __name__ == "__main__":
    sys.exit(main())
