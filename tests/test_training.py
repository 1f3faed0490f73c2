"""The Trainer, its EMA and its checkpoints: exact resume, crash safety, label dropout, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ddpm_lib.data import ShapesDataset
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.training import (
    EMA,
    CheckpointError,
    GlobalBatchSampler,
    Trainer,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import TinyLoss, TinyNet, make_trainer, state_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).parent / "_training_helpers.py"


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _run_helper(mode: str, out_dir: Path, steps: int, env: dict | None = None, wait=True):
    command = [sys.executable, str(HELPER), mode, str(out_dir), str(steps)]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if not wait:
        return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# ----------------------------------------------------------------------------- EMA


def test_ema_follows_the_warmed_up_recursion_exactly() -> None:
    """ema_n = d_n ema_{n-1} + (1 - d_n) theta_n with d_n = min(decay, (1 + n) / (10 + n))."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.5)
    expected = 1.0
    for n in range(12):
        with torch.no_grad():
            model.weight.fill_(float(n + 2))
        decay = min(0.5, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(decay)
        ema.update(model)
        expected = decay * expected + (1 - decay) * (n + 2)
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.num_updates == 12


def test_ema_copies_buffers_and_restores_its_counter() -> None:
    model = nn.BatchNorm1d(3)
    ema = EMA(model, decay=0.99, warmup=False)
    assert ema.current_decay() == 0.99
    model.running_mean.fill_(5.0)
    ema.update(model)
    assert torch.equal(ema.module.running_mean, model.running_mean)  # copied, not averaged
    state = ema.state_dict()
    other = EMA(nn.BatchNorm1d(3), decay=0.99)
    other.load_state_dict(state)
    assert other.num_updates == 1 and torch.equal(other.module.running_mean, model.running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


# ----------------------------------------------------------------------------- data order


def test_global_batches_do_not_depend_on_the_number_of_processes() -> None:
    one = list(GlobalBatchSampler(50, 8, num_replicas=1, rank=0, seed=3))
    shares = [list(GlobalBatchSampler(50, 8, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert len(one) == 48 and all(len(share) == 24 for share in shares)
    for k in range(6):  # global batch k = rank 0's 4 indices then rank 1's 4 indices
        assert one[8 * k : 8 * k + 8] == shares[0][4 * k : 4 * k + 4] + shares[1][4 * k : 4 * k + 4]
    assert len(set(one)) == 48
    sampler = GlobalBatchSampler(50, 8, seed=3)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != one
    sampler.set_start(2)
    assert list(sampler) == epoch1[16:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(5, 8)
    with pytest.raises(ValueError, match="multiple"):
        GlobalBatchSampler(50, 9, num_replicas=2, rank=0)


# ----------------------------------------------------------------------------- checkpoints


def _weights() -> dict:
    return {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "ema": {"w": torch.ones(2, 3)}}


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path) -> None:
    state = {"step": 5, "rng": [torch.get_rng_state()], "nested": {"a": [1, 2.5, None, "x"]}}
    path = save_checkpoint(tmp_path, 5, _weights(), state, {"note": "hi"})
    assert path.name == "step_000000005"
    assert sorted(p.name for p in path.iterdir()) == [
        "ema.safetensors", "manifest.json", "meta.json", "model.safetensors", "training_state.pt",
    ]
    # the state file alone loads with the safe unpickler
    raw = torch.load(path / "training_state.pt", weights_only=True)
    assert raw["nested"] == {"a": [1, 2.5, None, "x"]}
    loaded = load_checkpoint(path)
    assert loaded.step == 5 and loaded.meta["note"] == "hi"
    assert torch.equal(loaded.weights["model"]["w"], _weights()["model"]["w"])
    assert torch.equal(loaded.state["rng"][0], state["rng"][0])


class _NotATensor:
    pass


def test_checkpoint_with_pickled_code_is_refused(tmp_path) -> None:
    path = save_checkpoint(tmp_path, 1, _weights(), {"payload": _NotATensor()})
    with pytest.raises(CheckpointError, match="cannot be decoded"):
        load_checkpoint(path)


def test_damaged_newest_checkpoint_is_reported_and_the_previous_used(tmp_path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _weights(), {"step": step})
    newest = tmp_path / "step_000000003"
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    middle = tmp_path / "step_000000002"
    state = bytearray((middle / "training_state.pt").read_bytes())
    state[len(state) // 2] ^= 0xFF  # one flipped byte
    (middle / "training_state.pt").write_bytes(bytes(state))
    with pytest.warns(UserWarning) as record:
        checkpoint = load_latest_checkpoint(tmp_path)
    assert checkpoint.step == 1
    messages = " | ".join(str(w.message) for w in record)
    assert "step_000000003" in messages and "truncated" in messages
    assert "step_000000002" in messages and "SHA-256" in messages

    (tmp_path / "step_000000004").mkdir()  # a folder without manifest: an incomplete save
    with pytest.warns(UserWarning) as record:
        assert load_latest_checkpoint(tmp_path).step == 1
    assert any("no manifest.json" in str(w.message) for w in record)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(newest)


def test_save_replaces_same_step_and_keeps_last_k_through_the_trainer(tmp_path) -> None:
    save_checkpoint(tmp_path, 7, _weights(), {"v": 1})
    save_checkpoint(tmp_path, 7, _weights(), {"v": 2})
    assert load_checkpoint(tmp_path / "step_000000007").state["v"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000007"]

    trainer = make_trainer(tmp_path / "run", checkpoint_every=2, keep_checkpoints=2)
    trainer.train(7)
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert names == ["step_000000006", "step_000000007"]  # every 2 steps, the end, last 2 kept


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.slow
def test_resume_in_a_new_process_is_bitwise_exact(tmp_path) -> None:
    """2N steps at once == N steps, a new process, N more steps (model and EMA, bit for bit).

    The tiny model has dropout (global torch RNG), labels with dropout to the null class, random
    flips, Adam moments, warm-up and an EMA still warming up; N = 5 ends mid-epoch (4.5 batches
    an epoch) and between checkpoints (every 3 steps), so each piece of state is exercised.
    """
    torch.set_num_threads(1)  # the subprocesses use one thread; so does the reference
    reference = make_trainer(tmp_path / "once")
    reference.train(10)
    expected = state_of(reference)

    _run_helper("train", tmp_path / "split", 5)
    first_half = torch.load(tmp_path / "split" / "final.pt", weights_only=True)
    assert not torch.equal(first_half["model.out.weight"], expected["model.out.weight"])
    _run_helper("train", tmp_path / "split", 10)
    _assert_bitwise_equal(torch.load(tmp_path / "split" / "final.pt", weights_only=True), expected)

    # the log of the resumed run continues the uninterrupted one line for line
    def losses(run: str) -> list:
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [(json.loads(line)["step"], json.loads(line)["loss"]) for line in lines]

    assert losses("split") == losses("once")


def test_resume_in_process_and_train_continuation(tmp_path) -> None:
    torch.set_num_threads(1)
    reference = make_trainer(tmp_path / "once")
    reference.train(8)
    first = make_trainer(tmp_path / "split")
    first.train(4)
    first.train(4)  # already there: nothing happens
    assert first.step == 4
    second = make_trainer(tmp_path / "split")
    assert second.step == 4 and second.resumed_from is not None
    second.train(8)
    _assert_bitwise_equal(state_of(second), state_of(reference))
    assert second.ema.num_updates == 8
    with pytest.raises(ValueError, match="batch_size=8"):
        make_trainer(tmp_path / "split", batch_size=4)
    with pytest.raises(ValueError, match="does not fit this model"):
        make_trainer(tmp_path / "split", conditional=False)


@pytest.mark.slow
def test_a_process_killed_during_a_save_leaves_the_previous_checkpoint(tmp_path) -> None:
    """SIGKILL in the middle of writing step 6's checkpoint; a new process resumes from step 3."""
    run = tmp_path / "killed"
    process = _run_helper(
        "train", run, 10, env={"DDPM_LIB_SLOW_SAVE_STEP": "6", "DDPM_LIB_SLOW_SAVE_SECONDS": "120"},
        wait=False,
    )
    checkpoints = run / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # wait until step 6's save has written a file
            partial = list(checkpoints.glob(".tmp-step_000000006-*/model.safetensors"))
            if partial:
                break
            assert process.poll() is None, process.stdout.read().decode()
            time.sleep(0.1)
        else:
            pytest.fail("the save of step 6 never started")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_000000003"]
    assert load_checkpoint(checkpoints / "step_000000003").step == 3  # intact, verifies

    _run_helper("train", run, 10)  # resumes from step 3 and cleans the temporary folder
    assert not list(checkpoints.glob(".tmp-*"))
    torch.set_num_threads(1)
    reference = make_trainer(tmp_path / "once")
    reference.train(10)
    _assert_bitwise_equal(torch.load(run / "final.pt", weights_only=True), state_of(reference))


# ----------------------------------------------------------------------------- the step


class _Recorder(nn.Module):
    """Wraps a model and records the inputs of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.num_classes = getattr(inner, "num_classes", None)
        self.seen_y: list[torch.Tensor] = []
        self.seen_t: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.seen_t.append(t.detach().clone())
        if y is not None:
            self.seen_y.append(y.detach().clone())
        return self.inner(x, t, y)


@pytest.mark.parametrize(("class_dropout", "low", "high"), [(0.0, 0.0, 0.0), (0.5, 0.35, 0.65), (1.0, 1.0, 1.0)])
def test_label_dropout_to_the_null_class(tmp_path, class_dropout, low, high) -> None:
    recorder = _Recorder(TinyNet(num_classes=4))
    trainer = Trainer(
        recorder, TinyLoss(NoiseSchedule.linear(50)), ShapesDataset(size=32, image_size=8),
        batch_size=16, out_dir=tmp_path, progress=False, tensorboard=False,
        class_dropout=class_dropout, checkpoint_every=100,
    )
    trainer.train(6)
    labels = torch.cat(recorder.seen_y)
    assert set(labels.tolist()) <= {-1, 0, 1, 2, 3}
    fraction = (labels == -1).float().mean().item()
    assert low <= fraction <= high
    assert torch.cat(recorder.seen_t).max() < 50 and torch.cat(recorder.seen_t).unique().numel() > 20


class _HalfImage(torch.utils.data.Dataset):
    """Images that are -1 on the left half, +1 on the right half."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        image = torch.ones(1, 4, 4)
        image[:, :, :2] = -1
        return image


class _SeeX0:
    """A loss that records x0 and returns a differentiable zero-ish value."""

    def __init__(self):
        self.schedule = NoiseSchedule.linear(10)
        self.x0: list[torch.Tensor] = []

    def __call__(self, model, x0, t=None, noise=None, **kwargs):
        self.x0.append(x0.detach().clone())
        return model(x0, t).pow(2).mean()


def test_random_flips_are_left_right_with_probability_half(tmp_path) -> None:
    loss = _SeeX0()
    model = TinyNet(channels=1, num_timesteps=10)
    trainer = Trainer(
        model, loss, _HalfImage(), batch_size=32, out_dir=tmp_path, progress=False,
        tensorboard=False, checkpoint_every=100,
    )
    trainer.train(4)
    x0 = torch.cat(loss.x0)  # (128, 1, 4, 4)
    flipped = x0[:, 0, 0, 0] == 1
    assert torch.equal(x0[flipped], _HalfImage()[0].flip(-1).expand(int(flipped.sum()), 1, 4, 4))
    assert 0.35 < flipped.float().mean().item() < 0.65
    loss.x0.clear()
    no_flip = Trainer(
        TinyNet(channels=1, num_timesteps=10), loss, _HalfImage(), batch_size=32,
        out_dir=tmp_path / "b", progress=False, tensorboard=False, random_flip=False,
    )
    no_flip.train(2)
    assert (torch.cat(loss.x0)[:, 0, 0, 0] == -1).all()


def test_learning_rate_warms_up_linearly_and_clipping_bounds_the_update(tmp_path) -> None:
    trainer = make_trainer(tmp_path, warmup_steps=4, lr=1e-3)
    assert [trainer.lr_at(s) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )
    trainer.train(2)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 2 and log[0]["lr"] == pytest.approx(5e-4)
    assert log[0]["images_per_sec"] > 0 and log[0]["grad_norm"] > 0


def test_mixed_precision_runs_and_fp16_saves_its_grad_scaler(tmp_path) -> None:
    for mode in ("bf16", "fp16"):
        trainer = make_trainer(tmp_path / mode, mixed_precision=mode, checkpoint_every=100)
        trainer.train(2)
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
        state = load_checkpoint(trainer.latest_checkpoint()).state
        assert bool(state["scaler"]) == (mode == "fp16")


def test_nan_loss_stops_training_with_a_clear_message(tmp_path) -> None:
    def nan_loss(model, x0, t=None, noise=None, **kwargs):
        return model(x0, t, **kwargs).sum() * float("nan")

    nan_loss.schedule = NoiseSchedule.linear(50)
    trainer = Trainer(
        TinyNet(num_classes=4), nan_loss, ShapesDataset(size=16, image_size=8), batch_size=8,
        out_dir=tmp_path, progress=False, tensorboard=False, log_every=1, grad_clip=None,
    )
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        trainer.train(3)


def test_sample_grids_and_tensorboard(tmp_path) -> None:
    pytest.importorskip("tensorboard")

    class FakeSampler:
        def __init__(self):
            self.calls = []

        def sample(self, model, shape, *, generator=None, model_kwargs=None, guidance_scale=None):
            self.calls.append((shape, model_kwargs["y"].tolist(), guidance_scale, model.training))
            return torch.rand(shape, generator=generator, device=generator.device) * 2 - 1

    sampler = FakeSampler()
    trainer = make_trainer(
        tmp_path, sample_every=2, sampler=sampler, num_samples=8, guidance_scale=3.0,
        tensorboard=True,
    )
    trainer.train(3)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_000000002.png", "step_000000003.png",
    ]
    shape, labels, guidance, training = sampler.calls[0]
    assert shape == (8, 3, 8, 8) and labels == [0, 1, 2, 3, 0, 1, 2, 3]
    assert guidance == 3.0 and training is False
    assert trainer.model.training  # back in training mode after sampling
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"log_every": 0}, "log_every"),
        ({"checkpoint_every": 1.5}, "checkpoint_every"),
        ({"class_dropout": 2.0}, "class_dropout"),
        ({"num_workers": -1}, "num_workers"),
        ({"batch_size": 64}, "fewer than one global batch"),
    ],
)
def test_bad_arguments_name_themselves(tmp_path, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, **kwargs)


def test_bad_datasets_are_refused_at_construction(tmp_path) -> None:
    loss = TinyLoss(NoiseSchedule.linear(50))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        Trainer(TinyNet(), loss, [torch.full((3, 4, 4), 255.0)] * 8, batch_size=4, out_dir=tmp_path)
    with pytest.raises(ValueError, match="carry no labels"):
        Trainer(TinyNet(num_classes=3), loss, [-torch.ones(3, 4, 4)] * 8, batch_size=4, out_dir=tmp_path)
    with pytest.raises(TypeError, match="item 0 is str"):
        Trainer(TinyNet(), loss, ["x"] * 8, batch_size=4, out_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(TinyNet(), loss, [torch.rand(3, 4, 4)] * 8, batch_size=4, out_dir=tmp_path)
    assert any("not [0, 1]" in str(w.message) for w in caught)


def test_max_seconds_stops_early_with_a_checkpoint(tmp_path) -> None:
    trainer = make_trainer(tmp_path, checkpoint_every=100)
    assert trainer.train(50, max_seconds=1e-6) == 1  # the budget is spent after the first step
    assert trainer.latest_checkpoint().name == "step_000000001"
    assert trainer.train(3) == 3
    with pytest.raises(ValueError, match="max_seconds"):
        trainer.train(5, max_seconds=0)


def test_tensor_dataset_items_and_torchvision_style_pairs(tmp_path) -> None:
    images = torch.rand(16, 3, 4, 4) * 2 - 1
    loss = TinyLoss(NoiseSchedule.linear(50))
    single = Trainer(TinyNet(), loss, torch.utils.data.TensorDataset(images), batch_size=8,
                     out_dir=tmp_path / "a", progress=False, tensorboard=False)
    assert single.train(2) == 2
    labelled = torch.utils.data.TensorDataset(images, torch.arange(16) % 3)
    conditional = Trainer(TinyNet(num_classes=3), loss, labelled, batch_size=8,
                          out_dir=tmp_path / "b", progress=False, tensorboard=False)
    assert conditional.train(2) == 2


class CriticLoss(TinyLoss):
    """TinyLoss with a trainable part of its own: a linear critic of the last batch's pixels,
    trained to regress their mean (closed form of one plain gradient step below)."""

    def __init__(self, schedule, options=None):
        super().__init__(schedule)
        self.critic = nn.Linear(1, 1)
        self.options = {"lr": 0.1} if options is None else options
        self.inputs = []
        self._last = None

    def __call__(self, model, x0, **kwargs):
        self._last = x0.detach()
        return super().__call__(model, x0, **kwargs)

    def auxiliary_modules(self):
        return {"critic": (self.critic, self.options)}

    def auxiliary_loss(self, name):
        assert name == "critic"
        x, self._last = self._last, None
        features = x.flatten(1).mean(1, keepdim=True)  # (b, 1)
        self.inputs.append(features)
        return (self.critic(features) - features).square().mean()


def test_a_loss_s_trainable_part_is_trained_saved_and_restored_by_the_trainer(tmp_path):
    """The hook: one Adam step of the part per model step with the declared options (fused
    like the model's unless they say otherwise), its state in checkpoints, restored on resume."""
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    dataset = ShapesDataset(size=16, image_size=8, seed=0)
    settings = dict(batch_size=4, lr=1e-3, warmup_steps=1, out_dir=tmp_path, log_every=1,
                    checkpoint_every=2, progress=False, tensorboard=False)
    torch.manual_seed(0)
    loss_fn = CriticLoss(schedule)
    reference = nn.Linear(1, 1)
    reference.load_state_dict(loss_fn.critic.state_dict())
    trainer = Trainer(TinyNet(), loss_fn, dataset, **settings)
    (optimizer,) = trainer.auxiliary_optimizers.values()
    assert optimizer.param_groups[0]["fused"] == trainer.optimizer.param_groups[0]["fused"]
    trainer.train(2)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.1)
    for features in loss_fn.inputs:  # the same two steps by hand
        reference_optimizer.zero_grad()
        (reference(features) - features).square().mean().backward()
        reference_optimizer.step()
    for mine, theirs in zip(loss_fn.critic.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs)
    saved = load_checkpoint(trainer.latest_checkpoint()).state["auxiliary"]["critic"]
    assert saved["optimizer"]["state"][0]["step"] == 2
    again = Trainer(TinyNet(), CriticLoss(schedule), dataset, **settings)
    state = again.auxiliary_optimizers["critic"].state_dict()["state"]
    assert torch.equal(state[0]["exp_avg"], saved["optimizer"]["state"][0]["exp_avg"])
    unfused = Trainer(TinyNet(), CriticLoss(schedule, {"lr": 0.1, "fused": None}), dataset,
                      **{**settings, "out_dir": tmp_path / "unfused"})
    assert unfused.auxiliary_optimizers["critic"].param_groups[0]["fused"] is None


def test_a_loss_s_trainable_parts_are_checked(tmp_path):
    schedule = NoiseSchedule.linear(50, beta_start=2e-3, beta_end=0.4)
    dataset = ShapesDataset(size=16, image_size=8, seed=0)
    settings = dict(batch_size=4, out_dir=tmp_path, progress=False, tensorboard=False)

    class NoLoss(TinyLoss):
        def auxiliary_modules(self):
            return {"critic": (nn.Linear(1, 1), {})}

    with pytest.raises(TypeError, match=r"must have auxiliary_loss\(name\)"):
        Trainer(TinyNet(), NoLoss(schedule), dataset, **settings)

    class BadParts(CriticLoss):
        def auxiliary_modules(self):
            return {"critic": self.critic}

    with pytest.raises(TypeError, match=r"auxiliary_modules\(\)\['critic'\] must be"):
        Trainer(TinyNet(), BadParts(schedule), dataset, **settings)
