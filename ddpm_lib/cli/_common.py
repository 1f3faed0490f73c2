"""What every ``ddpm-lib`` command shares: its errors, warnings, device and threads, the one
loader of trained models and the one builder of samplers.

Errors the user can fix (a missing path, a bad option, a corrupt or incompatible file) are
printed by ``main`` as one line without a traceback, exit status 2: :class:`CLIError` and the
errors the library raises on bad input (:func:`is_user_error`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ddpm_lib.pipeline import DiffusionPipeline


class CLIError(Exception):
    """An error caused by the user's input, printed as one line."""


# ----------------------------------------------------------------------------- errors, warnings

#: What the library raises on bad input (``CheckpointError`` and ``json.JSONDecodeError`` are
#: ``ValueError`` s; ``OSError`` covers a missing, unreadable or truncated file).
USER_ERRORS: tuple[type[BaseException], ...] = (
    CLIError, OSError, ValueError, TypeError, KeyError,
    FloatingPointError,  # a sampler that met NaN or inf says where, in one line
    ImportError,  # a missing extra: its message says what to pip install
)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` comes from the user's input and is printed as one line: one of
    :data:`USER_ERRORS`, or an error of safetensors reading a corrupt weights file."""
    if isinstance(error, USER_ERRORS):
        return True
    safetensors = sys.modules.get("safetensors")  # imported by whoever read a weights file
    corrupt = getattr(safetensors, "SafetensorError", None)
    return isinstance(corrupt, type) and isinstance(error, corrupt)


def error_message(error: BaseException) -> str:
    """The one line that says what went wrong (a ``KeyError`` names the missing key)."""
    if isinstance(error, KeyError):
        return f"a required entry is missing: {error.args[0]!r}" if error.args else "KeyError"
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"  # a full disk, a permission denied, ...
    message = str(error).strip() or type(error).__name__
    return " ".join(message.split())  # one line, even for a message with newlines


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Print warnings as ``ddpm-lib COMMAND: warning: ...`` lines, without source lines."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")

        def show(message, category, filename, lineno, file=None, line=None):
            warn(command, str(message))

        warnings.showwarning = show
        yield


def warn(command: str, message: str) -> None:
    """One warning line on stderr: ``ddpm-lib COMMAND: warning: MESSAGE``."""
    print(f"ddpm-lib {command}: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- device, threads

def device_of(name: str | None) -> torch.device:
    """``--device``: the given device, else CUDA when available, else the CPU."""
    import torch

    if name:
        try:
            return torch.device(name)
        except RuntimeError:
            raise CLIError(f"--device: not a device: {name!r}") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_threads() -> int:
    """The torch CPU threads of a command without ``--threads``: ``OMP_NUM_THREADS`` when it is
    set to a positive integer, else 1.

    One thread, because ``benchmarks/bench_threads.py`` measured ``ddpm-lib sample`` on the
    shared 2-core machine 5.7x slower on torch's default of one thread per core (2) than on
    one, the cores being busy with other jobs: oversubscribed OpenMP threads wait for each
    other at every operation. On a dedicated many-core CPU, give ``--threads`` (or
    ``OMP_NUM_THREADS``) the number of cores for large models; on a GPU it matters little.
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run a command on ``count`` torch CPU threads (``--threads``, else :func:`default_threads`),
    restoring the previous number afterwards (``main`` may be called in-process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count if count is not None else default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def add_threads_option(parser: Any) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="torch CPU threads (torch.set_num_threads). Default: 1, or OMP_NUM_THREADS when "
        "set: on a machine shared with other jobs one thread was 5.7x faster than two "
        "(benchmarks/bench_threads.py); on a dedicated many-core CPU give the number of cores")


# ----------------------------------------------------------------------------- the one loader

def load_pipeline(source: str, device: Any, *, use_ema: bool = True,
                  default_schedule: Any = None) -> DiffusionPipeline:
    """The :class:`ddpm_lib.DiffusionPipeline` of any folder the library writes: the one loader
    of ``sample``, ``fid --checkpoint`` and ``bpd``."""
    from ddpm_lib.pipeline import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(source, use_ema=use_ema, device=device,
                                                 default_schedule=default_schedule)
    except KeyError as error:  # a saved file without an entry it needs
        raise CLIError(f"{source}: a saved file lacks the entry {error.args[0]!r}") from None


def load_eval_pipeline(source: str, device: Any, args: argparse.Namespace) -> DiffusionPipeline:
    """The pipeline that ``fid --checkpoint`` and ``bpd`` evaluate, with the model options
    (:func:`add_model_options`) applied.

    An explicit ``--prediction`` / ``--variance`` overrides the saved one; ``--schedule`` /
    ``--timesteps`` only serve a folder that records no schedule (else DDPM's linear, T = 1000).
    Text-to-image models are refused (they are evaluated through the images ``sample`` draws).
    """
    from ddpm_lib.schedule import NoiseSchedule, default_variance

    default_schedule = None
    if args.schedule is not None or args.timesteps is not None:
        build = NoiseSchedule.cosine if args.schedule == "cosine" else NoiseSchedule.linear
        default_schedule = build(args.timesteps or 1000)
    if not os.path.exists(source):
        raise FileNotFoundError(f"checkpoint not found: {source!r}")
    pipe = load_pipeline(source, device, default_schedule=default_schedule)
    if pipe.is_text_model:
        raise CLIError(
            f"{source} is a text-to-image model: fid --checkpoint and bpd evaluate unconditional "
            f"and class-conditional models; draw images with `ddpm-lib sample {source} --prompt "
            "...` and compute fid on their folder"
        )
    if args.prediction is not None:
        pipe.prediction = args.prediction
    if args.variance != "auto":
        pipe.variance = default_variance(pipe.learn_sigma, args.variance)
    return pipe


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``fid --checkpoint`` and ``bpd``: how the checkpoint's model runs."""
    parser.add_argument("--prediction", choices=("eps", "x0", "v"), default=None,
                        help="what the model predicts (default: as the run saved it, else eps)")
    parser.add_argument("--variance", default="auto",
                        choices=("auto", "fixed_small", "fixed_large", "learned", "learned_range"),
                        help="reverse variance; auto: as the run saved it, else learned_range "
                        "if the model learns sigma, else fixed_small")
    parser.add_argument("--schedule", choices=("linear", "cosine"), default=None,
                        help="noise schedule of a folder that records none (default: linear)")
    parser.add_argument("--timesteps", type=int, default=None,
                        help="T of a folder that records no schedule (default: 1000)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_threads_option(parser)


# ----------------------------------------------------------------------------- the one sampler

def sampler_name(text: str) -> str:
    """``--sampler``'s value: a name of :data:`ddpm_lib.pipeline.SAMPLER_NAMES`; the old
    spelling ``dpm_solver`` is read as ``dpm-solver``."""
    return "dpm-solver" if text == "dpm_solver" else text


def add_sampler_options(parser: Any, *, default: str = "ddpm",
                        default_steps: Mapping[str, int | None] | None = None) -> None:
    """``--sampler`` and the options of each sampler (checked by ``checks.check_sampler``),
    shared by ``sample`` and ``fid``; ``default_steps`` as in :func:`build_sampler`."""
    from ddpm_lib.samplers import SPACINGS
    from ddpm_lib.samplers.sde import METHODS
    from ddpm_lib.samplers.unipc import VARIANTS

    from .checks import SAMPLER_STEPS

    group = parser.add_argument_group(
        "sampler", "An option is accepted only by the samplers that have it (--order for ddim\n"
        "is an error); not given, it keeps the sampler's default.")
    steps = ", ".join(f"{name} {'T' if count is None else count}" for name, count in
                      (SAMPLER_STEPS if default_steps is None else default_steps).items()
                      if name != "saved")
    group.add_argument(
        "--sampler", type=sampler_name, choices=tuple(SAMPLER_STEPS), default=default,
        help="ddpm: ancestral, respaced, the most forgiving (a briefly trained model); ddim: "
        "deterministic with --eta 0; dpm-solver (or dpm_solver): DPM-Solver++ multistep; unipc: "
        "UniPC predictor-corrector (15-25 steps); pndm: iPNDM / PLMS (5-10 steps with --spacing "
        "quadratic --final-step denoise); deis: DEIS multistep; sde: the score-SDE samplers "
        "(--method); edm: Karras et al.'s Heun / Euler (--method, --s-churn); langevin: annealed "
        "Langevin dynamics (NCSN); ve-sde: the VE SDE's predictor-corrector; the last three "
        "walk a score-based model's own noise levels, or a DDPM model's; "
        "consistency: a consistency-distilled model (1-4 steps); saved: the sampler "
        f"the model's folder records (a distilled student's) (default: {default})")
    group.add_argument("--steps", type=int, default=None,
                       help=f"sampling steps, at most T (default: {steps}; ddpm with --steps T is "
                       "the paper's full chain)")
    group.add_argument("--spacing", choices=SPACINGS, default=None,
                       help="the grid of timesteps (default: ddpm linspace, ddim trailing, sde "
                       "linspace, the multistep solvers logsnr)")
    group.add_argument("--order", type=int, default=None,
                       help="dpm-solver, unipc, deis: 1-3 (default: 2, deis 3); pndm: 1-4 "
                       "(default: 4)")
    group.add_argument("--final-step", choices=("solver", "denoise"), default=None,
                       help="dpm-solver, unipc, pndm, deis: end with a full-order step to t = 0 "
                       "(solver) or a step to sigma = 0 (denoise) (default: solver)")
    group.add_argument("--eta", type=float, default=None,
                       help="ddim: noise, 0 deterministic, 1 like DDPM (default: 0)")
    group.add_argument("--variant", choices=VARIANTS, default=None,
                       help="unipc: the B(h) of the update (default: bh2)")
    from ddpm_lib.samplers.edm import EDM_METHODS
    from ddpm_lib.samplers.sde_ve import VE_METHODS

    group.add_argument("--method", choices=(*METHODS, *EDM_METHODS, *VE_METHODS), default=None,
                       help="sde: euler_maruyama (the reverse SDE), predictor_corrector (with "
                       "Langevin corrector steps), heun (the probability-flow ODE, Karras et "
                       "al.), adaptive (Jolicoeur-Martineau et al.) (default: euler_maruyama); "
                       "edm: heun (default) or euler; ve-sde: predictor_corrector (default) or "
                       "reverse_diffusion")
    group.add_argument("--s-churn", type=float, default=None, metavar="S",
                       help="edm: Karras et al.'s S_churn, the stochasticity (default: 0)")
    group.add_argument("--steps-per-level", type=int, default=None, metavar="T",
                       help="langevin: Langevin steps per noise level (default: 100)")
    group.add_argument("--step-size", type=float, default=None, metavar="EPS",
                       help="langevin: the step size at the smallest level (default: 2e-5)")
    group.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                       help="clamp the predicted x0 to [-1, 1] at every step (default: on for "
                       "pixel runs, off for latent runs)")
    group.add_argument("--dynamic-threshold", type=float, default=None, metavar="P",
                       help="Imagen's dynamic thresholding of x0 at percentile P in (0, 1) "
                       "(0.995 in the paper) instead of clipping (default: off)")
    group.add_argument("--analytic-variance", default=None, metavar="TABLE",
                       help="Analytic-DPM's optimal variance from TABLE (written by "
                       "AnalyticVariance.save) for --sampler ddpm / ddim")


