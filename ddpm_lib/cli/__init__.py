"""The ``ddpm-lib`` command line: ``train``, ``sample``, ``fid``, ``bpd``, ``train-autoencoder``
and ``distill``.

Run ``ddpm-lib --help`` (or ``python -m ddpm_lib.cli --help``). One module per command
(:mod:`~ddpm_lib.cli.train`, :mod:`~ddpm_lib.cli.sample`, :mod:`~ddpm_lib.cli.fid`,
:mod:`~ddpm_lib.cli.bpd`, :mod:`~ddpm_lib.cli.train_autoencoder`,
:mod:`~ddpm_lib.cli.distill`), each with its parser (``add_parser``) and the function that runs it (``run``); what they share (the one loader of
trained models, the one sampler builder, errors, device, threads) is in ``_common``, and the
one validation of the arguments, run by :func:`main` before any work or write, in
:mod:`~ddpm_lib.cli.checks`. Errors the user can fix (a missing path, a bad option, a corrupt
or incompatible file) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import bpd, distill, fid, sample, train, train_autoencoder
from ._common import (
    CLIError,
    default_threads,
    error_message,
    is_user_error,
    one_line_warnings,
    torch_threads,
)
from .checks import validate

__all__ = ["CLIError", "build_parser", "default_threads", "main"]

#: The commands, in the order of ``--help``: each module has ``add_parser`` and ``run``.
COMMANDS = (train, sample, fid, bpd, train_autoencoder, distill)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (``args.func`` runs the one parsed)."""
    from ddpm_lib import __version__

    parser = argparse.ArgumentParser(
        prog="ddpm-lib",
        description="Train, sample and evaluate denoising diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm-lib`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with one_line_warnings(args.command):
            validate(args)  # every argument, before any work or write
            with torch_threads(args.threads):
                args.func(args)
    except KeyboardInterrupt:
        print(f"ddpm-lib {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001: the user's errors are one line, others raise
        if not is_user_error(error):
            raise
        print(f"ddpm-lib {args.command}: error: {error_message(error)}", file=sys.stderr)
        return 2
    return 0


def load_checkpoint_for_eval(path: str, device: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """Deprecated: ``(model, schedule)`` of a trained model for ``fid`` / ``bpd``, filling
    ``args.prediction`` / ``args.variance`` from the saved settings unless given and setting
    ``args.latent_model``. The commands now take the :class:`ddpm_lib.DiffusionPipeline`
    itself (``ddpm_lib.cli._common.load_eval_pipeline``); use
    :meth:`ddpm_lib.DiffusionPipeline.from_pretrained`."""
    import warnings

    from ._common import load_eval_pipeline

    warnings.warn("ddpm_lib.cli.load_checkpoint_for_eval is deprecated; use "
                  "ddpm_lib.DiffusionPipeline.from_pretrained", DeprecationWarning, stacklevel=2)
    pipe = load_eval_pipeline(path, device, args)
    args.prediction, args.variance, args.latent_model = pipe.prediction, pipe.variance, pipe.latent
    return pipe.model, pipe.schedule
