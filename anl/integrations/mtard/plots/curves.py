"""The curves the figures draw, from the CSV logs of training runs (:mod:`..training.logs`).

A log reads as a plain dict of NumPy arrays, one per CSV column (:func:`read_log`), so that
any run directory can be drawn without pandas. :func:`per_epoch` and :func:`step_positions`
put a column on an epoch axis; :func:`seed_band` summarises the logs of one run's seeds as
their mean, min and max (:class:`Band`); :func:`lr_drops` reads the epochs after which the
learning rate (and ANL's rate ``r_w``, which decays with it) was multiplied by ``lr_gamma``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

Log = Mapping[str, np.ndarray]
#: A run to draw: one log, or one log per seed (drawn as their mean and min-max band).
Seeds = Log | Sequence[Log]


def read_log(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Read a CSV log into ``{column: float64 array}`` in the file's column order.

    Empty cells and ``nan`` read as NaN. Raises ``ValueError`` naming the file when it is
    missing, has no header, or holds a value that is not a number.
    """
    path = Path(csv_path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise ValueError(f"Could not read the log {str(path)!r}: {exc}") from exc
    if not rows:
        raise ValueError(f"The log {str(path)!r} should start with a header row. Found no rows.")
    header, body = rows[0], [r for r in rows[1:] if r]
    columns: dict[str, list[float]] = {name: [] for name in header}
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise ValueError(
                f"Line {line} of {str(path)!r} should hold {len(header)} values. Found {len(row)}."
            )
        for name, cell in zip(header, row, strict=True):
            try:
                columns[name].append(float(cell) if cell != "" else math.nan)
            except ValueError as exc:
                raise ValueError(
                    f"Line {line} of {str(path)!r}: column `{name}` should be a number. "
                    f"Found {cell!r}."
                ) from exc
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}


def columns_with(log: Log, prefix: str) -> list[str]:
    return [name for name in log if name.startswith(prefix)]


def check_columns(log: Log, needed: tuple[str, ...], what: str) -> None:
    missing = [name for name in needed if name not in log]
    if missing:
        raise ValueError(
            f"Parameter `{what}` should hold the columns {list(needed)}. Found columns "
            f"{list(log)} (missing {missing})."
        )


def as_seeds(run: Seeds, what: str) -> list[Log]:
    """The logs of a run: ``[run]`` for one log, else the sequence as a list."""
    logs = [run] if isinstance(run, Mapping) else list(run)
    if not logs:
        raise ValueError(f"Parameter `{what}` should hold at least one log. Found none.")
    return logs


def per_epoch(log: Log, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)``: the column as is for an epochs log, averaged per epoch for a
    steps log (one that has a ``step`` column)."""
    check_columns(log, ("epoch", column), "log")
    epochs, values = np.asarray(log["epoch"]), np.asarray(log[column])
    if "step" not in log:
        return epochs, values
    unique = np.unique(epochs)
    return unique, np.array([np.nanmean(values[epochs == e]) for e in unique])


def step_positions(log: Log) -> np.ndarray:
    """Where each row of a steps log sits on an epoch axis: the ``n`` steps of epoch ``e`` at
    ``e - 1 + 1/n, ..., e`` (the last step of an epoch at the epoch's own number, where the
    epochs log puts that epoch's row)."""
    check_columns(log, ("epoch", "step"), "log")
    epochs = np.asarray(log["epoch"])
    positions = np.empty_like(epochs, dtype=np.float64)
    for e in np.unique(epochs):
        rows = np.flatnonzero(epochs == e)
        positions[rows] = e - 1 + np.arange(1, len(rows) + 1) / len(rows)
    return positions


@dataclasses.dataclass(frozen=True)
class Band:
    """A column over seeds: at each ``x``, the ``mean``, ``low`` (min) and ``high`` (max) of
    the ``n`` seeds' values."""

    x: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


def seed_band(logs: Sequence[Log], column: str, *, per_step: bool = False, group: int = 1) -> Band:
    """Mean, min and max of ``column`` over the logs of one run's seeds, at the epochs (or,
    with ``per_step``, the steps, placed by :func:`step_positions`) that every log has.

    With ``group > 1``, each seed's values are first averaged over consecutive groups of
    ``group`` rows (the last group may be shorter), each group placed at its rows' mean
    position: the band is then the seeds' spread, not the step-to-step noise.
    """
    if not logs:
        raise ValueError("Parameter `logs` should hold at least one log. Found none.")
    if group < 1:
        raise ValueError(f"Parameter `group` should be a positive integer. Found {group!r}.")
    if per_step:
        series = []
        for log in logs:
            check_columns(log, ("epoch", "step", column), "log")
            series.append((step_positions(log), np.asarray(log[column])))
    else:
        series = [per_epoch(log, column) for log in logs]
    x = series[0][0]
    for xs, _ in series[1:]:
        x = np.intersect1d(x, xs)
    x = np.unique(x)
    rows = []
    for xs, ys in series:
        keep = np.isin(xs, x)
        rows.append(ys[keep][np.argsort(xs[keep], kind="stable")])
    values = np.vstack(rows)
    if group > 1 and len(x):
        starts = np.arange(0, len(x), group)
        counts = np.diff(np.append(starts, len(x)))
        x = np.add.reduceat(x, starts) / counts
        values = np.add.reduceat(values, starts, axis=1) / counts
    with warnings.catch_warnings():  # all-NaN columns (no validation split) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return Band(
            x=x,
            mean=np.nanmean(values, axis=0),
            low=np.nanmin(values, axis=0),
            high=np.nanmax(values, axis=0),
            n=len(logs),
        )


def lr_drops(log: Log) -> list[float]:
    """The epochs after which the logged learning rate fell: the milestones that took effect.

    Read from the ``lr`` column (an epochs or a steps log), so a milestone at the last epoch,
    which changes nothing that was trained, is not among them. A log without ``lr`` has none.
    """
    if "lr" not in log or "epoch" not in log:
        return []
    epochs, lr = per_epoch(log, "lr")
    return [float(epochs[i]) for i in range(len(lr) - 1) if lr[i + 1] < lr[i]]


def milestones(logs: Sequence[Log]) -> list[float]:
    return sorted({e for log in logs for e in lr_drops(log)})
