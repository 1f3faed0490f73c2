"""AutoencoderKL: shapes, the posterior's closed forms, saving, bad input, diffusers parity."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ddpm_lib import AutoencoderKL, DiagonalGaussian
from ddpm_lib.models.layers import ResBlock

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> AutoencoderKL:
    config = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4)
    config.update(overrides)
    return AutoencoderKL(**config)


def randomize(model: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Perturb every parameter (zero-initialised convolutions would hide wiring mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model


# ------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("mults, factor", [((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_encode_decode_shapes(mults, factor, generator):
    ae = tiny(channel_mults=mults, latent_channels=3)
    assert ae.downsampling_factor == factor
    x = torch.randn(2, 3, 16, 24, generator=generator)
    posterior = ae.encode(x)
    assert isinstance(posterior, DiagonalGaussian)
    latent = (2, 3, 16 // factor, 24 // factor)
    for tensor in (posterior.mean, posterior.std, posterior.logvar, posterior.var):
        assert tensor.shape == latent
    z = posterior.sample(generator)
    assert z.shape == latent
    assert ae.decode(z).shape == (2, 3, 16, 24)
    reconstruction, returned = ae(x, generator=generator)
    assert reconstruction.shape == x.shape and returned.mean.shape == latent
    assert posterior.kl().shape == (2,)


def test_forward_uses_mode_without_sampling_and_backpropagates(generator):
    ae = randomize(tiny())
    x = torch.randn(2, 3, 8, 8, generator=generator)
    out = ae(x, sample_posterior=False)
    torch.testing.assert_close(out.sample, ae.decode(ae.encode(x).mean))
    sampled = ae(x, generator=torch.Generator().manual_seed(1)).sample
    assert not torch.allclose(sampled, out.sample)
    (sampled.square().mean() + out.posterior.kl().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ae.parameters())


def test_out_channels_and_no_attention_or_quant_convs(generator):
    ae = tiny(in_channels=1, out_channels=2, attention=False, use_quant_conv=False,
              use_post_quant_conv=False)
    assert ae.quant_conv is None and ae.post_quant_conv is None
    assert not any("qkv" in key for key in ae.state_dict())
    assert ae(torch.randn(1, 1, 8, 8, generator=generator)).sample.shape == (1, 2, 8, 8)


# ------------------------------------------------------------------------------- posterior
def test_kl_and_nll_match_closed_forms(generator):
    mean = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    logvar = torch.randn(3, 2, 4, 4, generator=generator, dtype=torch.float64)
    posterior = DiagonalGaussian(mean, logvar)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected_kl = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(posterior.kl(), expected_kl)
    z = posterior.sample(generator)
    torch.testing.assert_close(posterior.nll(z), -q.log_prob(z).flatten(1).sum(1))
    # N(0, I) itself has zero KL; KL grows with |mean|
    assert DiagonalGaussian(torch.zeros(2, 4), torch.zeros(2, 4)).kl().abs().max() == 0
    assert torch.equal(posterior.mode(), mean)


def test_logvar_is_clamped_like_ldm():
    posterior = DiagonalGaussian(torch.zeros(1, 2), torch.tensor([[-100.0, 100.0]]))
    assert posterior.logvar.tolist() == [[-30.0, 20.0]]


def test_sample_is_reproducible_and_has_the_posterior_law():
    mean = torch.tensor([[[[1.5]], [[-2.0]]]]).expand(1, 2, 64, 64)
    logvar = torch.tensor([[[[0.0]], [[-1.0]]]]).expand(1, 2, 64, 64)
    posterior = DiagonalGaussian(mean, logvar)
    first = posterior.sample(torch.Generator().manual_seed(3))
    again = posterior.sample(torch.Generator().manual_seed(3))
    other = posterior.sample(torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # 4096 draws per channel: the sample mean is within 5 standard errors
    drawn_mean = first.mean(dim=(0, 2, 3))
    drawn_std = first.std(dim=(0, 2, 3))
    std = torch.tensor([1.0, torch.exp(torch.tensor(-0.5)).item()])
    assert ((drawn_mean - torch.tensor([1.5, -2.0])).abs() < 5 * std / 64).all()
    assert ((drawn_std / std - 1).abs() < 0.06).all()


def test_kl_is_float32_under_bf16():
    posterior = DiagonalGaussian(torch.ones(1, 2, dtype=torch.bfloat16),
                                 torch.zeros(1, 2, dtype=torch.bfloat16))
    assert posterior.kl().dtype == torch.float32
    assert posterior.kl().item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------- saving
def test_save_and_load_are_bitwise(tmp_path, generator):
    ae = randomize(tiny(latent_channels=3, attention=True))
    ae.save_pretrained(tmp_path / "ae")
    config = json.loads((tmp_path / "ae" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL" and config["latent_channels"] == 3
    loaded = AutoencoderKL.from_pretrained(tmp_path / "ae")
    assert loaded.config == ae.config
    for key, value in ae.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(2, 3, 8, 8, generator=generator)
    ae.eval()
    with torch.no_grad():
        assert torch.equal(ae(x, sample_posterior=False).sample,
                           loaded(x, sample_posterior=False).sample)
    assert AutoencoderKL(**ae.config).config == ae.config


def test_load_rejects_other_models_and_mismatched_weights(tmp_path):
    from ddpm_lib import UNet

    UNet(base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_resolutions=(),
         image_size=8, norm_groups=4).save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="describes a UNet"):
        AutoencoderKL.from_pretrained(tmp_path / "unet")
    tiny().save_pretrained(tmp_path / "a")
    tiny(base_channels=16).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="shape mismatch"):
        AutoencoderKL.from_pretrained(tmp_path / "a")


class WideSkipAutoencoder(AutoencoderKL):
    """A subclass that swaps one factory and adds a constructor argument."""

    def __init__(self, *args, skip_dropout: float = 0.0, **kwargs):
        self.skip_dropout = skip_dropout
        super().__init__(*args, **kwargs)
        self.register_config(skip_dropout=skip_dropout)

    def make_res_block(self, in_channels, out_channels, level, part):
        return ResBlock(in_channels, out_channels, None, dropout=self.skip_dropout,
                        norm_groups=self.norm_groups)


def test_subclass_overrides_a_factory_and_round_trips(tmp_path):
    ae = WideSkipAutoencoder(base_channels=8, channel_mults=(1, 2), norm_groups=4,
                             skip_dropout=0.25)
    assert ae.encoder.down[0].blocks[0].norm2.dropout == 0.25
    ae.save_pretrained(tmp_path)
    loaded = WideSkipAutoencoder.from_pretrained(tmp_path)
    assert loaded.skip_dropout == 0.25 and loaded.config == ae.config


# ------------------------------------------------------------------------------- bad input
def test_bad_input_says_what_to_change():
    ae = tiny(channel_mults=(1, 2, 2))  # f = 4
    with pytest.raises(ValueError, match="divisible by the downsampling factor f = 4"):
        ae.encode(torch.zeros(1, 3, 10, 8))
    with pytest.raises(ValueError, match=r"in_channels=3.*\(1, 1, 8, 8\)"):
        ae.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        ae.encode(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"latent_channels=4.*\(1, 3, 2, 2\)"):
        ae.decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="latent_channels=4"):
        ae.decode(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="norm_groups=32 must divide"):
        AutoencoderKL(base_channels=8)
    with pytest.raises(ValueError, match="channel_mults must not be empty"):
        tiny(channel_mults=())
    with pytest.raises(TypeError, match="attention must be a bool"):
        tiny(attention=1)


def test_resblock_without_embedding_keeps_unet_layout():
    block = ResBlock(4, 8, None, norm_groups=2)
    assert block.emb_proj is None and block(torch.zeros(1, 4, 2, 2)).shape == (1, 8, 2, 2)
    with_emb = ResBlock(4, 8, 16, norm_groups=2)
    assert "emb_proj.weight" in with_emb.state_dict()
    with pytest.raises(TypeError, match="pass emb"):
        with_emb(torch.zeros(1, 4, 2, 2))


# ------------------------------------------------------------------------------- diffusers
def diffusers_vae(**overrides):
    diffusers = pytest.importorskip("diffusers")
    config = dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
        layers_per_block=2, latent_channels=4, norm_num_groups=4,
    )
    config.update(overrides)
    torch.manual_seed(0)
    return randomize(diffusers.AutoencoderKL(**config), seed=1, scale=0.1).eval()


@pytest.mark.parametrize("overrides", [
    {},
    {"mid_block_add_attention": False, "use_quant_conv": False, "use_post_quant_conv": False,
     "layers_per_block": 1},
    {"in_channels": 1, "out_channels": 2, "block_out_channels": (8, 8), "latent_channels": 2,
     "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2},
])
def test_diffusers_conversion_has_equal_outputs(overrides, generator):
    from ddpm_lib import autoencoder_from_diffusers

    vae = diffusers_vae(**overrides)
    ae = autoencoder_from_diffusers(vae)
    assert not ae.training
    channels = vae.config.in_channels
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    assert ae.downsampling_factor == factor
    # 32x32 reaches the fused transposed-convolution path of Upsample as well
    x = torch.rand(2, channels, 32, 32, generator=generator) * 2 - 1
    z = torch.randn(2, vae.config.latent_channels, 32 // factor, 32 // factor, generator=generator)
    with torch.no_grad():
        theirs = vae.encode(x).latent_dist
        ours = ae.encode(x)
        torch.testing.assert_close(ours.mean, theirs.mean, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.std, theirs.std, atol=1e-4, rtol=0)
        torch.testing.assert_close(ae.decode(z), vae.decode(z).sample, atol=1e-4, rtol=0)
    assert ours.mean.abs().max() > 0.1  # not a trivially zero comparison


@pytest.mark.parametrize("overrides, setting", [
    ({"act_fn": "gelu"}, "act_fn='gelu'"),
    ({"block_out_channels": (8, 12, 16)}, "block_out_channels"),
])
def test_diffusers_configuration_we_cannot_convert_is_named(overrides, setting):
    from ddpm_lib import autoencoder_from_diffusers

    vae = diffusers_vae(**overrides, norm_num_groups=4)
    with pytest.raises(ValueError, match=setting):
        autoencoder_from_diffusers(vae)


def test_diffusers_conversion_rejects_other_types():
    from ddpm_lib import UNet, autoencoder_from_diffusers

    with pytest.raises(TypeError, match="diffusers AutoencoderKL"):
        autoencoder_from_diffusers(UNet(base_channels=8, channel_mults=(1,), image_size=8,
                                        attention_resolutions=(), norm_groups=4))


# ------------------------------------------------------------------------------- the loss
class FixedAutoencoder(nn.Module):
    """Returns a given reconstruction and posterior: the loss's arithmetic in isolation."""

    def __init__(self, reconstruction, posterior):
        super().__init__()
        self.reconstruction, self.posterior = reconstruction, posterior

    def forward(self, x, sample_posterior=True, generator=None):
        return self.reconstruction, self.posterior


