"""``anl-mtard reproduce`` end to end on a tiny subset of the real Fashion-MNIST, and its parts.

One module-scoped run of the whole pipeline through the command line (a smaller version of
the ``smoke`` profile: 96 training images, 1 epoch, 1-2 attack steps, 32 test points) is
shared by the tests; the resume test works on a copy of it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from anl.integrations.mtard import cli
from anl.integrations.mtard.cli import reproduce as reproduce_cli
from anl.integrations.mtard.evaluation.counting import w_robust
from anl.integrations.mtard.methods.registry import METHOD_ORDER, METHODS
from anl.integrations.mtard.pipeline import tasks
from anl.integrations.mtard.pipeline.claims import claim4_text, claims_text, compare_with_claims
from anl.integrations.mtard.pipeline.profile import Profile
from anl.integrations.mtard.pipeline.report_tables import aggregate, table_rows
from anl.integrations.mtard.pipeline.reproduce import reproduce
from anl.integrations.mtard.runtime.files import safe_load
from anl.integrations.mtard.tables import results_table

LABELS = [spec.label for spec in METHODS.values()]
SMOKE_METHODS = Profile.load("smoke").to_dict()["methods"]
SMOKE_ATTACKS = Profile.load("smoke").to_dict()["evaluation"]["attacks"]
FIGURES = ("ablation", "total_loss", "relative_losses", "mtard_weights", "accuracy")


def tiny_profile() -> dict:
    profile = Profile.load("smoke").to_dict()
    profile["name"] = "test"
    profile["download"] = False
    profile["train"].update(
        batch_size=32, train_subset=96, val_size=32, val_batch_size=32, attack_steps=1
    )
    for spec in profile["teachers"].values():
        spec["train"]["train_subset"] = 96
    profile["evaluation"].update(
        n_examples=32, batch_size=32, square_queries=5, attack_n_examples={"square": 16}
    )
    profile["evaluation"]["attack_overrides"] = {
        a: {"steps": 1} for a in ("pgd_sat", "pgd_trades", "cw_inf", "transfer_pgd", "transfer_cw")
    }
    Profile(profile)  # valid
    return profile


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    reproduce_cli.add_reproduce_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reproduce", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    profile_path = root / "test.json"
    profile_path.write_text(json.dumps(tiny_profile()))
    out = root / "out"
    argv = ["--profile", str(profile_path), "--out", str(out), "--no-progress"]
    assert run_cli(argv) == 0
    return out


def test_smoke_writes_every_table_and_figure(smoke, capsys):
    out = smoke
    saved = json.loads((out / "config.json").read_text())
    assert saved["name"] == "test" and saved["methods"] == SMOKE_METHODS
    for role in ("clean", "adv"):
        assert (out / "teachers" / role / "final.pt").is_file()
        assert (out / "eval" / f"teacher_{role}.json").is_file()
    for method in METHOD_ORDER:
        run = out / "runs" / "small_cnn" / method / "seed0"
        assert (run / "final.pt").is_file() and (run / "logs" / "epochs.csv").is_file()
        result = json.loads((out / "eval" / f"small_cnn__{method}__seed0.json").read_text())
        assert result["n_examples"] == 32 and result["attacks"]["square"]["n_examples"] == 16
        assert list(result["attacks"]) == SMOKE_ATTACKS

    white = (out / "white_box.md").read_text()
    black = (out / "black_box.md").read_text()
    for label in LABELS:
        assert f"| {label} |" in white and f"| {label} |" in black, label
    for title in ("FGSM", "PGD_SAT", "PGD_TRADES", "CW_inf"):
        assert f"| {title} |" in white and f"| {title} |" not in black
    for title in ("Transfer PGD_TRADES", "Transfer CW_inf", "Square"):
        assert f"| {title} |" in black and f"| {title} |" not in white
    assert "; Square on the first 16 of them" in black and "Square on" not in white
    ablation = (out / "ablation.md").read_text()
    for variant in ("| Baseline |", "| Baseline+MT |", "| Baseline+MT+ANL (MTARD) |"):
        assert variant in ablation
    teachers = (out / "teachers.md").read_text()
    assert "trained here" in teachers and "cannot be had on this machine" in teachers

    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == len(METHOD_ORDER)
    assert set(results["aggregate"]["small_cnn"]) == set(METHOD_ORDER)
    assert results["teachers"]["adv"]["source"] == "trained here"
    clean = results["aggregate"]["small_cnn"]["mtard"]["clean"]
    assert clean["n"] == 1 and clean["std"] is None and 0 <= clean["mean"] <= 1

    summary = (out / "summary.md").read_text()
    for fragment in ("Wall time per stage", "torch", "Command:", "Claim 1", "MTARD clean − best"):
        assert fragment in summary, fragment
    assert "cannot be had on this machine" in summary

    # Each figure as a PNG and an SVG; the accuracy of every run in one grid, the teachers'
    # in another; results.json lists exactly the files written.
    stems = [f"{name}_small_cnn" for name in FIGURES] + ["accuracy_teachers"]
    expected = sorted(f"figures/{stem}.{ext}" for stem in stems for ext in ("png", "svg"))
    written = sorted(p.relative_to(out).as_posix() for p in out.glob("figures/**/*") if p.is_file())
    assert sorted(results["figures"]) == written == expected
    assert all((out / name).stat().st_size > 1000 for name in written)


@pytest.fixture(scope="module")
def with_jobs(smoke, tmp_path_factory):
    """The smoke reproduction again, in two worker processes (``--jobs 2``)."""
    root = tmp_path_factory.mktemp("jobs")
    profile_path = root / "test.json"
    profile_path.write_text((smoke / "config.json").read_text())
    out = root / "out"
    argv = ["--profile", str(profile_path), "--out", str(out), "--no-progress", "--no-plots"]
    assert run_cli([*argv, "--jobs", "2"]) == 0
    return out


def test_jobs_give_the_sequential_results(smoke, with_jobs):
    for table in ("white_box.md", "black_box.md", "ablation.md", "teachers.md"):
        assert (with_jobs / table).read_text() == (smoke / table).read_text(), table
    results = json.loads((with_jobs / "results.json").read_text())
    assert results["aggregate"] == json.loads((smoke / "results.json").read_text())["aggregate"]
    for method in METHOD_ORDER:
        ours = safe_load(with_jobs / "runs/small_cnn" / method / "seed0/final.pt")
        theirs = safe_load(smoke / "runs/small_cnn" / method / "seed0/final.pt")
        for key, value in theirs["state_dict"].items():
            assert torch.equal(ours["state_dict"][key], value), (method, key)
    # Every stage ran in a worker and is recorded; the invocation says it used two jobs.
    statuses = {row["stage"]: row["status"] for row in results["stages"]}
    expected = {"data", "teacher/clean", "teacher/adv", "evaluate/craft-transfer"}
    expected |= {f"train/small_cnn/{m}/seed0" for m in METHOD_ORDER}
    expected |= {f"evaluate/small_cnn__{m}__seed0" for m in METHOD_ORDER}
    assert set(statuses) == expected | {"evaluate/teacher_clean", "evaluate/teacher_adv"}
    assert {status for stage, status in statuses.items() if stage != "data"} == {"ran"}
    invocations = json.loads((with_jobs / "invocations.json").read_text())
    assert [i["jobs"] for i in invocations] == [2]
    assert invocations[0]["wall_s"] == pytest.approx(results["wall_time_s"], abs=1.0)
    crafted = safe_load(with_jobs / "eval" / "transfer_examples.pt")
    assert set(crafted["crafted"]) == {"transfer_pgd", "transfer_cw"}


def test_resume_with_jobs_reads_everything_back(with_jobs):
    profile = json.loads((with_jobs / "config.json").read_text())
    table = (with_jobs / "white_box.md").read_text()
    # The workers run the real functions (no monkeypatch reaches them): the files tell.
    finals = sorted(with_jobs.glob("**/final.pt"))
    before = [p.stat().st_mtime_ns for p in finals]
    results = reproduce(profile, with_jobs, resume=True, plots=False, progress=False, jobs=2)
    assert [p.stat().st_mtime_ns for p in finals] == before
    statuses = {row["stage"]: row["status"] for row in results["stages"] if row["stage"] != "data"}
    assert set(statuses.values()) == {"skipped (complete)"}, statuses
    assert (with_jobs / "white_box.md").read_text() == table
    summary = (with_jobs / "summary.md").read_text()
    assert "Wall time over all 2 invocations" in summary and "jobs 2" in summary
    assert "stages ran side by side with --jobs" in summary


@pytest.mark.parametrize("jobs", [0, 1.5])
def test_jobs_must_be_a_positive_integer(smoke, tmp_path, jobs):
    profile = json.loads((smoke / "config.json").read_text())
    with pytest.raises(ValueError, match="jobs"):
        reproduce(profile, tmp_path / "out", jobs=jobs)
    assert not (tmp_path / "out").exists()


def test_existing_results_need_resume(smoke):
    with pytest.raises(ValueError, match="resume"):
        reproduce(json.loads((smoke / "config.json").read_text()), smoke)


def test_plot_redraws_the_figures_of_a_results_directory(smoke, capsys, monkeypatch):
    """`anl-mtard plot RESULTS_DIR` draws the report's figures again, every one of them."""
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(smoke)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() appends the working directory
    drawn = sorted(
        p.relative_to(smoke) for p in (smoke / "figures").rglob("*") if p.suffix in {".png", ".svg"}
    )
    capsys.readouterr()
    assert cli.main(["plot", "."]) == 0
    assert sorted(Path(p) for p in capsys.readouterr().out.split()) == drawn


