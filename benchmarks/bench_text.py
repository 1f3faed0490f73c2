"""Benchmark: text-to-image (GLIDE-style text conditioning).

Part (b), ``--part b``: forward+backward time and peak memory of ddpm_lib's text-conditioned
UNet against diffusers' ``UNet2DConditionModel`` with the same levels, widths, residual blocks,
attention placement (text attention at 16x16, 8x8 and in the middle), heads, batch and text
length, for both ways the text can enter:

* ``cross``: ours ``UNet(text_attention="cross")`` (self-attention, then a separate
  cross-attention layer, Latent Diffusion) against diffusers' ``CrossAttnDownBlock2D`` /
  ``CrossAttnUpBlock2D`` / ``UNetMidBlock2DCrossAttn`` (a ``Transformer2DModel``: self-attention,
  cross-attention and a GEGLU feed-forward layer, Stable Diffusion's block: diffusers has no
  cross-attention block without the feed-forward layer, so it does more work per position);
* ``joint``: ours ``UNet(text_attention="joint")`` (text keys/values concatenated to the
  self-attention's, GLIDE) against diffusers' ``SimpleCrossAttnDownBlock2D`` /
  ``SimpleCrossAttnUpBlock2D`` / ``UNetMidBlock2DSimpleCrossAttn`` (``AttnAddedKVProcessor2_0``,
  the same joint attention, as in unCLIP; its resampling layers are residual blocks, heavier
  than our convolutions).

Both sides get the pooled text added to the time embedding (ours: a linear layer; diffusers:
``class_embed_type="projection"``), a padding mask, dropout 0.1 and the same inputs. The
text encoder is not timed (diffusers' UNet has none): ``context`` is given precomputed.
Repetitions of all models are interleaved (alternating order) so that load from other
processes hits every side alike; time is reported as wall-clock and as CPU time of the
process. Peak memory is the peak of the CPU allocator's bytes during one step above the
level before it (``peak_step_memory`` of ``bench_unet.py``); with ``--device cuda``, the
step's ``torch.cuda.max_memory_allocated`` above the memory allocated before it, and times are
taken after ``torch.cuda.synchronize()``.

Part (a), ``--part a``: prompt accuracy of the model trained by ``examples/text_to_image.py``
(read from its run folder, ``--run``) at guidance scales 0, 1, 2, 3, 5 and 7.5, next to the
shuffled-prompt baseline (chance level) and the accuracy on the held-out combinations.

Usage::

    python benchmarks/bench_text.py --part a --threads 2
    python benchmarks/bench_text.py --part b --threads 2 --batch 4 --repeats 7
    python benchmarks/bench_text.py --part b --device cuda --batch 64 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_unet import peak_step_memory  # noqa: E402

from ddpm_lib import UNet  # noqa: E402

# the network of part (b): three levels at 32, 16 and 8 pixels, text attention at 16 and 8
IMAGE_SIZE = 32
CHANNELS = (64, 128, 128)
LAYERS = 2
HEADS = 4
CONTEXT_DIM = 256
CONTEXT_LENGTH = 66  # TextEncoder(max_length=64): 64 bytes + begin + end
REAL_TOKENS = 30  # the rest is padding


def ours_unet(text_attention: str) -> torch.nn.Module:
    """ddpm_lib's text-conditioned UNet of part (b)."""
    return UNet(
        in_channels=3, base_channels=CHANNELS[0], channel_mults=tuple(c // CHANNELS[0]
                                                                     for c in CHANNELS),
        num_res_blocks=LAYERS, attention_resolutions=(16, 8), image_size=IMAGE_SIZE,
        dropout=0.1, num_heads=HEADS, context_dim=CONTEXT_DIM, text_attention=text_attention,
    )


def diffusers_unet(text_attention: str) -> torch.nn.Module:
    """diffusers' ``UNet2DConditionModel`` with the same layout (see the module docstring)."""
    from diffusers import UNet2DConditionModel

    if text_attention == "cross":
        blocks = dict(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn",
            attention_head_dim=HEADS,  # diffusers reads it as the number of heads here
        )
    else:
        blocks = dict(
            down_block_types=("DownBlock2D", "SimpleCrossAttnDownBlock2D",
                              "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                            "UpBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            attention_head_dim=CHANNELS[-1] // HEADS,  # channels per head here
        )
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE, in_channels=3, out_channels=3, block_out_channels=CHANNELS,
        layers_per_block=LAYERS, cross_attention_dim=CONTEXT_DIM, class_embed_type="projection",
        projection_class_embeddings_input_dim=CONTEXT_DIM, dropout=0.1, **blocks,
    )


