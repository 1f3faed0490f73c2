"""On CUDA: every sampler compiled with CUDA graphs equals eager, and a run never recompiles.

Skipped without a GPU. ``compile=True`` on a CUDA sample runs the loop body (model call,
guidance, update) through ``torch.compile(mode="reduce-overhead")``: one graph per shape,
replayed as a CUDA graph for every step. With ``error_on_recompile`` any second compilation
within a run (a timestep or coefficient entering as a Python constant, a multistep history
that changes type) fails the test.

To add a sampler, add one line to :data:`SAMPLERS`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_lib import NoiseSchedule
from ddpm_lib.samplers import (
    DDIMSampler,
    DDPMSampler,
    DEISSampler,
    DPMSolverSampler,
    AnalyticVariance,
    PNDMSampler,
    SDESampler,
    UniPCSampler,
)

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.compile,
    pytest.mark.slow,
]

#: name -> factory(schedule): every sampler, with a multistep history, noise or a corrector
SAMPLERS = {
    "ddpm": lambda s: DDPMSampler(s, num_steps=12),
    "ddpm-learned-range": lambda s: DDPMSampler(s, variance="learned_range", num_steps=12),
    "ddim": lambda s: DDIMSampler(s, 12),
    "ddim-eta": lambda s: DDIMSampler(s, 12, eta=0.7, spacing="logsnr"),
    "dpm-solver-2m": lambda s: DPMSolverSampler(s, 12),
    "dpm-solver-3m": lambda s: DPMSolverSampler(s, 12, order=3, spacing="logsnr",
                                                final_step="solver"),
    "unipc-bh1": lambda s: UniPCSampler(s, 12, variant="bh1", spacing="karras"),
    "unipc-bh2": lambda s: UniPCSampler(s, 12, final_step="solver"),
    "pndm": lambda s: PNDMSampler(s, 12, spacing="quadratic"),
    "deis": lambda s: DEISSampler(s, 12, prediction="v"),
    "ddpm-analytic": lambda s: DDPMSampler(s, num_steps=12,
                                           variance=AnalyticVariance.gaussian(s, 0.5)),
    "sde-euler-maruyama": lambda s: SDESampler(s, 12, method="euler_maruyama"),
    "sde-predictor-corrector": lambda s: SDESampler(s, 12, method="predictor_corrector"),
    "sde-heun": lambda s: SDESampler(s, 12, method="heun"),
}


class TinyModel(nn.Module):
    """A conv, a timestep embedding and a label shift (the null label -1 included)."""

    def __init__(self, num_timesteps: int, channels: int = 2, out_channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, out_channels, 3, padding=1)
        self.time = nn.Embedding(num_timesteps, out_channels)
        self.label = nn.Embedding(11, out_channels)

    def forward(self, x, t, y):
        return torch.tanh(self.conv(x) + (self.time(t) + self.label(y + 1))[:, :, None])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cuda_graphs_equal_eager_without_recompiling(name):
    import torch._dynamo
    from torch._dynamo.utils import counters

    schedule = NoiseSchedule.linear(100, beta_start=1e-3, beta_end=0.2)
    sampler = SAMPLERS[name](schedule)
    out_channels = 4 if sampler.learn_sigma else 2
    model = TinyModel(schedule.num_timesteps, out_channels=out_channels).cuda()
    keys = list(model.state_dict())
    y = torch.tensor([0, 4, 9], device="cuda")
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch._dynamo.reset()
        counters.clear()
        runs = {}
        with torch._dynamo.config.patch(error_on_recompile=True):
            for compile in (True, False, True):  # the second compiled run replays the graph
                runs.setdefault(compile, []).append(sampler.sample(
                    model, (3, 2, 8), generator=torch.Generator().manual_seed(1),
                    model_kwargs={"y": y}, guidance_scale=2.0, compile=compile, device="cuda",
                ))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    eager = runs[False][0]
    for compiled in runs[True]:
        assert compiled.device.type == "cuda" and torch.isfinite(compiled).all()
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    # the model itself was never compiled in place
    assert list(model.state_dict()) == keys and type(model) is TinyModel