def test_diagnose_writes_the_premise_and_convergence_of_a_results_directory(
    smoke, capsys, tmp_path
):
    """`anl-mtard diagnose RESULTS_DIR` recomputes diagnostics.md from results.json alone."""
    copy = tmp_path / "results"
    copy.mkdir()
    (copy / "results.json").write_bytes((smoke / "results.json").read_bytes())
    capsys.readouterr()
    assert cli.main(["diagnose", str(copy)]) == 0
    written = (copy / "diagnostics.md").read_text()
    assert written.startswith("# Diagnostics of the `test` reproduction")
    assert "## The paper's premise, measured here" in written
    assert "## Convergence of each run" in written
    assert written in capsys.readouterr().out
    assert cli.main(["diagnose", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_diagnose_brings_an_earlier_report_up_to_date_and_is_idempotent(smoke, tmp_path):
    """A results directory written before the premise and convergence checks existed (its
    summary.md and teachers.md without them) gets them where a report of today has them, with
    the claims judged again; a second call changes nothing."""
    from anl.integrations.mtard.pipeline.report import (
        CLAIMS_HEADING,
        CONVERGENCE_HEADING,
        PREMISE_HEADING,
        refresh_diagnostics,
    )

    copy = tmp_path / "results"
    copy.mkdir()
    for name in ("results.json", "summary.md", "teachers.md"):
        (copy / name).write_bytes((smoke / name).read_bytes())
    today = {name: (smoke / name).read_text() for name in ("summary.md", "teachers.md")}

    def drop_section(text: str, heading: str) -> str:
        """Without ``heading``'s section: up to the next heading, or for the premise (which
        the run's facts follow) up to its verdict line and the blank line after it."""
        lines = text.split("\n")
        start = lines.index(heading)
        if heading == PREMISE_HEADING:
            end = 2 + next(i for i in range(start, len(lines)) if lines[i].startswith("**The"))
        else:
            end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
        return "\n".join(lines[:start] + lines[end:])

    old_summary = drop_section(
        drop_section(today["summary.md"], PREMISE_HEADING), CONVERGENCE_HEADING
    )
    old_summary = old_summary.replace("**The premise", "**An old verdict line", 1)
    title, _, rest = today["teachers.md"].partition("\n")
    verdict = next(line for line in rest.split("\n") if line.startswith("**The premise"))
    old_teachers = title + "\n" + rest.split(verdict + "\n", 1)[1]
    assert "| Premise" not in old_teachers and PREMISE_HEADING not in old_summary
    (copy / "summary.md").write_text(old_summary)
    (copy / "teachers.md").write_text(old_teachers)

    written = refresh_diagnostics(copy)
    assert [p.name for p in written] == ["diagnostics.md", "teachers.md", "summary.md"]
    summary = (copy / "summary.md").read_text()
    for heading in (PREMISE_HEADING, CONVERGENCE_HEADING, CLAIMS_HEADING):
        assert summary.count(heading) == 1
    order = [
        summary.index(h) for h in (PREMISE_HEADING, "- Date:", CONVERGENCE_HEADING, CLAIMS_HEADING)
    ]
    assert order == sorted(order)
    assert "An old verdict line" not in summary
    claims = today["summary.md"].split(CLAIMS_HEADING)[1]
    assert claims in summary  # judged as a report of today judges them
    assert (copy / "teachers.md").read_text().count("| Premise") == 1
    before = {p.name: p.read_text() for p in copy.iterdir()}
    refresh_diagnostics(copy)
    assert {p.name: p.read_text() for p in copy.iterdir()} == before


def test_diagnose_reads_the_run_logs_where_the_results_directory_keeps_them(smoke, tmp_path):
    """A results.json without stored epoch curves (written before they were stored), whose
    ``run_dir`` paths are relative to another working directory: the logs are read at the
    runs' place in the results directory, and a convergence section an earlier call wrote
    without them is replaced by the table."""
    from anl.integrations.mtard.pipeline.report import CONVERGENCE_HEADING, refresh_diagnostics

    copy = tmp_path / "results"
    results = json.loads((smoke / "results.json").read_text())
    for run in results["runs"]:
        run["train"].pop("epochs", None)
        run["run_dir"] = "elsewhere/" + Path(run["run_dir"]).name
        place = Path("runs") / run["student"] / run["method"] / f"seed{run['seed']}" / "logs"
        (copy / place).mkdir(parents=True)
        shutil.copy(smoke / place / "epochs.csv", copy / place / "epochs.csv")
    (copy / "results.json").write_text(json.dumps(results))
    summary = (smoke / "summary.md").read_text()
    start = summary.index(CONVERGENCE_HEADING)
    end = summary.index("\n## ", start)
    stale = (
        f"{summary[:start]}{CONVERGENCE_HEADING}\n\nThe epoch logs were not kept.\n{summary[end:]}"
    )
    (copy / "summary.md").write_text(stale)

    refresh_diagnostics(copy)
    for name in ("summary.md", "diagnostics.md"):
        text = (copy / name).read_text()
        assert "were not kept" not in text and text.count(CONVERGENCE_HEADING) == 1
        assert "| Method | Validation robust accuracy over the last quarter" in text
    assert (copy / "summary.md").read_text() == summary  # as the run's own report had it


def test_compare_puts_two_reproductions_side_by_side(smoke, tmp_path, capsys):
    """`anl-mtard compare A B`: per method, A's and B's mean ± std and B − A in points."""
    results = json.loads((smoke / "results.json").read_text())
    shifted = json.loads(json.dumps(results))
    mtard = shifted["aggregate"]["small_cnn"]["mtard"]
    mtard["clean"]["mean"] += 0.0125
    mtard["attacks"]["pgd_trades"]["robust"]["mean"] -= 0.02
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(results))
    (tmp_path / "b" / "results.json").write_text(json.dumps(shifted))
    out = tmp_path / "side.md"
    argv = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]
    assert cli.main([*argv, "--labels", "kl1", "kl10"]) == 0
    text = out.read_text()
    assert text.startswith("# `kl1` and `kl10` side by side")
    rows = {
        line.split(" | ")[1]: line.split(" | ")
        for line in text.splitlines()
        if line.startswith("| small_cnn |")
    }
    assert set(rows) == {METHODS[m].label for m in METHOD_ORDER}
    assert rows["MTARD"][4] == "+1.25" and rows["MTARD"][7] == "-2.00"
    assert all(row[4] == "+0.00" and row[7] == "+0.00" for k, row in rows.items() if k != "MTARD")
    assert "## The premise in each" in text
    assert text in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path), str(tmp_path / "b"), "--out", str(out)]) == 2


