"""anl.integrations.lightning: a tiny two-loss LightningModule trained on the CPU.

A resumed fit continues with bit-identical weights, the weights and relative losses reach the
logger on Lightning's logging steps (and are read back on those steps only), and
``accumulate_grad_batches`` steps the balancer once per optimiser step.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

pl = pytest.importorskip("pytorch_lightning")

from anl import AdaptiveLossBalancer  # noqa: E402
from anl.integrations import lightning as anl_lightning  # noqa: E402
from anl.integrations.lightning import LossBalancerCallback, balanced_loss  # noqa: E402

NAMES = ["mse", "l1"]


class TwoLosses(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 2)
        self.balancer = AdaptiveLossBalancer(NAMES, weight_lr=0.5)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        losses = {"mse": nn.functional.mse_loss(out, y), "l1": nn.functional.l1_loss(out, y)}
        return balanced_loss(self, self.balancer, losses)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class MemoryLogger(pl.loggers.Logger):
    """Keeps what Lightning sends to its loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


def _loader() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(12, 4, generator=generator)
    y = torch.randn(12, 2, generator=generator)
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)  # 3 batches


def _fit(model, tmp_path, *, ckpt_path=None, weights_only=None, logger=None, **trainer_kwargs):
    callback = LossBalancerCallback(model.balancer)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
        trainer.fit(model, _loader(), ckpt_path=ckpt_path, weights_only=weights_only)
    return trainer


def _assert_same_state(actual, expected, where="state_dict") -> None:
    """Bit-identical nested state: tensors equal (NaN where NaN), everything else equal."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key, value in expected.items():
            _assert_same_state(actual[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert (
            torch.equal(actual.isnan(), expected.isnan()) if expected.is_floating_point() else True
        )
        assert torch.equal(actual.nan_to_num(), expected.nan_to_num()), where
    else:
        assert actual == expected, where


def test_resume_from_checkpoint_continues_with_identical_weights(tmp_path):
    # Whole epochs (3 batches each): Lightning itself replays a batch when resuming from a
    # checkpoint taken by `max_steps` on an epoch's last batch, whatever anl does.
    straight = TwoLosses()
    _fit(straight, tmp_path / "straight", max_epochs=2)

    first = TwoLosses()
    trainer = _fit(first, tmp_path / "first", max_epochs=1)
    checkpoint = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=False)["callbacks"]
    key = LossBalancerCallback(first.balancer).state_key
    assert "mse" in key and "l1" in key
    _assert_same_state(saved[key]["balancer"], first.balancer.state_dict())

    resumed = TwoLosses()  # fresh weights: everything comes from the checkpoint
    _fit(resumed, tmp_path / "resumed", ckpt_path=checkpoint, weights_only=True, max_epochs=2)
    assert int(resumed.balancer.num_steps) == int(straight.balancer.num_steps) == 6
    _assert_same_state(resumed.balancer.state_dict(), straight.balancer.state_dict())
    assert torch.equal(resumed.net.weight, straight.net.weight)


def test_weights_and_relative_losses_logged_on_logging_steps_only(tmp_path, monkeypatch):
    reads = []
    original = anl_lightning.balancer_metrics

    def counting(balancer, prefix=""):
        reads.append(int(balancer.num_steps))
        return original(balancer, prefix)

    monkeypatch.setattr(anl_lightning, "balancer_metrics", counting)
    model, logger = TwoLosses(), MemoryLogger()
    _fit(model, tmp_path, logger=logger, max_steps=4, log_every_n_steps=2)

    assert reads == [2, 4]  # read back on the logging steps only
    history = model.balancer.history()
    logged = {step: metrics for step, metrics in logger.rows if "anl/weights/mse" in metrics}
    assert sorted(logged) == [1, 3]  # Lightning's 0-based step of the 2nd and 4th batch
    for step, row in ((1, 1), (3, 3)):
        for i, name in enumerate(NAMES):
            assert logged[step][f"anl/weights/{name}"] == pytest.approx(
                history["weights"][row, i], rel=1e-6
            )
            assert logged[step][f"anl/relative_loss/{name}"] == pytest.approx(
                history["relative_losses"][row, i], rel=1e-6
            )


def test_accumulated_micro_batches_combine_and_the_last_one_steps(tmp_path):
    model = TwoLosses()
    _fit(model, tmp_path, max_steps=2, accumulate_grad_batches=2, log_every_n_steps=1)
    # Two optimiser steps over three micro-batches: two accumulated, then the epoch's last.
    assert int(model.balancer.num_steps) == 2
    assert np.all(model.balancer.history()["applied"])


def test_callback_wants_an_anl_weighting():
    with pytest.raises(TypeError, match="anl weighting"):
        LossBalancerCallback(object())
