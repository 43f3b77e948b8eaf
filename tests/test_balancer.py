"""anl.AdaptiveLossBalancer: Eq. 7-11 by hand on every path, properties, inputs, masking,
absence, history, sync-freedom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from anl import AdaptiveLossBalancer, ConstantWeights, testing
from anl.testing import strategies as anl_st
from anl.weighting import Hyperparameter

# ----------------------------------------------------------------------------- hand-computed
# N = 2, w(-1) = (1/2, 1/2), r_w = 0.1, losses (2, 4), (1, 3), (0.5, 3):
#   L~(0) = (1, 1)            r = (1/2, 1/2)                      w(0) = (0.5, 0.5)
#   beta = 1: L~(1) = (1/2, 3/4), r = (0.4, 0.6), w(1) = 0.1 r + 0.9 w(0) = (0.49, 0.51)
#             L~(2) = (1/4, 3/4), r = (1/4, 3/4), w(2) = (0.025 + 0.441, 0.075 + 0.459)
#   beta = 2: L~^2(1) = (1/4, 9/16), r = (4/13, 9/13), w(1) = (6.25/13, 6.75/13)
#             L~^2(2) = (1/16, 9/16), r = (0.1, 0.9),  w(2) = (0.01 + 0.9 * 6.25/13, ...)
#   beta = 0: r = (1/2, 1/2) always, uniform weights stay uniform.
# N = 3, w(-1) = (0.2, 0.3, 0.5), r_w = 0.5, losses (1, 2, 4), (0.5, 2, 1):
#   w(0) = 0.5 (1/3, 1/3, 1/3) + 0.5 w(-1) = (4/15, 19/60, 5/12)
#   beta = 1: L~(1) = (1/2, 1, 1/4), r = (2/7, 4/7, 1/7), w(1) = (29/105, 373/840, 47/168)
#   beta = 2: L~^2(1) = (1/4, 1, 1/16), r = (4/21, 16/21, 1/21), w(1) = (8/35, 453/840, 39/168)
#   beta = 0: w(1) = 0.5 (1/3, 1/3, 1/3) + 0.5 w(0) = (1/6 + 2/15, 1/6 + 19/120, 1/6 + 5/24)
TWO = [[2.0, 4.0], [1.0, 3.0], [0.5, 3.0]]
THREE = [[1.0, 2.0, 4.0], [0.5, 2.0, 1.0]]
HAND_CASES = [
    (TWO, 1.0, 0.1, None, [[0.5, 0.5], [0.49, 0.51], [0.466, 0.534]]),
    (
        TWO,
        2.0,
        0.1,
        None,
        [[0.5, 0.5], [6.25 / 13, 6.75 / 13], [0.01 + 0.9 * 6.25 / 13, 0.09 + 0.9 * 6.75 / 13]],
    ),
    (TWO, 0.0, 0.1, None, [[0.5, 0.5]] * 3),
    (TWO, 0.0, 0.1, [0.9, 0.1], [[0.86, 0.14], [0.824, 0.176], [0.7916, 0.2084]]),
    (
        THREE,
        1.0,
        0.5,
        [0.2, 0.3, 0.5],
        [[4 / 15, 19 / 60, 5 / 12], [29 / 105, 373 / 840, 47 / 168]],
    ),
    (THREE, 2.0, 0.5, [0.2, 0.3, 0.5], [[4 / 15, 19 / 60, 5 / 12], [8 / 35, 453 / 840, 39 / 168]]),
    (
        THREE,
        0.0,
        0.5,
        [0.2, 0.3, 0.5],
        [[4 / 15, 19 / 60, 5 / 12], [1 / 6 + 2 / 15, 1 / 6 + 19 / 120, 1 / 6 + 5 / 24]],
    ),
]


# Three ways to run the same rule: host floats (CPU losses, float64 state), the tensor path
# forced on the CPU (what accelerators run), and a float32 state (tensor path).
PATHS = ["host", "device", "float32"]


def make(path, *args, **kwargs):
    if path == "float32":
        kwargs["dtype"] = torch.float32
    balancer = AdaptiveLossBalancer(*args, **kwargs)
    if path == "device":
        balancer.supports_host = False
    return balancer


def as_input(path, values):
    return (
        list(values) if path == "host" else [torch.tensor(v, dtype=torch.float64) for v in values]
    )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("trajectory", "beta", "weight_lr", "initial", "expected"), HAND_CASES)
def test_hand_computed_weights(path, trajectory, beta, weight_lr, initial, expected):
    balancer = make(
        path, len(trajectory[0]), beta=beta, weight_lr=weight_lr, initial_weights=initial
    )
    tolerance = 1e-7 if path == "float32" else 1e-15
    for losses, want in zip(trajectory, expected, strict=True):
        total = balancer.step(as_input(path, losses))
        np.testing.assert_allclose(balancer.weights, want, rtol=0, atol=tolerance)
        assert float(total) == pytest.approx(float(np.dot(want, losses)), rel=1e-6)
    assert balancer.weights.dtype == (torch.float32 if path == "float32" else torch.float64)


@pytest.mark.parametrize("path", PATHS)
def test_paper_two_loss_form_eq10_eq11(path):
    """Eq. 10-11: w_adv = r_w L~_adv / (L~_nat + L~_adv) + (1 - r_w) w_adv(t-1), w_nat = 1 - w_adv."""
    balancer = make(path, ["adv", "nat"])
    w_adv = 0.5
    tolerance = 1e-7 if path == "float32" else 1e-15
    for l_adv, l_nat in [(2.3, 1.7), (2.0, 1.2), (1.9, 0.8), (1.95, 0.5)]:
        balancer.step(dict(zip(["adv", "nat"], as_input(path, [l_adv, l_nat]), strict=True)))
        rel_adv, rel_nat = l_adv / 2.3, l_nat / 1.7
        w_adv = 0.025 * rel_adv / (rel_nat + rel_adv) + 0.975 * w_adv
        assert balancer.weights[0].item() == pytest.approx(w_adv, abs=tolerance)
        assert balancer.weights[1].item() == pytest.approx(1 - w_adv, abs=tolerance)
    # The loss that fell least (adv: to 85 %, nat: to 29 %) holds the larger weight.
    assert balancer.weights[0] > 0.5 > balancer.weights[1]


# ----------------------------------------------------------------------------- properties
@settings(max_examples=150, deadline=None)
@given(anl_st.loss_trajectories(), anl_st.balancer_settings())
def test_weights_match_eq_7_9_and_stay_on_simplex(trajectory, hyper):
    testing.check_weight_invariants(trajectory, **hyper)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 8))
def test_initial_weights_anywhere_on_simplex(data, n):
    trajectory = data.draw(anl_st.loss_trajectories(n_losses=n, max_length=10))
    initial = data.draw(anl_st.simplex_weights(n))
    hyper = data.draw(anl_st.balancer_settings())
    testing.check_weight_invariants(trajectory, initial_weights=initial, **hyper)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 6))
def test_scale_invariance(data, n):
    trajectory = data.draw(anl_st.loss_trajectories(n_losses=n, max_length=10))
    scales = data.draw(st.lists(st.floats(1e-3, 1e3), min_size=n, max_size=n))
    testing.check_scale_invariance(trajectory, scales, **data.draw(anl_st.balancer_settings()))


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 6))
def test_permutation_equivariance(data, n):
    trajectory = data.draw(anl_st.loss_trajectories(n_losses=n, max_length=10))
    permutation = data.draw(st.permutations(list(range(n))))
    initial = data.draw(anl_st.simplex_weights(n))
    testing.check_permutation_equivariance(
        trajectory, permutation, initial_weights=initial, **data.draw(anl_st.balancer_settings())
    )


@settings(max_examples=40, deadline=None)
@given(st.data(), st.integers(1, 6))
def test_beta_zero_moves_geometrically_to_uniform(data, n):
    trajectory = data.draw(anl_st.loss_trajectories(n_losses=n, max_length=15))
    testing.check_beta_zero_is_geometric(
        trajectory,
        weight_lr=data.draw(anl_st.weight_lrs()),
        initial_weights=data.draw(anl_st.simplex_weights(n)),
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(anl_st.loss_values(), min_size=1, max_size=8), anl_st.balancer_settings())
def test_constant_losses_keep_uniform_weights(values, hyper):
    testing.check_constant_losses_keep_uniform(values, steps=12, **hyper)


@settings(max_examples=80, deadline=None)
@given(st.data(), st.integers(1, 6), anl_st.balancer_settings())
def test_host_and_device_paths_agree(data, n, hyper):
    trajectory = data.draw(anl_st.loss_trajectories(n_losses=n, max_length=12))
    host, device = make("host", n, **hyper), make("device", n, **hyper)
    for row in trajectory:
        host.step(row)
        device.step([torch.tensor(v, dtype=torch.float64) for v in row])
        np.testing.assert_allclose(device.weights, host.weights, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(
        device.history()["weights"], host.history()["weights"], rtol=1e-13, atol=1e-300
    )


def test_invariant_checker_catches_a_wrong_rule(monkeypatch):
    """The checker is not vacuous: a rule that keeps w(t-1) instead of moving toward r fails."""
    monkeypatch.setattr(
        AdaptiveLossBalancer,
        "_update",
        lambda self, state, rel, present: {"weights": state["weights"]},
    )
    with pytest.raises(AssertionError, match=r"differ from Eq\. 7-9"):
        testing.check_weight_invariants([[1.0, 2.0], [0.5, 2.0]], weight_lr=0.5)


# ----------------------------------------------------------------------------- input kinds
def _weights_after(trajectory, convert):
    balancer = AdaptiveLossBalancer(["a", "b", "c"], beta=1.5, weight_lr=0.3)
    for row in trajectory:
        balancer.step({k: convert(v) for k, v in zip("abc", row, strict=True)})
    return balancer.weights


def test_float_numpy_and_tensor_inputs_give_identical_weights():
    trajectory = [[3.0, 1.0, 0.2], [2.5, 0.7, 0.19], [1.0, 0.9, 0.05], [0.8, 0.1, 0.3]]
    from_floats = _weights_after(trajectory, float)
    assert torch.equal(from_floats, _weights_after(trajectory, np.float64))
    assert torch.equal(
        from_floats, _weights_after(trajectory, lambda v: torch.tensor(v, dtype=torch.float64))
    )


def test_a_mapping_is_read_in_declared_order():
    declared = AdaptiveLossBalancer(["x", "y", "z"], weight_lr=0.5)
    reordered = AdaptiveLossBalancer(["x", "y", "z"], weight_lr=0.5)
    for x, y, z in [(3.0, 1.0, 0.5), (1.0, 0.9, 0.1), (2.0, 0.2, 0.4)]:
        declared.step([x, y, z])
        reordered.step({"z": z, "x": x, "y": y})
    assert torch.equal(declared.weights, reordered.weights)
    assert len(set(declared.weights.tolist())) == 3  # distinct values: order matters


def test_weights_and_outputs_types():
    host = AdaptiveLossBalancer(2)
    assert host.initial_losses is None and host.relative_losses is None
    assert isinstance(host.step([1.0, 2.0]), float)
    assert isinstance(host.weights, torch.Tensor) and host.weights.dtype == torch.float64
    tensors = AdaptiveLossBalancer(2)
    total = tensors.step([torch.tensor(1.0), torch.tensor(2.0)])
    assert isinstance(total, torch.Tensor) and total.dim() == 0
    assert tensors.relative_losses.tolist() == [1.0, 1.0]
    assert tensors.initial_losses.tolist() == [1.0, 2.0]
    assert isinstance(tensors.num_steps, torch.Tensor) and int(tensors.num_steps) == 1
    assert tensors.as_dict() == {"0": 0.5, "1": 0.5}
    assert tensors.step(torch.tensor([1.0, 1.0])).item() == pytest.approx(1.0)


@pytest.mark.parametrize("path", ["host", "device"])
def test_gradients_flow_with_weights_as_constants(path):
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    balancer = make(path, ["a", "b"], weight_lr=0.5)
    balancer.step([a * 1.0, b * 1.0])
    total = balancer.step([a**2, b**2])  # L~ = (2, 3): r = (0.4, 0.6), w = (0.45, 0.55)
    total.backward()
    assert a.grad.item() == pytest.approx(0.45 * 2 * 2.0)
    assert b.grad.item() == pytest.approx(0.55 * 2 * 3.0)


@pytest.mark.parametrize("path", ["host", "device"])
def test_low_precision_losses_keep_float64_state_and_float32_total(path):
    balancer = make(path, 2)
    x = torch.tensor([1.5, 0.5], requires_grad=True)
    for scale in (1.0, 0.9, 0.7):
        losses = [(x[0] * scale).to(torch.bfloat16), (x[1] * scale).to(torch.float16)]
        total = balancer.step(losses)
    assert balancer.weights.dtype == torch.float64
    assert total.dtype == torch.float32
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_scaled_losses_give_the_same_weights_so_only_the_total_may_be_scaled():
    """GradScaler scales the total for backward; scaling the losses *before* `step` would leave
    the weights unchanged only for a constant scale (Eq. 7 is scale-free), which GradScaler's
    is not. The gradient reaching the losses is the weight times the scale."""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    plain, scaled = AdaptiveLossBalancer(2), AdaptiveLossBalancer(2)
    for a, b in [(1.0, 1.0), (0.5, 0.9), (0.2, 0.7)]:
        plain.step([x[0] * a, x[1] * b])
        total = scaled.step([x[0] * a * 1024.0, x[1] * b * 1024.0])
    assert torch.equal(plain.weights, scaled.weights)
    total.backward()
    np.testing.assert_allclose(
        x.grad / 1024.0, scaled.weights * torch.tensor([0.2, 0.7]), rtol=1e-6
    )


# ----------------------------------------------------------------------------- invalid values
@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        ([1.0, 1.0], [float("nan"), 1.0], "`adv` should be finite"),
        ([1.0, 1.0], [1.0, float("inf")], "`nat` should be finite"),
        ([1.0, 1.0], [-0.5, 1.0], "`adv` should be finite and non-negative"),
        ([0.0, 1.0], None, "`adv` should have a reference value L\\(0\\) > 0"),
        ([5e-324, 1.0], None, "reciprocal is finite"),  # 1 / L(0) overflows float64
        ([1e-300, 1.0], [1e10, 1.0], "overflows"),
    ],
)
@pytest.mark.parametrize("path", ["host", "device"])
def test_invalid_host_losses_raise_naming_the_loss_and_keep_state(path, first, second, match):
    balancer = make(path, ["adv", "nat"], strict=path == "device")
    convert = (
        (lambda v: v)
        if path == "host"
        else (lambda v: [torch.tensor(x, dtype=torch.float64) for x in v])
    )
    if second is None:
        with pytest.raises(ValueError, match=match):
            balancer.step(convert(first))
        assert int(balancer.num_steps) == 0 and balancer.initial_losses is None
        return
    balancer.step(convert(first))
    before = balancer.state_dict()
    with pytest.raises(ValueError, match=match):
        balancer.step(convert(second))
    _assert_same_state(before, balancer.state_dict())


def _assert_same_state(a, b):
    assert a["hyperparameters"] == b["hyperparameters"]
    assert a["state"].keys() == b["state"].keys()
    for key, value in a["state"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["state"][key]) or (
                value.shape == b["state"][key].shape
                and torch.equal(value.isnan(), b["state"][key].isnan())
                and torch.equal(value.nan_to_num(), b["state"][key].nan_to_num())
            ), key
        else:
            assert value == b["state"][key], key


@pytest.mark.parametrize("path", PATHS)
def test_invalid_tensor_losses_are_masked_and_counted(path):
    balancer = make(path, ["adv", "nat"], weight_lr=0.5)
    t = lambda *v: [torch.tensor(x, dtype=torch.float64) for x in v]  # noqa: E731
    balancer.step(t(2.0, 4.0))
    weights = balancer.weights.clone()
    for bad in (t(float("nan"), 1.0), t(1.0, -1.0), t(float("inf"), 1.0), t(1.0, float("nan"))):
        total = balancer.step(bad)
        assert torch.equal(balancer.weights, weights)
        assert isinstance(total, torch.Tensor)
    assert int(balancer.num_skipped) == 4 and int(balancer.num_steps) == 1
    assert balancer.history()["applied"].tolist() == [True, False, False, False, False]
    balancer.step(t(1.0, 4.0))  # L~ = (0.5, 1): r = (1/3, 2/3), w = 0.5 r + 0.25
    np.testing.assert_allclose(balancer.weights, [1 / 6 + 0.25, 1 / 3 + 0.25], atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_a_masked_first_step_leaves_the_reference_to_the_next_valid_one(path):
    balancer = make(path, ["a", "b"], weight_lr=1.0)
    t = lambda *v: [torch.tensor(x, dtype=torch.float64) for x in v]  # noqa: E731
    balancer.step(t(float("nan"), 3.0))
    assert balancer.initial_losses.tolist() == [0.0, 0.0]
    assert balancer.relative_losses.tolist() == [1.0, 1.0]
    balancer.step(t(0.0, 3.0))  # a zero reference: masked too
    balancer.step(t(2.0, 4.0))
    assert balancer.initial_losses.tolist() == [2.0, 4.0]
    balancer.step(t(1.0, 3.0))
    assert balancer.relative_losses.tolist() == [0.5, 0.75]
    np.testing.assert_allclose(balancer.weights, [0.4, 0.6], atol=1e-7)
    assert int(balancer.num_skipped) == 2


def test_a_subnormal_reference_is_refused_on_every_path():
    """1 / L(0) must be finite (Eq. 7 divides by it): 5e-324 in float64, 1e-40 in float32."""
    for path, tiny in (("host", 5e-324), ("device", 5e-324), ("float32", 1e-40)):
        balancer = make(path, 2)
        balancer.step([torch.tensor(tiny, dtype=torch.float64), torch.tensor(1.0)])
        assert int(balancer.num_skipped) == 1, path
        balancer.step([torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0)])
        assert balancer.initial_losses.tolist() == [2.0, 1.0], path


@pytest.mark.parametrize("path", ["host", "device"])
def test_all_relative_losses_zero_gives_uniform_target(path):
    balancer = make(path, 3, weight_lr=1.0, initial_weights=[0.6, 0.3, 0.1])
    balancer.step(as_input(path, [1.0, 2.0, 3.0]))
    balancer.step(as_input(path, [0.0, 0.0, 0.0]))
    np.testing.assert_allclose(balancer.weights, [1 / 3] * 3, atol=1e-15)


@pytest.mark.parametrize("path", ["host", "device"])
def test_extreme_relative_losses_keep_finite_weights(path):
    # L~ = (1e-170, 2e-170) with beta 2: the powers underflow; r = (0.2, 0.8) all the same.
    balancer = make(path, 2, beta=2.0, weight_lr=1.0)
    balancer.step(as_input(path, [1.0, 1.0]))
    balancer.step(as_input(path, [1e-170, 2e-170]))
    np.testing.assert_allclose(balancer.weights, [0.2, 0.8], rtol=1e-14)
    huge = make(path, 2, beta=300.0, weight_lr=1.0)
    huge.step(as_input(path, [1.0, 1.0]))
    huge.step(as_input(path, [10.0, 20.0]))
    assert torch.isfinite(huge.weights).all()
    np.testing.assert_allclose(huge.weights, [0.0, 1.0], atol=1e-15)


# ----------------------------------------------------------------------------- absent losses
@pytest.mark.parametrize("path", PATHS)
def test_absent_losses(path):
    balancer = make(path, ["a", "b", "c"], weight_lr=0.5)
    t = lambda v: v if path == "host" else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    total = balancer.step({"a": t(2.0), "b": t(4.0)})  # c absent: no reference yet
    assert float(total) == pytest.approx((2.0 + 4.0) / 3)  # not renormalised
    assert balancer.initial_losses.tolist() == [2.0, 4.0, 0.0]
    np.testing.assert_allclose(balancer.weights, [1 / 3, 1 / 3, 1 / 3], atol=1e-7)
    balancer.step([t(1.0), None, t(5.0)])  # L~ = (0.5, -, 1): c's reference is 5
    # a and c held 2/3: r over them = (1/3, 2/3) -> w_a = 0.5 (2/3 * 1/3) + 0.5 (1/3) = 5/18
    np.testing.assert_allclose(balancer.weights, [5 / 18, 1 / 3, 7 / 18], atol=1e-7)
    assert balancer.initial_losses.tolist() == [2.0, 4.0, 5.0]
    balancer.step({"b": t(2.0)})  # only b: its share of its own mass is all of it
    np.testing.assert_allclose(balancer.weights, [5 / 18, 1 / 3, 7 / 18], atol=1e-7)
    history = balancer.history()
    assert np.isnan(history["losses"][0, 2]) and np.isnan(history["losses"][1, 1])
    np.testing.assert_allclose(history["relative_losses"][-1], [0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="at least one"):
        balancer.step({})


# ----------------------------------------------------------------------------- combine, as_dict
@pytest.mark.parametrize("path", ["host", "device"])
def test_combine_uses_the_current_weights_and_changes_nothing(path):
    balancer = make(path, ["a", "b"], weight_lr=0.5)
    balancer.step(as_input(path, [1.0, 1.0]))
    balancer.step(as_input(path, [0.5, 1.0]))
    before = balancer.state_dict()
    x = torch.tensor(3.0, requires_grad=True)
    total = balancer.combine({"a": x, "b": x * 2})
    w = balancer.weights.tolist()
    assert total.item() == pytest.approx(3 * w[0] + 6 * w[1])
    total.backward()
    assert x.grad.item() == pytest.approx(w[0] + 2 * w[1])
    assert balancer.combine([1.0, None]) == pytest.approx(w[0])
    _assert_same_state(before, balancer.state_dict())


def test_gradient_accumulation_recipe():
    """Weights updated once per optimiser step from the mean of the micro-batch losses."""
    balancer = AdaptiveLossBalancer(["a", "b"], weight_lr=0.5)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    micro = [[x[0] * 1.0, x[1] * 1.0], [x[0] * 3.0, x[1] * 1.0]]
    means = [sum(m[i] for m in micro) / 2 for i in range(2)]
    balancer.step([m.detach() for m in means])  # one update per optimiser step
    totals = [balancer.combine(m) for m in micro]
    assert all(t.requires_grad for t in totals)
    assert int(balancer.num_steps) == 1


# ----------------------------------------------------------------------------- history
@pytest.mark.parametrize("path", PATHS)
def test_history_holds_exactly_what_each_step_saw(path):
    balancer = make(path, ["a", "b"], weight_lr=0.1, history_size=3)
    t = (lambda v: v) if path == "host" else (lambda v: torch.tensor(v, dtype=torch.float64))
    rows = [(2.0, 4.0), (1.0, 3.0), (float("nan"), 1.0), (0.5, 3.0)]
    for row in rows:
        if path == "host" and math.isnan(row[0]):
            balancer.step([torch.tensor(v, dtype=torch.float64) for v in row])  # masked
        else:
            balancer.step([t(v) for v in row])
    h = balancer.history()
    assert h["step"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(h["losses"][[0, 2]], [[1.0, 3.0], [0.5, 3.0]])
    assert math.isnan(h["losses"][1, 0]) and h["losses"][1, 1] == 1.0
    np.testing.assert_allclose(h["relative_losses"], [[0.5, 0.75], [0.5, 0.75], [0.25, 0.75]])
    np.testing.assert_allclose(
        h["weights"], [[0.49, 0.51], [0.49, 0.51], [0.466, 0.534]], atol=1e-7
    )
    assert h["applied"].tolist() == [True, False, True]


@pytest.mark.parametrize("history_size", [None, 2])
@pytest.mark.parametrize("path", ["host", "device"])
def test_history_is_float64_whatever_the_state_dtype(path, history_size):
    """A float32 state still gives float64 history arrays (the documented dtype), holding the
    float32 values exactly, whether the rows sit in the deque, the list or the device ring."""
    balancer = AdaptiveLossBalancer(
        2, weight_lr=0.3, history_size=history_size, dtype=torch.float32
    )
    balancer.supports_host = path == "host"
    rows = [(2.0, 3.0), (1.0, 2.875), (0.25, 2.5)]  # exact in float32
    weights = []
    for row in rows:
        balancer.step([torch.tensor(v, dtype=torch.float32) for v in row])
        weights.append(balancer.weights.tolist())
    h = balancer.history()
    keep = len(rows) if history_size is None else history_size
    for key in ("losses", "relative_losses", "weights"):
        assert h[key].dtype == np.float64, key
    assert h["weights"].tolist() == weights[-keep:]
    assert h["losses"].tolist() == [list(r) for r in rows[-keep:]]


@pytest.mark.parametrize("path", ["host", "device"])
def test_history_size_zero_and_one(path):
    """history_size=0 keeps no row (the device path allocates no ring); 1 keeps the newest."""
    for size, kept in ((0, []), (1, [[1.0, 1.5]])):
        balancer = AdaptiveLossBalancer(2, history_size=size)
        balancer.supports_host = path == "host"
        for row in ([1.0, 2.0], [1.0, 1.5]):
            balancer.step([torch.tensor(v, dtype=torch.float64) for v in row])
        h = balancer.history()
        assert h["weights"].shape == (len(kept), 2)
        assert h["losses"].tolist() == kept
        assert h["step"].tolist() == ([1] if kept else [])


def test_history_size_zero_and_default():
    none = AdaptiveLossBalancer(2, history_size=0)
    none.step([1.0, 2.0])
    assert none.history()["weights"].shape == (0, 2)
    default = AdaptiveLossBalancer(2)
    assert default.history_size == 10_000


# ----------------------------------------------------------------------------- sync-freedom
class _CountScalarReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rule", ["anl", "constant", "anl32"])
def test_the_device_path_never_reads_a_tensor_back_to_the_host(rule):
    weighting = {
        "anl": lambda: AdaptiveLossBalancer(["adv", "nat", "aux"], beta=2.0),
        "anl32": lambda: AdaptiveLossBalancer(3, dtype=torch.float32),
        "constant": lambda: ConstantWeights(3, weights=[0.5, 0.3, 0.2]),
    }[rule]()
    weighting.supports_host = False  # what an accelerator runs
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    steps = [
        [x[0] * 2, x[1] * 1, x[2] * 0.5],
        [x[0], x[1] * 0.5, x[2] * 0.1],
        [x[0] * float("nan"), x[1], x[2]],  # masked on the device
        [x[0] * 0.0, x[1] * 0.0, x[2] * 0.0],  # all relative losses zero
        [x[0] * 0.3, -x[1], x[2]],  # negative: masked
        [x[0] * 0.3, None, x[2]],  # absent
    ]
    with _CountScalarReads() as counter:
        for losses in steps:
            total = weighting.step(losses)
        weighting.combine(steps[0])
    assert counter.count == 0
    total.backward()
    assert int(weighting.num_skipped) == 2 and int(weighting.num_steps) == 4


def test_the_sync_counter_does_see_a_sync():
    with _CountScalarReads() as counter:
        float(torch.tensor(1.0) + 1)
    assert counter.count == 1


# ----------------------------------------------------------------------------- constructor
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beta": -1.0}, ValueError, "`beta` should be a finite number >= 0"),
        ({"beta": float("nan")}, ValueError, "`beta`"),
        ({"beta": True}, ValueError, "`beta`"),
        ({"weight_lr": 0.0}, ValueError, r"`weight_lr` should be in \(0, 1\]"),
        ({"weight_lr": 1.5}, ValueError, "`weight_lr`"),
        ({"weight_lr": "0.1"}, ValueError, "`weight_lr`"),
        ({"initial_weights": [0.5, 0.6]}, ValueError, "simplex"),
        ({"initial_weights": [0.4, 0.4]}, ValueError, "simplex"),  # sums below 1 too
        ({"initial_weights": [1.5, -0.5]}, ValueError, "non-negative"),
        ({"initial_weights": [1.0]}, ValueError, "should hold 2 values"),
        ({"initial_weights": "ab"}, ValueError, "2 numbers"),
        ({"strict": 1}, TypeError, "`strict` should be a bool"),
        ({"distributed": "no"}, TypeError, "`distributed` should be a bool"),
        ({"history_size": -1}, ValueError, "`history_size`"),
        ({"history_size": 2.5}, ValueError, "`history_size`"),
        ({"dtype": torch.float16}, ValueError, "float32 or wider"),
        ({"dtype": torch.int32}, ValueError, "floating dtype"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaptiveLossBalancer(2, **kwargs)


def test_hyperparameters_are_settable_and_checked():
    balancer = AdaptiveLossBalancer(2)
    balancer.weight_lr *= 0.1
    balancer.beta = 2
    assert balancer.defaults == {"beta": 2.0, "weight_lr": pytest.approx(0.0025)}
    with pytest.raises(ValueError, match="weight_lr"):
        balancer.weight_lr = 0.0
    assert balancer.weight_lr == pytest.approx(0.0025)
    balancer.weight_lr = 0.0025
    assert repr(balancer) == "AdaptiveLossBalancer(['0', '1'], beta=2.0, weight_lr=0.0025)"


@pytest.mark.parametrize("history_size", [4, None])
def test_history_keeps_order_across_host_and_device_steps(history_size):
    """Host and device rows interleave in call order, in the bounded ring and in the
    unbounded list alike, each row with its own values."""
    balancer = AdaptiveLossBalancer(2, weight_lr=0.5, history_size=history_size)
    rows = [(2.0, 4.0), (1.0, 4.0), (1.0, 2.0), (0.5, 2.0), (0.5, 1.0)]
    for k, row in enumerate(rows):
        balancer.supports_host = k not in (1, 2)  # host, device, device, host, host
        balancer.step([torch.tensor(v, dtype=torch.float64) for v in row])
    h = balancer.history()
    first = 1 if history_size == 4 else 0
    assert h["step"].tolist() == list(range(first, 5))
    np.testing.assert_array_equal(h["losses"], rows[first:])
    reference = AdaptiveLossBalancer(2, weight_lr=0.5)
    for row in rows:
        reference.step(list(row))
    np.testing.assert_allclose(h["weights"], reference.history()["weights"][first:], rtol=1e-14)
    if history_size is None:
        return
    balancer.supports_host = False
    for _ in range(6):  # the ring wraps around
        balancer.step([torch.tensor(0.25, dtype=torch.float64), torch.tensor(1.0)])
    assert balancer.history()["step"].tolist() == [7, 8, 9, 10]


def test_an_unknown_hyperparameter_is_a_value_error_naming_it():
    """A subclass's hyperparameter that no ``_check_hyperparameter`` handles reaches the base
    class, which refuses it by name (and leaves the balancer's defaults as they were)."""

    class WithGamma(AdaptiveLossBalancer):
        gamma = Hyperparameter("a hyperparameter no rule checks")

    assert WithGamma.gamma.__doc__ == "a hyperparameter no rule checks"  # the API docs' text
    assert AdaptiveLossBalancer.beta.__doc__ == r":math:`\beta`, the exponent of Eq. 8."
    balancer = WithGamma(2)
    with pytest.raises(ValueError, match="WithGamma has no hyperparameter `gamma`"):
        balancer.gamma = 1.0
    assert set(balancer.defaults) == {"beta", "weight_lr"}
    balancer.weight_lr = 0.5  # the rule's own still go through
    assert balancer.weight_lr == 0.5


def test_simplex_tolerance_is_64_n_ulps_of_the_state_dtype():
    """Initial weights may miss the simplex by max(1e-6, 64 N eps(dtype)): for N = 2 in float32
    that is exactly 2^-16 (accepted), and 2^-16 + 2^-23 is refused; float64 allows 1e-6."""
    edge = 2.0**-16
    AdaptiveLossBalancer(2, initial_weights=[0.5, 0.5 + edge], dtype=torch.float32)
    with pytest.raises(ValueError, match="simplex"):
        AdaptiveLossBalancer(2, initial_weights=[0.5, 0.5 + edge + 2.0**-23], dtype=torch.float32)
    AdaptiveLossBalancer(2, initial_weights=[0.5, 0.5 + 0.9e-6])
    with pytest.raises(ValueError, match="simplex"):
        AdaptiveLossBalancer(2, initial_weights=[0.5, 0.5 + 1.1e-6])
    with pytest.raises(ValueError, match="simplex"):
        AdaptiveLossBalancer(2, initial_weights=[0.5, 0.5 - 1.1e-6])  # below 1 too
