"""A tiny random-weight Stable Diffusion pipeline of diffusers, written to a folder: the
reference of ``test_stable_diffusion.py`` and the input of ``benchmarks/bench_stable_diffusion.py``
(nothing is downloaded: the CLIP tokenizer's vocabulary is written here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

#: words given their own BPE merges (any other word is spelt letter by letter)
WORDS = ("red", "blue", "cube", "ball")


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE (GPT-2, CLIP) writes the bytes as."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    symbols, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            symbols.append(256 + extra)
            extra += 1
    return [chr(code) for code in symbols]


def clip_tokenizer(folder: Path, max_length: int = 12) -> Any:
    """A CLIP tokenizer of the bytes (each alone and word-final), the merges of :data:`WORDS`
    and the start / end tokens."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = []
    for word in WORDS:  # merge left to right: r e -> re, re d</w> -> red</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            tokens.append(pieces[0])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=max_length)


def chinese_clip_text(folder: Path, context_dim: int, max_length: int = 12) -> tuple[Any, Any]:
    """A random-weight Chinese-CLIP text model (BERT-like) and a BERT tokenizer of a few
    characters (the text encoder the seed report recommends for Chinese models)."""
    from transformers import BertTokenizer, ChineseCLIPTextConfig, ChineseCLIPTextModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"一个红色蓝的立方体球上", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), model_max_length=max_length)
    config = ChineseCLIPTextConfig(
        vocab_size=len(vocab), hidden_size=context_dim, intermediate_size=4 * context_dim,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max(16, max_length),
        pad_token_id=0)
    return ChineseCLIPTextModel(config).eval(), tokenizer


def unet_kwargs(sd2: bool, width: int = 32, context_dim: int = 32) -> dict[str, Any]:
    """A two-level ``UNet2DConditionModel``: SD 1.x heads (the same count at every level, 1x1
    projections) or SD 2.x (the same head size, linear projections)."""
    kwargs: dict[str, Any] = {
        "sample_size": 8, "in_channels": 4, "out_channels": 4,
        "block_out_channels": (width, 2 * width), "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": context_dim,
        "norm_num_groups": 8,
    }
    if sd2:
        kwargs.update(attention_head_dim=(2, 4), use_linear_projection=True)
    else:
        kwargs.update(attention_head_dim=2)
    return kwargs


def perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add seeded noise to every parameter (so that no layer sits at a special value)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module


def stable_diffusion_folder(
    folder: Path, *, v_prediction: bool = False, context_dim: int = 32,
    unet: dict[str, Any] | None = None, vae_channels: tuple[int, ...] = (16, 32),
    text_layers: int = 2, max_length: int = 12, chinese: bool = False,
) -> Path:
    """Write a random-weight ``StableDiffusionPipeline`` (SD 1.x layout with a
    ``PNDMScheduler``, or with ``v_prediction`` SD 2.x's layout with a v-predicting
    ``DDIMScheduler``) into ``folder``: by default tiny (:func:`unet_kwargs`); ``unet`` gives
    another ``UNet2DConditionModel`` config, ``vae_channels`` the VAE's widths (one level
    each), ``text_layers`` / ``context_dim`` / ``max_length`` the CLIP text model's depth,
    width and tokens; ``chinese`` swaps CLIP for Chinese-CLIP's text model."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder.parent / f"{folder.name}_vocab", max_length)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=context_dim, intermediate_size=4 * context_dim,
        num_hidden_layers=text_layers, num_attention_heads=4,
        max_position_embeddings=max(16, max_length), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config).eval()
    if chinese:
        text_encoder, tokenizer = chinese_clip_text(folder.parent / f"{folder.name}_zh",
                                                    context_dim, max_length)
    config = unet or unet_kwargs(v_prediction, context_dim=context_dim)
    unet_model = perturb(UNet2DConditionModel(**config), seed=1)
    levels = len(vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=vae_channels,
        latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=config["sample_size"] * 2 ** (levels - 1),
    )
    perturb(vae, seed=2)
    schedule = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                    "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": False}
    scheduler: Any
    if v_prediction:  # SD 2.1: DDIM, v-prediction
        scheduler = DDIMScheduler(**schedule, clip_sample=False, prediction_type="v_prediction")
    else:  # SD 1.5's scheduler config
        scheduler = PNDMScheduler(**schedule, skip_prk_steps=True)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet_model,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    if not v_prediction:  # SD 1.5's file carries DDIM's clip_sample too (read by from_config)
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "clip_sample": False}))
    return folder
