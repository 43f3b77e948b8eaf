"""The figures of a reproduction's report, from the evaluations and the run directories' logs.

Per student: Fig. 2 (the ablation's clean and robust accuracy per seed, :func:`plot_ablation`),
Fig. 3 (the total training loss of the ablation's variants), Fig. 4 (the relative losses of
Baseline+MT and MTARD), MTARD's ANL weights, and one grid of the validation accuracy per epoch
of every method; one grid for the teachers trained here (:func:`write_figures`; the curves are
drawn by :mod:`..plots.draw`). Curves are the mean over the profile's seeds with a min-max band,
and mark the lr milestones. Each figure is a PNG and an SVG (:func:`..plots.draw.figure_files`).
matplotlib is imported only here and there, when figures are drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..attacks.registry import attack_title
from ..methods.registry import ABLATION, METHODS
from ..plots.curves import read_log
from ..plots.draw import (
    figure_files,
    plot_accuracy_grid,
    plot_relative_losses,
    plot_total_loss,
    plot_weights,
    save_figure,
)
from ..runtime.optional import require
from .profile import Profile, Teacher
from .stages import run_dir

FIG4_METHODS = ("baseline_mt", "mtard")
"""The runs of the paper's Fig. 4 (relative losses): the two-teacher ablation and MTARD."""

Results = Mapping[tuple[str, str, int], Mapping[str, Any]]


