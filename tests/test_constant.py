"""anl.ConstantWeights: fixed weights through the same machinery (masking, strict, absence,
history, settable weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anl import ConstantWeights


@pytest.mark.parametrize("path", ["host", "device"])
def test_weights_never_move_but_relative_losses_are_tracked(path):
    weighting = ConstantWeights(["a", "b"], weights=[1.0, 6.0])
    weighting.supports_host = path == "host"
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert weighting.step([t(2.0), t(4.0)]).item() == pytest.approx(26.0)
    assert weighting.step([t(1.0), t(1.0)]).item() == pytest.approx(7.0)
    assert weighting.weights.tolist() == [1.0, 6.0]
    assert weighting.relative_losses.tolist() == [0.5, 0.25]
    np.testing.assert_array_equal(weighting.history()["weights"], [[1.0, 6.0], [1.0, 6.0]])


@pytest.mark.parametrize("path", ["host", "device"])
def test_strict_raises_instead_of_masking(path):
    for strict in (False, True):
        weighting = ConstantWeights(2, weights=[0.5, 0.5], strict=strict)
        weighting.supports_host = path == "host"
        weighting.step([torch.tensor(1.0), torch.tensor(1.0)])
        bad = [torch.tensor(float("nan")), torch.tensor(1.0)]
        if strict:
            with pytest.raises(ValueError, match="`0` should be finite"):
                weighting.step(bad)
            assert int(weighting.num_skipped) == 0
        else:
            weighting.step(bad)
            assert int(weighting.num_skipped) == 1


@pytest.mark.parametrize("path", ["host", "device"])
def test_weights_are_settable_and_checked(path):
    weighting = ConstantWeights(["a", "b"], weights=[1.0, 1.0])
    weighting.supports_host = path == "host"
    weighting.step([torch.tensor(2.0), torch.tensor(2.0)])
    weighting.weights = torch.tensor([0.25, 3.0])
    assert weighting.step([torch.tensor(4.0), torch.tensor(1.0)]).item() == pytest.approx(4.0)
    for bad, match in (
        ([1.0], "should hold 2"),
        ([1.0, -1.0], "non-negative"),
        ([1.0, float("inf")], "finite"),
    ):
        with pytest.raises(ValueError, match=match):
            weighting.weights = bad
    assert weighting.weights.tolist() == [0.25, 3.0]


def test_absent_losses_drop_out_of_the_sum():
    weighting = ConstantWeights(["a", "b", "c"], weights=[1.0, 2.0, 3.0])
    assert weighting.step({"a": 1.0, "c": 1.0}) == 4.0
    assert weighting.initial_losses.tolist() == [1.0, 0.0, 1.0]
    assert weighting.step([None, 2.0, None]) == 4.0
    assert weighting.initial_losses.tolist() == [1.0, 2.0, 1.0]


def test_weights_need_not_sum_to_one_but_must_be_finite_and_non_negative():
    ConstantWeights(2, weights=[1.0, 6.0])
    with pytest.raises(ValueError, match="non-negative"):
        ConstantWeights(2, weights=[1.0, -6.0])


@pytest.mark.parametrize("path", ["host", "device"])
def test_float32_state(path):
    """``dtype`` reaches the state: weights, references and relative losses in float32."""
    weighting = ConstantWeights(2, weights=[1.0, 6.0], dtype=torch.float32)
    weighting.supports_host = path == "host"
    weighting.step([torch.tensor(3.0), torch.tensor(1.0)])
    weighting.step([torch.tensor(1.0), torch.tensor(1.0)])
    for value in (weighting.weights, weighting.initial_losses, weighting.relative_losses):
        assert value.dtype == torch.float32
    # 1/3 in float32, not float64.
    assert weighting.relative_losses[0].item() == torch.tensor(1 / 3, dtype=torch.float32).item()
    assert ConstantWeights(2, weights=[1.0, 6.0]).weights.dtype == torch.float64
