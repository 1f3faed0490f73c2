"""Benchmark: a Stable Diffusion 1.x-shaped model, ours against diffusers'.

The network is SD 1.x's UNet (four levels, two residual blocks each, transformer blocks with 8
heads at the first three levels and in the middle, 1x1 projections, cross-attention to 77 text
tokens of width 768) at ``--width`` channels instead of 320 (``(w, 2w, 4w, 4w)``) and
``--latent-size`` latents, with random weights; diffusers builds it as a
``UNet2DConditionModel`` and ddpm_lib converts it (:func:`ddpm_lib.unet_from_diffusers`).

Part 1, the UNet: one forward pass (inference) at batch ``2 * --batch`` (classifier-free
guidance doubles the batch), medians of interleaved repetitions as wall-clock and process CPU
time, and the peak memory of one pass (CPU allocator, ``torch.profiler``, see
``bench_unet.peak_step_memory``; on CUDA ``torch.cuda.max_memory_allocated`` above the level
before the pass). Ours runs eagerly on the CPU; on CUDA with ``--compile``, through
``torch.compile`` too.

Part 2, a whole generation: the folder of a ``StableDiffusionPipeline`` with that UNet, a
reduced SD VAE (f = 8) and a 2-layer CLIP text model of width 768 is written to a temporary
folder; diffusers' pipeline and ``DiffusionPipeline.from_diffusers`` each generate ``--batch``
images from the same prompt, negative prompt, ``x_T`` and ``--steps`` DPM-Solver++ steps
(guidance 7.5), text encoding and decoding included. The largest difference of their latents
is printed beside the times (the two compute the same thing). On CUDA, ours samples with
``compile="auto"`` (the compiled loop).

Usage::

    python benchmarks/bench_stable_diffusion.py --threads 1
    python benchmarks/bench_stable_diffusion.py --device cuda --width 320 --latent-size 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from _sd_helpers import stable_diffusion_folder  # noqa: E402
from bench_unet import interleaved_times, peak_step_memory  # noqa: E402

from ddpm_lib import DiffusionPipeline, unet_from_diffusers  # noqa: E402

PROMPT = "a red cube on a blue ball"
CONTEXT_DIM, TOKENS = 768, 77


def sd1_unet_config(width: int, latent_size: int) -> dict[str, Any]:
    """SD 1.x's ``UNet2DConditionModel`` config with ``width`` base channels."""
    return {
        "sample_size": latent_size, "in_channels": 4, "out_channels": 4,
        "block_out_channels": (width, 2 * width, 4 * width, 4 * width), "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": CONTEXT_DIM, "attention_head_dim": 8, "norm_num_groups": 32,
    }


def peak_memory(step: Callable[[], Any], device: torch.device) -> int:
    if device.type != "cuda":
        return peak_step_memory(step)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def synced(step: Callable[[], Any], device: torch.device) -> Callable[[], None]:
    def run() -> None:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def report(title: str, times: dict, cpu: dict, memory: dict[str, int] | None = None) -> None:
    print(f"\n{title}")
    print(f"{'':<12}{'ours':>12}{'diffusers':>12}{'ours/diff':>11}")
    rows = [("wall ms", {k: 1e3 * statistics.median(v) for k, v in times.items()}),
            ("CPU ms", {k: 1e3 * statistics.median(v) for k, v in cpu.items()})]
    if memory is not None:
        rows.append(("peak MiB", {k: v / 2**20 for k, v in memory.items()}))
    for name, values in rows:
        a, b = values["ours"], values["diffusers"]
        print(f"{name:<12}{a:>12.1f}{b:>12.1f}{a / b:>11.3f}")


