"""
Progressive distillation: from 16 sampling steps to 8, 4, 2 and 1
=================================================================

Train a small class-conditional DDPM (v-prediction) on the built-in shapes, then distil it
round by round (Salimans & Ho 2022): each student learns to take one DDIM step for two of its
teacher's, and becomes the next round's teacher. Everything runs through the
:class:`~ddpm_lib.Trainer` and resumes exactly when the script is started again. It writes
``runs/distill/grids.png`` (one class a column, two rows each): the teacher's 16-step DDIM,
then for N = 8, 4, 2, 1 the teacher's N-step DDIM above the N-step student (also
``grid_<N>.png``), and each student's pipeline folder
(``runs/distill/students/steps_<N>/student``, sampled by ``ddpm-lib sample FOLDER --sampler
saved``).

.. code-block:: bash

    pip install -e . && python examples/distill.py

The teacher trains for 1200 steps and each round for 250 (about 8 CPU minutes in all on one
core); beside the teacher's DDIM at the same step counts, the students keep the shapes where
DDIM at 2 and 1 steps gives blurs. With ``DDPM_LIB_QUICK=1`` (as when the documentation
is built) it trains for a few steps only, into ``runs/distill-quick/``, to show the pipeline
end to end.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _common import QUICK, run_folder  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser

from ddpm_lib import DDIMSampler, NoiseSchedule, SimpleLoss, Trainer, UNet, distill_progressive
from ddpm_lib.data import ShapesDataset, save_grid

TEACHER_STEPS = 16  # the first teacher's DDIM steps; the rounds give 8, 4, 2, 1


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__)
    default_out = run_folder("distill")
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument("--train-steps", type=int, default=20 if QUICK else 1200,
                        help="the teacher's training steps (default: 1200)")
    parser.add_argument("--round-steps", type=int, default=4 if QUICK else 250,
                        help="optimizer steps of each distillation round (default: 250)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--no-progress", action="store_true", default=QUICK,
                        help="hide the progress bars")
    args = parser.parse_args(argv)
    wall, cpu = time.perf_counter(), time.process_time()
    out = Path(args.out)
    torch.set_num_threads(args.threads)

    # 1. the teacher: a small class-conditional UNet trained to predict v
    torch.manual_seed(args.seed)
    dataset = ShapesDataset(size=20_000, image_size=16, seed=args.seed)  # (3, 16, 16) in [-1, 1]
    num_classes = len(dataset.classes)
    schedule = NoiseSchedule.linear(1000)
    teacher = UNet(in_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), image_size=16, dropout=0.0,
                   num_classes=num_classes, norm_groups=8)
    trainer = Trainer(teacher, SimpleLoss(schedule, prediction="v"), dataset,
                      batch_size=args.batch_size, lr=1e-3, warmup_steps=100, ema_decay=0.995,
                      out_dir=out / "teacher", log_every=100, checkpoint_every=500,
                      seed=args.seed, progress=not args.no_progress)
    trainer.train(args.train_steps)
    teacher_cpu = time.process_time() - cpu
    print(f"teacher: {trainer.step} steps, {teacher_cpu:.0f} s CPU")

    # 2. the rounds 16 -> 8 -> 4 -> 2 -> 1, each through the Trainer (resumable)
    run = distill_progressive(
        trainer.ema_model, schedule, dataset, out_dir=out / "students",
        teacher_steps=TEACHER_STEPS, steps_per_round=args.round_steps, teacher_prediction="v",
        prediction="v", seed=args.seed,
        trainer_options={"batch_size": args.batch_size, "lr": 2e-4, "ema_decay": 0.99,
                         "progress": not args.no_progress},
    )
    print(f"students of {run.steps} steps, {sum(run.training_steps)} optimizer steps, "
          f"{time.process_time() - cpu - teacher_cpu:.0f} s CPU")

    # 3. one block of rows per sampler: the teacher's DDIM-16, then each student (same x_T)
    from ddpm_lib import DiffusionPipeline

    labels = torch.arange(2 * num_classes) % num_classes
    x_T = torch.randn(len(labels), 3, 16, 16, generator=torch.Generator().manual_seed(args.seed))
    rows = [DDIMSampler(schedule, TEACHER_STEPS, prediction="v").sample(
        trainer.ema_model, None, x_T=x_T, model_kwargs={"y": labels})]
    for folder, steps in zip(run.students, run.steps):
        pipe = DiffusionPipeline.from_pretrained(folder)
        ddim = DDIMSampler(schedule, steps, prediction="v").sample(
            trainer.ema_model, None, x_T=x_T, model_kwargs={"y": labels})
        student = pipe.make_sampler().sample(pipe.model, None, x_T=x_T,
                                             model_kwargs={"y": labels})
        rows += [ddim, student]  # the teacher's DDIM at N steps, then the N-step student
        save_grid(torch.cat([ddim, student]), out / f"grid_{steps}.png", nrow=num_classes,
                  upscale=4)
    grid = save_grid(torch.cat(rows), out / "grids.png", nrow=num_classes, upscale=4)
    print(f"done in {(time.perf_counter() - wall) / 60:.1f} min wall, "
          f"{(time.process_time() - cpu) / 60:.1f} min CPU: {grid} (two rows each: the "
          f"teacher's DDIM {TEACHER_STEPS}; then for N = {', '.join(map(str, run.steps))}: the "
          "teacher's DDIM N, the N-step student)")
    return grid


if __name__ == "__main__":
    main()
