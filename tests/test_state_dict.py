"""Save and resume: bit-identical continuation on every path, hyperparameters restored from the
state dict, and all-or-nothing loading (a rejected state dict or step changes nothing)."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anl import AdaptiveLossBalancer, ConstantWeights


def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def snapshot(weighting):
    """A comparable copy of the whole state (NaN-aware)."""
    state = weighting.state_dict()
    return {
        "hyper": state["hyperparameters"],
        "state": {
            k: (v.nan_to_num(nan=-7.0).tolist(), str(v.dtype)) if isinstance(v, torch.Tensor) else v
            for k, v in state["state"].items()
        },
        "history": {k: np.nan_to_num(v, nan=-7.0).tolist() for k, v in weighting.history().items()},
    }


@pytest.mark.parametrize("path", ["host", "device", "float32"])
def test_resumed_balancer_continues_bit_identically(path):
    rng = np.random.default_rng(0)
    trajectory = rng.uniform(0.01, 5.0, size=(40, 3))
    trajectory[5, 1] = np.nan  # a masked step inside the run

    def make():
        balancer = AdaptiveLossBalancer(
            ["a", "b", "c"],
            beta=1.3,
            weight_lr=0.07,
            history_size=25,
            dtype=torch.float32 if path == "float32" else torch.float64,
        )
        balancer.supports_host = path == "host"
        return balancer

    def feed(balancer, rows):
        for row in rows:
            balancer.step([torch.tensor(v, dtype=torch.float64) for v in row])

    uninterrupted = make()
    feed(uninterrupted, trajectory)
    first = make()
    feed(first, trajectory[:17])
    resumed = AdaptiveLossBalancer(
        ["a", "b", "c"], beta=9.0, weight_lr=0.5, strict=True, distributed=False, history_size=10
    )
    resumed.supports_host = path == "host"
    if path == "float32":
        resumed = make()
    resumed.load_state_dict(roundtrip(first.state_dict()))
    # The saved hyperparameters replace the new object's; history_size stays its own.
    assert resumed.defaults == {"beta": 1.3, "weight_lr": 0.07}
    assert resumed.strict is False and resumed.distributed is True
    assert len(resumed.history()["step"]) == (10 if path != "float32" else 17)
    feed(resumed, trajectory[17:])
    assert torch.equal(resumed.weights.double(), uninterrupted.weights.double())
    tail = uninterrupted.history()
    for key, value in resumed.history().items():
        np.testing.assert_array_equal(value, tail[key][-len(value) :])
    assert resumed.history()["step"][-1] == 39
    assert int(resumed.num_steps) == 39 and int(resumed.num_skipped) == 1


def test_a_history_longer_than_the_new_history_size_keeps_its_newest_rows():
    long = AdaptiveLossBalancer(2, history_size=None)
    for k in range(30):
        long.step([1.0 + k, 2.0])
    short = AdaptiveLossBalancer(2, history_size=5)
    short.load_state_dict(long.state_dict())
    assert short.history()["step"].tolist() == [25, 26, 27, 28, 29]
    np.testing.assert_array_equal(short.history()["losses"][:, 0], [26.0, 27.0, 28.0, 29.0, 30.0])


def test_absent_losses_and_references_survive_a_resume():
    balancer = AdaptiveLossBalancer(["a", "b"], weight_lr=0.5)
    balancer.step({"a": 2.0})
    resumed = AdaptiveLossBalancer(["a", "b"])
    resumed.load_state_dict(roundtrip(balancer.state_dict()))
    assert resumed.initial_losses.tolist() == [2.0, 0.0]
    for weighting in (balancer, resumed):
        weighting.step({"a": 1.0, "b": 4.0})
    assert torch.equal(balancer.weights, resumed.weights)
    assert resumed.initial_losses.tolist() == [2.0, 4.0]


def test_a_state_whose_only_call_was_masked_resumes_as_called():
    """A first call whose losses were masked still counts as a call: ``initial_losses`` reads
    0 (not None) before and after a resume, and the history keeps that masked row."""
    balancer = AdaptiveLossBalancer(2)
    balancer.step([torch.tensor(math.nan), torch.tensor(1.0)])  # masked
    assert int(balancer.num_steps) == 0 and int(balancer.num_skipped) == 1
    resumed = AdaptiveLossBalancer(2)
    resumed.load_state_dict(roundtrip(balancer.state_dict()))
    for b in (balancer, resumed):
        assert b.initial_losses is not None and b.initial_losses.tolist() == [0.0, 0.0]
        assert b.history()["applied"].tolist() == [False]


def test_a_saved_history_size_is_accepted_and_this_objects_is_kept():
    """A state dict that carries ``history_size`` among its hyperparameters (0.1 saved it)
    loads, and the balancer keeps its own ``history_size``."""
    balancer = AdaptiveLossBalancer(2, history_size=5)
    balancer.step([2.0, 1.0])
    saved = balancer.state_dict()
    saved["hyperparameters"]["history_size"] = 1
    resumed = AdaptiveLossBalancer(2, history_size=5)
    resumed.load_state_dict(saved)
    assert resumed.history_size == 5 and resumed.weights.tolist() == balancer.weights.tolist()


def test_constant_weights_resume_their_weights_and_strictness():
    saved = ConstantWeights(["a", "b"], weights=[1.0, 6.0], strict=True)
    saved.weights = [2.0, 3.0]
    saved.step([1.0, 1.0])
    resumed = ConstantWeights(["a", "b"], weights=[0.0, 0.0])
    resumed.load_state_dict(roundtrip(saved.state_dict()))
    assert resumed.weights.tolist() == [2.0, 3.0] and resumed.strict is True
    with pytest.raises(ValueError, match="finite"):
        resumed.step([torch.tensor(float("nan")), torch.tensor(1.0)])


# ----------------------------------------------------------------------------- rejections
def _valid_state():
    balancer = AdaptiveLossBalancer(["a", "b"], weight_lr=0.2)
    for row in ([2.0, 4.0], [1.0, 3.0], [0.5, 2.0]):
        balancer.step(row)
    return balancer.state_dict()


def _edit(path, value):
    def apply(state_dict):
        target = state_dict
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value(target[path[-1]]) if callable(value) else value
        return state_dict

    return apply


_DELETE = object()

BAD_STATE_DICTS = [
    (lambda sd: [sd], TypeError, "should be a mapping"),
    (lambda sd: "state", TypeError, "should be a mapping"),
    (_edit(("state",), _DELETE), ValueError, "'state' and 'hyperparameters'"),
    (_edit(("hyperparameters",), [1, 2]), ValueError, "'state' and 'hyperparameters'"),
    (_edit(("hyperparameters", "rule"), "ConstantWeights"), ValueError, "should come from"),
    (_edit(("hyperparameters", "names"), "ab"), ValueError, "loss names"),
    (_edit(("hyperparameters", "names"), ["b", "a"]), ValueError, "loss names"),
    (_edit(("hyperparameters", "strict"), "False"), TypeError, "`strict` should be a bool"),
    (_edit(("hyperparameters", "strict"), torch.tensor([0, 1])), TypeError, "`strict`"),
    (_edit(("hyperparameters", "distributed"), 1), TypeError, "`distributed`"),
    (_edit(("hyperparameters", "beta"), -1.0), ValueError, "`beta`"),
    (_edit(("hyperparameters", "weight_lr"), torch.tensor([0.1, 0.2])), ValueError, "`weight_lr`"),
    (_edit(("hyperparameters", "gamma"), 1.0), ValueError, r"\['gamma'\]"),
    (
        _edit(("state", "weights"), torch.tensor([0.5, 0.6], dtype=torch.float64)),
        ValueError,
        "simplex",
    ),
    (
        _edit(("state", "weights"), torch.tensor([0.3, 0.3], dtype=torch.float64)),
        ValueError,
        "simplex",
    ),
    (
        _edit(("state", "weights"), torch.tensor([1.5, -0.5], dtype=torch.float64)),
        ValueError,
        "non-negative",
    ),
    (_edit(("state", "weights"), torch.tensor([0.5, 0.5, 0.0])), ValueError, r"shape \(2,\)"),
    (_edit(("state", "weights"), [0.5, 0.5]), ValueError, "should be a tensor"),
    (_edit(("state", "weights"), torch.tensor([1, 0])), ValueError, "floating"),
    (_edit(("state", "initial_losses"), torch.tensor([float("nan"), 1.0])), ValueError, "finite"),
    (_edit(("state", "initial_losses"), torch.zeros(2, dtype=torch.float64)), ValueError, "> 0"),
    (
        _edit(("state", "initial_losses"), torch.tensor([5e-324, 1.0], dtype=torch.float64)),
        ValueError,
        "reciprocal",
    ),
    (_edit(("state", "has_reference"), torch.tensor([1.0, 1.0])), ValueError, "bool"),
    (_edit(("state", "relative_losses"), torch.tensor([-1.0, 1.0])), ValueError, "non-negative"),
    (_edit(("state", "num_steps"), torch.tensor(-1)), ValueError, ">= 0"),
    (_edit(("state", "num_steps"), torch.tensor(1.5)), ValueError, "integer"),
    (_edit(("state", "num_skipped"), _DELETE), ValueError, "`num_skipped`"),
    (_edit(("state", "num_steps"), torch.tensor(1)), ValueError, "T <= 1 calls"),
    (_edit(("state", "history"), lambda h: torch.cat([h, h])), ValueError, "T <= 3 calls"),
    (_edit(("state", "history"), lambda h: h[:, :3]), ValueError, "float"),
    (_edit(("state", "history"), lambda h: h.to(torch.int64)), ValueError, "float"),
    (
        _edit(("state", "history"), lambda h: h.index_fill(1, torch.tensor([4]), math.nan)),
        ValueError,
        "finite",
    ),
    (
        _edit(("state", "history"), lambda h: h.index_fill(1, torch.tensor([0]), math.inf)),
        ValueError,
        "applied rows",
    ),
    (
        _edit(("state", "history"), lambda h: h.index_fill(1, torch.tensor([6]), 0.5)),
        ValueError,
        "applied",
    ),
]


@pytest.mark.parametrize(("corrupt", "error", "match"), BAD_STATE_DICTS)
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, error, match):
    balancer = AdaptiveLossBalancer(["a", "b"], beta=2.0, weight_lr=0.5, strict=True)
    balancer.step([3.0, 1.0])
    balancer.step([torch.tensor(1.0), torch.tensor(0.5)])
    before = snapshot(balancer)
    bad = corrupt(copy.deepcopy(_valid_state()))
    with pytest.raises(error, match=match):
        balancer.load_state_dict(bad)
    assert snapshot(balancer) == before
    balancer.step([1.0, 0.25])  # still usable


def test_the_unmodified_state_dict_loads():
    balancer = AdaptiveLossBalancer(["a", "b"])
    balancer.load_state_dict(_valid_state())
    assert balancer.weight_lr == 0.2


def test_a_rejected_step_changes_nothing():
    balancer = AdaptiveLossBalancer(["a", "b"], weight_lr=0.5)
    balancer.step([torch.tensor(2.0), torch.tensor(1.0)])
    before = snapshot(balancer)
    rejected = [
        [torch.tensor(1.0), torch.tensor(1.0, device="meta")],  # two devices
        [10**400, 1.0],
        [True, 1.0],
        {"a": 1.0, "c": 2.0},
        [torch.ones(2), 1.0],
        [1.0, float("nan")],  # numbers only: raised, not masked
    ]
    for losses in rejected:
        with pytest.raises((ValueError, TypeError)):
            balancer.step(losses)
        assert snapshot(balancer) == before, losses


# ----------------------------------------------------------------------------- fuzz
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.builds(lambda v: torch.tensor(v, dtype=torch.float64), st.floats(allow_nan=True)),
    st.builds(lambda v: torch.tensor([v, v]), st.floats(-1, 1)),
    st.builds(lambda v: np.float32(v), st.floats(-1e3, 1e3, width=32)),
    st.just(torch.tensor(True)),
    st.lists(st.floats(0, 1), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(_ANY_VALUE, max_size=4),
        st.dictionaries(st.sampled_from(["a", "b", "c", "x"]), _ANY_VALUE, max_size=4),
        _ANY_VALUE,
    )
)
def test_fuzz_step_is_a_clear_error_with_state_unchanged_or_a_valid_update(losses):
    balancer = AdaptiveLossBalancer(["a", "b", "c"], weight_lr=0.3)
    balancer.step([1.0, 2.0, 3.0])
    before = snapshot(balancer)
    try:
        total = balancer.step(losses)
    except (ValueError, TypeError) as error:
        assert str(error) and "\n" not in str(error)
        assert snapshot(balancer) == before
        return
    weights = balancer.weights
    assert torch.isfinite(weights).all() and abs(weights.sum().item() - 1.0) < 1e-12
    assert isinstance(total, (float, torch.Tensor))
    applied = balancer.history()["applied"][-1]
    assert int(balancer.num_steps) == 1 + int(applied)


def _mutations():
    """Strategies of edits to a valid state dict: type swaps, shapes, values, deletions."""
    keys = st.sampled_from(
        [
            ("state", "weights"),
            ("state", "initial_losses"),
            ("state", "has_reference"),
            ("state", "relative_losses"),
            ("state", "num_steps"),
            ("state", "num_skipped"),
            ("state", "history"),
            ("hyperparameters", "beta"),
            ("hyperparameters", "weight_lr"),
            ("hyperparameters", "strict"),
            ("hyperparameters", "names"),
            ("hyperparameters", "rule"),
        ]
    )
    values = st.one_of(
        st.just(_DELETE),
        st.none(),
        st.booleans(),
        st.integers(-5, 5),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=3),
        st.lists(st.floats(-2, 2), max_size=3),
        st.builds(
            lambda v, n: torch.full((n,), v, dtype=torch.float64),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(0, 3),
        ),
        st.builds(lambda v: torch.tensor(v), st.integers(-3, 3)),
        st.builds(lambda b: torch.tensor([b, not b]), st.booleans()),
        st.builds(
            lambda r, c: torch.rand(r, c, dtype=torch.float64), st.integers(0, 4), st.integers(0, 8)
        ),
    )
    return st.lists(st.tuples(keys, values), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_fuzz_load_state_dict_is_a_clear_error_with_state_unchanged_or_a_valid_state(edits):
    balancer = AdaptiveLossBalancer(["a", "b"], beta=2.0, weight_lr=0.5)
    balancer.step([3.0, 1.0])
    before = snapshot(balancer)
    state_dict = _valid_state()
    for path, value in edits:
        _edit(path, value)(state_dict)
    try:
        balancer.load_state_dict(state_dict)
    except (ValueError, TypeError) as error:
        assert str(error) and "\n" not in str(error)
        assert snapshot(balancer) == before
        return
    # Accepted: the balancer is in a consistent state and keeps working.
    weights = balancer.weights
    assert torch.isfinite(weights).all() and abs(weights.sum().item() - 1.0) < 1e-6
    balancer.step([1.0, 1.0])
    assert torch.isfinite(balancer.weights).all()
