"""The premise gaps and the convergence check, on hand-worked numbers."""

from __future__ import annotations

import math

import pytest

from anl.integrations.mtard.pipeline.diagnostics import (
    CIFAR10_PREMISE,
    convergence,
    convergence_lines,
    diagnostics_text,
    not_converged,
    premise,
    premise_lines,
    premise_verdict,
    read_epochs,
    write_diagnostics,
)


def _eval(clean, robust):
    return {"clean": {"accuracy": clean}, "attacks": {"pgd_trades": {"robust": robust}}}


def _results(sat, rslad, adv=(0.80, 0.60), clean_teacher=(0.92, 0.0)):
    runs = [{"method": "sat", "seed": s, "evaluation": _eval(0.7, r)} for s, r in enumerate(sat)]
    runs += [
        {"method": "rslad", "seed": s, "evaluation": _eval(0.7, r)} for s, r in enumerate(rslad)
    ]
    return {
        "teachers": {
            "adv": {"evaluation": _eval(*adv)},
            "clean": {"evaluation": _eval(*clean_teacher)},
        },
        "runs": runs,
    }


def test_premise_gaps_paired_by_seed():
    # Teacher 60.0; SAT 50, 52, 54 -> gaps 10, 8, 6 (mean 8, std 2).
    # RSLAD 53, 53, 57 paired with SAT -> 3, 1, 3 (mean 7/3). Clean gap 92 - 80 = 12.
    out = premise(_results([0.50, 0.52, 0.54], [0.53, 0.53, 0.57]))
    rows = out["rows"]
    assert rows["teacher_gap"]["mean"] == pytest.approx(8.0)
    assert rows["teacher_gap"]["std"] == pytest.approx(2.0)
    assert rows["rslad_gap"]["mean"] == pytest.approx(7 / 3)
    assert rows["rslad_gap"]["std"] == pytest.approx(math.sqrt(4 / 3))
    assert rows["clean_gap"]["mean"] == pytest.approx(12.0)
    assert rows["teacher_gap"]["cifar10"] == pytest.approx(CIFAR10_PREMISE["teacher_gap"])
    assert out["holds"] is True and out["missing"] == []


def test_premise_fails_on_any_gap_below_its_threshold():
    out = premise(_results([0.50, 0.52], [0.51, 0.53]))  # RSLAD only +1
    assert out["rows"]["rslad_gap"]["holds"] is False and out["holds"] is False
    narrow = premise(_results([0.57, 0.57], [0.60, 0.60]))  # teacher only +3
    assert narrow["rows"]["teacher_gap"]["holds"] is False and narrow["holds"] is False
    close = premise(_results([0.5], [0.55], clean_teacher=(0.83, 0.0)))  # clean gap +3
    assert close["rows"]["clean_gap"]["holds"] is False


def test_premise_without_rslad_is_undecided():
    results = _results([0.5], [0.6])
    results["runs"] = [r for r in results["runs"] if r["method"] != "rslad"]
    out = premise(results)
    assert out["holds"] is None and out["missing"] == ["rslad_gap"]


def _rows(values):
    return [{"epoch": float(e + 1), "val_robust": v} for e, v in enumerate(values)]


def test_a_flat_noisy_tail_has_flattened():
    values = [0.3, 0.4, 0.45, 0.5, 0.55, 0.56, 0.54, 0.55]
    out = convergence(_rows(values))
    assert out["status"] == "flattened" and out["window"] == [6.0, 8.0]  # the last 3
    assert out["rise"] == pytest.approx(-1.0)  # 56 -> 55 over the window


def test_a_steady_climb_is_still_rising():
    values = [0.30 + 0.01 * e for e in range(12)]  # +1 point per epoch
    out = convergence(_rows(values))
    assert out["status"] == "still rising"
    assert out["slope_per_epoch"] == pytest.approx(1.0)
    assert out["rise"] == pytest.approx(2.0)  # window of 3 epochs: 2 epochs of climb
    assert out["rise_se"] == pytest.approx(0.0, abs=1e-9)


def test_a_rise_within_the_noise_is_not_a_rise():
    values = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.50, 0.56, 0.49, 0.58]  # noisy tail
    out = convergence(_rows(values))
    assert out["rise"] > 1.0 and out["status"] == "flattened"


def test_short_runs_and_reading_the_log(tmp_path):
    assert convergence(_rows([0.1, 0.2]))["status"] == "too short"
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "epochs.csv").write_text("epoch,val_robust,lr\n1,0.25,0.1\n2,0.5,0.1\n")
    assert read_epochs(tmp_path) == [
        {"epoch": 1.0, "val_robust": 0.25, "lr": 0.1},
        {"epoch": 2.0, "val_robust": 0.5, "lr": 0.1},
    ]
    assert read_epochs(tmp_path / "missing") == []


def test_diagnostics_text_from_a_results_json_without_logs(tmp_path):
    results = _results([0.50, 0.52, 0.54], [0.53, 0.53, 0.57])
    results["profile"] = "toy"
    for run in results["runs"]:
        run["run_dir"] = str(tmp_path / "gone")
    text = diagnostics_text(results)
    assert "| adversarial teacher robust - SAT student robust (PGD_TRADES) | +8.0 ± 2.0 |" in text
    assert "**The premise holds here**" in text
    assert "were not kept" in text
    (tmp_path / "results.json").write_text(__import__("json").dumps(results))
    assert write_diagnostics(tmp_path).read_text() == text


def test_convergence_table_and_unconverged_methods():
    checks = {
        "sat/0": convergence(_rows([0.3 + 0.01 * e for e in range(12)])),
        "sat/1": convergence(_rows([0.5] * 12)),
        "rslad/0": convergence(_rows([0.5] * 12)),
    }
    assert not_converged(checks) == ["sat"]
    lines = convergence_lines(checks, {"sat": "SAT", "rslad": "RSLAD"})
    assert lines[2].startswith("| SAT | seed 0: +2.0 ± 0.0 (epochs 10-12); seed 1: +0.0")
    assert lines[2].endswith("| still rising |") and lines[3].endswith("| flattened |")


def test_premise_verdict_lines():
    holds = premise_lines(premise(_results([0.50, 0.52], [0.53, 0.55])))
    assert holds[-1].startswith("**The premise holds here**")
    fails = premise_verdict(premise(_results([0.57, 0.57], [0.58, 0.58])))
    assert "does NOT hold" in fails and "adversarial teacher robust" in fails
