"""The ``anl-mtard`` command: ``train``, ``evaluate``, ``reproduce``, ``plot``, ``diagnose``,
``compare`` and ``sensitivity``.

Every subcommand is defined here, so that no library module imports :mod:`argparse`: one
``add_<name>_command`` function per subcommand, listed in :data:`SUBCOMMANDS`, adds its flags
and the function that turns them into a call of the library
(:func:`~.training.trainer.train`, :func:`~.evaluation.robustness.evaluate`,
:func:`~.pipeline.reproduce.reproduce`, :func:`~.plots.plot_run`,
:func:`~.pipeline.report.refresh_diagnostics`, :func:`~.pipeline.compare.write_comparison`,
:func:`~.pipeline.sensitivity.sensitivity`). Under ``torchrun`` every rank runs the command
and rank 0 prints. ``python -m anl.integrations.mtard`` is the same command.

Errors. The library raises exceptions that name the argument or file at fault; :func:`main`
answers each with one line on stderr, ``anl-mtard <command>: error: <what is wrong>``, and an
exit status (``--debug``, before or after the subcommand, prints the traceback as well):

- **2, a usage error**: what the command line says is wrong, found before any work starts: a
  flag's value (a count below 1, an epsilon outside (0, 1], an unknown method, architecture,
  dataset, attack or profile), a combination of flags, a profile or ``--config`` file that is
  missing, not JSON or holds a wrong value, a path of the wrong kind (``--out`` naming a file,
  a directory where a checkpoint is expected), an output directory that holds a run without
  ``--resume``. Every :class:`~.checks.ArgumentError` is one.
- **1, a runtime failure**: what the command found, or the work itself, went wrong: a
  checkpoint, dataset or run file that is missing, unreadable or corrupt, a device that is not
  there, a training run that fails (non-finite loss), a full disk.
- **130**: interrupted (Ctrl-C).

A module named by an import path (``--student my_nets:tiny_cnn``) is looked for on
``sys.path``, to which the command appends the current directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from anl import __version__

from .attacks.registry import ATTACK_NAMES, DEFAULT_ATTACKS, TRANSFER_ATTACKS
from .checks import ArgumentError
from .data.registry import DATASETS, dataset_key, load_dataset
from .evaluation.robustness import evaluate
from .evaluation.validation import VAL_ATTACKS
from .methods.balancers import BALANCER_NAMES
from .methods.registry import METHOD_ORDER
from .models import MODELS, model_names
from .models.checkpoint import load_model, load_teacher
from .pipeline.compare import write_comparison
from .pipeline.figures import write_figures
from .pipeline.profile import Profile, profile_names
from .pipeline.report import refresh_diagnostics
from .pipeline.reproduce import reproduce
from .plots import plot_run
from .runtime.execution import MEMORY_FORMATS
from .runtime.files import read_json_object, safe_load
from .runtime.plugins import IMPORT_PATH
from .runtime.process import (
    Ranks,
    distributed_session,
    is_main_process,
    node_main_first,
    process_device,
    require_device,
    resolve_device,
)
from .tables import result_rows, results_table, write_results
from .training.checkpoints import run_paths
from .training.config import AUGMENTATIONS, TrainConfig
from .training.trainer import NonFiniteLossError, train

EXIT_FAILURE = 1
"""Exit status of a runtime failure (a missing or corrupt file, a missing device, a failed run)."""
EXIT_USAGE = 2
"""Exit status of a usage error (a wrong argument, profile value or kind of path)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C."""

_EXPECTED = (ValueError, TypeError, OSError, RuntimeError, ImportError, NonFiniteLossError)
"""The failures the library raises on purpose; anything else is reported as a likely bug."""
_PLAIN = (ValueError, ArgumentError, RuntimeError, ImportError)
"""Exception types whose message is reported without the type's name (it adds nothing)."""


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


