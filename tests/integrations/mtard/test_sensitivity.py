"""``anl-mtard sensitivity`` (issue #15): its grids, end to end on a tiny reproduction of the
real Fashion-MNIST (the ``smoke`` profile made smaller, two methods), resume, divergence and
the report."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from anl.integrations.mtard.cli import sensitivity as sensitivity_cli
from anl.integrations.mtard.pipeline import sensitivity as sens
from anl.integrations.mtard.pipeline import tasks
from anl.integrations.mtard.pipeline.profile import Profile
from anl.integrations.mtard.pipeline.reproduce import reproduce
from anl.integrations.mtard.pipeline.sensitivity_report import sensitivity_table
from anl.integrations.mtard.training.trainer import NonFiniteLossError

PLACEHOLDER = {"clean": "clean.pt", "adv": "adv.pt"}
SUBSET = ["anl-rw0.025-beta1", "anl-rw0.25-beta2", "constant-wadv0.7", "famo"]


def tiny_profile() -> dict:
    profile = Profile.load("smoke").to_dict()
    profile.update(name="tiny", download=False, methods=["baseline_mt", "mtard"])
    profile["train"].update(
        batch_size=32, train_subset=96, val_size=32, val_batch_size=32, attack_steps=1
    )
    for spec in profile["teachers"].values():
        spec["train"]["train_subset"] = 96
    profile["evaluation"].update(
        attacks=["fgsm", "pgd_trades"], n_examples=32, batch_size=32, attack_n_examples={}
    )
    profile["evaluation"]["attack_overrides"] = {"pgd_trades": {"steps": 1}}
    return profile


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sensitivity_cli.add_sensitivity_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sensitivity", *argv])
    return args.func(args)


# --- the grids -------------------------------------------------------------------------------


def test_grids():
    profile = Profile(tiny_profile())
    anl = sens.grid_settings(profile, "anl")
    assert [s.name for s in anl[:3]] == ["anl-rw0.0025-beta0.5", "anl-rw0.0025-beta1",
                                         "anl-rw0.0025-beta2"]  # fmt: skip
    assert len(anl) == 12 and [s.group for s in anl].count("constant") == 3
    balancers = sens.grid_settings(profile, "balancers")
    assert [s.name for s in balancers] == ["anl-rw0.025-beta1", "dwa", "rlw", "gls",
                                           "softadapt", "relobralo", "uncertainty", "imtl", "famo"]  # fmt: skip
    everything = [s.name for s in sens.grid_settings(profile, "all")]
    assert len(everything) == len(set(everything)) == 20
    assert set(everything) == {s.name for s in anl + balancers}
    # With a scaled KL the official scale comes as a control.
    document = tiny_profile()
    document["method_train"] = {m: {"hyper": {"kl_factor": 10.0}} for m in ("mtard", "baseline_mt")}
    scaled = {s.name: s for s in sens.grid_settings(Profile(document), "anl")}
    assert len(scaled) == 13 and scaled["anl-kl1"].group == "control"
    control = scaled["anl-kl1"].config(Profile(document), "small_cnn", 0, PLACEHOLDER)
    assert control.hyper == {"kl_factor": 1.0} and control.weight_lr == 0.025
    # A constant keeps the profile's KL scale and sets the weights.
    constant = scaled["constant-wadv0.3"].config(Profile(document), "small_cnn", 0, PLACEHOLDER)
    assert constant.method == "baseline_mt"
    assert constant.hyper == {"kl_factor": 10.0, "w_adv": 0.3}
    with pytest.raises(ValueError, match="grid"):
        sens.grid_settings(profile, "bogus")


def test_settings_change_only_what_they_say():
    document = tiny_profile()
    document["method_train"] = {"mtard": {"balancer": "famo", "weight_lr": 0.05}}
    profile = Profile(document)
    base = profile.student_config("small_cnn", "mtard", 3, teacher_paths=PLACEHOLDER)
    by_name = {s.name: s for s in sens.grid_settings(profile, "all")}
    anl = by_name["anl-rw0.25-beta2"].config(profile, "small_cnn", 3, PLACEHOLDER)
    assert (anl.balancer, anl.weight_lr, anl.beta, anl.seed) == ("anl", 0.25, 2.0, 3)
    dwa = by_name["dwa"].config(profile, "small_cnn", 3, PLACEHOLDER)
    assert dwa.balancer == "dwa" and dwa.weight_lr == 0.05  # the profile's rate
    changed = {k for k, v in dwa.to_dict().items() if base.to_dict()[k] != v}
    assert changed == {"balancer"}


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("sensitivity")
    results = root / "results"
    reproduce(tiny_profile(), results, plots=False, progress=False)
    argv = [str(results), "--grid", "all", "--settings", *SUBSET, "--no-progress"]
    assert run_cli(argv) == 0
    return results, results / "sensitivity"


def test_study_writes_its_table_json_and_figure(study):
    results, out = study
    data = json.loads((out / "sensitivity.json").read_text())
    rows = {r["name"]: r for r in data["settings"]}
    assert list(rows) == SUBSET
    for r in rows.values():
        assert r["status"] == "done" and r["seed"] == 0
        assert r["w_robust"] == pytest.approx((r["clean"] + r["robust"]) / 2)
        assert r["wall_s"]["train"] > 0 and r["wall_s"]["evaluate"] > 0
        evaluation = json.loads((out / "eval" / f"small_cnn__{r['name']}__seed0.json").read_text())
        assert list(evaluation["attacks"]) == ["pgd_trades"]
    assert rows["constant-wadv0.7"]["final_weights"] == {"adv": 0.7, "nat": pytest.approx(0.3)}
    assert sum(rows["famo"]["final_weights"].values()) == pytest.approx(1.0)
    # The paper's setting at seed 0 is the reproduction's MTARD run: same numbers.
    reproduced = json.loads((results / "eval" / "small_cnn__mtard__seed0.json").read_text())
    paper = rows["anl-rw0.025-beta1"]
    assert paper["clean"] == reproduced["clean"]["accuracy"]
    assert paper["robust"] == reproduced["attacks"]["pgd_trades"]["robust"]
    # The same evaluation settings as the reproduction's, PGD_TRADES only.
    expected = Profile(tiny_profile()).evaluation.to_json()
    assert data["eval_settings"] == {**expected, "attack_overrides": {"pgd_trades": {"steps": 1}}}
    reference = data["reference"]["small_cnn"]
    assert set(reference) == {"baseline_mt", "mtard"}
    assert reference["baseline_mt"]["final_weights"]["adv"]["mean"] == 0.5
    text = (out / "sensitivity.md").read_text()
    for label in ("MTARD, r_w 0.25, β 2", "Baseline+MT, w_adv 0.7", "MTARD, FAMO"):
        assert f"| {label} |" in text
    assert "The reproduction: mean ± std over its seeds (0)" in text
    assert "| MTARD | " in text and "| Baseline+MT | " in text
    assert "adv 0.7, nat 0.3" in text and "Best of *Other balancers" in text
    assert (out / "figures" / "sensitivity_small_cnn.png").stat().st_size > 10_000
    assert data["figures"] == ["figures/sensitivity_small_cnn.png"]


def _forbidden(*args, **kwargs):
    raise AssertionError("a completed setting ran again")


def test_resume_skips_complete_settings(study, tmp_path, monkeypatch):
    results, out = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with pytest.raises(ValueError, match="already holds a sensitivity study"):
        sens.sensitivity(results, copy, grid="all", only=SUBSET, plots=False, progress=False)
    # An interrupted study: one evaluation missing.
    (copy / "eval" / "small_cnn__famo__seed0.json").unlink()
    monkeypatch.setattr(tasks, "train", _forbidden)
    again = sens.sensitivity(
        results, copy, grid="all", only=SUBSET, resume=True, plots=False, progress=False
    )
    statuses = {row["stage"]: row["status"] for row in again["stages"]}
    assert statuses.pop("evaluate/small_cnn__famo__seed0") == "ran"
    assert set(statuses.values()) == {"skipped (complete)"}
    before = json.loads((out / "sensitivity.json").read_text())["settings"]
    for a, b in zip(before, again["settings"], strict=True):
        assert (a["clean"], a["robust"]) == (b["clean"], b["robust"])
    # A changed profile is refused rather than mixed in.
    monkeypatch.setattr(tasks, "evaluate", _forbidden)
    (copy / "runs" / "small_cnn" / "famo" / "seed0" / "final.pt").unlink()
    config = json.loads(
        (copy / "runs" / "small_cnn" / "famo" / "seed0" / "config.json").read_text()
    )
    config["lr"] = 0.05
    (copy / "runs" / "small_cnn" / "famo" / "seed0" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="another configuration"):
        sens.sensitivity(
            results, copy, grid="all", only=["famo"], resume=True, plots=False, progress=False
        )


def test_a_diverged_setting_is_reported_not_fatal(study, tmp_path, monkeypatch):
    results, _ = study
    profile = Profile(tiny_profile())
    paths = {role: str(profile.teacher(role, results).checkpoint) for role in ("clean", "adv")}
    (setting,) = [s for s in sens.grid_settings(profile, "balancers") if s.name == "uncertainty"]
    config = setting.config(profile, "small_cnn", 0, paths)
    run_dir = tmp_path / "run"

    def nan_loss(config, run_dir, resume, data, progress):
        run_dir.mkdir(parents=True)
        config.save(run_dir / "config.json")
        raise NonFiniteLossError("Non-finite training loss at epoch 1, step 3")

    monkeypatch.setattr(sens, "train_task", nan_loss)
    result, status = sens.train_setting_task(config, run_dir, False, None, False)
    assert status == "diverged" and "step 3" in result["diverged"]
    assert "step 3" in (run_dir / sens.DIVERGED).read_text()
    # A resumed study does not retry it, and there is nothing to evaluate.
    monkeypatch.setattr(sens, "train_task", _forbidden)
    assert sens.train_setting_task(config, run_dir, True, None, False)[1] == "skipped (diverged)"
    evaluated = sens.eval_setting_task(None, run_dir, tmp_path, None, None, None, False)
    assert evaluated[1] == "skipped (diverged)"
    row = {
        "name": "uncertainty", "label": "MTARD, UW", "group": "balancer", "student": "s",
        "status": "diverged", "wall_s": {"train": 1.0, "evaluate": None}, "train_time_s": 1.0,
    }  # fmt: skip
    assert "| MTARD, UW | diverged (NaN loss) | | | | 1.0 |" in sensitivity_table([row], {}, "s")


def test_errors(study, tmp_path):
    results, _ = study
    with pytest.raises(ValueError, match="results_dir"):
        sens.sensitivity(tmp_path, progress=False)
    with pytest.raises(ValueError, match="Parameter `only`"):
        sens.sensitivity(results, tmp_path / "x", only=["famo"], progress=False)  # grid anl
    shutil.copytree(results, tmp_path / "r", ignore=shutil.ignore_patterns("teachers"))
    with pytest.raises(FileNotFoundError, match="finish the reproduction first"):
        sens.sensitivity(tmp_path / "r", progress=False)