def test_loss_is_l1_plus_l2_plus_kl_per_image_value(generator):
    from ddpm_lib import AutoencoderLoss

    x = torch.rand(3, 2, 4, 4, generator=generator) * 2 - 1
    reconstruction = torch.rand(3, 2, 4, 4, generator=generator) * 2 - 1
    posterior = DiagonalGaussian(torch.randn(3, 1, 2, 2, generator=generator),
                                 torch.randn(3, 1, 2, 2, generator=generator))
    model = FixedAutoencoder(reconstruction, posterior)
    loss_fn = AutoencoderLoss(kl_weight=0.1, l2_weight=0.5)
    per_sample = loss_fn(model, x, reduction="none")
    error = (reconstruction - x).flatten(1)
    expected = error.abs().mean(1) + 0.5 * error.square().mean(1) + 0.1 * posterior.kl() / 32
    torch.testing.assert_close(per_sample, expected)
    torch.testing.assert_close(loss_fn(model, x), expected.mean())
    torch.testing.assert_close(loss_fn(model, x, reduction="sum"), expected.sum())


def tiny_pair(start=0, **loss_kwargs):
    from ddpm_lib import AutoencoderLoss

    torch.manual_seed(0)
    ae = randomize(tiny(latent_channels=2), seed=2, scale=0.05)
    loss_fn = AutoencoderLoss(
        kl_weight=1e-2, adversarial_start=start,
        discriminator=dict(base_channels=8, num_layers=1, norm_groups=4), discriminator_lr=1e-2,
        **loss_kwargs,
    )
    return ae, loss_fn