def error_message(exc: BaseException) -> str:
    """The one line that reports ``exc``: its message on one line, with its type where the type
    says something, and a pointer to ``--debug`` for failures that look like bugs."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if type(exc) not in _PLAIN and not isinstance(exc, OSError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if not isinstance(exc, _EXPECTED):
        text += " (unexpected: rerun with --debug for the traceback, and report it)"
    return text


# ==============================================================================================
# Values of flags and paths (argparse types raise ArgumentTypeError: exit 2, one line)
# ==============================================================================================
def integer(minimum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer (``>= minimum`` unless ``None``)."""
    wanted = "an integer" if minimum is None else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted
    return parse


def number(text: str) -> float:
    """An argparse type: a finite number, also written as a fraction such as ``8/255``."""
    try:
        if "/" in text:
            num, _, den = text.partition("/")
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(
            f"expected a finite number or a fraction such as 8/255, got {text!r}"
        )
    return value


def epsilon(text: str) -> float:
    """An argparse type: an L-inf budget in ``(0, 1]`` (images are in ``[0, 1]``)."""
    value = number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"expected an epsilon in (0, 1] (images are in [0, 1]), got {text!r}"
        )
    return value


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: ``parse``, or ``None`` for ``none``/``null``/an empty string."""

    def parser(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else parse(text)

    parser.__name__ = getattr(parse, "__name__", "value")
    return parser


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object such as ``'{"kl_factor": 2.0}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def attack_limit(text: str) -> tuple[str, int]:
    """``"square=1000"`` -> ``("square", 1000)`` for ``--attack-n-examples``."""
    name, _, count = text.partition("=")
    if name not in ATTACK_NAMES or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"expected ATTACK=N with ATTACK one of {', '.join(ATTACK_NAMES)} and N >= 1, "
            f"got {text!r}"
        )
    return name, int(count)


def directory_argument(path: str | Path | None, flag: str) -> Path | None:
    """``path`` as a directory to read or create: an :class:`ArgumentError` if it is a file."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"argument {flag}: expected a directory, found the file '{path}'")
    return path


def results_directory_argument(path: str | Path, flag: str) -> Path:
    """``path`` as a finished reproduction's results directory (one with ``results.json``):
    an :class:`ArgumentError` naming ``flag`` otherwise."""
    directory = directory_argument(path, flag)
    if directory is None or not (directory / "results.json").is_file():
        raise ArgumentError(
            f"argument {flag}: expected a results directory (anl-mtard reproduce --out, with "
            f"results.json), found '{path}'"
        )
    return directory


def file_argument(path: str | Path | None, flag: str) -> Path | None:
    """``path`` as a file to read: an :class:`ArgumentError` if it is a directory (a missing file
    is the reader's ``FileNotFoundError``, a runtime failure)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if path.is_dir():
        raise ArgumentError(f"argument {flag}: expected a file, found the directory '{path}'")
    return path


def json_argument(path: str | Path, flag: str) -> dict[str, Any]:
    """The JSON object of a file of arguments (``--config``): any problem is a usage error."""
    try:
        return read_json_object(file_argument(path, flag))  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:
        raise ArgumentError(f"argument {flag}: {error_message(exc)}") from exc


def names_text(names: Sequence[str], *, import_path: bool = False) -> str:
    """``"a, b, c"`` (and ``"or an import path ..."``), for help texts."""
    text = ", ".join(names)
    return f"{text}, or {IMPORT_PATH}" if import_path else text


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after the subcommand too (it does not override one given before it)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error, too",
    )


# ==============================================================================================
# anl-mtard train
# ==============================================================================================
_FIELD_TYPES: dict[str, Callable[[str], Any]] = {
    "str": str,
    "str | None": optional(str),
    "int": integer(),
    "int | None": optional(integer()),
    "float": number,
    "float | None": optional(number),
    "dict[str, Any]": json_object,
}


def field_choices() -> dict[str, tuple[tuple[str, ...], bool]]:
    """TrainConfig fields with a fixed set of values: ``field -> (values, import paths too)``."""
    models = tuple(model_names())
    return {
        "method": (METHOD_ORDER, False),
        "dataset": (tuple(sorted(DATASETS)), True),
        "student": (models, True),
        "clean_teacher_arch": (models, True),
        "adv_teacher_arch": (models, True),
        "balancer": (BALANCER_NAMES, False),
        "memory_format": (MEMORY_FORMATS, False),
        "augment": (AUGMENTATIONS, False),
        "val_attack": (VAL_ATTACKS, False),
    }


def _default_text(value: Any) -> str | None:
    """How a field's default is printed in ``--help``; ``None``: not printed."""
    if value is None or value == {}:
        return None
    if isinstance(value, tuple):
        return " ".join(f"{v:.6g}" for v in value)
    return str(value)


