"""The distillation drivers through the Trainer (exact resume inside and between rounds, the
saved students and their samplers), the guidance embedding, and ``ddpm-lib distill``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from ddpm_lib import (
    ConsistencySampler,
    DDIMSampler,
    DiffusionPipeline,
    GuidanceConditionedUNet,
    NoiseSchedule,
    UNet,
    distill_consistency,
    distill_progressive,
)
from ddpm_lib.cli import main
from ddpm_lib.distillation import with_guidance_embedding

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINER = {"batch_size": 8, "checkpoint_every": 2, "keep_checkpoints": 5}


def tiny_unet(**options) -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                attention_resolutions=(), image_size=8, norm_groups=4, dropout=0.1, **options)


@pytest.fixture
def data() -> TensorDataset:
    return TensorDataset(torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
                         * 2 - 1)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return DiffusionPipeline.from_pretrained(folder).model.state_dict()


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_progressive_rounds_resume_exactly_inside_and_between_rounds(tmp_path, data):
    schedule = NoiseSchedule.linear(100)
    options = {"teacher_steps": 4, "steps_per_round": 4, "prediction": "v",
               "trainer_options": TRAINER}
    run = distill_progressive(tiny_unet(), schedule, data, out_dir=tmp_path / "a", **options)
    assert run.steps == [2, 1] and run.training_steps == [4, 4]
    assert run.students == [tmp_path / "a" / "steps_2" / "student",
                            tmp_path / "a" / "steps_1" / "student"]
    # each student records its sampler: DDIM on its own timesteps, every other teacher one
    settings = [DiffusionPipeline.from_pretrained(s).sampler_settings for s in run.students]
    assert settings == [{"name": "ddim", "timesteps": [99, 49], "eta": 0.0},
                        {"name": "ddim", "timesteps": [99], "eta": 0.0}]
    sampler = run.pipeline.make_sampler()
    assert isinstance(sampler, DDIMSampler) and sampler.timesteps.tolist() == [99]
    assert run.pipeline.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 8, 8)

    # stopped inside round 2 (after its step-2 checkpoint), then started again
    inside = tmp_path / "inside"
    shutil.copytree(tmp_path / "a", inside)
    last = inside / "steps_1"
    shutil.rmtree(last / "student")
    (last / "done.json").unlink()
    shutil.rmtree(last / "checkpoints" / "step_000000004")
    shutil.rmtree(last / "ema_model")
    distill_progressive(tiny_unet(), schedule, data, out_dir=inside, **options)
    assert_same_weights(inside / "steps_1" / "student", run.students[-1])
    # stopped between rounds (round 1 saved, round 2 not begun)
    between = tmp_path / "between"
    shutil.copytree(tmp_path / "a", between)
    shutil.rmtree(between / "steps_1")
    teacher = tiny_unet()
    torch.rand(100)  # another global RNG state than the uninterrupted run had at this round
    distill_progressive(teacher, schedule, data, out_dir=between, **options)
    assert_same_weights(between / "steps_1" / "student", run.students[-1])


def test_consistency_run_resumes_exactly_with_its_target_network(tmp_path, data):
    schedule = NoiseSchedule.linear(100)
    options = {"train_steps": 4, "num_steps": 2, "num_levels": 8, "trainer_options": TRAINER,
               "solver": "heun", "distance": "pseudo_huber"}
    run = distill_consistency(tiny_unet(), schedule, data, out_dir=tmp_path / "a", **options)
    sampler = run.pipeline.make_sampler()
    assert isinstance(sampler, ConsistencySampler)
    assert sampler.timesteps.tolist() == [99, 49]
    resumed = tmp_path / "b"
    shutil.copytree(tmp_path / "a", resumed)
    shutil.rmtree(resumed / "student")
    (resumed / "done.json").unlink()
    shutil.rmtree(resumed / "checkpoints" / "step_000000004")
    distill_consistency(tiny_unet(), schedule, data, out_dir=resumed, **options)
    assert_same_weights(resumed / "student", run.students[0])


def test_driver_bad_input(tmp_path, data):
    schedule = NoiseSchedule.linear(100)
    teacher = tiny_unet()
    with pytest.raises(ValueError, match="teacher_steps must be a power of two"):
        distill_progressive(teacher, schedule, data, out_dir=tmp_path, teacher_steps=6,
                            steps_per_round=1)
    with pytest.raises(ValueError, match="final_steps must be below teacher_steps"):
        distill_progressive(teacher, schedule, data, out_dir=tmp_path, teacher_steps=4,
                            final_steps=4, steps_per_round=1)
    with pytest.raises(ValueError, match="finer than the schedule's T = 100"):
        distill_progressive(teacher, schedule, data, out_dir=tmp_path, teacher_steps=128,
                            steps_per_round=1)
    wide = UNet(in_channels=1, base_channels=16, channel_mults=(1,), num_res_blocks=1,
                attention_resolutions=(), image_size=8, norm_groups=4)
    with pytest.raises(ValueError, match="does not match the teacher's architecture"):
        distill_progressive(teacher, schedule, data, out_dir=tmp_path, teacher_steps=2,
                            steps_per_round=1, student=wide)


def test_guidance_embedding_starts_as_the_teacher_and_round_trips(tmp_path):
    teacher = tiny_unet(num_classes=2)
    with torch.no_grad():  # a trained-looking teacher: no zero-initialised output head
        for parameter in teacher.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    student = with_guidance_embedding(teacher)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 99]), torch.tensor([0, 1, -1])
    with torch.no_grad():
        expected = teacher.eval()(x, t, y=y)
        torch.testing.assert_close(student.eval()(x, t, y=y, guidance_scale=torch.tensor(
            [1.0, 3.0, 7.5])), expected)
        torch.nn.init.normal_(student.guidance_embed.linear_2.weight)
        low = student(x, t, y=y, guidance_scale=1.0)
        high = student(x, t, y=y, guidance_scale=4.0)
    assert not torch.allclose(low, high)  # once trained, the scale changes the prediction
    student.save_pretrained(tmp_path / "s")
    loaded = GuidanceConditionedUNet.from_pretrained(tmp_path / "s")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y=y, guidance_scale=4.0), high)
    with pytest.raises(ValueError, match="guidance_scale must be a float or a"):
        student(x, t, y=y, guidance_scale=torch.ones(2))


def test_guided_progressive_round_saves_a_guided_student(tmp_path):
    schedule = NoiseSchedule.linear(100)
    labelled = TensorDataset(torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 2)
    run = distill_progressive(tiny_unet(num_classes=2), schedule, labelled, out_dir=tmp_path,
                              teacher_steps=4, steps_per_round=2, prediction="v",
                              guidance_scale=(1.0, 4.0), trainer_options=TRAINER)
    assert isinstance(run.pipeline.model, GuidanceConditionedUNet)
    model_kwargs = {"y": torch.tensor([0, 1]), "guidance_scale": torch.tensor([2.0, 2.0])}
    images = run.pipeline.make_sampler().sample(run.pipeline.model, (2, 1, 8, 8),
                                                model_kwargs=model_kwargs)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


TINY_TRAIN = [
    "--image-size", "8", "--dataset-size", "16", "--batch-size", "8", "--base-channels", "8",
    "--channel-mults", "1", "--num-res-blocks", "1", "--attention-resolutions", "",
    "--num-timesteps", "20", "--log-every", "2", "--checkpoint-every", "2", "--no-progress",
    "--warmup-steps", "1",
]


def test_cli_distill_and_sample_the_student(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "2", *TINY_TRAIN]) == 0
    out = tmp_path / "pd"
    argv = ["distill", str(run), "--method", "progressive", "--steps", "2", "--teacher-steps",
            "4", "--train-steps", "2", "--batch-size", "8", "--prediction", "v", "--out",
            str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    student = out / "steps_2" / "student"
    assert json.loads((out / "steps_2" / "done.json").read_text())["training_steps"] == 2
    grid = tmp_path / "grid.png"
    assert main(["sample", str(student), "--sampler", "saved", "--num", "2", "--out", str(grid),
                 "--no-progress"]) == 0
    assert grid.is_file()
    assert main(["distill", str(run), "--method", "consistency", "--steps", "2", "--levels", "4",
                 "--train-steps", "2", "--batch-size", "8", "--out", str(tmp_path / "cd"),
                 "--no-progress"]) == 0
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "cd" / "student")
    assert pipe.sampler_settings["name"] == "consistency"
    capsys.readouterr()
    assert main(["distill", str(run), "--method", "progressive", "--steps", "3"]) == 2
    assert "--steps must be a power of two for progressive rounds; got 3" in capsys.readouterr().err
    assert main(["distill", str(run), "--method", "progressive", "--levels", "4"]) == 2
    assert "--levels is an option of --method consistency" in capsys.readouterr().err
