"""Evaluation results as the paper lays them out: Markdown tables and result files.

:func:`results_table` lays rows of clean / robust / W-Robust accuracy out like the paper's
Tables 2-5 (grouped by attack, then defense; one column triple per dataset);
:func:`result_rows` makes those rows from one :func:`~.evaluation.evaluate` result and
:func:`write_results` saves it as JSON and Markdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .attacks.registry import attack_title
from .data.registry import dataset_title
from .runtime.files import atomic_write_json, atomic_write_text

_ROW_KEYS = ("dataset", "defense", "attack", "clean", "robust", "w_robust")
_METRICS = ("clean", "robust", "w_robust")


def result_rows(results: Mapping[str, Any], defense: str) -> list[dict[str, Any]]:
    """Rows for :func:`results_table` from one :func:`~.evaluation.evaluate` result."""
    dataset = results.get("dataset") or "data"
    return [
        {
            "dataset": dataset,
            "defense": defense,
            "attack": name,
            "clean": entry.get("clean", results["clean"])["accuracy"],  # the attacked points
            "robust": entry["robust"],
            "w_robust": entry["w_robust"],
        }
        for name, entry in results["attacks"].items()
    ]


def _percent(row: Mapping[str, Any], key: str) -> str:
    value = 100.0 * float(row[key])
    std = row.get(f"{key}_std")
    if std is None:
        return f"{value:.2f}"
    return f"{value:.2f} ± {100.0 * float(std):.2f}"


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table laid out like the paper's Tables 2-5.

    Rows are grouped by attack, then defense (both in order of first appearance; the attack
    is named on the first row of its group only); each dataset gets the columns Clean /
    Robust / W-Robust, in percent with two decimals. Each entry is a mapping with
    ``dataset, defense, attack, clean, robust, w_robust`` (fractions in [0, 1]) and optional
    ``clean_std, robust_std, w_robust_std`` (shown as ``mean ± std``). Missing combinations
    are shown as ``–``.

    Example:
        >>> print(results_table([{"dataset": "cifar10", "defense": "MTARD", "attack": "fgsm",
        ...                       "clean": 0.8736, "robust": 0.612, "w_robust": 0.7428}]))
        | Attack | Defense | CIFAR-10 Clean (%) | CIFAR-10 Robust (%) | CIFAR-10 W-Robust (%) |
        |---|---|---:|---:|---:|
        | FGSM | MTARD | 87.36 | 61.20 | 74.28 |
    """
    datasets: list[str] = []
    attacks: list[str] = []
    defenses: dict[str, list[str]] = {}
    cells: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for i, row in enumerate(rows):
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise ValueError(
                f"Parameter `rows` should hold entries with keys {list(_ROW_KEYS)}. "
                f"Found row {i} without {missing}."
            )
        for key in _METRICS:
            value = float(row[key])
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"Parameter `rows` should hold accuracies as fractions in [0, 1]. "
                    f"Found `rows[{i}][{key!r}] = {row[key]!r}`."
                )
        key3 = (str(row["attack"]), str(row["defense"]), str(row["dataset"]))
        if key3 in cells:
            raise ValueError(
                "Parameter `rows` should hold one entry per (attack, defense, dataset). "
                f"Found a duplicate for {key3}."
            )
        cells[key3] = row
        attack, defense, dataset = key3
        if dataset not in datasets:
            datasets.append(dataset)
        if attack not in attacks:
            attacks.append(attack)
            defenses[attack] = []
        if defense not in defenses[attack]:
            defenses[attack].append(defense)

    header = ["Attack", "Defense"]
    for dataset in datasets:
        title = dataset_title(dataset)
        header += [f"{title} Clean (%)", f"{title} Robust (%)", f"{title} W-Robust (%)"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * (3 * len(datasets)),
    ]
    for attack in attacks:
        for j, defense in enumerate(defenses[attack]):
            line = [attack_title(attack) if j == 0 else "", defense]
            for dataset in datasets:
                row = cells.get((attack, defense, dataset))
                line += ["–"] * 3 if row is None else [_percent(row, m) for m in _METRICS]
            lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def write_results(
    results: Mapping[str, Any], out_dir: str | Path, name: str, *, defense: str | None = None
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` (the full result) and ``<name>.md`` (the table).

        ``defense`` labels the table rows (default: ``results["defense"]`` if present, else
        ``name``). Both files are written atomically; the JSON file carries its content hash
    (``content_sha256``, verified by :func:`~.runtime.files.read_json`). Returns their paths.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"Parameter `name` should be a plain file stem. Found `name = {name!r}`.")
    out_dir = Path(out_dir)
    label = defense or results.get("defense") or name
    table = results_table(result_rows(results, label))
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    atomic_write_json(json_path, results, digest=True)
    eps = results.get("eps")
    caption = f"{label}: {results.get('n_examples')} test points"
    if eps is not None:
        caption += f", L-inf eps = {eps:.4g}"
    atomic_write_text(md_path, f"{caption}\n\n{table}\n")
    return json_path, md_path
