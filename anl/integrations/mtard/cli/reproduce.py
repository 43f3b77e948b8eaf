"""``anl-mtard reproduce``: the paper's experiment from a profile
(:func:`~anl.integrations.mtard.pipeline.reproduce.reproduce`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..checks import ArgumentError
from ..methods.registry import METHOD_ORDER
from ..models import model_names
from ..pipeline.profile import Profile, profile_names
from ..pipeline.reproduce import reproduce
from ..runtime.process import (
    is_main_process,
    require_device,
)
from .arguments import (
    add_debug_flag,
    add_placement_flags,
    add_quiet_flags,
    directory_argument,
    integer,
    names_text,
)
from .errors import error_message


def add_reproduce_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce``: a profile, overrides, and the results directory."""
    parser = subparsers.add_parser(
        "reproduce",
        help="run the paper's experiment (teachers, every method, evaluation, tables, figures)",
        description=(
            "Reproduce MTARD (Zhao et al., ECCV 2022): teachers -> every method and ablation "
            "for each student and seed -> evaluation under the paper's attacks -> tables, "
            "figures and summary.md in --out."
        ),
    )
    parser.add_argument(
        "--profile",
        default="default",
        metavar="NAME_OR_PATH",
        help=f"a packaged profile ({names_text(profile_names())}) or the path of a JSON "
        "profile (default: default)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="results directory (default: mtard-results/<profile name>)",
    )
    add_placement_flags(parser)
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=integer(1), default=None, metavar="N", help="seeds 0 .. N-1")
    seeds.add_argument(
        "--seed-list",
        type=integer(0),
        nargs="+",
        default=None,
        metavar="SEED",
        help="these seeds",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHOD_ORDER,
        default=None,
        metavar="METHOD",
        help=f"methods to run: {names_text(METHOD_ORDER)} (default: the profile's)",
    )
    parser.add_argument(
        "--students",
        nargs="+",
        default=None,
        metavar="ARCH",
        help=f"student architectures: {names_text(model_names(), import_path=True)} "
        "(default: the profile's)",
    )
    parser.add_argument(
        "--epochs",
        type=integer(1),
        default=None,
        metavar="N",
        help="epochs of every training stage, teachers included (default: the profile's)",
    )
    parser.add_argument(
        "--train-subset",
        type=integer(1),
        default=None,
        metavar="N",
        help="training images of every training stage (default: the profile's)",
    )
    parser.add_argument(
        "--n-eval",
        type=integer(1),
        default=None,
        metavar="N",
        help="test points evaluated (default: the profile's)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip completed stages, continue interrupted runs"
    )
    parser.add_argument(
        "--threads",
        type=integer(1),
        default=None,
        metavar="N",
        help="torch CPU threads, per worker with --jobs (default: the profile's; with --jobs, "
        "the cores shared out)",
    )
    parser.add_argument(
        "--jobs",
        type=integer(1),
        default=1,
        metavar="N",
        help="worker processes: teachers, runs and evaluations that do not wait for each "
        "other run side by side (default: 1)",
    )
    add_quiet_flags(parser)
    add_debug_flag(parser)
    parser.set_defaults(func=run_reproduce_command, prog=parser.prog)


def reproduce_profile(args: argparse.Namespace) -> Profile:
    """The profile with the command line's overrides; any problem is a usage error."""
    try:
        profile = Profile.load(args.profile)
    except ArgumentError:
        raise
    except (OSError, ValueError) as exc:
        raise ArgumentError(f"argument --profile: {error_message(exc)}") from exc
    return profile.with_overrides(
        data_dir=directory_argument(args.data_dir, "--data-dir"),
        model_dir=directory_argument(args.model_dir, "--model-dir"),
        seeds=args.seeds,
        seed_list=args.seed_list,
        methods=args.methods,
        students=args.students,
        device=args.device,
        epochs=args.epochs,
        train_subset=args.train_subset,
        n_eval=args.n_eval,
        threads=args.threads,
    )


def run_reproduce_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard reproduce`` from parsed arguments; prints the white-box table.

    Under ``torchrun`` every rank runs the pipeline (see :func:`~.pipeline.reproduce
    .reproduce`); rank 0 prints.
    """
    profile = reproduce_profile(args)
    out = directory_argument(args.out or Path("mtard-results") / profile.name, "--out")
    assert out is not None
    if not args.resume and (out / "config.json").exists():
        raise ArgumentError(
            f"argument --out: '{out}' already holds a reproduction; pass --resume to continue "
            "it, or choose another --out"
        )
    require_device(profile.device_here())
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("anl.integrations.mtard.pipeline").setLevel(logging.INFO)
    results = reproduce(
        profile,
        out,
        resume=args.resume,
        plots=not args.no_plots,
        progress=not args.no_progress,
        jobs=args.jobs,
    )
    if not is_main_process():
        return 0
    print((out / "white_box.md").read_text())
    print(f"Results in {out} ({results['wall_time_s'] / 60:.1f} min); see {out / 'summary.md'}.")
    return 0
