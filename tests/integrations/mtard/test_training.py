"""Tests of ``training``: resume, schedule, logs, checkpoint selection, errors, ``anl-mtard train``."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import re
import sys

import pytest
import torch
from torch import nn

from anl.integrations.mtard import cli
from anl.integrations.mtard.cli import train as train_cli
from anl.integrations.mtard.data.loader import BatchLoader
from anl.integrations.mtard.data.registry import DATASETS, ImageData
from anl.integrations.mtard.evaluation.validation import validate
from anl.integrations.mtard.methods.registry import METHODS
from anl.integrations.mtard.models import build_model
from anl.integrations.mtard.models.checkpoint import load_model, save_model_checkpoint
from anl.integrations.mtard.models.folding import fold_batchnorm
from anl.integrations.mtard.models.teachers import load_teacher_model, prepare_teacher
from anl.integrations.mtard.runtime.execution import resolve_memory_format
from anl.integrations.mtard.runtime.files import safe_load
from anl.integrations.mtard.training import run_data, trainer
from anl.integrations.mtard.training.config import TrainConfig, config_differences, milestone_epochs
from anl.integrations.mtard.training.run_data import split_run_data
from anl.integrations.mtard.training.trainer import NonFiniteLossError, train

INFO = DATASETS["fashion_mnist"]
STEPS_PER_EPOCH = 4  # 160 images - 32 validation = 128 = 4 batches of 32


def tiny_data(n: int = 160, seed: int = 0) -> ImageData:
    """Random Fashion-MNIST-shaped data whose label is the brightest image quadrant + noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, INFO.num_classes, (n,), generator=g)
    return ImageData(images, labels, INFO)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    paths = []
    for i, name in enumerate(("clean", "adv")):
        torch.manual_seed(100 + i)
        model = build_model("small_cnn", num_classes=10, in_channels=1)
        path = root / f"{name}.pt"
        save_model_checkpoint(path, model, arch="small_cnn", num_classes=10, in_channels=1)
        paths.append(str(path))
    return tuple(paths)


def make_config(teachers, **overrides) -> TrainConfig:
    values = dict(
        method="mtard",
        dataset="fashion_mnist",
        student="small_cnn",
        epochs=3,
        clean_teacher=teachers[0],
        adv_teacher=teachers[1],
        batch_size=32,
        val_size=32,
        val_attack_steps=2,
        attack_steps=1,
        milestones=(1 / 3, 2 / 3),
        log_every=3,  # not a divisor of the 4 steps of an epoch: partial flushes too
        device="cpu",
        tensorboard=False,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full_run(teachers, tmp_path_factory):
    """One uninterrupted 3-epoch MTARD run; the balancer object is captured for inspection."""
    captured = []
    original = trainer.build_weighting

    def capture(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    run_dir = tmp_path_factory.mktemp("full") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "build_weighting", capture)
        result = train(make_config(teachers), run_dir, progress=False, train_data=tiny_data())
    return run_dir, result, captured[0]


def test_resume_is_bit_identical(full_run, teachers, tmp_path):
    run_dir, _, _ = full_run
    config = make_config(teachers)
    resumed_dir = tmp_path / "resumed"
    partial = train(
        config, resumed_dir, progress=False, stop_after_epochs=1, train_data=tiny_data()
    )
    assert partial["finished"] is False and partial["epochs_completed"] == 1
    assert not (resumed_dir / "final.pt").exists()
    assert safe_load(resumed_dir / "checkpoints" / "last.pt")["epoch"] == 1

    result = train(config, resumed_dir, resume=True, progress=False, train_data=tiny_data())
    assert result["finished"] is True and result["epochs_completed"] == 3

    a = safe_load(run_dir / "checkpoints" / "last.pt")
    b = safe_load(resumed_dir / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["weighting"]["state"].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["weighting"]["state"][key]))
    assert a["weighting"]["hyperparameters"] == b["weighting"]["hyperparameters"]
    for pa, pb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    final_a = safe_load(run_dir / "final.pt")["state_dict"]
    final_b = safe_load(resumed_dir / "final.pt")["state_dict"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    # The logs of the resumed run are those of the uninterrupted one, row for row.
    steps_a = (run_dir / "logs" / "steps.csv").read_text()
    assert steps_a == (resumed_dir / "logs" / "steps.csv").read_text()
    rows_a = read_rows(run_dir / "logs" / "epochs.csv")
    rows_b = read_rows(resumed_dir / "logs" / "epochs.csv")
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in rows_a] == [
        {k: v for k, v in r.items() if k != "time_s"} for r in rows_b
    ]


