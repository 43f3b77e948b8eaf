"""Two checks a reproduction needs before it can judge the paper's claims.

**The premise** (issue #15). MTARD spends part of the robustness that distillation from a
much stronger robust teacher buys on clean accuracy. On CIFAR-10 (paper Tables 1-2):

- adversarial teacher robust minus SAT student robust (PGD_TRADES): 56.61 - 48.12 = +8.5;
- RSLAD student minus SAT student, robust: 55.73 - 48.12 = +7.6 (distillation helps at all);
- clean teacher clean minus adversarial teacher clean: 93.18 - 84.91 = +8.3.

:func:`premise` measures the same three gaps on a reproduction's own teachers and students
(mean ± std over seeds; the student gaps are paired by seed, since a seed fixes the student's
data subset) and says whether the premise holds by the thresholds of :data:`THRESHOLDS`.

**Convergence** (issue #22). A method judged after a short schedule may only be slower.
:func:`convergence` fits a line to a run's validation robust accuracy over the last quarter
of its epochs (at least :data:`MIN_WINDOW`) and reports the rise over that window with its
standard error; a run is *still rising* when the rise exceeds both :data:`RISE_POINTS` and
twice its standard error (the epoch-to-epoch noise), otherwise it has *flattened*.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write_text
from .stages import run_dir

__all__ = [
    "CIFAR10_PREMISE",
    "MIN_WINDOW",
    "RISE_POINTS",
    "ROWS",
    "THRESHOLDS",
    "convergence",
    "convergence_lines",
    "convergence_section",
    "diagnostics_text",
    "not_converged",
    "premise",
    "premise_lines",
    "premise_verdict",
    "read_epochs",
    "run_convergence",
    "write_diagnostics",
]

#: The paper's CIFAR-10 numbers (ResNet-18 students, PGD_TRADES), in accuracy points.
CIFAR10_PREMISE = {
    "teacher_gap": 56.61 - 48.12,
    "rslad_gap": 55.73 - 48.12,
    "clean_gap": 93.18 - 84.91,
}

#: Minimum gaps (points) for the premise to hold on a reproduction.
THRESHOLDS = {"teacher_gap": 5.0, "rslad_gap": 2.0, "clean_gap": 5.0}

#: Rows of the premise table, in order: key, what is measured.
ROWS = {
    "teacher_gap": "adversarial teacher robust - SAT student robust (PGD_TRADES)",
    "rslad_gap": "RSLAD student robust - SAT student robust (PGD_TRADES)",
    "clean_gap": "clean teacher clean - adversarial teacher clean",
}

#: The convergence window: the last quarter of the epochs, at least this many.
MIN_WINDOW = 3
#: A rise over the window below this many points counts as flat whatever its noise.
RISE_POINTS = 1.0


def _points(accuracy: float) -> float:
    return 100.0 * accuracy


def _robust(evaluation: Mapping[str, Any], attack: str) -> float | None:
    entry = evaluation.get("attacks", {}).get(attack)
    return None if entry is None else _points(entry["robust"])


def _mean_std(values: Sequence[float]) -> dict[str, float | int]:
    values = list(values)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def premise(results: Mapping[str, Any], attack: str = "pgd_trades") -> dict[str, Any]:
    """The three premise gaps of a ``results.json`` (points), and whether the premise holds.

    Returns ``{"rows": {key: {"mean", "std", "n", "cifar10", "threshold", "holds"}},
    "holds": bool | None, "missing": [...]}``; a row whose models were not evaluated is
    listed in ``missing`` and the verdict is ``None``.
    """
    teachers = results.get("teachers", {})
    by_method: dict[str, dict[int, Mapping[str, Any]]] = {}
    for run in results.get("runs", []):
        evaluation = run.get("evaluation")
        if evaluation:
            by_method.setdefault(run["method"], {})[run["seed"]] = evaluation
    rows: dict[str, dict[str, Any]] = {}
    missing: list[str] = []

    adv = teachers.get("adv", {}).get("evaluation")
    clean = teachers.get("clean", {}).get("evaluation")
    sat = by_method.get("sat", {})
    rslad = by_method.get("rslad", {})
    sat_robust = {s: _robust(e, attack) for s, e in sat.items()}
    if adv and sat and None not in sat_robust.values() and _robust(adv, attack) is not None:
        teacher = _robust(adv, attack)
        rows["teacher_gap"] = _mean_std([teacher - r for r in sat_robust.values()])
    else:
        missing.append("teacher_gap")
    paired = sorted(set(sat) & set(rslad))
    if paired and None not in sat_robust.values():
        rows["rslad_gap"] = _mean_std([_robust(rslad[s], attack) - sat_robust[s] for s in paired])
    else:
        missing.append("rslad_gap")
    if adv and clean:
        gap = _points(clean["clean"]["accuracy"]) - _points(adv["clean"]["accuracy"])
        rows["clean_gap"] = {"mean": gap, "std": 0.0, "n": 1}
    else:
        missing.append("clean_gap")
    for key, row in rows.items():
        row.update(
            cifar10=CIFAR10_PREMISE[key],
            threshold=THRESHOLDS[key],
            holds=row["mean"] >= THRESHOLDS[key],
        )
    verdict = None if missing else all(row["holds"] for row in rows.values())
    return {"rows": rows, "holds": verdict, "missing": missing, "attack": attack}


def read_epochs(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of ``<run_dir>/logs/epochs.csv`` as floats (empty if there is none)."""
    path = Path(run_dir) / "logs" / "epochs.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [
            {k: float(v) if v not in ("", "nan") else math.nan for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def convergence(rows: Sequence[Mapping[str, float]], metric: str = "val_robust") -> dict[str, Any]:
    """Whether ``metric`` (validation robust accuracy by default) still rose at the end.

    Least squares over the last ``max(MIN_WINDOW, ceil(E / 4))`` of ``E`` epochs:
    :math:`y_e = a + b e`; ``rise = b (k - 1)`` points over the ``k`` epochs of the window,
    with standard error ``se(b) (k - 1)``, ``se(b) = s / sqrt(sum (e - mean e)^2)`` and ``s``
    the residuals' standard deviation (``k - 2`` degrees of freedom). ``status`` is
    ``"still rising"`` when ``rise > RISE_POINTS`` and ``rise > 2 se``, ``"flattened"``
    otherwise, ``"too short"`` with fewer than ``MIN_WINDOW`` epochs.
    """
    values = [
        (row["epoch"], _points(row[metric]))
        for row in rows
        if metric in row and math.isfinite(row[metric])
    ]
    if len(values) < MIN_WINDOW:
        return {"status": "too short", "epochs": len(values)}
    k = max(MIN_WINDOW, math.ceil(len(values) / 4))
    window = values[-k:]
    xs = [x for x, _ in window]
    ys = [y for _, y in window]
    x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in window) / sxx
    residuals = [y - (y_mean + slope * (x - x_mean)) for x, y in window]
    dof = max(1, k - 2)
    s = math.sqrt(sum(r * r for r in residuals) / dof)
    se_slope = s / math.sqrt(sxx)
    span = xs[-1] - xs[0]
    rise, se = slope * span, se_slope * span
    rising = rise > RISE_POINTS and rise > 2 * se
    return {
        "status": "still rising" if rising else "flattened",
        "epochs": len(values),
        "window": [xs[0], xs[-1]],
        "slope_per_epoch": slope,
        "rise": rise,
        "rise_se": se,
        "last": ys[-1],
    }


