"""Two finished reproductions side by side: how much a change of setting moves each method.

The first use is the KL-scale control of issue #22: the ``default`` profile against
``default-kl10`` (the distillation KL multiplied by 10) shows how much of each gap between
MTARD, the distillation baselines and SAT is the step budget rather than the method. For each
student and method present in both ``results.json`` files the table gives, per reproduction,
the clean accuracy, the robust accuracy under one attack and W-Robust (paper Eq. 12; mean ±
sample std over seeds), and the difference B − A of the means, in points; then both
reproductions' premise rows (:func:`.diagnostics.premise`, under PGD_TRADES).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..attacks.registry import attack_title
from ..methods.registry import METHOD_ORDER, METHODS
from ..runtime.files import atomic_write_text, read_json_object
from .diagnostics import ROWS, premise

__all__ = ["compare_results", "comparison_text", "write_comparison"]


def _cell(stat: Mapping[str, Any] | None) -> str:
    if not stat:
        return "—"
    std = stat.get("std")
    return f"{100 * stat['mean']:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _delta(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> str:
    if not a or not b:
        return "—"
    return f"{100 * (b['mean'] - a['mean']):+.2f}"


def compare_results(
    a: Mapping[str, Any], b: Mapping[str, Any], attack: str = "pgd_trades"
) -> list[dict[str, Any]]:
    """One row per (student, method) present in both results: the clean, robust and W-Robust
    statistics of each under ``attack`` (``{"mean", "std", "n"}``, fractions)."""
    rows = []
    agg_a, agg_b = a.get("aggregate") or {}, b.get("aggregate") or {}
    for student in agg_a:
        if student not in agg_b:
            continue
        methods = [m for m in METHOD_ORDER if m in agg_a[student] and m in agg_b[student]]
        for method in methods:
            row: dict[str, Any] = {"student": student, "method": method}
            for key, agg in (("a", agg_a), ("b", agg_b)):
                entry = agg[student][method]
                attack_stats = (entry.get("attacks") or {}).get(attack) or {}
                row[key] = {
                    "clean": entry.get("clean"),
                    "robust": attack_stats.get("robust"),
                    "w_robust": attack_stats.get("w_robust"),
                    "seeds": entry.get("seeds"),
                }
            rows.append(row)
    return rows


def comparison_text(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    labels: Sequence[str],
    attack: str = "pgd_trades",
) -> str:
    """The Markdown page: the side-by-side table and both premise tables."""
    label_a, label_b = labels
    title = attack_title(attack)
    lines = [
        f"# `{label_a}` and `{label_b}` side by side",
        "",
        f"A: `{label_a}` (profile `{a.get('profile', '?')}`, {a.get('date', 'undated')}); "
        f"B: `{label_b}` (profile `{b.get('profile', '?')}`, {b.get('date', 'undated')}). "
        f"Accuracy in %, mean ± std over seeds; robust and W-Robust under {title}; "
        "B − A in points.",
        "",
        f"| Student | Method | Clean A | Clean B | B − A | {title} A | {title} B | B − A "
        "| W-Robust A | W-Robust B | B − A |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in compare_results(a, b, attack):
        cells = [row["student"], METHODS[row["method"]].label]
        for key in ("clean", "robust", "w_robust"):
            cells += [
                _cell(row["a"][key]),
                _cell(row["b"][key]),
                _delta(row["a"][key], row["b"][key]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## The premise in each",
        "",
        "| Premise row | A | B |",
        "|---|---:|---:|",
    ]
    checks = premise(a), premise(b)  # the premise is defined under PGD_TRADES
    for key, what in ROWS.items():
        cells = []
        for check in checks:
            stat = check["rows"].get(key)
            cells.append("not measured" if stat is None else f"{stat['mean']:+.1f}")
        lines.append(f"| {what} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def write_comparison(
    dir_a: str | Path,
    dir_b: str | Path,
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    attack: str = "pgd_trades",
) -> Path:
    """Write :func:`comparison_text` of two results directories to ``out``; return its path."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    a = read_json_object(dir_a / "results.json")
    b = read_json_object(dir_b / "results.json")
    names = list(labels) if labels else [dir_a.name, dir_b.name]
    path = Path(out)
    atomic_write_text(path, comparison_text(a, b, names, attack))
    return path
