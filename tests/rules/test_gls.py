"""anl.rules.GeometricLossStrategy: the geometric mean and its effective weights by hand,
gradients, against the oracle on every path, zero losses, absent losses, masking, resume,
loading, no sync."""

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
    run,
    state_keys,
    trajectories,
)

from anl.rules import GeometricLossStrategy
from anl.testing import oracles

NAN = math.nan


# ----------------------------------------------------------------------------- by hand
# (4, 1): total sqrt(4 * 1) = 2, w = 2 / (2 * (4, 1)) = (1/4, 1)
# (1, 4, 16): total 64^(1/3) = 4, w = 4 / (3 * (1, 4, 16)) = (4/3, 1/3, 1/12)
# (4, -, 1) after (1, 4, 16): total over the present two = 2, w = (1/4, 1/3 kept, 1)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("rows", "totals", "expected"),
    [
        ([[4.0, 1.0]], [2.0], [[0.25, 1.0]]),
        (
            [[1.0, 4.0, 16.0], [4.0, NAN, 1.0]],
            [4.0, 2.0],
            [[4 / 3, 1 / 3, 1 / 12], [0.25, 1 / 3, 1.0]],
        ),
    ],
)
def test_hand_computed_totals_and_weights(path, rows, totals, expected):
    gls = make(GeometricLossStrategy, path, len(rows[0]))
    n = len(rows[0])
    np.testing.assert_allclose(gls.weights, [1 / n] * n, rtol=1e-7)
    tolerance = 1e-6 if path == "float32" else 1e-15
    for row, total, want in zip(rows, totals, expected, strict=True):
        assert float(gls.step(as_input(path, row))) == pytest.approx(total, rel=1e-15)
        np.testing.assert_allclose(gls.weights, want, rtol=tolerance)