def part_b(args: argparse.Namespace) -> None:
    """Forward+backward time and peak memory: ours against diffusers, cross and joint."""
    generator = torch.Generator().manual_seed(0)
    batch, device = args.batch, torch.device(args.device)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device)
    t = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    context = torch.randn(batch, CONTEXT_LENGTH, CONTEXT_DIM, generator=generator).to(device)
    mask = torch.zeros(batch, CONTEXT_LENGTH, dtype=torch.bool, device=device)
    mask[:, :REAL_TOKENS] = True
    pooled = torch.randn(batch, CONTEXT_DIM, generator=generator).to(device)
    cuda = device.type == "cuda"

    torch.manual_seed(0)
    models = {}
    for variant in ("cross", "joint"):
        models[f"ours-{variant}"] = ours_unet(variant).to(device).train()
        models[f"diffusers-{variant}"] = diffusers_unet(variant).to(device).train()

    def step(name: str, model: torch.nn.Module) -> Callable[[], None]:
        if name.startswith("ours"):
            def call() -> torch.Tensor:
                return model(x, t, context=context, context_mask=mask, context_pooled=pooled)
        else:
            def call() -> torch.Tensor:
                return model(x, t, encoder_hidden_states=context, encoder_attention_mask=mask,
                             class_labels=pooled).sample

        def run() -> None:
            call().square().mean().backward()
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
        return run

    def peak_memory(run: Callable[[], None]) -> int:
        if not cuda:
            return peak_step_memory(run)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() - before

    tasks = {name: step(name, model) for name, model in models.items()}
    where = torch.cuda.get_device_name() if cuda else f"CPU, threads {torch.get_num_threads()}"
    print(f"part (b): torch {torch.__version__}, {where}, batch {batch}, "
          f"{IMAGE_SIZE}x{IMAGE_SIZE}, channels {CHANNELS}, {LAYERS} blocks per level, "
          f"{HEADS} heads, text {CONTEXT_LENGTH} tokens x {CONTEXT_DIM} ({REAL_TOKENS} real)")
    for name, model in models.items():
        print(f"  {name:16s} {sum(p.numel() for p in model.parameters()):>12,} parameters")

    times: dict[str, list[float]] = {name: [] for name in tasks}
    cpu_times: dict[str, list[float]] = {name: [] for name in tasks}
    order = list(tasks)
    for rep in range(args.warmup + args.repeats):
        for name in order if rep % 2 == 0 else order[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            tasks[name]()
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    memory = {name: statistics.median(peak_memory(tasks[name]) for _ in range(2))
              for name in tasks}

    def ms(name: str, table: dict[str, list[float]]) -> float:
        return 1e3 * statistics.median(table[name])

    print(f"\nforward+backward, medians of {args.repeats} interleaved repetitions")
    print(f"{'':18s}{'wall ms':>10s}{'CPU ms':>10s}{'peak MiB':>10s}")
    for name in tasks:
        print(f"{name:18s}{ms(name, times):10.1f}{ms(name, cpu_times):10.1f}"
              f"{memory[name] / 2**20:10.1f}")
    print("\nratios (below 1: ours is faster / smaller)")
    pairs = [("ours-cross", "diffusers-cross"), ("ours-joint", "diffusers-joint"),
             ("ours-joint", "ours-cross")]
    for a, b in pairs:
        wall = ms(a, times) / ms(b, times)
        cpu = ms(a, cpu_times) / ms(b, cpu_times)
        print(f"  {a + ' / ' + b:34s} time {wall:.3f}x (CPU {cpu:.3f}x)   "
              f"peak memory {memory[a] / memory[b]:.3f}x")


def part_a(args: argparse.Namespace) -> None:
    """Prompt accuracy of the example's trained model against the guidance scale.

    The model is the EMA weights of ``examples/text_to_image.py``'s run folder (``--run``).
    Every (kind, colour, background) combination of the example is prompted once in English
    and once in Chinese; each sample is read back by the attribute detector and counts when
    kind, shape colour and background all match. The shuffled-prompt baseline scores the same
    samples against another prompt's attributes: the chance level of a model that ignores the
    text. The example's held-out combinations are also scored alone.
    """
    import sys
    from pathlib import Path

    from ddpm_lib import DDPMSampler
    from ddpm_lib.metrics import evaluate_prompt_accuracy, prompt_accuracy
    from ddpm_lib.training.checkpoint import load_trained_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from text_to_image import HOLDOUT, evaluation_attributes

    run = Path(args.run)
    if not run.exists():
        raise SystemExit(f"part (a): {run} not found; run python examples/text_to_image.py first")
    loaded = load_trained_model(run, device="cpu")
    model = loaded.model.eval()
    image_size = model.unet.config["image_size"]
    attributes = evaluation_attributes()
    languages = ["en"] * len(attributes) + ["zh"] * len(attributes)
    attributes = attributes + attributes
    held = [i for i, a in enumerate(attributes)
            if any(all(a.get(k) == v for k, v in rule.items()) for rule in HOLDOUT)]
    sampler = DDPMSampler(loaded.schedule, num_steps=args.sample_steps,
                          prediction=loaded.prediction)
    print(f"part (a): {loaded.source}, {len(attributes)} prompts (English and Chinese), "
          f"DDPM {args.sample_steps} steps, seed {args.seed}")
    print(f"{'guidance':>8}  {'accuracy':>8}  {'held-out':>8}  {'shuffled':>8}  per attribute")
    for scale in args.guidance_scales:
        evaluation = evaluate_prompt_accuracy(
            model, sampler, attributes, image_size,
            guidance_scale=None if scale == 1 else scale, languages=languages,
            generator=torch.Generator().manual_seed(args.seed),
        )
        held_accuracy = prompt_accuracy(evaluation.images[held], [attributes[i] for i in held])
        per = " ".join(f"{k} {v:.2f}" for k, v in evaluation.per_attribute.items())
        print(f"{scale:>8g}  {evaluation.accuracy:>8.3f}  {held_accuracy:>8.3f}  "
              f"{evaluation.shuffled_accuracy:>8.3f}  {per}")


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {"a": part_a, "b": part_b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--run", default="runs/text_to_image",
                        help="part (a): the run folder of examples/text_to_image.py")
    parser.add_argument("--guidance-scales", type=float, nargs="+",
                        default=[0.0, 1.0, 2.0, 3.0, 5.0, 7.5], help="part (a): guidance scales")
    parser.add_argument("--sample-steps", type=int, default=50, help="part (a): DDPM steps")
    parser.add_argument("--seed", type=int, default=0, help="part (a): seed of the noise")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            part(args)


if __name__ == "__main__":
    main()
