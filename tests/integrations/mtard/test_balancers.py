"""MTARD with every weighting rule as its balancer (issue #19): the configuration, what the
training loop does for each rule (a rate that decays, parameters in the optimiser, FAMO's
second call), exact resume, and Baseline+MT's constant weights as a hyperparameter."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re

import pytest
import torch

from anl import FAMO, IMTLL, AdaptiveLossBalancer, ConstantWeights, UncertaintyWeighting
from anl.integrations.mtard.cli import train as train_cli
from anl.integrations.mtard.data.registry import DATASETS, ImageData
from anl.integrations.mtard.methods.balancers import BALANCER_NAMES, BALANCERS
from anl.integrations.mtard.methods.context import MethodContext
from anl.integrations.mtard.methods.registry import METHODS, build_weighting
from anl.integrations.mtard.models import build_model
from anl.integrations.mtard.models.checkpoint import save_model_checkpoint
from anl.integrations.mtard.pipeline.profile import Profile
from anl.integrations.mtard.runtime.files import safe_load
from anl.integrations.mtard.training.config import TrainConfig, config_differences
from anl.integrations.mtard.training.trainer import train

INFO = DATASETS["fashion_mnist"]
STEPS = 4  # 160 images - 32 validation = 4 batches of 32 per epoch
PLACEHOLDER = {"clean": "clean.pt", "adv": "adv.pt"}


def tiny_data(n: int = 160) -> ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return ImageData(images, torch.randint(0, 10, (n,), generator=g), INFO)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    paths = []
    for i, role in enumerate(("clean", "adv")):
        torch.manual_seed(100 + i)
        model = build_model("small_cnn", num_classes=10, in_channels=1)
        save_model_checkpoint(
            root / f"{role}.pt", model, arch="small_cnn", num_classes=10, in_channels=1
        )
        paths.append(str(root / f"{role}.pt"))
    return tuple(paths)


def config(teachers, **overrides) -> TrainConfig:
    values = dict(
        method="mtard",
        dataset="fashion_mnist",
        student="small_cnn",
        epochs=2,
        clean_teacher=teachers[0],
        adv_teacher=teachers[1],
        batch_size=32,
        val_size=32,
        val_attack_steps=1,
        attack_steps=1,
        milestones=(0.5,),
        log_every=3,
        device="cpu",
        tensorboard=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def weights_of(run_dir) -> list[list[float]]:
    with open(run_dir / "logs" / "steps.csv", newline="") as f:
        return [[float(r["w_adv"]), float(r["w_nat"])] for r in csv.DictReader(f)]


# --- configuration ---------------------------------------------------------------------------


def test_balancers_are_every_rule_and_constant():
    assert BALANCER_NAMES[0] == "anl"
    assert set(BALANCER_NAMES) == {
        "anl", "constant", "dwa", "rlw", "gls", "softadapt", "relobralo", "uncertainty",
        "imtl", "famo",
    }  # fmt: skip
    for name in BALANCER_NAMES:
        weighting = build_weighting("mtard", balancer=name)
        assert isinstance(weighting, BALANCERS[name].rule)
        assert weighting.names == ("adv", "nat")
    # MTARD with constant weights is Baseline+MT (1/N each); ANL and FAMO take the rate.
    assert build_weighting("mtard", balancer="constant").weights.tolist() == [0.5, 0.5]
    assert build_weighting("mtard", balancer="famo", weight_lr=0.01).weight_lr == 0.01
    anl = build_weighting("mtard", weight_lr=0.1, beta=2.0)
    assert isinstance(anl, AdaptiveLossBalancer) and anl.defaults["beta"] == 2.0
    famo = build_weighting("mtard", balancer="famo", balancer_kwargs={"gamma": 0.01})
    assert famo.gamma == 0.01


def test_baseline_mt_weights_are_a_hyperparameter():
    assert build_weighting("baseline_mt").weights.tolist() == [0.5, 0.5]
    weighting = build_weighting("baseline_mt", hyper={"w_adv": 0.3})
    assert isinstance(weighting, ConstantWeights)
    assert weighting.weights.tolist() == pytest.approx([0.3, 0.7])
    with pytest.raises(ValueError, match=re.escape("hyper['w_adv']")):
        build_weighting("baseline_mt", hyper={"w_adv": 1.5})
    with pytest.raises(ValueError, match=re.escape("['w_adv']")):
        build_weighting("mtard", hyper={"w_adv": 0.3})  # MTARD's weights are its balancer's


def test_config_checks_the_balancer(teachers):
    cfg = config(teachers, balancer="uncertainty", balancer_kwargs={"likelihoods": "gaussian"})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cases = {
        "Parameter `balancer` should be one of": dict(balancer="madry"),
        "whose weights are constant": dict(method="sat", balancer="famo"),
        "Parameter `balancer_kwargs['weight_lr']` should be left out": dict(
            balancer="famo", balancer_kwargs={"weight_lr": 0.1}
        ),
        "Parameter `balancer_kwargs['beta']` should be left out": dict(
            balancer_kwargs={"beta": 2.0}
        ),
        "arguments of DynamicWeightAverage": dict(balancer="dwa", balancer_kwargs={"bogus": 1}),
        "arguments of SoftAdapt": dict(balancer="softadapt", balancer_kwargs={"variant": "x"}),
        "Parameter `balancer_kwargs` should be a dict": dict(balancer_kwargs=[]),
    }
    for message, override in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            config(teachers, **override)
    # SoftAdapt's beta is its own hyperparameter, not ANL's field.
    config(teachers, balancer="softadapt", balancer_kwargs={"beta": 0.5})
    # A configuration saved before the balancer existed reads back as ANL, resumable.
    old = {k: v for k, v in config(teachers).to_dict().items() if not k.startswith("balancer")}
    assert config_differences(TrainConfig.from_dict(old), config(teachers)) == []


def test_a_profile_chooses_mtard_s_balancer():
    document = Profile.load("smoke").to_dict()
    document["train"].update(balancer="famo", balancer_kwargs={"gamma": 0.01})
    profile = Profile(document)  # the shared entry applies to MTARD only
    for method in profile.methods:
        cfg = profile.student_config("small_cnn", method, 0, teacher_paths=PLACEHOLDER)
        expected = ("famo", {"gamma": 0.01}) if method == "mtard" else ("anl", {})
        assert (cfg.balancer, cfg.balancer_kwargs) == expected, method
    assert profile.teacher_config("adv").balancer == "anl"
    document["method_train"] = {"mtard": {"balancer": "dwa", "balancer_kwargs": {}}}
    cfg = Profile(document).student_config("small_cnn", "mtard", 0, teacher_paths=PLACEHOLDER)
    assert (cfg.balancer, cfg.balancer_kwargs) == ("dwa", {})  # method_train wins, field by field
    document["method_train"] = {"sat": {"balancer": "dwa"}}
    with pytest.raises(ValueError, match="only MTARD takes a balancer"):
        Profile(document)


def test_train_command_takes_balancer_flags():
    parser = argparse.ArgumentParser()
    train_cli.add_train_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["train", "--out", "x", "--balancer", "famo", "--balancer-kwargs", '{"gamma": 0.01}']
    )
    assert args.cfg_balancer == "famo" and args.cfg_balancer_kwargs == {"gamma": 0.01}


# --- the training loop -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(teachers, tmp_path_factory):
    """Two epochs of MTARD with each balancer (milestone after the first)."""
    root = tmp_path_factory.mktemp("balancers")
    updates = {"calls": 0}
    original = FAMO.update

    def counting(self, losses):
        updates["calls"] += 1
        return original(self, losses)

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FAMO, "update", counting)
        for name in BALANCER_NAMES:
            before = updates["calls"]
            result = train(
                config(teachers, balancer=name), root / name, progress=False, train_data=tiny_data()
            )
            out[name] = (root / name, result, updates["calls"] - before)
    return out


@pytest.mark.parametrize("name", BALANCER_NAMES)
def test_each_balancer_trains_mtard(runs, name):
    run_dir, result, updates = runs[name]
    assert result["finished"] and result["num_steps"] == 2 * STEPS
    weights = weights_of(run_dir)
    assert len(weights) == 2 * STEPS and all(math.isfinite(w) for row in weights for w in row)
    moved = any(row != weights[0] for row in weights)
    assert moved == (name != "constant"), weights
    if name == "constant":
        assert weights[0] == [0.5, 0.5]
    if BALANCERS[name].total == "1":
        assert all(sum(row) == pytest.approx(1.0) for row in weights)
    # FAMO's update runs once per optimiser step; no other rule has one.
    assert updates == (2 * STEPS if name == "famo" else 0)
    last = safe_load(run_dir / "checkpoints" / "last.pt")
    if name == "famo":
        assert int(last["weighting"]["state"]["num_updates"]) == 2 * STEPS


@pytest.mark.parametrize("name", BALANCER_NAMES)
def test_the_rate_decays_at_the_milestones_when_the_rule_has_one(runs, name):
    run_dir, _, _ = runs[name]
    with open(run_dir / "logs" / "epochs.csv", newline="") as f:
        rates = [float(r["weight_lr"]) for r in csv.DictReader(f)]
    last = safe_load(run_dir / "checkpoints" / "last.pt")
    if BALANCERS[name].rate:  # ANL's r_w, FAMO's step size: x 0.1 after epoch 1
        assert rates == pytest.approx([0.025, 0.0025])
        assert last["weight_lr"] == pytest.approx(0.0025)
        assert last["weighting"]["hyperparameters"]["weight_lr"] == pytest.approx(0.0025)
    else:
        assert all(math.isnan(r) for r in rates) and last["weight_lr"] is None


@pytest.mark.parametrize("name", ["uncertainty", "imtl"])
def test_learned_weights_are_trained_by_the_optimiser(runs, name):
    run_dir, _, _ = runs[name]
    last = safe_load(run_dir / "checkpoints" / "last.pt")
    groups = last["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["lr"] == groups[0]["lr"] == pytest.approx(0.01)  # decayed with the lr
    parameter = "log_vars" if name == "uncertainty" else "log_scales"
    values = last["weighting"]["state"][parameter]
    assert values.shape == (2,) and bool((values != 0).all())  # trained from 0
    # The parameter's momentum is in the optimiser's state (resume restores it).
    (index,) = groups[1]["params"]
    assert last["optimizer"]["state"][index]["momentum_buffer"].shape == (2,)
    # The log holds the weights each step applied: e^(-+s) before that step's update of s.
    assert weights_of(run_dir)[-1] == last["weighting"]["state"]["weights"].tolist()


def test_uncertainty_and_imtl_give_the_same_run_under_sgd(runs):
    """Up to s -> -s, IMTL-L is uncertainty weighting's "plain" form (docs/methods.md)."""
    a = safe_load(runs["uncertainty"][0] / "final.pt")["state_dict"]
    b = safe_load(runs["imtl"][0] / "final.pt")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_replay_recomputes_the_losses_and_leaves_batchnorm_alone():
    torch.manual_seed(0)
    student, clean, adv = (build_model("small_cnn", num_classes=10, in_channels=1) for _ in "abc")
    ctx = MethodContext(
        student=student, clean_teacher=clean.eval(), adv_teacher=adv.eval(), eps=0.1,
        step_size=0.025, attack_steps=1, num_classes=10,
    )  # fmt: skip
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    losses = METHODS["mtard"].loss_fn(ctx, x, y)
    buffers = {
        k: v.clone() for k, v in student.state_dict().items() if "running" in k or "num_b" in k
    }
    assert buffers  # the student has BatchNorm
    with torch.no_grad():
        replayed = ctx.replay()
    assert {k: v.item() for k, v in replayed.items()} == {k: v.item() for k, v in losses.items()}
    after = student.state_dict()
    assert all(torch.equal(after[k], v) for k, v in buffers.items())
    assert all(m.track_running_stats for m in student.modules() if hasattr(m, "running_mean"))
    # After a change of the student, the replay follows it.
    with torch.no_grad():
        next(student.parameters()).add_(0.1)
        assert ctx.replay()["adv"].item() != losses["adv"].item()


