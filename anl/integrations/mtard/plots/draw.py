"""The figures drawn from training logs (:mod:`.curves`): the paper's Fig. 3 and 4, the ANL
weights and the validation accuracy.

They are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no global
backend change) and written twice by :func:`save_figure`: a PNG at :data:`DPI` dots per inch
and an SVG of the same name beside it (:func:`figure_files`). matplotlib
(``pip install "anl[mtard]"``) is imported when a figure is drawn.

Every panel with an epoch axis marks the epochs after which the lr (and ANL's ``r_w``) dropped
(:func:`.curves.lr_drops`) with dashed vertical lines. A run given as several logs (one per
seed) is drawn as the mean over the seeds with a band from the lowest to the highest seed
(:func:`.curves.seed_band`); a run of one log is drawn as is.

- :func:`plot_total_loss`: the total training loss per epoch of several runs, with a zoom on
  the last epochs when the run is long enough (paper Fig. 3: Baseline, Baseline+MT, MTARD,
  right panel the final 60 of 300 epochs).
- :func:`plot_relative_losses`: the relative losses ``L~_i = L_i(t) / L_i(0)`` (paper Eq. 7)
  per epoch, one panel per run (paper Fig. 4: Baseline+MT and MTARD).
- :func:`plot_weights`: the weight of each loss over the steps, on an epoch axis.
- :func:`plot_accuracy`: validation clean, robust and W-Robust accuracy per epoch of one run;
  :func:`plot_accuracy_grid`: the same for several runs, one panel each, in one figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..runtime.optional import require
from .curves import (
    Band,
    Log,
    Seeds,
    as_seeds,
    check_columns,
    columns_with,
    milestones,
    seed_band,
)

DPI = 200
"""Resolution of the PNG files."""
VECTOR_FORMAT = "svg"
"""The vector file written beside each PNG: SVG, which browsers and GitHub's Markdown show
inline (a PDF is only a link there), and which is a few tens of kB for these curves."""
MILESTONE_GID = "milestone"
"""The ``gid`` of the dashed vertical lines that mark the lr milestones."""
BAND_GID = "seed-band"
"""The ``gid`` of the shaded min-max band over seeds."""

_PURPOSE = "Figures (off with --no-plots)"
_ACCURACY = (("val_clean", "clean"), ("val_robust", "robust"), ("val_wrobust", "W-Robust"))


def _mark_milestones(ax, epochs: Sequence[float], label: str = "lr drop") -> None:
    """Dashed vertical lines at the milestones, in the legend once as ``label``."""
    for i, epoch in enumerate(epochs):
        ax.axvline(
            epoch,
            color="0.45",
            linestyle=(0, (4, 3)),
            linewidth=0.9,
            zorder=1,
            gid=MILESTONE_GID,
            label=label if i == 0 else "_nolegend_",
        )


def _draw_band(ax, band: Band, *, label: str, color=None, marker=None):
    """The mean as a line and, for several seeds, the min-max band in its colour."""
    (line,) = ax.plot(band.x, band.mean, label=label, color=color, marker=marker, zorder=3)
    if band.n > 1:
        ax.fill_between(
            band.x,
            band.low,
            band.high,
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
            zorder=2,
            gid=BAND_GID,
        )
    return line


def _seeds_text(runs: Sequence[Sequence[Log]], fig) -> str:
    """`` (mean of 3 seeds, band: min to max)`` when any run has several seeds, else ``""``;
    on a line of its own in a figure narrower than 8 inches (one panel)."""
    counts = sorted({len(logs) for logs in runs})
    if counts[-1] < 2:
        return ""
    n = "/".join(str(c) for c in counts)
    return ("\n" if fig.get_figwidth() < 8 else " ") + f"(mean of {n} seeds, band: min to max)"


def _math(symbol: str, name: str) -> str:
    """A mathtext label such as ``$\\tilde{L}_{\\mathrm{adv}}$`` (underscores escaped)."""
    escaped = name.replace("_", r"\_")
    return "$" + symbol + r"_{\mathrm{" + escaped + "}}$"


def _figure(nrows: int, ncols: int, *, width: float = 5.0, height: float = 3.6, **kwargs):
    """A figure of ``nrows x ncols`` panels of ``width x height`` inches; ``(fig, axes)``
    with ``axes`` a 2-D array."""
    figure = require("matplotlib.figure", _PURPOSE)
    fig = figure.Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _epoch_axis(ax) -> None:
    """Label the x axis "epoch" with whole-number ticks (no 2.5 epochs); data over less than
    two epochs (a one-epoch run) get a range of one epoch more and a tick per epoch."""
    ticker = require("matplotlib.ticker", _PURPOSE)
    ax.set_xlabel("epoch")
    lo, hi = ax.dataLim.intervalx
    if np.isfinite([lo, hi]).all() and hi - lo < 2:
        ax.set_xlim(lo - 0.5, hi + 0.5)
        ax.xaxis.set_major_locator(ticker.MultipleLocator(1))
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def figure_files(png_path: str | Path) -> list[Path]:
    """The files :func:`save_figure` writes for ``png_path``: the PNG and the vector file."""
    path = Path(png_path)
    return [path, path.with_suffix("." + VECTOR_FORMAT)]


def save_figure(fig, out_path: str | Path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI` and as an SVG beside it (same name, ``.svg``;
    folders created); returns the PNG's path.

    The SVG is byte-for-byte the same for the same figure (no date, fixed element ids), so a
    redrawn figure that did not change leaves no difference in a repository.
    """
    path = Path(out_path)
    if path.suffix != ".png":
        raise ValueError(
            f"Parameter `out_path` should name a .png file (the .svg goes beside it). "
            f"Found {str(path)!r}."
        )
    mpl = require("matplotlib", _PURPOSE)
    png, vector = figure_files(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, format="png", dpi=DPI)
    with mpl.rc_context({"svg.hashsalt": "anl-mtard"}):
        fig.savefig(vector, format=VECTOR_FORMAT, metadata={"Date": None})
    return png


