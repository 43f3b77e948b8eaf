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
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CIFAR10_PREMISE",
    "MIN_WINDOW",
    "RISE_POINTS",
    "THRESHOLDS",
    "convergence",
    "premise",
    "read_epochs",
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
