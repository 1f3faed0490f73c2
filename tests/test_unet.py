"""Tests of ddpm_lib.UNet: shapes, conditioning, presets, save/load, checkpointing, autocast,
the fused layers against their unfused definitions, subclassing and input validation."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib import UNet
from ddpm_lib.models import GroupNormAct, ResBlock, Upsample, sinusoidal_embedding

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> UNet:
    """A 2-level UNet small enough for a unit test (about 60k parameters)."""
    config = dict(
        in_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
        attention_resolutions=(8,), image_size=16, dropout=0.0, norm_groups=4,
    )
    config.update(overrides)
    return UNet(**config)


def randomize(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Replace every parameter by N(0, std^2) noise: a fresh UNet outputs exactly zero
    (zero-initialised output convolution), which would hide most bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


# ---------------------------------------------------------------------------------------------
# shapes and layout
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "in_channels, size, mults, attention",
    [
        (1, 16, (1, 2), (8,)),
        (3, 32, (1, 2, 2), (16, 8)),
        (3, 64, (1, 1, 2, 2), (8,)),
        (1, 32, (1, 2, 2, 2), ()),
    ],
)
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_output_shape(generator, in_channels, size, mults, attention, learn_sigma):
    model = UNet(
        in_channels=in_channels, base_channels=8, channel_mults=mults, num_res_blocks=1,
        attention_resolutions=attention, image_size=size, norm_groups=4,
        learn_sigma=learn_sigma,
    )
    x = torch.randn(2, in_channels, size, size, generator=generator)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == (2, in_channels * (2 if learn_sigma else 1), size, size)
    assert len(model.down) == len(mults) and len(model.up) == len(mults)
    levels_with_attention = [i for i, level in enumerate(model.down) if level.blocks[0].attn]
    assert levels_with_attention == [i for i in range(len(mults)) if size // 2**i in attention]


def test_out_channels_and_non_square_input(generator):
    model = tiny(in_channels=2, out_channels=5)
    out = model(torch.randn(3, 2, 16, 24, generator=generator), torch.tensor([1, 2, 3]))
    assert out.shape == (3, 5, 16, 24)


def test_fresh_model_starts_as_zero_and_blocks_as_identity(generator):
    """zero_module on the output conv and on every residual branch's last layer."""
    model = tiny()
    x = torch.randn(2, 3, 16, 16, generator=generator)
    assert torch.equal(model(x, torch.tensor([3, 4])), torch.zeros(2, 3, 16, 16))
    block = model.down[0].blocks[0].res  # 16 -> 16 channels: identity skip
    emb = torch.randn(2, model.emb_channels, generator=generator)
    h = torch.randn(2, 16, 16, 16, generator=generator)
    assert torch.equal(block(h, emb), h)
    attn = model.down[1].blocks[0].attn
    h = torch.randn(2, 32, 8, 8, generator=generator)
    assert torch.equal(attn(h), h)


def test_ddpm_cifar10_preset_parameter_count():
    model = UNet.ddpm_cifar10()
    assert sum(p.numel() for p in model.parameters()) == 35_746_307
    assert model.attention_levels == (1,)  # 16x16
    assert model.dropout == 0.1 and model.num_heads == 1
    assert UNet.ddpm_cifar10(num_classes=10).num_classes == 10


def test_batch_elements_are_independent(generator):
    """GroupNorm is per sample: each output row depends only on its own input row."""
    model = randomize(tiny(num_classes=4)).eval()
    x = torch.randn(3, 3, 16, 16, generator=generator)
    t, y = torch.tensor([0, 500, 999]), torch.tensor([1, -1, 3])
    with torch.no_grad():
        batched = model(x, t, y)
        single = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_scalar_timestep_is_broadcast(generator):
    model = randomize(tiny()).eval()
    x = torch.randn(2, 3, 16, 16, generator=generator)
    with torch.no_grad():
        expected = model(x, torch.tensor([7, 7]))
        torch.testing.assert_close(model(x, 7), expected)
        torch.testing.assert_close(model(x, torch.tensor(7)), expected)


# ---------------------------------------------------------------------------------------------
# time and class embeddings
# ---------------------------------------------------------------------------------------------
def test_sinusoidal_embedding_matches_ddpm_formula():
    t = torch.tensor([0, 1, 17, 999])
    emb = sinusoidal_embedding(t, 8, freq_shift=1)
    half = 4
    for b, step in enumerate(t.tolist()):
        for i in range(half):
            freq = math.exp(-math.log(10000) * i / (half - 1))
            assert emb[b, i].item() == pytest.approx(math.sin(step * freq), abs=1e-4)
            assert emb[b, half + i].item() == pytest.approx(math.cos(step * freq), abs=1e-4)
    flipped = sinusoidal_embedding(t, 8, freq_shift=1, flip_sin_to_cos=True)
    torch.testing.assert_close(flipped, torch.cat([emb[:, half:], emb[:, :half]], dim=1))
    assert sinusoidal_embedding(t, 7).shape == (4, 7)