def zoom_window(last_epoch: int, fraction: float, min_epochs: int) -> tuple[int, int] | None:
    """The last epochs a zoom panel shows, ``(first, last)``, or None when the zoom would
    show fewer than ``min_epochs`` epochs or the whole run (a short run: nothing to zoom on).

    >>> zoom_window(300, 0.2, 3), zoom_window(20, 0.2, 3), zoom_window(3, 0.2, 3)
    ((241, 300), (17, 20), None)
    """
    width = max(1, round(fraction * last_epoch))
    if width < min_epochs or width >= last_epoch:
        return None
    return last_epoch - width + 1, last_epoch


def plot_total_loss(
    runs: Mapping[str, Seeds],
    out_path: str | Path,
    *,
    column: str = "total",
    zoom_fraction: float = 0.2,
    min_zoom_epochs: int = 3,
    title: str | None = "Total training loss",
) -> Path:
    """Total loss per epoch of several runs, full run on the left, last epochs on the right.

    The analogue of the paper's Fig. 3 (``L_total`` of Baseline, Baseline+MT and MTARD; the
    right panel shows the final 60 of 300 epochs, ``zoom_fraction = 0.2``). The zoom panel is
    drawn only when it shows at least ``min_zoom_epochs`` epochs and not the whole run
    (:func:`zoom_window`); a short run has the full panel alone.

    Args:
        runs: label -> log, or label -> one log per seed (mean and min-max band); epochs or
            steps logs of :func:`read_log` (a steps log is averaged per epoch).
        out_path: PNG file to write (the SVG goes beside it).
        column: the loss column (``"total"``, or e.g. ``"loss_adv"``).
        zoom_fraction: the fraction of the last epochs shown in the right panel, in (0, 1].
        min_zoom_epochs: the fewest epochs worth a zoom panel.
    """
    if not runs:
        raise ValueError("Parameter `runs` should hold at least one run. Found none.")
    if not 0 < zoom_fraction <= 1:
        raise ValueError(
            "Parameter `zoom_fraction` should be in (0, 1]. "
            f"Found `zoom_fraction = {zoom_fraction!r}`."
        )
    logs = {label: as_seeds(run, "runs") for label, run in runs.items()}
    bands = {label: seed_band(seeds, column) for label, seeds in logs.items()}
    last_epoch = max((int(np.nanmax(b.x)) for b in bands.values() if len(b.x)), default=0)
    window = zoom_window(last_epoch, zoom_fraction, min_zoom_epochs)
    fig, axes = _figure(1, 2 if window else 1, width=5.0 if window else 6.0)
    full = axes[0, 0]
    drops = milestones([log for seeds in logs.values() for log in seeds])
    for i, (label, band) in enumerate(bands.items()):
        _draw_band(full, band, label=label, color=f"C{i}", marker="." if len(band.x) < 30 else None)
    _mark_milestones(full, drops)
    if title:
        fig.suptitle(title + _seeds_text(list(logs.values()), fig))
    panels = [full]
    if window:
        first, last = window
        zoom = axes[0, 1]
        for i, (label, band) in enumerate(bands.items()):
            keep = band.x >= first
            part = Band(band.x[keep], band.mean[keep], band.low[keep], band.high[keep], band.n)
            _draw_band(zoom, part, label=label, color=f"C{i}", marker=".")
        _mark_milestones(zoom, [m for m in drops if first <= m <= last])
        pad = 0.03 * (last - first)
        zoom.set_xlim(first - pad, last + pad)
        full.set_title("all epochs")
        zoom.set_title(f"epochs {first} to {last}")
        panels.append(zoom)
    for ax in panels:
        _epoch_axis(ax)
        ax.set_ylabel("total loss" if column == "total" else column)
        ax.grid(alpha=0.3)
    full.legend()
    return save_figure(fig, out_path)


