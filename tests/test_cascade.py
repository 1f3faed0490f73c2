"""Image conditioning, noise conditioning augmentation, pairs, interop and the Cascade."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddpm_lib import (
    Cascade,
    CascadeStage,
    DiffusionPipeline,
    NoiseAugmentation,
    NoiseSchedule,
    SuperResolutionPairs,
    TextConditionedUNet,
    TextEncoder,
    UNet,
    sr_unet_from_diffusers,
)
from ddpm_lib.conditioning import LowResImage, conditions_for
from ddpm_lib.shapes import CaptionedShapesDataset, ShapesDataset
from ddpm_lib.super_resolution import downsample, side_by_side, upsample

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet(**overrides) -> UNet:
    config = {"base_channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1,
              "attention_resolutions": (), "image_size": 16, "norm_groups": 4, "dropout": 0.0}
    config.update(overrides)
    return UNet(**config)


def _perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights everywhere (the zero-initialised layers too), so outputs depend on all."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


# ---------------------------------------------------------------------------- the UNet
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_cond_image_is_resized_and_concatenated_at_the_input(mode, generator) -> None:
    """sr(x, t, cond_image=c) == plain(cat([x, resize(c)]), t) with the same weights."""
    sr = _perturb(tiny_unet(cond_channels=3, cond_resize=mode, noise_level_embedding=False))
    plain = tiny_unet(in_channels=6, out_channels=3)
    plain.load_state_dict(sr.state_dict())
    x = torch.randn(2, 3, 16, 16, generator=generator)
    low = torch.randn(2, 3, 4, 4, generator=generator)
    t = torch.tensor([5, 900])
    up = F.interpolate(low, size=(16, 16), mode=mode, align_corners=False)
    torch.testing.assert_close(sr(x, t, cond_image=low), plain(torch.cat([x, up], 1), t))
    assert sr(x, t, cond_image=low).shape == (2, 3, 16, 16)


def test_noise_level_is_embedded_and_added_to_the_time_embedding(generator) -> None:
    sr = tiny_unet(cond_channels=3)
    x, low = torch.randn(2, 3, 16, 16, generator=generator), torch.randn(2, 3, 8, 8)
    t = torch.tensor([3, 3])
    # zero-initialised last layer: the new network does not depend on the level yet
    torch.testing.assert_close(sr(x, t, cond_image=low, noise_level=0),
                               sr(x, t, cond_image=low, noise_level=torch.tensor([100, 700])))
    _perturb(sr)
    a = sr(x, t, cond_image=low, noise_level=torch.tensor([100, 100]))
    b = sr(x, t, cond_image=low, noise_level=torch.tensor([700, 700]))
    assert not torch.allclose(a, b)
    emb = sr.embed(t, noise_level=torch.tensor([100, 700]))
    expected = sr.time_embed(t) + sr.noise_level_embed(torch.tensor([100, 700]))
    torch.testing.assert_close(emb, expected)
    torch.testing.assert_close(sr(x, t, cond_image=low), sr(x, t, cond_image=low, noise_level=0))


def test_inpainting_layout_mask_and_masked_image_as_extra_channels(generator) -> None:
    """Stable Diffusion inpainting: x_t (4) + mask (1) + masked latents (4) = 9 inputs."""
    inpaint = _perturb(tiny_unet(in_channels=4, cond_channels=5, noise_level_embedding=False))
    assert inpaint.conv_in.in_channels == 9 and inpaint.out_channels == 4
    x = torch.randn(2, 4, 16, 16, generator=generator)
    image = torch.randn(2, 4, 16, 16, generator=generator)
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1.0  # 1 = the hole to fill
    cond = torch.cat([mask, image * (1 - mask)], dim=1)
    out = inpaint(x, torch.tensor([10, 20]), cond_image=cond)
    plain = tiny_unet(in_channels=9, out_channels=4)
    plain.load_state_dict(inpaint.state_dict())
    torch.testing.assert_close(out, plain(torch.cat([x, cond], 1), torch.tensor([10, 20])))
    # what lies under the hole is hidden from the model: changing it changes nothing
    other = torch.where(mask.bool(), torch.randn_like(image), image)
    cond_other = torch.cat([mask, other * (1 - mask)], dim=1)
    torch.testing.assert_close(inpaint(x, torch.tensor([10, 20]), cond_image=cond_other), out)
    reloaded = UNet(**inpaint.config)
    assert reloaded.cond_channels == 5 and reloaded.conv_in.in_channels == 9


def test_bad_image_conditions_are_named_value_errors() -> None:
    sr, plain = tiny_unet(cond_channels=3), tiny_unet()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="without cond_channels"):
        plain(x, 1, cond_image=torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="no noise-level embedding"):
        plain(x, 1, noise_level=3)
    with pytest.raises(ValueError, match="pass cond_image"):
        sr(x, 1)
    with pytest.raises(ValueError, match=r"shape \(2, 3, h, w\)"):
        sr(x, 1, cond_image=torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="divided by a whole factor"):
        sr(x, 1, cond_image=torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="noise_level must have shape"):
        sr(x, 1, cond_image=torch.randn(2, 3, 8, 8), noise_level=torch.zeros(3))
    with pytest.raises(ValueError, match="cond_resize"):
        tiny_unet(cond_channels=3, cond_resize="nearest")


# ---------------------------------------------------------------------------- augmentation
def test_augmentation_is_the_forward_process_at_level_s(generator) -> None:
    schedule = NoiseSchedule.linear(1000)
    augmentation = NoiseAugmentation(schedule, max_level=350, sample_level=20)
    low = torch.full((4000, 1, 1, 1), 0.5)
    z = augmentation.augment(low, 300, generator=generator)
    abar = float(schedule.alphas_cumprod[300])
    assert abs(z.mean().item() - abar**0.5 * 0.5) < 0.03
    assert abs(z.var().item() - (1 - abar)) < 0.05
    levels = augmentation.draw_levels(5000, generator)
    assert int(levels.min()) == 0 and int(levels.max()) == 350
    assert NoiseAugmentation.from_dict(augmentation.to_dict()).sample_level == 20
    with pytest.raises(ValueError, match="sample_level"):
        NoiseAugmentation(schedule, max_level=100, sample_level=200)
    with pytest.raises(ValueError, match="max_level"):
        NoiseAugmentation(schedule, max_level=1000)
    with pytest.raises(ValueError, match="noise_level"):
        augmentation.augment(low, 1000)
    with pytest.raises(ValueError, match="variant"):
        NoiseAugmentation(variant="partial")


# ---------------------------------------------------------------------------- pairs
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_pairs_downsample_by_area_and_keep_labels_and_captions(factor) -> None:
    shapes = ShapesDataset(size=4, image_size=32)
    pairs = SuperResolutionPairs(shapes, factor)
    high, low, label = pairs[1]
    assert torch.equal(high, shapes[1][0]) and label == shapes[1][1]
    torch.testing.assert_close(low, F.avg_pool2d(high[None], factor)[0])
    bicubic = SuperResolutionPairs(shapes, factor, mode="bicubic")[1][1]
    assert bicubic.shape == (3, 32 // factor, 32 // factor) and bicubic.abs().max() <= 1
    captioned = CaptionedShapesDataset(size=2, image_size=16)
    assert SuperResolutionPairs(captioned, 2)[0][2] == captioned[0][1]


def test_pair_and_resize_helpers_reject_bad_factors() -> None:
    with pytest.raises(ValueError, match="factor"):
        SuperResolutionPairs(ShapesDataset(size=2, image_size=16), 1)
    with pytest.raises(ValueError, match="divisible by factor=3"):
        downsample(torch.zeros(1, 3, 16, 16), 3)
    with pytest.raises(ValueError, match="mode"):
        downsample(torch.zeros(1, 3, 16, 16), 2, mode="lanczos")
    grid = side_by_side(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 8, 8), torch.ones(2, 3, 8, 8))
    assert grid.shape == (6, 3, 8, 8) and upsample(torch.zeros(1, 3, 4, 4), 4).shape[-1] == 16


def test_conditions_of_an_upsampler_read_the_low_res_field_first() -> None:
    sr = tiny_unet(cond_channels=3, num_classes=4)
    pairs = SuperResolutionPairs(ShapesDataset(size=2, image_size=16), 2)
    conditions = conditions_for(sr, list(pairs[0][1:]), noise_augmentation=NoiseAugmentation())
    assert isinstance(conditions[0], LowResImage) and conditions[0].augmentation is not None
    assert conditions[1].num_classes == 4
    with pytest.raises(ValueError, match="low_res"):
        conditions_for(sr, [3])
    with pytest.raises(ValueError, match="image-conditioned model"):
        conditions_for(tiny_unet(), [3], noise_augmentation=NoiseAugmentation())


# ---------------------------------------------------------------------------- interop
@pytest.mark.parametrize("class_embed_type", [None, "timestep"])
def test_sr3_unet2dmodel_converts_with_equal_outputs(class_embed_type, generator) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    reference = diffusers.UNet2DModel(
        sample_size=16, in_channels=6, out_channels=3, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
        attention_head_dim=8, class_embed_type=class_embed_type).eval()
    ours = sr_unet_from_diffusers(reference).eval()
    assert ours.cond_channels == 3 and ours.in_channels == 3
    x = torch.randn(2, 3, 16, 16, generator=generator)
    low = torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1
    t, s = torch.tensor([3, 500]), torch.tensor([10, 200])
    up = F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = reference(torch.cat([x, up], 1), t,
                             class_labels=s if class_embed_type else None).sample
        got = ours(x, t, cond_image=low, noise_level=s if class_embed_type else None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cond_channels"):
        sr_unet_from_diffusers(reference, cond_channels=6)


# ---------------------------------------------------------------------------- Cascade
def _pipeline(model, size_sampler=None) -> DiffusionPipeline:
    return DiffusionPipeline(model.eval(), NoiseSchedule.linear(100),
                             sampler=size_sampler or {"name": "ddim", "num_steps": 3})


def _cascade(**stage_options) -> Cascade:
    base = _pipeline(_perturb(tiny_unet(image_size=8)))
    sr = _pipeline(_perturb(tiny_unet(cond_channels=3, image_size=16), 2))
    sr_4x = _pipeline(_perturb(tiny_unet(cond_channels=3, image_size=64, channel_mults=(1,)),
                               3))
    augmentation = NoiseAugmentation(NoiseSchedule.linear(100), sample_level=10,
                                     **stage_options)
    return Cascade([base, CascadeStage(sr, augmentation=augmentation),
                    CascadeStage(sr_4x, augmentation=augmentation)])


def test_cascade_samples_every_stage_and_reloads_to_the_same_samples(tmp_path) -> None:
    cascade = _cascade()
    assert cascade.factors == [2, 4] and cascade.output_shape == (3, 64, 64)
    outputs = cascade.sample(2, generator=torch.Generator().manual_seed(0), return_stages=True)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 8), (2, 3, 16, 16), (2, 3, 64, 64)]
    assert all(o.abs().max() <= 1 for o in outputs)
    cascade.save_pretrained(tmp_path / "cascade")
    loaded = Cascade.from_pretrained(tmp_path / "cascade")
    assert loaded.stages[1].augmentation.sample_level == 10
    again = loaded.sample(2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, outputs[-1])


def test_truncated_augmentation_conditions_on_the_previous_stages_x_s() -> None:
    cascade = _cascade(variant="truncated")
    outputs = cascade.sample(2, generator=torch.Generator().manual_seed(0), return_stages=True)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 8), (2, 3, 16, 16), (2, 3, 64, 64)]
    # the base's own output is its full run; the next stage saw its x_s (not the same run)
    plain = _cascade().sample(2, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(plain, outputs[-1])


def test_prompts_pass_through_to_a_text_conditioned_upsampler() -> None:
    encoder = TextEncoder(dim=16, num_layers=1, num_heads=2, max_length=16)
    text_sr = TextConditionedUNet(
        tiny_unet(cond_channels=3, context_dim=16, attention_resolutions=(8,)), encoder)
    text_base = TextConditionedUNet(
        tiny_unet(image_size=8, context_dim=16, attention_resolutions=(4,)),
        TextEncoder(dim=16, num_layers=1, num_heads=2, max_length=16))
    cascade = Cascade([CascadeStage(_pipeline(text_base), guidance_scale=2.0),
                       CascadeStage(_pipeline(text_sr), guidance_scale=2.0)])
    images = cascade.sample(prompts=["a red circle", "a blue square"],
                            generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="prompts"):
        cascade.sample(2)


def test_stages_that_do_not_chain_are_named_value_errors() -> None:
    base = _pipeline(tiny_unet(image_size=8))
    sr = _pipeline(tiny_unet(cond_channels=3, image_size=16))
    with pytest.raises(ValueError, match="do not chain"):
        Cascade([base, _pipeline(tiny_unet(cond_channels=3, image_size=12, channel_mults=(1,)))])
    with pytest.raises(ValueError, match="outputs 3 channels"):
        Cascade([base, _pipeline(tiny_unet(cond_channels=1, image_size=16))])
    with pytest.raises(ValueError, match="not a super-resolution model"):
        Cascade([base, _pipeline(tiny_unet(image_size=16))])
    with pytest.raises(ValueError, match="base"):
        Cascade([sr, sr])
    with pytest.raises(ValueError, match="at least one"):
        Cascade([base])
    with pytest.raises(ValueError, match="truncated"):
        Cascade([base, CascadeStage(sr, augmentation=NoiseAugmentation(variant="truncated"))])
    with pytest.raises(ValueError, match="sample_level"):
        CascadeStage(sr, augmentation=NoiseAugmentation(), sample_level=1000)


def test_a_latent_base_chains_with_its_decoded_size() -> None:
    from ddpm_lib import AutoencoderKL

    autoencoder = AutoencoderKL(in_channels=3, latent_channels=4, base_channels=8,
                                channel_mults=(1, 2), num_res_blocks=1, norm_groups=4).eval()
    latent_unet = tiny_unet(in_channels=4, image_size=4, channel_mults=(1,))
    base = DiffusionPipeline(latent_unet.eval(), NoiseSchedule.linear(100),
                             autoencoder=autoencoder, scale_factor=1.0,
                             sampler={"name": "ddim", "num_steps": 2})
    sr = _pipeline(tiny_unet(cond_channels=3, image_size=16))
    cascade = Cascade([base, sr])  # 4x4 latents decode to 8x8 images; 8 -> 16
    assert cascade.factors == [2]
    low, high = cascade.sample(2, return_stages=True)
    assert low.shape == (2, 3, 8, 8) and high.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="do not chain"):
        Cascade([base, _pipeline(tiny_unet(cond_channels=3, image_size=8))])
