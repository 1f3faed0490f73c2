"""FSDP (``Trainer(parallel="fsdp")``) with 2 CPU processes on gloo, against one process.

One run covers the three resumes that matter: a 1-process run to step 2, resumed by 2 FSDP
processes to step 4, resumed again by them to step 6, and that run's step-4 checkpoint resumed
by 1 process to step 6: every weight, EMA weight and Adam moment equals an uninterrupted
1-process run's.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from _fsdp_helpers import make_dit_trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).parent / "_fsdp_helpers.py"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _weights(trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v.detach().clone() for k, v in trainer.ema_model.state_dict().items()})
    return out


def _adam(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)["optimizer"]
    return {f"{i}.{k}": torch.as_tensor(v) for i, moments in state["state"].items()
            for k, v in moments.items()}


def _assert_close(actual: dict, expected: dict) -> None:
    """Equal to float rounding, except the key bias of the attention: its gradient is zero in
    exact arithmetic (adding ``q . b_k`` to every logit of a query leaves the softmax as it is),
    so Adam, which divides a gradient by its own size, turns rounding noise into steps."""
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        a, b = actual[key].float(), value.float()
        if key.endswith("attn.qkv.bias"):
            q_a, k_a, v_a = a.chunk(3)
            q_b, k_b, v_b = b.chunk(3)
            assert torch.allclose(k_a, k_b, atol=1e-4, rtol=0), key
            a, b = torch.cat([q_a, v_a]), torch.cat([q_b, v_b])
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-5), key


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_fsdp_two_processes_equal_one_and_resume_at_any_world_size(tmp_path) -> None:
    torch.set_num_threads(1)
    reference = make_dit_trainer(tmp_path / "single")
    reference.train(6)
    expected = _weights(reference)
    assert not torch.equal(expected["model.final_layer.linear.weight"],
                           make_dit_trainer(tmp_path / "fresh").model.final_layer.linear.weight)

    out = tmp_path / "fsdp"
    make_dit_trainer(out).train(2)  # one process, plain: the checkpoint FSDP resumes from
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(HELPER), str(out), "4", "6",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming from step 2" in result.stderr and "resuming from step 4" in result.stderr

    _assert_close(torch.load(out / "final.pt", weights_only=True), expected)
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "step_000000002", "step_000000004", "step_000000006"]
    state = torch.load(checkpoints / "step_000000006" / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2
    meta = json.loads((checkpoints / "step_000000006" / "meta.json").read_text())
    assert meta["model_class"] == "ddpm_lib.models.dit.DiT"  # not the generated FSDPDiT
    # grids at step 4 and at the end, sampled on rank 0 from the gathered EMA
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step_000000004.png", "step_000000006.png"]
    _assert_close(_adam(checkpoints / "step_000000006"),
                  _adam(reference.latest_checkpoint()))  # full Adam moments, torch's layout

    # 2 -> 1 process: the FSDP checkpoint at step 4, resumed and finished by one process
    again = tmp_path / "again"
    shutil.copytree(out, again, ignore=shutil.ignore_patterns("step_000000006"))
    with pytest.warns(UserWarning, match="written by 2 process"):
        resumed = make_dit_trainer(again)
    assert resumed.step == 4
    resumed.train(6)
    _assert_close(_weights(resumed), expected)
    exported = torch.load(out / "final.pt", weights_only=True)
    from ddpm_lib import DiffusionPipeline  # the FSDP run's export: the full EMA model

    pipe = DiffusionPipeline.from_pretrained(out / "ema_model")
    for key, value in pipe.model.state_dict().items():
        assert torch.allclose(value, exported[f"ema.{key}"], atol=0, rtol=0), key


def test_fsdp_arguments() -> None:
    with pytest.raises(ValueError, match="parallel"):
        make_dit_trainer("/tmp/unused-fsdp", parallel="zero3")
    with pytest.raises(ValueError, match="fp16"):
        make_dit_trainer("/tmp/unused-fsdp", parallel="fsdp", mixed_precision="fp16")