def plot_relative_losses(
    runs: Mapping[str, Seeds],
    out_path: str | Path,
    *,
    title: str | None = "Relative training losses",
) -> Path:
    """Relative losses ``L~_i(t) = L_i(t) / L_i(0)`` per epoch, one panel per run, one y axis.

    The analogue of the paper's Fig. 4 (``L~_adv`` and ``L~_nat`` of Baseline+MT and MTARD):
    the lower a relative loss, the more the student learnt from that teacher; their gap shows
    the trade-off. Each log needs ``epoch`` and ``rel_<name>`` columns (an epochs log, or a
    steps log averaged per epoch); a run of several logs is drawn as their mean and band.
    """
    if not runs:
        raise ValueError("Parameter `runs` should hold at least one run. Found none.")
    logs = {label: as_seeds(run, "runs") for label, run in runs.items()}
    fig, axes = _figure(1, len(logs), sharey=True)
    for ax, (label, seeds) in zip(axes[0], logs.items(), strict=True):
        names = columns_with(seeds[0], "rel_")
        if not names:
            raise ValueError(
                f"The log of run {label!r} should hold `rel_<loss>` columns. "
                f"Found {list(seeds[0])}."
            )
        for i, name in enumerate(names):
            band = seed_band(seeds, name)
            marker = "." if len(band.x) < 30 else None
            symbol = _math("\\tilde{L}", name[len("rel_") :])
            _draw_band(ax, band, label=symbol, color=f"C{i}", marker=marker)
        _mark_milestones(ax, milestones(seeds))
        ax.set_title(label)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0, 0].set_ylabel("relative loss L(t) / L(0)")
    if title:
        fig.suptitle(title + _seeds_text(list(logs.values()), fig))
    return save_figure(fig, out_path)


def plot_weights(
    logs: Seeds,
    out_path: str | Path,
    *,
    title: str | None = "Loss weights",
    max_points: int = 500,
) -> Path:
    """The weight ``w_i`` of each loss over the optimisation steps (steps logs), on an epoch
    axis (:func:`step_positions`), with the lr milestones; several logs (seeds) as their
    mean and min-max band.

    A run of more than ``max_points`` steps is drawn as the means of groups of
    ``ceil(steps / max_points)`` consecutive steps (said in the y label): a 20-epoch run of
    430 steps an epoch as 478 points of 18 steps, which keeps the SVG small and makes the band
    the spread between seeds rather than the noise between steps.

    Under ANL the weights move towards the loss whose relative value fell least (Eq. 8-9), at
    the rate ``r_w``, which drops with the lr at each milestone.
    """
    seeds = as_seeds(logs, "logs")
    for log in seeds:
        check_columns(log, ("step",), "log")
    names = columns_with(seeds[0], "w_")
    if not names:
        raise ValueError(f"Parameter `log` should hold `w_<loss>` columns. Found {list(seeds[0])}.")
    group = max(1, math.ceil(min(len(log["step"]) for log in seeds) / max_points))
    fig, axes = _figure(1, 1, width=6.5)
    ax = axes[0, 0]
    for i, name in enumerate(names):
        band = seed_band(seeds, name, per_step=True, group=group)
        marker = "." if len(band.x) < 30 else None
        _draw_band(ax, band, label=_math("w", name[len("w_") :]), color=f"C{i}", marker=marker)
    adaptive = any(np.nanmax(log[n]) > np.nanmin(log[n]) for log in seeds for n in names)
    _mark_milestones(ax, milestones(seeds), "lr and $r_w$ drop" if adaptive else "lr drop")
    _epoch_axis(ax)
    ax.set_ylabel("weight" + (f" (mean of {group} steps)" if group > 1 else ""))
    ax.set_title((title or "") + _seeds_text([seeds], fig))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out_path)


