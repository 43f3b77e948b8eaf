"""Tests of anl.AdaptiveLossBalancer: Eq. 7-9 by hand, properties, resume, sync-freedom, bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from anl import AdaptiveLossBalancer, ConstantWeights, testing

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


@pytest.mark.parametrize(("trajectory", "beta", "weight_lr", "initial", "expected"), HAND_CASES)
def test_hand_computed_weights(trajectory, beta, weight_lr, initial, expected):
    balancer = AdaptiveLossBalancer(
        len(trajectory[0]), beta=beta, weight_lr=weight_lr, initial_weights=initial
    )
    for losses, want in zip(trajectory, expected, strict=True):
        total = balancer.step(losses)
        np.testing.assert_allclose(balancer.weights, want, rtol=0, atol=1e-15)
        assert total == pytest.approx(float(np.dot(want, losses)), rel=1e-15)


def test_paper_two_loss_form_eq10_eq11():
    """Eq. 10-11: w_adv = r_w L~_adv / (L~_nat + L~_adv) + (1 - r_w) w_adv(t-1), w_nat = 1 - w_adv."""
    balancer = AdaptiveLossBalancer(["adv", "nat"])
    w_adv = 0.5
    for l_adv, l_nat in [(2.3, 1.7), (2.0, 1.2), (1.9, 0.8), (1.95, 0.5)]:
        balancer.step({"adv": l_adv, "nat": l_nat})
        if l_adv == 2.3:
            rel_adv = rel_nat = 1.0
        else:
            rel_adv, rel_nat = l_adv / 2.3, l_nat / 1.7
        w_adv = 0.025 * rel_adv / (rel_nat + rel_adv) + 0.975 * w_adv
        assert balancer.weights[0] == pytest.approx(w_adv, abs=1e-15)
        assert balancer.weights[1] == pytest.approx(1 - w_adv, abs=1e-15)
    # The loss that fell least (adv) holds the larger weight.
    assert balancer.weights[0] > balancer.weights[1]


# ----------------------------------------------------------------------------- properties
@settings(max_examples=150, deadline=None)
@given(testing.loss_trajectories(), testing.balancer_settings())
def test_weights_match_eq_7_9_and_stay_on_simplex(trajectory, hyper):
    testing.check_weight_invariants(trajectory, **hyper)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 8))
def test_initial_weights_anywhere_on_simplex(data, n):
    trajectory = data.draw(testing.loss_trajectories(n_losses=n, max_length=10))
    initial = data.draw(testing.simplex_weights(n))
    hyper = data.draw(testing.balancer_settings())
    testing.check_weight_invariants(trajectory, initial_weights=initial, **hyper)


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 6))
def test_scale_invariance(data, n):
    trajectory = data.draw(testing.loss_trajectories(n_losses=n, max_length=10))
    scales = data.draw(st.lists(st.floats(1e-3, 1e3), min_size=n, max_size=n))
    testing.check_scale_invariance(trajectory, scales, **data.draw(testing.balancer_settings()))


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(1, 6))
def test_permutation_equivariance(data, n):
    trajectory = data.draw(testing.loss_trajectories(n_losses=n, max_length=10))
    permutation = data.draw(st.permutations(list(range(n))))
    initial = data.draw(testing.simplex_weights(n))
    testing.check_permutation_equivariance(
        trajectory, permutation, initial_weights=initial, **data.draw(testing.balancer_settings())
    )


@settings(max_examples=40, deadline=None)
@given(st.data(), st.integers(1, 6))
def test_beta_zero_moves_geometrically_to_uniform(data, n):
    trajectory = data.draw(testing.loss_trajectories(n_losses=n, max_length=15))
    testing.check_beta_zero_is_geometric(
        trajectory,
        weight_lr=data.draw(testing.weight_lrs()),
        initial_weights=data.draw(testing.simplex_weights(n)),
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(testing.loss_values(), min_size=1, max_size=8), testing.balancer_settings())
def test_constant_losses_keep_uniform_weights(values, hyper):
    testing.check_constant_losses_keep_uniform(values, steps=12, **hyper)


def test_invariant_checker_catches_a_wrong_rule(monkeypatch):
    """The checker is not vacuous: a rule that moves w away from r is reported."""
    monkeypatch.setattr(AdaptiveLossBalancer, "_next_weights", lambda self, rel, w: w)
    with pytest.raises(AssertionError, match=r"differ from Eq\. 7-9"):
        testing.check_weight_invariants([[1.0, 2.0], [0.5, 2.0]], weight_lr=0.5)


# ----------------------------------------------------------------------------- input kinds
def _weights_after(trajectory, convert):
    balancer = AdaptiveLossBalancer(["a", "b", "c"], beta=1.5, weight_lr=0.3)
    for row in trajectory:
        balancer.step({k: convert(v) for k, v in zip("abc", row, strict=True)})
    return np.asarray(balancer.weights)


def test_float_numpy_and_tensor_inputs_give_identical_weights():
    trajectory = [[3.0, 1.0, 0.2], [2.5, 0.7, 0.19], [1.0, 0.9, 0.05], [0.8, 0.1, 0.3]]
    from_floats = _weights_after(trajectory, float)
    from_numpy32 = _weights_after(trajectory, np.float64)
    from_tensors = _weights_after(trajectory, lambda v: torch.tensor(v, dtype=torch.float64))
    np.testing.assert_array_equal(from_floats, from_numpy32)
    np.testing.assert_array_equal(from_floats, from_tensors)


def test_output_types_follow_the_inputs():
    host = AdaptiveLossBalancer(2)
    assert isinstance(host.step([1.0, 2.0]), float)
    assert isinstance(host.weights, np.ndarray) and host.weights.dtype == np.float64
    device = AdaptiveLossBalancer(2)
    total = device.step([torch.tensor(1.0), torch.tensor(2.0)])
    assert isinstance(total, torch.Tensor) and total.dim() == 0
    assert isinstance(device.weights, torch.Tensor)
    assert device.relative_losses.tolist() == [1.0, 1.0]
    assert device.initial_losses.tolist() == [1.0, 2.0]


def test_a_tensor_input_as_1d_tensor_and_mapping():
    balancer = AdaptiveLossBalancer(["x", "y"])
    balancer.step(torch.tensor([1.0, 2.0]))
    balancer.step({"y": torch.tensor(1.0), "x": torch.tensor(1.0)})
    assert balancer.relative_losses.tolist() == [1.0, 0.5]


def test_gradients_flow_with_weights_as_constants():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    balancer = AdaptiveLossBalancer(["a", "b"], weight_lr=0.5)
    balancer.step([a * 1.0, b * 1.0])
    total = balancer.step([a**2, b**2])  # L~ = (2, 3): r = (0.4, 0.6), w = (0.45, 0.55)
    total.backward()
    assert a.grad.item() == pytest.approx(0.45 * 2 * 2.0)
    assert b.grad.item() == pytest.approx(0.55 * 2 * 3.0)


def test_low_precision_losses_keep_float64_state_and_float32_total():
    balancer = AdaptiveLossBalancer(2)
    x = torch.tensor([1.5, 0.5], requires_grad=True)
    for scale in (1.0, 0.9, 0.7):
        losses = [(x[0] * scale).to(torch.bfloat16), (x[1] * scale).to(torch.float16)]
        total = balancer.step(losses)
    assert balancer.weights.dtype == torch.float64
    assert total.dtype == torch.float32
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_composes_with_grad_scaler():
    """The balancer sees unscaled losses; only the returned total is scaled for backward."""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    reference_grads = []
    for use_scaler in (False, True):
        balancer = AdaptiveLossBalancer(2)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=use_scaler)
        x.grad = None
        balancer.step([x[0] * 1.0, x[1] * 1.0])
        total = balancer.step([x[0] ** 2, x[1] * 3])
        scaler.scale(total).backward()
        grad = x.grad / (1024.0 if use_scaler else 1.0)
        reference_grads.append(grad.clone())
    torch.testing.assert_close(reference_grads[0], reference_grads[1], rtol=0, atol=0)


# ----------------------------------------------------------------------------- sync-freedom
class _CountScalarReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rule", ["anl", "constant"])
def test_step_never_reads_a_tensor_back_to_the_host(rule):
    weighting = (
        AdaptiveLossBalancer(["adv", "nat", "aux"], beta=2.0)
        if rule == "anl"
        else ConstantWeights(["adv", "nat", "aux"], weights=[0.5, 0.3, 0.2])
    )
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    steps = [
        [x[0] * 2, x[1] * 1, x[2] * 0.5],
        [x[0], x[1] * 0.5, x[2] * 0.1],
        [x[0] * float("nan"), x[1], x[2]],  # masked on the device
        [x[0] * 0.0, x[1] * 0.0, x[2] * 0.0],  # all relative losses zero
        [x[0] * 0.3, -x[1], x[2]],  # negative: masked
    ]
    with _CountScalarReads() as counter:
        for losses in steps:
            total = weighting.step(losses)
    assert counter.count == 0
    total.backward()
    assert int(weighting.num_skipped) == 2 and int(weighting.num_steps) == 3


def test_the_sync_counter_does_see_a_sync():
    with _CountScalarReads() as counter:
        float(torch.tensor(1.0) + 1)
    assert counter.count == 1


# ----------------------------------------------------------------------------- resume
def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("as_tensors", [False, True])
def test_resumed_balancer_continues_bit_identically(as_tensors):
    rng = np.random.default_rng(0)
    trajectory = rng.uniform(0.01, 5.0, size=(40, 3))
    convert = (lambda v: torch.tensor(v, dtype=torch.float32)) if as_tensors else float

    def make():
        return AdaptiveLossBalancer(["a", "b", "c"], beta=1.3, weight_lr=0.07, history_size=25)

    uninterrupted = make()
    for row in trajectory:
        uninterrupted.step([convert(v) for v in row])
    first = make()
    for row in trajectory[:17]:
        first.step([convert(v) for v in row])
    first.weight_lr = first.weight_lr * 1.0
    resumed = make()
    resumed.weight_lr = 0.5  # overwritten by the state dict
    resumed.load_state_dict(_roundtrip(first.state_dict()))
    assert resumed.weight_lr == 0.07
    for row in trajectory[17:]:
        resumed.step([convert(v) for v in row])
    assert torch.equal(torch.as_tensor(resumed.weights), torch.as_tensor(uninterrupted.weights))
    for key, value in uninterrupted.history().items():
        np.testing.assert_array_equal(resumed.history()[key], value)
    assert int(resumed.num_steps) == 40


def test_weight_lr_decay_is_saved_and_validated():
    balancer = AdaptiveLossBalancer(2)
    balancer.weight_lr *= 0.1
    assert balancer.state_dict()["hyperparameters"]["weight_lr"] == pytest.approx(0.0025)
    for bad in (0.0, 1.5, float("nan"), -0.1, True):
        with pytest.raises(ValueError, match="weight_lr"):
            balancer.weight_lr = bad
    assert balancer.weight_lr == pytest.approx(0.0025)


def test_bad_state_dict_changes_nothing():
    balancer = AdaptiveLossBalancer(["a", "b"])
    balancer.step([1.0, 2.0])
    balancer.step([0.5, 2.0])
    before = balancer.state_dict()
    bad_weights = _roundtrip(balancer.state_dict())
    bad_weights["state"]["weights"] = torch.tensor([0.9, 0.9], dtype=torch.float64)
    bad_nan = _roundtrip(balancer.state_dict())
    bad_nan["state"]["initial_losses"] = torch.tensor([float("nan"), 1.0], dtype=torch.float64)
    bad_names = _roundtrip(balancer.state_dict())
    bad_names["hyperparameters"]["names"] = ["a", "c"]
    bad_beta = _roundtrip(balancer.state_dict())
    bad_beta["hyperparameters"]["beta"] = -1.0
    bad_rule = ConstantWeights(["a", "b"], weights=[1.0, 1.0]).state_dict()
    for bad, match in [
        (bad_weights, "simplex"),
        (bad_nan, "initial_losses"),
        (bad_names, "names"),
        (bad_beta, "beta"),
        (bad_rule, "AdaptiveLossBalancer"),
        ({"weights": 1}, "state"),
    ]:
        with pytest.raises(ValueError, match=match):
            balancer.load_state_dict(bad)
        _assert_same_state(balancer.state_dict(), before)


def _assert_same_state(a, b):
    assert a["hyperparameters"] == b["hyperparameters"]
    for key, value in a["state"].items():
        other = b["state"][key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        else:
            assert value == other, key


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"losses": 0}, "losses"),
        ({"losses": "ab"}, "losses"),
        ({"losses": ["a", "a"]}, "duplicates"),
        ({"losses": []}, "losses"),
        ({"losses": 2, "beta": -0.5}, "beta = -0.5"),
        ({"losses": 2, "beta": float("inf")}, "beta"),
        ({"losses": 2, "weight_lr": 0.0}, "weight_lr = 0.0"),
        ({"losses": 2, "weight_lr": 1.01}, "weight_lr"),
        ({"losses": 2, "initial_weights": [0.7, 0.7]}, "simplex"),
        ({"losses": 2, "initial_weights": [1.2, -0.2]}, "non-negative"),
        ({"losses": 2, "initial_weights": [1.0]}, "2 values"),
        ({"losses": 2, "dtype": torch.float16}, "float32 or wider"),
        ({"losses": 2, "history_size": -1}, "history_size"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveLossBalancer(**kwargs)


@pytest.mark.parametrize(
    ("losses", "match"),
    [
        ([1.0], "2 values"),
        ([1.0, 2.0, 3.0], "2 values"),
        ({"adv": 1.0}, r"missing names \['nat'\]"),
        ({"adv": 1.0, "nat": 1.0, "kd": 1.0}, r"unknown names \['kd'\]"),
        ([1.0, "x"], "nat"),
        ([torch.ones(2), torch.ones(())], "scalar"),
    ],
)
def test_bad_step_structure_raises_and_keeps_state(losses, match):
    balancer = AdaptiveLossBalancer(["adv", "nat"])
    balancer.step([2.0, 1.0])
    before = balancer.state_dict()
    with pytest.raises(ValueError, match=match):
        balancer.step(losses)
    _assert_same_state(balancer.state_dict(), before)


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        ([2.0, 1.0], [float("nan"), 1.0], "adv = nan"),
        ([2.0, 1.0], [1.0, float("inf")], "nat = inf"),
        ([2.0, 1.0], [1.0, -0.5], "nat = -0.5"),
        ([0.0, 1.0], None, "positive reference"),
        ([1e-310, 1.0], [1e300, 1.0], "overflowed"),
    ],
)
def test_invalid_host_losses_raise_naming_the_loss_and_keep_state(first, second, match):
    balancer = AdaptiveLossBalancer(["adv", "nat"])
    if second is None:
        before = balancer.state_dict()
        with pytest.raises(ValueError, match=match):
            balancer.step(first)
    else:
        balancer.step(first)
        before = balancer.state_dict()
        with pytest.raises(ValueError, match=match):
            balancer.step(second)
    _assert_same_state(balancer.state_dict(), before)


def test_invalid_tensor_losses_are_masked_on_the_device():
    balancer = AdaptiveLossBalancer(["adv", "nat"], weight_lr=0.5)
    balancer.step([torch.tensor(0.0), torch.tensor(1.0)])  # zero reference: masked
    assert int(balancer.num_skipped) == 1 and int(balancer.num_steps) == 0
    balancer.step([torch.tensor(2.0), torch.tensor(1.0)])  # the first valid step is L(0)
    assert balancer.initial_losses.tolist() == [2.0, 1.0]
    balancer.step([torch.tensor(1.0), torch.tensor(1.0)])
    state = balancer.state_dict()["state"]
    for bad in ([float("nan"), 1.0], [1.0, float("-inf")], [-1.0, 1.0]):
        balancer.step([torch.tensor(v) for v in bad])
        for key in ("weights", "initial_losses", "relative_losses", "num_steps"):
            assert torch.equal(balancer.state_dict()["state"][key], state[key]), key
    assert int(balancer.num_skipped) == 4
    history = balancer.history()
    assert history["applied"].tolist() == [False, True, True, False, False, False]
    assert np.isfinite(np.asarray(balancer.weights)).all()


def test_strict_mode_raises_for_tensors():
    balancer = AdaptiveLossBalancer(["adv", "nat"], strict=True)
    balancer.step([torch.tensor(2.0), torch.tensor(1.0)])
    before = balancer.state_dict()
    with pytest.raises(ValueError, match="adv = nan"):
        balancer.step([torch.tensor(float("nan")), torch.tensor(1.0)])
    _assert_same_state(balancer.state_dict(), before)


def test_all_relative_losses_zero_gives_uniform_target():
    balancer = AdaptiveLossBalancer(3, weight_lr=0.5, initial_weights=[1.0, 0.0, 0.0])
    balancer.step([1.0, 2.0, 3.0])  # w(0) = 0.5 * 1/3 + 0.5 * (1, 0, 0)
    balancer.step([0.0, 0.0, 0.0])  # r uniform by definition
    expected = 0.5 / 3 + 0.5 * (0.5 / 3 + 0.5 * np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(balancer.weights, expected, rtol=0, atol=1e-15)


def test_huge_beta_does_not_overflow():
    balancer = AdaptiveLossBalancer(2, beta=400.0, weight_lr=1.0)
    balancer.step([1.0, 1.0])
    balancer.step([100.0, 1.0])  # 100^400 overflows float64; r must still be (1, 0)
    np.testing.assert_allclose(balancer.weights, [1.0, 0.0], atol=1e-300)


# ----------------------------------------------------------------------------- history
def test_history_is_bounded_and_matches_the_weights():
    balancer = AdaptiveLossBalancer(2, history_size=5)
    seen = []
    for t in range(12):
        balancer.step([1.0 + math.sin(t), 2.0 + math.cos(t)])
        seen.append(np.asarray(balancer.weights))
    history = balancer.history()
    assert history["step"].tolist() == list(range(7, 12))
    np.testing.assert_array_equal(history["weights"], np.stack(seen[-5:]))
    assert history["losses"].shape == history["relative_losses"].shape == (5, 2)
    assert AdaptiveLossBalancer(2, history_size=0).history()["weights"].shape == (0, 2)


def test_constant_weights_never_move_but_track_relative_losses():
    weighting = ConstantWeights(["adv", "nat"], weights=[0.5, 0.5])
    for losses in ([2.0, 1.0], [1.0, 0.9], [0.3, 0.1]):
        total = weighting.step(losses)
    assert weighting.weights.tolist() == [0.5, 0.5]
    assert total == pytest.approx(0.2)
    np.testing.assert_allclose(weighting.relative_losses, [0.15, 0.1])
    with pytest.raises(ValueError, match="non-negative"):
        ConstantWeights(2, weights=[1.0, -1.0])


def test_repr_names_the_hyperparameters():
    assert repr(AdaptiveLossBalancer(["a", "b"])) == (
        "AdaptiveLossBalancer(['a', 'b'], beta=1.0, weight_lr=0.025)"
    )


@pytest.mark.parametrize(("max_rows", "chunk_rows"), [(None, 3), (5, 3), (5, 2), (4, 4), (0, 3)])
def test_step_history_keeps_the_newest_rows_across_chunks(max_rows, chunk_rows):
    from anl._history import StepHistory

    history = StepHistory(2, torch.float64, max_rows, chunk_rows=chunk_rows)
    rows = [torch.tensor([float(t), -float(t)], dtype=torch.float64) for t in range(11)]
    for count, row in enumerate(rows, start=1):
        history.append(row[:1], row[1:])
        kept = rows[:count] if max_rows is None else rows[max(0, count - max_rows) : count]
        expected = torch.stack(kept) if kept else torch.zeros((0, 2), dtype=torch.float64)
        assert len(history) == len(kept)
        assert torch.equal(history.matrix(), expected)
    history.load(torch.stack(rows))
    history.append(rows[0])
    tail = [*rows, rows[0]]
    kept = tail if max_rows is None else tail[max(0, len(tail) - max_rows) :]
    assert torch.equal(
        history.matrix(), torch.stack(kept) if kept else torch.zeros((0, 2)).double()
    )
