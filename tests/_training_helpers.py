"""Stand-ins for the tests of the Trainer: a tiny model and loss following the library's contracts.

Also runnable as a script (``python tests/_training_helpers.py MODE OUT_DIR STEPS``), so the
resume, kill and DDP tests can train in fresh processes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib.data import CaptionedShapesDataset, ShapesDataset  # noqa: E402
from ddpm_lib.schedule import NoiseSchedule  # noqa: E402


class TinyNet(nn.Module):
    """``model(x_t, t, y=None)``: two convolutions conditioned on t (and the class, -1 = null)."""

    def __init__(
        self, channels: int = 3, hidden: int = 8, num_timesteps: int = 50,
        num_classes: int | None = None, dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time = nn.Embedding(num_timesteps, hidden)
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(x) + self.time(t)[:, :, None, None]
        if self.label is not None:
            if y is None:
                y = torch.full_like(t, -1)
            h = h + self.label(y + 1)[:, :, None, None]  # index 0 is the null class
        self.calls += 1
        return self.out(self.dropout(torch.nn.functional.silu(h)))


class TinyTextNet(TinyNet):
    """A tiny text-to-image stand-in: ``encode_prompts`` embeds UTF-8 bytes and averages them."""

    def __init__(self, hidden: int = 8, num_timesteps: int = 50, dropout: float = 0.0) -> None:
        super().__init__(hidden=hidden, num_timesteps=num_timesteps, dropout=dropout)
        self.byte_embedding = nn.Embedding(257, hidden)  # 0 pads, byte b is b + 1
        self.text_proj = nn.Linear(hidden, hidden)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        encoded = [list(prompt.encode("utf-8")) for prompt in prompts]
        length = max(1, max(len(codes) for codes in encoded))
        tokens = torch.zeros(len(prompts), length, dtype=torch.long)
        for row, codes in enumerate(encoded):
            tokens[row, : len(codes)] = torch.tensor(codes, dtype=torch.long) + 1
        tokens = tokens.to(self.byte_embedding.weight.device)
        mask = (tokens > 0).unsqueeze(-1).float()  # (B, L, 1)
        pooled = (self.byte_embedding(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return {"text": self.text_proj(pooled)}  # (B, hidden)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(x) + self.time(t)[:, :, None, None]
        if text is not None:
            h = h + text[:, :, None, None]
        self.calls += 1
        return self.out(self.dropout(torch.nn.functional.silu(h)))


class TinyLoss:
    """``loss_fn(model, x0, t=None, noise=None, reduction="mean", generator=None, **kw)``: L_simple."""

    prediction = "eps"

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule

    def __call__(self, model, x0, t=None, noise=None, reduction="mean", generator=None, **kwargs):
        if t is None:
            t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), generator=generator,
                              device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = self.schedule.q_sample(x0, t, noise)
        per_sample = (model(x_t, t, **kwargs) - noise).pow(2).flatten(1).mean(1)
        return per_sample.mean() if reduction == "mean" else per_sample


def make_trainer(out_dir, *, conditional=True, dropout=0.1, batch_size=8, text=False, **overrides):
    """The configuration shared by the resume, kill and DDP tests (tiny and fast).

    ``text=True``: the text stand-in on captioned shapes (caption dropout 0.3), else the
    class-conditional (or unconditional) TinyNet on the shapes.
    """
    from ddpm_lib.training import Trainer

    torch.manual_seed(1234)  # what a user script does; the model init and dropout use it
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    if text:
        model: nn.Module = TinyTextNet(dropout=dropout)
        dataset = CaptionedShapesDataset(size=36, image_size=8, seed=0)
        overrides = {"caption_dropout": 0.3, **overrides}
    else:
        model = TinyNet(num_classes=4 if conditional else None, dropout=dropout)
        dataset = ShapesDataset(size=36, image_size=8, seed=0)  # 4.5 global batches an epoch
    kwargs = dict(
        batch_size=batch_size, lr=1e-2, warmup_steps=3, ema_decay=0.9, out_dir=out_dir,
        log_every=2, checkpoint_every=3, progress=False, tensorboard=False, class_dropout=0.3,
        seed=7,
    )
    kwargs.update(overrides)
    return Trainer(model, TinyLoss(schedule), dataset, **kwargs)


def make_autoencoder_trainer(out_dir, posterior_mean=False, adaptive_weight=True, **overrides):
    """A tiny AutoencoderKL trained with the PatchGAN discriminator on from step 2.

    ``posterior_mean``: decode the posterior's mean instead of a sample, and
    ``adaptive_weight=False``: a fixed weight of the adversarial term instead of LDM's ratio of
    gradient norms of each process's share of the batch, so that nothing is drawn from the
    per-rank loss generator, nothing is a non-linear function of a rank's share, and a run
    does not depend on the world size."""
    from ddpm_lib.autoencoder_loss import AutoencoderLoss
    from ddpm_lib.models.autoencoder import AutoencoderKL
    from ddpm_lib.training import Trainer

    class PosteriorMeanAutoencoderKL(AutoencoderKL):
        def forward(self, x, sample_posterior=True, generator=None):
            return super().forward(x, sample_posterior=False)

    torch.manual_seed(1234)
    model_class = PosteriorMeanAutoencoderKL if posterior_mean else AutoencoderKL
    model = model_class(base_channels=8, channel_mults=(1, 2), norm_groups=4, latent_channels=2)
    loss = AutoencoderLoss(
        kl_weight=1e-3, discriminator=dict(base_channels=8, num_layers=1, norm_groups=4),
        adversarial_start=2, discriminator_lr=1e-3, adaptive_weight=adaptive_weight,
    )
    dataset = ShapesDataset(size=20, image_size=8, seed=0)
    kwargs = dict(
        batch_size=4, lr=2e-3, warmup_steps=2, ema_decay=0.9, out_dir=out_dir, log_every=2,
        checkpoint_every=3, progress=False, tensorboard=False, seed=3,
    )
    kwargs.update(overrides)
    return Trainer(model, loss, dataset, **kwargs)


def autoencoder_state_of(trainer) -> dict[str, torch.Tensor]:
    """state_of plus the discriminator's weights and Adam moments (the Trainer's optimizer)."""
    out = state_of(trainer)
    loss_state = trainer.loss_fn.state_dict()
    out.update({f"disc.{k}": v.clone() for k, v in loss_state["discriminator"].items()})
    optimizer_state = trainer.auxiliary_optimizers["discriminator"].state_dict()
    for index, moments in optimizer_state["state"].items():
        for key, value in moments.items():
            out[f"disc_adam.{index}.{key}"] = torch.as_tensor(value).clone()
    out["loss_step"] = torch.tensor(loss_state["step"])
    return out


def state_of(trainer) -> dict[str, torch.Tensor]:
    """Model and EMA weights, flattened into one dict of tensors."""
    out = {f"model.{k}": v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v.detach().cpu().clone() for k, v in trainer.ema_model.state_dict().items()})
    return out


def _end_distributed_rank() -> None:
    """Under torchrun, once this rank's results are on disk: wait for the other ranks, destroy
    the process group and exit at once. Skipping the interpreter's teardown, where Gloo's
    threads have been seen to abort a finished rank ("terminate called without an active
    exception", SIGABRT), keeps a run whose numbers are right from failing."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str]) -> None:
    mode, out_dir, steps = argv[0], argv[1], int(argv[2])
    torch.set_num_threads(1)
    if mode in ("train", "train-text"):  # train (resuming if a checkpoint exists), save weights
        trainer = make_trainer(out_dir, text=mode == "train-text")
        trainer.train(steps)
        torch.save(state_of(trainer), Path(out_dir) / "final.pt")
    elif mode == "autoencoder":  # the same with AutoencoderKL + AutoencoderLoss(discriminator)
        trainer = make_autoencoder_trainer(out_dir)
        trainer.train(steps)
        torch.save(autoencoder_state_of(trainer), Path(out_dir) / "final.pt")
    elif mode == "autoencoder-ddp":  # under torchrun; rank 1 starts from another discriminator
        trainer = make_autoencoder_trainer(out_dir, posterior_mean=True, adaptive_weight=False,
                                           checkpoint_every=100)
        if trainer.dist.rank == 1:
            with torch.no_grad():
                for parameter in trainer.loss_fn.discriminator.parameters():
                    parameter.add_(0.1)
        trainer.train(steps)
        torch.save(autoencoder_state_of(trainer), Path(out_dir) / f"rank{trainer.dist.rank}.pt")
        _end_distributed_rank()
    elif mode in ("ddp", "ddp-text"):  # under torchrun: half the steps, then a resume (no dropout)
        text = mode == "ddp-text"
        make_trainer(out_dir, dropout=0.0, checkpoint_every=100, text=text).train(steps // 2)
        trainer = make_trainer(out_dir, dropout=0.0, checkpoint_every=100, text=text)
        assert trainer.step == steps // 2, trainer.step
        trainer.train(steps)
        torch.save(state_of(trainer), Path(out_dir) / f"rank{trainer.dist.rank}.pt")
        _end_distributed_rank()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
