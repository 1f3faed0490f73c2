"""Learned fast sampling against the best training-free sampler at 1, 2, 4 and 8 model calls.

The teacher is the class-conditional digit denoiser of ``bench_guidance.py`` (scikit-learn's
8x8 handwritten digits, nothing downloads), trained here, sampled with classifier-free guidance
``w`` (default 2). From it, with the guidance scale distilled in (the students read ``w`` as an
input, so one call on ``B`` samples replaces guidance's call on ``2B``):

* **progressive**: :class:`ddpm_lib.ProgressiveDistillation`, v-prediction, truncated-SNR
  weights, rounds from a ``--teacher-steps`` DDIM teacher down to 1 step (round 1 distils the
  guided teacher, later rounds their predecessor);
* **consistency**: :class:`ddpm_lib.ConsistencyDistillation` on ``--levels`` levels with
  Heun's solver, sampled by :class:`ddpm_lib.ConsistencySampler` in 1, 2, 4 and 8 calls;
* **solvers**: DDIM, DPM-Solver++ (2M), UniPC, DEIS and iPNDM at the same number of calls
  (with guidance); the best of them at each count is the reference.

Scores (as ``bench_guidance.py``): the Fréchet distance (:func:`ddpm_lib.metrics.frechet_distance`)
to the real digits in their PCA-20 space, and the class accuracy of a logistic-regression
classifier fitted on the real digits. The cost of distillation is given in optimizer steps.
Goals: the 4-step progressive student at least as close to the data (FD) as the best solver at
8 calls; the 1-step consistency student far better than any solver at 1 call.

    PYTHONPATH=. python benchmarks/bench_distillation.py --threads 1
    PYTHONPATH=. python benchmarks/bench_distillation.py --teacher-steps-train 1000 \\
        --round-steps 200 --cd-steps 500     # a quick look
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_guidance import DigitDenoiser, Scorer, load_digits, train

from ddpm_lib import (
    ConsistencyDistillation,
    DDIMSampler,
    DEISSampler,
    DPMSolverSampler,
    NoiseSchedule,
    PNDMSampler,
    ProgressiveDistillation,
    UniPCSampler,
)
from ddpm_lib.distillation import GuidanceEmbedding

CALLS = (1, 2, 4, 8)
SOLVERS = {
    "ddim": lambda s, n: DDIMSampler(s, n),
    "dpm-solver++": lambda s, n: DPMSolverSampler(s, n),
    "unipc": lambda s, n: UniPCSampler(s, n),
    "deis": lambda s, n: DEISSampler(s, n),
    "ipndm": lambda s, n: PNDMSampler(s, n),
}


class GuidedDigitDenoiser(nn.Module):
    """The teacher's network plus a zero-initialised guidance embedding (the student)."""

    def __init__(self, teacher: DigitDenoiser, width: int) -> None:
        super().__init__()
        self.body = copy.deepcopy(teacher).train().requires_grad_(True)
        self.guidance = GuidanceEmbedding(64, width)

    def forward(self, x_t, t, y, guidance_scale=None):
        body = self.body
        h = body.inp(x_t)
        emb = body.time(t) + body.label(y)
        if guidance_scale is not None:
            emb = emb + self.guidance(torch.as_tensor(guidance_scale).expand(x_t.shape[0]))
        for block in body.blocks:
            h = h + block(h + emb)
        return body.out(h)


def fit(student: nn.Module, loss, images, labels, steps: int, args, update=None) -> float:
    """Adam on ``loss`` for ``steps`` steps (batch ``--batch``, labels of the data)."""
    optimizer = torch.optim.Adam(student.parameters(), lr=args.distill_lr)
    generator = torch.Generator().manual_seed(args.seed + 7)
    targets = torch.as_tensor(labels)
    start = time.process_time()
    for step in range(steps):
        batch = torch.randint(0, len(images), (args.batch,), generator=generator)
        value = loss(student, images[batch], y=targets[batch], generator=generator)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = args.distill_lr * max(1 - step / steps, 0.05)
        if update is not None:
            update()
    return time.process_time() - start


def score(sampler, model, scorer, args, guided_teacher: bool) -> tuple[float, float]:
    requested = torch.arange(10).repeat(args.per_class)
    generator = torch.Generator().manual_seed(args.seed + 1)  # the same x_T for every row
    kwargs = {"y": requested}
    if guided_teacher:
        samples = sampler.sample(model, (len(requested), 64), generator=generator,
                                 model_kwargs=kwargs, guidance_scale=args.guidance_scale)
    else:
        kwargs["guidance_scale"] = torch.full((len(requested),), args.guidance_scale)
        samples = sampler.sample(model, (len(requested), 64), generator=generator,
                                 model_kwargs=kwargs)
    data = samples.double().numpy()
    return scorer.accuracy(data, requested.numpy()), scorer.frechet(data)


def progressive(teacher, schedule, images, labels, scorer, args) -> tuple[dict, int, float]:
    results, cost, cpu = {}, 0, 0.0
    current, reads = teacher, False
    steps = args.teacher_steps // 2
    student = GuidedDigitDenoiser(teacher, args.width)
    while steps >= 1:
        loss = ProgressiveDistillation(current, schedule, student_steps=steps,
                                       teacher_prediction="eps" if not reads else "v",
                                       prediction="v", guidance_scale=args.guidance_scale,
                                       teacher_reads_guidance=reads, seed=args.seed)
        cpu += fit(student, loss, images, labels, args.round_steps, args)
        cost += args.round_steps
        student.eval().requires_grad_(False)
        if steps in CALLS:
            results[steps] = score(loss.sampler(), student, scorer, args, False) + (cost,)
        current, reads = student, True
        student = copy.deepcopy(student).train().requires_grad_(True)
        steps //= 2
    return results, cost, cpu