def test_timestep_changes_output(generator):
    model = randomize(tiny()).eval()
    x = torch.randn(1, 3, 16, 16, generator=generator)
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([10])), model(x, torch.tensor([900])))


def test_class_conditioning_changes_output_and_minus_one_is_the_null_row(generator):
    model = randomize(tiny(num_classes=3)).eval()
    assert model.num_classes == 3
    assert model.class_embed.embedding.num_embeddings == 4  # 3 labels + "no label"
    x = torch.randn(1, 3, 16, 16, generator=generator).expand(4, -1, -1, -1)
    t = torch.full((4,), 100)
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 1, 2, -1]))
        for i in range(4):
            for j in range(i + 1, 4):
                assert (out[i] - out[j]).abs().max() > 1e-3
        # -1 reads row N: copying class 1's row there makes -1 behave as class 1
        model.class_embed.embedding.weight[3] = model.class_embed.embedding.weight[1]
        torch.testing.assert_close(model(x[:1], t[:1], torch.tensor([-1])), out[1:2])


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------
def test_save_load_round_trip_is_bitwise(tmp_path, generator):
    model = randomize(tiny(num_classes=5, learn_sigma=True, head_channels=8)).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "manifest.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["_class_name"] == "UNet" and config["num_classes"] == 5
    loaded = UNet.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert type(loaded).__name__ == "UNet" and not loaded.training
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for key in state:
        assert torch.equal(state[key], loaded_state[key]), key
    x = torch.randn(2, 3, 16, 16, generator=generator)
    t, y = torch.tensor([3, 800]), torch.tensor([4, -1])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), loaded(x, t, y))


def test_save_load_keeps_dtype_and_rebuilds_from_config(tmp_path):
    model = randomize(tiny()).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert UNet.from_pretrained(tmp_path).dtype == torch.bfloat16
    assert UNet.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32
    rebuilt = UNet(**model.config)
    assert rebuilt.config == model.config


def test_save_channels_last_model(tmp_path):
    model = randomize(tiny()).to(memory_format=torch.channels_last)
    model.save_pretrained(tmp_path)
    loaded = UNet.from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_load_errors_name_the_file_and_tensor(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        UNet.from_pretrained(tmp_path / "nothing")

    tiny().save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        UNet.from_pretrained(tmp_path / "a")

    tiny().save_pretrained(tmp_path / "b")
    weights = tmp_path / "b" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
        UNet.from_pretrained(tmp_path / "b")

    # weights of a wider network under the config of a narrower one
    tiny().save_pretrained(tmp_path / "c")
    tiny(base_channels=8).save_pretrained(tmp_path / "wide")
    (tmp_path / "wide" / "model.safetensors").replace(tmp_path / "c" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors.*conv_in\.weight"):
        UNet.from_pretrained(tmp_path / "c")

    # weights of a class-conditional model: an unexpected tensor
    tiny().save_pretrained(tmp_path / "d")
    tiny(num_classes=3).save_pretrained(tmp_path / "cond")
    (tmp_path / "cond" / "model.safetensors").replace(tmp_path / "d" / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected tensors: class_embed\.embedding\.weight"):
        UNet.from_pretrained(tmp_path / "d")

    tiny().save_pretrained(tmp_path / "e")
    (tmp_path / "e" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        UNet.from_pretrained(tmp_path / "e")

    tiny().save_pretrained(tmp_path / "f")
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    config["widht"] = 3
    (tmp_path / "f" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="widht"):
        UNet.from_pretrained(tmp_path / "f")


# ---------------------------------------------------------------------------------------------
# training features
# ---------------------------------------------------------------------------------------------
def _gradients(model: UNet, x, t, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng():
        torch.manual_seed(1234)  # dropout masks: identical draws in both runs
        model(x, t, y).square().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients(generator):
    model = randomize(tiny(num_classes=2, dropout=0.3, num_res_blocks=2), std=0.1).train()
    x = torch.randn(2, 3, 16, 16, generator=generator)
    t, y = torch.tensor([5, 600]), torch.tensor([1, -1])
    plain = _gradients(model, x, t, y)
    model.gradient_checkpointing = True
    assert model.config["gradient_checkpointing"] is True
    checkpointed = _gradients(model, x, t, y)
    assert all(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5,
                                   msg=name)


def test_autocast_bf16_runs_finite_and_close(generator):
    model = randomize(tiny(num_classes=2), std=0.1).eval()
    x = torch.randn(2, 3, 16, 16, generator=generator)
    t, y = torch.tensor([5, 600]), torch.tensor([0, 1])
    with torch.no_grad():
        reference = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, y)
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, t, y).float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_channels_last_matches_contiguous(generator):
    model = randomize(tiny(image_size=32, channel_mults=(1, 2, 2), attention_resolutions=(16,)))
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=generator)
    t = torch.tensor([5, 600])
    with torch.no_grad():
        reference = model(x, t)
        model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# fused layers against their definitions
# ---------------------------------------------------------------------------------------------
def test_fused_groupnorm_silu_gradients_match_unfused():
    generator = torch.Generator().manual_seed(0)
    norm = GroupNormAct(4, 8, eps=1e-6, activation=True).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8, generator=generator, dtype=torch.float64))
        norm.bias.copy_(torch.randn(8, generator=generator, dtype=torch.float64))
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 8, 5, 5, generator=generator, dtype=torch.float64)
        x = x.to(memory_format=fmt).requires_grad_()
        assert torch.autograd.gradcheck(norm, (x,))
        out = norm(x)
        reference = F.silu(F.group_norm(x, 4, norm.weight, norm.bias, 1e-6))
        torch.testing.assert_close(out, reference)


