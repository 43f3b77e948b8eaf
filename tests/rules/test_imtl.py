"""anl.IMTLL: IMTL-L by hand, the float64 oracle on every path, its mirror image in
uncertainty weighting, absent losses, the nn.Module / state-dict contract, masking and
sync-freedom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anl import IMTLL, UncertaintyWeighting
from anl.testing import oracles

try:
    from . import _params_helpers as helpers
except ImportError:
    import _params_helpers as helpers

SPEC = helpers.Spec(
    cls=IMTLL,
    parameter="log_scales",
    initial="initial_log_scales",
    oracle=oracles.reference_imtl_l,
    options=lambda data, n: {},
)


# ----------------------------------------------------------------------------- hand-computed
# SGD with lr = 0.1 on s, s(0) = (0, 0), losses L(0) = (2, 0.5), L(1) = (1, 1), then (4, 0.25).
# total = sum_i e^{s_i} L_i - s_i, weights w = e^s, d total / d s_i = e^{s_i} L_i - 1:
#   w(0) = (1, 1), total(0) = 2 + 0.5 = 2.5, grad = (2 - 1, 0.5 - 1) = (1, -0.5)
#   -> s(1) = (-0.1, 0.05): the larger loss is scaled down, the smaller up;
#   w(1) = (e^-0.1, e^0.05), total(1) = e^-0.1 + 0.1 + e^0.05 - 0.05,
#   grad = (e^-0.1 - 1, e^0.05 - 1) -> s(2) = s(1) - 0.1 grad,
#   w(2) = e^{s(2)}, total(2) = 4 e^{s_0(2)} - s_0(2) + 0.25 e^{s_1(2)} - s_1(2).
S1 = [-0.1, 0.05]
S2 = [S1[0] - 0.1 * (math.exp(S1[0]) - 1), S1[1] - 0.1 * (math.exp(S1[1]) - 1)]
HAND = [
    ([2.0, 0.5], [1.0, 1.0], 2.5),
    ([1.0, 1.0], [math.exp(-0.1), math.exp(0.05)], math.exp(-0.1) + 0.1 + math.exp(0.05) - 0.05),
    (
        [4.0, 0.25],
        [math.exp(S2[0]), math.exp(S2[1])],
        4 * math.exp(S2[0]) - S2[0] + 0.25 * math.exp(S2[1]) - S2[1],
    ),
]


@pytest.mark.parametrize("path", helpers.PATHS)
def test_hand_computed_sgd_steps(path):
    weighting = SPEC.make(path, ["depth", "seg"])
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.1)
    tolerance = 1e-6 if path == "float32" else 1e-15
    for t, (losses, weights, total_value) in enumerate(HAND):
        optimizer.zero_grad()
        total = weighting.step(helpers.tensors(losses, helpers.dtype_of(path)))
        np.testing.assert_allclose(weighting.weights, weights, rtol=tolerance)
        assert float(total.detach()) == pytest.approx(total_value, rel=tolerance)
        total.backward()
        optimizer.step()
        if t == 0:
            np.testing.assert_allclose(weighting.log_scales.detach(), S1, atol=tolerance)


# ----------------------------------------------------------------------------- the oracle
@settings(max_examples=40, deadline=None)
@given(st.data())
@pytest.mark.parametrize("path", ["host", "device"])
def test_trajectories_match_the_float64_oracle(path, data):
    helpers.check_matches_oracle(SPEC, data, path)


@settings(max_examples=25, deadline=None)
@given(helpers.masked_trajectories(), st.floats(1e-3, 0.3), st.floats(-1.0, 1.0))
def test_imtl_l_is_plain_uncertainty_weighting_mirrored(masked, lr, start):
    """With s -> -s, IMTL-L's SGD trajectory is uncertainty weighting's plain one, with the
    same weights and totals (so the same model updates)."""
    trajectory, present = masked
    n = len(trajectory[0])
    imtl = helpers.run_sgd(IMTLL(n, initial_log_scales=start), trajectory, present, lr)
    uw = helpers.run_sgd(UncertaintyWeighting(n, initial_log_vars=-start), trajectory, present, lr)
    np.testing.assert_allclose(imtl["parameters"], -uw["parameters"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(imtl["weights"], uw["weights"], rtol=1e-12)
    np.testing.assert_allclose(imtl["totals"], uw["totals"], rtol=1e-12, atol=1e-15)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0.05, 20.0), min_size=1, max_size=4))
def test_constant_losses_drive_every_scaled_loss_to_one(losses):
    weighting = IMTLL(len(losses))
    helpers.run_sgd(weighting, [losses] * 100, [[True] * len(losses)] * 100, lr=0.5)
    weighting.step(helpers.tensors(losses))
    np.testing.assert_allclose(weighting.weights * torch.tensor(losses), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("path", helpers.PATHS)
def test_absent_loss_gets_zero_gradient(path):
    helpers.check_absent_loss_gets_zero_gradient(SPEC, path)


def test_absent_loss_by_hand():
    # s = (0.3, -0.2), only b = 2 given: total = e^-0.2 * 2 + 0.2 (no term of a at all).
    weighting = IMTLL(["a", "b"], initial_log_scales=[0.3, -0.2])
    total = weighting.step([None, torch.tensor(2.0, dtype=torch.float64)])
    assert total.item() == pytest.approx(2 * math.exp(-0.2) + 0.2, rel=1e-15)


@pytest.mark.parametrize("path", helpers.PATHS)
def test_gradients_reach_model_and_parameter(path):
    helpers.check_gradients_reach_model_and_parameter(SPEC, path)


# ----------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("path", helpers.PATHS)
@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 0.05})],
)
def test_resume_is_bit_identical(path, optimizer, kwargs):
    helpers.check_resume_bit_identical(SPEC, path, optimizer, **kwargs)


def test_submodule_state_dict():
    helpers.check_submodule_state_dict(SPEC)


def test_submodule_load_is_all_or_nothing():
    helpers.check_submodule_load_is_all_or_nothing(SPEC)


@pytest.mark.parametrize(("corrupt", "error", "match"), helpers.bad_state_dicts(SPEC))
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, error, match):
    helpers.check_bad_state_dict(SPEC, corrupt, error, match)


def test_load_keeps_the_optimisers_parameter():
    helpers.check_load_keeps_the_optimisers_parameter(SPEC)


def test_an_uncertainty_state_dict_is_not_an_imtl_one():
    with pytest.raises(ValueError, match="should come from a IMTLL"):
        IMTLL(2).load_state_dict(UncertaintyWeighting(2).state_dict())


# ----------------------------------------------------------------------------- masking, syncs
@pytest.mark.parametrize("path", helpers.PATHS)
def test_masking_keeps_state(path):
    helpers.check_masking_keeps_state(SPEC, path)


def test_device_path_never_syncs():
    helpers.check_device_path_never_syncs(SPEC)


def test_losses_on_another_device_are_refused_first():
    helpers.check_other_device_is_refused_first(SPEC)


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_log_scales": math.inf}, {"initial_log_scales": [0.0]}, {"strict": "yes"}],
)
def test_bad_constructor_arguments(kwargs):
    with pytest.raises((ValueError, TypeError)):
        IMTLL(2, **kwargs)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(helpers.state_dict_edits(SPEC))
def test_fuzz_load_state_dict_is_a_clear_error_with_state_unchanged_or_a_valid_state(edits):
    helpers.check_fuzz_load(SPEC, edits)
