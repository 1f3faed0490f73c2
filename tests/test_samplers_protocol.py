"""The loop's protocol: keyword-only constructors (with the deprecation path of positional
calls), capability flags checked in one place, the run options, one-way imports."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

from ddpm_lib import samplers
from ddpm_lib.samplers import DDIMSampler, DDPMSampler, DEISSampler, DPMSolverSampler, SDESampler
from ddpm_lib.samplers.loop import RunOptions

# (class, positional values after schedule in the previous release's order, same by keyword)
OLD_CALLS = [
    (DDPMSampler, ("fixed_large", "x0", False, 7), {"variance": "fixed_large", "prediction": "x0",
                                                       "clip_denoised": False, "num_steps": 7}),
    (DDIMSampler, (10, 0.5, "v"), {"num_steps": 10, "eta": 0.5, "prediction": "v"}),
    (DPMSolverSampler, (10, "x0", False), {"num_steps": 10, "prediction": "x0",
                                               "clip_denoised": False}),
    (samplers.UniPCSampler, (10, 1, "bh1"), {"num_steps": 10, "order": 1, "variant": "bh1"}),
    (samplers.PNDMSampler, (10, 3), {"num_steps": 10, "order": 3}),
    (DEISSampler, (10, 2, "x0"), {"num_steps": 10, "order": 2, "prediction": "x0"}),
    (SDESampler, (10, "heun"), {"num_steps": 10, "method": "heun"}),
]


def _same(a: samplers.Sampler, b: samplers.Sampler) -> None:
    assert repr(a) == repr(b)
    assert torch.equal(a.timesteps, b.timesteps)
    assert torch.equal(a._coefficients64, b._coefficients64)


@pytest.mark.parametrize("cls, values, keywords", OLD_CALLS, ids=[c.__name__ for c, *_ in OLD_CALLS])
def test_positional_call_warns_and_means_what_it_meant(small_schedule, cls, values, keywords):
    moved = [name for name in keywords if name != "num_steps" or cls is DDPMSampler]
    with pytest.warns(DeprecationWarning, match=cls.__name__) as record:
        old = cls(small_schedule, *values)
    message = str(record[0].message)
    for name, value in zip(moved, values[len(values) - len(moved):]):
        assert f"{name}={value!r}" in message  # each value with the keyword it became
    _same(old, cls(small_schedule, **keywords))


@pytest.mark.parametrize("cls", [c for c, _, _ in OLD_CALLS], ids=lambda c: c.__name__)
def test_schedule_and_num_steps_stay_positional(small_schedule, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler = cls(small_schedule, 6)
        assert sampler.num_steps == 6
        assert cls(small_schedule, num_steps=6).num_steps == 6


def test_positional_misuse_is_a_type_error(small_schedule):
    with pytest.raises(TypeError, match="multiple values for argument 'order'"):
        DEISSampler(small_schedule, 10, 2, order=3)
    with pytest.raises(TypeError, match="positional arguments"):
        SDESampler(small_schedule, 10, "heun", "extra")
    # the same positional number means the same thing for every sampler: num_steps
    assert DEISSampler(small_schedule, 4).num_steps == DPMSolverSampler(small_schedule, 4).num_steps


def test_capabilities_are_checked_in_one_place(small_schedule, oracle):
    heun = SDESampler(small_schedule, 10, method="heun")
    assert not (heun.supports_step or heun.supports_img2img or heun.supports_inpaint)
    x = torch.zeros(2, 3)
    with pytest.raises(NotImplementedError, match=r"SDESampler\.step .*euler_maruyama"):
        heun.step(x, int(heun.timesteps[0]), x)
    with pytest.raises(NotImplementedError, match=r"SDESampler\.img2img .*method='heun'"):
        heun.img2img(oracle, x, 0.5)
    with pytest.raises(NotImplementedError, match=r"SDESampler\.inpaint"):
        heun.inpaint(oracle, x, torch.ones(2, 3))
    adaptive = SDESampler(small_schedule, 10, method="adaptive")
    assert not adaptive.supports_compile
    with pytest.raises(ValueError, match=r"compile=True is not available with SDESampler"):
        adaptive.sample(oracle, (2, 3), compile=True)

    class NoImg2Img(DDIMSampler):
        supports_img2img = False

    sampler = NoImg2Img(small_schedule, 5)
    with pytest.raises(NotImplementedError, match=r"NoImg2Img\.img2img is not available"):
        sampler.img2img(oracle, x, 0.5)
    assert sampler.sample(oracle, (2, 3)).shape == (2, 3)  # sample is always there


def test_run_options_take_their_fields_and_check_the_generator():
    options = RunOptions.from_arguments(
        {"self": None, "x0": 1, "guidance_scale": 2.0, "progress": True}
    )
    assert (options.guidance_scale, options.progress, options.compile) == (2.0, True, "auto")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        RunOptions.from_arguments({"generator": 3})


def test_loop_modules_do_not_import_base():
    """One-way dependencies: guidance <- loop <- inpaint <- base (no import cycle)."""
    folder = Path(__file__).parents[1] / "ddpm_lib" / "samplers"
    for name in ("guidance", "loop", "inpaint"):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "base" not in imported, name