def test_fused_dropout_keeps_one_minus_p_and_rescales():
    generator = torch.Generator().manual_seed(0)
    p = 0.25
    norm = GroupNormAct(2, 4, activation=True, dropout=p).train()
    x = torch.randn(8, 4, 32, 32, generator=generator, requires_grad=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        out = norm(x)
    reference = F.silu(F.group_norm(x, 2, norm.weight, norm.bias, norm.eps))
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    torch.testing.assert_close(out[kept], reference[kept] / (1 - p))
    grad = torch.randn(out.shape, generator=generator)
    inputs = (x, norm.weight, norm.bias)
    fused = torch.autograd.grad(out, inputs, grad)
    expected = torch.autograd.grad(reference * kept / (1 - p), inputs, grad)
    for a, b in zip(fused, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    norm.eval()
    with torch.no_grad():
        torch.testing.assert_close(norm(x), reference)


@pytest.mark.parametrize("size", [4, 16])
def test_upsample_equals_nearest_then_conv(size):
    """The stride-2 transposed convolution (16 px and up) and the plain path (below) both
    equal nearest 2x upsampling followed by the 3x3 convolution, values and gradients."""
    generator = torch.Generator().manual_seed(0)
    layer = Upsample(6)
    x = torch.randn(2, 6, size, size + 4, generator=generator, requires_grad=True)
    out = layer(x)
    reference = layer.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape, generator=generator)
    got = torch.autograd.grad(out, [x, layer.conv.weight, layer.conv.bias], grad)
    want = torch.autograd.grad(reference, [x, layer.conv.weight, layer.conv.bias], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# subclassing
# ---------------------------------------------------------------------------------------------
class _WideSkipBlock(ResBlock):
    """A block that doubles its residual branch: a one-method change of the network."""

    def forward(self, x, emb):
        return super().forward(x, emb) * 2 - (x if self.skip is None else self.skip(x))


class _BlockUNet(UNet):
    def make_res_block(self, in_channels, out_channels, level):
        return _WideSkipBlock(in_channels, out_channels, self.emb_channels,
                              norm_groups=self.norm_groups)


class _ScalarConditionUNet(UNet):
    """Conditions on a continuous scalar instead of labels (extra forward keyword)."""

    def __init__(self, cond_scale: float = 1.0, **kwargs):
        self.cond_scale = cond_scale
        super().__init__(**kwargs)
        self.register_config(cond_scale=cond_scale)

    def make_class_embedding(self):
        return nn.Linear(1, self.emb_channels)

    def embed(self, t, y=None, *, strength):
        return self.time_embed(t) + self.class_embed(self.cond_scale * strength[:, None])


def test_subclass_overrides_one_block_factory(generator):
    model = _BlockUNet(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, image_size=16,
                       attention_resolutions=(), norm_groups=4)
    blocks = [b.res for level in model.down for b in level.blocks]
    assert all(isinstance(b, _WideSkipBlock) for b in blocks)
    assert isinstance(model.mid[0].res, _WideSkipBlock)
    assert model(torch.randn(2, 3, 16, 16, generator=generator), 3).shape == (2, 3, 16, 16)


def test_subclass_with_new_conditioning_round_trips(tmp_path, generator):
    model = _ScalarConditionUNet(cond_scale=0.5, base_channels=8, channel_mults=(1, 2),
                                 num_res_blocks=1, image_size=16, norm_groups=4)
    randomize(model).eval()
    x = torch.randn(2, 3, 16, 16, generator=generator)
    t = torch.tensor([3, 3])
    with torch.no_grad():
        low = model(x, t, strength=torch.tensor([0.0, 0.0]))
        high = model(x, t, strength=torch.tensor([1.0, 1.0]))
    assert (low - high).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    loaded = _ScalarConditionUNet.from_pretrained(tmp_path)
    assert loaded.cond_scale == 0.5 and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(x, t, strength=torch.tensor([1.0, 1.0])), high)
    with pytest.raises(ValueError, match="_ScalarConditionUNet.from_pretrained"):
        UNet.from_pretrained(tmp_path)


def test_custom_unet_example_runs(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # as `python examples/custom_unet.py`
    monkeypatch.setattr(sys, "argv", ["custom_unet.py"])
    runpy.run_path(str(ROOT / "examples" / "custom_unet.py"), run_name="__main__")


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=20), r"image_size=20 must be divisible by 2\^\(levels - 1\) = 8"),
        (dict(norm_groups=5), r"norm_groups=5 must divide every channel count.*base_channels"),
        (dict(attention_resolutions=(12,)), r"attention_resolutions contains 12.*\[32, 16, 8, 4\]"),
        (dict(num_heads=3), r"num_heads=3 must divide"),
        (dict(head_channels=24), r"head_channels=24 must divide"),
        (dict(dropout=1.0), r"dropout must be a float in \[0, 1\)"),
        (dict(num_classes=0), r"num_classes must be >= 1; got 0"),
        (dict(channel_mults=()), r"channel_mults must not be empty"),
        (dict(downsample_padding=2), r"downsample_padding must be 0 or 1; got 2"),
    ],
)
def test_bad_construction_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{"base_channels": 32, "channel_mults": (1, 2, 2, 2), **kwargs})


