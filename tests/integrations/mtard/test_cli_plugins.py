"""The user's own models, teachers and datasets: by import path on the command line, and by
:func:`~anl.integrations.mtard.models.register_model` /
:func:`~anl.integrations.mtard.data.registry.register_dataset` in Python (issue #18)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from anl.integrations.mtard import cli
from anl.integrations.mtard.checks import ArgumentError
from anl.integrations.mtard.data.registry import (
    DATASETS,
    DatasetInfo,
    dataset_title,
    register_dataset,
)
from anl.integrations.mtard.models import MODELS, build_model, model_names, register_model
from anl.integrations.mtard.models.checkpoint import load_model
from anl.integrations.mtard.runtime.plugins import Registry, import_object, is_import_path
from anl.integrations.mtard.training.config import TrainConfig
from anl.integrations.mtard.training.trainer import train

MODULE = "anl_user_plugins"  # the user's module, written in a temporary folder
SOURCE = '''
import torch
from torch import nn

from anl.integrations.mtard.data.registry import DatasetInfo


def tiny_net(num_classes=10, in_channels=1, width=4):
    """A user architecture: a factory f(num_classes, in_channels, **kwargs)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def load(root, split, *, download, progress):
    """Random 12x12 grey images in three classes."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 96 if split == "train" else 16
    images = torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 3, (n,), generator=g)


def toy():
    """A user dataset: a function returning its DatasetInfo (with `load`)."""
    return DatasetInfo("toy", "Toy", 3, 1, 12, (0.5,), (0.25,), 0.1, load)


TOY = toy()
NOT_A_FACTORY = 3
'''
QUICK = ["--epochs", "1", "--val-size", "32", "--batch-size", "32", "--attack-steps", "1",
         "--val-attack-steps", "1", "--device", "cpu", "--no-tensorboard",
         "--no-progress"]  # fmt: skip


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory holds the user's module (the command finds it there)."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    sys.modules.pop(MODULE, None)
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop(MODULE, None)


def test_a_user_model_dataset_and_teacher_by_import_path(workdir, capsys):
    """train (a user student, a user teacher, a user dataset) -> evaluate -> plot, all by
    import path, the evaluation in a fresh process."""
    student, data = f"{MODULE}:tiny_net", f"{MODULE}:toy"
    teacher = workdir / "teacher.pt"
    sys.path.append(str(workdir))
    torch.save(import_object(student)(num_classes=3, in_channels=1).state_dict(), teacher)
    argv = ["train", "--method", "ard", "--dataset", data, "--student", student,
            "--student-kwargs", '{"width": 6}', "--adv-teacher", str(teacher),
            "--adv-teacher-arch", student, "--out", "run", *QUICK]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    saved = json.loads((workdir / "run" / "config.json").read_text())
    assert saved["student"] == student and saved["dataset"] == data
    model = load_model(workdir / "run" / "final.pt")
    assert model(torch.rand(2, 1, 12, 12)).shape == (2, 3)

    capsys.readouterr()
    command = [sys.executable, "-m", "anl.integrations.mtard", "evaluate"]
    evaluate = subprocess.run(
        [*command, "run/checkpoints/best.pt", "--attacks", "fgsm", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
        check=False,
    )
    assert evaluate.returncode == 0, evaluate.stderr
    assert "| FGSM | ard |" in evaluate.stdout
    result = workdir / "run" / "checkpoints" / f"eval_best_{MODULE}.toy.json"  # no ':'
    assert json.loads(result.read_text())["n_examples"] == 16

    pytest.importorskip("matplotlib")
    assert cli.main(["plot", "run"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed and all(Path(p).is_file() for p in printed)
    assert (workdir / "run" / "plots" / "accuracy.png").is_file()


def test_import_path_mistakes_are_usage_errors(workdir, capsys):
    for name, fragment in {
        f"{MODULE}:nothing": "AttributeError",
        f"{MODULE}:NOT_A_FACTORY": "names a `int` object, not a model factory",
        "no_such_module_abc:net": "ModuleNotFoundError",
    }.items():
        argv = ["train", "--method", "sat", "--dataset", f"{MODULE}:TOY", "--student", name,
                "--out", "run", *QUICK]  # fmt: skip
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "student" in err and fragment in err, err
    argv = ["train", "--method", "sat", "--dataset", f"{MODULE}:tiny_net", "--student",
            "small_cnn", "--out", "run", *QUICK]  # fmt: skip
    assert cli.main(argv) == 2
    assert "DatasetInfo" in capsys.readouterr().err
    assert not (workdir / "run").exists()


def test_register_model_and_dataset_train_in_python(tmp_path):
    """The registration functions: a short name for a user architecture and dataset."""
    sys.modules.pop(MODULE, None)
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    sys.path.insert(0, str(tmp_path))
    try:
        user = importlib.import_module(MODULE)
        register_model("tiny_net", user.tiny_net)
        register_dataset(DatasetInfo("toy3", "Toy", 3, 1, 12, (0.5,), (0.25,), 0.1, user.load))
        assert "tiny_net" in model_names() and "toy3" in DATASETS
        config = TrainConfig(
            method="sat", dataset="toy3", student="tiny_net", epochs=1, val_size=32,
            batch_size=32, attack_steps=1, val_attack_steps=1, device="cpu", tensorboard=False,
        )  # fmt: skip
        metrics = train(config, tmp_path / "run", progress=False)
        assert metrics["finished"] and load_model(tmp_path / "run" / "final.pt").training is False
        with pytest.raises(ValueError, match="replace=True"):
            register_model("tiny_net", user.tiny_net)
        register_model("tiny_net", user.tiny_net, replace=True)
        with pytest.raises(ValueError, match="without ':'"):
            register_model("a:b", user.tiny_net)
        with pytest.raises(ValueError, match="callable"):
            register_model("three", 3)
        with pytest.raises(ValueError, match="load"):
            register_dataset(DatasetInfo("x", "X", 3, 1, 12, (0.5,), (0.25,), 0.1))
    finally:
        MODELS.pop("tiny_net", None)
        DATASETS.pop("toy3", None)
        sys.path.remove(str(tmp_path))
        sys.modules.pop(MODULE, None)
    assert "tiny_net" not in model_names() and "toy3" not in DATASETS


def test_the_registries_resolve_import_paths():
    assert is_import_path("a.b:c.d") and not is_import_path("a.b") and not is_import_path(3)
    assert not is_import_path("a:b:c") and not is_import_path("1a:b")
    path = "anl.integrations.mtard.models.small:small_cnn"
    assert path in MODELS and MODELS[path] is import_object(path)
    assert path not in model_names()  # listed: the registered names only
    assert build_model(path, num_classes=4)(torch.rand(1, 1, 28, 28)).shape == (1, 4)
    assert [] not in MODELS and None not in MODELS and "math:nothing" not in MODELS
    with pytest.raises(KeyError):
        MODELS["bogus"]
    with pytest.raises(ArgumentError, match=r"`student`.*does not import"):
        MODELS.resolve("math:nothing", parameter="student")
    assert DATASETS.get("bogus") is None and dataset_title("bogus") == "bogus"
    assert dataset_title("fashion_mnist") == "Fashion-MNIST"
    table = Registry("thing", {"one": 1}, adapt=lambda path, obj: obj)
    assert table.get("math:pi") == pytest.approx(3.14159, abs=1e-5) and sorted(table) == ["one"]
