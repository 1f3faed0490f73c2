"""``ddpm-lib sample``: draw images from a trained model into a PNG grid and/or an ``.npz``.

The model is read by the one loader (:func:`ddpm_lib.cli._common.load_pipeline`), the sampler
built by the one builder shared with ``fid`` (:func:`ddpm_lib.cli._common.build_sampler`), and
the conditions (labels, prompts) of each batch asked of :mod:`ddpm_lib.conditioning`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import (
    CLIError,
    add_sampler_options,
    add_threads_option,
    build_sampler,
    device_of,
    load_pipeline,
    warn,
)


def run(args: argparse.Namespace) -> None:
    """Draw ``--num`` samples (of each ``--prompt``) and write them."""
    import torch

    if args.out is None and args.npz is None:
        args.out = "samples.png"
    from . import sample_cascade

    if sample_cascade.is_cascade(args):  # a base and super-resolution stages
        sample_cascade.run(args)
        return
    device = device_of(args.device)
    pipe = load_pipeline(args.source, device, use_ema=not args.no_ema)
    sampler = build_sampler(args, pipe)
    labels, prompts = _conditions(args, pipe)
    generator = torch.Generator(device).manual_seed(args.seed)
    image_shape = pipe.sample_shape
    inpaint = _inpaint_inputs(args, image_shape, device)
    images = []
    for start in range(0, args.num, args.batch_size):
        count = min(args.batch_size, args.num - start)
        options = _batch_options(args, pipe, count, device,
                                 labels=None if labels is None else labels[start:start + count],
                                 prompts=None if prompts is None else prompts[start:start + count])
        if inpaint is not None:  # RePaint: the known part of --inpaint where --mask is white
            batch = sampler.inpaint(pipe.model, inpaint[0].expand(count, *image_shape),
                                    inpaint[1], resample=args.resample,
                                    jump_length=args.jump_length, generator=generator, **options)
        else:
            batch = sampler.sample(pipe.model, (count, *image_shape), generator=generator,
                                   **options)
        assert isinstance(batch, torch.Tensor)  # no trajectory was asked for
        if pipe.latent is not None:
            batch = pipe.latent.decode(batch)
        images.append(batch.float().cpu())
    written = _write(args, torch.cat(images), labels, pipe.num_classes, prompts)
    print(f"ddpm-lib sample: {args.num} samples from {pipe.source} -> {', '.join(written)}",
          file=sys.stderr)


def _conditions(args: argparse.Namespace, pipe: Any) -> tuple[Any, list[str] | None]:
    """``(labels (N,) or None, prompts or None)`` of the ``--num`` samples; for a text model
    ``--num`` becomes the number of samples of all prompts (prompt after prompt)."""
    import torch

    num_classes = pipe.num_classes
    if args.label is not None and num_classes is None:
        raise CLIError("--class needs a class-conditional model; this one is unconditional")
    if args.label is not None and num_classes is not None and not 0 <= args.label < num_classes:
        raise CLIError(f"--class must be in [0, {num_classes - 1}]; got {args.label}")
    text = pipe.is_text_model
    if text and not args.prompt:
        raise CLIError(f"{args.source} is a text-to-image model: give --prompt \"...\"")
    if not text and (args.prompt or args.negative_prompt is not None):
        raise CLIError("--prompt / --negative-prompt need a text-to-image model; this one has no "
                       "text encoder")
    if args.guidance_scale is not None and num_classes is None and not text:
        raise CLIError("--guidance-scale needs a class-conditional model; this one is unconditional")
    labels = None
    if num_classes is not None:
        labels = (torch.full((args.num,), args.label) if args.label is not None
                  else torch.arange(args.num) % num_classes)
    if not text:
        return labels, None
    prompts = [prompt for prompt in args.prompt for _ in range(args.num)]  # one grid row each
    args.num = len(prompts)
    return labels, prompts


def _batch_options(args: argparse.Namespace, pipe: Any, count: int, device: Any, *,
                   labels: Any, prompts: list[str] | None) -> dict[str, Any]:
    """The keyword arguments of ``sampler.sample`` for one batch: its conditions and their
    unconditional half for guidance (:func:`ddpm_lib.conditioning.guidance_inputs`)."""
    from ddpm_lib.conditioning import guidance_inputs

    negative = None
    if prompts is not None and args.negative_prompt is not None:
        negative = [args.negative_prompt] * count
    model_kwargs, unconditional, _ = guidance_inputs(
        pipe.model, count, labels=labels, prompts=prompts, negative_prompts=negative,
        guidance_scale=args.guidance_scale, device=device,
    )
    options: dict[str, Any] = {"model_kwargs": model_kwargs,
                               "guidance_scale": args.guidance_scale,
                               "progress": not args.no_progress}
    if unconditional:
        options["unconditional_kwargs"] = unconditional
    if args.guidance_rescale:
        options["guidance_rescale"] = args.guidance_rescale
    return options


def _write(args: argparse.Namespace, samples: Any, labels: Any, num_classes: int | None,
           prompts: list[str] | None) -> list[str]:
    """Write the grid (``--out``) and the arrays (``--npz``); returns what was written."""
    from ddpm_lib import _io
    from ddpm_lib.data import save_grid, tensor_to_uint8

    written = []
    if args.out is not None:
        nrow = args.nrow or (
            len(prompts) // len(args.prompt) if prompts is not None
            else num_classes if num_classes and num_classes <= 16 and args.label is None
            else max(1, round(args.num ** 0.5)))
        written.append(str(save_grid(samples, args.out, nrow=nrow, upscale=args.upscale)))
    if args.npz is not None:
        uint8 = tensor_to_uint8(samples).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        arrays = {"arr_0": uint8} if labels is None else {"arr_0": uint8,
                                                          "arr_1": labels.numpy()}
        _io.save_npz(args.npz, arrays)
        written.append(args.npz)
    return written


def _inpaint_inputs(args: argparse.Namespace, image_shape: tuple[int, ...], device: Any) -> Any:
    """``(image (1, C, H, W), mask (1, 1, H, W))`` from ``--inpaint`` / ``--mask``, or ``None``.

    The mask must have the image's size (it is never stretched onto it); both are then resized
    to the model's size. The mask is read as grayscale, white (>= 128) = keep.
    """
    if args.inpaint is None:  # validate() checked that --mask comes with --inpaint
        return None
    from PIL import Image

    from ddpm_lib.data import image_to_tensor

    channels, height, width = image_shape
    pictures = []
    for option, path in (("--inpaint", args.inpaint), ("--mask", args.mask)):
        try:
            with Image.open(path) as opened:
                pictures.append(opened.convert("RGB" if option == "--inpaint" else "L"))
        except (OSError, ValueError) as error:
            raise CLIError(f"{option}: cannot read an image from {path!r} ({error})") from None
    if pictures[0].size != pictures[1].size:  # a mask is never stretched onto another image
        (iw, ih), (mw, mh) = pictures[0].size, pictures[1].size
        raise CLIError(f"--mask {args.mask!r} is {mw}x{mh} pixels but --inpaint "
                       f"{args.inpaint!r} is {iw}x{ih}: they must be the same size")
    tensors = []
    for picture, kind, count in ((pictures[0], Image.Resampling.BICUBIC, channels),
                                 (pictures[1], Image.Resampling.NEAREST, 1)):
        if picture.size != (width, height):  # both to the model's size, together
            picture = picture.resize((width, height), kind)
        tensors.append(image_to_tensor(picture, count))
    image, mask = tensors[0][None].to(device), (tensors[1][None] > 0).float().to(device)
    if not 0.0 < float(mask.mean()) < 1.0:
        warn("sample", "--mask keeps every pixel or none")
    return image, mask


def add_parser(subparsers: Any) -> None:
    """Register ``sample`` and its options."""
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
            "  ddpm-lib sample runs/base --stage runs/sr --save-cascade cascade --out c.png\n"
            "  ddpm-lib sample cascade --noise-level 100 --out c.png\n"
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
    add_sampler_options(parser)
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
    add_threads_option(parser)
    cascade = parser.add_argument_group("cascades (a base model and super-resolution stages)")
    cascade.add_argument("--stage", action="append", default=None, metavar="DIR",
                         help="a super-resolution stage after MODEL (a train --super-resolution "
                         "--out or ema_model folder); repeat for more; MODEL may also be a "
                         "cascade folder (cascade.json)")
    cascade.add_argument("--noise-level", type=int, default=None, metavar="S",
                         help="sample the stages' low-res conditions at augmentation level S "
                         "(default: each stage's saved level)")
    cascade.add_argument("--save-cascade", default=None, metavar="DIR",
                         help="also write MODEL and its --stage folders as one cascade folder")
    inpaint = parser.add_argument_group("inpainting (RePaint)")
    inpaint.add_argument("--inpaint", default=None, metavar="IMAGE",
                         help="fill in IMAGE where --mask is black (resized to the model's size)")
    inpaint.add_argument("--mask", default=None, metavar="MASK",
                         help="grayscale image: white = keep the pixel of IMAGE, black = generate")
    inpaint.add_argument("--resample", type=int, default=1, metavar="R",
                         help="RePaint resamplings per jump (default: 1, plain replacement)")
    inpaint.add_argument("--jump-length", type=int, default=1, metavar="J",
                         help="steps gone back up at each RePaint jump (default: 1)")
    parser.set_defaults(func=run)

