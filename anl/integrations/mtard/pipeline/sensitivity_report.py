"""The report of a sensitivity study (:mod:`.sensitivity`): one table, one figure, the numbers.

:func:`write_sensitivity_report` writes ``sensitivity.md`` (per student: each setting's
clean, PGD_TRADES robust and W-Robust accuracy, final weights and time, then the
reproduction's own rows, mean ± std over its seeds, for reference), ``sensitivity.json`` and
``figures/sensitivity_<student>.png`` (:func:`plot_sensitivity`: the three accuracies and the
final share of the adversarial loss per setting, the reproduction's MTARD as a band of ± one
seed std).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..attacks.registry import attack_title
from ..data.registry import dataset_title
from ..methods.registry import METHOD_ORDER, METHODS
from ..plots.curves import read_log
from ..plots.draw import save_figure
from ..runtime.files import atomic_write_text, json_finite
from ..runtime.optional import require
from .profile import EvalSettings, Profile
from .report_tables import mean_std, percent
from .stages import Stages, run_dir

ATTACK = "pgd_trades"
"""The attack of the study: the paper's headline white-box attack."""

GROUPS = {
    "anl": "ANL's r_w × β (MTARD)",
    "constant": "Constant weights (Baseline+MT's step)",
    "control": "Control: the official KL scale",
    "balancer": "Other balancers (MTARD's losses)",
}
_COLOURS = {"anl": "C0", "constant": "C1", "control": "C2", "balancer": "C4"}


def final_weights(run: Path) -> dict[str, float] | None:
    """The weights after a run's last step (the last row of ``logs/steps.csv``)."""
    path = run / "logs" / "steps.csv"
    if not path.exists():
        return None
    log = read_log(path)
    if not len(log.get("step", [])):
        return None
    return {k[2:]: float(v[-1]) for k, v in log.items() if k.startswith("w_")}


def adv_share(weights: Mapping[str, float] | None) -> float | None:
    """``w_adv / (w_adv + w_nat)``: comparable across rules whose weights have other totals."""
    if not weights or "adv" not in weights or "nat" not in weights:
        return None
    total = weights["adv"] + weights["nat"]
    return weights["adv"] / total if total > 0 and math.isfinite(total) else None


def setting_row(
    described: Mapping[str, Any],
    trained: Mapping[str, Any],
    evaluated: Mapping[str, Any],
    stages: Stages,
    names: tuple[str, str],
) -> dict[str, Any]:
    """One setting's line of ``sensitivity.json``."""
    diverged = trained.get("diverged") or evaluated.get("diverged")
    row: dict[str, Any] = {**described, "status": "diverged" if diverged else "done"}
    row["diverged"] = diverged
    weights = final_weights(Path(described["run_dir"]))
    entry = None if diverged else evaluated["attacks"][ATTACK]
    row.update(
        clean=None if entry is None else evaluated["clean"]["accuracy"],
        robust=None if entry is None else entry["robust"],
        w_robust=None if entry is None else entry["w_robust"],
        final_weights=weights,
        adv_share=adv_share(weights),
        best_epoch=(trained.get("best") or {}).get("epoch"),
        train_time_s=trained.get("time_s"),
        wall_s={
            kind: stages.history.get(name, {}).get("wall_s")
            for kind, name in zip(("train", "evaluate"), names, strict=True)
        },
    )
    return row


def reference(profile: Profile, results_dir: Path) -> dict[str, dict[str, Any]]:
    """The reproduction's rows: ``{student: {method: {clean, robust, w_robust, adv_share,
    final_weights, seeds}}}`` as mean ± std over its seeds (empty without ``results.json``)."""
    path = results_dir / "results.json"
    if not path.exists():
        return {}
    agg = json.loads(path.read_text()).get("aggregate", {})
    out: dict[str, dict[str, Any]] = {}
    for student, per_method in agg.items():
        for method in [m for m in METHOD_ORDER if m in per_method]:
            entry = per_method[method]
            attack = entry["attacks"].get(ATTACK)
            weights = [
                final_weights(run_dir(results_dir, student, method, k)) for k in entry["seeds"]
            ]
            weights = [w for w in weights if w]
            shares = [s for s in map(adv_share, weights) if s is not None]
            out.setdefault(student, {})[method] = {
                "label": METHODS[method].label,
                "seeds": entry["seeds"],
                "clean": entry["clean"],
                "robust": attack and attack["robust"],
                "w_robust": attack and attack["w_robust"],
                "final_weights": {k: mean_std([w[k] for w in weights]) for k in weights[0]}
                if weights
                else None,
                "adv_share": mean_std(shares) if shares else None,
            }
    return out


