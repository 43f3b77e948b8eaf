"""The ``anl-mtard`` command: ``train``, ``evaluate`` and ``reproduce``.

Every subcommand is defined here, so that no library module imports :mod:`argparse`; each
parses its flags into a call of the library (:func:`~.training.trainer.train`,
:func:`~.evaluation.robustness.evaluate`, :func:`~.pipeline.reproduce.reproduce`). Under
``torchrun`` every rank runs the command and rank 0 prints. ``python -m anl.integrations.mtard``
is the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anl import __version__

from .attacks.registry import ATTACK_NAMES, DEFAULT_ATTACKS, TRANSFER_ATTACKS
from .data.registry import DATASETS, load_dataset
from .evaluation.robustness import evaluate
from .methods.registry import METHOD_ORDER
from .models.checkpoint import load_model, load_teacher
from .pipeline.profile import Profile, profile_names
from .pipeline.reproduce import reproduce
from .runtime.execution import MEMORY_FORMATS
from .runtime.files import safe_load
from .runtime.process import (
    Ranks,
    distributed_session,
    is_main_process,
    node_main_first,
    process_device,
)
from .tables import result_rows, results_table, write_results
from .training.config import TrainConfig
from .training.trainer import train


def build_parser() -> argparse.ArgumentParser:
    """The ``anl-mtard`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="anl-mtard",
        description="MTARD (Zhao et al., ECCV 2022) with the Adaptive Normalization Loss.",
    )
    parser.add_argument("--version", action="version", version=f"anl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_command(subparsers)
    add_evaluate_command(subparsers)
    add_reproduce_command(subparsers)
    add_sensitivity_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


# ==============================================================================================
# anl-mtard train
# ==============================================================================================
def _parse_float(text: str) -> float:
    """A float, also written as a fraction such as ``8/255``."""
    if "/" in text:
        num, _, den = text.partition("/")
        return float(num) / float(den)
    return float(text)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parser(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else parse(text)

    parser.__name__ = getattr(parse, "__name__", "value")
    return parser


def _json_dict(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {text!r}")
    return value


_FIELD_PARSERS = {
    "str": str,
    "str | None": _optional(str),
    "int": int,
    "int | None": _optional(int),
    "float": _parse_float,
    "float | None": _optional(_parse_float),
    "dict[str, Any]": _json_dict,
}


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:.6g}" for v in value)
    return "None" if value is None else str(value)


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``: every :class:`~.training.config.TrainConfig` field is a flag.

    Precedence: the defaults, then ``RUN_DIR/config.json`` when resuming, then ``--config``
    (a JSON file of fields), then the flags given on the command line.
    """
    parser = subparsers.add_parser(
        "train",
        help="train a student (MTARD or a baseline) and write a run directory",
        description=(
            "Train a student and write a run directory (config.json, checkpoints/last.pt and "
            "best.pt, final.pt, logs/steps.csv and epochs.csv, metrics.json). Every "
            "TrainConfig field is a flag. Precedence: the defaults, then RUN_DIR/config.json "
            "when resuming, then --config, then the flags given."
        ),
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    parser.add_argument(
        "--config", dest="config_file", metavar="JSON", help="JSON file of TrainConfig fields"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        metavar="N",
        help="stop (resumably) once this many epochs are complete",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING:
            help_text += f" (default: {_default_text(f.default)})"
        elif f.default_factory is not dataclasses.MISSING:
            help_text += f" (default: {json.dumps(f.default_factory())})"
        else:
            help_text += " (required unless given by --config or a resumed run)"
        kwargs: dict[str, Any] = {
            "dest": f"cfg_{f.name}",
            "default": argparse.SUPPRESS,
            "help": help_text,
        }
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type == "tuple[float, ...]":
            kwargs.update(type=_parse_float, nargs="*", metavar="FRACTION")
        else:
            kwargs.update(type=_FIELD_PARSERS[f.type], metavar=f.name.upper())
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(func=run_train_command)


def run_train_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard train`` from parsed arguments; returns the exit status."""
    run_dir = Path(args.out)
    values: dict[str, Any] = {}
    if args.resume and (run_dir / "config.json").exists():
        values.update(json.loads((run_dir / "config.json").read_text()))
    if args.config_file:
        values.update(json.loads(Path(args.config_file).read_text()))
    for f in dataclasses.fields(TrainConfig):
        if hasattr(args, f"cfg_{f.name}"):
            values[f.name] = getattr(args, f"cfg_{f.name}")
    try:
        config = TrainConfig.from_dict(values)
    except ValueError as exc:
        print(f"anl-mtard train: error: {exc}", file=sys.stderr)
        return 2
    result = train(
        config,
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        stop_after_epochs=args.stop_after_epochs,
    )
    if is_main_process():
        final = result["final"] or {}
        print(
            f"{result['method']} on {result['dataset']}: {result['epochs_completed']} epochs, "
            f"val clean {final.get('val_clean')}, robust {final.get('val_robust')}, "
            f"W-Robust {final.get('val_wrobust')}; best epoch {(result['best'] or {}).get('epoch')}"
            f"; run directory {result['run_dir']}"
        )
    return 0


# ==============================================================================================
# anl-mtard evaluate
# ==============================================================================================
def add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``: ``anl-mtard evaluate CHECKPOINT [--attacks ...] [--dataset ...] ...``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint under the paper's attacks",
        description=(
            "Load a model checkpoint, evaluate it on the test split under the paper's attacks "
            "(clean, robust and W-Robust accuracy, Eq. 12), print the Markdown table and write "
            "JSON + Markdown."
        ),
    )
    parser.add_argument("checkpoint", type=Path, help="model checkpoint written by anl-mtard")
    parser.add_argument(
        "--attacks",
        nargs="+",
        choices=ATTACK_NAMES,
        default=None,
        help=f"attacks to run (default: {' '.join(DEFAULT_ATTACKS)}, + transfer_* with "
        "--surrogate)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="dataset name (cifar10, cifar100, fashion_mnist); default: the checkpoint's",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset directory")
    parser.add_argument("--eps", type=float, default=None, help="L-inf budget (default: dataset's)")
    parser.add_argument("--n-examples", type=int, default=None, help="first N test points only")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--surrogate", type=Path, default=None, help="surrogate for transfer_*")
    parser.add_argument(
        "--surrogate-arch",
        default=None,
        help="architecture of a surrogate in a foreign format (RobustBench/TRADES); "
        "omit for checkpoints written by anl-mtard",
    )
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: next to it)")
    parser.add_argument("--name", default=None, help="defense label and file stem")
    parser.add_argument("--square-queries", type=int, default=5000)
    parser.add_argument(
        "--attack-n-examples",
        nargs="+",
        type=_attack_limit,
        default=[],
        metavar="ATTACK=N",
        help="run these attacks on the first N points only (e.g. square=1000)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory-format",
        default="auto",
        choices=list(MEMORY_FORMATS),
        help="layout of the evaluated networks (auto: channels_last on CPU, contiguous on GPUs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run_evaluate_command)


def _attack_limit(text: str) -> tuple[str, int]:
    """``"square=1000"`` -> ``("square", 1000)`` for ``--attack-n-examples``."""
    name, _, count = text.partition("=")
    if name not in ATTACK_NAMES or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"expected ATTACK=N with ATTACK in {ATTACK_NAMES} and N >= 1, got {text!r}"
        )
    return name, int(count)


def _checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The entries of a checkpoint other than its weights (``dataset``, ``method``, ...)."""
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        return {}
    return {k: v for k, v in checkpoint.items() if k != "state_dict"}


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard evaluate``; under ``torchrun`` each rank attacks its shard and rank 0
    writes."""
    with distributed_session(args.device) as ranks:
        return _evaluate_checkpoint(args, ranks)


def _evaluate_checkpoint(args: argparse.Namespace, ranks: Ranks) -> int:
    device = process_device(args.device, ranks)  # one device per process: cuda:LOCAL_RANK
    metadata = _checkpoint_metadata(args.checkpoint)
    dataset = args.dataset or metadata.get("dataset")
    if not isinstance(dataset, str):
        raise ValueError(
            f"Parameter `--dataset` should be given: the checkpoint {str(args.checkpoint)!r} "
            "does not record its dataset."
        )
    if dataset not in DATASETS:
        raise ValueError(
            f"Parameter `--dataset` should be one of {sorted(DATASETS)}. Found {dataset!r}."
        )
    info = DATASETS[dataset]
    model = load_model(args.checkpoint, map_location=device)
    surrogate = None
    if args.surrogate is not None and args.surrogate_arch is None:
        surrogate = load_model(args.surrogate, map_location=device)
    elif args.surrogate is not None:
        surrogate = load_teacher(
            args.surrogate,
            arch=args.surrogate_arch,
            num_classes=info.num_classes,
            in_channels=info.channels,
            map_location=device,
        )
    attacks = args.attacks
    if attacks is None:
        attacks = [*DEFAULT_ATTACKS, *(TRANSFER_ATTACKS if surrogate is not None else ())]
    progress = not args.no_progress and ranks.main
    data = node_main_first(
        lambda: load_dataset(dataset, "test", data_dir=args.data_dir, progress=progress), ranks
    )
    results = evaluate(
        model,
        data,
        attacks,
        eps=args.eps,
        batch_size=args.batch_size,
        device=device,
        surrogate=surrogate,
        n_examples=args.n_examples,
        square_queries=args.square_queries,
        attack_n_examples=dict(args.attack_n_examples),
        progress=progress,
        seed=args.seed,
        rank=ranks.rank,
        world_size=ranks.world_size,
        memory_format=args.memory_format,
    )
    if not ranks.main:
        return 0
    name = args.name or args.checkpoint.stem
    # Label the rows with the training method the checkpoint records, else the file name.
    method = metadata.get("method")
    defense = args.name or (method if isinstance(method, str) else name)
    results["defense"] = defense
    results["checkpoint"] = str(args.checkpoint)
    if args.surrogate is not None:
        results["surrogate"] = str(args.surrogate)
    out = args.out if args.out is not None else args.checkpoint.parent
    json_path, md_path = write_results(results, out, f"eval_{name}_{dataset}", defense=defense)
    print(results_table(result_rows(results, defense)))
    print(f"\nwrote {json_path} and {md_path}")
    return 0


# ==============================================================================================
# anl-mtard reproduce
# ==============================================================================================
def add_reproduce_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``reproduce``: a profile, overrides, and the results directory."""
    parser = subparsers.add_parser(
        "reproduce",
        help="run the paper's experiment (teachers, every method, evaluation, tables, figures)",
        description=(
            "Reproduce MTARD (Zhao et al., ECCV 2022): teachers -> every method and ablation "
            "for each student and seed -> evaluation under the paper's attacks -> tables, "
            "figures and summary.md in --out. Profiles: " + ", ".join(profile_names()) + "."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--profile", default="default", help="packaged profile name or JSON path")
    parser.add_argument(
        "--out", default=None, help="results directory (default: mtard-results/<profile>)"
    )
    parser.add_argument("--data-dir", default=None, help="dataset folder")
    parser.add_argument("--model-dir", default=None, help="folder of the teachers' checkpoints")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, help="N: seeds 0 .. N-1")
    seeds.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds")
    parser.add_argument(
        "--methods", nargs="+", choices=METHOD_ORDER, default=None, help="methods to run"
    )
    parser.add_argument("--students", nargs="+", default=None, help="student architectures")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of every training stage (quick runs)"
    )
    parser.add_argument(
        "--train-subset", type=int, default=None, help="training images of every training stage"
    )
    parser.add_argument("--n-eval", type=int, default=None, help="test points evaluated")
    parser.add_argument(
        "--resume", action="store_true", help="skip completed stages, continue interrupted runs"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the profile's)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes: teachers, runs and evaluations that do not wait for each "
        "other run side by side (--threads is then per worker; default: the cores shared out)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_reproduce_command)


def run_reproduce_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard reproduce`` from parsed arguments; prints the white-box table.

    Under ``torchrun`` every rank runs the pipeline (see :func:`~.pipeline.reproduce
    .reproduce`); rank 0 prints.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("anl.integrations.mtard.pipeline").setLevel(logging.INFO)
    profile = Profile.load(args.profile).with_overrides(
        data_dir=args.data_dir,
        model_dir=args.model_dir,
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
    out = Path(args.out) if args.out else Path("mtard-results") / profile.name
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


# ==============================================================================================
# anl-mtard sensitivity
# ==============================================================================================
def add_sensitivity_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sensitivity``: MTARD's settings varied on a finished reproduction."""
    from .pipeline.sensitivity import GRIDS

    parser = subparsers.add_parser(
        "sensitivity",
        help="MTARD with other r_w, beta, constant weights or balancers, on a reproduction",
        description=(
            "On a finished reproduction's results directory, train MTARD's student once per "
            "setting (grid anl: r_w x beta and constant weights w_adv; grid balancers: every "
            "anl rule as MTARD's balancer), evaluate it under PGD_TRADES as the reproduction "
            "was, and write sensitivity.md, sensitivity.json and figures/ into --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("results_dir", type=Path, help="a reproduction's results directory")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write (default: RESULTS_DIR/sensitivity)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed of every setting")
    parser.add_argument("--grid", choices=GRIDS, default="anl", help="the settings to run")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these settings of the grid (e.g. anl-rw0.25-beta2 constant-wadv0.7 famo)",
    )
    parser.add_argument("--students", nargs="+", default=None, help="student architectures")
    parser.add_argument("--resume", action="store_true", help="skip complete settings")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the profile's)"
    )
    parser.add_argument("--data-dir", default=None, help="dataset folder")
    parser.add_argument("--model-dir", default=None, help="folder of the teachers' checkpoints")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the figure")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_sensitivity_command)


def run_sensitivity_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard sensitivity``; prints ``sensitivity.md``."""
    from .pipeline.sensitivity import sensitivity

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("anl.integrations.mtard.pipeline").setLevel(logging.INFO)
    out = args.out if args.out is not None else args.results_dir / "sensitivity"
    results = sensitivity(
        args.results_dir,
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
        data_dir=args.data_dir,
        model_dir=args.model_dir,
        device=args.device,
    )
    if not is_main_process():
        return 0
    print((out / "sensitivity.md").read_text())
    print(f"Study in {out} ({results['wall_time_s'] / 60:.1f} min).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
