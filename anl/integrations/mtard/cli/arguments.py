"""Values of flags and paths shared by the subcommands: argparse types (an
``ArgumentTypeError`` is exit 2, one line) and path checks (an ``ArgumentError``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..attacks.registry import ATTACK_NAMES
from ..checks import ArgumentError
from ..runtime.files import read_json_object
from ..runtime.plugins import IMPORT_PATH
from .errors import error_message


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


def add_placement_flags(parser: argparse.ArgumentParser) -> None:
    """``--data-dir``, ``--model-dir`` and ``--device``: where a profile's data, teachers and
    computation are, each defaulting to the profile's."""
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


def add_quiet_flags(parser: argparse.ArgumentParser) -> None:
    """``--no-plots`` and ``--no-progress``, for the commands that draw figures."""
    parser.add_argument("--no-plots", action="store_true", help="do not draw the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
