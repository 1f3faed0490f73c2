"""Stable Diffusion-layout models: the UNet2DConditionModel converter, the diffusers folder
loader, and equivalence with diffusers' StableDiffusionPipeline on tiny random-weight
pipelines written to a folder (SD 1.x eps with a PNDM config, SD 2.x v with DDIM)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from _sd_helpers import perturb, stable_diffusion_folder, unet_kwargs  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from ddpm_lib import DiffusionPipeline, unet_from_diffusers  # noqa: E402
from ddpm_lib.interop_sd import sd_unet_kwargs, unet_to_diffusers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red cube", "blue ball on a cube"]
NEGATIVE = ["", "red"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd")
    return {"sd1": stable_diffusion_folder(root / "sd1"),
            "sd2v": stable_diffusion_folder(root / "sd2v", v_prediction=True)}


def _reference(folder: Path) -> Any:
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, local_files_only=True, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _x_T() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))


def _diffusers_run(reference: Any, steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(latents, images in [0, 1])`` of diffusers' pipeline from :func:`_x_T`."""
    common = {"negative_prompt": NEGATIVE, "num_inference_steps": steps, "guidance_scale": 3.0}
    latents = reference(PROMPTS, latents=_x_T(), output_type="latent", **common).images
    images = reference(PROMPTS, latents=_x_T(), output_type="pt", **common).images
    return latents, images


def _our_run(pipe: DiffusionPipeline, steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    images, latents = pipe.sample(prompts=PROMPTS, negative_prompts=NEGATIVE,
                                  guidance_scale=3.0, num_steps=steps, x_T=_x_T(),
                                  return_latents=True)
    return latents, (images / 2 + 0.5).clamp(0, 1)


# ------------------------------------------------------------------------------ the UNet
@pytest.mark.parametrize("sd2", [False, True], ids=["sd1-heads", "sd2-head-size"])
def test_converted_unet_matches_and_converts_back(sd2: bool) -> None:
    torch.manual_seed(0)
    theirs = perturb(UNet2DConditionModel(**unet_kwargs(sd2, context_dim=16))).eval()
    ours = unet_from_diffusers(theirs).eval()
    config = ours.config
    assert config["text_attention"] == "transformer"
    assert config["transformer_linear_projection"] is sd2
    assert (config["num_heads"], config["head_channels"]) == ((1, 16) if sd2 else (2, None))
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = theirs(x, t, encoder_hidden_states=context).sample
        ours_out = ours(x, t, context=context)
        back = unet_to_diffusers(ours)(x, t, encoder_hidden_states=context).sample
        other_text = ours(x, t, context=context.flip(0))
    torch.testing.assert_close(ours_out, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(back, expected, atol=1e-5, rtol=1e-5)
    assert (other_text - ours_out).abs().max() > 1e-2  # the text matters


def test_unconvertible_unet_settings_are_named() -> None:
    base = UNet2DConditionModel(**unet_kwargs(False, context_dim=16)).config
    cases = {
        "class_embed_type": {"class_embed_type": "timestep"},
        "down block type": {"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D"]},
        "attention_head_dim": {"attention_head_dim": [2, 3]},
        "transformer_layers_per_block": {"transformer_layers_per_block": [1, 2]},
    }
    for name, change in cases.items():
        with pytest.raises(ValueError, match=name):
            sd_unet_kwargs({**base, **change})


# ------------------------------------------------------------------------------ the folder
@pytest.mark.parametrize("kind", ["sd1", "sd2v"])
@pytest.mark.parametrize("scheduler", [DDIMScheduler, DPMSolverMultistepScheduler],
                         ids=["ddim", "dpm-solver++"])
def test_pipeline_matches_stable_diffusion(folders, kind: str, scheduler: Any) -> None:
    reference = _reference(folders[kind])
    reference.scheduler = scheduler.from_config(reference.scheduler.config)
    pipe = DiffusionPipeline.from_diffusers(folders[kind], scheduler=reference.scheduler)
    assert pipe.prediction == ("v" if kind == "sd2v" else "eps")
    assert pipe.scale_factor == reference.vae.config.scaling_factor
    assert pipe.make_sampler(num_steps=4).timesteps.tolist() == \
        _timesteps(reference.scheduler, 4)
    theirs_latents, theirs_images = _diffusers_run(reference)
    latents, images = _our_run(pipe)
    torch.testing.assert_close(latents, theirs_latents, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(images, theirs_images, atol=1e-4, rtol=0)


def test_chinese_clip_text_encoder_pipeline_matches(tmp_path) -> None:
    """A Chinese model: Chinese-CLIP's text model and BERT tokenizer in the folder."""
    folder = stable_diffusion_folder(tmp_path / "zh", chinese=True)
    reference = _reference(folder)
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    pipe = DiffusionPipeline.from_diffusers(folder)
    assert type(pipe.model.text_encoder.model).__name__ == "ChineseCLIPTextModel"
    prompts, x_T = ["一个红色的立方体", "蓝色的球"], _x_T()
    theirs = reference(prompts, num_inference_steps=3, guidance_scale=3.0, latents=x_T.clone(),
                       output_type="latent").images
    _, ours = pipe.sample(prompts=prompts, guidance_scale=3.0, num_steps=3, x_T=x_T,
                          return_latents=True)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)


def _timesteps(scheduler: Any, steps: int) -> list[int]:
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.tolist()


def test_folder_defaults_follow_its_scheduler_config(folders) -> None:
    """SD 1.5's PNDM config gives DDIM on its leading grid, offset by 1, landing on abar_0."""
    pipe = DiffusionPipeline.from_pretrained(folders["sd1"])  # the one loader reads it too
    assert pipe.sampler_settings == {"name": "ddim", "spacing": "leading", "steps_offset": 1,
                                     "set_alpha_to_one": False, "clip_denoised": False}
    assert pipe.make_sampler(num_steps=5).timesteps.tolist() == [801, 601, 401, 201, 1]
    # as in diffusers, the offset moves leading grids only
    config = json.loads((folders["sd1"] / "scheduler" / "scheduler_config.json").read_text())
    trailing = DDIMScheduler.from_config(config, timestep_spacing="trailing")
    assert pipe.make_sampler(num_steps=5, spacing="trailing").timesteps.tolist() == \
        _timesteps(trailing, 5)
    expected = DDIMScheduler.from_config(config)
    assert torch.allclose(pipe.schedule.alphas_cumprod.float(), expected.alphas_cumprod,
                          rtol=1e-6, atol=0)


def test_saved_in_both_layouts_samples_the_same(folders, tmp_path) -> None:
    pipe = DiffusionPipeline.from_diffusers(folders["sd2v"])
    expected, _ = _our_run(pipe, steps=3)
    pipe.save_pretrained(tmp_path / "ours")
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "ours")
    assert reloaded.sampler_settings == pipe.sampler_settings
    torch.testing.assert_close(_our_run(reloaded, steps=3)[0], expected, atol=1e-5, rtol=0)

    pipe.save_diffusers(tmp_path / "diffusers")
    theirs = _reference(tmp_path / "diffusers")
    assert theirs.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(_diffusers_run(theirs, steps=3)[0], expected, atol=1e-4, rtol=0)
    again = DiffusionPipeline.from_diffusers(tmp_path / "diffusers")
    torch.testing.assert_close(_our_run(again, steps=3)[0], expected, atol=1e-5, rtol=0)


