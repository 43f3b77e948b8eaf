"""The figures of a reproduction's report, from the run directories' logs.

Fig. 2 (the ablation's clean and robust accuracy, :func:`plot_ablation`), Fig. 3 (the total
training loss of the ablation's steps), Fig. 4 (the relative losses of Baseline+MT and
MTARD), MTARD's ANL weights, and the validation accuracy per epoch of every run
(:func:`write_figures`; the drawing itself is :mod:`..plots`'). matplotlib is imported only
here, when figures are drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..attacks.registry import attack_title
from ..methods.registry import ABLATION, METHODS
from ..plots import (
    plot_accuracy,
    plot_relative_losses,
    plot_total_loss,
    plot_weights,
    read_log,
    save_png,
)
from ..runtime.optional import require
from .profile import Profile, Teacher
from .stages import run_dir

FIG4_METHODS = ("baseline_mt", "mtard")
"""The runs of the paper's Fig. 4 (relative losses): the two-teacher ablation and MTARD."""


def plot_ablation(per_method: Mapping[str, Any], path: Path, title: str) -> Path | None:
    """Grouped bars of clean and robust accuracy of the three ablation variants (Fig. 2)."""
    variants = [(m, METHODS[m].ablation) for m in ABLATION if m in per_method]
    if not variants:
        return None
    figure = require("matplotlib.figure", "Figures (off with --no-plots)")

    attacks = list(per_method[variants[0][0]]["attacks"])
    groups = ["Clean", *[attack_title(a) for a in attacks]]
    fig = figure.Figure(figsize=(max(6.0, 1.3 * len(groups)), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(variants)
    x = np.arange(len(groups))
    for i, (method, label) in enumerate(variants):
        stats = [per_method[method]["clean"]] + [
            per_method[method]["attacks"][a]["robust"] for a in attacks
        ]
        means = [100 * s["mean"] for s in stats]
        errors = [100 * (s["std"] or 0.0) for s in stats]
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, means, width, yerr=errors, label=label)
    ax.set_xticks(x, groups, rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(variants))
    return save_png(fig, path)


def write_figures(
    profile: Profile,
    out: Path,
    agg: Mapping[str, Mapping[str, Any]],
    teachers: Mapping[str, Teacher],
) -> list[Path]:
    """The figures: Fig. 2 (ablation bars), Fig. 3 (total loss of Baseline, Baseline+MT,
    MTARD), Fig. 4 (relative losses of Baseline+MT and MTARD), MTARD's ANL weights, and the
    validation clean / robust / W-Robust accuracy per epoch of every run (first seed for the
    loss figures)."""
    figures = out / "figures"
    written: list[Path] = []
    seed = profile.seeds[0]

    def log(student: str, method: str, kind: str) -> dict[str, np.ndarray] | None:
        path = run_dir(out, student, method, seed) / "logs" / f"{kind}.csv"
        return read_log(path) if path.exists() else None

    for student, per_method in agg.items():
        path = plot_ablation(
            per_method, figures / f"ablation_{student}.png", f"Ablation, {student} (Fig. 2)"
        )
        if path is not None:
            written.append(path)
        total = {METHODS[m].label: log(student, m, "epochs") for m in ABLATION if m in per_method}
        total = {k: v for k, v in total.items() if v is not None}
        if total:
            written.append(
                plot_total_loss(
                    total,
                    figures / f"total_loss_{student}.png",
                    title=f"Total training loss, {student}, seed {seed} (Fig. 3)",
                )
            )
        relative = {
            METHODS[m].label: log(student, m, "epochs") for m in FIG4_METHODS if m in per_method
        }
        relative = {k: v for k, v in relative.items() if v is not None}
        if relative:
            written.append(
                plot_relative_losses(
                    relative,
                    figures / f"relative_losses_{student}.png",
                    title=f"Relative training losses, {student}, seed {seed} (Fig. 4)",
                )
            )
        steps = log(student, "mtard", "steps") if "mtard" in per_method else None
        if steps is not None:
            written.append(
                plot_weights(
                    steps,
                    figures / f"mtard_weights_{student}.png",
                    title=f"MTARD weights (ANL), {student}, seed {seed}",
                )
            )
        for method in per_method:
            for k in profile.seeds:
                epochs_csv = run_dir(out, student, method, k) / "logs" / "epochs.csv"
                if epochs_csv.exists():
                    written.append(
                        plot_accuracy(
                            read_log(epochs_csv),
                            figures / "accuracy" / f"{student}_{method}_seed{k}.png",
                            title=f"Validation accuracy, {student} {METHODS[method].label} "
                            f"seed {k}",
                        )
                    )
    for role, teacher in teachers.items():
        if teacher.run_dir is not None and (teacher.run_dir / "logs" / "epochs.csv").exists():
            written.append(
                plot_accuracy(
                    read_log(teacher.run_dir / "logs" / "epochs.csv"),
                    figures / "accuracy" / f"teacher_{role}.png",
                    title=f"Validation accuracy, {role} teacher",
                )
            )
    return written
