"""The ``anl-mtard`` parser with every subcommand, and the one error path (:func:`main`)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from anl import __version__

from ..checks import ArgumentError
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, error_message
from .evaluate import add_evaluate_command
from .reproduce import add_reproduce_command
from .results import add_compare_command, add_diagnose_command, add_plot_command
from .sensitivity import add_sensitivity_command
from .train import add_train_command


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``anl-mtard`` argument parser with every subcommand of :data:`SUBCOMMANDS`."""
    parser = CommandParser(
        prog="anl-mtard",
        description="MTARD (Zhao et al., ECCV 2022) with the Adaptive Normalization Loss.",
        epilog="Exit status: 0 success, 1 runtime failure, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"anl {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error, too")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in SUBCOMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # modules of import paths, as `python -m` finds them
    args = build_parser().parse_args(argv)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; a failure becomes one line on stderr and its exit status."""
    debug = bool(getattr(args, "debug", False))
    prog = getattr(args, "prog", "anl-mtard")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        prog += f" (rank {os.environ.get('RANK', '?')})"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {error_message(exc)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ArgumentError) else EXIT_FAILURE


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_train_command,
    add_evaluate_command,
    add_reproduce_command,
    add_plot_command,
    add_diagnose_command,
    add_compare_command,
    add_sensitivity_command,
)
"""The subcommands, in the order ``--help`` lists them: each adds its parser and sets ``func``
(the function that runs it, which returns the exit status or raises) and ``prog``."""
