"""anl.rules._common: the masked softmax, the shared weight mass and the sum check, in their
host form (lists of floats) and device form (tensors), which must agree."""

from __future__ import annotations

import math

import pytest
import torch

from anl.rules import _common

INF = math.inf

# (logits, share, expected p): the plain formula, and its limits where it is 0/0 or inf/inf.
SOFTMAX_CASES = [
    ([0.0, math.log(3.0)], None, [0.25, 0.75]),
    ([0.0, math.log(3.0), 5.0], [True, True, False], [0.25, 0.75, 0.0]),
    ([1000.0, 1000.0 + math.log(3.0)], None, [0.25, 0.75]),  # no overflow: max subtracted
    ([INF, 1.0, INF], None, [0.5, 0.0, 0.5]),  # +inf logits share the mass
    ([-INF, -INF], None, [0.5, 0.5]),  # every logit -inf: even over the members
    ([-INF, -INF, 0.0], [True, True, False], [0.5, 0.5, 0.0]),
    ([-INF, 2.0], None, [0.0, 1.0]),
    ([float("nan"), 1.0, 2.0], [False, True, True], [0.0, 1 / (1 + math.e), math.e / (1 + math.e)]),
]


@pytest.mark.parametrize(("logits", "share", "expected"), SOFTMAX_CASES)
def test_masked_softmax_and_its_limits_on_both_forms(logits, share, expected):
    host = _common.masked_softmax(logits, share)
    assert host == pytest.approx(expected, rel=1e-12, abs=0.0)
    mask = None if share is None else torch.tensor(share)
    device = _common.masked_softmax(torch.tensor(logits, dtype=torch.float64), mask)
    assert device.tolist() == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_shared_mass_is_the_full_total_or_what_the_sharing_losses_held():
    previous = [0.5, 1.5, 0.5]  # drifted off the total 3: every loss sharing still gets 3
    assert _common.shared_mass(previous, None, 3.0) == 3.0
    assert _common.shared_mass(previous, [True, True, True], 3.0) == 3.0
    assert _common.shared_mass(previous, [True, False, True], 3.0) == 1.0
    assert _common.shared_mass(previous, [False, True, False], 3.0) == 1.5
    tensor = torch.tensor(previous, dtype=torch.float64)
    assert float(_common.shared_mass(tensor, None, 3.0)) == 3.0
    assert float(_common.shared_mass(tensor, torch.tensor([True, True, True]), 3.0)) == 3.0
    assert float(_common.shared_mass(tensor, torch.tensor([True, False, True]), 3.0)) == 1.0


def test_shared_softmax_keeps_the_weights_of_losses_left_out():
    previous = [0.5, 1.5, 1.0]
    logits = [0.0, 0.0, math.log(3.0)]
    share = [True, False, True]
    expected = [1.5 * 0.25, 1.5, 1.5 * 0.75]  # the mass 0.5 + 1.0 split 1:3
    assert _common.shared_softmax(logits, previous, share, 3.0) == pytest.approx(expected)
    got = _common.shared_softmax(
        torch.tensor(logits, dtype=torch.float64),
        torch.tensor(previous, dtype=torch.float64),
        torch.tensor(share),
        3.0,
    )
    assert got.tolist() == pytest.approx(expected)
    assert _common.shared_softmax([0.0, 0.0], [9.0, 9.0], None, 2.0) == [1.0, 1.0]


def test_check_sum_tolerance_is_relative_to_the_total():
    _common.check_sum([1.0, 1.0, 1.0 + 2e-6], "w", 3.0)  # within 1e-6 x 3
    with pytest.raises(ValueError, match="`w` should add up to 3"):
        _common.check_sum([1.0, 1.0, 1.0 + 4e-6], "w", 3.0)
    _common.check_sum([0.5, 0.5 + 9e-7], "w", 1.0)
    with pytest.raises(ValueError, match="`w` should add up to 1"):
        _common.check_sum([0.5, 0.5 + 2e-6], "w", 1.0)
    _common.check_sum([0.5, 0.75], "w", 1.0, tolerance=0.25)  # exactly at the tolerance
    with pytest.raises(ValueError, match=r"add up to 0\.5"):
        _common.check_sum([0.25, 0.25 + 2e-6], "w", 0.5)  # below 1 the tolerance is absolute
