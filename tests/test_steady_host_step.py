"""LossWeighting.step's steady-state fast path (a list or tuple of valid 0-dim CPU tensors once
every L(0) is known) against the general path, which a mapping of the same losses takes: the
same totals, gradients, weights, state and history, bit for bit, for every weighting class;
and every case it must leave to the general path (invalid, absent, unusual values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import anl.weighting
from anl import (
    FAMO,
    IMTLL,
    AdaptiveLossBalancer,
    ConstantWeights,
    DynamicWeightAverage,
    GeometricLossStrategy,
    RandomLossWeighting,
    ReLoBRaLo,
    SoftAdapt,
    UncertaintyWeighting,
    functional,
)

NAMES = ["a", "b", "c"]
EVERY_CLASS = {
    "anl": lambda: AdaptiveLossBalancer(NAMES, beta=2.0, weight_lr=0.3),
    "constant": lambda: ConstantWeights(NAMES, weights=[0.2, 0.3, 0.5]),
    "dwa": lambda: DynamicWeightAverage(NAMES, window=2),
    "rlw": lambda: RandomLossWeighting(NAMES),
    "gls": lambda: GeometricLossStrategy(NAMES),
    "softadapt": lambda: SoftAdapt(NAMES),
    "relobralo": lambda: ReLoBRaLo(NAMES),
    "uw": lambda: UncertaintyWeighting(NAMES),
    "imtl_l": lambda: IMTLL(NAMES),
    "famo": lambda: FAMO(NAMES),
}
# Loss values per step: float32 and float64 losses mixed, values that shrink and grow.
TRAJECTORY = [
    [2.0, 0.5, 3.0],
    [1.5, 0.6, 2.0],
    [1.0, 0.55, 2.5],
    [0.75, 0.7, 1.0],
    [0.5, 0.4, 1.5],
    [0.6, 0.3, 0.9],
]
DTYPES = [torch.float32, torch.float64, torch.float32]


def _run(build, as_mapping):
    """Step ``build()`` along TRAJECTORY, the losses scaled from one leaf each (their gradients
    are the weights the total applied); FAMO gets its second call."""
    weighting = build()
    parameters = list(weighting.parameters()) if isinstance(weighting, torch.nn.Module) else []
    optimizer = torch.optim.SGD(parameters, lr=0.1) if parameters else None
    totals, gradients = [], []
    for row in TRAJECTORY:
        leaves = [torch.tensor(1.0, dtype=d, requires_grad=True) for d in DTYPES]
        losses = [v * leaf for v, leaf in zip(row, leaves, strict=True)]
        total = weighting.step(dict(zip(NAMES, losses, strict=True)) if as_mapping else losses)
        if optimizer is not None:
            optimizer.zero_grad()
        total.backward()
        if optimizer is not None:
            optimizer.step()
        if isinstance(weighting, FAMO):
            weighting.update([0.9 * v for v in row])
        totals.append(total.detach().clone())
        gradients.append([leaf.grad.clone() for leaf in leaves])
    return weighting, totals, gradients


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["hyperparameters"] == sb["hyperparameters"]
    assert sa["state"].keys() == sb["state"].keys()
    for key, value in sa["state"].items():
        other = sb["state"][key]
        if isinstance(value, torch.Tensor):  # bit for bit, NaN (an absent loss) included
            torch.testing.assert_close(value, other, rtol=0, atol=0, equal_nan=True, msg=key)
        else:
            assert value == other, key


@pytest.mark.parametrize("name", list(EVERY_CLASS))
def test_the_fast_path_is_the_general_path_bit_for_bit(name, monkeypatch):
    calls = []
    real = anl.weighting.collect_losses
    monkeypatch.setattr(anl.weighting, "collect_losses", lambda *a: calls.append(1) or real(*a))
    fast, fast_totals, fast_gradients = _run(EVERY_CLASS[name], as_mapping=False)
    # Only the first step (no L(0) yet) went through collect_losses; a mapping always does.
    assert len(calls) == 1
    general, totals, gradients = _run(EVERY_CLASS[name], as_mapping=True)
    assert len(calls) == 1 + len(TRAJECTORY)
    for mine, theirs in zip(fast_totals, totals, strict=True):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)
    for mine, theirs in zip(fast_gradients, gradients, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(mine, theirs, strict=True))
    _assert_same_state(fast, general)
    history, other = fast.history(), general.history()
    for key in history:
        assert np.array_equal(history[key], other[key], equal_nan=key != "applied"), key


def _steady(build=lambda: AdaptiveLossBalancer(2), **kwargs):
    weighting = build() if not kwargs else AdaptiveLossBalancer(2, **kwargs)
    weighting.step([torch.tensor(2.0), torch.tensor(1.0)])
    return weighting


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0], ids=["nan", "inf", "negative"])
def test_invalid_losses_in_the_steady_state_are_masked_or_raised_as_before(bad):
    masked = _steady()
    before = masked.state_dict()
    total = masked.step([torch.tensor(bad), torch.tensor(1.0)])
    assert int(masked.num_skipped) == 1 and int(masked.num_steps) == 1
    assert torch.equal(masked.weights, before["state"]["weights"])
    assert masked.history()["applied"].tolist() == [True, False]
    assert total.shape == ()
    strict = _steady(strict=True)
    before = strict.state_dict()
    with pytest.raises(ValueError, match="Loss `0` should be finite and non-negative"):
        strict.step([torch.tensor(bad), torch.tensor(1.0)])
    after = strict.state_dict()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())


def test_a_zero_loss_is_refused_where_the_rule_needs_positive_losses():
    gls = GeometricLossStrategy(2, strict=True)
    gls.step([torch.tensor(2.0), torch.tensor(1.0)])
    with pytest.raises(ValueError, match="`0` should be positive"):
        gls.step([torch.tensor(0.0), torch.tensor(1.0)])
    anl_balancer = _steady()
    anl_balancer.step([torch.tensor(0.0), torch.tensor(1.0)])  # valid for ANL
    assert int(anl_balancer.num_steps) == 2


@pytest.mark.parametrize(
    "losses",
    [
        [torch.tensor(1.0), None],  # absent
        [torch.tensor([1.0]), torch.tensor(0.5)],  # one element, 1-D
        [torch.tensor(1.0, dtype=torch.bfloat16), torch.tensor(0.5)],  # narrow dtype
        [torch.tensor(1), torch.tensor(0.5)],  # an integer tensor
        [1.0, torch.tensor(0.5)],  # a number among tensors
        (torch.tensor(1.0), torch.tensor(0.5)),  # a tuple
    ],
    ids=["absent", "1-d", "bfloat16", "integer", "number", "tuple"],
)
def test_other_inputs_give_what_the_general_path_gives(losses):
    fast, general = _steady(), _steady()
    total = fast.step(losses)
    expected = general.step(dict(zip(["0", "1"], losses, strict=True)))
    assert torch.equal(torch.as_tensor(total), torch.as_tensor(expected))
    _assert_same_state(fast, general)


def test_weighted_sum_refuses_a_weight_count_that_is_not_the_loss_count():
    losses = [torch.tensor(1.0), torch.tensor(2.0)]
    with pytest.raises(ValueError, match=r"one weight per loss \(2\)\. Found 3 weights"):
        functional.weighted_sum([0.2, 0.3, 0.5], losses)
    with pytest.raises(ValueError, match="Found 1 weights"):
        functional.weighted_sum([1.0], losses)


def test_losses_off_the_cpu_take_the_device_path():
    # The meta device stands in for an accelerator: its values cannot be read back, so the
    # fast path (which reads them) must leave them to the sync-free device path.
    balancer = _steady()
    total = balancer.step([torch.tensor(1.0, device="meta"), torch.tensor(1.0, device="meta")])
    assert total.device.type == "meta" and balancer.weights.device.type == "meta"