def test_adversarial_term_uses_ldm_adaptive_weight(generator):
    ae, loss_fn = tiny_pair(discriminator_weight=0.7)
    x = torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1
    total = loss_fn(ae, x, reduction="none", generator=torch.Generator().manual_seed(5))
    # the same quantities by hand
    reconstruction, posterior = ae(x, generator=torch.Generator().manual_seed(5))
    rec = (reconstruction - x).abs().flatten(1).mean(1)
    adv = -loss_fn.discriminator(reconstruction).flatten(1).mean(1)
    last = ae.decoder.out.conv.weight
    g_rec = torch.autograd.grad(rec.mean(), last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv.mean(), last, retain_graph=True)[0]
    weight = 0.7 * g_rec.norm() / (g_adv.norm() + 1e-4)
    expected = rec + 1e-2 * posterior.kl() / x[0].numel() + weight * adv
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(loss_fn.last_adaptive_weight, weight)
    # the generator's backward leaves the discriminator's gradients alone
    total.mean().backward()
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())
    # evaluation: no adversarial term, no pending discriminator step
    ae.eval()
    loss_fn._pending = None
    with torch.no_grad():
        evaluated = loss_fn(ae, x, reduction="none", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(evaluated, (rec + 1e-2 * posterior.kl() / x[0].numel()).detach())
    assert loss_fn._pending is None


def test_discriminator_takes_one_hinge_adam_step_after_the_start(generator):
    """Through the hook: auxiliary_loss is the hinge loss of the last call (None before the
    start), and one Adam step with the declared options is the reference's step."""
    import copy

    ae, loss_fn = tiny_pair(start=1)
    ((name, (module, options)),) = loss_fn.auxiliary_modules().items()
    assert name == "discriminator" and module is loss_fn.discriminator
    assert options == {"lr": 1e-2, "betas": (0.5, 0.9), "fused": None}
    optimizer = torch.optim.Adam(module.parameters(), **options)
    x = torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1
    before = copy.deepcopy(loss_fn.discriminator)
    loss_fn(ae, x).backward()
    assert loss_fn.auxiliary_loss("discriminator") is None  # step 0 < start
    loss_fn.update()
    assert loss_fn.step == 1
    for a, b in zip(before.parameters(), loss_fn.discriminator.parameters()):
        assert torch.equal(a, b)
    reference = copy.deepcopy(loss_fn.discriminator)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2, betas=(0.5, 0.9))
    loss_fn(ae, x, generator=torch.Generator().manual_seed(9))
    reconstruction = ae(x, generator=torch.Generator().manual_seed(9)).sample.detach()
    hook_loss = loss_fn.auxiliary_loss("discriminator")
    assert loss_fn.auxiliary_loss("discriminator") is None  # one step per training call
    hook_loss.backward()
    optimizer.step()
    loss_fn.update()
    hinge = 0.5 * (torch.relu(1 - reference(x)).mean() + torch.relu(1 + reference(reconstruction)).mean())
    hinge.backward()
    reference_optimizer.step()
    assert loss_fn.step == 2
    torch.testing.assert_close(loss_fn.last_discriminator_loss, hinge.detach())
    changed = []
    for a, b, c in zip(reference.parameters(), loss_fn.discriminator.parameters(),
                       before.parameters()):
        torch.testing.assert_close(a, b)
        changed.append(not torch.equal(b, c))
    # all but the last bias, whose hinge gradient is 0.5 * (P(fake > -1) - P(real < 1)) = 0 here
    assert changed[:-1] == [True] * (len(changed) - 1)
    with pytest.raises(ValueError, match="no trainable part 'critic'"):
        loss_fn.auxiliary_loss("critic")