def bench_unet(args: argparse.Namespace, device: torch.device) -> None:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    theirs = UNet2DConditionModel(**sd1_unet_config(args.width, args.latent_size))
    theirs = theirs.to(device).eval()
    ours = unet_from_diffusers(theirs).eval()
    batch = 2 * args.batch
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, args.latent_size, args.latent_size, generator=generator).to(device)
    context = torch.randn(batch, TOKENS, CONTEXT_DIM, generator=generator).to(device)
    t = torch.full((batch,), 500, device=device)
    forward_ours: Callable[..., Any] = ours
    if args.compile and device.type == "cuda":
        forward_ours = torch.compile(ours)
    with torch.no_grad():
        difference = (forward_ours(x, t, context=context)
                      - theirs(x, t, encoder_hidden_states=context).sample).abs().max()
        tasks = {
            "ours": synced(lambda: forward_ours(x, t, context=context), device),
            "diffusers": synced(lambda: theirs(x, t, encoder_hidden_states=context), device),
        }
        times, cpu = interleaved_times(tasks, args.warmup, args.repeats)
        memory = {key: int(statistics.median(peak_memory(task, device) for _ in range(3)))
                  for key, task in tasks.items()}
    parameters = sum(p.numel() for p in ours.parameters())
    report(f"UNet forward, batch {batch}, latents {args.latent_size}x{args.latent_size}, "
           f"width {args.width} ({parameters / 1e6:.1f}M parameters; largest output "
           f"difference {float(difference):.2e})", times, cpu, memory)


def bench_generation(args: argparse.Namespace, device: torch.device) -> None:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = stable_diffusion_folder(
            Path(tmp) / "sd", unet=sd1_unet_config(args.width, args.latent_size),
            vae_channels=(32, 64, 128, 128), context_dim=CONTEXT_DIM, max_length=TOKENS)
        reference: Any = StableDiffusionPipeline.from_pretrained(
            folder, local_files_only=True, safety_checker=None, requires_safety_checker=False)
        reference.scheduler = DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
        reference.set_progress_bar_config(disable=True)
        reference.to(device)
        pipe = DiffusionPipeline.from_diffusers(folder, scheduler=reference.scheduler,
                                                device=device)
    size = args.latent_size
    x_T = torch.randn(args.batch, 4, size, size, generator=torch.Generator().manual_seed(0))
    x_T = x_T.to(device)
    prompts, negative = [PROMPT] * args.batch, ["blurry"] * args.batch
    compile_mode = "auto" if args.compile else False
    sampler = pipe.make_sampler(num_steps=args.steps)
    outputs: dict[str, torch.Tensor] = {}

    def ours() -> None:
        _images, outputs["ours"] = pipe.sample(
            prompts=prompts, negative_prompts=negative, guidance_scale=7.5, sampler=sampler,
            x_T=x_T, compile=compile_mode, return_latents=True)

    def theirs() -> None:
        outputs["diffusers"] = reference(
            prompts, negative_prompt=negative, num_inference_steps=args.steps,
            guidance_scale=7.5, latents=x_T.clone(), output_type="latent").images
        reference.vae.decode(outputs["diffusers"] / reference.vae.config.scaling_factor)

    with torch.no_grad():
        tasks = {"ours": synced(ours, device), "diffusers": synced(theirs, device)}
        start = time.perf_counter()
        times, cpu = interleaved_times(tasks, 1, args.generation_repeats)
        memory = None
        if not args.no_generation_memory:
            memory = {key: peak_memory(task, device) for key, task in tasks.items()}
    difference = (outputs["ours"] - outputs["diffusers"]).abs().max()
    report(f"whole generation: {args.batch} image(s) of {8 * size}x{8 * size}, {args.steps} "
           f"DPM-Solver++ steps, guidance 7.5, text encoding and decoding included (largest "
           f"latent difference {float(difference):.2e}; {time.perf_counter() - start:.0f} s)",
           times, cpu, memory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64, help="base channels (SD: 320)")
    parser.add_argument("--latent-size", type=int, default=32, help="latent side (SD: 64)")
    parser.add_argument("--batch", type=int, default=1, help="images (the UNet sees twice)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7, help="timed UNet forward passes")
    parser.add_argument("--generation-repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true",
                        help="on CUDA: our UNet through torch.compile, our loop compiled")
    parser.add_argument("--no-generation-memory", action="store_true",
                        help="skip the profiled generation (slow on the CPU)")
    parser.add_argument("--part", choices=["unet", "generation", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {device}")
    if args.part in ("unet", "both"):
        bench_unet(args, device)
    if args.part in ("generation", "both"):
        bench_generation(args, device)


if __name__ == "__main__":
    main()
