"""A tiny DiT Trainer for the FSDP tests, also runnable under torchrun
(``python tests/_fsdp_helpers.py OUT_DIR STEP_A STEP_B``: resume in OUT_DIR, train to STEP_A,
then a new Trainer resumes and trains to STEP_B; rank 0 saves the full weights).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddpm_lib import DiT, NoiseSchedule, SimpleLoss  # noqa: E402
from ddpm_lib.data import ShapesDataset  # noqa: E402


def make_dit_trainer(out_dir, **overrides):
    """A 2-block DiT on 8 x 8 shapes, 4 classes; no dropout anywhere, so a run does not depend
    on the global RNG and resumes exactly at any number of processes."""
    from ddpm_lib.training import Trainer

    torch.manual_seed(1234)
    model = DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2,
                num_heads=2, num_classes=4, learn_sigma=False)
    with torch.no_grad():  # off adaLN-Zero's zeros, so every weight gets a gradient at once
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    kwargs = dict(batch_size=8, lr=3e-3, warmup_steps=2, ema_decay=0.9, out_dir=out_dir,
                  log_every=2, checkpoint_every=100, progress=False, tensorboard=False,
                  class_dropout=0.25, seed=5)
    kwargs.update(overrides)
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    return Trainer(model, SimpleLoss(schedule), ShapesDataset(size=40, image_size=8, seed=0),
                   **kwargs)


def main(out_dir: str, step_a: int, step_b: int) -> None:
    import torch.distributed as dist

    from ddpm_lib.training.fsdp import full_weights, is_sharded

    torch.set_num_threads(1)
    first = make_dit_trainer(out_dir, parallel="fsdp", sample_every=4)  # a grid from rank 0
    assert is_sharded(first.model), "expected a sharded model under torchrun"
    first.train(step_a)
    trainer = make_dit_trainer(out_dir, parallel="fsdp", sample_every=4)
    assert trainer.step == step_a, trainer.step
    trainer.train(step_b)
    weights = full_weights(trainer)  # every rank takes part; complete on rank 0
    if trainer.dist.is_main:
        flat = {f"{part}.{k}": v.clone() for part, state in weights.items() for k, v in state.items()}
        torch.save(flat, Path(out_dir) / "final.pt")
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip gloo's teardown (see _training_helpers._end_distributed_rank)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