def _weights_text(weights: Mapping[str, Any] | None) -> str:
    if not weights:
        return "–"
    parts = []
    for name, value in weights.items():
        if isinstance(value, Mapping):
            std = value.get("std")
            parts.append(f"{name} {value['mean']:.3g}" + (f" ± {std:.2g}" if std else ""))
        else:
            parts.append(f"{name} {value:.3g}")
    return ", ".join(parts)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def sensitivity_table(
    rows: Sequence[Mapping[str, Any]], ref: Mapping[str, Any], student: str
) -> list[str]:
    """The Markdown table of one student: the settings by group, then the reproduction."""
    lines = [
        f"| Setting | Clean (%) | {attack_title(ATTACK)} robust (%) | W-Robust (%) | "
        "Final weights | Time (s) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for group, title in GROUPS.items():
        members = [r for r in rows if r["group"] == group and r["student"] == student]
        if members:
            lines.append(f"| *{title}* | | | | | |")
        for r in members:
            times = [r["wall_s"]["train"] or r["train_time_s"], r["wall_s"]["evaluate"]]
            time_text = f"{sum(t for t in times if t):.1f}" if any(times) else "–"
            if r["status"] == "diverged":
                lines.append(f"| {r['label']} | diverged (NaN loss) | | | | {time_text} |")
                continue
            lines.append(
                f"| {r['label']} | {_pct(r['clean'])} | {_pct(r['robust'])} | "
                f"{_pct(r['w_robust'])} | {_weights_text(r['final_weights'])} | {time_text} |"
            )
    if ref:
        seeds = ", ".join(map(str, next(iter(ref.values()))["seeds"]))
        lines.append(f"| *The reproduction: mean ± std over its seeds ({seeds})* | | | | | |")
        for entry in ref.values():
            robust, w_robust = entry["robust"], entry["w_robust"]
            lines.append(
                f"| {entry['label']} | {percent(entry['clean'])} | "
                f"{percent(robust) if robust else '–'} | {percent(w_robust) if w_robust else '–'}"
                f" | {_weights_text(entry['final_weights'])} | |"
            )
    return lines


def reading(rows: Sequence[Mapping[str, Any]], ref: Mapping[str, Any]) -> list[str]:
    """What the table says about the question of the study, in numbers: the best setting of
    each group against ANL at the paper's setting, next to the reproduction's seed spread."""
    done = [r for r in rows if r["status"] == "done"]
    mtard = ref.get("mtard", {}).get("w_robust")
    lines = []
    std = mtard and mtard.get("std")
    if std:
        lines.append(
            f"- Seed spread: the reproduction's MTARD W-Robust is {percent(mtard)} over "
            f"{mtard['n']} seeds; a one-seed difference under about {200 * std:.2f} points "
            "(twice the std) is within that noise."
        )
    else:
        lines.append("- Seed spread: not available (the reproduction has one seed for MTARD).")
    paper = next((r for r in done if r["name"] == "anl-rw0.025-beta1"), None)
    for group in GROUPS:
        members = [r for r in done if r["group"] == group]
        if not members:
            continue
        best = max(members, key=lambda r: r["w_robust"])
        text = f"- Best of *{GROUPS[group]}*: {best['label']}, W-Robust {_pct(best['w_robust'])}"
        if paper is not None and best is not paper:
            gap = 100 * (best["w_robust"] - paper["w_robust"])
            text += f", {gap:+.2f} points against ANL at the paper's r_w 0.025, β 1"
            if std:
                text += " (beyond twice the seed std)" if abs(gap) > 200 * std else " (within it)"
        lines.append(text + ".")
    return lines


def plot_sensitivity(
    rows: Sequence[Mapping[str, Any]], ref: Mapping[str, Any], path: Path, title: str
) -> Path:
    """Clean, robust and W-Robust accuracy and the final share of ``L_adv`` per setting (one
    row each, coloured by group), the reproduction's MTARD as a band of mean ± one seed std
    and Baseline+MT's mean as a dashed line."""
    figure = require("matplotlib.figure", "Figures (off with --no-plots)")
    panels = [
        ("clean", "Clean (%)", 100),
        ("robust", f"{attack_title(ATTACK)} robust (%)", 100),
        ("w_robust", "W-Robust (%)", 100),
        ("adv_share", "final w_adv / (w_adv + w_nat)", 1),
    ]
    height = 1.2 + 0.28 * len(rows)
    fig = figure.Figure(figsize=(14.0, height), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True)
    ys = list(range(len(rows)))[::-1]
    for ax, (key, name, scale) in zip(axes, panels, strict=True):
        labelled: set[str] = set()
        for y, r in zip(ys, rows, strict=True):
            if r.get(key) is not None:
                group = r["group"]
                label = GROUPS[group] if group not in labelled else None
                labelled.add(group)
                ax.plot(scale * r[key], y, "o", color=_COLOURS[group], label=label)
        band = (ref.get("mtard") or {}).get(key)
        if band:
            mean, std = scale * band["mean"], scale * (band.get("std") or 0.0)
            ax.axvline(mean, color="k", lw=1, label="MTARD, reproduction (mean ± std)")
            ax.axvspan(mean - std, mean + std, color="k", alpha=0.12)
        constant = (ref.get("baseline_mt") or {}).get(key)
        if constant:
            ax.axvline(scale * constant["mean"], color="C1", ls="--", lw=1, label="Baseline+MT")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    labels = [r["label"] + (" (diverged)" if r["status"] == "diverged" else "") for r in rows]
    axes[0].set_yticks(ys, labels)
    handles, names = axes[2].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(handles), 3))
    fig.suptitle(title)
    return save_figure(fig, path)