def test_resume_drops_log_rows_of_an_interrupted_epoch(teachers, tmp_path):
    config = make_config(teachers, epochs=2)
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False, stop_after_epochs=1, train_data=tiny_data())
    with open(run_dir / "logs" / "steps.csv", "a") as f:  # a kill in the middle of epoch 2
        f.write("2,5,0.01," + ",".join(["1.0"] * 7) + "\n")
    train(None, run_dir, resume=True, progress=False, train_data=tiny_data())
    steps = [int(r["step"]) for r in read_rows(run_dir / "logs" / "steps.csv")]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))


def test_run_directory_guards(full_run, teachers, tmp_path):
    run_dir, _, _ = full_run
    with pytest.raises(ValueError, match="already holds a run"):
        train(make_config(teachers), run_dir, progress=False, train_data=tiny_data())
    with pytest.raises(ValueError, match=re.escape("lr: 0.1 (saved) vs 0.2")):
        train(
            make_config(teachers, lr=0.2),
            run_dir,
            resume=True,
            progress=False,
            train_data=tiny_data(),
        )


def test_milestones_scale_lr_and_weight_lr(full_run):
    assert milestone_epochs(
        TrainConfig(method="sat", dataset="cifar10", student="small_cnn", epochs=300)
    ) == [215, 260, 285]
    assert milestone_epochs(
        TrainConfig(method="sat", dataset="cifar10", student="small_cnn", epochs=30)
    ) == [22, 26, 28]
    run_dir, _, _ = full_run
    rows = read_rows(run_dir / "logs" / "epochs.csv")
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.01, 0.001], rel=1e-12)
    assert [float(r["weight_lr"]) for r in rows] == pytest.approx(
        [0.025, 0.0025, 0.00025], rel=1e-12
    )
    step_lrs = {
        (int(r["epoch"]), float(r["lr"])) for r in read_rows(run_dir / "logs" / "steps.csv")
    }
    assert sorted(step_lrs) == [(1, 0.1), (2, pytest.approx(0.01)), (3, pytest.approx(0.001))]


def test_step_log_has_one_row_per_step_and_matches_balancer_history(full_run):
    run_dir, result, balancer = full_run
    rows = read_rows(run_dir / "logs" / "steps.csv")
    n = 3 * STEPS_PER_EPOCH
    assert list(rows[0]) == [
        "epoch", "step", "lr", "loss_adv", "loss_nat", "total",
        "w_adv", "w_nat", "rel_adv", "rel_nat",
    ]  # fmt: skip
    assert [int(r["step"]) for r in rows] == list(range(1, n + 1))
    assert [int(r["epoch"]) for r in rows] == [e for e in (1, 2, 3) for _ in range(4)]
    history = balancer.history()
    assert history["weights"].shape == (n, 2)
    logged_w = torch.tensor(
        [[float(r["w_adv"]), float(r["w_nat"])] for r in rows], dtype=torch.float64
    )
    logged_rel = torch.tensor(
        [[float(r["rel_adv"]), float(r["rel_nat"])] for r in rows], dtype=torch.float64
    )
    logged_loss = torch.tensor(
        [[float(r["loss_adv"]), float(r["loss_nat"])] for r in rows], dtype=torch.float64
    )
    assert torch.equal(logged_w, torch.from_numpy(history["weights"]))
    assert torch.equal(logged_rel, torch.from_numpy(history["relative_losses"]))
    assert torch.equal(logged_loss, torch.from_numpy(history["losses"]))
    # ANL moved the weights (they start at 0.5/0.5) and kept them on the simplex.
    assert not torch.all(logged_w == 0.5)
    assert torch.allclose(logged_w.sum(dim=1), torch.ones(n, dtype=torch.float64))
    # The total is the weighted sum of the losses, as logged (float32 losses).
    total = torch.tensor([float(r["total"]) for r in rows], dtype=torch.float64)
    assert torch.allclose(total, (logged_w * logged_loss).sum(dim=1), rtol=1e-5)
    # The epoch rows hold the means of the step rows.
    epoch_rows = read_rows(run_dir / "logs" / "epochs.csv")
    assert float(epoch_rows[0]["total"]) == pytest.approx(total[:4].mean().item(), rel=1e-12)
    assert result["num_steps"] == n
    assert json.loads((run_dir / "metrics.json").read_text()) == result


