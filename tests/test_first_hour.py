"""The first hour of a new user: every CLI option checked before any work, every sampler from
the command line, resumes that say what they resumed, and examples whose ``--help`` reads well."""

from __future__ import annotations

import argparse
import importlib
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lib import cli
from ddpm_lib.cli import main
from ddpm_lib.cli.checks import MAX_ORDER, SAMPLER_OPTIONS, SAMPLER_STEPS, flag, range_of

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.py") if not p.name.startswith("_"))
TINY = [
    "--image-size", "8", "--dataset-size", "16", "--batch-size", "8", "--base-channels", "8",
    "--channel-mults", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "",
    "--num-timesteps", "20", "--log-every", "2", "--checkpoint-every", "2", "--sample-every", "2",
    "--num-samples", "2", "--warmup-steps", "1", "--no-progress",
]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli.build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _numeric_options() -> list[tuple[str, argparse.Action]]:
    return [(command, action) for command, parser in _subparsers().items()
            for action in parser._actions if action.type in (int, float)]


def _minimal_argv(command: str, tmp_path: Path) -> list[str]:
    """Just the required arguments; the paths need not exist (ranges are checked first)."""
    return {
        "train": ["train", "--out", str(tmp_path / "out")],
        "train-autoencoder": ["train-autoencoder", "--out", str(tmp_path / "out")],
        "sample": ["sample", str(tmp_path / "run")],
        "fid": ["fid", str(tmp_path / "a"), str(tmp_path / "b")],
        "bpd": ["bpd", str(tmp_path / "model"), str(tmp_path / "data")],
        "distill": ["distill", str(tmp_path / "run"), "--method", "progressive", "--out",
                    str(tmp_path / "out")],
    }[command]


def _out_of_range(action: argparse.Action, command: str) -> str:
    valid = range_of(command, action.dest)
    assert valid is not None
    if valid.low is not None:
        below = valid.low if valid.low_open else valid.low - (1 if action.type is int else 0.5)
        return str(below)
    assert valid.high is not None
    return str(valid.high if valid.high_open else valid.high + 1)


# ----------------------------------------------------------------------------- every option

def test_every_numeric_option_of_every_command_has_a_range() -> None:
    options = _numeric_options()
    assert {command for command, _ in options} == set(_subparsers())
    missing = [f"{command} {action.option_strings[0]}" for command, action in options
               if range_of(command, action.dest) is None]
    assert not missing, f"no valid range in cli.checks.RANGES for: {missing}"
    for _, action in options:  # the error names the flag the user typed
        assert flag(action.dest) in action.option_strings


@pytest.mark.parametrize(("command", "action"), _numeric_options(),
                         ids=lambda x: x if isinstance(x, str) else x.option_strings[0])
def test_out_of_range_values_fail_before_any_work_or_write(command, action, tmp_path, capsys,
                                                           monkeypatch) -> None:
    """Each numeric option, one value past its range: one error line naming it, exit status 2,
    before the command's function runs and before anything is written."""
    def never(args: argparse.Namespace) -> None:
        raise AssertionError(f"{command} started work with {action.dest}={getattr(args, action.dest)}")

    for module in cli.COMMANDS:
        monkeypatch.setattr(module, "run", never)
    value = _out_of_range(action, command)
    argv = [*_minimal_argv(command, tmp_path), action.option_strings[0], value]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert f"{flag(action.dest)} must be" in line and f"got {value}" in line, line
    assert not (tmp_path / "out").exists()
    if action.type is float:  # not a number is out of every range
        assert main([*_minimal_argv(command, tmp_path), action.option_strings[0], "nan"]) == 2
        assert f"{flag(action.dest)} must be" in _error_line(capsys)


def test_sample_steps_zero_is_an_error_like_minus_five(tmp_path, capsys) -> None:
    for steps in ("0", "-5"):
        assert main(["sample", str(tmp_path), "--steps", steps]) == 2
        assert _error_line(capsys).endswith(f"--steps must be >= 1; got {steps}")