def test_converted_model_trains_and_samples_with_every_sampler(folders, tmp_path) -> None:
    from ddpm_lib import SimpleLoss, Trainer
    from ddpm_lib.pipeline import SAMPLER_NAMES

    pipe = DiffusionPipeline.from_diffusers(folders["sd1"])
    model: Any = pipe.model
    model.text_encoder.model.requires_grad_(False)  # fine-tune the UNet only
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    data = pipe.latent.encode_dataset([(images[i], PROMPTS[i % 2]) for i in range(4)],
                                      tmp_path / "latents", progress=False)
    before = model.unet.conv_in.weight.detach().clone()
    trainer = Trainer(model, SimpleLoss(pipe.schedule, prediction=pipe.prediction), data,
                      batch_size=2, lr=1e-3, warmup_steps=1, out_dir=tmp_path / "run",
                      random_flip=False, num_workers=0, progress=False, log_every=1,
                      checkpoint_every=100, device="cpu")
    assert trainer.train(2) == 2
    assert not torch.equal(before, model.unet.conv_in.weight)
    pipe.eval()
    for name in SAMPLER_NAMES:
        images = pipe.sample(prompts=PROMPTS[:1], guidance_scale=2.0, sampler=name, num_steps=2,
                             generator=torch.Generator().manual_seed(0), compile="auto")
        assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all(), name


def test_sample_command_reads_a_diffusers_folder(folders, tmp_path) -> None:
    from PIL import Image

    from ddpm_lib.cli import main

    out = tmp_path / "sd.png"
    assert main(["sample", str(folders["sd1"]), "--prompt", "a red cube", "--num", "2",
                 "--steps", "2", "--guidance-scale", "3", "--out", str(out)]) == 0
    assert Image.open(out).size[0] >= 16


# ------------------------------------------------------------------------------ bad input
def test_bad_folders_are_named_errors(folders, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"lacks model_index.json, unet/"):
        DiffusionPipeline.from_diffusers(tmp_path)
    broken = tmp_path / "no_vae"
    shutil.copytree(folders["sd1"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ValueError, match=r"lacks vae/"):
        DiffusionPipeline.from_diffusers(broken)

    odd = tmp_path / "odd_schedule"
    shutil.copytree(folders["sd1"], odd)
    path = odd / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "beta_schedule": "exp"}))
    with pytest.raises(ValueError, match=r"beta_schedule='exp'"):
        DiffusionPipeline.from_diffusers(odd)

    mixed = tmp_path / "mixed"
    stable_diffusion_folder(mixed, context_dim=16)
    shutil.rmtree(mixed / "text_encoder")
    shutil.copytree(folders["sd1"] / "text_encoder", mixed / "text_encoder")
    with pytest.raises(ValueError, match=r"hidden_size is 32, but the UNet's "
                                         r"cross_attention_dim is 16"):
        DiffusionPipeline.from_diffusers(mixed)

    blocks = tmp_path / "blocks"
    shutil.copytree(folders["sd1"], blocks)
    path = blocks / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "addition_embed_type": "text"}))
    with pytest.raises(ValueError, match=r"addition_embed_type='text' is not supported"):
        DiffusionPipeline.from_diffusers(blocks)


@pytest.mark.compile
@pytest.mark.slow
def test_transformer_block_compiles_into_one_graph() -> None:
    """Stable Diffusion's block under torch.compile(fullgraph=True): one graph, eager's result,
    no recompilation for a second input of the same shape."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from ddpm_lib.models import SpatialTransformer

    torch.manual_seed(0)
    block = perturb(SpatialTransformer(8, 6, num_heads=2, linear_projection=True,
                                       norm_groups=4)).eval()
    compiled = torch.compile(block, fullgraph=True)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (0, 1):
            generator = torch.Generator().manual_seed(seed)
            x = torch.randn(2, 8, 4, 4, generator=generator)
            context = torch.randn(2, 5, 6, generator=generator)
            torch.testing.assert_close(compiled(x, context), block(x, context),
                                       rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
