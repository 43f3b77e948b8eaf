"""What every rule's tests share: the three paths, feeding trajectories (NaN = absent), the
sync counter, and the guarantees checked the same way for each rule (oracle agreement,
masking, resume, all-or-nothing loading, no sync).

The patterns are those of tests/test_balancer.py and tests/test_state_dict.py.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

# Three ways to run a rule: host floats (CPU losses, float64 state), the tensor path forced
# on the CPU (what accelerators run), and a float32 state (tensor path).
PATHS = ["host", "device", "float32"]
RTOL = {"host": 1e-12, "device": 1e-12, "float32": 2e-5}
ATOL = {"host": 1e-300, "device": 1e-300, "float32": 1e-6}


def make(cls, path, *args, **kwargs):
    if path == "float32":
        kwargs["dtype"] = torch.float32
    rule = cls(*args, **kwargs)
    rule.supports_host = path == "host"
    return rule


def as_input(path, row):
    """A step's losses: floats on the host path, float64 tensors otherwise; NaN -> None."""
    return [
        None
        if v is None or (isinstance(v, float) and math.isnan(v))
        else (float(v) if path == "host" else torch.tensor(float(v), dtype=torch.float64))
        for v in row
    ]


def run(rule, path, trajectory):
    """The ``T x N`` float64 weights after each step of ``trajectory``."""
    rows = []
    for row in trajectory:
        rule.step(as_input(path, row))
        rows.append(rule.weights.to(torch.float64).numpy())
    return np.stack(rows)


def assert_matches_oracle(got, expected, path):
    np.testing.assert_allclose(got, expected, rtol=RTOL[path], atol=ATOL[path])


# ----------------------------------------------------------------------------- strategies
@st.composite
def trajectories(draw, max_losses=5, max_length=14, low=0.1, high=10.0, absent=True):
    """A ``T x N`` list of losses in [low, high], NaN where absent (each row keeps one)."""
    n = draw(st.integers(1, max_losses))
    length = draw(st.integers(1, max_length))
    value = st.floats(low, high, allow_nan=False, allow_infinity=False)
    rows = draw(st.lists(st.lists(value, min_size=n, max_size=n), min_size=length, max_size=length))
    if absent and n > 1 and draw(st.booleans()):
        for row in rows:
            mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
            if any(mask):
                for i, here in enumerate(mask):
                    if not here:
                        row[i] = math.nan
    return rows