def test_best_checkpoint_has_the_best_validation_wrobust(full_run, teachers):
    run_dir, result, _ = full_run
    rows = read_rows(run_dir / "logs" / "epochs.csv")
    wrobust = [float(r["val_wrobust"]) for r in rows]
    for r in rows:  # W-Robust = (clean + robust) / 2 (paper Eq. 12)
        expected = 0.5 * float(r["val_clean"]) + 0.5 * float(r["val_robust"])
        assert float(r["val_wrobust"]) == pytest.approx(expected)
    best_epoch = wrobust.index(max(wrobust)) + 1
    best = safe_load(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == best_epoch == result["best"]["epoch"]
    assert best["val_wrobust"] == max(wrobust)
    # The saved weights are that epoch's: re-validating them gives the logged numbers.
    model = load_model(run_dir / "checkpoints" / "best.pt")
    _, val_set = split_run_data(make_config(teachers), tiny_data())
    val = validate(model, BatchLoader(val_set, 7), eps=INFO.default_eps, steps=2, attack="pgd_sat")
    assert val["n"] == 32
    assert val["clean"] == pytest.approx(float(rows[best_epoch - 1]["val_clean"]))
    assert val["robust"] == pytest.approx(float(rows[best_epoch - 1]["val_robust"]))


def test_validation_is_independent_of_batching():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1).eval()
    val_set = tiny_data(40, seed=3)
    a = validate(model, BatchLoader(val_set, 40), eps=0.1, steps=2)
    b = validate(model, BatchLoader(val_set, 6), eps=0.1, steps=2)
    assert a == b and a["n"] == 40
    with pytest.raises(ValueError, match="attack"):
        validate(model, BatchLoader(val_set, 6), eps=0.1, steps=2, attack="pgd_x")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(teachers, tmp_path, monkeypatch):
    spec = METHODS["mtard"]
    calls = []

    def poisoned(ctx, x, y):
        losses = spec.loss_fn(ctx, x, y)
        calls.append(1)
        if len(calls) == STEPS_PER_EPOCH + 2:  # step 6 = the 2nd step of epoch 2
            losses["nat"] = losses["nat"] * float("nan")
        return losses

    monkeypatch.setitem(METHODS, "mtard", dataclasses.replace(spec, loss_fn=poisoned))
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 6 .*nat=nan") as info:
        train(make_config(teachers, log_every=50), run_dir, progress=False, train_data=tiny_data())
    assert "last.pt" in str(info.value)
    last = safe_load(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["global_step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (run_dir / "final.pt").exists()
    assert len(read_rows(run_dir / "logs" / "epochs.csv")) == 1


def _with_bn_stats(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=g))
                m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model


class _Branchy(nn.Module):
    """conv->bn (foldable), conv->bn without affine (foldable), conv used twice (not foldable)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4, affine=False)
        self.c3, self.b3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        y = self.c3(x)
        x = self.b3(y) + y  # c3's output has two users: b3 must stay
        return self.fc(x.mean(dim=(2, 3)))


def test_prepare_teacher_freezes_and_folds_batchnorm_exactly():
    torch.manual_seed(0)
    model = _with_bn_stats(_Branchy()).eval()
    x = torch.rand(5, 1, 12, 12)
    expected = model(x)
    teacher = prepare_teacher(model, device="cpu", example_input=torch.rand(2, 1, 12, 12))
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert isinstance(teacher.b1, nn.Identity) and isinstance(teacher.b2, nn.Identity)
    assert isinstance(teacher.b3, nn.BatchNorm2d)  # c3's output has two users
    assert torch.allclose(teacher(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(_Branchy().train(), x)
    plain = prepare_teacher(_with_bn_stats(_Branchy()), fold_bn=False, example_input=x)
    assert [type(m) for m in plain.modules()].count(nn.BatchNorm2d) == 3
    assert [type(m) for m in prepare_teacher(_Branchy()).modules()].count(nn.BatchNorm2d) == 3


def test_teacher_loading_folds_the_project_models(teachers):
    x = torch.rand(4, 1, 28, 28)
    reference = load_model(teachers[0])
    _with_bn_stats(reference)
    expected = reference.eval()(x)
    folded = prepare_teacher(reference, example_input=x[:2])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), expected, atol=1e-5, rtol=0)
    loaded = load_teacher_model(
        teachers[0], arch=None, num_classes=10, in_channels=1, image_size=28
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
    assert torch.allclose(loaded(x), load_model(teachers[0])(x), atol=1e-5, rtol=0)


def test_config_round_trip_and_validation(teachers, tmp_path):
    config = make_config(teachers, eps=8 / 255, hyper={"kl_factor": 10.0})
    config.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == config
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()
    assert config.resolved_attack() == (8 / 255, 2 / 255, 1)
    assert make_config(teachers).resolved_augment() is None
    assert make_config(teachers, dataset="cifar10").resolved_augment() == "crop_flip"
    assert make_config(teachers, dataset="cifar10", augment="none").resolved_augment() is None
    cases = {
        "epochs": dict(epochs=0),
        "milestones": dict(milestones=(0.8, 0.5)),
        "clean_teacher": dict(clean_teacher=None),
        "method": dict(method="nope"),
        "lr": dict(lr=-1.0),
        "val_attack": dict(val_attack="fgsm"),
        "augment": dict(augment="rotate"),
        "hyper": dict(hyper={"temperature": 3.0}),
        "nesterov": dict(nesterov="yes"),
    }
    for name, override in cases.items():
        with pytest.raises(ValueError, match=name):
            make_config(teachers, **override)
    with pytest.raises(ValueError, match=re.escape("unknown keys ['bogus']")):
        TrainConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match=re.escape("required fields ['epochs']")):
        TrainConfig.from_dict({"method": "sat", "dataset": "cifar10", "student": "small_cnn"})


def test_train_subcommand_end_to_end(teachers, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_data, "load_dataset", lambda *a, **k: tiny_data())
    parser = argparse.ArgumentParser(prog="anl-mtard")
    train_cli.add_train_command(parser.add_subparsers(dest="command"))
    run_dir = tmp_path / "run"
    override = tmp_path / "override.json"
    override.write_text(json.dumps({"batch_size": 16, "val_attack_steps": 1, "lr": 0.05}))
    argv = [
        "train", "--method", "mtard", "--dataset", "fashion_mnist", "--student", "small_cnn",
        "--clean-teacher", teachers[0], "--adv-teacher", teachers[1], "--epochs", "2",
        "--out", str(run_dir), "--config", str(override), "--batch-size", "32",
        "--train-subset", "64", "--val-size", "32", "--attack-steps", "1", "--eps", "8/255",
        "--milestones", "0.5", "--device", "cpu", "--no-tensorboard", "--no-progress",
        "--hyper", '{"kl_factor": 2.0}', "--stop-after-epochs", "1",
    ]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["batch_size"] == 32 and saved["lr"] == 0.05 and saved["val_attack_steps"] == 1
    assert saved["eps"] == 8 / 255 and saved["milestones"] == [0.5]
    assert saved["hyper"] == {"kl_factor": 2.0} and saved["tensorboard"] is False
    assert len(read_rows(run_dir / "logs" / "steps.csv")) == 2  # 64 images / 32

    args = parser.parse_args(["train", "--out", str(run_dir), "--resume", "--no-progress"])
    assert args.func(args) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finished"] is True and metrics["epochs_completed"] == 2
    assert (run_dir / "final.pt").exists()
    assert load_model(run_dir / "final.pt")(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert math.isfinite(metrics["final"]["val_wrobust"])

    args = parser.parse_args(["train", "--out", str(tmp_path / "new"), "--epochs", "1"])
    assert cli.run_command(args) == 2  # missing --method/--dataset/--student: one line, exit 2
    assert "required fields ['method', 'dataset', 'student']" in capsys.readouterr().err


def test_speed_options_are_validated_and_keep_the_result(teachers, tmp_path):
    """``memory_format``, ``fold_attack_bn``, ``amp`` and ``compile`` (docs/benchmarks.md):
    checked like every field; the defaults (channels-last on CPU, BatchNorm folded in the
    attack) train the same student as the contiguous layout and the unfolded attack up to
    float rounding, and bf16 autocast runs end to end."""
    for name, override in {
        "memory_format": dict(memory_format="nhwc"),
        "amp": dict(amp=1),
        "compile": dict(compile="no"),
        "fold_attack_bn": dict(fold_attack_bn="yes"),
    }.items():
        with pytest.raises(ValueError, match=name):
            make_config(teachers, **override)
    assert resolve_memory_format("auto", "cpu") is torch.channels_last
    assert resolve_memory_format("auto", "cuda") is torch.contiguous_format
    assert resolve_memory_format("contiguous", "cpu") is torch.contiguous_format
    finals = {}
    for name, override in {
        "channels_last": dict(memory_format="channels_last"),
        "contiguous": dict(memory_format="contiguous"),
        "unfolded_attack": dict(fold_attack_bn=False),
        "amp": dict(amp=True),
    }.items():
        config = make_config(teachers, epochs=1, **override)
        result = train(config, tmp_path / name, progress=False, train_data=tiny_data())
        finals[name] = load_model(result["paths"]["final"]).state_dict()
    torch.manual_seed(0)  # the loop's initialisation (seed 0)
    initial = build_model("small_cnn", num_classes=10, in_channels=1).state_dict()
    for other in ("contiguous", "unfolded_attack"):
        for key, value in finals[other].items():
            torch.testing.assert_close(finals["channels_last"][key], value, rtol=1e-4, atol=1e-5)
    moved = [
        k
        for k, v in finals["amp"].items()
        if v.is_floating_point() and not torch.equal(v, initial[k])
    ]
    assert moved and all(torch.isfinite(v).all() for v in finals["amp"].values())


def test_tensorboard_asked_for_but_missing_is_said_in_one_warning(teachers, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    config = make_config(teachers, epochs=1, tensorboard=True)
    with pytest.warns(UserWarning, match=r'pip install "anl\[tensorboard\]"') as caught:
        result = train(config, tmp_path / "run", progress=False, train_data=tiny_data())
    assert len([w for w in caught if "tensorboard" in str(w.message).lower()]) == 1
    assert result["finished"] and not (tmp_path / "run" / "logs" / "tensorboard").exists()


def test_resume_compares_all_but_the_fields_that_do_not_change_the_result(teachers):
    saved = make_config(teachers)
    moved = dataclasses.replace(saved, device="cpu:0", log_every=7, adv_teacher="elsewhere.pt")
    assert config_differences(saved, moved) == [
        f"adv_teacher: {saved.adv_teacher!r} (saved) vs 'elsewhere.pt' (given)"
    ]
    assert (
        config_differences(saved, moved, ignore=frozenset({"device", "log_every", "adv_teacher"}))
        == []
    )


def test_val_seed_fixes_one_validation_set_for_every_seed(teachers):
    data_ = tiny_data(200, seed=5)

    def val_labels(**overrides):
        _, val = split_run_data(make_config(teachers, **overrides), data_)
        return val.images.reshape(len(val.labels), -1).sum(1).tolist()

    assert val_labels(seed=1) != val_labels(seed=2)  # by default the split follows the seed
    assert val_labels(seed=1, val_seed=0) == val_labels(seed=2, val_seed=0) == val_labels(seed=0)
    # A smaller validation set with the same val_seed is a subset of the larger one, so a
    # student's validation images were never a teacher's training images.
    small = set(val_labels(seed=2, val_seed=0, val_size=16))
    assert small <= set(val_labels(seed=0, val_size=32))
