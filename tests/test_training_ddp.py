"""DistributedDataParallel with 2 CPU processes on gloo, started by torchrun in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from _training_helpers import make_trainer, state_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).parent / "_training_helpers.py"
STEPS = 6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path) -> None:
    """2 ranks x 4 images == 1 process x 8 images, through a resume half-way (under DDP)."""
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(HELPER), "ddp", str(out), str(STEPS),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    for key in rank0:  # DDP keeps the replicas identical
        assert torch.equal(rank0[key], rank1[key]), key

    torch.set_num_threads(1)
    single = make_trainer(tmp_path / "single", dropout=0.0, checkpoint_every=100)
    single.train(STEPS)
    reference = state_of(single)
    assert reference.keys() == rank0.keys()
    for key in reference:
        assert torch.allclose(rank0[key].float(), reference[key].float(), atol=1e-5, rtol=0), key
    assert not torch.equal(reference["model.out.weight"], make_trainer(
        tmp_path / "fresh", dropout=0.0).model.out.weight.detach())  # training moved the weights

    # only rank 0 wrote: one log line per log_every steps (not two), one checkpoint per train()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [2, 4, 6]
    single_log = [json.loads(line) for line in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in single_log], abs=1e-5)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step_{STEPS // 2:09d}", f"step_{STEPS:09d}"
    ]
    state = torch.load(out / "checkpoints" / f"step_{STEPS:09d}" / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