# ----------------------------------------------------------------------------- as text
def premise_lines(result: Mapping[str, Any]) -> list[str]:
    """The premise table (Markdown) and its one-line verdict, from :func:`premise`."""
    lines = [
        "| Premise (paper Tables 1-3) | here, mean ± std over seeds | CIFAR-10 (paper) | "
        "threshold | |",
        "|---|---:|---:|---:|---|",
    ]
    for key, what in ROWS.items():
        row = result["rows"].get(key)
        if row is None:
            lines.append(
                f"| {what} | not measured | {CIFAR10_PREMISE[key]:+.1f} | "
                f">= {THRESHOLDS[key]:+.0f} | |"
            )
            continue
        spread = f" ± {row['std']:.1f}" if row["n"] > 1 else ""
        lines.append(
            f"| {what} | {row['mean']:+.1f}{spread} | {row['cifar10']:+.1f} | "
            f">= {row['threshold']:+.0f} | {'holds' if row['holds'] else 'FAILS'} |"
        )
    lines += ["", premise_verdict(result)]
    return lines


def premise_verdict(result: Mapping[str, Any]) -> str:
    """One line: whether the paper's premise holds here, and what follows for the claims."""
    if result["holds"] is None:
        return (
            "**Premise: not measured** (" + ", ".join(result["missing"]) + " missing): the "
            "claims below cannot be set against it."
        )
    if result["holds"]:
        return (
            "**The premise holds here**: distillation from the robust teacher can buy "
            "robustness beyond SAT, as on CIFAR-10, so MTARD's claims can hold or fail on "
            "their merits."
        )
    failed = [ROWS[k] for k, row in result["rows"].items() if not row["holds"]]
    return (
        "**The premise does NOT hold here** (" + "; ".join(failed) + " below the threshold): "
        "no distillation method can beat SAT by much in this setting, so claims 2-4 below say "
        "more about the setting than about MTARD."
    )