def test_resume_skips_completed_stages(smoke, monkeypatch):
    out = smoke  # in place: ends as complete as it started
    table = (out / "white_box.md").read_text()
    profile = json.loads((out / "config.json").read_text())
    # Simulate a reproduce killed after training MTARD's last epoch but before final.pt and
    # its evaluation were written.
    (out / "runs" / "small_cnn" / "mtard" / "seed0" / "final.pt").unlink()
    (out / "eval" / "small_cnn__mtard__seed0.json").unlink()

    calls = {"train": [], "evaluate": 0}
    real_train, real_evaluate = tasks.train, tasks.evaluate

    def counting_train(config, run_dir, **kwargs):
        calls["train"].append((config.method, kwargs["resume"]))
        return real_train(config, run_dir, **kwargs)

    def counting_evaluate(*args, **kwargs):
        calls["evaluate"] += 1
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(tasks, "train", counting_train)
    monkeypatch.setattr(tasks, "evaluate", counting_evaluate)
    before = (out / "runs" / "small_cnn" / "sat" / "seed0" / "final.pt").stat().st_mtime_ns
    results = reproduce(profile, out, resume=True, plots=False, progress=False)
    # Only the interrupted run: resumed from last.pt (all epochs done, so no new step).
    assert calls == {"train": [("mtard", True)], "evaluate": 1}
    assert (out / "runs" / "small_cnn" / "mtard" / "seed0" / "final.pt").is_file()
    assert (out / "runs" / "small_cnn" / "sat" / "seed0" / "final.pt").stat().st_mtime_ns == before
    statuses = {row["stage"]: row["status"] for row in results["stages"]}
    assert statuses["teacher/adv"] == "skipped (complete)"
    assert statuses["train/small_cnn/sat/seed0"] == "skipped (complete)"
    assert statuses["train/small_cnn/mtard/seed0"] == "resumed"
    assert statuses["evaluate/small_cnn__sat__seed0"] == "skipped (complete)"
    assert statuses["evaluate/small_cnn__mtard__seed0"] == "ran"
    assert (out / "white_box.md").read_text() == table  # same weights, same evaluation

    # A second resume does no training and no evaluation at all.
    monkeypatch.setattr(tasks, "train", _forbidden)
    monkeypatch.setattr(tasks, "evaluate", _forbidden)
    again = reproduce(profile, out, resume=True, plots=False, progress=False)
    assert again["aggregate"] == results["aggregate"]
    # Skipped stages report the time they took when they ran.
    rows = {row["stage"]: row for row in again["stages"]}
    assert rows["train/small_cnn/sat/seed0"]["earlier_s"] > 0
    assert rows["train/small_cnn/mtard/seed0"]["status"] == "skipped (complete)"
    assert "evaluate/craft-transfer" not in rows  # nothing left to evaluate
    assert "When it ran, if earlier" in (out / "summary.md").read_text()


