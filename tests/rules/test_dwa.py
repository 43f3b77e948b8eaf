"""anl.rules.DynamicWeightAverage: Eq. 7 by hand, against the oracle on every path, absent
losses, masking, resume, loading, no sync."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rule_checks import (
    PATHS,
    as_input,
    assert_matches_oracle,
    check_masking,
    check_no_sync,
    check_rejected,
    check_resume,
    fuzz_load,
    make,
    mutations,
    roundtrip,
    run,
    state_keys,
    trajectories,
)

from anl.rules import DynamicWeightAverage
from anl.testing import oracles

NAN = math.nan


def softmax_times(n, logits):
    exps = [math.exp(x) for x in logits]
    return [n * e / sum(exps) for e in exps]


# ----------------------------------------------------------------------------- by hand
# window = 2, T = 2, N = 2. Windows 0 and 1: w = (1, 1).
#   window 0: (4, 2), (2, 2) -> means (3, 2);  window 1: (2, 2), (1, 2) -> means (1.5, 2)
#   step 4, the first of window 2: r = (1.5/3, 2/2) = (1/2, 1), w = 2 softmax(1/4, 1/2):
#     the loss that did not fall (the second) gains. Swapping the ratio (3/1.5, 2/2) would
#     favour the first; updating one step early would change step 3's weights.
#   window 2: (1, 1), (1, 1/2) -> means (1, 3/4)
#   step 6: r = (1/1.5, 0.75/2) = (2/3, 3/8), w = 2 softmax(1/3, 3/16)
WINDOWED = [[4.0, 2.0], [2.0, 2.0], [2.0, 2.0], [1.0, 2.0], [1.0, 1.0], [1.0, 0.5], [3.0, 1.0]]
W2 = softmax_times(2, [0.25, 0.5])
W3 = softmax_times(2, [1 / 3, 3 / 16])
WINDOWED_EXPECTED = [[1.0, 1.0]] * 4 + [W2, W2, W3]
# window = 1, T = 1, N = 3: w(2) from L(1)/L(0), w(3) from L(2)/L(1).
#   L = (1, 2, 4), (2, 2, 2), (2, 1, 4), (1, 1, 1)
#   w(2) = 3 softmax(2, 1, 1/2);  w(3) = 3 softmax(1, 1/2, 2)
STEPWISE = [[1.0, 2.0, 4.0], [2.0, 2.0, 2.0], [2.0, 1.0, 4.0], [1.0, 1.0, 1.0]]
STEPWISE_EXPECTED = [
    [1.0] * 3,
    [1.0] * 3,
    softmax_times(3, [2.0, 1.0, 0.5]),
    softmax_times(3, [1.0, 0.5, 2.0]),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("trajectory", "kwargs", "expected"),
    [
        (WINDOWED, {"window": 2}, WINDOWED_EXPECTED),
        (STEPWISE, {"temperature": 1.0}, STEPWISE_EXPECTED),
    ],
)
def test_hand_computed_weights(path, trajectory, kwargs, expected):
    dwa = make(DynamicWeightAverage, path, len(trajectory[0]), **kwargs)
    tolerance = 1e-6 if path == "float32" else 1e-15
    for losses, want in zip(trajectory, expected, strict=True):
        total = dwa.step(as_input(path, losses))
        np.testing.assert_allclose(dwa.weights, want, rtol=0, atol=tolerance)
        assert float(total) == pytest.approx(float(np.dot(want, losses)), rel=1e-6)
    assert W2[1] > W2[0]


@pytest.mark.parametrize("path", PATHS)
def test_absent_losses_keep_their_weight_and_skip_their_window_mean(path):
    # window 2, T = 2, N = 3. Loss c is absent for all of window 1: no mean there, so its
    # ratio is undefined at the starts of windows 2 and 3; it keeps w = 1, and a, b share
    # M = 2 by Eq. 7 over themselves.
    #   window 0: means (2, 2, 2); window 1: (1, 2, -)
    #   step 4: r_ab = (1/2, 1) -> (w_a, w_b) = 2 softmax(1/4, 1/2), w_c = 1
    #   window 2: (1, 1, 3), (1, -, 3) -> means (1, 1, 3) (b's over its one value)
    #   step 6: r_ab = (1/1, 1/2), M = w_a + w_b = 2 -> 2 softmax(1/2, 1/4), w_c = 1
    #   window 3: means (2, 2, 3); step 8: r = (2, 2, 1) for all -> 3 softmax(1, 1, 1/2)
    dwa = make(DynamicWeightAverage, path, ["a", "b", "c"], window=2)
    rows = [
        [2.0, 2.0, 2.0],
        [2.0, 2.0, 2.0],
        [1.0, 2.0, NAN],
        [1.0, 2.0, NAN],
        [1.0, 1.0, 3.0],
        [1.0, NAN, 3.0],
        [2.0, 2.0, 3.0],
        [2.0, 2.0, 3.0],
        [1.0, 1.0, 1.0],
    ]
    weights = run(dwa, path, rows)
    tolerance = 1e-6 if path == "float32" else 1e-15
    np.testing.assert_allclose(weights[:4], 1.0, atol=tolerance)
    np.testing.assert_allclose(weights[4], [*softmax_times(2, [0.25, 0.5]), 1.0], atol=tolerance)
    np.testing.assert_allclose(weights[6], [*softmax_times(2, [0.5, 0.25]), 1.0], atol=tolerance)
    np.testing.assert_allclose(weights[8], softmax_times(3, [1.0, 1.0, 0.5]), atol=tolerance)
    np.testing.assert_allclose(weights.sum(axis=1), 3.0, atol=1e-5)
    # The total sums the present losses, not renormalised.
    again = make(DynamicWeightAverage, path, ["a", "b", "c"], window=2)
    for row in rows[:2]:
        again.step(as_input(path, row))
    assert float(again.step(as_input(path, [1.0, 2.0, NAN]))) == pytest.approx(3.0)


@pytest.mark.parametrize("path", ["host", "device"])
def test_zero_and_overflowing_ratios(path):
    # A window mean of 0 cannot be a denominator: that loss keeps its weight.
    #   L = (1, 1), (0, 1), (0, 1), (1, 1): w(2): r = (0/1, 1) -> 2 softmax(0, 1/2)
    #   w(3): r_a = 0/0 undefined, so a keeps w_a and b keeps M = w_b: unchanged.
    dwa = make(DynamicWeightAverage, path, 2)
    weights = run(dwa, path, [[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(weights[2], softmax_times(2, [0.0, 0.5]), rtol=1e-15)
    np.testing.assert_array_equal(weights[3], weights[2])
    # A ratio that overflows to +inf takes all the weight (the limit of Eq. 7).
    huge = make(DynamicWeightAverage, path, 2)
    weights = run(huge, path, [[1.0, 1.0], [1e-300, 1.0], [1e300, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(weights[3], [2.0, 0.0])


# ----------------------------------------------------------------------------- the oracle
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trajectories(max_length=16),
    st.one_of(st.just(2.0), st.floats(0.2, 5.0)),
    st.integers(1, 4),
    st.sampled_from(PATHS),
)
def test_weights_match_the_oracle(trajectory, temperature, window, path):
    n = len(trajectory[0])
    dwa = make(DynamicWeightAverage, path, n, temperature=temperature, window=window)
    expected = oracles.dwa_weights(trajectory, temperature=temperature, window=window)
    assert_matches_oracle(run(dwa, path, trajectory), expected, path)


def test_the_oracle_check_is_not_vacuous(monkeypatch):
    """A DWA whose ratio is inverted fails the oracle comparison."""
    trajectory = [[4.0, 2.0], [2.0, 2.0], [1.0, 2.0], [1.0, 1.0]]
    original = oracles.dwa_weights(trajectory)
    inverted = oracles.dwa_weights([[1 / v for v in row] for row in trajectory])
    assert not np.allclose(original, inverted)
    got = run(make(DynamicWeightAverage, "host", 2), "host", trajectory)
    assert_matches_oracle(got, original, "host")
    with pytest.raises(AssertionError):
        assert_matches_oracle(got, inverted, "host")


# ----------------------------------------------------------------------------- guarantees
TRAJECTORY = np.random.default_rng(3).uniform(0.2, 5.0, size=(30, 3)).tolist()


def factory(path, **kwargs):
    return make(DynamicWeightAverage, path, ["a", "b", "c"], window=4, temperature=1.5, **kwargs)


@pytest.mark.parametrize("path", PATHS)
def test_masked_steps_change_nothing_and_strict_raises(path):
    check_masking(factory, path, TRAJECTORY[:10], [NAN, 1.0, 1.0])
    check_masking(factory, path, TRAJECTORY[:9], [1.0, -1.0, 1.0])


@pytest.mark.parametrize("path", PATHS)
def test_resume_is_bit_identical(path):
    check_resume(factory, path, TRAJECTORY, split=13)  # mid-window


def test_the_device_path_never_reads_a_tensor_back():
    check_no_sync(DynamicWeightAverage(4, window=2), 4)
    check_no_sync(DynamicWeightAverage(3, dtype=torch.float32), 3)


def test_saved_hyperparameters_replace_the_new_objects():
    saved = DynamicWeightAverage(["a", "b"], temperature=0.5, window=3)
    for row in TRAJECTORY[:7]:
        saved.step(row[:2])
    resumed = DynamicWeightAverage(["a", "b"])
    resumed.load_state_dict(roundtrip(saved.state_dict()))
    assert (resumed.temperature, resumed.window) == (0.5, 3)
    for rule in (saved, resumed):
        rule.step([1.0, 2.0])
    assert torch.equal(saved.weights, resumed.weights)


def _set_state(key, value):
    def corrupt(state_dict):
        state_dict["state"][key] = value
        return state_dict

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_set_state("weights", torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)), "add up to 3"),
        (_set_state("window_counts", torch.tensor([9.0, 0.0, 0.0])), "window_counts"),
        (_set_state("window_counts", torch.tensor([0.5, 0.0, 0.0])), "whole numbers"),
        (_set_state("older_means", torch.tensor([-1.0, 0.0, 0.0])), "older_means"),
        (_set_state("window_means", torch.tensor([-1.0, 0.0, 0.0])), "non-negative"),
        (_set_state("window_steps", torch.tensor(-1)), ">= 0"),
        (_set_state("has_older", torch.tensor([1.0, 0.0, 0.0])), "bool"),
        (_set_state("previous_means", torch.zeros(2, dtype=torch.float64)), "shape"),
        (lambda sd: {**sd, "hyperparameters": {**sd["hyperparameters"], "window": 0}}, "window"),
        (
            lambda sd: {**sd, "hyperparameters": {**sd["hyperparameters"], "temperature": -2.0}},
            "temperature",
        ),
    ],
)
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, match):
    check_rejected(factory, TRAJECTORY[:6], corrupt, match)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_load_state_dict(data):
    keys = state_keys(factory("host"))
    edits = data.draw(mutations(keys))

    def check(weights):
        assert abs(float(weights.sum()) - 3.0) < 1e-5

    fuzz_load(factory, TRAJECTORY[:6], edits, check)


# ----------------------------------------------------------------------------- interface
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "`temperature` should be a finite number > 0"),
        ({"temperature": -1.0}, "`temperature`"),
        ({"temperature": math.inf}, "`temperature`"),
        ({"temperature": True}, "`temperature`"),
        ({"temperature": "2"}, "`temperature`"),
        ({"window": 0}, r"`window` should be an int in \[1, "),
        ({"window": 1.5}, "`window`"),
        ({"window": True}, "`window`"),
        ({"window": 2**24 + 1}, "`window`"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicWeightAverage(2, **kwargs)


def test_hyperparameters_are_settable_and_a_shorter_window_ends_at_the_next_step():
    dwa = DynamicWeightAverage(["a", "b"], window=10)
    for row in ([4.0, 2.0], [2.0, 2.0], [2.0, 2.0]):
        dwa.step(row)
    dwa.window = 1  # window 0 (3 steps) ends now: means (8/3, 2)
    dwa.step([1.0, 2.0])  # window 1 = this step
    dwa.temperature = 1.0
    dwa.step([1.0, 1.0])  # r = (1 / (8/3), 2/2)
    np.testing.assert_allclose(dwa.weights, softmax_times(2, [3 / 8, 1.0]), rtol=1e-15)
    with pytest.raises(ValueError, match="window"):
        dwa.window = 0
    assert dwa.window == 1
    assert repr(dwa) == "DynamicWeightAverage(['a', 'b'], temperature=1.0, window=1)"
