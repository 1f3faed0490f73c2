"""The DiT: its architecture (identity at initialisation, positions, patches, the paper's
parameter counts and Gflops), bad input, and every place a UNet goes (losses, samplers,
guidance, the Trainer, latent diffusion, text conditioning, saving)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ddpm_lib import (
    DDIMSampler,
    DDPMSampler,
    DEISSampler,
    DiT,
    DPMSolverSampler,
    GuidedModel,
    HybridLoss,
    NoiseSchedule,
    PNDMSampler,
    SDESampler,
    SimpleLoss,
    UniPCSampler,
    VLBLoss,
)
from ddpm_lib.models import DiTBlock, Mlp, SelfAttention, resolve_model_class
from ddpm_lib.models import sincos_position_embedding

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> DiT:
    """4 x 8 x 8 inputs, patch 2 (16 tokens), width 32, 2 blocks, 4 classes, learned variance."""
    config = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
                  num_heads=4, num_classes=4, learn_sigma=True)
    config.update(overrides)
    return DiT(**config)


def perturbed(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Add noise to every weight, so zero-initialised layers stop hiding the rest."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(std * torch.randn(parameter.shape, generator=generator))
    return model


def inputs(batch=2, channels=4, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=generator)
    t = torch.randint(0, 50, (batch,), generator=generator)
    y = torch.arange(batch) % 4
    return x, t, y


# ----------------------------------------------------------------------------- architecture
def test_a_fresh_dit_predicts_zero_and_a_fresh_block_is_the_identity():
    model = tiny()
    x, t, y = inputs()
    out = model(x, t, y=y)
    assert out.shape == (2, 8, 8, 8)  # learn_sigma doubles the channels
    assert torch.equal(out, torch.zeros_like(out))  # the final layer starts at zero
    block = model.blocks[0]
    h = torch.randn(2, 16, 32)
    c = torch.randn(2, 32)
    assert torch.equal(block(h, c), h)  # every gate starts at zero
    assert tiny(learn_sigma=False)(x, t, y=y).shape == (2, 4, 8, 8)
    assert model.blocks[0].norm1.eps == 1e-6 and model.final_layer.norm_final.eps == 1e-6


def test_adaln_block_equals_the_paper_formula():
    """h + g1 * attn(LN(h)(1 + s1) + b1), then h + g2 * mlp(LN(h)(1 + s2) + b2)."""
    torch.manual_seed(0)
    block = perturbed(DiTBlock(16, SelfAttention(16, 2), Mlp(16, 64)), std=0.2)
    h, c = torch.randn(3, 5, 16), torch.randn(3, 16)
    shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=1)
    ln = lambda v: nn.functional.layer_norm(v, (16,), eps=1e-6)  # noqa: E731
    expected = h + gate1[:, None] * block.attn(ln(h) * (1 + scale1[:, None]) + shift1[:, None])
    expected = expected + gate2[:, None] * block.mlp(
        ln(expected) * (1 + scale2[:, None]) + shift2[:, None])
    torch.testing.assert_close(block(h, c), expected, rtol=1e-5, atol=1e-6)
    # the attention is softmax(q k^T / sqrt(d)) v per head
    q, k, v = block.attn.qkv(h).view(3, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(3, 5, 16)
    torch.testing.assert_close(block.attn(h), block.attn.proj(attended), rtol=1e-5, atol=1e-6)


def test_position_embedding_is_the_2d_sincos_table_of_diffusers():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    ours = sincos_position_embedding(32, 4, 4)
    theirs = embeddings.get_2d_sincos_pos_embed(32, 4, base_size=4, output_type="pt")
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=1e-6)
    # token (i, j): the first half encodes column j, the second row i
    table = sincos_position_embedding(8, 3, 5)
    assert torch.equal(table[1 * 5 + 2, :2], torch.tensor([math.sin(2.0), math.sin(2e-2)]))
    assert torch.equal(table[1 * 5 + 2, 4:6], torch.tensor([math.sin(1.0), math.sin(1e-2)]))


def test_unpatchify_places_each_token_at_its_patch():
    model = tiny(learn_sigma=False, patch_size=2)
    # token (i, j) of a 2 x 3 grid carries its patch values p * p * C, channels last
    tokens = torch.arange(6 * 16, dtype=torch.float32).view(1, 6, 16)
    image = model.unpatchify(tokens, 2, 3)  # (1, 4, 4, 6)
    for i in range(2):
        for j in range(3):
            patch = tokens[0, i * 3 + j].view(2, 2, 4).permute(2, 0, 1)  # (C, p, q)
            assert torch.equal(image[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2], patch)


def test_other_grid_sizes_get_their_own_positions():
    model = perturbed(tiny()).eval()
    x = torch.randn(1, 4, 8, 12)
    out = model(x, torch.tensor([3]), y=torch.tensor([1]))
    assert out.shape == (1, 8, 8, 12) and torch.isfinite(out).all()
    assert torch.equal(model.position_embedding(4, 4), model.pos_embed)
    assert torch.equal(model.position_embedding(4, 6)[0], sincos_position_embedding(32, 4, 6))


def test_labels_condition_and_minus_one_is_the_null_class():
    model = perturbed(tiny()).eval()
    x, t, _ = inputs()
    a = model(x, t, y=torch.tensor([0, 0]))
    b = model(x, t, y=torch.tensor([1, 1]))
    null = model(x, t, y=torch.tensor([-1, -1]))
    assert not torch.allclose(a, b) and not torch.allclose(a, null)
    row = model.y_embedder.embedding.weight[4]  # the extra row of the table
    expected = model.t_embedder(t) + row
    torch.testing.assert_close(model.embed(t, torch.tensor([-1, -1])), expected)


def _closed_form_parameters(depth, hidden, heads, patch, channels=4, classes=1000, freq=256):
    """The DiT's parameter count written out from the paper's architecture."""
    linear = lambda i, o: i * o + o  # noqa: E731
    out = 2 * channels
    embed = channels * patch * patch * hidden + hidden  # the patch projection
    time = linear(freq, hidden) + linear(hidden, hidden)
    label = (classes + 1) * hidden  # with the null class
    block = linear(hidden, 3 * hidden) + linear(hidden, hidden) + linear(hidden, 4 * hidden) \
        + linear(4 * hidden, hidden) + linear(hidden, 6 * hidden)
    final = linear(hidden, 2 * hidden) + linear(hidden, patch * patch * out)
    return embed + time + label + depth * block + final


# the paper's parameter counts (millions, Table 1 / Sec. 4) and Gflops (Table 4) at 32 x 32 x 4
PAPER = {
    "s": (33, {2: 6.06, 4: 1.41, 8: 0.36}),
    "b": (130, {2: 23.01, 4: 5.56, 8: 1.42}),
    "l": (458, {2: 80.71, 4: 19.70, 8: 5.01}),
    "xl": (675, {2: 118.64, 4: 29.05, 8: 7.39}),
}


@pytest.mark.parametrize("size", ["s", "b", "l", "xl"])
def test_presets_have_the_papers_parameter_counts_and_gflops(size):
    from torch.utils.flop_counter import FlopCounterMode

    depth, hidden, heads = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16),
                            "xl": (28, 1152, 16)}[size]
    millions, gflops = PAPER[size]
    for patch in (2, 4, 8):
        with torch.device("meta"):  # no memory: shapes only
            model = getattr(DiT, f"{size}{patch}")()
            x, t, y = torch.empty(1, 4, 32, 32), torch.zeros(1).long(), torch.zeros(1).long()
        assert (model.depth, model.hidden_size, model.num_heads, model.patch_size) == (
            depth, hidden, heads, patch)
        assert model.config["num_classes"] == 1000 and model.learn_sigma
        count = sum(p.numel() for p in model.parameters())
        assert count == _closed_form_parameters(depth, hidden, heads, patch)
        assert abs(count / 1e6 - millions) < 1.0, (size, patch, count)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.eval()(x, t, y=y)
        measured = counter.get_total_flops() / 2e9  # multiply-adds, the paper's convention
        assert measured == pytest.approx(gflops[patch], rel=0.01, abs=0.006), (size, patch)


def test_a_subclass_overrides_one_factory():
    class WideMlp(DiT):
        def make_mlp(self, layer):
            return Mlp(self.hidden_size, 8 * self.hidden_size)

    model = WideMlp(**tiny().config)
    assert model.blocks[1].mlp.fc1.out_features == 256
    x, t, y = inputs()
    assert perturbed(model)(x, t, y=y).shape == (2, 8, 8, 8)


# ----------------------------------------------------------------------------- bad input
def test_bad_construction_is_named():
    with pytest.raises(ValueError, match="input_size=30 must be divisible by patch_size=4"):
        tiny(input_size=30, patch_size=4)
    with pytest.raises(ValueError, match="hidden_size=30 must be divisible by num_heads=4"):
        tiny(hidden_size=30)
    with pytest.raises(ValueError, match="hidden_size=18 must be divisible by 4"):
        tiny(hidden_size=18, num_heads=3)
    with pytest.raises(ValueError, match="mlp_ratio"):
        tiny(mlp_ratio=0)
    with pytest.raises(TypeError, match="learn_sigma"):
        tiny(learn_sigma=1)


def test_bad_inputs_are_named():
    model = tiny()
    x, t, y = inputs()
    with pytest.raises(ValueError, match="divisible by patch_size=2; got \\(8, 7\\)"):
        model(x[..., :7], t, y=y)
    with pytest.raises(ValueError, match="x has 3 channels but this DiT was built with in_channel"):
        model(x[:, :3], t, y=y)
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\] or -1"):
        model(x, t, y=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny(num_classes=None)(x, t, y=y)
    with pytest.raises(ValueError, match="without context_dim"):
        model(x, t, y=y, context=torch.randn(2, 3, 8))
    text = tiny(context_dim=8)
    with pytest.raises(ValueError, match=r"context must have shape \(2, L, 8\)"):
        text(x, t, y=y, context=torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="needs context="):
        text(x, t, y=y)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['mask'\\]"):
        model(x, t, y=y, mask=1)


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("make_loss", [
    lambda s: SimpleLoss(s, prediction="eps"),
    lambda s: SimpleLoss(s, prediction="x0"),
    lambda s: SimpleLoss(s, prediction="v"),
    lambda s: VLBLoss(s, variance="fixed_small"),
    lambda s: HybridLoss(s),
], ids=["eps", "x0", "v", "vlb", "hybrid"])
def test_every_loss_trains_a_dit(small_schedule, make_loss):
    loss_fn = make_loss(small_schedule)
    learned = isinstance(loss_fn, HybridLoss)
    model = perturbed(tiny(learn_sigma=learned))
    x0 = torch.rand(2, 4, 8, 8) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    loss = loss_fn(model, x0, y=torch.tensor([1, -1]), generator=generator)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model.blocks[1].mlp.fc2.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- samplers
SAMPLERS = {
    "ddpm-learned": lambda s: DDPMSampler(s, variance="learned_range", num_steps=4),
    "ddim": lambda s: DDIMSampler(s, 4, learn_sigma=True),
    "dpm-solver": lambda s: DPMSolverSampler(s, 4, learn_sigma=True),
    "unipc": lambda s: UniPCSampler(s, 4, learn_sigma=True),
    "pndm": lambda s: PNDMSampler(s, 4, learn_sigma=True),
    "deis": lambda s: DEISSampler(s, 4, learn_sigma=True),
    "sde": lambda s: SDESampler(s, 4, learn_sigma=True),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_samples_a_dit_with_guidance(small_schedule, name):
    sampler = SAMPLERS[name](small_schedule)
    model = perturbed(tiny()).eval()
    y = torch.tensor([0, 3])
    runs = [sampler.sample(model, (2, 4, 8, 8), model_kwargs={"y": y}, guidance_scale=2.0,
                           generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert runs[0].shape == (2, 4, 8, 8) and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])  # seeded: bitwise reproducible


def test_guided_model_equals_the_samplers_guidance_and_keeps_other_channels(small_schedule):
    model = perturbed(tiny()).eval()
    x, t, y = inputs()
    with torch.no_grad():
        cond, uncond = model(x, t, y=y), model(x, t, y=torch.full_like(y, -1))
        everything = GuidedModel(model, 4.0)(x, t, y=y)
        first_three = GuidedModel(model, 4.0, cfg_channels=3)(x, t, y=y)
    guided = uncond + 4.0 * (cond - uncond)
    torch.testing.assert_close(everything[:, :4], guided[:, :4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(everything[:, 4:], cond[:, 4:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first_three[:, :3], guided[:, :3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first_three[:, 3:], cond[:, 3:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first_three[:, 3], guided[:, 3])
    # sampling through it (no sampler guidance) equals the sampler's own guidance
    sampler = DDPMSampler(small_schedule, variance="learned_range", num_steps=5)
    kwargs = dict(generator=torch.Generator().manual_seed(0))
    ours = sampler.sample(GuidedModel(model, 3.0), (2, 4, 8, 8), model_kwargs={"y": y}, **kwargs)
    kwargs = dict(generator=torch.Generator().manual_seed(0))
    theirs = sampler.sample(model, (2, 4, 8, 8), model_kwargs={"y": y}, guidance_scale=3.0,
                            **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs class labels"):
        GuidedModel(model, 2.0)(x, t)
    with pytest.raises(ValueError, match="cfg_channels"):
        GuidedModel(model, 2.0, cfg_channels=0)


@pytest.mark.compile
@pytest.mark.slow
def test_the_compiled_sampling_loop_runs_a_dit_as_eager(small_schedule):
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = perturbed(tiny(depth=1)).eval()
    sampler = DDIMSampler(small_schedule, 6, learn_sigma=True)
    torch._dynamo.reset()
    counters.clear()
    runs = {}
    for compile in (True, False):
        with torch._dynamo.config.patch(error_on_recompile=True):
            runs[compile] = sampler.sample(
                model, (2, 4, 8, 8), model_kwargs={"y": torch.tensor([1, 2])},
                guidance_scale=2.0, generator=torch.Generator().manual_seed(0), compile=compile)
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-4, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not any(key.startswith("_orig_mod") for key in model.state_dict())


# ----------------------------------------------------------------------------- training
def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, y = inputs()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = perturbed(tiny(gradient_checkpointing=checkpointing)).train()
        model(x, t, y=y).square().mean().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-7)
    assert tiny(gradient_checkpointing=True).config["gradient_checkpointing"] is True


def _trainer(out_dir, **overrides):
    from ddpm_lib.data import ShapesDataset
    from ddpm_lib.training import Trainer

    torch.manual_seed(0)
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    model = tiny(in_channels=3, num_classes=4, gradient_checkpointing=True)
    kwargs = dict(batch_size=4, lr=1e-3, warmup_steps=2, ema_decay=0.9, out_dir=out_dir,
                  log_every=100, checkpoint_every=2, sample_every=None, progress=False,
                  tensorboard=False, seed=3,
                  sampler=DDPMSampler(schedule, variance="learned_range", num_steps=3))
    kwargs.update(overrides)
    return Trainer(model, HybridLoss(schedule), ShapesDataset(size=12, image_size=8, seed=0),
                   **kwargs)


def _weights(trainer):
    state = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state.update({f"ema.{k}": v.clone() for k, v in trainer.ema_model.state_dict().items()})
    return state


def test_trainer_ema_exact_resume_and_bf16(tmp_path):
    reference = _trainer(tmp_path / "once")
    reference.train(4)
    first = _trainer(tmp_path / "split")
    first.train(2)
    second = _trainer(tmp_path / "split")  # a new Trainer resumes from step 2's checkpoint
    assert second.step == 2 and second.resumed_from is not None
    second.train(4)
    a, b = _weights(reference), _weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.final_layer.linear.weight"], a["ema.final_layer.linear.weight"])
    images = second.sample(4, labels=torch.arange(4), guidance_scale=2.0)
    assert images.shape == (4, 3, 8, 8) and torch.isfinite(images).all()
    mixed = _trainer(tmp_path / "bf16", mixed_precision="bf16")
    mixed.train(2)
    assert all(torch.isfinite(p).all() for p in mixed.model.parameters())
    assert mixed.model.final_layer.linear.weight.abs().sum() > 0  # it learnt something
    from ddpm_lib.training.checkpoint import load_trained_model

    trained = load_trained_model(tmp_path / "split")  # rebuilt from the saved class name
    assert type(trained.model) is DiT and trained.learn_sigma
    for key, value in trained.model.state_dict().items():
        assert torch.equal(value, second.ema_model.state_dict()[key]), key


# ----------------------------------------------------------------------------- latent, text, files
def test_dit_in_an_autoencoders_latent_space(tmp_path):
    from ddpm_lib import AutoencoderKL, LatentDiffusion, Trainer

    torch.manual_seed(0)
    ae = AutoencoderKL(base_channels=8, channel_mults=(1, 2), norm_groups=4, latent_channels=4,
                       attention=False).eval()
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    latents = LatentDiffusion(ae)
    dataset = TensorDataset(images, torch.arange(8) % 4)
    latents.fit_scale_factor(dataset)
    data = latents.encode_dataset(dataset, tmp_path / "latents", progress=False)
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    dit = tiny()  # 4 x 8 x 8 latents of 3 x 16 x 16 images
    trainer = Trainer(dit, HybridLoss(schedule), data, batch_size=4, out_dir=tmp_path / "run",
                      random_flip=False, warmup_steps=0, lr=1e-3, log_every=100,
                      checkpoint_every=100, progress=False, tensorboard=False)
    trainer.train(2)
    sampler = DDPMSampler(schedule, variance="learned_range", num_steps=3, clip_denoised=False)
    decoded, z = latents.sample(sampler, trainer.ema_model, 2, model_kwargs={"y": torch.arange(2)},
                                generator=torch.Generator().manual_seed(0), return_latents=True)
    assert z.shape == (2, 4, 8, 8) and decoded.shape == (2, 3, 16, 16)
    torch.testing.assert_close(decoded, latents.decode(z), rtol=0, atol=0)


def test_text_conditioned_dit_masks_padding_and_saves(tmp_path):
    from ddpm_lib import TextConditionedUNet, TextEncoder

    torch.manual_seed(0)
    encoder = TextEncoder(dim=16, num_layers=1, num_heads=2, max_length=16)
    model = TextConditionedUNet(perturbed(tiny(context_dim=16, num_classes=None)), encoder).eval()
    x, t, _ = inputs()
    text = model.encode_prompts(["a red circle", ""])
    out = model(x, t, **text)
    assert out.shape == (2, 8, 8, 8)
    other = model(x, t, **model.encode_prompts(["a blue square", ""]))
    assert not torch.allclose(out[0], other[0]) and torch.allclose(out[1], other[1])
    # padding never changes the output: two more padding tokens, masked
    padded = {"context": torch.cat([text["context"], torch.randn(2, 2, 16)], dim=1),
              "context_mask": torch.cat([text["context_mask"], torch.zeros(2, 2).bool()], dim=1),
              "context_pooled": text["context_pooled"]}
    torch.testing.assert_close(model(x, t, **padded), out, rtol=1e-5, atol=1e-6)
    loss = HybridLoss(NoiseSchedule.linear(50))(model, x, **text)
    loss.backward()
    assert encoder.token_embedding.weight.grad.abs().sum() > 0  # trained jointly
    model.save_pretrained(tmp_path / "t2i")
    loaded = TextConditionedUNet.from_pretrained(tmp_path / "t2i")
    assert type(loaded.unet) is DiT and loaded.config == model.config
    assert torch.equal(loaded(x, t, **loaded.encode_prompts(["a red circle", ""])), out)


def test_a_text_conditioned_dit_trains_and_reloads_from_its_checkpoint(tmp_path):
    from ddpm_lib import CaptionedShapesDataset, TextConditionedUNet, TextEncoder, Trainer
    from ddpm_lib.training.checkpoint import load_trained_model

    torch.manual_seed(0)
    model = TextConditionedUNet(
        tiny(in_channels=3, context_dim=16, num_classes=None, learn_sigma=False),
        TextEncoder(dim=16, num_layers=1, num_heads=2, max_length=96))
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    trainer = Trainer(model, SimpleLoss(schedule), CaptionedShapesDataset(size=8, image_size=8),
                      batch_size=4, warmup_steps=0, out_dir=tmp_path / "run", log_every=100,
                      checkpoint_every=100, progress=False, tensorboard=False)
    trainer.train(2)
    trained = load_trained_model(tmp_path / "run")  # the saved config names the DiT
    assert type(trained.model.unet) is DiT
    for key, value in trained.model.state_dict().items():
        assert torch.equal(value, trainer.ema_model.state_dict()[key]), key


def test_save_and_load_bitwise(tmp_path):
    model = perturbed(tiny(context_dim=None, num_classes=3)).eval()
    model.save_pretrained(tmp_path / "dit")
    loaded = DiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == model.config and type(loaded) is DiT
    assert "pos_embed" not in loaded.state_dict()  # fixed, rebuilt: not saved
    x, t, _ = inputs()
    y = torch.tensor([2, -1])
    assert torch.equal(loaded(x, t, y=y), model(x, t, y=y))
    assert resolve_model_class("DiT") is DiT
    from ddpm_lib.training.checkpoint import load_trained_model

    trained = load_trained_model(tmp_path / "dit")
    assert type(trained.model) is DiT and trained.variance == "learned_range"
    with pytest.raises(ValueError, match="describes a DiT, not a UNet"):
        resolve_model_class("UNet").from_pretrained(tmp_path / "dit")
    with pytest.raises(ValueError, match="not a ddpm_lib model class"):
        resolve_model_class("Transformer")