def test_bad_construction_types():
    with pytest.raises(TypeError, match="base_channels must be an int; got float"):
        UNet(base_channels=32.0)
    with pytest.raises(TypeError, match="learn_sigma must be a bool"):
        UNet(learn_sigma=1)


def test_bad_forward_input_raises_with_what_to_change(generator):
    model = tiny(channel_mults=(1, 2, 2), image_size=16, attention_resolutions=())
    x = torch.randn(2, 3, 16, 16, generator=generator)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"divisible by 2\^\(levels - 1\) = 4.*\(18, 18\)"):
        model(torch.randn(2, 3, 18, 18, generator=generator), t)
    with pytest.raises(ValueError, match=r"x has 1 channels but this UNet was built with "
                                         r"in_channels=3"):
        model(torch.randn(2, 1, 16, 16, generator=generator), t)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        model(torch.randn(3, 16, 16, generator=generator), t)
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 3, 16, 16, dtype=torch.long), t)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\) to match x's batch; got "
                                         r"\(3,\)"):
        model(x, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="t must hold integer or real timesteps"):
        model(x, torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"y was given, but this UNet is unconditional"):
        model(x, t, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['mask'\]"):
        model(x, t, mask=torch.ones(2))

    conditional = tiny(num_classes=3)
    with pytest.raises(ValueError, match=r"class-conditional \(num_classes=3\): pass y.*or -1"):
        conditional(x, t)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 2\] or -1.*\[-1, 3\]"):
        conditional(x, t, torch.tensor([3, -1]))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        conditional(x, t, torch.tensor([1]))
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        conditional(x, t, torch.tensor([1.0, 0.0]))


@pytest.mark.compile
@pytest.mark.slow
def test_compiles_fullgraph_without_recompiling(generator):
    import torch._dynamo

    # two levels at 32 px: attention, down- and upsampling (the transposed-conv path)
    model = randomize(tiny(num_classes=3, base_channels=8, image_size=32,
                           attention_resolutions=(16,))).eval()
    x = torch.randn(2, 3, 32, 32, generator=generator)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(x, torch.tensor([1, 5]), torch.tensor([0, -1])),
            model(x, torch.tensor([1, 5]), torch.tensor([0, -1])),
            atol=1e-5, rtol=1e-5,
        )
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled(x, torch.tensor([7, 900]), torch.tensor([2, 1]))