@pytest.mark.parametrize("name", ["uncertainty", "famo"])
def test_resume_is_bit_identical_with_a_stateful_rule(runs, teachers, tmp_path, name):
    full_dir = runs[name][0]
    cfg = config(teachers, balancer=name)
    part = train(cfg, tmp_path / "r", progress=False, stop_after_epochs=1, train_data=tiny_data())
    assert not part["finished"]
    train(cfg, tmp_path / "r", resume=True, progress=False, train_data=tiny_data())
    a = safe_load(full_dir / "checkpoints" / "last.pt")
    b = safe_load(tmp_path / "r" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key, value in a["weighting"]["state"].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["weighting"]["state"][key]))
    assert a["weighting"]["hyperparameters"] == b["weighting"]["hyperparameters"]
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    steps = (full_dir / "logs" / "steps.csv").read_text()
    assert steps == (tmp_path / "r" / "logs" / "steps.csv").read_text()


def test_rule_classes_as_documented():
    """The loop's questions are answered by the rule, not its name."""
    assert isinstance(build_weighting("mtard", balancer="uncertainty"), UncertaintyWeighting)
    assert isinstance(build_weighting("mtard", balancer="imtl"), IMTLL)
    assert [n for n, s in BALANCERS.items() if s.rate] == ["anl", "famo"]
