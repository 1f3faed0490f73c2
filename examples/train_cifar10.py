"""
The DDPM paper's CIFAR-10 recipe
================================

Ho et al. 2020, Appendix B, for a GPU and the data on disk. This example is shown but not run
when the documentation is built (it needs a GPU and the CIFAR-10 files).

.. code-block:: bash

    # one GPU
    python examples/train_cifar10.py --data-root ~/data --out runs/cifar10
    # 8 GPUs on one machine (the global batch stays 128: 16 per GPU)
    torchrun --nproc_per_node 8 examples/train_cifar10.py --data-root ~/data --out runs/cifar10


The data root must hold ``cifar-10-batches-py/`` (extract cifar-10-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html); nothing is downloaded.

The recipe: the 35.7M-parameter UNet (channels 128, multipliers 1,2,2,2, two residual blocks per
resolution, self-attention at 16x16, dropout 0.1), T = 1000 linear betas 1e-4..0.02, L_simple
with eps-prediction, Adam at 2e-4 with 5000 warm-up steps, batch 128, gradient clipping at 1,
EMA 0.9999, random horizontal flips, 800k steps. The paper reports FID 3.17 with the full
1000-step ancestral sampler. Stop at any time; running the same command again resumes exactly.
Afterwards: ``ddpm-lib sample runs/cifar10 --num 64 --out grid.png``, or 50k samples for FID with
``ddpm-lib sample runs/cifar10 --steps 1000 --num 50000 --batch-size 1000 --npz samples.npz``.
"""

from __future__ import annotations


import torch

from ddpm_lib import DDPMSampler, NoiseSchedule, SimpleLoss, Trainer, UNet
from ddpm_lib.data import torchvision_dataset

from _common import parser as example_parser  # plain-text --help from this docstring


def main() -> None:
    parser = example_parser(__doc__)
    parser.add_argument("--data-root", required=True, help="folder with cifar-10-batches-py/")
    parser.add_argument("--out", default="runs/cifar10",
                        help="output folder; the same command resumes (default: runs/cifar10)")
    parser.add_argument("--steps", type=int, default=800_000,
                        help="total steps (default: 800000, the paper's)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no",
                        help="bf16 roughly doubles the speed on recent GPUs (the paper used fp32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)  # the model's initialisation and dropout
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dataset = torchvision_dataset("cifar10", args.data_root, train=True)  # 50k images in [-1, 1]
    schedule = NoiseSchedule.linear(1000, beta_start=1e-4, beta_end=0.02)
    model = UNet.ddpm_cifar10()
    trainer = Trainer(
        model, SimpleLoss(schedule, prediction="eps"), dataset,
        batch_size=128, lr=2e-4, warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999,
        mixed_precision=args.mixed_precision, out_dir=args.out, log_every=1000,
        checkpoint_every=10_000, sample_every=50_000, num_samples=64,
        sampler=DDPMSampler(schedule, num_steps=250), seed=args.seed, random_flip=True,
    )
    trainer.train(args.steps)


if __name__ == "__main__":
    main()