def build_sampler(args: argparse.Namespace, pipe: Any,
                  default_steps: Mapping[str, int | None] | None = None) -> Any:
    """The sampler of ``--sampler`` with the options given for it, for the model of ``pipe``
    (:class:`ddpm_lib.DiffusionPipeline`): its schedule, prediction and (learned) variance.

    ``--steps`` defaults per sampler (``default_steps``, else
    :data:`ddpm_lib.cli.checks.SAMPLER_STEPS`; ``None``: T), at most T; clipping is on for
    pixel models and off for latents unless ``--clip-denoised`` / ``--no-clip-denoised`` says.
    """
    from ddpm_lib.pipeline import make_sampler
    from ddpm_lib.samplers import AnalyticVariance

    from .checks import SAMPLER_STEPS, sampler_options

    schedule = pipe.schedule
    num_timesteps = schedule.num_timesteps
    if args.sampler == "saved":  # the sampler the model's folder records (a distilled student's)
        _, given = sampler_options(args)
        if args.clip_denoised is not None:
            given["clip_denoised"] = args.clip_denoised
        return pipe.make_sampler(**({"num_steps": args.steps} if args.steps else {}), **given)
    if args.steps is not None and args.steps > num_timesteps:
        raise CLIError(f"--steps must be at most the model's T = {num_timesteps}; got {args.steps}")
    default = (SAMPLER_STEPS if default_steps is None else default_steps)[args.sampler]
    _, keywords = sampler_options(args)
    variance = pipe.variance
    if args.analytic_variance is not None:  # Analytic-DPM's table, saved by AnalyticVariance.save
        variance = AnalyticVariance.load(args.analytic_variance, schedule)
    clip = pipe.latent is None if args.clip_denoised is None else args.clip_denoised
    return make_sampler(
        args.sampler, schedule, prediction=pipe.prediction, variance=variance,
        learn_sigma=pipe.learn_sigma, clip_denoised=clip,
        num_steps=args.steps or min(default or num_timesteps, num_timesteps), **keywords,
        noise_levels=getattr(pipe.model, "noise_levels", None),  # a ScoreBasedModel's own
    )