def test_loss_state_round_trip_and_mismatch():
    from ddpm_lib import AutoencoderLoss

    ae, loss_fn = tiny_pair()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    loss_fn(ae, x).backward()
    loss_fn.update()
    state = loss_fn.state_dict()
    assert set(state) == {"step", "discriminator"}  # the optimizer is the Trainer's
    _, other = tiny_pair()
    other.load_state_dict({**state, "optimizer": {}, "scaler": {}})  # an earlier version's
    assert other.step == 1
    for key, value in loss_fn.discriminator.state_dict().items():
        assert torch.equal(value, other.discriminator.state_dict()[key])
    with pytest.raises(ValueError, match="has a discriminator but this loss has none"):
        AutoencoderLoss().load_state_dict(state)
    assert AutoencoderLoss().state_dict() == {"step": 0}
    assert AutoencoderLoss().auxiliary_modules() == {}


def test_loss_bad_arguments():
    from ddpm_lib import AutoencoderLoss

    with pytest.raises(ValueError, match="kl_weight"):
        AutoencoderLoss(kl_weight=-1.0)
    with pytest.raises(TypeError, match="discriminator must be"):
        AutoencoderLoss(discriminator="patch")
    with pytest.raises(ValueError, match="adversarial_start"):
        AutoencoderLoss(adversarial_start=-1)
    ae = tiny()
    with pytest.raises(ValueError, match="reduction"):
        AutoencoderLoss()(ae, torch.zeros(1, 3, 8, 8), reduction="avg")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['y'\]"):
        AutoencoderLoss()(ae, torch.zeros(1, 3, 8, 8), y=torch.zeros(1))
    from ddpm_lib.models import PatchDiscriminator

    with pytest.raises(ValueError, match="too small"):
        PatchDiscriminator(base_channels=8, norm_groups=4, num_layers=3)(torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------------------- the Trainer
def test_trainer_trains_the_autoencoder(tmp_path):
    from ddpm_lib import AutoencoderLoss, Trainer
    from ddpm_lib.data import ShapesDataset

    torch.manual_seed(0)
    ae = tiny(latent_channels=2)
    dataset = ShapesDataset(size=32, image_size=8, seed=0)
    images = torch.stack([dataset[i][0] for i in range(16)])

    def error(model):
        model.eval()
        with torch.no_grad():
            return (model(images, sample_posterior=False).sample - images).abs().mean().item()

    before = error(ae)
    trainer = Trainer(ae, AutoencoderLoss(kl_weight=1e-4), dataset, batch_size=8, lr=3e-3,
                      warmup_steps=5, out_dir=tmp_path, log_every=10, checkpoint_every=1000,
                      progress=False, tensorboard=False, ema_decay=0.9)
    trainer.train(60)
    after = error(trainer.model)
    assert after < 0.6 * before, (before, after)
    logged = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged[-1] < logged[0]
    # the Trainer exported the EMA autoencoder, which loads back as an AutoencoderKL
    assert AutoencoderKL.from_pretrained(tmp_path / "ema_model").config == ae.config


@pytest.mark.slow
def test_resume_with_the_discriminator_across_a_restart_is_bitwise(tmp_path):
    """8 steps at once == 4 steps, a new process, 4 more (autoencoder, EMA, discriminator and
    its Adam moments, loss step), with the adversarial phase starting at step 2."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _training_helpers import autoencoder_state_of, make_autoencoder_trainer
    from test_training import _assert_bitwise_equal, _run_helper

    torch.set_num_threads(1)
    reference = make_autoencoder_trainer(tmp_path / "once")
    reference.train(8)
    expected = autoencoder_state_of(reference)
    assert reference.loss_fn.step == 8 and reference.loss_fn.last_discriminator_loss is not None

    _run_helper("autoencoder", tmp_path / "split", 4)
    half = torch.load(tmp_path / "split" / "final.pt", weights_only=True)
    assert not torch.equal(half["disc.layers.0.weight"], expected["disc.layers.0.weight"])
    _run_helper("autoencoder", tmp_path / "split", 8)
    _assert_bitwise_equal(torch.load(tmp_path / "split" / "final.pt", weights_only=True), expected)


@pytest.mark.slow
def test_ddp_keeps_autoencoder_and_discriminator_replicas_identical(tmp_path):
    """2 gloo ranks under torchrun; rank 1's discriminator starts perturbed: rank 0's initial
    weights are broadcast and the discriminator's gradients averaged, so every replica ends
    equal (autoencoder, EMA, discriminator and its Adam moments), and equal to one process
    with the same global batch (up to the rounding of the gradient averages; the posterior's
    mean is decoded and the adversarial weight fixed, which makes the loss world-size
    invariant: posterior samples come from per-rank generators, LDM's adaptive weight is a
    ratio of each rank's gradient norms)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs gloo")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_training_ddp import HELPER, REPO, _free_port

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(HELPER), "autoencoder-ddp", str(tmp_path), "4",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and "disc_adam.0.exp_avg" in rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    from _training_helpers import autoencoder_state_of, make_autoencoder_trainer

    torch.set_num_threads(1)
    one = make_autoencoder_trainer(tmp_path / "one", posterior_mean=True, adaptive_weight=False,
                                   checkpoint_every=100)
    one.train(4)
    assert one.loss_fn.last_discriminator_loss is not None  # the adversarial phase ran
    reference = autoencoder_state_of(one)
    assert reference.keys() == rank0.keys()
    differences = {key: (rank0[key].float() - reference[key].float()).abs().max().item()
                   for key in reference}
    assert max(differences.values()) < 1e-5, sorted(differences.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_with_the_discriminator(tmp_path, precision):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _training_helpers import make_autoencoder_trainer

    trainer = make_autoencoder_trainer(tmp_path, mixed_precision=precision)
    trainer.train(4)
    loss_fn = trainer.loss_fn
    assert torch.isfinite(loss_fn.last_discriminator_loss)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    from ddpm_lib.training import load_checkpoint

    state = load_checkpoint(trainer.latest_checkpoint()).state
    scaler = state["auxiliary"]["discriminator"]["scaler"]
    assert bool(scaler) == (precision == "fp16")  # float16 needs the discriminator's own scaler


def _digest(state) -> str:
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_adversarial_training_is_bitwise_the_run_recorded_before_the_hook(tmp_path, precision):
    """The discriminator trained through the Trainer's hook is bit for bit the run of the
    version whose AutoencoderLoss had its own optimizer (recorded: tests/data; the bits are
    those of one torch build and CPU, so another one skips)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _training_helpers import autoencoder_state_of, make_autoencoder_trainer

    reference = json.loads((Path(__file__).parent / "data" /
                            "autoencoder_adversarial_reference.json").read_text())
    if (torch.__version__, torch.backends.cpu.get_cpu_capability()) != (
            reference["torch"], reference["cpu_capability"]):
        pytest.skip(f"recorded with torch {reference['torch']} on {reference['cpu_capability']}")
    torch.set_num_threads(1)
    trainer = make_autoencoder_trainer(tmp_path, log_every=1, mixed_precision=precision)
    trainer.train(reference["steps"])
    run = reference["runs"][precision]
    logged = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == run["losses"]
    assert float(trainer.loss_fn.last_discriminator_loss) == run["disc_loss"]
    assert _digest(autoencoder_state_of(trainer)) == run["sha256"]


def test_a_checkpoint_with_the_loss_s_own_optimizer_state_resumes_exactly(tmp_path):
    """A checkpoint of the earlier layout (the discriminator's Adam and scaler states inside
    state["loss_fn"], no state["auxiliary"]) resumes to the uninterrupted run, bit for bit."""
    import sys
    from pathlib import Path

    from ddpm_lib.training import load_checkpoint, save_checkpoint

    sys.path.insert(0, str(Path(__file__).parent))
    from _training_helpers import autoencoder_state_of, make_autoencoder_trainer
    from test_training import _assert_bitwise_equal

    torch.set_num_threads(1)
    reference = make_autoencoder_trainer(tmp_path / "once")
    reference.train(6)
    expected = autoencoder_state_of(reference)
    make_autoencoder_trainer(tmp_path / "new").train(3)
    saved = load_checkpoint(tmp_path / "new" / "checkpoints" / "step_000000003")
    state = dict(saved.state)
    auxiliary = state.pop("auxiliary")["discriminator"]
    state["loss_fn"] = {**state["loss_fn"], "optimizer": auxiliary["optimizer"],
                        "scaler": auxiliary["scaler"]}
    save_checkpoint(tmp_path / "old" / "checkpoints", 3, saved.weights, state, saved.meta)
    resumed = make_autoencoder_trainer(tmp_path / "old")
    assert resumed.step == 3 and resumed.loss_fn.step == 3
    assert resumed.auxiliary_optimizers["discriminator"].state_dict()["state"]
    resumed.train(6)
    _assert_bitwise_equal(autoencoder_state_of(resumed), expected)
