"""Figures from the CSV logs of training runs (:mod:`.training.logs`): the paper's Fig. 3 and 4.

All figures read plain dicts of NumPy arrays as :func:`read_log` returns them (one array per
CSV column), so they work on any run directory without pandas. They are drawn with
matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend change) and
written as PNG files. matplotlib (``pip install "anl[mtard]"``) is imported when a figure is
drawn.

- :func:`plot_total_loss`: the total training loss per epoch of several runs, with a zoom on
  the last epochs (paper Fig. 3: Baseline, Baseline+MT, MTARD, right panel the final 60 of 300
  epochs).
- :func:`plot_relative_losses`: the relative losses ``L~_i = L_i(t) / L_i(0)`` (paper Eq. 7)
  per epoch, one panel per run (paper Fig. 4: Baseline+MT and MTARD).
- :func:`plot_weights`: the weight of each loss over the steps.
- :func:`plot_accuracy`: validation clean, robust and W-Robust accuracy per epoch.
- :func:`plot_run`: the figures of one run directory.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .runtime.optional import require

Log = Mapping[str, np.ndarray]


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


def _columns(log: Log, prefix: str) -> list[str]:
    return [name for name in log if name.startswith(prefix)]


def _check_log(log: Log, needed: tuple[str, ...], what: str) -> None:
    missing = [name for name in needed if name not in log]
    if missing:
        raise ValueError(
            f"Parameter `{what}` should hold the columns {list(needed)}. Found columns "
            f"{list(log)} (missing {missing})."
        )


def per_epoch(log: Log, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)``: the column as is for an epochs log, averaged per epoch for a
    steps log (one that has a ``step`` column)."""
    _check_log(log, ("epoch", column), "log")
    epochs, values = np.asarray(log["epoch"]), np.asarray(log[column])
    if "step" not in log:
        return epochs, values
    unique = np.unique(epochs)
    return unique, np.array([np.nanmean(values[epochs == e]) for e in unique])


def _math(symbol: str, name: str) -> str:
    """A mathtext label such as ``$\\tilde{L}_{\\mathrm{adv}}$`` (underscores escaped)."""
    escaped = name.replace("_", r"\_")
    return "$" + symbol + r"_{\mathrm{" + escaped + "}}$"


