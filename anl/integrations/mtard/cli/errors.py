"""Exit statuses and the one line that reports a failure of ``anl-mtard``."""

from __future__ import annotations

from ..checks import ArgumentError
from ..training.trainer import NonFiniteLossError

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


def error_message(exc: BaseException) -> str:
    """The one line that reports ``exc``: its message on one line, with its type where the type
    says something, and a pointer to ``--debug`` for failures that look like bugs."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if type(exc) not in _PLAIN and not isinstance(exc, OSError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if not isinstance(exc, _EXPECTED):
        text += " (unexpected: rerun with --debug for the traceback, and report it)"
    return text
