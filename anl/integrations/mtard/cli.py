"""The ``anl-mtard`` command: ``train``, ``evaluate`` and ``reproduce``.

Each subcommand is defined next to the code it runs (``loop.register_cli``,
``evaluation.register_cli``, ``reproduce.register_cli``); this module only assembles them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from anl import __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``anl-mtard`` argument parser with every subcommand registered."""
    from anl.integrations.mtard import evaluation, loop, reproduce

    parser = argparse.ArgumentParser(
        prog="anl-mtard",
        description="MTARD (Zhao et al., ECCV 2022) with the Adaptive Normalization Loss.",
    )
    parser.add_argument("--version", action="version", version=f"anl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (loop, evaluation, reproduce):
        module.register_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
