"""``anl-mtard train``: a ``TrainConfig`` from one flag per field and ``--config``, then
:func:`~anl.integrations.mtard.training.trainer.train`."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checks import ArgumentError
from ..data.registry import DATASETS
from ..evaluation.validation import VAL_ATTACKS
from ..methods.balancers import BALANCER_NAMES
from ..methods.registry import METHOD_ORDER
from ..models import model_names
from ..runtime.execution import MEMORY_FORMATS
from ..runtime.files import read_json_object
from ..runtime.plugins import IMPORT_PATH
from ..runtime.process import (
    is_main_process,
    require_device,
    resolve_device,
)
from ..training.checkpoints import run_paths
from ..training.config import AUGMENTATIONS, TrainConfig
from ..training.trainer import train
from .arguments import (
    add_debug_flag,
    directory_argument,
    integer,
    json_argument,
    json_object,
    names_text,
    number,
    optional,
)

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
