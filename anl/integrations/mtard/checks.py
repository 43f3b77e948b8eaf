"""Argument checks that all speak one sentence: "Parameter `x` should be ... Found `x = ...`."

Every public function of the MTARD package validates its arguments before it computes, and
names the first wrong one with the value it was given. :func:`fail` is that sentence, raised as
an :class:`ArgumentError` (a ``ValueError``); :func:`check_int` and :func:`check_float` are the
two checks that recur. The command line answers an :class:`ArgumentError` with exit status 2
(a usage error) and any other failure with 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NoReturn


class ArgumentError(ValueError):
    """A wrong argument (a value, a name, a combination): what :func:`fail` raises.

    It is a ``ValueError``, so code that catches ``ValueError`` sees no difference; the
    ``anl-mtard`` command answers it as a usage error (exit status 2), whereas a missing or
    corrupt file found while running, or a failed run, is a runtime failure (exit status 1).
    """


def fail(name: str, value: object, expected: str) -> NoReturn:
    """Raise ``ArgumentError("Parameter `name` should be <expected>. Found `name = value`.")``.

    Example:
        >>> fail("jobs", 0, "an integer >= 1")
        Traceback (most recent call last):
        ...
        anl.integrations.mtard.checks.ArgumentError: Parameter `jobs` should be an integer >= 1. Found `jobs = 0`.
    """
    raise ArgumentError(f"Parameter `{name}` should be {expected}. Found `{name} = {value!r}`.")


def is_real(value: object) -> bool:
    """Whether ``value`` is an ``int`` or ``float`` (``bool`` excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: object, *, minimum: int) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``; else :func:`fail`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        fail(name, value, f"an integer >= {minimum}")
    return value


def check_float(name: str, value: object, expected: str, ok: Callable[[float], bool]) -> float:
    """``value`` if it is a finite real number for which ``ok(value)`` holds; else :func:`fail`
    with ``expected`` as the wanted value's description."""
    if not is_real(value) or not math.isfinite(value) or not ok(value):  # type: ignore[arg-type]
        fail(name, value, expected)
    return value  # type: ignore[return-value]
