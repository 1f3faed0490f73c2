"""The compiled hot loop on CPU: same samples as eager, one graph for a whole run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddpm_lib.samplers import DDPMSampler, DPMSolverSampler


class TinyModel(nn.Module):
    """A conv, a timestep embedding and a label shift: enough to trace a real module."""

    def __init__(self, num_timesteps: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.time = nn.Embedding(num_timesteps, 2)
        self.label = nn.Embedding(11, 2)

    def forward(self, x, t, y):
        return torch.tanh(self.conv(x) + (self.time(t) + self.label(y + 1))[:, :, None])


@pytest.mark.compile
@pytest.mark.slow
def test_compiled_run_equals_eager_and_compiles_once(small_schedule):
    import torch._dynamo
    from torch._dynamo.utils import counters

    model = TinyModel(small_schedule.num_timesteps)
    keys = list(model.state_dict())
    y = torch.tensor([0, 4, 9])
    samplers = (
        # noise drawn eagerly every step, the last step masked; guidance batch of 6
        DDPMSampler(small_schedule),
        # multistep state carried between steps, the first step first order
        DPMSolverSampler(small_schedule, num_steps=49),
    )
    for sampler in samplers:
        assert sampler.num_steps >= 49
        torch._dynamo.reset()
        counters.clear()
        runs = {}
        for compile in (True, False):
            with torch._dynamo.config.patch(error_on_recompile=True):
                runs[compile] = sampler.sample(
                    model, (3, 2, 8), generator=torch.Generator().manual_seed(1),
                    model_kwargs={"y": y}, guidance_scale=2.0, compile=compile,
                )
        torch.testing.assert_close(runs[True], runs[False], rtol=0, atol=1e-4)
        assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    # the model itself was never compiled in place: no _orig_mod. prefixes
    assert list(model.state_dict()) == keys and type(model) is TinyModel