def _figure(ncols: int, *, width: float = 5.0, height: float = 3.6):
    figure = require("matplotlib.figure", "Figures (off with --no-plots)")
    fig = figure.Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _epoch_axis(ax) -> None:
    """Label the x axis "epoch" with whole-number ticks (no 2.5 epochs)."""
    ticker = require("matplotlib.ticker", "Figures (off with --no-plots)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def save_png(fig, out_path: str | Path) -> Path:
    """Write ``fig`` as a PNG file (folders created); returns its path."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def plot_total_loss(
    runs: Mapping[str, Log],
    out_path: str | Path,
    *,
    column: str = "total",
    zoom_fraction: float = 0.2,
    title: str | None = "Total training loss",
) -> Path:
    """Total loss per epoch of several runs, full run on the left, last epochs on the right.

    The analogue of the paper's Fig. 3 (``L_total`` of Baseline, Baseline+MT and MTARD; the
    right panel shows the final 60 of 300 epochs, ``zoom_fraction = 0.2``).

    Args:
        runs: label -> log (epochs or steps log of :func:`read_log`; a steps log is averaged
            per epoch).
        out_path: PNG file to write.
        column: the loss column (``"total"``, or e.g. ``"loss_adv"``).
        zoom_fraction: the fraction of the last epochs shown in the right panel, in (0, 1].
    """
    if not runs:
        raise ValueError("Parameter `runs` should hold at least one run. Found none.")
    if not 0 < zoom_fraction <= 1:
        raise ValueError(
            "Parameter `zoom_fraction` should be in (0, 1]. "
            f"Found `zoom_fraction = {zoom_fraction!r}`."
        )
    fig, (full, zoom) = _figure(2)
    last_epoch = 0.0
    series = {}
    for label, log in runs.items():
        series[label] = per_epoch(log, column)
        if len(series[label][0]):
            last_epoch = max(last_epoch, float(np.nanmax(series[label][0])))
    start = last_epoch - max(1.0, round(zoom_fraction * last_epoch)) + 1
    for label, (epochs, values) in series.items():
        full.plot(epochs, values, label=label)
        keep = epochs >= start
        zoom.plot(epochs[keep], values[keep], label=label, marker="." if keep.sum() < 30 else None)
    full.set_title(title or "")
    zoom.set_title(f"epochs {int(start)} to {int(last_epoch)}")
    for ax in (full, zoom):
        _epoch_axis(ax)
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    full.legend()
    return save_png(fig, out_path)


def plot_relative_losses(
    runs: Mapping[str, Log],
    out_path: str | Path,
    *,
    title: str | None = "Relative training losses",
) -> Path:
    """Relative losses ``L~_i(t) = L_i(t) / L_i(0)`` per epoch, one panel per run.

    The analogue of the paper's Fig. 4 (``L~_adv`` and ``L~_nat`` of Baseline+MT and MTARD):
    the lower a relative loss, the more the student learnt from that teacher; their gap shows
    the trade-off. Each log needs ``epoch`` and ``rel_<name>`` columns (an epochs log, or a
    steps log averaged per epoch).
    """
    if not runs:
        raise ValueError("Parameter `runs` should hold at least one run. Found none.")
    fig, axes = _figure(len(runs))
    for ax, (label, log) in zip(axes, runs.items(), strict=True):
        names = _columns(log, "rel_")
        if not names:
            raise ValueError(
                f"The log of run {label!r} should hold `rel_<loss>` columns. Found {list(log)}."
            )
        for name in names:
            epochs, values = per_epoch(log, name)
            ax.plot(epochs, values, label=_math("\\tilde{L}", name[len("rel_") :]))
        ax.set_title(label)
        _epoch_axis(ax)
        ax.set_ylabel("relative loss L(t) / L(0)")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_png(fig, out_path)


def plot_weights(log: Log, out_path: str | Path, *, title: str | None = "Loss weights") -> Path:
    """The weight ``w_i`` of each loss over the optimisation steps (a steps log).

    Under ANL the weights move towards the loss whose relative value fell least (Eq. 8-9).
    """
    _check_log(log, ("step",), "log")
    names = _columns(log, "w_")
    if not names:
        raise ValueError(f"Parameter `log` should hold `w_<loss>` columns. Found {list(log)}.")
    fig, (ax,) = _figure(1, width=6.0)
    for name in names:
        ax.plot(log["step"], log[name], label=_math("w", name[len("w_") :]))
    ax.set_xlabel("step")
    ax.set_ylabel("weight")
    ax.set_title(title or "")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, out_path)


def plot_accuracy(
    log: Log, out_path: str | Path, *, title: str | None = "Validation accuracy"
) -> Path:
    """Validation clean, robust and W-Robust accuracy (paper Eq. 12) per epoch, in percent."""
    _check_log(log, ("epoch", "val_clean", "val_robust", "val_wrobust"), "log")
    fig, (ax,) = _figure(1, width=6.0)
    for column, label in (
        ("val_clean", "clean"),
        ("val_robust", "robust"),
        ("val_wrobust", "W-Robust"),
    ):
        ax.plot(log["epoch"], 100 * np.asarray(log[column]), label=label, marker=".")
    if not np.isfinite(np.asarray(log["val_clean"])).any():
        ax.text(0.5, 0.5, "no validation split", transform=ax.transAxes, ha="center")
    _epoch_axis(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "")
    ax.grid(alpha=0.3)
    # Below the axes: clean accuracy runs along the top, robust along the bottom, so any
    # corner inside would cover a curve.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    return save_png(fig, out_path)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Draw one run's weights, accuracy, total loss and relative losses.

    Reads ``run_dir/logs/steps.csv`` and ``run_dir/logs/epochs.csv`` and writes
    ``weights.png``, ``accuracy.png``, ``total_loss.png``, ``relative_losses.png`` into
    ``out_dir`` (default ``run_dir/plots``). Returns ``{figure name: path}``.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    steps = read_log(run_dir / "logs" / "steps.csv")
    epochs = read_log(run_dir / "logs" / "epochs.csv")
    label = run_dir.name
    return {
        "weights": plot_weights(steps, out / "weights.png", title=f"Loss weights ({label})"),
        "accuracy": plot_accuracy(epochs, out / "accuracy.png", title=f"Validation ({label})"),
        "total_loss": plot_total_loss({label: epochs}, out / "total_loss.png"),
        "relative_losses": plot_relative_losses({label: epochs}, out / "relative_losses.png"),
    }