# ----------------------------------------------------------------------------- sync counter
class CountScalarReads(TorchDispatchMode):
    """Counts the reads of a tensor's value back to the host (``.item()``, ``float()``, ...)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def check_no_sync(rule, n, *, zero_is_invalid=False):
    """Valid, masked and absent steps on the tensor path read nothing back."""
    rule.supports_host = False
    x = torch.linspace(1.0, 2.0, n, requires_grad=True)
    steps = [
        [x[i] * (1.0 + 0.1 * i) for i in range(n)],
        [x[i] * 0.5 for i in range(n)],
        [x[0] * float("nan"), *[x[i] for i in range(1, n)]],  # masked
        [-x[0], *[x[i] for i in range(1, n)]],  # negative: masked
        [x[0] * 0.3, None, *[x[i] * 0.7 for i in range(2, n)]],  # absent
        [x[0] * 0.0, *[x[i] * 0.2 for i in range(1, n)]],  # zero
        [x[i] * 0.25 for i in range(n)],
    ]
    with CountScalarReads() as counter:
        for losses in steps:
            total = rule.step(losses)
        rule.combine(steps[0])
    assert counter.count == 0
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    skipped = 3 if zero_is_invalid else 2
    assert int(rule.num_skipped) == skipped and int(rule.num_steps) == len(steps) - skipped


# ----------------------------------------------------------------------------- state
def roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def snapshot(rule):
    """A comparable copy of the whole state (NaN-aware)."""
    state = rule.state_dict()
    return {
        "hyper": state["hyperparameters"],
        "state": {
            k: (v.nan_to_num(nan=-7.0).tolist(), str(v.dtype)) if isinstance(v, torch.Tensor) else v
            for k, v in state["state"].items()
        },
        "history": {k: np.nan_to_num(v, nan=-7.0).tolist() for k, v in rule.history().items()},
    }


def rule_state(rule):
    """The state fields that a masked step must leave alone (all but the call counters)."""
    state = rule.state_dict()["state"]
    skip = {"num_skipped", "history"}
    return {k: v.tolist() for k, v in state.items() if k not in skip}


def check_masking(factory, path, trajectory, bad):
    """A step with an invalid tensor loss changes no state field but the skip count, and the
    run then continues as if it never happened; ``strict=True`` raises instead."""
    tensors = "device" if path == "host" else path  # masking needs tensor losses
    rule, reference = factory(path), factory(path)
    for row in trajectory:
        rule.step(as_input(tensors, row))
        reference.step(as_input(tensors, row))
    before = rule_state(rule)
    total = rule.step([torch.tensor(v, dtype=torch.float64) for v in bad])
    assert isinstance(total, torch.Tensor)
    assert rule_state(rule) == before
    assert int(rule.num_skipped) == 1
    assert rule.history()["applied"].tolist()[-1] is False
    for row in trajectory[::-1]:  # the same continuation with and without the masked step
        rule.step(as_input(tensors, row))
        reference.step(as_input(tensors, row))
    assert torch.equal(rule.weights, reference.weights)
    strict = factory(path, strict=True)
    for row in trajectory:
        strict.step(as_input(path, row))
    before = snapshot(strict)
    with pytest.raises(ValueError, match="left unchanged"):
        strict.step([torch.tensor(v, dtype=torch.float64) for v in bad])
    assert snapshot(strict) == before
    if path == "host":  # numbers alone raise, strict or not
        numbers = factory(path)
        numbers.step(as_input(path, trajectory[0]))
        with pytest.raises(ValueError, match="left unchanged"):
            numbers.step([float(v) for v in bad])


def check_resume(factory, path, trajectory, split):
    """Saving at ``split`` (through torch.save / weights_only load) and continuing gives the
    uninterrupted run's weights and state, bit for bit."""
    rows = [list(r) for r in trajectory]
    rows[split // 2][0] = math.nan  # an absent loss before the save

    def feed(rule, part):
        for row in part:
            rule.step(as_input(path, row))

    uninterrupted = factory(path)
    feed(uninterrupted, rows)
    first = factory(path)
    feed(first, rows[:split])
    first.step([torch.tensor(float("nan"), dtype=torch.float64)] * len(rows[0]))  # masked
    uninterrupted_masked = factory(path)
    feed(uninterrupted_masked, rows[:split])
    uninterrupted_masked.step([torch.tensor(float("nan"), dtype=torch.float64)] * len(rows[0]))
    feed(uninterrupted_masked, rows[split:])
    resumed = factory(path)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    feed(resumed, rows[split:])
    assert torch.equal(resumed.weights, uninterrupted_masked.weights)
    assert rule_state(resumed) == rule_state(uninterrupted_masked)
    np.testing.assert_array_equal(
        resumed.history()["weights"], uninterrupted_masked.history()["weights"]
    )
    # The masked step changed nothing: the run equals the one without it.
    assert torch.equal(resumed.weights, uninterrupted.weights)


_DELETE = object()


def edit(state_dict, path, value):
    target = state_dict
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return state_dict


def check_rejected(factory, trajectory, corrupt, match):
    """Loading a corrupted state dict raises ``ValueError``/``TypeError`` matching ``match``,
    and the rule's state is unchanged."""
    source = factory("host")
    for row in trajectory:
        source.step(as_input("host", row))
    target = factory("host")
    target.step(as_input("host", trajectory[0]))
    before = snapshot(target)
    bad = corrupt(copy.deepcopy(source.state_dict()))
    with pytest.raises((ValueError, TypeError), match=match):
        target.load_state_dict(bad)
    assert snapshot(target) == before
    target.step(as_input("host", trajectory[-1]))  # still usable


def mutations(keys):
    """Strategies of edits to a state dict's ``keys``: type swaps, shapes, values, deletions."""
    values = st.one_of(
        st.just(_DELETE),
        st.none(),
        st.booleans(),
        st.integers(-5, 2**65),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=3),
        st.builds(
            lambda v, n: torch.full((n,), v, dtype=torch.float64),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(0, 3),
        ),
        st.builds(lambda v: torch.tensor(v), st.integers(-3, 3)),
        st.builds(lambda b, n: torch.tensor([b] * n), st.booleans(), st.integers(1, 3)),
        st.builds(
            lambda r, c, s: s * torch.rand(r, c, dtype=torch.float64),
            st.integers(0, 6),
            st.integers(0, 8),
            st.sampled_from([1.0, -1.0, 10.0]),
        ),
    )
    return st.lists(st.tuples(st.sampled_from(keys), values), min_size=1, max_size=3)


def fuzz_load(factory, trajectory, edits, check_weights):
    """Either a clear one-line error with the state unchanged, or a state that keeps working."""
    source = factory("host")
    for row in trajectory:
        source.step(as_input("host", row))
    target = factory("host")
    target.step(as_input("host", trajectory[0]))
    before = snapshot(target)
    state_dict = source.state_dict()
    for path, value in edits:
        edit(state_dict, path, value)
    try:
        target.load_state_dict(state_dict)
    except (ValueError, TypeError) as error:
        assert str(error) and "\n" not in str(error)
        assert snapshot(target) == before
        return
    check_weights(target.weights)
    for path in ("host", "device"):
        clone = factory(path)
        clone.load_state_dict(target.state_dict())
        for row in trajectory:
            clone.step(as_input(path, row))
        assert torch.isfinite(clone.weights).all()
        check_weights(clone.weights)


def state_keys(rule):
    """The ``(section, key)`` pairs of a rule's state dict."""
    state_dict = rule.state_dict()
    return [
        (section, key) for section in ("state", "hyperparameters") for key in state_dict[section]
    ]
