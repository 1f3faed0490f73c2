"""ddpm_lib.interop against diffusers as an independent implementation (random weights built
from configs; nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from ddpm_lib import UNet
from ddpm_lib.interop import DiffusersAdapter, unet_from_diffusers, wrap_diffusers_model

diffusers = pytest.importorskip("diffusers")

DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2, attention_head_dim=None, norm_eps=1e-6, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1,
)

# diffusers' defaults (flip_sin_to_cos=True, freq_shift=0, padding 1, eps 1e-5), multi-head
# attention at two levels, class labels, more output channels, mults 1, 2, 3
SMALL_VARIANT = dict(
    sample_size=16, in_channels=1, out_channels=2, block_out_channels=(16, 32, 48),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1, attention_head_dim=8, norm_num_groups=8, num_class_embeds=5,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def build(config: dict, seed: int = 0):
    """A diffusers UNet2DModel with random weights; biases and norms randomised too so that
    every converted tensor matters."""
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:  # biases, GroupNorm affine parameters
                offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                parameter.copy_(offset + 0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("config", [DDPM_CIFAR10, SMALL_VARIANT], ids=["ddpm_cifar10", "small"])
def test_converted_unet_matches_diffusers(config):
    reference = build(config)
    model = unet_from_diffusers(reference)
    assert isinstance(model, UNet) and not model.training
    n = sum(p.numel() for p in model.parameters())
    null_row = model.emb_channels if model.num_classes else 0  # the "no label" embedding
    assert n == sum(p.numel() for p in reference.parameters()) + null_row
    generator = torch.Generator().manual_seed(1)
    size = config["sample_size"]
    x = torch.randn(2, config["in_channels"], size, size, generator=generator)
    t = torch.tensor([0, 999])  # large t: the sinusoid must match exactly, not just closely
    kwargs, ours_kwargs = {}, {}
    if config.get("num_class_embeds"):
        kwargs = {"class_labels": torch.tensor([4, 1])}
        ours_kwargs = {"y": torch.tensor([4, 1])}
    x_ref = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    expected = reference(x_ref, t, **kwargs).sample
    out = model(x_ours, t, **ours_kwargs)
    assert expected.std() > 0.05  # a meaningful signal, not a near-zero output
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    # and the same input gradient, i.e. the same function to first order
    grad = torch.randn(out.shape, generator=generator)
    (expected_grad,) = torch.autograd.grad(expected, x_ref, grad)
    (grad_ours,) = torch.autograd.grad(out, x_ours, grad)
    torch.testing.assert_close(grad_ours, expected_grad, atol=1e-4, rtol=1e-4)


def test_ddpm_cifar10_preset_has_the_released_layout():
    converted = unet_from_diffusers(build(DDPM_CIFAR10))
    preset = UNet.ddpm_cifar10(dropout=0.0)
    assert converted.config == preset.config
    shapes = {k: v.shape for k, v in converted.state_dict().items()}
    assert shapes == {k: v.shape for k, v in preset.state_dict().items()}


def test_converted_model_null_label_is_no_class_embedding():
    reference = build(SMALL_VARIANT)
    model = unet_from_diffusers(reference)
    assert model.num_classes == 5
    assert torch.equal(model.class_embed.embedding.weight[5], torch.zeros(model.emb_channels))
    assert torch.equal(model.class_embed.embedding.weight[:5], reference.class_embedding.weight)


def test_converted_model_save_load_round_trip(tmp_path):
    model = unet_from_diffusers(build(SMALL_VARIANT))
    model.save_pretrained(tmp_path)
    loaded = UNet.from_pretrained(tmp_path)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x, 5, torch.tensor([2])), model(x, 5, torch.tensor([2])))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(down_block_types=("DownBlock2D", "AttnDownBlock2D", "SkipDownBlock2D")),
         "down block type='SkipDownBlock2D'"),
        (dict(up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
         "attention at the same levels"),
        (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift='scale_shift'"),
        (dict(time_embedding_type="fourier"), "time_embedding_type='fourier'"),
        (dict(center_input_sample=True), "center_input_sample=True"),
        (dict(block_out_channels=(16, 24, 48)), r"block_out_channels=\[16, 24, 48\]"),
    ],
)
def test_unsupported_diffusers_models_raise(change, match):
    config = {k: v for k, v in SMALL_VARIANT.items() if k != "num_class_embeds"}
    config.update(change)
    if config.get("block_out_channels") == (16, 24, 48):
        config["norm_num_groups"] = 8
    model = diffusers.UNet2DModel(**config)
    with pytest.raises(ValueError, match=match):
        unet_from_diffusers(model)


def test_non_unet2dmodel_is_a_type_error():
    with pytest.raises(TypeError, match="expects a diffusers UNet2DModel; got Linear"):
        unet_from_diffusers(torch.nn.Linear(2, 2))


def test_adapter_returns_the_sample_tensor():
    reference = build(SMALL_VARIANT)
    adapter = wrap_diffusers_model(reference)
    assert isinstance(adapter, DiffusersAdapter) and adapter.num_classes == 5
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3])
    with torch.no_grad():
        out = adapter(x, torch.tensor([3, 3]), y)
        assert isinstance(out, torch.Tensor)
        assert torch.equal(out, reference(x, torch.tensor([3, 3]), class_labels=y).sample)
        assert torch.equal(adapter(x, 3, y), out)  # a scalar timestep is broadcast
    # parameters are the wrapped model's, so the adapter can be trained
    assert sum(p.numel() for p in adapter.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )


def test_adapter_maps_the_null_label():
    reference = build(SMALL_VARIANT)
    adapter = DiffusersAdapter(reference, null_class=4)  # class 4 plays "no label"
    assert adapter.num_classes == 4
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            adapter(x, 10, torch.tensor([-1, 2])),
            reference(x, torch.tensor([10, 10]), class_labels=torch.tensor([4, 2])).sample,
        )


def test_adapter_output_feeds_the_schedule(schedule):
    """The adapter satisfies the model contract: a tensor shaped like x_t."""
    adapter = DiffusersAdapter(build({**SMALL_VARIANT, "num_class_embeds": None,
                                      "out_channels": 1}))
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 16, 16, generator=generator) * 2 - 1
    t = torch.tensor([10, 500])
    x_t = schedule.q_sample(x0, t, generator=generator)
    with torch.no_grad():
        eps = adapter(x_t, t)
    x0_hat = schedule.predict_x0_from_eps(x_t, t, eps)
    assert x0_hat.shape == x0.shape and torch.isfinite(x0_hat).all()
