"""The tables of a reproduction's report: the evaluations aggregated over seeds and laid out
like the paper's.

:func:`aggregate` takes the mean and sample std over seeds; :func:`attack_table` gives
``white_box.md`` (paper Tables 2-3) and ``black_box.md`` (Tables 4-5), :func:`ablation_table`
``ablation.md`` (Fig. 2) and :func:`teachers_table` ``teachers.md`` (Table 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..attacks.registry import TEACHERS_TABLE_ATTACKS, attack_title
from ..data.registry import dataset_title
from ..methods.registry import ABLATION, METHOD_ORDER, METHODS
from ..tables import results_table
from .profile import EvalSettings, Profile, Teacher


def mean_std(values: Sequence[float]) -> dict[str, float | None]:
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
            "clean": mean_std([r["clean"]["accuracy"] for r in results]),
            "attacks": {
                a: {
                    # Clean accuracy on the points the attack ran on (a subset for attacks of
                    # the evaluation's attack_n_examples, else every evaluated point).
                    "clean": mean_std(
                        [r["attacks"][a].get("clean", r["clean"])["accuracy"] for r in results]
                    ),
                    "robust": mean_std([r["attacks"][a]["robust"] for r in results]),
                    "w_robust": mean_std([r["attacks"][a]["w_robust"] for r in results]),
                }
                for a in attacks
            },
        }
    return out


def table_rows(
    agg: Mapping[str, Mapping[str, Any]], dataset: str, attacks: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of :func:`~...tables.results_table`: mean and std per attack and method, the
    methods in the table order."""
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
                    "defense": METHODS[method].label,
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


def percent(stat: Mapping[str, Any]) -> str:
    """``"87.36 ± 1.20"`` (or ``"87.36"`` for one seed) from a :func:`mean_std` of fractions."""
    text = f"{100 * stat['mean']:.2f}"
    return text if stat.get("std") is None else f"{text} ± {100 * stat['std']:.2f}"


def _table_caption(
    profile: Profile, student: str, agg: Mapping[str, Any], attacks: Sequence[str]
) -> str:
    settings = profile.evaluation
    n_seeds = max(len(v["seeds"]) for v in agg.values())
    title = dataset_title(profile.dataset)
    return (
        f"## {student} on {title}\n\n"
        f"Mean ± sample std over {n_seeds} seed(s); {settings.checkpoint} checkpoint "
        f"(validation W-Robust); L-inf eps = {settings.eps:.4g}; "
        f"{settings.n_examples or 'all'} test points{_subset_text(settings, attacks)}. Robust counts a "
        f"point only when it is right on both the clean and the attacked input. W-Robust = "
        f"(Clean + Robust) / 2 (Eq. 12)."
    )


def _subset_text(settings: EvalSettings, attacks: Sequence[str]) -> str:
    """``"; Square on the first 1000 of them (...)"`` for the ``attacks`` of the evaluation's
    ``attack_n_examples``, else empty."""
    limits = {a: n for a, n in settings.attack_n_examples.items() if a in attacks}
    if not limits:
        return ""
    parts = [f"{attack_title(a)} on the first {n}" for a, n in limits.items()]
    return (
        "; " + ", ".join(parts) + " of them (the numbers in its rows or columns count those only)"
    )


def attack_table(
    profile: Profile, agg: Mapping[str, Any], attacks: Sequence[str], heading: str
) -> str:
    """A table of ``attacks`` per student (the paper's Tables 2-5), under ``heading``."""
    parts = [heading]
    for student, per_method in agg.items():
        present = [a for a in attacks if any(a in v["attacks"] for v in per_method.values())]
        if not present:
            continue
        parts.append(_table_caption(profile, student, per_method, present))
        parts.append(results_table(table_rows(per_method, profile.dataset, present)))
    return "\n\n".join(parts) + "\n"


def ablation_table(profile: Profile, agg: Mapping[str, Any]) -> str:
    """The ablation of the paper's Fig. 2 as tables of robust and W-Robust accuracy."""
    parts = [
        "# Ablation (paper Fig. 2): one adversarial teacher, + clean teacher (constant 0.5/0.5), "
        "+ ANL"
    ]
    for student, per_method in agg.items():
        present = [m for m in ABLATION if m in per_method]
        if not present:
            continue
        attacks = list(per_method[present[0]]["attacks"])
        names = [attack_title(a) for a in attacks]
        parts.append(_table_caption(profile, student, per_method, attacks))
        for key, what in (("robust", "Robust accuracy (%)"), ("w_robust", "W-Robust (%)")):
            lines = [
                f"{what}:",
                "",
                "| Variant | Clean | " + " | ".join(names) + " |",
                "|---|---:|" + "---:|" * len(names),
            ]
            for m in present:
                cells = [percent(per_method[m]["attacks"][a][key]) for a in attacks]
                lines.append(
                    f"| {METHODS[m].ablation_label} | {percent(per_method[m]['clean'])} | "
                    + " | ".join(cells)
                    + " |"
                )
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def teachers_table(
    profile: Profile,
    teachers: Mapping[str, Teacher],
    results: Mapping[str, Mapping[str, Any]],
) -> str:
    """The teachers' clean and robust accuracy (the paper's Table 1), with the paper's
    numbers when the profile gives them."""
    title = dataset_title(profile.dataset)
    attacks = [
        a for a in TEACHERS_TABLE_ATTACKS if any(a in r["attacks"] for r in results.values())
    ]
    names = [attack_title(a) for a in attacks]
    lines = [
        "# Teachers (paper Table 1 analogue)",
        "",
        f"{title}, robust accuracy under each attack (%), {profile.evaluation.eps:.4g} L-inf.",
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
        paper = profile.get("teachers")[role].get("paper")
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
