"""anl.integrations.logging and .tensorboard, and what every integration does without its
framework: importing ``anl`` never imports one, and a missing one is a single clear line."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anl import AdaptiveLossBalancer, ConstantWeights
from anl.integrations._optional import missing_extra
from anl.integrations.logging import PeriodicLogger, balancer_metrics

ROOT = Path(__file__).resolve().parents[2]


def _balancer(steps: int = 2) -> AdaptiveLossBalancer:
    balancer = AdaptiveLossBalancer(["adv", "nat"])
    for t in range(1, steps + 1):
        balancer.step({"adv": 2.0 / t, "nat": 1.0})
    return balancer


# ------------------------------------------------------------------------------ metrics
def test_balancer_metrics_are_the_weights_and_relative_losses():
    balancer = _balancer()
    metrics = balancer_metrics(balancer, prefix="anl/")
    assert metrics == {
        "anl/weights/adv": balancer.weights[0].item(),
        "anl/weights/nat": balancer.weights[1].item(),
        "anl/relative_loss/adv": 0.5,
        "anl/relative_loss/nat": 1.0,
    }
    assert all(type(v) is float for v in metrics.values())


def test_balancer_metrics_before_any_step_has_the_weights_only():
    assert balancer_metrics(ConstantWeights(["a", "b"], weights=[1.0, 6.0])) == {
        "weights/a": 1.0,
        "weights/b": 6.0,
    }


def test_balancer_metrics_read_tensor_state_back_once(monkeypatch):
    balancer = AdaptiveLossBalancer(["adv", "nat"])
    balancer.supports_host = False  # the device path, on the CPU
    balancer.step([torch.tensor(2.0), torch.tensor(1.0)])
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or tolist(t))
    metrics = balancer_metrics(balancer)
    assert reads == [torch.Size([4])]
    assert metrics["relative_loss/adv"] == 1.0


# ------------------------------------------------------------------------------ the hook
def test_periodic_logger_calls_the_hook_every_n_steps_only():
    balancer = AdaptiveLossBalancer(["adv", "nat"])
    logged = []
    logger = PeriodicLogger(balancer, lambda m, step: logged.append((step, m)), every_n_steps=3)
    results = []
    for t in range(1, 8):
        balancer.step({"adv": 2.0 / t, "nat": 1.0})
        results.append(logger())
    assert [step for step, _ in logged] == [3, 6]
    assert [r is not None for r in results] == [False, False, True, False, False, True, False]
    assert logged[-1][1]["relative_loss/adv"] == pytest.approx(1 / 6)
    assert logger(9) is not None and logged[-1][0] == 9  # an explicit step decides alone
    assert logger(10) is None


def test_periodic_logger_checks_its_arguments():
    balancer = _balancer()
    with pytest.raises(TypeError, match="anl weighting"):
        PeriodicLogger(object(), print)
    with pytest.raises(TypeError, match="log_fn"):
        PeriodicLogger(balancer, "wandb")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="every_n_steps"):
            PeriodicLogger(balancer, print, every_n_steps=bad)
    with pytest.raises(TypeError, match="step"):
        PeriodicLogger(balancer, print)(step=1.5)


# ------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_writer_writes_one_chart_per_quantity(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from anl.integrations.tensorboard import TensorBoardWriter

    balancer = AdaptiveLossBalancer(["adv", "nat"])
    writer = TensorBoardWriter(balancer, tmp_path, every_n_steps=2, tag="mtl")
    expected = {}
    for t in range(1, 5):
        balancer.step({"adv": 1.0 / t, "nat": 1.0})
        if writer(t) is not None:
            expected[t] = balancer_metrics(balancer)
    writer.close()

    found = {}
    for path in glob.glob(str(tmp_path / "**" / "events.*"), recursive=True):
        run = Path(path).parent.name  # add_scalars: one run per line, e.g. "mtl_weights_adv"
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                found[(value.tag, run, event.step)] = value.tensor.float_val[0]
    assert sorted({step for _, _, step in found}) == [2, 4]
    for step, metrics in expected.items():
        for name in ("adv", "nat"):
            for kind in ("weights", "relative_loss"):
                value = found[(f"mtl/{kind}", f"mtl_{kind}_{name}", step)]
                assert value == pytest.approx(metrics[f"{kind}/{name}"], rel=1e-6)


def test_tensorboard_writer_leaves_a_given_writer_open():
    pytest.importorskip("tensorboard")
    from anl.integrations.tensorboard import TensorBoardWriter

    class Recorder:
        def __init__(self):
            self.calls, self.flushed, self.closed = [], 0, False

        def add_scalars(self, tag, values, step):
            self.calls.append((tag, dict(values), step))

        def flush(self):
            self.flushed += 1

        def close(self):
            self.closed = True

    recorder = Recorder()
    writer = TensorBoardWriter(_balancer(), recorder, every_n_steps=1)
    writer(1)
    writer.close()
    assert [c[0] for c in recorder.calls] == ["anl/weights", "anl/relative_loss"]
    assert recorder.calls[1][1] == {"adv": 0.5, "nat": 1.0}
    assert recorder.flushed == 1 and not recorder.closed


# ------------------------------------------------------------------------------ optional packages
_WITHOUT = r"""
import sys
import anl, anl.integrations, anl.integrations.logging
frameworks = ("pytorch_lightning", "lightning", "transformers", "accelerate", "tensorboard")
print("imported:", sorted(m for m in frameworks if m in sys.modules))
for integration, blocked in [
    ("lightning", "pytorch_lightning"),
    ("huggingface", "transformers"),
    ("accelerate", "accelerate"),
    ("tensorboard", "tensorboard"),
]:
    sys.modules[blocked] = None  # as if it were not installed
    try:
        __import__(f"anl.integrations.{integration}")
    except ModuleNotFoundError as error:
        print(f"{type(error).__name__}: {error}")
    del sys.modules[blocked]
"""


def test_anl_imports_no_framework_and_a_missing_one_is_one_clear_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's anl
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    pip = 'pip install "adaptive-normalization-loss[{}]"'
    assert proc.stdout.splitlines() == [
        "imported: []",
        "ModuleNotFoundError: anl.integrations.lightning needs pytorch-lightning: "
        + pip.format("lightning"),
        "ModuleNotFoundError: anl.integrations.huggingface needs transformers: "
        + pip.format("transformers"),
        "ModuleNotFoundError: anl.integrations.accelerate needs accelerate: "
        + pip.format("accelerate"),
        "ModuleNotFoundError: anl.integrations.tensorboard needs tensorboard: "
        + pip.format("tensorboard"),
    ]


def test_a_missing_dependency_of_an_installed_framework_keeps_its_own_error():
    other = ModuleNotFoundError("No module named 'torchmetrics'", name="torchmetrics")
    assert missing_extra("x", other, module="pytorch_lightning", package="p", extra="e") is other
    own = ModuleNotFoundError("No module named 'pytorch_lightning.x'", name="pytorch_lightning.x")
    error = missing_extra(
        "anl.integrations.lightning", own, module="pytorch_lightning", package="p", extra="e"
    )
    assert (
        str(error)
        == 'anl.integrations.lightning needs p: pip install "adaptive-normalization-loss[e]"'
    )
