"""``ddpm-lib sample`` on a cascade: a cascade folder (``cascade.json``), or a base model
followed by ``--stage`` super-resolution folders (``--save-cascade DIR`` writes them as one
cascade folder). Each stage samples with its saved sampler, steps, guidance scale and noise
augmentation; ``--noise-level S`` overrides the upsamplers' augmentation level and
``--guidance-scale`` the guidance of every conditional stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._common import CLIError, device_of

__all__ = ["is_cascade", "run"]


def is_cascade(args: argparse.Namespace) -> bool:
    """Whether ``sample`` was asked for a cascade (a cascade folder or ``--stage``)."""
    from ddpm_lib.cascade import CASCADE_FILE

    return bool(args.stage) or (Path(args.source) / CASCADE_FILE).is_file()


def _cascade(args: argparse.Namespace, device: Any) -> Any:
    from ddpm_lib.cascade import CASCADE_FILE, Cascade, CascadeStage

    for folder in [args.source, *(args.stage or [])]:
        if not Path(folder).exists():
            raise FileNotFoundError(f"{folder!r} does not exist")
    if (Path(args.source) / CASCADE_FILE).is_file():
        if args.stage:
            raise CLIError(f"{args.source} is a cascade already; --stage adds stages to a base "
                           "model folder")
        cascade = Cascade.from_pretrained(args.source, device=device)
    else:
        stages = [CascadeStage(args.source)]
        stages += [CascadeStage(folder) for folder in args.stage]
        cascade = Cascade(stages).to(device)
    for stage in cascade.stages:
        if args.noise_level is not None and stage.augmentation is not None:
            stage.augmentation = stage.augmentation.with_sample_level(args.noise_level)
        if args.guidance_scale is not None and (stage.pipeline.is_text_model
                                                or stage.pipeline.num_classes is not None):
            stage.guidance_scale = args.guidance_scale
    return cascade


def run(args: argparse.Namespace) -> None:
    """Sample ``--num`` images (of each ``--prompt``) through the cascade and write them."""
    import torch

    from .sample import _write

    if args.inpaint is not None:
        raise CLIError("--inpaint is for one model, not a cascade")
    device = device_of(args.device)
    cascade = _cascade(args, device)
    if args.save_cascade is not None:
        cascade.save_pretrained(args.save_cascade)
        print(f"ddpm-lib sample: cascade saved to {args.save_cascade}", file=sys.stderr)
    text = any(stage.pipeline.is_text_model for stage in cascade.stages)
    if text and not args.prompt:
        raise CLIError("this cascade reads prompts: give --prompt \"...\"")
    prompts = [p for p in args.prompt for _ in range(args.num)] if text else None
    total = len(prompts) if prompts is not None else args.num
    generator = torch.Generator(device).manual_seed(args.seed)
    images = []
    for start in range(0, total, args.batch_size):
        count = min(args.batch_size, total - start)
        batch = cascade.sample(
            count, prompts=None if prompts is None else prompts[start:start + count],
            negative_prompts=None if prompts is None or args.negative_prompt is None
            else [args.negative_prompt] * count,
            labels=None if args.label is None else torch.full((count,), args.label),
            generator=generator, progress=not args.no_progress)
        images.append(batch.float().cpu())
    args.num = total
    written = _write(args, torch.cat(images), None, None, prompts)
    print(f"ddpm-lib sample: {total} samples from {cascade!r} -> {', '.join(written)}",
          file=sys.stderr)
