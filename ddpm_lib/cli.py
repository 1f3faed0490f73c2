"""The ``ddpm-lib`` command line: ``train``, ``sample``, ``fid`` and ``bpd``.

Run ``ddpm-lib --help`` (or ``python -m ddpm_lib.cli --help``). Each sub-command is defined by
a ``_add_<name>_parser(subparsers)`` function that registers its options and sets
``func`` to the function that runs it. Errors the user can fix (a missing path, a bad option,
an incompatible checkpoint) are printed as one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class CLIError(Exception):
    """An error caused by the user's input, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-lib",
        description="Train, sample and evaluate denoising diffusion models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm-lib`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, FileNotFoundError, ValueError, TypeError) as error:
        message = str(error) or type(error).__name__
        print(f"ddpm-lib {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpm-lib {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


# ----------------------------------------------------------------------------- train / sample


# ----------------------------------------------------------------------------- fid / bpd


_SUBCOMMANDS: list = [
]


if __name__ == "__main__":
    sys.exit(main())