# ----------------------------------------------------------------------------- fid / bpd inputs

def read_image_array(path: str) -> Any:
    """A ``.npy`` / ``.npz`` image batch (``arr_0``, ``(N, H, W, C)`` uint8, the format of the
    guided-diffusion reference batches) as a ``(N, C, H, W)`` uint8 tensor."""
    import numpy as np
    import torch

    from ddpm_lib._readers import load_npz

    data = load_npz(path, "image batch")  # a damaged file: a ValueError naming it
    keys = [key for key in ("arr_0", "images") if key in data]
    if not keys:
        raise CLIError(
            f"{path!r} holds neither statistics ('mu', 'sigma') nor images ('arr_0'); "
            f"it has {sorted(data)}"
        )
    array = data[keys[0]]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise CLIError(
            f"{path!r}: expected uint8 images of shape (N, H, W, C) with C = 1 or 3; got "
            f"{array.dtype} {array.shape}"
        )
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def warn_small(command: str, num_samples: int | None, what: str) -> None:
    """Warn when a figure rests on fewer samples than metrics.RECOMMENDED_MIN_SAMPLES."""
    from ddpm_lib.metrics import RECOMMENDED_MIN_SAMPLES

    if num_samples is not None and num_samples < RECOMMENDED_MIN_SAMPLES:
        warn(command, f"only {num_samples} samples; {what}")
