"""anl.UncertaintyWeighting: the three likelihood forms by hand, the float64 oracle on every
path, absent losses, the nn.Module / state-dict contract, masking and sync-freedom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anl import UncertaintyWeighting
from anl.testing import oracles

try:
    from . import _params_helpers as helpers
except ImportError:
    import _params_helpers as helpers

SPEC = helpers.Spec(
    cls=UncertaintyWeighting,
    parameter="log_vars",
    initial="initial_log_vars",
    oracle=oracles.reference_uncertainty_weighting,
    options=lambda data, n: {
        "likelihoods": data.draw(
            st.lists(st.sampled_from(["plain", "gaussian", "softmax"]), min_size=n, max_size=n)
        )
    },
)

# ----------------------------------------------------------------------------- hand-computed
# SGD with lr = 0.1 on s, s(0) = (0, 0), losses L(0) = (2, 0.5), L(1) = (1, 1). With
# total = sum_i a_i e^{-s_i} L_i + b_i s_i, the weights are w = a e^{-s} and
# d total / d s_i = b_i - a_i e^{-s_i} L_i.
#   plain (a, b) = (1, 1):  w(0) = (1, 1), total(0) = 2 + 0.5 = 2.5,
#       grad = (1 - 2, 1 - 0.5) = (-1, 0.5) -> s(1) = (0.1, -0.05),
#       w(1) = (e^-0.1, e^0.05), total(1) = e^-0.1 + 0.1 + e^0.05 - 0.05.
#   gaussian (1/2, 1/2):    w(0) = (1/2, 1/2), total(0) = 1 + 0.25 = 1.25,
#       grad = (1/2 - 1, 1/2 - 1/4) = (-0.5, 0.25) -> s(1) = (0.05, -0.025),
#       w(1) = (e^-0.05 / 2, e^0.025 / 2), total(1) = w(1).(1, 1) + (0.05 - 0.025) / 2.
#   softmax (1, 1/2):       w(0) = (1, 1), total(0) = 2.5,
#       grad = (1/2 - 2, 1/2 - 1/2) = (-1.5, 0) -> s(1) = (0.15, 0),
#       w(1) = (e^-0.15, 1), total(1) = e^-0.15 + 0.075 + 1.
#   [gaussian, softmax]:    w(0) = (1/2, 1), total(0) = 1 + 0.5 = 1.5,
#       grad = (1/2 - 1, 1/2 - 1/2) = (-0.5, 0) -> s(1) = (0.05, 0),
#       w(1) = (e^-0.05 / 2, 1), total(1) = e^-0.05 / 2 + 0.025 + 1.
# A missing 1/2, a factor on the wrong term or a flipped sign changes these numbers.
E = math.exp
HAND_CASES = [
    ("plain", [[1, 1], [E(-0.1), E(0.05)]], [2.5, E(-0.1) + 0.1 + E(0.05) - 0.05], [0.1, -0.05]),
    (
        "gaussian",
        [[0.5, 0.5], [E(-0.05) / 2, E(0.025) / 2]],
        [1.25, E(-0.05) / 2 + E(0.025) / 2 + (0.05 - 0.025) / 2],
        [0.05, -0.025],
    ),
    ("softmax", [[1, 1], [E(-0.15), 1]], [2.5, E(-0.15) + 0.075 + 1], [0.15, 0.0]),
    (
        ["gaussian", "softmax"],
        [[0.5, 1], [E(-0.05) / 2, 1]],
        [1.5, E(-0.05) / 2 + 0.025 + 1],
        [0.05, 0.0],
    ),
]


@pytest.mark.parametrize("path", helpers.PATHS)
@pytest.mark.parametrize(("likelihoods", "weights", "totals", "after_one"), HAND_CASES)
def test_hand_computed_sgd_steps(path, likelihoods, weights, totals, after_one):
    weighting = SPEC.make(path, ["depth", "seg"], likelihoods=likelihoods)
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.1)
    tolerance = 1e-6 if path == "float32" else 1e-15
    dtype = helpers.dtype_of(path)
    for t, losses in enumerate([[2.0, 0.5], [1.0, 1.0]]):
        optimizer.zero_grad()
        total = weighting.step(helpers.tensors(losses, dtype))
        np.testing.assert_allclose(weighting.weights, weights[t], rtol=tolerance)
        assert float(total.detach()) == pytest.approx(totals[t], rel=tolerance)
        total.backward()
        optimizer.step()
        if t == 0:
            np.testing.assert_allclose(weighting.log_vars.detach(), after_one, atol=tolerance)


# ----------------------------------------------------------------------------- the oracle
@settings(max_examples=40, deadline=None)
@given(st.data())
@pytest.mark.parametrize("path", ["host", "device"])
def test_trajectories_match_the_float64_oracle(path, data):
    helpers.check_matches_oracle(SPEC, data, path)


def test_the_oracle_catches_a_missing_half():
    """The comparison is not vacuous: the plain and Gaussian forms differ."""
    trajectory, present = [[2.0, 0.5], [1.0, 1.0]], [[True, True]] * 2
    weighting = UncertaintyWeighting(2, likelihoods="gaussian")
    got = helpers.run_sgd(weighting, trajectory, present, lr=0.1)
    plain = oracles.reference_uncertainty_weighting(trajectory, lr=0.1, present=present)
    assert not np.allclose(got["parameters"], plain["parameters"])


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.floats(0.05, 20.0), min_size=1, max_size=4),
    st.sampled_from(["plain", "gaussian", "softmax"]),
)
def test_constant_losses_drive_the_weights_to_b_over_l(losses, likelihood):
    """The minimiser in s of a e^{-s} L + b s is a e^{-s} = b / L: SGD gets there."""
    weighting = UncertaintyWeighting(len(losses), likelihoods=likelihood)
    helpers.run_sgd(weighting, [losses] * 100, [[True] * len(losses)] * 100, lr=0.5)
    b = oracles.LIKELIHOOD_FACTORS[likelihood][1]
    weighting.step(helpers.tensors(losses))
    np.testing.assert_allclose(weighting.weights, b / np.asarray(losses), rtol=1e-6)


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("path", helpers.PATHS)
def test_absent_loss_gets_zero_gradient(path):
    helpers.check_absent_loss_gets_zero_gradient(SPEC, path)


def test_absent_loss_by_hand():
    # s = (0.3, -0.2), only a = 2 given: total = e^-0.3 * 2 + 0.3 (no term of b at all).
    weighting = UncertaintyWeighting(["a", "b"], initial_log_vars=[0.3, -0.2])
    total = weighting.step({"a": torch.tensor(2.0, dtype=torch.float64), "b": None})
    assert total.item() == pytest.approx(2 * math.exp(-0.3) + 0.3, rel=1e-15)
    assert weighting.combine({"a": 2.0}) == pytest.approx(2 * math.exp(-0.3) + 0.3, rel=1e-15)


@pytest.mark.parametrize("path", helpers.PATHS)
def test_gradients_reach_model_and_parameter(path):
    helpers.check_gradients_reach_model_and_parameter(SPEC, path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_losses_give_a_float32_total(dtype):
    # s = 0, plain: total = 2 + 0.5 in float32 (as the sum of float32 losses would be), the
    # gradient e^{-s} = 1 into each loss.
    x = torch.tensor([2.0, 0.5], requires_grad=True)
    total = UncertaintyWeighting(2).step([x[0].to(dtype), x[1].to(dtype)])
    assert total.dtype == torch.float32 and total.item() == 2.5
    total.backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_numbers_give_a_float_total_and_forward_is_step():
    weighting = UncertaintyWeighting(2, likelihoods="gaussian")
    assert weighting.step([2.0, 0.5]) == pytest.approx(1.25)
    total = weighting(helpers.tensors([2.0, 0.5]))  # nn.Module call
    assert isinstance(total, torch.Tensor) and total.item() == pytest.approx(1.25)
    assert int(weighting.num_steps) == 2
    assert weighting.likelihoods == ["gaussian", "gaussian"]


@pytest.mark.parametrize("path", ["host", "device"])
def test_weights_saturate_instead_of_overflowing(path):
    weighting = SPEC.make(path, 2)
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([-800.0, 0.0]))
    weighting.step(helpers.tensors([1.0, 1.0]))
    assert weighting.weights.tolist() == [torch.finfo(torch.float64).max, 1.0]
    UncertaintyWeighting(2).load_state_dict(weighting.state_dict())  # still a valid state


# ----------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("path", helpers.PATHS)
@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 0.05})],
)
def test_resume_is_bit_identical(path, optimizer, kwargs):
    helpers.check_resume_bit_identical(SPEC, path, optimizer, **kwargs)


def test_hyperparameters_come_from_the_state_dict():
    saved = UncertaintyWeighting(["a", "b"], likelihoods=["gaussian", "softmax"]).state_dict()
    resumed = UncertaintyWeighting(["a", "b"])
    resumed.load_state_dict(saved)
    assert resumed.likelihoods == ["gaussian", "softmax"]
    assert resumed.step([2.0, 0.5]) == pytest.approx(0.5 * 2 + 0.5)


@pytest.mark.parametrize("path", helpers.PATHS)
def test_the_total_follows_likelihoods_changed_after_a_step(path):
    # The factors (a_i, b_i) are cached between steps: a loaded state dict or an edited
    # `defaults` must reach both the weights and the total, not the factors of the first step.
    weighting = SPEC.make(path, ["a", "b"])  # plain: (a, b) = (1, 1)
    assert float(weighting.step(helpers.tensors([2.0, 0.5]))) == pytest.approx(2.5, rel=1e-12)
    saved = UncertaintyWeighting(["a", "b"], likelihoods=["gaussian", "softmax"]).state_dict()
    weighting.load_state_dict(saved)  # s = 0: w = (1/2, 1), total = 2 / 2 + 0.5
    assert float(weighting.step(helpers.tensors([2.0, 0.5]))) == pytest.approx(1.5, rel=1e-12)
    assert weighting.weights.tolist() == [0.5, 1.0]
    weighting.defaults["likelihoods"][1] = "gaussian"  # edited in place: w = (1/2, 1/2)
    assert float(weighting.step(helpers.tensors([2.0, 0.5]))) == pytest.approx(1.25, rel=1e-12)
    assert weighting.weights.tolist() == [0.5, 0.5]


def test_submodule_state_dict():
    helpers.check_submodule_state_dict(SPEC)


def test_submodule_load_is_all_or_nothing():
    helpers.check_submodule_load_is_all_or_nothing(SPEC)


@pytest.mark.parametrize(("corrupt", "error", "match"), helpers.bad_state_dicts(SPEC))
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, error, match):
    helpers.check_bad_state_dict(SPEC, corrupt, error, match)


def test_a_bad_likelihood_in_the_state_dict_is_refused():
    saved = UncertaintyWeighting(2).state_dict()
    saved["hyperparameters"]["likelihoods"] = ["plain", "poisson"]
    weighting = UncertaintyWeighting(2)
    with pytest.raises(ValueError, match="`likelihoods`"):
        weighting.load_state_dict(saved)
    assert weighting.likelihoods == ["plain", "plain"]


def test_load_keeps_the_optimisers_parameter():
    helpers.check_load_keeps_the_optimisers_parameter(SPEC)


def test_module_arguments_give_the_module_format():
    weighting = UncertaintyWeighting(2, initial_log_vars=[0.5, 1.5])
    flat = weighting.state_dict(prefix="w.")
    assert set(flat) == {"w.log_vars", "w._extra_state"}
    other = UncertaintyWeighting(2)
    assert other.load_state_dict({"log_vars": flat["w.log_vars"]}, strict=False).missing_keys == [
        "_extra_state"
    ]
    assert other.log_vars.tolist() == [0.5, 1.5]


# ----------------------------------------------------------------------------- masking, syncs
@pytest.mark.parametrize("path", helpers.PATHS)
def test_masking_keeps_state(path):
    helpers.check_masking_keeps_state(SPEC, path)


def test_device_path_never_syncs():
    helpers.check_device_path_never_syncs(SPEC)


def test_losses_on_another_device_are_refused_first():
    helpers.check_other_device_is_refused_first(SPEC)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"likelihoods": "laplace"}, "`likelihoods`"),
        ({"likelihoods": ["plain"]}, "`likelihoods`"),
        ({"likelihoods": 1}, "`likelihoods`"),
        ({"initial_log_vars": float("nan")}, "`initial_log_vars`"),
        ({"initial_log_vars": [0.0, 1.0, 2.0]}, "`initial_log_vars`"),
        ({"initial_log_vars": "0"}, "`initial_log_vars`"),
        ({"dtype": torch.float16}, "float32 or wider"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UncertaintyWeighting(2, **kwargs)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(helpers.state_dict_edits(SPEC))
def test_fuzz_load_state_dict_is_a_clear_error_with_state_unchanged_or_a_valid_state(edits):
    helpers.check_fuzz_load(SPEC, edits)
