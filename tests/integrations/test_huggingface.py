"""anl.integrations.huggingface: a tiny two-loss model trained by a BalancedTrainer on the CPU.

Offline: the model is built from a config here, nothing is downloaded, nothing is reported.
A run resumed from a checkpoint ends with bit-identical weights, ``balancer.pt`` loads with
``weights_only=True``, the training log lines carry the weights, and gradient accumulation
steps the balancer once per optimiser step.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from anl import AdaptiveLossBalancer  # noqa: E402
from anl.integrations.huggingface import (  # noqa: E402
    BALANCER_FILE,
    BalancedTrainer,
    load_balancer_state,
)

NAMES = ["mse", "l1"]


class TinyConfig(transformers.PretrainedConfig):
    model_type = "anl-tiny"

    def __init__(self, width: int = 4, **kwargs) -> None:
        self.width = width
        super().__init__(**kwargs)


class TinyModel(transformers.PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.net = nn.Linear(config.width, 2)
        self.post_init()

    def _init_weights(self, module) -> None:
        pass  # the seeded default initialisation of nn.Linear

    def forward(self, x, labels=None):
        return {"logits": self.net(x)}


def losses(outputs, inputs):
    out, y = outputs["logits"], inputs["labels"]
    return {"mse": nn.functional.mse_loss(out, y), "l1": nn.functional.l1_loss(out, y)}


def _dataset() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=generator)
    y = torch.randn(16, 2, generator=generator)
    return [{"x": x[i], "labels": y[i]} for i in range(16)]


def _trainer(out_dir, *, max_steps, **arguments) -> BalancedTrainer:
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(out_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=0.1,
        lr_scheduler_type="constant",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **arguments,
    )
    return BalancedTrainer(
        model=TinyModel(TinyConfig()),
        args=args,
        train_dataset=_dataset(),
        balancer=AdaptiveLossBalancer(NAMES, weight_lr=0.5),
        loss_fn=losses,
    )


def _train(trainer, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return trainer.train(**kwargs)


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
    straight = _trainer(tmp_path / "straight", max_steps=4, save_steps=2, logging_steps=2)
    _train(straight)
    assert int(straight.balancer.num_steps) == 4

    checkpoint = tmp_path / "straight" / "checkpoint-2"
    saved = torch.load(checkpoint / BALANCER_FILE, weights_only=True)
    assert int(saved["state"]["num_steps"]) == 2
    final = torch.load(tmp_path / "straight" / "checkpoint-4" / BALANCER_FILE, weights_only=True)
    _assert_same_state(final, straight.balancer.state_dict())

    # The training log lines carry the weights of their step.
    history = straight.balancer.history()
    rows = [row for row in straight.state.log_history if "weights/mse" in row]
    assert [row["step"] for row in rows] == [2, 4]
    for row in rows:
        for i, name in enumerate(NAMES):
            assert row[f"weights/{name}"] == history["weights"][row["step"] - 1, i]
            assert row[f"relative_loss/{name}"] == history["relative_losses"][row["step"] - 1, i]

    resumed = _trainer(tmp_path / "resumed", max_steps=4, save_steps=2, logging_steps=2)
    _train(resumed, resume_from_checkpoint=str(checkpoint))
    _assert_same_state(resumed.balancer.state_dict(), straight.balancer.state_dict())
    assert torch.equal(resumed.model.net.weight, straight.model.net.weight)


def test_gradient_accumulation_steps_the_balancer_once_per_optimiser_step(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, gradient_accumulation_steps=2, save_strategy="no")
    calls = []
    step, combine = trainer.balancer.step, trainer.balancer.combine
    trainer.balancer.step = lambda losses: calls.append("step") or step(losses)
    trainer.balancer.combine = lambda losses: calls.append("combine") or combine(losses)
    _train(trainer)
    assert calls == ["combine", "step", "combine", "step"]


def test_model_inputs_keep_the_other_keys_for_loss_fn(tmp_path):
    seen = []

    def with_extra_target(outputs, inputs):
        seen.append(sorted(inputs))
        return {"mse": nn.functional.mse_loss(outputs["logits"], inputs["target"]), "l1": None}

    trainer = _trainer(tmp_path, max_steps=1, save_strategy="no", remove_unused_columns=False)
    trainer.train_dataset = [{**row, "target": row["labels"]} for row in _dataset()]
    trainer.loss_fn, trainer.model_inputs = with_extra_target, {"x", "labels"}
    _train(trainer)  # TinyModel.forward has no `target`
    assert seen == [["labels", "target", "x"]]
    assert math.isnan(trainer.balancer.history()["losses"][0, 1])  # `l1` absent at this step


def test_resuming_a_checkpoint_without_balancer_file_is_an_error(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, save_steps=1)
    _train(trainer)
    checkpoint = tmp_path / "checkpoint-1"
    (checkpoint / BALANCER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=BALANCER_FILE):
        load_balancer_state(trainer.balancer, checkpoint)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        trainer.train(resume_from_checkpoint=True)


def test_arguments_are_checked(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    model = TinyModel(TinyConfig())
    with pytest.raises(TypeError, match="anl weighting"):
        BalancedTrainer(model=model, args=args, balancer=object(), loss_fn=losses)
    with pytest.raises(TypeError, match="model_inputs"):
        BalancedTrainer(
            model=model,
            args=args,
            balancer=AdaptiveLossBalancer(NAMES),
            loss_fn=losses,
            model_inputs="x",
        )
    with pytest.raises(TypeError, match="loss_fn"):
        BalancedTrainer(model=model, args=args, balancer=AdaptiveLossBalancer(NAMES), loss_fn=1)
    with pytest.raises(ValueError, match="compute_loss_func"):
        BalancedTrainer(
            model=model,
            args=args,
            balancer=AdaptiveLossBalancer(NAMES),
            loss_fn=losses,
            compute_loss_func=lambda *a, **k: None,
        )