def _accuracy_panel(ax, seeds: Sequence[Log]) -> None:
    """Clean, robust and W-Robust validation accuracy (%) of one run, with the milestones."""
    for log in seeds:
        check_columns(log, ("epoch", *(c for c, _ in _ACCURACY)), "log")
    for i, (column, label) in enumerate(_ACCURACY):
        band = seed_band(seeds, column)
        percent = Band(band.x, 100 * band.mean, 100 * band.low, 100 * band.high, band.n)
        marker = "." if len(band.x) < 30 else None
        _draw_band(ax, percent, label=label, color=f"C{i}", marker=marker)
    _mark_milestones(ax, milestones(seeds))
    if not any(np.isfinite(np.asarray(log["val_clean"])).any() for log in seeds):
        ax.text(0.5, 0.5, "no validation split", transform=ax.transAxes, ha="center")
    _epoch_axis(ax)
    ax.grid(alpha=0.3)


def plot_accuracy(
    log: Seeds, out_path: str | Path, *, title: str | None = "Validation accuracy"
) -> Path:
    """Validation clean, robust and W-Robust accuracy (paper Eq. 12) per epoch, in percent,
    of one run (several logs: their mean and min-max band)."""
    seeds = as_seeds(log, "log")
    fig, axes = _figure(1, 1, width=6.0)
    ax = axes[0, 0]
    _accuracy_panel(ax, seeds)
    ax.set_ylabel("accuracy (%)")
    ax.set_title((title or "") + _seeds_text([seeds], fig))
    # Below the axes: clean accuracy runs along the top, robust along the bottom, so any
    # corner inside would cover a curve.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    return save_figure(fig, out_path)


def plot_accuracy_grid(
    runs: Mapping[str, Seeds],
    out_path: str | Path,
    *,
    ncols: int = 4,
    title: str | None = "Validation accuracy",
) -> Path:
    """Validation clean, robust and W-Robust accuracy per epoch of several runs: one panel per
    run (a run of several logs as their mean and min-max band), one shared y axis in percent,
    ``ncols`` panels a row, one legend below."""
    if not runs:
        raise ValueError("Parameter `runs` should hold at least one run. Found none.")
    logs = {label: as_seeds(run, "runs") for label, run in runs.items()}
    ncols = min(ncols, len(logs))
    nrows = math.ceil(len(logs) / ncols)
    ranges = {
        (float(np.nanmin(s[0]["epoch"])), float(np.nanmax(s[0]["epoch"]))) for s in logs.values()
    }
    same = len(ranges) == 1  # one epoch axis for all: its labels on the lowest panels only
    fig, axes = _figure(nrows, ncols, width=3.2, height=2.6, sharey=True, sharex=same)
    flat = list(axes.flat)
    for i, (ax, (label, seeds)) in enumerate(zip(flat, logs.items(), strict=False)):
        _accuracy_panel(ax, seeds)
        ax.set_title(label, fontsize="medium")
        if same and i + ncols < len(logs):
            ax.set_xlabel("")
            ax.tick_params(labelbottom=False)
    for ax in flat[len(logs) :]:
        ax.remove()
    for row in axes:
        row[0].set_ylabel("accuracy (%)")
    handles, labels = flat[0].get_legend_handles_labels()
    for ax in flat[1 : len(logs)]:  # a milestone only some runs have
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            if text not in labels:
                handles.append(handle)
                labels.append(text)
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    if title:
        fig.suptitle(title + _seeds_text(list(logs.values()), fig))
    return save_figure(fig, out_path)
