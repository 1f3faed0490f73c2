"""The Trainer with (image, caption) items: caption dropout, exact resume, EMA of the text
encoder, prompts and negative prompts in the sample grids, DDP and mixed precision."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ddpm_lib.data import CaptionedShapesDataset, ShapesDataset
from ddpm_lib.samplers import DDPMSampler
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.training import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import TinyLoss, TinyNet, TinyTextNet, make_trainer, state_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).parent / "_training_helpers.py"


def _run_helper(mode: str, out_dir: Path, steps: int) -> None:
    command = [sys.executable, str(HELPER), mode, str(out_dir), str(steps)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


class _RecordingTextNet(TinyTextNet):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def encode_prompts(self, prompts):
        self.seen.append(list(prompts))
        return super().encode_prompts(prompts)


def _text_trainer(tmp_path, model=None, **kwargs) -> Trainer:
    options = dict(batch_size=16, out_dir=tmp_path, progress=False, tensorboard=False,
                   checkpoint_every=100, lr=1e-2, warmup_steps=0)
    options.update(kwargs)
    return Trainer(model or _RecordingTextNet(), TinyLoss(NoiseSchedule.linear(50)),
                   CaptionedShapesDataset(size=48, image_size=8, seed=3), **options)


@pytest.mark.parametrize(("caption_dropout", "low", "high"),
                         [(0.0, 0.0, 0.0), (0.5, 0.35, 0.65), (1.0, 1.0, 1.0)])
def test_caption_dropout_to_the_empty_prompt(tmp_path, caption_dropout, low, high) -> None:
    trainer = _text_trainer(tmp_path, caption_dropout=caption_dropout)
    trainer.train(6)
    seen = [caption for batch in trainer.model.seen for caption in batch]
    assert len(seen) == 6 * 16
    dataset_captions = {trainer.dataset[i][1] for i in range(len(trainer.dataset))}
    assert set(seen) - {""} <= dataset_captions
    fraction = sum(caption == "" for caption in seen) / len(seen)
    assert low <= fraction <= high
    assert trainer.random_flip is False  # a flip would turn "left" into "right"


def test_caption_dropout_is_drawn_from_the_trainers_generator(tmp_path) -> None:
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        trainer = _text_trainer(tmp_path / name, caption_dropout=0.5, seed=seed)
        torch.manual_seed(seed + 100)  # the global RNG plays no part
        trainer.train(3)
        runs.append(trainer.model.seen)
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_resume_with_captions_in_a_new_process_is_bitwise_exact(tmp_path) -> None:
    """2N steps at once == N steps, a new process, N more (captions, dropout, EMA of the encoder)."""
    torch.set_num_threads(1)
    reference = make_trainer(tmp_path / "once", text=True)
    reference.train(10)
    expected = state_of(reference)
    assert "ema.byte_embedding.weight" in expected
    _run_helper("train-text", tmp_path / "split", 5)
    _run_helper("train-text", tmp_path / "split", 10)
    _assert_bitwise_equal(torch.load(tmp_path / "split" / "final.pt", weights_only=True), expected)


def test_ema_averages_the_text_encoder_too(tmp_path) -> None:
    trainer = make_trainer(tmp_path, text=True, ema_decay=0.5, checkpoint_every=100)
    before = trainer.ema_model.byte_embedding.weight.detach().clone()
    trainer.train(4)
    ema = trainer.ema_model.byte_embedding.weight.detach()
    live = trainer.model.byte_embedding.weight.detach()
    assert not torch.equal(ema, before) and not torch.equal(ema, live)
    assert {name for name, _ in trainer.ema_model.named_parameters()} == {
        name for name, _ in trainer.model.named_parameters()
    }


def test_sample_with_prompts_negative_prompts_and_guidance(tmp_path) -> None:
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    trainer = make_trainer(tmp_path, text=True, checkpoint_every=100,
                           sampler=DDPMSampler(schedule, num_steps=5))
    trainer.train(3)
    prompts = ["a red circle on a white background", "黑色背景上有一个蓝色正方形", ""]
    plain = trainer.sample(prompts=prompts)
    assert plain.shape == (3, 3, 8, 8)
    guided = trainer.sample(prompts=prompts, guidance_scale=3.0)
    negative = trainer.sample(prompts=prompts, guidance_scale=3.0,
                              negative_prompts=["a green cross"] * 3)
    assert not torch.allclose(guided, plain) and not torch.allclose(negative, guided)
    # w = 1 is the conditional model alone, whatever the negative prompt
    unit = trainer.sample(prompts=prompts, guidance_scale=1.0, negative_prompts=["x", "y", "z"])
    torch.testing.assert_close(unit, plain, atol=1e-5, rtol=0)
    # the EMA model's own encoder is used (a different encoder gives different samples)
    assert not torch.allclose(trainer.sample(prompts=prompts, use_ema=False), plain)
    with pytest.raises(ValueError, match="negative_prompts must have one prompt per sample"):
        trainer.sample(prompts=prompts, guidance_scale=2.0, negative_prompts=[""])
    with pytest.raises(ValueError, match="prompts must have one prompt per sample"):
        trainer.sample(4, prompts=prompts)
    with pytest.raises(TypeError, match="prompts must be a list of str"):
        trainer.sample(prompts=["ok", 3])


def test_sample_grids_for_fixed_prompts(tmp_path) -> None:
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    prompts = ["a red circle", "a blue square"]
    trainer = make_trainer(tmp_path, text=True, checkpoint_every=100, sample_every=2,
                           num_samples=4, sample_prompts=prompts, guidance_scale=2.0,
                           sampler=DDPMSampler(schedule, num_steps=3))
    trainer.train(2)
    grid = tmp_path / "samples" / "step_000000002.png"
    assert grid.is_file()
    assert grid.with_suffix(".txt").read_text(encoding="utf-8").splitlines() == prompts * 2
    default = make_trainer(tmp_path / "default", text=True, num_samples=3)
    assert default.default_sample_prompts() == [default.dataset[i][1] for i in range(3)]


def test_text_model_and_data_must_match(tmp_path) -> None:
    with pytest.raises(TypeError, match="no encode_prompts"):
        Trainer(TinyNet(), TinyLoss(NoiseSchedule.linear(50)),
                CaptionedShapesDataset(size=8, image_size=8), batch_size=4, out_dir=tmp_path)
    with pytest.raises(ValueError, match="carry no caption"):
        Trainer(TinyTextNet(), TinyLoss(NoiseSchedule.linear(50)),
                ShapesDataset(size=8, image_size=8), batch_size=4, out_dir=tmp_path)
    with pytest.raises(ValueError, match="caption_dropout"):
        make_trainer(tmp_path, text=True, caption_dropout=1.5)
    with pytest.raises(TypeError, match="sample_prompts"):
        make_trainer(tmp_path, text=True, sample_prompts="a red circle")
    with pytest.raises(ValueError, match="need a text model"):
        make_trainer(tmp_path / "labels").sample(prompts=["a"])


def test_mixed_precision_with_captions(tmp_path) -> None:
    trainer = make_trainer(tmp_path, text=True, mixed_precision="bf16", checkpoint_every=100)
    trainer.train(2)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_ddp_with_captions_equals_one_process(tmp_path) -> None:
    """2 ranks x 4 captioned images == 1 process x 8, through a resume: the text encoder's
    gradients are all-reduced like the UNet's."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port),
        str(HELPER), "ddp-text", str(out), "6",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    torch.set_num_threads(1)
    single = make_trainer(tmp_path / "single", dropout=0.0, checkpoint_every=100, text=True)
    single.train(6)
    reference = state_of(single)
    assert reference.keys() == rank0.keys()
    for key in reference:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.allclose(rank0[key].float(), reference[key].float(), atol=1e-5, rtol=0), key