def ablation_values(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``{"clean": ..., <attack>: ...}``: one method's accuracy (%) per seed, clean and robust
    under each attack, from its evaluations (:func:`..evaluation.robustness.evaluate`)."""
    out = {"clean": np.array([100 * r["clean"]["accuracy"] for r in per_seed])}
    for attack in per_seed[0]["attacks"]:
        out[attack] = np.array([100 * r["attacks"][attack]["robust"] for r in per_seed])
    return out


def ablation_limits(groups: Sequence[Sequence[np.ndarray]]) -> list[tuple[float, float]]:
    """The y range of each panel of :func:`plot_ablation`: centred on the panel's values, all
    of one height (so that a point is as tall in every panel), the largest spread of values
    plus a margin of 15 % each side and at least one point in all, within 0-100 %.

    >>> ablation_limits([[np.array([80.0, 82.0])], [np.array([60.0]), np.array([70.0])]])
    [(74.0, 88.0), (58.0, 72.0)]
    """
    spans = [(min(v.min() for v in g), max(v.max() for v in g)) for g in groups]
    height = max(1.0, max(hi - lo for lo, hi in spans)) * 1.4
    limits = []
    for lo, hi in spans:
        bottom = (lo + hi - height) / 2
        bottom = min(max(bottom, 0.0), max(100.0 - height, 0.0))
        limits.append((round(float(bottom), 6), round(float(bottom + height), 6)))
    return limits


def plot_ablation(
    results: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str
) -> Path | None:
    """Clean accuracy and robust accuracy under each attack of the ablation's variants
    (Fig. 2): one panel per column, each seed a dot, the mean a bar, the means joined.

    The panels share their height in points, not their range (:func:`ablation_limits`): the
    differences of 1-5 points between the variants fill a panel, and are as tall in every one.

    Args:
        results: method -> its evaluations, one per seed; methods other than the ablation's
            are ignored.
        path: the PNG to write (the SVG goes beside it).
    Returns:
        The PNG's path, or None when no ablation variant is in ``results``.
    """
    variants = [(m, METHODS[m].ablation) for m in ABLATION if results.get(m)]
    if not variants:
        return None
    ticker = require("matplotlib.ticker", "Figures (off with --no-plots)")
    lines = require("matplotlib.lines", "Figures (off with --no-plots)")

    values = {m: ablation_values(results[m]) for m, _ in variants}
    columns = list(values[variants[0][0]])
    names = {"clean": "Clean", **{a: attack_title(a) for a in columns[1:]}}
    limits = ablation_limits([[values[m][c] for m, _ in variants] for c in columns])
    ncols = min(4, len(columns))
    nrows = -(-len(columns) // ncols)
    figure = require("matplotlib.figure", "Figures (off with --no-plots)")
    fig = figure.Figure(figsize=(2.6 * ncols, 2.5 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.flat)
    ticks = _short_labels([label for _, label in variants])
    x = np.arange(len(variants))
    for ax, column, ylim in zip(flat, columns, limits, strict=False):
        means = [float(values[m][column].mean()) for m, _ in variants]
        ax.plot(x, means, color="0.6", linewidth=0.8, zorder=1)
        for j, (method, _) in enumerate(variants):
            seeds = values[method][column]
            ax.plot(
                [j - 0.28, j + 0.28],
                [means[j], means[j]],
                color=f"C{j}",
                linewidth=2.5,
                solid_capstyle="butt",
                zorder=3,
                clip_on=False,  # a value on the panel's edge (0 %) stays visible
                gid="mean",
            )
            ax.plot(
                j + np.linspace(-0.14, 0.14, len(seeds)) * (len(seeds) > 1),  # side by side
                seeds,
                linestyle="none",
                marker="o",
                markersize=4,
                markerfacecolor="white",
                markeredgecolor=f"C{j}",
                zorder=4,
                clip_on=False,
                gid="seed",
            )
        ax.set_ylim(*ylim)
        ax.set_xlim(-0.6, len(variants) - 0.4)
        ax.set_xticks(x, ticks, fontsize="small")
        for j, tick in enumerate(ax.get_xticklabels()):
            tick.set_color(f"C{j}")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        ax.set_title(names[column], fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    for ax in flat[len(columns) :]:
        ax.remove()
    for row in axes:
        row[0].set_ylabel("accuracy (%)")
    n = sorted({len(results[m]) for m, _ in variants})
    seeds_text = "/".join(str(k) for k in n) + (" seed" if n == [1] else " seeds")
    handles = [
        lines.Line2D([], [], color="0.2", linewidth=2.5, label=f"mean of {seeds_text}"),
        lines.Line2D(
            [],
            [],
            color="0.2",
            linestyle="none",
            marker="o",
            markersize=4,
            markerfacecolor="white",
            label="one seed",
        ),
        *[
            lines.Line2D([], [], color=f"C{j}", linewidth=2.5, label=label)
            for j, (_, label) in enumerate(variants)
        ],
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize="small")
    height = limits[0][1] - limits[0][0]
    fig.suptitle(
        f"{title}: clean and robust accuracy; each panel spans {height:.3g} percentage points"
    )
    return save_figure(fig, path)


def _short_labels(labels: Sequence[str]) -> list[str]:
    """Each label without the previous one when it extends it: ``Baseline``, ``+MT``,
    ``+ANL`` for ``Baseline``, ``Baseline+MT``, ``Baseline+MT+ANL``."""
    out = []
    for i, label in enumerate(labels):
        previous = labels[i - 1] if i else ""
        out.append(label[len(previous) :] if previous and label.startswith(previous) else label)
    return out


def write_figures(
    profile: Profile,
    out: Path,
    agg: Mapping[str, Mapping[str, Any]],
    teachers: Mapping[str, Teacher],
    student_results: Results,
) -> list[Path]:
    """Draw the figures into ``out/figures``; return every file written (PNG and SVG).

    Per student: ``ablation_<student>`` (Fig. 2, from ``student_results``: the evaluation of
    each ``(student, method, seed)``), ``total_loss_<student>`` (Fig. 3: Baseline,
    Baseline+MT, MTARD), ``relative_losses_<student>`` (Fig. 4: Baseline+MT and MTARD),
    ``mtard_weights_<student>`` (the ANL weights) and ``accuracy_<student>`` (validation
    clean / robust / W-Robust per epoch, one panel per method); ``accuracy_teachers`` for the
    teachers trained here. The curves are over all of a method's seeds.
    """
    figures = out / "figures"
    written: list[Path] = []

    def logs(student: str, method: str, kind: str) -> list[dict[str, np.ndarray]]:
        seeds = agg[student][method].get("seeds", profile.seeds)
        paths = [run_dir(out, student, method, k) / "logs" / f"{kind}.csv" for k in seeds]
        return [read_log(p) for p in paths if p.exists()]

    def runs(student: str, methods: Sequence[str]) -> dict[str, list[dict[str, np.ndarray]]]:
        found = {METHODS[m].label: logs(student, m, "epochs") for m in methods if m in agg[student]}
        return {label: seeds for label, seeds in found.items() if seeds}

    for student, per_method in agg.items():
        results = {
            m: [student_results[student, m, k] for k in per_method[m]["seeds"]] for m in per_method
        }
        path = plot_ablation(
            results, figures / f"ablation_{student}.png", f"Ablation, {student} (Fig. 2)"
        )
        if path is not None:
            written += figure_files(path)
        total = runs(student, ABLATION)
        if total:
            path = plot_total_loss(
                total,
                figures / f"total_loss_{student}.png",
                title=f"Total training loss, {student} (Fig. 3)",
            )
            written += figure_files(path)
        relative = runs(student, FIG4_METHODS)
        if relative:
            path = plot_relative_losses(
                relative,
                figures / f"relative_losses_{student}.png",
                title=f"Relative training losses, {student} (Fig. 4)",
            )
            written += figure_files(path)
        steps = logs(student, "mtard", "steps") if "mtard" in per_method else []
        if steps:
            path = plot_weights(
                steps,
                figures / f"mtard_weights_{student}.png",
                title=f"MTARD weights (ANL), {student}",
            )
            written += figure_files(path)
        accuracy = runs(student, list(per_method))
        if accuracy:
            path = plot_accuracy_grid(
                accuracy,
                figures / f"accuracy_{student}.png",
                title=f"Validation accuracy per epoch, {student}",
            )
            written += figure_files(path)
    trained = {
        t.label: [read_log(t.run_dir / "logs" / "epochs.csv")]
        for role, t in teachers.items()
        if t.run_dir is not None and (t.run_dir / "logs" / "epochs.csv").exists()
    }
    if trained:
        path = plot_accuracy_grid(
            trained,
            figures / "accuracy_teachers.png",
            title="Validation accuracy per epoch, teachers",
        )
        written += figure_files(path)
    return written