def test_train_with_negative_steps_writes_nothing(tmp_path, capsys) -> None:
    """The real command (nothing patched): no model built, no folder, no cli_args.json."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "-5"]) == 2
    assert "--steps must be >= 1; got -5" in _error_line(capsys)
    assert not out.exists()
    # a bad value saved by an earlier run is caught too, before the run starts
    out.mkdir()
    (out / "cli_args.json").write_text('{"batch_size": 0}')
    assert main(["train", "--out", str(out), "--steps", "3"]) == 2
    assert "--batch-size must be >= 1; got 0" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["cli_args.json"]


@pytest.mark.parametrize(("options", "expected"), [
    (["--sampler", "ddim", "--order", "2"], "--order is an option of --sampler dpm-solver, "
     "unipc, pndm, deis; not of --sampler ddim"),
    (["--eta", "0"], "--eta is an option of --sampler ddim; not of --sampler ddpm"),
    (["--sampler", "dpm-solver", "--variant", "bh1"], "--variant is an option of --sampler unipc"),
    (["--sampler", "ddim", "--method", "heun"], "--method is an option of --sampler sde"),
    (["--sampler", "sde", "--final-step", "denoise"], "--final-step is an option of"),
    (["--sampler", "unipc", "--analytic-variance", "t.json"], "--analytic-variance is an option "
     "of --sampler ddpm, ddim"),
    (["--sampler", "dpm-solver", "--order", "4"], "--order of --sampler dpm-solver must be in "
     "[1, 3]; got 4"),
    (["--dynamic-threshold", "0.99", "--no-clip-denoised"], "cannot be combined with "
     "--no-clip-denoised"),
    (["--sampler", "sde", "--method", "heun", "--inpaint", "a.png", "--mask", "m.png"],
     "needs --method euler_maruyama"),
    (["--guidance-rescale", "0.7"], "give --guidance-scale too"),
    (["--mask", "m.png"], "--inpaint IMAGE and --mask MASK go together"),
])
def test_bad_sampler_combinations_are_clear_errors(options, expected, tmp_path, capsys) -> None:
    assert main(["sample", str(tmp_path), *options]) == 2
    assert expected in _error_line(capsys)


def test_threads_applies_during_the_command_and_is_restored(tmp_path, monkeypatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(cli.sample, "run", lambda args: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    assert main(["sample", str(tmp_path), "--threads", "3"]) == 0
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(["sample", str(tmp_path)]) == 0  # the default: one thread
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main(["sample", str(tmp_path)]) == 0  # ... unless OMP_NUM_THREADS says otherwise
    assert seen == [3, 1, 2] and torch.get_num_threads() == 2


# ----------------------------------------------------------------------------- every sampler

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A class-conditional run of 2 steps; then, trained again to 2, it is already done."""
    out = tmp_path_factory.mktemp("first_hour") / "run"
    assert main(["train", "--out", str(out), "--steps", "2", "--class-conditional", *TINY]) == 0
    return out


def _sampler_of(argv: list[str], run: Path) -> object:
    from ddpm_lib import DiffusionPipeline
    from ddpm_lib.cli._common import build_sampler

    args = cli.build_parser().parse_args(["sample", str(run), *argv])
    cli.validate(args)
    return build_sampler(args, DiffusionPipeline.from_pretrained(run, device="cpu"))


@pytest.mark.parametrize(("argv", "cls", "expected"), [
    (["--sampler", "ddpm"], "DDPMSampler", {"num_steps": 20, "spacing": "linspace"}),
    (["--sampler", "ddpm", "--spacing", "trailing", "--steps", "5"], "DDPMSampler",
     {"num_steps": 5, "spacing": "trailing"}),
    (["--sampler", "ddim", "--eta", "0.5", "--no-clip-denoised"], "DDIMSampler",
     {"eta": 0.5, "clip_denoised": False, "spacing": "trailing", "num_steps": 20}),
    (["--sampler", "dpm-solver", "--order", "3", "--steps", "6"], "DPMSolverSampler",
     {"order": 3, "num_steps": 6, "spacing": "logsnr"}),
    (["--sampler", "unipc", "--variant", "bh1", "--order", "1", "--steps", "4"], "UniPCSampler",
     {"variant": "bh1", "order": 1}),
    (["--sampler", "pndm", "--order", "4", "--spacing", "quadratic", "--final-step", "denoise",
      "--steps", "6"], "PNDMSampler", {"order": 4, "spacing": "quadratic",
                                       "final_step": "denoise"}),
    (["--sampler", "deis", "--steps", "5", "--dynamic-threshold", "0.9"], "DEISSampler",
     {"order": 3, "dynamic_threshold": 0.9, "clip_denoised": True}),
    (["--sampler", "sde", "--method", "heun", "--steps", "4", "--spacing", "karras"],
     "SDESampler", {"method": "heun", "spacing": "karras", "num_steps": 4}),
])
def test_every_sampler_and_its_options_reach_the_sampler(argv, cls, expected, run) -> None:
    sampler = _sampler_of(argv, run)
    assert type(sampler).__name__ == cls
    for name, value in expected.items():
        assert getattr(sampler, name) == value, name