def consistency(teacher, schedule, images, labels, scorer, args) -> tuple[dict, int, float]:
    student = GuidedDigitDenoiser(teacher, args.width)
    loss = ConsistencyDistillation(teacher, schedule, num_levels=args.levels, solver="heun",
                                   spacing="linspace", guidance_scale=args.guidance_scale,
                                   target_decay=args.target_decay, seed=args.seed)
    cpu = fit(student, loss, images, labels, args.cd_steps, args, update=loss.update)
    student.eval().requires_grad_(False)
    results = {calls: score(loss.sampler(calls), student, scorer, args, False)
               + (args.cd_steps,) for calls in CALLS}
    return results, args.cd_steps, cpu


def table(rows: dict[str, dict[int, tuple]]) -> str:
    lines = ["| method | " + " | ".join(f"{c} call{'s' if c > 1 else ''}" for c in CALLS) + " |",
             "|---|" + "---|" * len(CALLS)]
    for name, row in rows.items():
        cells = [f"{row[c][1]:.2f} / {row[c][0]:.2f}" if c in row else "-" for c in CALLS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-steps-train", type=int, default=3000,
                        help="training steps of the teacher (default: 3000)")
    parser.add_argument("--minutes", type=float, default=4.0, help="teacher training time cap")
    parser.add_argument("--teacher-steps", type=int, default=32,
                        help="the progressive teacher's DDIM steps (a power of two; default 32)")
    parser.add_argument("--round-steps", type=int, default=1000,
                        help="optimizer steps of each progressive round (default: 1000)")
    parser.add_argument("--cd-steps", type=int, default=3000,
                        help="optimizer steps of consistency distillation (default: 3000)")
    parser.add_argument("--levels", type=int, default=32, help="consistency levels (default 32)")
    parser.add_argument("--target-decay", type=float, default=0.95)
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--distill-lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--per-class", type=int, default=50, help="samples of each digit")
    args = parser.parse_args()
    if args.teacher_steps < 2 or args.teacher_steps & (args.teacher_steps - 1):
        parser.error("--teacher-steps must be a power of two >= 2")
    torch.set_num_threads(args.threads)
    schedule = NoiseSchedule.linear(1000)
    images, labels = load_digits()
    wall, cpu = time.perf_counter(), time.process_time()
    teacher_args = argparse.Namespace(steps=args.teacher_steps_train, minutes=args.minutes,
                                      seed=args.seed, width=args.width, depth=args.depth,
                                      batch=args.batch, lr=args.lr)
    teacher, trained, _ = train(teacher_args, schedule, images, labels)
    scorer = Scorer(images, labels, args.seed)
    print(f"teacher: {trained} steps in {time.process_time() - cpu:.0f} s CPU; FD floor "
          f"{scorer.floor:.2f}, classifier held-out accuracy {scorer.held_out_accuracy:.3f}; "
          f"guidance w = {args.guidance_scale}; {10 * args.per_class} samples per cell")
    rows: dict[str, dict[int, tuple]] = {}
    for name, make in SOLVERS.items():
        rows[name] = {c: score(make(schedule, c), teacher, scorer, args, True) for c in CALLS}
    best = {c: min((row[c] for row in rows.values()), key=lambda r: r[1]) for c in CALLS}
    rows["best solver"] = best
    teacher_score = score(DDIMSampler(schedule, args.teacher_steps), teacher, scorer, args, True)
    pd, pd_cost, pd_cpu = progressive(teacher, schedule, images, labels, scorer, args)
    rows["progressive distillation"] = pd
    cd, cd_cost, cd_cpu = consistency(teacher, schedule, images, labels, scorer, args)
    rows["consistency distillation"] = cd
    print(f"teacher, DDIM {args.teacher_steps} steps: FD {teacher_score[1]:.2f}, accuracy "
          f"{teacher_score[0]:.2f}")
    print("\nFD (PCA-20, lower is better) / class accuracy at each number of model calls:\n")
    print(table(rows))
    print(f"\ncost: progressive {pd_cost} optimizer steps ({args.round_steps} a round, "
          f"{pd_cpu:.0f} s CPU); consistency {cd_cost} steps ({cd_cpu:.0f} s CPU); total "
          f"{time.perf_counter() - wall:.0f} s wall, {time.process_time() - cpu:.0f} s CPU")
    goal_pd = 4 in pd and pd[4][1] <= best[8][1]
    goal_cd = cd[1][1] < best[1][1] / 3
    print(f"goal 1 (4-step progressive student FD <= best solver at 8 calls, "
          f"{pd[4][1]:.2f} vs {best[8][1]:.2f}): {'met' if goal_pd else 'missed'}")
    print(f"goal 2 (1-step consistency student far better than any solver at 1 call, "
          f"{cd[1][1]:.2f} vs {best[1][1]:.2f}, at least 3x): {'met' if goal_cd else 'missed'}")


if __name__ == "__main__":
    main()
