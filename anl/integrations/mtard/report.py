"""The report of an MTARD reproduction, from the evaluations to the files a reader opens.

:func:`aggregate` takes the mean and std over seeds; :func:`write_report` writes
``white_box.md`` (paper Tables 2-3), ``black_box.md`` (Tables 4-5), ``ablation.md`` (Fig. 2),
``teachers.md`` (Table 1), ``results.json``, the figures (:func:`write_figures`: Fig. 2-4
analogues, ANL weights, accuracy per epoch) and ``summary.md`` (wall times, machine, command
and a comparison with the paper's claims computed from the numbers,
:func:`compare_with_claims`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import evaluation as _evaluate
from . import loop as _loop
from .profiles import METHOD_ORDER, Teacher, _device, _eval_settings, _json_settings
from .stages import _run_dir, _Stages, _write_text

__all__ = [
    "BASELINES",
    "BLACK_BOX",
    "DEFENSE_LABELS",
    "TABLE1_ATTACKS",
    "WHITE_BOX",
    "aggregate",
    "compare_with_claims",
    "write_figures",
    "write_report",
]

DEFENSE_LABELS = {
    "natural": "Natural",
    "sat": "SAT",
    "trades": "TRADES",
    "ard": "ARD",
    "rslad": "RSLAD",
    "baseline": "Baseline",
    "baseline_mt": "Baseline+MT",
    "mtard": "MTARD",
}
"""Row labels of the tables (the paper's names; Baseline+MT+ANL is MTARD)."""

BASELINES = ("sat", "trades", "ard", "rslad")
"""The methods MTARD is compared with in the paper's Tables 2-5."""

WHITE_BOX = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack")

BLACK_BOX = ("transfer_pgd", "transfer_cw", "square")

TABLE1_ATTACKS = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf")


# ==============================================================================================
# Aggregation and tables
# ==============================================================================================
def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (``n - 1``; ``None`` with one value)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return {"mean": float(array.mean()), "std": std, "n": len(array)}


def aggregate(
    student_results: Mapping[tuple[str, str, int], Mapping[str, Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean and std over seeds: ``{student: {method: {"clean", "attacks": {a: {...}}}}}``."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for (student, method, _seed), result in student_results.items():
        grouped.setdefault((student, method), []).append(result)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (student, method), results in grouped.items():
        attacks = list(results[0]["attacks"])
        out.setdefault(student, {})[method] = {
            "seeds": [r["train_seed"] for r in results],
            "clean": _mean_std([r["clean"]["accuracy"] for r in results]),
            "attacks": {
                a: {
                    # Clean accuracy on the points the attack ran on (a subset for attacks of
                    # the evaluation's attack_n_examples, else every evaluated point).
                    "clean": _mean_std(
                        [r["attacks"][a].get("clean", r["clean"])["accuracy"] for r in results]
                    ),
                    "robust": _mean_std([r["attacks"][a]["robust"] for r in results]),
                    "w_robust": _mean_std([r["attacks"][a]["w_robust"] for r in results]),
                }
                for a in attacks
            },
        }
    return out


def _table_rows(
    agg: Mapping[str, Mapping[str, Any]], dataset: str, attacks: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    for attack in attacks:
        for method in METHOD_ORDER:
            if method not in agg or attack not in agg[method]["attacks"]:
                continue
            entry = agg[method]
            values = entry["attacks"][attack]
            rows.append(
                {
                    "dataset": dataset,
                    "defense": DEFENSE_LABELS[method],
                    "attack": attack,
                    "clean": values["clean"]["mean"],
                    "clean_std": values["clean"]["std"],
                    "robust": values["robust"]["mean"],
                    "robust_std": values["robust"]["std"],
                    "w_robust": values["w_robust"]["mean"],
                    "w_robust_std": values["w_robust"]["std"],
                }
            )
    return rows


def _pct(stat: Mapping[str, Any]) -> str:
    text = f"{100 * stat['mean']:.2f}"
    return text if stat.get("std") is None else f"{text} ± {100 * stat['std']:.2f}"


def _table_caption(
    profile: Mapping[str, Any], student: str, agg: Mapping[str, Any], attacks: Sequence[str]
) -> str:
    settings = _eval_settings(profile)
    n_seeds = max(len(v["seeds"]) for v in agg.values())
    title = _evaluate.DATASET_TITLES.get(profile["dataset"], profile["dataset"])
    return (
        f"## {student} on {title}\n\n"
        f"Mean ± sample std over {n_seeds} seed(s); {settings['checkpoint']} checkpoint "
        f"(validation W-Robust); L-inf eps = {settings['eps']:.4g}; "
        f"{settings['n_examples'] or 'all'} test points{_subset_text(settings, attacks)}. Robust counts a "
        f"point only when it is right on both the clean and the attacked input. W-Robust = "
        f"(Clean + Robust) / 2 (Eq. 12)."
    )


def _subset_text(settings: Mapping[str, Any], attacks: Sequence[str]) -> str:
    """``"; Square on the first 1000 of them (...)"`` for the ``attacks`` of the evaluation's
    ``attack_n_examples``, else empty."""
    limits = {a: n for a, n in settings["attack_n_examples"].items() if a in attacks}
    if not limits:
        return ""
    parts = [f"{_evaluate.ATTACK_TITLES.get(a, a)} on the first {n}" for a, n in limits.items()]
    return (
        "; " + ", ".join(parts) + " of them (the numbers in its rows or columns count those only)"
    )


def _attack_table(
    profile: Mapping[str, Any], agg: Mapping[str, Any], attacks: Sequence[str], heading: str
) -> str:
    parts = [heading]
    for student, per_method in agg.items():
        present = [a for a in attacks if any(a in v["attacks"] for v in per_method.values())]
        if not present:
            continue
        parts.append(_table_caption(profile, student, per_method, present))
        parts.append(_evaluate.results_table(_table_rows(per_method, profile["dataset"], present)))
    return "\n\n".join(parts) + "\n"


def _ablation_table(profile: Mapping[str, Any], agg: Mapping[str, Any]) -> str:
    labels = {
        "baseline": "Baseline",
        "baseline_mt": "Baseline+MT",
        "mtard": "Baseline+MT+ANL (MTARD)",
    }
    parts = [
        "# Ablation (paper Fig. 2): one adversarial teacher, + clean teacher (constant 0.5/0.5), "
        "+ ANL"
    ]
    for student, per_method in agg.items():
        present = [m for m in labels if m in per_method]
        if not present:
            continue
        attacks = list(per_method[present[0]]["attacks"])
        names = [_evaluate.ATTACK_TITLES.get(a, a) for a in attacks]
        parts.append(_table_caption(profile, student, per_method, attacks))
        for key, what in (("robust", "Robust accuracy (%)"), ("w_robust", "W-Robust (%)")):
            lines = [
                f"{what}:",
                "",
                "| Variant | Clean | " + " | ".join(names) + " |",
                "|---|---:|" + "---:|" * len(names),
            ]
            for m in present:
                cells = [_pct(per_method[m]["attacks"][a][key]) for a in attacks]
                lines.append(
                    f"| {labels[m]} | {_pct(per_method[m]['clean'])} | " + " | ".join(cells) + " |"
                )
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _teachers_table(
    profile: Mapping[str, Any],
    teachers: Mapping[str, Teacher],
    results: Mapping[str, Mapping[str, Any]],
) -> str:
    title = _evaluate.DATASET_TITLES.get(profile["dataset"], profile["dataset"])
    attacks = [a for a in TABLE1_ATTACKS if any(a in r["attacks"] for r in results.values())]
    names = [_evaluate.ATTACK_TITLES[a] for a in attacks]
    lines = [
        "# Teachers (paper Table 1 analogue)",
        "",
        f"{title}, robust accuracy under each attack (%), {_eval_settings(profile)['eps']:.4g} "
        "L-inf.",
        "",
        "| Model | Type | Source | Clean | " + " | ".join(names) + " |",
        "|---|---|---|---:|" + "---:|" * len(names),
    ]
    for role, teacher in teachers.items():
        r = results[role]
        cells = [f"{100 * r['attacks'][a]['robust']:.2f}" for a in attacks]
        kind = "Clean" if role == "clean" else "Adv"
        lines.append(
            f"| {teacher.label} | {kind} | {teacher.source} | "
            f"{100 * r['clean']['accuracy']:.2f} | " + " | ".join(cells) + " |"
        )
        paper = profile["teachers"][role].get("paper")
        if paper:
            ref = [f"{paper.get(a, float('nan')):.2f}" for a in attacks]
            lines.append(
                f"| {teacher.label} (paper Table 1) | {kind} | paper | {paper['clean']:.2f} | "
                + " | ".join(ref)
                + " |"
            )
    if any(t.source == "trained here" for t in teachers.values()):
        lines += [
            "",
            "The teachers above were **trained here** with the same loop as the students, not "
            "loaded: the paper's teachers (CIFAR ResNet-56 / WRN-34-10 / WRN-22-6 / WRN-70-16) "
            "cannot be had on this machine, and this profile's dataset has no published "
            "teachers.",
        ]
    return "\n".join(lines) + "\n"


# ==============================================================================================
# The paper's claims
# ==============================================================================================
def compare_with_claims(
    agg: Mapping[str, Mapping[str, Any]], attacks: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The paper's claims about MTARD, measured on these numbers, per student.

    Claims (Sec. 4.2): (1) higher clean accuracy than the baselines (SAT, TRADES, ARD, RSLAD)
    at (2) similar robustness, hence (3) the best W-Robust, and (4) the largest gains under
    black-box attacks. For each attack: ``MTARD - best baseline`` of robust and W-Robust
    accuracy (in points), and MTARD's rank by W-Robust among MTARD and the baselines.
    """
    out: dict[str, dict[str, Any]] = {}
    for student, per_method in agg.items():
        baselines = [m for m in BASELINES if m in per_method]
        if "mtard" not in per_method or not baselines:
            continue
        mt = per_method["mtard"]
        best_clean = max(baselines, key=lambda m: per_method[m]["clean"]["mean"])
        entry: dict[str, Any] = {
            "baselines": baselines,
            "clean": {
                "mtard": 100 * mt["clean"]["mean"],
                "best_baseline": best_clean,
                "best_baseline_value": 100 * per_method[best_clean]["clean"]["mean"],
                "delta": 100 * (mt["clean"]["mean"] - per_method[best_clean]["clean"]["mean"]),
            },
            "attacks": {},
        }
        for attack in attacks:
            if attack not in mt["attacks"]:
                continue
            row = {}
            for key in ("robust", "w_robust"):
                best = max(
                    baselines, key=lambda m, k=key: per_method[m]["attacks"][attack][k]["mean"]
                )
                value = mt["attacks"][attack][key]["mean"]
                row[key] = {
                    "mtard": 100 * value,
                    "best_baseline": best,
                    "best_baseline_value": 100 * per_method[best]["attacks"][attack][key]["mean"],
                    "delta": 100 * (value - per_method[best]["attacks"][attack][key]["mean"]),
                }
            scores = sorted(
                (
                    per_method[m]["attacks"][attack]["w_robust"]["mean"]
                    for m in [*baselines, "mtard"]
                ),
                reverse=True,
            )
            row["w_robust_rank"] = 1 + scores.index(mt["attacks"][attack]["w_robust"]["mean"])
            entry["attacks"][attack] = row
        white = [a for a in entry["attacks"] if a in WHITE_BOX]
        black = [a for a in entry["attacks"] if a in BLACK_BOX]
        for name, group in (("white_box", white), ("black_box", black)):
            if group:
                entry[f"{name}_mean_w_robust_delta"] = float(
                    np.mean([entry["attacks"][a]["w_robust"]["delta"] for a in group])
                )
        entry["best_w_robust_count"] = sum(
            1 for a in entry["attacks"].values() if a["w_robust_rank"] == 1
        )
        if "baseline" in per_method and "baseline_mt" in per_method:
            key = "pgd_trades" if "pgd_trades" in mt["attacks"] else next(iter(mt["attacks"]), None)
            if key is not None:
                entry["ablation"] = {
                    "attack": key,
                    **{
                        m: {
                            "clean": 100 * per_method[m]["clean"]["mean"],
                            "w_robust": 100 * per_method[m]["attacks"][key]["w_robust"]["mean"],
                        }
                        for m in ("baseline", "baseline_mt", "mtard")
                    },
                }
        out[student] = entry
    return out


def _claims_text(comparison: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not comparison:
        return ["MTARD or the baselines were not run: no comparison."]
    lines = []
    for student, c in comparison.items():
        lines.append(f"### {student}")
        lines.append("")
        clean = c["clean"]
        verdict = "holds here" if clean["delta"] > 0 else "does NOT hold here"
        lines.append(
            f"- Claim 1, higher clean accuracy: MTARD clean − best baseline clean "
            f"({DEFENSE_LABELS[clean['best_baseline']]}) = {clean['delta']:+.2f} points "
            f"({clean['mtard']:.2f} vs {clean['best_baseline_value']:.2f}): {verdict}. "
            "Paper, ResNet-18 on CIFAR-10: +3.16 (87.36 vs 84.20, SAT)."
        )
        for attack, row in c["attacks"].items():
            title = _evaluate.ATTACK_TITLES.get(attack, attack)
            r, w = row["robust"], row["w_robust"]
            lines.append(
                f"- {title}: robust MTARD − best baseline ({DEFENSE_LABELS[r['best_baseline']]}) "
                f"= {r['delta']:+.2f}; W-Robust MTARD − best baseline "
                f"({DEFENSE_LABELS[w['best_baseline']]}) = {w['delta']:+.2f}; MTARD ranks "
                f"#{row['w_robust_rank']} of {len(c['baselines']) + 1} by W-Robust."
            )
        n = len(c["attacks"])
        white = [a for a in c["attacks"] if a in WHITE_BOX]
        if white:
            deltas = [c["attacks"][a]["robust"]["delta"] for a in white]
            lines.append(
                f"- Claim 2, similar robustness: MTARD robust − best baseline robust ranges "
                f"from {min(deltas):+.2f} to {max(deltas):+.2f} points under the white-box "
                "attacks (paper, ResNet-18 CIFAR-10: from −4.10 under CW_inf to +0.79 under "
                "FGSM, both vs RSLAD; −2.13 under PGD_TRADES)."
            )
        lines.append(
            f"- Claim 3, best W-Robust: MTARD has the best W-Robust under "
            f"{c['best_w_robust_count']} of {n} attacks "
            f"({_verdict(c['best_w_robust_count'], n)} here)."
        )
        if "white_box_mean_w_robust_delta" in c and "black_box_mean_w_robust_delta" in c:
            lines.append(_claim4_text(c))
        if "ablation" in c:
            a = c["ablation"]
            title = _evaluate.ATTACK_TITLES.get(a["attack"], a["attack"])
            steps_up = (
                a["baseline"]["w_robust"] < a["baseline_mt"]["w_robust"] < a["mtard"]["w_robust"]
            )
            lines.append(
                f"- Ablation (Fig. 2), clean / W-Robust under {title}: Baseline "
                f"{a['baseline']['clean']:.2f} / {a['baseline']['w_robust']:.2f}, Baseline+MT "
                f"{a['baseline_mt']['clean']:.2f} / {a['baseline_mt']['w_robust']:.2f}, MTARD "
                f"{a['mtard']['clean']:.2f} / {a['mtard']['w_robust']:.2f} (paper: each "
                "component improves W-Robust; "
                f"{'holds' if steps_up else 'does NOT hold'} here)."
            )
        lines.append("")
    lines.append(
        "Differences smaller than the seeds' standard deviations (tables) are not significant."
    )
    return lines


def _verdict(met: int, total: int) -> str:
    """A claim that should hold in ``total`` cases and holds in ``met`` of them."""
    return "holds" if met == total else "holds partly" if met else "does NOT hold"


def _claim4_text(c: Mapping[str, Any]) -> str:
    """Claim 4 per black-box attack: MTARD's W-Robust lead there against its white-box mean.

    Transfer attacks (crafted on a teacher) and Square (queries on the student itself) can
    disagree, so each is judged on its own, not only through the black-box mean.
    """
    wb, bb = c["white_box_mean_w_robust_delta"], c["black_box_mean_w_robust_delta"]
    black = [a for a in c["attacks"] if a in BLACK_BOX]
    deltas = {a: c["attacks"][a]["w_robust"]["delta"] for a in black}
    larger = [a for a, d in deltas.items() if d > wb and d > 0]
    per_attack = ", ".join(
        f"{_evaluate.ATTACK_TITLES.get(a, a)} {d:+.2f}" for a, d in deltas.items()
    )
    verdict = _verdict(len(larger), len(black))
    return (
        f"- Claim 4, largest gains under black-box attacks: W-Robust MTARD − best baseline "
        f"{per_attack} (mean {bb:+.2f}) vs white-box mean {wb:+.2f}; larger and positive "
        f"under {len(larger)} of {len(black)} black-box attacks ({verdict} here; paper, "
        "ResNet-18 CIFAR-10, Square: +4.97 vs ARD)."
    )


def _paper_comparison(profile: Mapping[str, Any], agg: Mapping[str, Any]) -> list[str]:
    """Our numbers next to the paper's (``profile['paper_results']``, in percent)."""
    reference = profile.get("paper_results", {})
    lines: list[str] = []
    for student, per_method in agg.items():
        paper = reference.get(student)
        if not paper:
            continue
        attacks = [a for a in (*WHITE_BOX, *BLACK_BOX) if any(a in p for p in paper.values())]
        lines += [
            f"### {student}: here vs paper (robust accuracy, %)",
            "",
            "| Defense | Clean here | Clean paper | "
            + " | ".join(f"{_evaluate.ATTACK_TITLES[a]} here | paper" for a in attacks)
            + " |",
            "|---|---:|---:|" + "---:|---:|" * len(attacks),
        ]
        for method in METHOD_ORDER:
            if method not in paper:
                continue
            ours = per_method.get(method)
            cells = [
                f"{100 * ours['clean']['mean']:.2f}" if ours else "–",
                f"{paper[method]['clean']:.2f}",
            ]
            for a in attacks:
                here = ours["attacks"].get(a) if ours else None
                cells.append(f"{100 * here['robust']['mean']:.2f}" if here else "–")
                cells.append(f"{paper[method][a]:.2f}" if a in paper[method] else "–")
            lines.append(f"| {DEFENSE_LABELS[method]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


# ==============================================================================================
# Figures, results.json and summary.md
# ==============================================================================================
def _machine(device: torch.device) -> dict[str, Any]:
    ddp = _loop._dist_info()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "processes": ddp.world_size,
    }
    if ddp.enabled:
        info["backend"] = str(torch.distributed.get_backend())
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _plot_ablation(per_method: Mapping[str, Any], path: Path, title: str) -> Path | None:
    """Grouped bars of clean and robust accuracy of the three ablation variants (Fig. 2)."""
    variants = [
        (m, label)
        for m, label in (
            ("baseline", "Baseline"),
            ("baseline_mt", "Baseline+MT"),
            ("mtard", "Baseline+MT+ANL"),
        )
        if m in per_method
    ]
    if not variants:
        return None
    from matplotlib.figure import Figure

    attacks = list(per_method[variants[0][0]]["attacks"])
    groups = ["Clean", *[_evaluate.ATTACK_TITLES.get(a, a) for a in attacks]]
    fig = Figure(figsize=(max(6.0, 1.3 * len(groups)), 4.2), layout="constrained")
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def write_figures(
    profile: Mapping[str, Any],
    out: Path,
    agg: Mapping[str, Mapping[str, Any]],
    teachers: Mapping[str, Teacher],
) -> list[Path]:
    """The figures: Fig. 2 (ablation bars), Fig. 3 (total loss of Baseline, Baseline+MT,
    MTARD), Fig. 4 (relative losses of Baseline+MT and MTARD), MTARD's ANL weights, and the
    validation clean / robust / W-Robust accuracy per epoch of every run (first seed for the
    loss figures)."""
    from . import plots

    figures = out / "figures"
    written: list[Path] = []
    seed = profile["seeds"][0]

    def log(student: str, method: str, kind: str) -> dict[str, np.ndarray] | None:
        path = _run_dir(out, student, method, seed) / "logs" / f"{kind}.csv"
        return plots.read_log(path) if path.exists() else None

    for student, per_method in agg.items():
        path = _plot_ablation(
            per_method, figures / f"ablation_{student}.png", f"Ablation, {student} (Fig. 2)"
        )
        if path is not None:
            written.append(path)
        total = {
            DEFENSE_LABELS[m]: log(student, m, "epochs")
            for m in ("baseline", "baseline_mt", "mtard")
            if m in per_method
        }
        total = {k: v for k, v in total.items() if v is not None}
        if total:
            written.append(
                plots.plot_total_loss(
                    total,
                    figures / f"total_loss_{student}.png",
                    title=f"Total training loss, {student}, seed {seed} (Fig. 3)",
                )
            )
        relative = {
            DEFENSE_LABELS[m]: log(student, m, "epochs")
            for m in ("baseline_mt", "mtard")
            if m in per_method
        }
        relative = {k: v for k, v in relative.items() if v is not None}
        if relative:
            written.append(
                plots.plot_relative_losses(
                    relative,
                    figures / f"relative_losses_{student}.png",
                    title=f"Relative training losses, {student}, seed {seed} (Fig. 4)",
                )
            )
        steps = log(student, "mtard", "steps") if "mtard" in per_method else None
        if steps is not None:
            written.append(
                plots.plot_weights(
                    steps,
                    figures / f"mtard_weights_{student}.png",
                    title=f"MTARD weights (ANL), {student}, seed {seed}",
                )
            )
        for method in per_method:
            for k in profile["seeds"]:
                epochs_csv = _run_dir(out, student, method, k) / "logs" / "epochs.csv"
                if epochs_csv.exists():
                    written.append(
                        plots.plot_accuracy(
                            plots.read_log(epochs_csv),
                            figures / "accuracy" / f"{student}_{method}_seed{k}.png",
                            title=f"Validation accuracy, {student} {DEFENSE_LABELS[method]} "
                            f"seed {k}",
                        )
                    )
    for role, teacher in teachers.items():
        if teacher.run_dir is not None and (teacher.run_dir / "logs" / "epochs.csv").exists():
            written.append(
                plots.plot_accuracy(
                    plots.read_log(teacher.run_dir / "logs" / "epochs.csv"),
                    figures / "accuracy" / f"teacher_{role}.png",
                    title=f"Validation accuracy, {role} teacher",
                )
            )
    return written


def write_report(
    profile: Mapping[str, Any],
    out: Path,
    teachers: Mapping[str, Teacher],
    teacher_results: Mapping[str, Mapping[str, Any]],
    student_results: Mapping[tuple[str, str, int], Mapping[str, Any]],
    runs: Mapping[tuple[str, str, int], Mapping[str, Any]],
    *,
    stages: _Stages,
    plots: bool,
    command: str,
    started: datetime.datetime,
    wall_start: float,
) -> dict[str, Any]:
    """Write the tables, ``results.json``, the figures and ``summary.md``; return the results."""
    agg = aggregate(student_results)
    attacks = _eval_settings(profile)["attacks"]
    white = [a for a in WHITE_BOX if a in attacks]
    black = [a for a in BLACK_BOX if a in attacks]
    tables = {
        "white_box.md": _attack_table(
            profile, agg, white, "# White-box robustness (paper Tables 2-3 layout)"
        ),
        "black_box.md": _attack_table(
            profile,
            agg,
            black,
            "# Black-box robustness (paper Tables 4-5 layout; transfer attacks crafted on the "
            "adversarial teacher)",
        ),
        "ablation.md": _ablation_table(profile, agg),
        "teachers.md": _teachers_table(profile, teachers, teacher_results),
    }
    for name, text in tables.items():
        _write_text(out / name, text)

    figures: list[Path] = []
    if plots:
        with stages.stage("figures"):
            figures = write_figures(profile, out, agg, teachers)

    comparison = compare_with_claims(agg, [*white, *black])
    device = _device(profile)
    machine = _machine(device)
    total_s = time.perf_counter() - wall_start
    results = {
        "profile": profile["name"],
        "dataset": profile["dataset"],
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "eval_settings": _json_settings(_eval_settings(profile)),
        "teachers": {
            role: {
                "label": t.label,
                "arch": t.arch,
                "source": t.source,
                "checkpoint": str(t.checkpoint),
                "run_dir": str(t.run_dir) if t.run_dir else None,
                "evaluation": teacher_results.get(role),
            }
            for role, t in teachers.items()
        },
        "runs": [
            {
                "student": s,
                "method": m,
                "seed": k,
                "run_dir": str(_run_dir(out, s, m, k)),
                "train": {key: runs[s, m, k].get(key) for key in ("best", "final", "time_s")},
                "evaluation": student_results[s, m, k],
            }
            for (s, m, k) in runs
        ],
        "aggregate": agg,
        "comparison": comparison,
        "stages": stages.rows,
        "wall_time_s": total_s,
        "figures": [str(p.relative_to(out)) for p in figures],
    }
    stages.save_invocation()
    results["invocations"] = [dict(row) for row in stages.invocations]  # as written now
    _write_text(out / "results.json", json.dumps(_finite(results), indent=2) + "\n")
    _write_text(
        out / "summary.md",
        _summary(
            profile, teachers, runs, comparison, agg, stages, machine, command, started, total_s
        ),
    )
    return results


def _summary(
    profile: Mapping[str, Any],
    teachers: Mapping[str, Teacher],
    runs: Mapping[tuple[str, str, int], Mapping[str, Any]],
    comparison: Mapping[str, Any],
    agg: Mapping[str, Any],
    stages: _Stages,
    machine: Mapping[str, Any],
    command: str,
    started: datetime.datetime,
    total_s: float,
) -> str:
    lines = [
        f"# MTARD reproduction, profile `{profile['name']}`",
        "",
        profile.get("description", ""),
        "",
        f"- Date: {started.isoformat(timespec='seconds')}",
        f"- Command: `{command}`",
        f"- Machine: {machine['platform']}, {machine['processor']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, torch {machine['torch']} (threads: "
        f"{machine['torch_threads']}), device {machine['device']}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
        + (
            f"; {machine['processes']} processes (torch.distributed, {machine.get('backend')}; "
            "the device is rank 0's, the threads are per process)"
            if machine.get("processes", 1) > 1
            else ""
        )
        + (
            f"; load average at the end {machine['load_average']} (other processes share "
            "the CPU when it exceeds the core count)"
            if "load_average" in machine
            else ""
        ),
        f"- Dataset {profile['dataset']}; students {', '.join(profile['students'])}; methods "
        f"{', '.join(DEFENSE_LABELS[m] for m in METHOD_ORDER if m in profile['methods'])}; "
        f"seeds {profile['seeds']}",
        f"- Total wall time of this invocation: {total_s / 60:.1f} min ({total_s:.0f} s)",
        *_invocations_text(stages),
        "",
        "## Teachers",
        "",
    ]
    for role, t in teachers.items():
        where = (
            f"trained here ({t.run_dir}) — the paper's teachers cannot be had on this machine"
            if t.source == "trained here"
            else f"loaded from {t.checkpoint}"
        )
        lines.append(f"- {role}: {t.label}, {where}")
    lines += [
        "",
        "## Wall time per stage",
        "",
        "| Stage | Status | Wall time, this invocation (s) | When it ran, if earlier (s) |",
        "|---|---|---:|---:|",
    ]
    groups: dict[str, float] = {}
    for row in stages.rows:
        earlier = f"{row['earlier_s']:.1f}" if "earlier_s" in row else ""
        lines.append(f"| {row['stage']} | {row['status']} | {row['wall_s']:.1f} | {earlier} |")
        group = row["stage"].split("/")[0]
        groups[group] = groups.get(group, 0.0) + row.get("earlier_s", row["wall_s"])
    lines.append(f"| **total** | | {total_s:.1f} | |")
    work = sum(groups.values())
    overlap = any(i.get("jobs", 1) > 1 for i in stages.invocations)
    lines += [
        "",
        f"Work by kind, over all invocations ({work / 60:.1f} min): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in groups.items())
        + (" (stages ran side by side with --jobs, so this exceeds the wall time)" * overlap)
        + ".",
    ]
    trained = [r.get("time_s") or 0.0 for r in runs.values()]
    if trained:
        lines.append(
            f"Training time recorded by the runs themselves (also for runs completed by an "
            f"earlier invocation): {sum(trained):.0f} s over {len(trained)} runs."
        )
    lines += ["", "## The paper's claims, measured here", ""]
    lines += _claims_text(comparison)
    paper = _paper_comparison(profile, agg)
    if paper:
        lines += ["", "## Here vs the paper", "", *paper]
    if profile.get("notes"):
        lines += ["", "## Profile notes (every reduction from the paper's protocol)", ""]
        lines += [f"- {note}" for note in profile["notes"]]
    lines += [
        "",
        "Tables: white_box.md, black_box.md, ablation.md, teachers.md; all numbers: "
        "results.json; figures: figures/.",
    ]
    return "\n".join(lines) + "\n"


def _invocations_text(stages: _Stages) -> list[str]:
    """A line on the invocations that made the results (``invocations.json``) when several
    (``--resume`` after a kill), since the stages they ran overlap none of this one's."""
    invocations = stages.invocations
    if len(invocations) < 2:
        return []
    total = sum(i["wall_s"] for i in invocations)
    each = ", ".join(
        f"{i['started']} ({i['wall_s'] / 3600:.2f} h, jobs {i['jobs']})" for i in invocations
    )
    return [
        f"- Wall time over all {len(invocations)} invocations of this results directory: "
        f"{total / 3600:.2f} h ({each}; invocations.json)"
    ]


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