def run_convergence(
    runs: Sequence[Mapping[str, Any]], results_dir: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """:func:`convergence` of each run of a ``results.json`` (``"method/seed"`` keys), from
    the epoch rows it stores (``train.epochs``) or else its run directory's log: at the
    ``run_dir`` it records, or (that path being relative to wherever ``reproduce`` ran) at
    the run's place in ``results_dir``."""
    out = {}
    for run in runs:
        rows = run.get("train", {}).get("epochs") or read_epochs(run.get("run_dir", ""))
        if not rows and results_dir is not None and "student" in run:
            rows = read_epochs(
                run_dir(Path(results_dir), run["student"], run["method"], run["seed"])
            )
        out[f"{run['method']}/{run['seed']}"] = convergence(rows)
    return out


def not_converged(checks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The methods with a run whose validation robust accuracy was still rising."""
    return sorted({key.split("/")[0] for key, c in checks.items() if c["status"] == "still rising"})


def convergence_lines(
    checks: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> list[str]:
    """Per method, each seed's rise of validation robust accuracy over its last epochs."""
    labels = labels or {}
    methods: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for key, check in checks.items():
        method, seed = key.split("/")
        methods.setdefault(method, []).append((seed, check))
    if not methods:
        return ["No run logs: the convergence check needs each run's epochs.csv."]
    lines = [
        "| Method | Validation robust accuracy over the last quarter of training, per seed: "
        "rise ± its standard error (points) | Verdict |",
        "|---|---|---|",
    ]
    for method, seeds in methods.items():
        cells, statuses = [], set()
        for seed, check in seeds:
            statuses.add(check["status"])
            if check["status"] == "too short":
                cells.append(f"seed {seed}: {check['epochs']} epochs, too short")
            else:
                start, end = (int(e) for e in check["window"])
                cells.append(
                    f"seed {seed}: {check['rise']:+.1f} ± {check['rise_se']:.1f} "
                    f"(epochs {start}-{end})"
                )
        verdict = (
            "still rising"
            if "still rising" in statuses
            else "too short to tell"
            if statuses == {"too short"}
            else "flattened"
        )
        lines.append(f"| {labels.get(method, method)} | {'; '.join(cells)} | {verdict} |")
    lines += [
        "",
        f"A run is *still rising* when its fitted rise exceeds both {RISE_POINTS:.0f} point "
        "and twice its standard error; claims that involve a method still rising compare "
        "students that had not finished learning.",
    ]
    return lines


def convergence_section(
    checks: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str]
) -> list[str]:
    """:func:`convergence_lines`, or one line saying why there is nothing to check (results
    written before the epoch curves were stored, whose run directories are gone)."""
    if any(c["status"] != "too short" or c["epochs"] for c in checks.values()):
        return convergence_lines(checks, labels)
    return [
        "The epoch logs of these runs were not kept (the runs' directories are gone and this "
        "`results.json` predates storing the curves), so convergence cannot be checked here."
    ]


def diagnostics_text(results: Mapping[str, Any], results_dir: str | Path | None = None) -> str:
    """``diagnostics.md`` of a results directory: its premise and convergence checks,
    recomputed from ``results.json`` (its stored evaluations and epoch curves, or the run
    directories' logs when they are still there), without retraining anything."""
    checks = run_convergence(results.get("runs", []), results_dir)
    labels = {m: m for m in {k.split("/")[0] for k in checks}}
    return (
        "\n".join(
            [
                f"# Diagnostics of the `{results.get('profile', '?')}` reproduction",
                "",
                f"Recomputed from `results.json` ({results.get('date', 'undated')}); "
                "`anl-mtard diagnose RESULTS_DIR` writes this file.",
                "",
                "## The paper's premise, measured here",
                "",
                *premise_lines(premise(results)),
                "",
                "## Convergence of each run",
                "",
                *convergence_section(checks, labels),
            ]
        )
        + "\n"
    )


def write_diagnostics(results_dir: str | Path) -> Path:
    """Write ``<results_dir>/diagnostics.md`` from its ``results.json``; return its path."""
    directory = Path(results_dir)
    path = directory / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Could not read {str(path)!r}: {exc}") from exc
    target = directory / "diagnostics.md"
    atomic_write_text(target, diagnostics_text(results, directory))
    return target
