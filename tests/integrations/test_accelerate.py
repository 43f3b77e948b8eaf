"""anl.integrations.accelerate: the recipe on one CPU process, with gradient accumulation.

The balancer steps once per optimiser step, ``save_state``/``load_state`` carry it, and a run
resumed from the saved state ends bit-identically to one that never stopped.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")

from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from anl import AdaptiveLossBalancer  # noqa: E402
from anl.integrations.accelerate import balanced_loss, register_balancer  # noqa: E402

NAMES = ["mse", "l1"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps process-wide singletons; each test starts from none."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 4, generator=generator), torch.randn(4, 2, generator=generator))
        for _ in range(8)
    ]


def _setup():
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    balancer = register_balancer(accelerator, AdaptiveLossBalancer(NAMES, weight_lr=0.5))
    return accelerator, model, optimizer, balancer


def _train(accelerator, model, optimizer, balancer, batches) -> None:
    for x, y in batches:
        with accelerator.accumulate(model):
            out = model(x)
            losses = {"mse": nn.functional.mse_loss(out, y), "l1": nn.functional.l1_loss(out, y)}
            accelerator.backward(balanced_loss(accelerator, balancer, losses))
            optimizer.step()
            optimizer.zero_grad()


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


def test_accumulation_steps_once_per_optimiser_step_and_resume_is_bit_identical(tmp_path):
    batches = _batches()
    accelerator, model, optimizer, balancer = _setup()
    _train(accelerator, model, optimizer, balancer, batches[:4])
    assert int(balancer.num_steps) == 2  # 4 micro-batches, 2 optimiser steps
    accelerator.save_state(str(tmp_path / "state"))
    saved = torch.load(tmp_path / "state" / "custom_checkpoint_0.pkl", weights_only=True)
    _assert_same_state(saved, balancer.state_dict())
    _train(accelerator, model, optimizer, balancer, batches[4:])
    assert int(balancer.num_steps) == 4
    straight = balancer.state_dict()

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator, model, optimizer, resumed = _setup()
    accelerator.load_state(str(tmp_path / "state"))
    assert int(resumed.num_steps) == 2
    _train(accelerator, model, optimizer, resumed, batches[4:])
    _assert_same_state(resumed.state_dict(), straight)


def test_without_accumulate_every_call_steps():
    accelerator = accelerate.Accelerator(cpu=True)
    balancer = AdaptiveLossBalancer(NAMES)
    for _ in range(3):
        balanced_loss(accelerator, balancer, [torch.tensor(2.0), torch.tensor(1.0)])
    assert int(balancer.num_steps) == 3


def test_register_balancer_wants_an_anl_weighting():
    accelerator = accelerate.Accelerator(cpu=True)
    with pytest.raises(TypeError, match="anl weighting"):
        register_balancer(accelerator, object())
