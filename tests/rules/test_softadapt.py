"""anl.rules.SoftAdapt: the three variants and the finite differences by hand, against the
oracle on every path, absent losses, extremes, masking, resume, loading, no sync."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rule_checks import (
    PATHS,
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

from anl.rules import SoftAdapt
from anl.rules.softadapt import STENCILS
from anl.testing import oracles

NAN = math.nan


def softmax(logits, factors=None):
    """softmax(logits), or factors * exp(logits) normalised (the loss-weighted form)."""
    factors = [1.0] * len(logits) if factors is None else factors
    exps = [f * math.exp(x) for x, f in zip(logits, factors, strict=True)]
    return [e / sum(exps) for e in exps]


# ----------------------------------------------------------------------------- by hand
# beta = 1, L = (2, 2), (1, 3): s = L(1) - L(0) = (-1, 1); uniform at step 0 (no rate yet).
#   original:      softmax(-1, 1): the rising loss gains (a swapped difference would not)
#   normalized:    s / (|-1| + |1|) = (-1/2, 1/2): softmax(-1/2, 1/2)
#   loss weighted: f = mean of (L(0), L(1)) = (3/2, 5/2): (3/2 e^-1, 5/2 e^1) / sum
# order 2, beta = 0.1: L_a = 1, 4, 9 (t^2 at t = 1, 2, 3), L_b = 5, 5, 5:
#   s = (3/2 * 9 - 2 * 4 + 1/2 * 1, 0) = (6, 0): the slope at t = 3 (a forward stencil, the
#   slope at t = 1, would give 2); w = softmax(0.6, 0); uniform for the first two steps.
# order 3, beta = 0.01: L_a = t^3 at t = 1..4, L_b = 1: s_a = 3 * 4^2 = 48 exactly.
HAND_CASES = [
    ({"beta": 1.0}, [[2.0, 2.0], [1.0, 3.0]], softmax([-1.0, 1.0])),
    ({"beta": 1.0, "variant": "normalized"}, [[2.0, 2.0], [1.0, 3.0]], softmax([-0.5, 0.5])),
    (
        {"beta": 1.0, "variant": "loss_weighted"},
        [[2.0, 2.0], [1.0, 3.0]],
        softmax([-1.0, 1.0], [1.5, 2.5]),
    ),
    ({"order": 2}, [[1.0, 5.0], [4.0, 5.0], [9.0, 5.0]], softmax([0.6, 0.0])),
    (
        {"order": 3, "beta": 0.01},
        [[1.0, 1.0], [8.0, 1.0], [27.0, 1.0], [64.0, 1.0]],
        softmax([0.48, 0.0]),
    ),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("kwargs", "trajectory", "expected"), HAND_CASES)
def test_hand_computed_weights(path, kwargs, trajectory, expected):
    softadapt = make(SoftAdapt, path, 2, **kwargs)
    weights = run(softadapt, path, trajectory)
    tolerance = 1e-6 if path == "float32" else 1e-14
    np.testing.assert_allclose(weights[:-1], 0.5, atol=tolerance)  # no rate yet: uniform
    np.testing.assert_allclose(weights[-1], expected, atol=tolerance)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("order", sorted(STENCILS))
@pytest.mark.parametrize("variant", ["original", "normalized", "loss_weighted"])
def test_flat_losses_have_a_rate_of_exactly_zero(path, order, variant):
    """Losses that did not change have rate 0 exactly, not rounding noise that the normalised
    variant would blow up to +-1 (2 x 11/6 - 3 x 2 + ... is not 0 in floating point)."""
    softadapt = make(SoftAdapt, path, 3, order=order, variant=variant)
    weights = run(softadapt, path, [[2.0, 1.0, 3.0]] * (order + 2))
    expected = [1 / 3] * 3 if variant != "loss_weighted" else [2 / 6, 1 / 6, 3 / 6]
    tolerance = 1e-6 if path == "float32" else 1e-15
    np.testing.assert_allclose(weights[-1], expected, atol=tolerance)


def test_the_stencils_are_the_backward_differences():
    for order, coefficients in STENCILS.items():
        np.testing.assert_allclose(coefficients, oracles.backward_difference(order), atol=1e-13)
        t = np.arange(10.0, 10.0 - order - 1, -1.0)  # t, t-1, ...: exact up to degree p
        for degree in range(order + 1):
            assert np.dot(coefficients, t**degree) == pytest.approx(degree * 10.0 ** (degree - 1))


@pytest.mark.parametrize("path", ["host", "device"])
def test_beta_signs(path):
    rows = [[2.0, 2.0], [1.0, 3.0]]
    assert run(make(SoftAdapt, path, 2, beta=0.0), path, rows)[-1].tolist() == [0.5, 0.5]
    falling = run(make(SoftAdapt, path, 2, beta=-1.0), path, rows)[-1]
    np.testing.assert_allclose(falling, softmax([1.0, -1.0]), rtol=1e-14)


@pytest.mark.parametrize("path", PATHS)
def test_absent_losses_keep_their_weight_and_rates_use_each_losss_own_values(path):
    # beta = 1, order 1, N = 3. Step 1: b absent, so a and c (rates -1 and +1) share the
    # mass they held, 2/3: (w_a, w_c) = 2/3 softmax(-1, 1), w_b = 1/3.
    # Step 2: b's rate is over its own last two values (2 at step 0, 4 now): s = (0, 2, -1).
    softadapt = make(SoftAdapt, path, ["a", "b", "c"], beta=1.0)
    weights = run(softadapt, path, [[2.0, 2.0, 2.0], [1.0, NAN, 3.0], [1.0, 4.0, 2.0]])
    tolerance = 1e-6 if path == "float32" else 1e-15
    ac = softmax([-1.0, 1.0])
    np.testing.assert_allclose(weights[1], [2 / 3 * ac[0], 1 / 3, 2 / 3 * ac[1]], atol=tolerance)
    np.testing.assert_allclose(weights[2], softmax([0.0, 2.0, -1.0]), atol=tolerance)


@pytest.mark.parametrize("path", ["host", "device"])
@pytest.mark.parametrize("variant", ["original", "normalized", "loss_weighted"])
def test_extreme_losses_keep_finite_weights(path, variant):
    softadapt = make(SoftAdapt, path, 3, beta=1.0, variant=variant, order=5)
    rows = [[1e307 * (k % 3 + 1), 1e-300, 1.0] for k in range(7)]
    weights = run(softadapt, path, rows)
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    zeros = make(SoftAdapt, path, 2, beta=1.0, variant=variant)  # s = 0, f = 0: uniform
    np.testing.assert_allclose(run(zeros, path, [[1.0, 1.0]] + [[0.0, 0.0]] * 3)[-1], [0.5, 0.5])


def test_order_can_change_mid_run():
    softadapt = SoftAdapt(2, beta=0.1, order=1)
    for row in [[1.0, 5.0], [4.0, 5.0], [9.0, 5.0]]:
        softadapt.step(row)
    softadapt.order = 2  # the six kept values already hold what order 2 needs
    softadapt.step([16.0, 5.0])  # s_a = 3/2 * 16 - 2 * 9 + 1/2 * 4 = 8
    np.testing.assert_allclose(softadapt.weights, softmax([0.8, 0.0]), rtol=1e-14)


# ----------------------------------------------------------------------------- the oracle
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trajectories(max_length=12),
    st.one_of(st.just(0.1), st.floats(-2.0, 2.0)),
    st.sampled_from(["original", "normalized", "loss_weighted"]),
    st.integers(1, 5),
    st.sampled_from(PATHS),
)
def test_weights_match_the_oracle(trajectory, beta, variant, order, path):
    softadapt = make(SoftAdapt, path, len(trajectory[0]), beta=beta, variant=variant, order=order)
    expected = oracles.softadapt_weights(trajectory, beta=beta, variant=variant, order=order)
    assert_matches_oracle(run(softadapt, path, trajectory), expected, path)


# ----------------------------------------------------------------------------- guarantees
TRAJECTORY = np.random.default_rng(9).uniform(0.2, 5.0, size=(20, 3)).tolist()


def factory(path, **kwargs):
    return make(
        SoftAdapt, path, ["a", "b", "c"], beta=0.5, variant="loss_weighted", order=3, **kwargs
    )


@pytest.mark.parametrize("path", PATHS)
def test_masked_steps_change_nothing_and_strict_raises(path):
    check_masking(factory, path, TRAJECTORY[:7], [1.0, NAN, 1.0])


@pytest.mark.parametrize("path", PATHS)
def test_resume_is_bit_identical(path):
    check_resume(factory, path, TRAJECTORY, split=10)


def test_the_device_path_never_reads_a_tensor_back():
    for variant in ("original", "normalized", "loss_weighted"):
        check_no_sync(SoftAdapt(4, variant=variant, order=2), 4)
    check_no_sync(SoftAdapt(3, dtype=torch.float32), 3)


def test_saved_hyperparameters_replace_the_new_objects():
    saved = SoftAdapt(["a", "b"], beta=2.0, variant="normalized", order=4)
    for row in TRAJECTORY[:6]:
        saved.step(row[:2])
    resumed = SoftAdapt(["a", "b"])
    resumed.load_state_dict(roundtrip(saved.state_dict()))
    assert (resumed.beta, resumed.variant, resumed.order) == (2.0, "normalized", 4)
    for rule in (saved, resumed):
        rule.step([1.0, 2.0])
    assert torch.equal(saved.weights, resumed.weights)


def _with(section, key, value):
    def corrupt(state_dict):
        state_dict[section][key] = value
        return state_dict

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (
            _with("state", "weights", torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)),
            "add up to 1",
        ),
        (_with("state", "num_recent", torch.tensor([7.0, 0.0, 0.0])), "num_recent"),
        (_with("state", "num_recent", torch.tensor([1.5, 0.0, 0.0])), "whole numbers"),
        (_with("state", "recent_losses", -torch.ones(6, 3, dtype=torch.float64)), "non-negative"),
        (_with("state", "recent_losses", torch.ones(4, 3, dtype=torch.float64)), r"shape \(6, 3\)"),
        (_with("hyperparameters", "variant", "fancy"), "`variant` should be one of"),
        (_with("hyperparameters", "order", 6), "`order`"),
        (_with("hyperparameters", "beta", math.nan), "`beta`"),
    ],
)
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, match):
    check_rejected(factory, TRAJECTORY[:6], corrupt, match)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_load_state_dict(data):
    edits = data.draw(mutations(state_keys(factory("host"))))

    def check(weights):
        assert abs(float(weights.sum()) - 1.0) < 1e-5

    fuzz_load(factory, TRAJECTORY[:6], edits, check)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": math.inf}, "`beta` should be a finite number"),
        ({"beta": "0.1"}, "`beta`"),
        ({"variant": "Original"}, "`variant` should be one of"),
        ({"variant": 1}, "`variant`"),
        ({"order": 0}, r"`order` should be an int in \[1, 5\]"),
        ({"order": 2.0}, "`order`"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftAdapt(2, **kwargs)