def _field_metavar(f: dataclasses.Field) -> str:
    """The placeholder of a TrainConfig field's value in ``--help``."""
    if f.name.endswith("_kwargs") or f.name == "hyper":
        return "JSON"
    if f.name.endswith("teacher"):
        return "CHECKPOINT"
    if f.name == "student" or f.name.endswith("_arch"):
        return "ARCH"
    if f.name.endswith("_dir"):
        return "DIR"
    if f.type in ("int", "int | None"):
        return "N"
    return f.name.upper()


def _field_option(f: dataclasses.Field, choices: tuple[tuple[str, ...], bool] | None) -> dict:
    """The ``add_argument`` keywords of the flag of the TrainConfig field ``f``."""
    text = f.metadata.get("help", f.name.replace("_", " "))
    kwargs: dict[str, Any] = {"dest": f"cfg_{f.name}", "default": argparse.SUPPRESS}
    if choices is not None:  # "what: a, b, c (more)", the values before any parenthesis
        values, import_path = choices
        head, paren, tail = text.partition(" (")
        text = f"{head}: {names_text(values, import_path=import_path)}{paren}{tail}"
        if not import_path:
            kwargs["choices"] = values
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        text += " (required unless given by --config or a resumed run)"
    elif "default" not in text:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = _default_text(default)
        if shown is not None:
            text += f" (default: {shown})"
    if f.type == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif f.type == "tuple[float, ...]":
        kwargs.update(type=number, nargs="*", metavar="FRACTION")
    elif choices is not None and not choices[1]:
        kwargs["metavar"] = f.name.upper()  # `augment`'s "none" is a value, not None
    else:
        kwargs.update(type=_FIELD_TYPES[f.type], metavar=_field_metavar(f))
    kwargs["help"] = text.replace("%", "%%")
    return kwargs


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``: every :class:`~.training.config.TrainConfig` field is a flag.

    Precedence: the defaults, then ``RUN_DIR/config.json`` when resuming, then ``--config``
    (a JSON file of fields), then the flags given on the command line.
    """
    parser = subparsers.add_parser(
        "train",
        help="train a student (MTARD or a baseline) and write a run directory",
        usage="%(prog)s --out RUN_DIR [--resume] [--config JSON] [FIELD FLAGS ...]",
        description=(
            "Train a student and write a run directory (config.json, checkpoints/last.pt and "
            "best.pt, final.pt, logs/steps.csv and epochs.csv, metrics.json). Every "
            "TrainConfig field is a flag. Precedence: the defaults, then RUN_DIR/config.json "
            "when resuming, then --config, then the flags given."
        ),
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from checkpoints/last.pt (its config.json gives the "
        "fields not given here)",
    )
    parser.add_argument(
        "--config", dest="config_file", metavar="JSON", help="a JSON file of TrainConfig fields"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--stop-after-epochs",
        type=integer(1),
        default=None,
        metavar="N",
        help="stop (resumably) once this many epochs are complete",
    )
    add_debug_flag(parser)
    fields = parser.add_argument_group(
        "training configuration (TrainConfig fields)",
        "A field names a student, dataset or teacher architecture by a registered name or by "
        f"{IMPORT_PATH} (a model factory f(num_classes, in_channels), a DatasetInfo).",
    )
    choices = field_choices()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        fields.add_argument(flag, **_field_option(f, choices.get(f.name)))
    parser.set_defaults(func=run_train_command, prog=parser.prog)


def train_config(args: argparse.Namespace, run_dir: Path) -> TrainConfig:
    """The run's configuration from the saved one (``--resume``), ``--config`` and the flags.

    A wrong value raises an :class:`ArgumentError` (a usage error); a saved ``config.json``
    that is not JSON raises a ``ValueError`` naming it (a runtime failure).
    """
    saved = run_paths(run_dir)["config"]
    values: dict[str, Any] = {}
    if args.resume and saved.exists():
        values.update(read_json_object(saved))
    if args.config_file:
        values.update(json_argument(args.config_file, "--config"))
    for f in dataclasses.fields(TrainConfig):
        if hasattr(args, f"cfg_{f.name}"):
            values[f.name] = getattr(args, f"cfg_{f.name}")
    if args.resume and not saved.exists() and not {"method", "dataset"} <= set(values):
        raise ArgumentError(
            f"argument --resume: '{run_dir}' holds no run to resume (no config.json); give "
            "--method, --dataset, --student and --epochs to start one"
        )
    try:
        return TrainConfig.from_dict(values)
    except ArgumentError:
        raise
    except (ValueError, TypeError) as exc:
        raise ArgumentError(str(exc)) from exc


def run_train_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard train`` from parsed arguments; returns the exit status."""
    run_dir = directory_argument(args.out, "--out")
    assert run_dir is not None
    if not args.resume and run_paths(run_dir)["last"].exists():
        raise ArgumentError(
            f"argument --out: '{run_dir}' already holds a run; pass --resume to continue it, "
            "or choose another --out"
        )
    config = train_config(args, run_dir)
    directory_argument(config.data_dir, "--data-dir")
    require_device(resolve_device(config.device))  # each rank checks its own when it starts
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
    parser.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a model checkpoint written by anl-mtard, e.g. RUN_DIR/checkpoints/best.pt or "
        "RUN_DIR/final.pt",
    )
    parser.add_argument(
        "--attacks",
        nargs="+",
        choices=ATTACK_NAMES,
        default=None,
        metavar="ATTACK",
        help=f"attacks to run: {names_text(ATTACK_NAMES)} (default: "
        f"{' '.join(DEFAULT_ATTACKS)}, and {' '.join(TRANSFER_ATTACKS)} with --surrogate)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help=f"dataset: {names_text(sorted(DATASETS), import_path=True)} (default: the one "
        "the checkpoint records)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="dataset folder (default: $ANL_DATA_DIR or ~/.cache/anl/data)",
    )
    parser.add_argument(
        "--eps",
        type=epsilon,
        default=None,
        help="L-inf budget in (0, 1], e.g. 8/255 (default: the dataset's, 8/255 on CIFAR and "
        "0.1 on Fashion-MNIST)",
    )
    parser.add_argument(
        "--n-examples",
        type=integer(1),
        default=None,
        metavar="N",
        help="evaluate the first N test points only (default: all)",
    )
    parser.add_argument(
        "--batch-size",
        type=integer(1),
        default=256,
        metavar="N",
        help="evaluation batch size (default: 256)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:N or auto; cuda is cuda:LOCAL_RANK under torchrun (default: cpu)",
    )
    parser.add_argument(
        "--surrogate",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="the checkpoint that transfer_* attacks are crafted on (the adversarial teacher)",
    )
    parser.add_argument(
        "--surrogate-arch",
        default=None,
        metavar="ARCH",
        help="architecture of a surrogate in a foreign format (RobustBench/TRADES): "
        f"{names_text(model_names(), import_path=True)}; omit for checkpoints written by "
        "anl-mtard",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory (default: the checkpoint's directory)",
    )
    parser.add_argument(
        "--name", default=None, help="defense label and file stem (default: the checkpoint's)"
    )
    parser.add_argument(
        "--square-queries",
        type=integer(1),
        default=5000,
        metavar="N",
        help="queries of the Square attack (default: 5000)",
    )
    parser.add_argument(
        "--attack-n-examples",
        nargs="+",
        type=attack_limit,
        default=[],
        metavar="ATTACK=N",
        help="run these attacks on the first N points only (e.g. square=1000)",
    )
    parser.add_argument(
        "--seed",
        type=integer(0),
        default=0,
        metavar="N",
        help="seed of the random attacks (default: 0)",
    )
    parser.add_argument(
        "--memory-format",
        default="auto",
        choices=list(MEMORY_FORMATS),
        metavar="FORMAT",
        help=f"layout of the evaluated networks: {names_text(MEMORY_FORMATS)} (default: auto, "
        "channels_last on CPU and contiguous on GPUs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    parser.set_defaults(func=run_evaluate_command, prog=parser.prog)


def checkpoint_argument(path: Path, flag: str) -> Path:
    """A checkpoint to read: a usage error for a directory; a missing file that a run
    directory's ``checkpoints/`` holds is a ``FileNotFoundError`` that says so (any other
    missing file is the loader's ``FileNotFoundError``)."""
    if path.is_dir():
        hint = run_paths(path)["best"]
        raise ArgumentError(
            f"argument {flag}: expected a checkpoint file, found the directory '{path}'"
            + (f" (did you mean '{hint}'?)" if hint.exists() else "")
        )
    hint = path.parent / "checkpoints" / path.name
    if not path.exists() and hint.exists():
        raise FileNotFoundError(
            f"Checkpoint file '{path}' does not exist (did you mean '{hint}'?)."
        )
    return path


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The entries of a checkpoint other than its weights (``dataset``, ``method``, ...)."""
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        return {}
    return {k: v for k, v in checkpoint.items() if k != "state_dict"}


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard evaluate``; under ``torchrun`` each rank attacks its shard and rank 0
    writes."""
    directory_argument(args.out, "--out")
    directory_argument(args.data_dir, "--data-dir")
    checkpoint_argument(args.checkpoint, "CHECKPOINT")
    if args.surrogate is not None:
        checkpoint_argument(args.surrogate, "--surrogate")
    if args.dataset is not None:
        args.dataset = dataset_key(args.dataset, parameter="--dataset")
    if args.surrogate_arch is not None:
        MODELS.resolve(args.surrogate_arch, parameter="--surrogate-arch")
    with distributed_session(args.device) as ranks:
        return evaluate_checkpoint(args, ranks)


def evaluate_checkpoint(args: argparse.Namespace, ranks: Ranks) -> int:
    """``anl-mtard evaluate`` in a (possibly distributed) session."""
    device = process_device(args.device, ranks)  # one device per process: cuda:LOCAL_RANK
    metadata = checkpoint_metadata(args.checkpoint)
    dataset = args.dataset or metadata.get("dataset")
    if not isinstance(dataset, str):
        raise ArgumentError(
            f"argument --dataset: needed, as the checkpoint '{args.checkpoint}' does not record "
            "its dataset"
        )
    info = DATASETS.resolve(dataset, parameter="dataset")
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
    stem = f"eval_{name}_{dataset}".replace(":", ".")  # an import path: no ':' in file names
    json_path, md_path = write_results(results, out, stem, defense=defense)
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
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR", help="dataset folder (default: the profile's)"
    )
    parser.add_argument(
        "--model-dir",
        default=None,
        metavar="DIR",
        help="folder of the teachers' checkpoints, for profiles that load them",
    )
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
        "--device",
        default=None,
        help="auto, cpu, cuda or cuda:N (default: the profile's)",
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
    parser.add_argument("--no-plots", action="store_true", help="do not draw the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
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


# ==============================================================================================
# anl-mtard plot
# ==============================================================================================
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


# ==============================================================================================
# anl-mtard diagnose
# ==============================================================================================
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


# ==============================================================================================
# anl-mtard compare
# ==============================================================================================
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
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR", help="dataset folder (default: the profile's)"
    )
    parser.add_argument(
        "--model-dir",
        default=None,
        metavar="DIR",
        help="folder of the teachers' checkpoints, for profiles that load them",
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu, cuda or cuda:N (default: the profile's)"
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw the figure")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    parser.set_defaults(func=run_sensitivity_command, prog=parser.prog)


def run_sensitivity_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard sensitivity``; prints ``sensitivity.md``."""
    from .pipeline.sensitivity import sensitivity

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


if __name__ == "__main__":
    sys.exit(main())