@pytest.mark.parametrize("path", ["host", "device"])
def test_the_gradient_flows_through_the_geometric_mean_and_equals_the_weights(path):
    x = torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    gls = make(GeometricLossStrategy, path, 3)
    total = gls.step([x[0] * 1.0, x[1] ** 2, x[2] * 0.5])  # losses (4, 1, 1): total 4^(1/3)
    total.backward()
    g = 4.0 ** (1 / 3)
    chain = torch.tensor([1.0, 2.0 * 1.0, 0.5], dtype=torch.float64)  # dL_i/dx_i
    np.testing.assert_allclose(gls.weights, [g / 12, g / 3, g / 3], rtol=1e-15)
    np.testing.assert_allclose(x.grad, gls.weights * chain, rtol=1e-15)
    # Second order too: the total is the geometric mean, not a weighted sum.
    y = torch.tensor([4.0, 1.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(gls.combine([y[0], y[1], None]), y, create_graph=True)
    (hessian_00,) = torch.autograd.grad(grad[0], y)
    assert hessian_00[0].item() == pytest.approx(-0.25 * 2.0 / 16.0, rel=1e-14)  # -G/(4 a^2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=6))
def test_autograd_gives_the_effective_weights(values):
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    gls = GeometricLossStrategy(len(values))
    gls.step(list(x.unbind())).backward()
    np.testing.assert_allclose(x.grad, gls.weights, rtol=1e-13)
    np.testing.assert_allclose((gls.weights * x.detach()).sum(), oracles.gls_totals([values])[0])


def test_scaling_a_loss_scales_the_total_by_its_nth_root():
    gls, scaled = GeometricLossStrategy(2), GeometricLossStrategy(2)
    total = gls.step([2.0, 3.0])
    assert scaled.step([2.0 * 16.0, 3.0]) == pytest.approx(4.0 * total, rel=1e-15)
    np.testing.assert_allclose(scaled.weights, gls.weights * torch.tensor([4 / 16, 4.0]))


@pytest.mark.parametrize(
    "dtypes", [(torch.bfloat16, torch.float16), (torch.bfloat16, torch.bfloat16)]
)
def test_low_precision_losses_give_a_float32_total(dtypes):
    x = torch.tensor([2.0, 8.0], requires_grad=True)
    total = GeometricLossStrategy(2).step([x[0].to(dtypes[0]), x[1].to(dtypes[1])])
    assert total.dtype == torch.float32 and total.item() == pytest.approx(4.0)
    total.backward()
    np.testing.assert_allclose(x.grad, [1.0, 0.25], rtol=1e-3)


# ----------------------------------------------------------------------------- the oracle
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trajectories(max_length=10, low=1e-3, high=1e3), st.sampled_from(PATHS))
def test_weights_and_totals_match_the_oracle(trajectory, path):
    gls = make(GeometricLossStrategy, path, len(trajectory[0]))
    totals = []
    weights = []
    for row in trajectory:
        totals.append(float(gls.step(as_input(path, row))))
        weights.append(gls.weights.double().numpy())
    assert_matches_oracle(np.array(weights), oracles.gls_weights(trajectory), path)
    np.testing.assert_allclose(totals, oracles.gls_totals(trajectory), rtol=1e-6)
    if path == "host":  # numbers: a float64 total
        np.testing.assert_allclose(totals, oracles.gls_totals(trajectory), rtol=1e-13)


# ----------------------------------------------------------------------------- zero losses
@pytest.mark.parametrize("path", PATHS)
def test_a_zero_loss_is_invalid(path):
    gls = make(GeometricLossStrategy, path, ["a", "b"])
    gls.step(as_input(path, [1.0, 2.0]))
    weights = gls.weights.clone()
    if path == "host":
        with pytest.raises(ValueError, match="`a` should be positive"):
            gls.step([0.0, 2.0])
    total = gls.step([torch.tensor(0.0, dtype=torch.float64), torch.tensor(2.0)])
    assert float(total) == 0.0  # the geometric mean is 0: skip this optimiser step
    assert torch.equal(gls.weights, weights) and int(gls.num_skipped) == 1
    strict = make(GeometricLossStrategy, path, ["a", "b"], strict=True)
    with pytest.raises(ValueError, match="`b` should be positive"):
        strict.step([torch.tensor(1.0), torch.tensor(0.0)])


def test_combine_uses_no_state_and_handles_zero_and_negative_numbers():
    gls = GeometricLossStrategy(["a", "b", "c"])
    gls.step([1.0, 2.0, 4.0])
    before = gls.state_dict()["state"]["weights"].clone()
    assert gls.combine([2.0, 8.0, None]) == pytest.approx(4.0)
    assert gls.combine({"c": 5.0}) == pytest.approx(5.0)
    assert gls.combine([0.0, 8.0, 1.0]) == 0.0
    assert math.isnan(gls.combine([-1.0, 8.0, 1.0]))
    assert torch.equal(gls.state_dict()["state"]["weights"], before)


@pytest.mark.parametrize("path", ["host", "device"])
def test_an_overflowing_effective_weight_is_stored_as_the_largest_float(path):
    gls = make(GeometricLossStrategy, path, 2)
    gls.step(as_input(path, [1.0, 1.0]))
    gls.step(as_input(path, [5e-324, 1e300]))  # G ~ 2.2e-12, G / (2 * 5e-324) overflows
    assert gls.weights[0].item() == torch.finfo(torch.float64).max
    assert torch.isfinite(gls.weights).all()


# ----------------------------------------------------------------------------- guarantees
TRAJECTORY = np.random.default_rng(7).uniform(0.2, 5.0, size=(20, 3)).tolist()


def factory(path, **kwargs):
    return make(GeometricLossStrategy, path, ["a", "b", "c"], **kwargs)


@pytest.mark.parametrize("path", PATHS)
def test_masked_steps_change_nothing_and_strict_raises(path):
    check_masking(factory, path, TRAJECTORY[:4], [1.0, 1.0, NAN])
    check_masking(factory, path, TRAJECTORY[:4], [1.0, 0.0, 1.0])


@pytest.mark.parametrize("path", PATHS)
def test_resume_is_bit_identical(path):
    check_resume(factory, path, TRAJECTORY, split=9)


def test_the_device_path_never_reads_a_tensor_back():
    check_no_sync(GeometricLossStrategy(4), 4, zero_is_invalid=True)
    check_no_sync(GeometricLossStrategy(3, dtype=torch.float32), 3, zero_is_invalid=True)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda sd: sd["state"].update(weights=torch.tensor([1.0, -1.0, 1.0])) or sd, "non-neg"),
        (lambda sd: sd["hyperparameters"].update(beta=1.0) or sd, r"\['beta'\]"),
        (lambda sd: sd["hyperparameters"].update(rule="SoftAdapt") or sd, "should come from"),
    ],
)
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, match):
    check_rejected(factory, TRAJECTORY[:4], corrupt, match)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_load_state_dict(data):
    edits = data.draw(mutations(state_keys(factory("host"))))

    def check(weights):
        assert (weights >= 0).all()

    fuzz_load(factory, TRAJECTORY[:4], edits, check)


def test_interface():
    gls = GeometricLossStrategy(["a", "b"])
    assert gls.defaults == {} and repr(gls) == "GeometricLossStrategy(['a', 'b'])"
    assert run(gls, "host", [[1.0, 4.0]]).tolist() == [[1.0, 0.25]]
