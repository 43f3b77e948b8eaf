"""The report of an MTARD reproduction, from the evaluations to the files a reader opens.

:func:`write_report` writes ``white_box.md`` (paper Tables 2-3), ``black_box.md`` (Tables
4-5), ``ablation.md`` (Fig. 2), ``teachers.md`` (Table 1) (:mod:`.report_tables`),
``results.json``, the figures (:mod:`.figures`) and ``summary.md``: wall times, machine,
command and the paper's claims measured on these numbers (:mod:`.claims`).
:func:`refresh_diagnostics` brings the premise and convergence checks (:mod:`.diagnostics`)
into a results directory written before they existed, from its ``results.json`` alone.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..attacks.registry import BLACK_BOX, WHITE_BOX
from ..methods.registry import METHODS
from ..runtime.files import atomic_write_text, json_finite, read_json_object
from ..runtime.process import current_ranks
from .claims import claims_text, compare_with_claims, paper_comparison
from .diagnostics import (
    convergence_section,
    not_converged,
    premise,
    premise_lines,
    read_epochs,
    run_convergence,
    write_diagnostics,
)
from .figures import write_figures
from .plan import Outcome
from .profile import Profile, Teacher
from .report_tables import ablation_table, aggregate, attack_table, teachers_table
from .stages import Stages, run_dir


def _machine(device: torch.device) -> dict[str, Any]:
    ddp = current_ranks()
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


def write_report(
    profile: Profile,
    out: Path,
    outcome: Outcome,
    *,
    stages: Stages,
    plots: bool,
    command: str,
    started: datetime.datetime,
    wall_start: float,
) -> dict[str, Any]:
    """Write the tables, ``results.json``, the figures and ``summary.md``; return the results."""
    teachers, teacher_results = outcome.teachers, outcome.teacher_results
    student_results, runs = outcome.student_results, outcome.runs
    agg = aggregate(student_results)
    attacks = profile.evaluation.attacks
    white = [a for a in WHITE_BOX if a in attacks]
    black = [a for a in BLACK_BOX if a in attacks]
    tables = {
        "white_box.md": attack_table(
            profile, agg, white, "# White-box robustness (paper Tables 2-3 layout)"
        ),
        "black_box.md": attack_table(
            profile,
            agg,
            black,
            "# Black-box robustness (paper Tables 4-5 layout; transfer attacks crafted on the "
            "adversarial teacher)",
        ),
        "ablation.md": ablation_table(profile, agg),
        "teachers.md": teachers_table(profile, teachers, teacher_results),
    }
    run_rows = [
        {
            "student": s,
            "method": m,
            "seed": k,
            "run_dir": str(run_dir(out, s, m, k)),
            "train": {
                **{key: runs[s, m, k].get(key) for key in ("best", "final", "time_s")},
                "epochs": _epoch_curves(run_dir(out, s, m, k)),
            },
            "evaluation": student_results[s, m, k],
        }
        for (s, m, k) in runs
    ]
    teacher_rows = {
        role: {
            "label": t.label,
            "arch": t.arch,
            "source": t.source,
            "checkpoint": str(t.checkpoint),
            "run_dir": str(t.run_dir) if t.run_dir else None,
            "evaluation": teacher_results.get(role),
        }
        for role, t in teachers.items()
    }
    premise_check = premise({"teachers": teacher_rows, "runs": run_rows})
    convergence_checks = run_convergence(run_rows)
    tables["teachers.md"] = _with_premise(tables["teachers.md"], premise_check)
    for name, text in tables.items():
        atomic_write_text(out / name, text)

    figures: list[Path] = []
    if plots:
        with stages.stage("figures"):
            figures = write_figures(profile, out, agg, teachers, student_results)

    comparison = compare_with_claims(agg, [*white, *black])
    machine = _machine(profile.device_here())
    total_s = time.perf_counter() - wall_start
    results = {
        "profile": profile.name,
        "dataset": profile.dataset,
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "eval_settings": profile.evaluation.to_json(),
        "teachers": teacher_rows,
        "runs": run_rows,
        "aggregate": agg,
        "comparison": comparison,
        "premise": premise_check,
        "convergence": convergence_checks,
        "stages": stages.rows,
        "wall_time_s": total_s,
        "figures": [str(p.relative_to(out)) for p in figures],
    }
    stages.save_invocation()
    results["invocations"] = [dict(row) for row in stages.invocations]  # as written now
    atomic_write_text(out / "results.json", json.dumps(json_finite(results), indent=2) + "\n")
    atomic_write_text(
        out / "summary.md",
        _summary(
            profile,
            teachers,
            runs,
            comparison,
            agg,
            stages,
            machine,
            command,
            started,
            total_s,
            premise_check,
            convergence_checks,
        ),
    )
    return results


def _summary(
    profile: Profile,
    teachers: Mapping[str, Teacher],
    runs: Mapping[tuple[str, str, int], Mapping[str, Any]],
    comparison: Mapping[str, Any],
    agg: Mapping[str, Any],
    stages: Stages,
    machine: Mapping[str, Any],
    command: str,
    started: datetime.datetime,
    total_s: float,
    premise_check: Mapping[str, Any],
    convergence_checks: Mapping[str, Mapping[str, Any]],
) -> str:
    labels = {m: METHODS[m].label for m in METHODS}
    lines = [
        f"# MTARD reproduction, profile `{profile.name}`",
        "",
        profile.get("description", ""),
        "",
        PREMISE_HEADING,
        "",
        *premise_lines(premise_check),
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
        f"- Dataset {profile.dataset}; students {', '.join(profile.students)}; methods "
        f"{', '.join(METHODS[m].label for m in profile.methods)}; "
        f"seeds {profile.seeds}",
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
    lines += ["", CONVERGENCE_HEADING, "", *convergence_section(convergence_checks, labels)]
    lines += ["", CLAIMS_HEADING, ""]
    lines += claims_text(
        comparison, premise=premise_check, unconverged=not_converged(convergence_checks)
    )
    paper = paper_comparison(profile, agg)
    if paper:
        lines += ["", "## Here vs the paper", "", *paper]
    if profile.get("notes"):
        lines += ["", "## Profile notes (every reduction from the paper's protocol)", ""]
        lines += [f"- {note}" for note in profile.get("notes")]
    lines += [
        "",
        "Tables: white_box.md, black_box.md, ablation.md, teachers.md; all numbers: "
        "results.json; figures: figures/.",
    ]
    return "\n".join(lines) + "\n"


def _invocations_text(stages: Stages) -> list[str]:
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


def _epoch_curves(path: Path) -> list[dict[str, float]]:
    """Each epoch's validation accuracies, lr and weights, from the run's ``epochs.csv``
    (kept in ``results.json`` so that the convergence check outlives the run directories)."""
    keep = ("epoch", "val_clean", "val_robust", "val_wrobust", "lr")
    return [
        {k: v for k, v in row.items() if k in keep or k.startswith(("w_", "rel_"))}
        for row in read_epochs(path)
    ]


def _with_premise(teachers_md: str, premise_check: Mapping[str, Any]) -> str:
    """``teachers.md`` opened by the premise table (the teachers are half of it)."""
    title, _, rest = teachers_md.partition("\n")
    return "\n".join([title, "", *premise_lines(premise_check), rest])


PREMISE_HEADING = "## The paper's premise, measured here"
CONVERGENCE_HEADING = "## Convergence of each run"
CLAIMS_HEADING = "## The paper's claims, measured here"


def refresh_diagnostics(out: str | Path) -> list[Path]:
    """Recompute the premise and convergence checks of the results directory ``out`` from its
    ``results.json`` (no retraining) and write them where a report of this version has them:
    ``diagnostics.md``; the premise table at the top of ``teachers.md``; in ``summary.md`` the
    premise section before the run's facts, the convergence section before the claims, and
    the claims judged again in their light. A premise section already there is kept as it is
    (the evaluations it is computed from do not change); the convergence section and the
    claims are always computed again (a run's logs may be found that were not before).
    Returns the files written.
    """
    out = Path(out)
    results = read_json_object(out / "results.json")
    premise_check = premise(results)
    checks = run_convergence(results.get("runs") or [], out)
    written = [write_diagnostics(out)]
    teachers_md = out / "teachers.md"
    if teachers_md.is_file():
        text = teachers_md.read_text()
        if PREMISE_HEADING not in text and "| Premise" not in text:
            atomic_write_text(teachers_md, _with_premise(text, premise_check))
            written.append(teachers_md)
    summary_md = out / "summary.md"
    if summary_md.is_file():
        labels = {m: METHODS[m].label for m in METHODS}
        text = _refreshed_summary(
            summary_md.read_text(),
            premise_check,
            convergence_section(checks, labels),
            claims_text(
                results.get("comparison") or {},
                premise=premise_check,
                unconverged=not_converged(checks),
            ),
        )
        atomic_write_text(summary_md, text)
        written.append(summary_md)
    return written


def _refreshed_summary(
    text: str,
    premise_check: Mapping[str, Any],
    convergence: list[str],
    claims: list[str],
) -> str:
    """``summary.md``'s text with the premise, convergence and claims sections of this version."""
    lines = text.rstrip("\n").split("\n")
    if PREMISE_HEADING not in lines:
        facts = next((i for i, line in enumerate(lines) if line.startswith("- Date:")), 1)
        lines[facts:facts] = [PREMISE_HEADING, "", *premise_lines(premise_check), ""]
    if CLAIMS_HEADING in lines:
        start = lines.index(CLAIMS_HEADING)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = lines[end:]
        lines = [*lines[:start], CLAIMS_HEADING, "", *claims, *([""] if tail else []), *tail]
    else:
        lines += ["", CLAIMS_HEADING, "", *claims]
    if CONVERGENCE_HEADING in lines:  # recomputed too: the run logs may be found now
        start = lines.index(CONVERGENCE_HEADING)
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
        del lines[start:end]
    at = lines.index(CLAIMS_HEADING)
    lines[at:at] = [CONVERGENCE_HEADING, "", *convergence, ""]
    return "\n".join(lines) + "\n"
