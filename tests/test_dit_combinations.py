"""The DiT in the combinations test_dit.py does not cover: the score-model losses (an NCSN ladder,
EDM's preconditioned denoiser), the Trainer with gradient checkpointing and float16 mixed
precision, and the exact bound in bits/dim of a learned-variance DiT."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from test_dit import perturbed, tiny  # noqa: E402

from ddpm_lib import (  # noqa: E402
    DenoisingScoreMatchingLoss,
    EDMLoss,
    EDMPrecond,
    NoiseSchedule,
    SimpleLoss,
    Trainer,
    VENoiseLevels,
    VLBLoss,
)


@pytest.mark.parametrize("conditioning", ["sigma", "index"])
def test_denoising_score_matching_trains_a_dit(conditioning):
    model = perturbed(tiny(learn_sigma=False, num_classes=None))
    loss_fn = DenoisingScoreMatchingLoss(VENoiseLevels(0.01, 5.0, 10), conditioning=conditioning)
    x0 = torch.rand(3, 4, 8, 8) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    loss = loss_fn(model, x0, generator=generator)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.t_embedder.linear_1.weight.grad.abs().sum() > 0  # the level reaches the net


def test_edm_loss_trains_a_preconditioned_dit():
    denoiser = EDMPrecond(perturbed(tiny(learn_sigma=False)), sigma_data=0.5)
    x0 = torch.rand(3, 4, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, -1])
    loss = EDMLoss()(denoiser, x0, generator=torch.Generator().manual_seed(0), y=y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in denoiser.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # at sigma -> 0 the preconditioned denoiser returns its input (c_skip -> 1, c_out -> 0)
    with torch.no_grad():
        out = denoiser(x0, torch.full((3,), 1e-6), y=y)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def _trainer(out, **overrides):
    torch.manual_seed(0)
    model = perturbed(tiny(learn_sigma=False, in_channels=3,
                           gradient_checkpointing=overrides.pop("checkpointing", False)))
    data = TensorDataset(torch.rand(16, 3, 8, 8) * 2 - 1, torch.arange(16) % 4)
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    kwargs = dict(batch_size=4, lr=1e-3, warmup_steps=0, out_dir=out, log_every=100,
                  checkpoint_every=100, progress=False, tensorboard=False, seed=3,
                  ema_decay=0.9)
    kwargs.update(overrides)
    return Trainer(model, SimpleLoss(schedule), data, **kwargs)


def test_trainer_with_gradient_checkpointing_trains_the_same_weights(tmp_path):
    plain, checkpointed = _trainer(tmp_path / "a"), _trainer(tmp_path / "b", checkpointing=True)
    plain.train(2)
    checkpointed.train(2)
    for (name, a), b in zip(plain.model.state_dict().items(),
                            checkpointed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    fresh = _trainer(tmp_path / "c").model.state_dict()
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"],
                           plain.model.state_dict()["blocks.0.attn.qkv.weight"])


def test_trainer_float16_mixed_precision_trains_a_dit(tmp_path):
    trainer = _trainer(tmp_path / "fp16", mixed_precision="fp16")
    before = trainer.model.blocks[0].mlp.fc1.weight.detach().clone()
    trainer.train(2)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert not torch.equal(before, trainer.model.blocks[0].mlp.fc1.weight)
    assert trainer.scaler.is_enabled()


def test_bits_per_dim_of_a_learned_variance_dit_is_its_terms():
    """The exact bound's terms (one call per timestep) are the loss's per-timestep terms with
    the same noise, through the DiT's learned variance; the total adds the prior."""
    schedule = NoiseSchedule.linear(12, beta_start=1e-2, beta_end=0.5)
    model = perturbed(tiny()).eval()  # learn_sigma=True
    loss_fn = VLBLoss(schedule, variance="learned_range")
    x0 = (torch.rand(2, 4, 8, 8) * 2 - 1).round(decimals=1)
    y = torch.tensor([2, -1])
    with torch.no_grad():
        out = loss_fn.bits_per_dim(model, x0, y=y, return_terms=True,
                                   generator=torch.Generator().manual_seed(0))
        generator = torch.Generator().manual_seed(0)
        for step in range(schedule.num_timesteps - 1, -1, -1):  # the bound's draw order
            noise = torch.randn(x0.shape, generator=generator)
            term = loss_fn(model, x0, t=torch.full((2,), step), noise=noise, reduction="none",
                           y=y)
            torch.testing.assert_close(out["terms"][:, step], term, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["total"], out["prior"] + out["terms"].sum(1))
    assert (out["prior"] > 0).all() and torch.isfinite(out["total"]).all()
