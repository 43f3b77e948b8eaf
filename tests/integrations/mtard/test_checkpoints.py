"""Tests of checkpoints.py: atomic saving, safe loading, our format, teacher formats."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from anl.integrations.mtard.models import build_model
from anl.integrations.mtard.models.checkpoint import (
    FORMAT,
    VERSION,
    load_model,
    load_teacher,
    robustbench_path,
    save_model_checkpoint,
)
from anl.integrations.mtard.models.normalization import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
)
from anl.integrations.mtard.models.state_dict import check_state_dict, strip_prefixes
from anl.integrations.mtard.runtime.files import atomic_save, safe_load


def trained(model: nn.Module, in_channels: int | None = None, size: int = 16) -> nn.Module:
    """Move the BatchNorm running statistics away from their initial values."""
    c = in_channels or model.in_channels
    model.train()
    with torch.no_grad():
        model(torch.rand(4, c, size, size))
    return model


def outputs(model: nn.Module, in_channels: int, size: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return model.eval()(torch.rand(2, in_channels, size, size, generator=gen))


def listing(path) -> list[str]:
    return sorted(os.listdir(path))


# --------------------------------------------------------------------------------------------
# atomic_save
# --------------------------------------------------------------------------------------------


def test_atomic_save_round_trip_creates_directories_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "ckpt.pt"
    atomic_save({"w": torch.arange(3)}, path)
    atomic_save({"w": torch.arange(5)}, path)  # overwrite
    assert torch.equal(safe_load(path)["w"], torch.arange(5))
    assert listing(path.parent) == ["ckpt.pt"]


def test_atomic_save_keeps_the_old_file_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"w": torch.ones(4)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"w": torch.zeros(4)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"w": torch.zeros(4)}, tmp_path / "new.pt")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(safe_load(path)["w"], torch.ones(4))
    assert listing(tmp_path) == ["ckpt.pt"]


def test_atomic_save_keeps_the_permissions_of_the_replaced_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": 1}, path)
    os.chmod(path, 0o640)
    atomic_save({"a": 2}, path)
    assert path.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "fresh.pt"
    atomic_save({"a": 1}, fresh)
    mask = os.umask(0o022)
    os.umask(mask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~mask  # not the temporary file's 0o600


# --------------------------------------------------------------------------------------------
# safe_load
# --------------------------------------------------------------------------------------------

CALLS: list[str] = []


def _record(arg: str) -> str:
    CALLS.append(arg)
    return arg


class Payload:
    """An object whose unpickling would run code (``_record``)."""

    def __reduce__(self):
        return (_record, ("code ran",))


def test_safe_load_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        safe_load(tmp_path / "nothing.pt")


@pytest.mark.parametrize("keep", [0, 10, 200, 0.5, -20])
def test_safe_load_rejects_truncated_files(tmp_path, keep):
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:n])
    with pytest.raises(ValueError, match=r"ckpt\.pt.*not a valid checkpoint"):
        safe_load(path)


@pytest.mark.parametrize(
    "content", [b"\x00\x01garbage" * 50, b"hello, this is text", pickle.dumps([1, 2], protocol=2)]
)
def test_safe_load_rejects_files_that_are_not_checkpoints(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a valid checkpoint"):
        safe_load(path)


def test_safe_load_refuses_objects_that_need_unsafe_unpickling(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state": Payload()}, path)
    CALLS.clear()
    with pytest.raises(ValueError, match=r"evil\.pt.*unsafe unpickling.*_record"):
        safe_load(path)
    assert CALLS == []  # the payload never ran
    numpy_path = tmp_path / "numpy.pt"
    torch.save({"a": np.zeros(3)}, numpy_path)
    with pytest.raises(ValueError, match="unsafe unpickling"):
        safe_load(numpy_path)


def test_safe_load_reads_plain_and_legacy_checkpoints(tmp_path):
    obj = {"w": torch.randn(3), "meta": {"epoch": 2, "names": ["a", "b"], "t": (1.0, None)}}
    torch.save(obj, tmp_path / "zip.pt")
    torch.save(obj, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("zip.pt", "legacy.pt"):
        loaded = safe_load(tmp_path / name)
        assert torch.equal(loaded["w"], obj["w"]) and loaded["meta"] == obj["meta"]


# --------------------------------------------------------------------------------------------
# Our model format
# --------------------------------------------------------------------------------------------

ROUND_TRIP = [
    ("small_cnn", {}),
    ("large_cnn", {}),
    ("small_cnn", {"channels": (8, 8), "hidden": 16}),
    ("resnet56", {"depth": 8}),
    ("mobilenetv2", {}),
    ("wrn34_10", {"depth": 10, "widen_factor": 1}),
    ("wrn22_6", {"depth": 10, "width": 1, "dataset": "cifar100"}),
    ("wrn70_16", {"depth": 10, "width": 1}),
]


@pytest.mark.parametrize(("arch", "kwargs"), ROUND_TRIP)
def test_save_and_load_model_round_trip(tmp_path, arch, kwargs):
    torch.manual_seed(0)
    model = trained(build_model(arch, num_classes=10, **kwargs))
    path = tmp_path / "run" / "student.pt"
    save_model_checkpoint(
        path, model, arch=arch, num_classes=10, model_kwargs=kwargs, extra={"epoch": 3}
    )
    loaded = load_model(path)
    assert not loaded.training
    assert type(loaded) is type(model)
    assert loaded.normalization == model.normalization
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    torch.testing.assert_close(
        outputs(loaded, model.in_channels), outputs(model, model.in_channels)
    )
    raw = safe_load(path)
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["epoch"] == 3
    assert (raw["arch"], raw["num_classes"], raw["in_channels"]) == (arch, 10, model.in_channels)
    assert {k: raw["model_kwargs"][k] for k in kwargs} == kwargs
    assert listing(path.parent) == ["student.pt"]


def test_saved_checkpoint_records_the_normalisation(tmp_path):
    custom = build_model("resnet56", depth=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    save_model_checkpoint(
        tmp_path / "a.pt", custom, arch="resnet56", num_classes=10, model_kwargs={"depth": 8}
    )
    assert load_model(tmp_path / "a.pt").normalization == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    none = build_model("resnet56", depth=8, mean=None, std=None)
    save_model_checkpoint(
        tmp_path / "b.pt", none, arch="resnet56", num_classes=10, model_kwargs={"depth": 8}
    )
    assert load_model(tmp_path / "b.pt").normalization is None
    dm = build_model("wrn70_16", num_classes=100, depth=10, width=1, dataset="cifar10")
    save_model_checkpoint(
        tmp_path / "c.pt",
        dm,
        arch="wrn70_16",
        num_classes=100,
        model_kwargs={"depth": 10, "width": 1},
    )
    assert load_model(tmp_path / "c.pt").normalization == (CIFAR10_MEAN, CIFAR10_STD)


def test_save_refuses_arguments_that_would_not_rebuild_the_model(tmp_path):
    model = build_model("small_cnn", channels=(8, 8))
    with pytest.raises(ValueError, match=r"shape mismatches.*features\.0\.weight"):
        save_model_checkpoint(tmp_path / "x.pt", model, arch="small_cnn", num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        save_model_checkpoint(
            tmp_path / "x.pt",
            model,
            arch="small_cnn",
            num_classes=5,
            model_kwargs={"channels": (8, 8)},
        )
    with pytest.raises(ValueError, match="arch"):
        save_model_checkpoint(tmp_path / "x.pt", model, arch="lenet", num_classes=10)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "extra",
    [
        {"state_dict": {}},
        {"arch": "x"},
        {"history": np.zeros(3)},
        {"cfg": {"path": os.sep}, "f": len},
    ],
)
def test_save_refuses_reserved_or_unsafe_extra_entries(tmp_path, extra):
    model = build_model("small_cnn")
    with pytest.raises(ValueError, match="extra"):
        save_model_checkpoint(
            tmp_path / "x.pt", model, arch="small_cnn", num_classes=10, extra=extra
        )
    assert listing(tmp_path) == []


def test_save_unwraps_data_parallel(tmp_path):
    model = trained(build_model("small_cnn"))
    save_model_checkpoint(
        tmp_path / "dp.pt", nn.DataParallel(model), arch="small_cnn", num_classes=10
    )
    assert not any(k.startswith("module.") for k in safe_load(tmp_path / "dp.pt")["state_dict"])
    torch.testing.assert_close(outputs(load_model(tmp_path / "dp.pt"), 1), outputs(model, 1))


def test_load_model_reads_a_training_run_checkpoint(tmp_path):
    model = trained(build_model("small_cnn"))
    save_model_checkpoint(tmp_path / "m.pt", model, arch="small_cnn", num_classes=10)
    run = {"model": safe_load(tmp_path / "m.pt"), "epoch": 7, "optimizer": {"lr": 0.1}}
    atomic_save(run, tmp_path / "run.pt")
    torch.testing.assert_close(outputs(load_model(tmp_path / "run.pt"), 1), outputs(model, 1))


def test_load_model_rejects_other_files(tmp_path):
    torch.save(build_model("small_cnn").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="load_teacher"):
        load_model(tmp_path / "plain.pt")
    save_model_checkpoint(
        tmp_path / "m.pt", build_model("small_cnn"), arch="small_cnn", num_classes=10
    )
    future = safe_load(tmp_path / "m.pt")
    future["version"] = VERSION + 1
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version"):
        load_model(tmp_path / "future.pt")


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------

TINY_WRN = {"depth": 10, "widen_factor": 2}


def test_robustbench_path_layout_and_validation(tmp_path):
    path = robustbench_path(tmp_path, "cifar100", "Gowal2020Uncovering")
    assert path == tmp_path / "cifar100" / "Linf" / "Gowal2020Uncovering.pt"
    assert robustbench_path("m", "cifar10", "X", threat="L2").as_posix() == "m/cifar10/L2/X.pt"
    for kwargs, param in [
        ({"dataset": "mnist", "name": "X"}, "dataset"),
        ({"dataset": "cifar10", "name": "X", "threat": "linf"}, "threat"),
        ({"dataset": "cifar10", "name": "../X"}, "name"),
        ({"dataset": "cifar10", "name": ""}, "name"),
    ]:
        with pytest.raises(ValueError, match=param):
            robustbench_path(tmp_path, **kwargs)


def test_robustbench_wrn34_10_with_module_prefix_loads_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    teacher = trained(build_model("wrn34_10", **TINY_WRN), size=32)
    state = {f"module.{k}": v for k, v in teacher.state_dict().items()}
    assert any(k.startswith("module.sub_block1.") for k in state)
    path = robustbench_path(tmp_path, "cifar10", "Zhang2019Theoretically")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    loaded = load_teacher(path, arch="wrn34_10", num_classes=10, model_kwargs=TINY_WRN)
    assert not loaded.training
    torch.testing.assert_close(outputs(loaded, 3, 32), outputs(teacher, 3, 32), rtol=0, atol=0)


def test_full_size_robustbench_layouts_fit_on_the_meta_device():
    """The real key sets (with DataParallel prefixes) fit wrn34_10 and wrn70_16 at full size."""
    with torch.device("meta"):
        wrn = build_model("wrn34_10")
        dm = build_model("wrn70_16", num_classes=100)
        trades_sd = {f"module.{k}": torch.empty(v.shape) for k, v in wrn.state_dict().items()}
        dm_sd = {k: torch.empty(v.shape) for k, v in dm.state_dict().items()}
        dm_sd["mean"], dm_sd["std"] = torch.empty(3, 1, 1), torch.empty(3, 1, 1)
    assert len(check_state_dict(wrn, strip_prefixes(trades_sd))) == 252
    assert "mean" not in check_state_dict(dm, dm_sd)
    trades_sd.pop("module.sub_block1.layer.0.conv1.weight")
    with pytest.raises(ValueError, match=r"missing keys: sub_block1\.layer\.0\.conv1\.weight"):
        check_state_dict(wrn, strip_prefixes(trades_sd))


@pytest.mark.parametrize(
    ("fmt", "wrap"),
    [
        ("auto", lambda sd: sd),
        ("auto", lambda sd: {"state_dict": sd, "epoch": 99}),
        ("robustbench", lambda sd: {"model_state_dict": sd, "optimizer": {"lr": 0.1}}),
        ("trades", lambda sd: {f"module.{k}": v for k, v in sd.items()}),
        ("robustbench", lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}),
    ],
)
def test_teacher_formats(tmp_path, fmt, wrap):
    torch.manual_seed(1)
    teacher = trained(build_model("resnet56", depth=8))
    torch.save(wrap(teacher.state_dict()), tmp_path / "t.pt")
    loaded = load_teacher(
        tmp_path / "t.pt", arch="resnet56", num_classes=10, fmt=fmt, model_kwargs={"depth": 8}
    )
    torch.testing.assert_close(outputs(loaded, 3), outputs(teacher, 3), rtol=0, atol=0)


def test_teacher_in_our_format(tmp_path):
    model = trained(build_model("wrn70_16", num_classes=100, depth=10, width=1, dataset="cifar10"))
    kwargs = {"depth": 10, "width": 1, "dataset": "cifar10"}
    save_model_checkpoint(
        tmp_path / "t.pt", model, arch="wrn70_16", num_classes=100, model_kwargs=kwargs
    )
    for fmt in ("auto", "anl"):
        loaded = load_teacher(tmp_path / "t.pt", arch="wrn70_16", num_classes=100, fmt=fmt)
        assert loaded.normalization == (CIFAR10_MEAN, CIFAR10_STD)
        torch.testing.assert_close(outputs(loaded, 3), outputs(model, 3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_classes"):
        load_teacher(tmp_path / "t.pt", arch="wrn70_16", num_classes=10)
    with pytest.raises(ValueError, match="arch"):
        load_teacher(tmp_path / "t.pt", arch="wrn22_6", num_classes=100)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="fmt='robustbench'"):
        load_teacher(tmp_path / "plain.pt", arch="wrn70_16", num_classes=100, fmt="anl")


def test_teacher_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    state = build_model("resnet56", depth=8, num_classes=100).state_dict()
    state.pop("layer1.0.conv2.weight")
    state["layer9.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "t.pt")
    with pytest.raises(ValueError) as info:
        load_teacher(tmp_path / "t.pt", arch="resnet56", num_classes=10, model_kwargs={"depth": 8})
    message = str(info.value)
    assert "t.pt" in message and "'resnet56'" in message
    assert "1 missing keys: layer1.0.conv2.weight" in message
    assert "1 unexpected keys: layer9.extra.weight" in message
    assert "fc.weight: expected (10, 64), found (100, 64)" in message
    assert "fc.bias: expected (10,), found (100,)" in message


def test_teacher_mismatch_message_is_truncated(tmp_path):
    torch.save(build_model("small_cnn").state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(ValueError) as info:
        load_teacher(tmp_path / "cnn.pt", arch="wrn34_10", num_classes=10, model_kwargs=TINY_WRN)
    message = str(info.value)
    assert "more)" in message and len(message) < 3000
    assert "missing keys" in message and "unexpected keys" in message


def test_teacher_normalisation_entries_are_checked(tmp_path):
    """RobustBench's DMWideResNet may save its mean/std buffers: equal -> fine, else an error."""
    kwargs = {"depth": 10, "width": 1}
    teacher = trained(build_model("wrn70_16", num_classes=100, **kwargs))
    state = dict(teacher.state_dict())
    state["mean"] = torch.tensor(CIFAR100_MEAN).view(3, 1, 1)
    state["std"] = torch.tensor(CIFAR100_STD).view(3, 1, 1)
    torch.save(state, tmp_path / "c100.pt")
    loaded = load_teacher(
        tmp_path / "c100.pt", arch="wrn70_16", num_classes=100, model_kwargs=kwargs
    )
    torch.testing.assert_close(outputs(loaded, 3), outputs(teacher, 3), rtol=0, atol=0)
    state["mean"] = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    state["std"] = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.save(state, tmp_path / "c10.pt")
    with pytest.raises(ValueError, match=r"`mean = \(0\.4914"):
        load_teacher(tmp_path / "c10.pt", arch="wrn70_16", num_classes=100, model_kwargs=kwargs)
    loaded = load_teacher(
        tmp_path / "c10.pt",
        arch="wrn70_16",
        num_classes=100,
        model_kwargs={**kwargs, "dataset": "cifar10"},
    )
    assert loaded.normalization == (CIFAR10_MEAN, CIFAR10_STD)


def test_teacher_without_batchnorm_counters_loads(tmp_path):
    """Checkpoints from PyTorch < 0.4.1 have no ``num_batches_tracked`` entries."""
    teacher = trained(build_model("resnet56", depth=8))
    state = {k: v for k, v in teacher.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    loaded = load_teacher(
        tmp_path / "old.pt", arch="resnet56", num_classes=10, model_kwargs={"depth": 8}
    )
    torch.testing.assert_close(outputs(loaded, 3), outputs(teacher, 3), rtol=0, atol=0)


def test_teacher_argument_and_content_errors(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_teacher(tmp_path / "list.pt", arch="small_cnn", num_classes=10)
    with pytest.raises(ValueError, match="fmt"):
        load_teacher(tmp_path / "list.pt", arch="small_cnn", num_classes=10, fmt="timm")
    with pytest.raises(ValueError, match="arch"):
        load_teacher(tmp_path / "list.pt", arch="vit", num_classes=10)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        load_teacher(tmp_path / "absent.pt", arch="small_cnn", num_classes=10)