def test_moved_results_directory_resumes_without_work(smoke, tmp_path, monkeypatch):
    """A moved results directory, without the transfer examples (as one that an earlier
    version wrote with --jobs 1), is re-reported without training, crafting or evaluating."""
    out = tmp_path / "moved"
    shutil.copytree(smoke, out, ignore=shutil.ignore_patterns("*.png", "transfer_examples.pt"))
    profile = json.loads((out / "config.json").read_text())
    monkeypatch.setattr(tasks, "train", _forbidden)
    monkeypatch.setattr(tasks, "evaluate", _forbidden)
    monkeypatch.setattr(tasks, "craft_transfer", _forbidden)
    results = reproduce(profile, out, resume=True, plots=False, progress=False)
    assert "evaluate/craft-transfer" not in {row["stage"] for row in results["stages"]}
    assert all(r["run_dir"].startswith(str(out)) for r in results["runs"])
    assert all(t["checkpoint"].startswith(str(out)) for t in results["teachers"].values())
    assert (out / "white_box.md").read_text() == (smoke / "white_box.md").read_text()


def _forbidden(*args, **kwargs):
    raise AssertionError("a completed stage ran again")


def test_resume_refuses_a_changed_configuration(smoke, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(smoke, out, ignore=shutil.ignore_patterns("*.png"))
    profile = json.loads((out / "config.json").read_text())
    profile["train"]["lr"] = 0.05
    with pytest.raises(ValueError, match="another configuration"):
        reproduce(profile, out, resume=True, plots=False, progress=False)


def _agg(values: dict[str, tuple[list[float], list[float]]]) -> dict:
    """An aggregate from {method: (clean per seed, robust per seed)} under two attacks."""
    results = {}
    for method, (clean, robust) in values.items():
        for seed, (c, r) in enumerate(zip(clean, robust, strict=True)):
            results["s", method, seed] = {
                "train_seed": seed,
                "clean": {"accuracy": c},
                "attacks": {
                    a: {"robust": r, "w_robust": w_robust(c, r)} for a in ("pgd_trades", "square")
                },
            }
    return aggregate(results)


def test_aggregate_and_tables_show_mean_and_sample_std():
    agg = _agg({"sat": ([0.8, 0.9], [0.5, 0.3]), "mtard": ([0.9, 0.9], [0.4, 0.4])})
    sat = agg["s"]["sat"]
    assert sat["clean"]["mean"] == pytest.approx(0.85)
    assert sat["clean"]["std"] == pytest.approx(0.0707107, rel=1e-5)  # n - 1 denominator
    rows = table_rows(agg["s"], "fashion_mnist", ["pgd_trades"])
    table = results_table(rows)
    assert "| PGD_TRADES | SAT | 85.00 ± 7.07 | 40.00 ± 14.14 |" in table
    assert table.index("| SAT |") < table.index("| MTARD |")  # the paper's row order


def test_compare_with_claims_measures_each_claim():
    agg = _agg(
        {
            "sat": ([0.80], [0.50]),
            "rslad": ([0.82], [0.55]),
            "mtard": ([0.86], [0.52]),
            "baseline": ([0.70], [0.50]),
            "baseline_mt": ([0.84], [0.45]),
        }
    )
    c = compare_with_claims(agg, ["pgd_trades", "square"])["s"]
    assert c["clean"]["best_baseline"] == "rslad"
    assert c["clean"]["delta"] == pytest.approx(4.0)
    pgd = c["attacks"]["pgd_trades"]
    assert pgd["robust"]["best_baseline"] == "rslad" and pgd["robust"]["delta"] == pytest.approx(
        -3.0
    )
    assert pgd["w_robust"]["delta"] == pytest.approx(0.5) and pgd["w_robust_rank"] == 1
    assert c["best_w_robust_count"] == 2
    assert c["ablation"]["baseline_mt"]["clean"] == pytest.approx(84.0)
    text = "\n".join(claims_text({"s": c}))
    assert "= +4.00 points" in text and "holds here" in text
    # Square's lead (+0.50) equals the white-box mean (+0.50): not larger, so claim 4 fails.
    assert "Square +0.50 (mean +0.50) vs white-box mean +0.50" in text
    assert "under 0 of 1 black-box attacks (does NOT hold here" in text
    # W-Robust under PGD_TRADES: Baseline 60.0 < Baseline+MT 64.5 < MTARD 69.0.
    assert "component improves W-Robust; holds here)" in text


def test_claims_text_judges_each_black_box_attack_and_the_ablation_order():
    agg = _agg(
        {
            "sat": ([0.80], [0.60]),
            "mtard": ([0.90], [0.40]),
            "baseline": ([0.80], [0.70]),
            "baseline_mt": ([0.85], [0.50]),
        }
    )
    c = compare_with_claims(agg, ["pgd_trades", "square"])["s"]
    text = "\n".join(claims_text({"s": c}))
    # MTARD's W-Robust 65.0 vs SAT's 70.0 under both attacks: a 5-point deficit everywhere.
    assert "Square -5.00 (mean -5.00) vs white-box mean -5.00" in text
    assert "under 0 of 1 black-box attacks (does NOT hold here" in text
    # Baseline 75.0 > Baseline+MT 67.5 > MTARD 65.0: the paper's order is reversed.
    assert "component improves W-Robust; does NOT hold here)" in text


def test_claim4_is_partly_true_when_the_black_box_attacks_disagree():
    def attack(delta: float) -> dict:
        return {"w_robust": {"delta": delta}}

    comparison = {
        "attacks": {
            "pgd_trades": attack(-3.0),
            "transfer_pgd": attack(2.5),
            "square": attack(-3.5),
        },
        "white_box_mean_w_robust_delta": -3.0,
        "black_box_mean_w_robust_delta": -0.5,
    }
    text = claim4_text(comparison)
    # Transfer +2.50 beats the white-box mean and is positive; Square -3.50 is neither.
    assert "under 1 of 2 black-box attacks (holds partly here" in text
    assert "(mean -0.50) vs white-box mean -3.00" in text