def test_every_sampler_samples_from_the_command_line(run, tmp_path, capsys) -> None:
    assert set(SAMPLER_STEPS) == {"ddpm", "ddim", "dpm-solver", "unipc", "pndm", "deis", "sde",
                                  "edm", "langevin", "ve-sde",
                                  "consistency", "saved"}
    assert set(MAX_ORDER) == set(SAMPLER_OPTIONS["order"])
    for sampler in SAMPLER_STEPS:
        out = tmp_path / f"{sampler}.npz"
        assert main(["sample", str(run), "--sampler", sampler, "--steps", "3", "--num", "2",
                     "--class", "1", "--guidance-scale", "2", "--npz", str(out),
                     "--no-progress"]) == 0, capsys.readouterr().err
        arrays = np.load(out)
        assert arrays["arr_0"].shape == (2, 8, 8, 3) and arrays["arr_1"].tolist() == [1, 1]
    assert main(["sample", str(run), "--steps", "21", "--npz", str(tmp_path / "x.npz")]) == 2
    assert "--steps must be at most the model's T = 20; got 21" in _error_line(capsys)


# ----------------------------------------------------------------------------- resume

def test_a_resume_says_from_where_and_when_the_run_is_already_done(run, tmp_path, capsys) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    capsys.readouterr()
    assert main(["train", "--out", str(copy), "--steps", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    checkpoint = copy / "checkpoints" / "step_000000002"
    assert f"Trainer: resuming from step 2 (epoch 0, batch 2 of it) of {checkpoint}" in err
    assert "Trainer: already done: step 2 (epoch 0) has reached num_steps=2" in err
    assert main(["train", "--out", str(copy), "--steps", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "resuming from step 2 (epoch 0, batch 2 of it)" in err and "already done" not in err
    assert (copy / "checkpoints" / "step_000000003").is_dir()


# ----------------------------------------------------------------------------- examples

def _example_help(path: Path, monkeypatch, capsys) -> str:
    monkeypatch.syspath_prepend(str(path.parent))  # as `python examples/NAME.py` does
    monkeypatch.setattr(sys, "argv", [path.name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _options_without_help(text: str) -> list[str]:
    """Option lines of an argparse help with no help text on the line or indented below."""
    lines = text.splitlines()
    missing = []
    for index, line in enumerate(lines):
        if not re.match(r"^  -", line) or line.startswith("  -h, --help"):
            continue
        same_line = re.match(r"^  -\S.*?\s{2,}\S", line)
        following = lines[index + 1] if index + 1 < len(lines) else ""
        below = re.match(r"^ {8,}[^\s-]", following)
        if not (same_line or below):
            missing.append(line.strip())
    return missing


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_help_is_clean_text_and_documents_every_option(path, monkeypatch,
                                                                     capsys) -> None:
    text = _example_help(path, monkeypatch, capsys)
    description = text.split("\n\n", 1)[1].split("\noptions:")[0]
    assert not [line for line in text.splitlines()
                if re.fullmatch(r"\s*[=\-~^]{3,}\s*", line)], "a reStructuredText underline"
    for markup in ("``", ":class:", ":func:", ":meth:", ".. code-block", "::"):
        assert markup not in text, markup
    prose = [block for block in description.strip().split("\n\n")
             if not block.startswith((" ", "-")) and not re.match(r"\d+\.", block)]
    assert len(prose) >= 2, description  # the title and at least one paragraph
    for block in prose[1:]:  # each paragraph ends a sentence (the title need not)
        assert block.rstrip().endswith((".", ":", ".)")), block
    assert _options_without_help(text) == []


def test_the_help_check_sees_an_option_without_help() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder")
    assert _options_without_help(parser.format_help()) == ["--seed SEED"]


def test_quick_mode_is_one_check_and_gets_its_own_folders(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    common = importlib.import_module("_common")
    try:
        for value, quick in (("1", True), ("0", False), ("", False)):
            monkeypatch.setenv("DDPM_LIB_QUICK", value)
            assert importlib.reload(common).QUICK is quick
        monkeypatch.setenv("DDPM_LIB_QUICK", "1")
        importlib.reload(common)
        assert common.run_folder("latent_diffusion") == "runs/latent_diffusion-quick"
        for name in ("quickstart", "text_to_image", "latent_diffusion"):
            text = _example_help(REPO / "examples" / f"{name}.py", monkeypatch, capsys)
            assert f"(default: runs/{name}-quick)" in " ".join(text.split()), name
        sources = [path.read_text() for path in EXAMPLES]
        assert all("DDPM_LIB_QUICK\")" not in source and "os.environ" not in source
                   for source in sources), "an example reads DDPM_LIB_QUICK itself"
    finally:
        monkeypatch.delenv("DDPM_LIB_QUICK", raising=False)
        importlib.reload(common)
