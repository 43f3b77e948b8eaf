"""``anl-mtard sensitivity``: MTARD with other settings on a finished reproduction
(:func:`~anl.integrations.mtard.pipeline.sensitivity.sensitivity`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..models import model_names
from ..runtime.process import is_main_process
from .arguments import (
    add_debug_flag,
    add_placement_flags,
    add_quiet_flags,
    directory_argument,
    integer,
    names_text,
)


def add_sensitivity_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sensitivity``: MTARD's settings varied on a finished reproduction."""
    from ..pipeline.sensitivity import GRIDS

    parser = subparsers.add_parser(
        "sensitivity",
        help="MTARD with other r_w, beta, constant weights or balancers, on a reproduction",
        description=(
            "On a finished reproduction's results directory, train MTARD's student once per "
            "setting (grid anl: r_w x beta and constant weights w_adv; grid balancers: every "
            "anl rule as MTARD's balancer), evaluate it under PGD_TRADES as the reproduction "
            "was, and write sensitivity.md, sensitivity.json and figures/ into --out."
        ),
    )
    parser.add_argument(
        "results_dir",
        type=Path,
        metavar="RESULTS_DIR",
        help="a reproduction's results directory (anl-mtard reproduce --out)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write (default: RESULTS_DIR/sensitivity)",
    )
    parser.add_argument(
        "--seed",
        type=integer(0),
        default=0,
        metavar="N",
        help="training seed of every setting (default: 0)",
    )
    parser.add_argument(
        "--grid",
        choices=GRIDS,
        default="anl",
        metavar="GRID",
        help=f"the settings to run: {names_text(GRIDS)} (default: anl)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these settings of the grid (e.g. anl-rw0.25-beta2 constant-wadv0.7 famo)",
    )
    parser.add_argument(
        "--students",
        nargs="+",
        default=None,
        metavar="ARCH",
        help=f"student architectures: {names_text(model_names(), import_path=True)} "
        "(default: the reproduction's)",
    )
    parser.add_argument("--resume", action="store_true", help="skip complete settings")
    parser.add_argument(
        "--jobs", type=integer(1), default=1, metavar="N", help="worker processes (default: 1)"
    )
    parser.add_argument(
        "--threads",
        type=integer(1),
        default=None,
        metavar="N",
        help="torch CPU threads (default: the profile's)",
    )
    add_placement_flags(parser)
    add_quiet_flags(parser)
    add_debug_flag(parser)
    parser.set_defaults(func=run_sensitivity_command, prog=parser.prog)


def run_sensitivity_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard sensitivity``; prints ``sensitivity.md``."""
    from ..pipeline.sensitivity import sensitivity

    results_dir = directory_argument(args.results_dir, "RESULTS_DIR")
    assert results_dir is not None
    if not results_dir.exists():
        raise FileNotFoundError(f"Directory '{results_dir}' does not exist.")
    out = directory_argument(args.out, "--out") or results_dir / "sensitivity"
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("anl.integrations.mtard.pipeline").setLevel(logging.INFO)
    results = sensitivity(
        results_dir,
        out,
        seed=args.seed,
        grid=args.grid,
        only=args.settings,
        students=args.students,
        resume=args.resume,
        jobs=args.jobs,
        threads=args.threads,
        plots=not args.no_plots,
        progress=not args.no_progress,
        data_dir=directory_argument(args.data_dir, "--data-dir"),
        model_dir=directory_argument(args.model_dir, "--model-dir"),
        device=args.device,
    )
    if not is_main_process():
        return 0
    print((out / "sensitivity.md").read_text())
    print(f"Study in {out} ({results['wall_time_s'] / 60:.1f} min).")
    return 0
