"""The subcommands that read a finished results directory: ``plot`` (its figures),
``diagnose`` (the premise table and the convergence check) and ``compare`` (two
reproductions side by side)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..attacks.registry import ATTACK_NAMES
from ..checks import ArgumentError
from ..pipeline.compare import write_comparison
from ..pipeline.figures import write_figures
from ..pipeline.profile import Profile
from ..pipeline.report import refresh_diagnostics
from ..plots import plot_run
from ..runtime.files import read_json_object
from ..training.checkpoints import run_paths
from .arguments import (
    add_debug_flag,
    directory_argument,
    file_argument,
    names_text,
    results_directory_argument,
)


def add_plot_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``plot``: the figures of a run directory or of a results directory."""
    parser = subparsers.add_parser(
        "plot",
        help="draw the figures of a run directory or a results directory",
        description=(
            "Draw the figures of a run directory (anl-mtard train --out: loss weights, "
            "validation accuracy, total and relative losses, into DIR/plots) or redraw those "
            "of a results directory (anl-mtard reproduce --out: Fig. 2-4, the ANL weights and "
            "every run's validation accuracy, into DIR/figures). Needs matplotlib."
        ),
    )
    parser.add_argument(
        "directory",
        type=Path,
        metavar="DIR",
        help="a run directory (with logs/epochs.csv) or a results directory (with results.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="where a run directory's figures go (default: DIR/plots)",
    )
    add_debug_flag(parser)
    parser.set_defaults(func=run_plot_command, prog=parser.prog)


def plot_results_directory(out: Path) -> list[Path]:
    """Redraw the figures of the results directory ``out`` from its ``config.json`` (the
    profile), ``results.json`` and the runs' logs."""
    profile = Profile.load(out / "config.json")
    results = read_json_object(out / "results.json")
    teachers = {
        role: profile.teacher(role, out)
        for role, saved in (results.get("teachers") or {}).items()
        if isinstance(saved, dict) and saved.get("source") == "trained here"
    }
    student_results = {
        (run["student"], run["method"], run["seed"]): run["evaluation"]
        for run in results.get("runs") or []
        if isinstance(run, dict) and isinstance(run.get("evaluation"), dict)
    }
    return write_figures(profile, out, results.get("aggregate") or {}, teachers, student_results)


def run_plot_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard plot``; prints the figures written."""
    directory = directory_argument(args.directory, "DIR")
    assert directory is not None
    directory_argument(args.out, "--out")
    if not directory.exists():
        raise FileNotFoundError(f"Directory '{directory}' does not exist.")
    if run_paths(directory)["epochs_log"].exists():
        written = list(plot_run(directory, args.out).values())
    elif (directory / "results.json").exists():
        if args.out is not None:
            raise ArgumentError(
                "argument --out: only for a run directory; a results directory's figures are "
                "redrawn in its figures/ folder"
            )
        written = plot_results_directory(directory)
    else:
        raise ArgumentError(
            f"argument DIR: expected a run directory (with logs/epochs.csv) or a results "
            f"directory (with results.json), found '{directory}'"
        )
    for path in written:
        print(path)
    return 0


def add_diagnose_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``diagnose``: the premise table and the convergence check of a results directory."""
    parser = subparsers.add_parser(
        "diagnose",
        help="write the premise table and the convergence check of a results directory",
        description=(
            "Recompute, from a results directory's results.json (its stored evaluations and "
            "epoch curves) without retraining anything, the paper's premise measured there "
            "(teacher and RSLAD robustness against SAT's, the clean teacher's margin) and "
            "whether each run's validation robust accuracy had flattened; write them to "
            "DIR/diagnostics.md, add them to teachers.md and summary.md where an earlier "
            "version left them out, and judge summary.md's claims again in their light."
        ),
    )
    parser.add_argument(
        "directory",
        type=Path,
        metavar="DIR",
        help="a results directory (anl-mtard reproduce --out, with results.json)",
    )
    add_debug_flag(parser)
    parser.set_defaults(func=run_diagnose_command, prog=parser.prog)


def run_diagnose_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard diagnose``; prints ``diagnostics.md`` and the files written."""
    directory = results_directory_argument(args.directory, "DIR")
    written = refresh_diagnostics(directory)
    print(written[0].read_text())
    for path in written:
        print(f"wrote {path}")
    return 0


def add_compare_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare``: two finished reproductions side by side."""
    parser = subparsers.add_parser(
        "compare",
        help="two results directories side by side (e.g. default and default-kl10)",
        description=(
            "Write a Markdown table of every student and method present in both results "
            "directories: clean accuracy, robust accuracy under --attack and W-Robust of each "
            "(mean +- std over seeds) and their difference B - A, then both premise tables. "
            "Reads only their results.json."
        ),
    )
    parser.add_argument("dir_a", type=Path, metavar="DIR_A", help="results directory A")
    parser.add_argument("dir_b", type=Path, metavar="DIR_B", help="results directory B")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the Markdown file to write"
    )
    parser.add_argument(
        "--labels",
        nargs=2,
        default=None,
        metavar=("A", "B"),
        help="names of the two in the table (default: the directories' names)",
    )
    parser.add_argument(
        "--attack",
        choices=ATTACK_NAMES,
        default="pgd_trades",
        metavar="ATTACK",
        help=f"the attack of the robust columns: {names_text(ATTACK_NAMES)} (default: pgd_trades)",
    )
    add_debug_flag(parser)
    parser.set_defaults(func=run_compare_command, prog=parser.prog)


def run_compare_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard compare``; prints the table written."""
    dir_a = results_directory_argument(args.dir_a, "DIR_A")
    dir_b = results_directory_argument(args.dir_b, "DIR_B")
    file_argument(args.out, "--out")
    written = write_comparison(dir_a, dir_b, args.out, labels=args.labels, attack=args.attack)
    print(written.read_text())
    return 0