def write_sensitivity_report(
    profile: Profile,
    results_dir: Path,
    out: Path,
    *,
    runs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]],
    names: Sequence[tuple[str, str]],
    stages: Stages,
    evaluation: EvalSettings,
    meta: Mapping[str, Any],
    plots: bool,
) -> dict[str, Any]:
    """Write ``sensitivity.md``, ``sensitivity.json`` and the figures; return the JSON's
    content. ``runs``: per setting, its description, its training's and its evaluation's
    results; ``names``: its two stage names."""
    rows = [setting_row(*run, stages, pair) for run, pair in zip(runs, names, strict=True)]
    ref = reference(profile, results_dir)
    n_points = evaluation.n_examples or "all"
    lines = [
        f"# Sensitivity of MTARD, profile `{profile.name}`, seed {meta['seed']}",
        "",
        f"From the reproduction in `{results_dir}`. Each setting trains MTARD's student once "
        f"(seed {meta['seed']}) with the profile's configuration and teachers, changed only as "
        f"its label says, and is evaluated as the reproduction is: {evaluation.checkpoint} "
        f"checkpoint (validation W-Robust), {attack_title(ATTACK)}, L-inf eps = "
        f"{evaluation.eps:.4g}, {n_points} test points, evaluation seed {evaluation.seed}.",
        "",
        f"Columns: *Clean*, clean accuracy; *{attack_title(ATTACK)} robust*, accuracy under "
        "the attack (a point counts when right on both its clean and its attacked input); "
        "*W-Robust* = (Clean + Robust) / 2 (Eq. 12); *Final weights*, the weights of L_adv "
        "and L_nat after the last training step (ANL, RLW, SoftAdapt and FAMO sum to 1, DWA "
        "and ReLoBRaLo to 2; GLS's are effective weights, uncertainty weighting's and IMTL-L's "
        "learned ones, about 1 / L); *Time*, the wall time of the setting's training and "
        "evaluation (stages.json; the training time each run recorded is in sensitivity.json). The last rows are the reproduction's own, mean ± sample std "
        "over its seeds.",
    ]
    for student in profile.students:
        lines += ["", f"## {student} on {dataset_title(profile.dataset)}", ""]
        lines += sensitivity_table(rows, ref.get(student, {}), student)
        lines += ["", *reading([r for r in rows if r["student"] == student], ref.get(student, {}))]
    figures = []
    if plots:
        for student in profile.students:
            mine = [r for r in rows if r["student"] == student]
            title = f"MTARD sensitivity, {student}, profile {profile.name}, seed {meta['seed']}"
            path = out / "figures" / f"sensitivity_{student}.png"
            figures.append(plot_sensitivity(mine, ref.get(student, {}), path, title))
        lines += ["", "Figure: " + ", ".join(str(p.relative_to(out)) for p in figures) + "."]
    atomic_write_text(out / "sensitivity.md", "\n".join(lines) + "\n")
    stages.save_invocation()
    results = {
        "profile": profile.name,
        "results_dir": str(results_dir),
        **meta,
        "attack": ATTACK,
        "eval_settings": evaluation.to_json(),
        "settings": rows,
        "reference": ref,
        "stages": stages.rows,
        "invocations": [dict(row) for row in stages.invocations],
        "figures": [str(p.relative_to(out)) for p in figures],
    }
    atomic_write_text(out / "sensitivity.json", json.dumps(json_finite(results), indent=2) + "\n")
    return results
