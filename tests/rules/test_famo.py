"""anl.FAMO: the total and one logits update by hand, the float64 oracle on every path, the
reference formulation with torch.optim.Adam, the second call's contract, absent losses,
resume, rejected loads, masking and sync-freedom."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anl import FAMO
from anl.testing import oracles

try:
    from . import _params_helpers as helpers
except ImportError:
    import _params_helpers as helpers


def make(path, *args, **kwargs):
    if path == "float32":
        kwargs["dtype"] = torch.float32
    return helpers.configure(FAMO(*args, **kwargs), path)


def run(famo, before, after, present=None, present_after=None, dtype=torch.float64):
    """Step (with leaf tensors, to read the gradient weights) and update; what each step saw."""
    n = len(before[0])
    present = present or [[True] * n] * len(before)
    out = {"weights": [], "logits": [], "totals": [], "gradient_weights": []}
    for t, (row, here) in enumerate(zip(before, present, strict=True)):
        leaves = [torch.tensor(v, dtype=dtype, requires_grad=True) for v in row]
        total = famo.step([leaf if p else None for leaf, p in zip(leaves, here, strict=True)])
        total.backward()
        out["totals"].append(float(total.detach()))
        out["weights"].append(famo.weights.double().numpy())
        grads = [0.0 if leaf.grad is None else float(leaf.grad) for leaf in leaves]
        out["gradient_weights"].append(grads)
        if after[t] is not None:
            mask = [True] * n if present_after is None else present_after[t]
            famo.update(
                helpers.tensors(
                    [v if p else None for v, p in zip(after[t], mask, strict=True)], dtype
                )
            )
        out["logits"].append(famo.logits.double().numpy())
    return {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- hand-computed
# Two losses, z = (1/2, 1/2), losses L = (1, 4), eps = 1e-8 (negligible at 1e-7):
#   c = 1 / (z_a / 1 + z_b / 4) = 1 / 0.625 = 1.6,
#   total = c (z_a log 1 + z_b log 4) = 0.8 log 4,
#   gradient weights c z_i / L_i = (0.8, 0.2): a convex combination, 4x more on the small loss.
# After the step L+ = (0.5, 3): delta = (log 2, log 4/3) = (0.693, 0.288), mean 0.490,
#   g = z (delta - mean) = (+0.101, -0.101) (+ gamma xi = 0 at xi = 0),
#   Adam's first step moves each logit by lr g / |g| = lr against g: xi = (-lr, +lr),
#   so z = softmax(-0.025, 0.025) = (0.4875, 0.5125): b, which fell less, gains weight.
# A wrong sign (xi = (+lr, -lr)), a missing c or log, or L+ - L read the other way fail this.
@pytest.mark.parametrize("path", helpers.PATHS)
def test_hand_computed_step_and_update(path):
    famo = make(path, ["a", "b"], gamma=0.0)
    dtype = helpers.dtype_of(path)
    tolerance = 1e-6 if path == "float32" else 1e-7
    a, b = (
        torch.tensor(1.0, dtype=dtype, requires_grad=True),
        torch.tensor(4.0, dtype=dtype, requires_grad=True),
    )
    total = famo.step([a, b])
    assert total.item() == pytest.approx(0.8 * math.log(4), rel=tolerance)
    total.backward()
    assert [a.grad.item(), b.grad.item()] == pytest.approx([0.8, 0.2], rel=tolerance)
    famo.update(helpers.tensors([0.5, 3.0], dtype))
    np.testing.assert_allclose(
        famo.logits, [-0.025, 0.025], atol=1e-6 if path == "float32" else 1e-8
    )
    expected = [1 / (1 + math.exp(0.05)), 1 / (1 + math.exp(-0.05))]
    np.testing.assert_allclose(famo.weights, expected, rtol=tolerance)
    assert int(famo.num_updates) == 1
    # The next step weights by the new z: c = 1 / (z_a / 1 + z_b / 4).
    total = famo.step(helpers.tensors([1.0, 4.0], dtype))
    c = 1 / (expected[0] + expected[1] / 4)
    assert total.item() == pytest.approx(c * expected[1] * math.log(4), rel=tolerance)


def test_numbers_and_the_history():
    famo = FAMO(["a", "b"])
    assert famo.step([1.0, 4.0]) == pytest.approx(0.8 * math.log(4), rel=1e-7)
    famo.update([0.5, 3.0])
    famo.step([0.5, 3.0])
    history = famo.history()
    np.testing.assert_allclose(history["weights"][0], [0.5, 0.5])
    np.testing.assert_allclose(history["weights"][1], famo.weights)
    np.testing.assert_allclose(history["losses"], [[1.0, 4.0], [0.5, 3.0]])


def test_a_loss_below_its_bound_counts_as_at_it():
    # min_losses = (1, 0): D = (max(0.5 - 1, 0) + eps, 2 + eps) = (1e-8, 2): finite, and the
    # loss at its bound takes nearly all the gradient weight (c z_a / D_a ~ 1).
    famo = FAMO(2, min_losses=[1.0, 0.0])
    a, b = torch.tensor(0.5, requires_grad=True), torch.tensor(2.0, requires_grad=True)
    total = famo.step([a, b])
    assert torch.isfinite(total)
    total.backward()
    assert a.grad.item() == pytest.approx(1.0, rel=1e-6) and b.grad.item() < 1e-7
    famo.update([0.25, 1.0])
    assert torch.isfinite(famo.logits).all()


# ----------------------------------------------------------------------------- the oracle
@st.composite
def famo_runs(draw):
    before, present = draw(helpers.masked_trajectories(max_n=4, max_length=7))
    n, length = len(before[0]), len(before)
    value = st.floats(1e-2, 10.0, allow_nan=False)
    after = [
        draw(st.lists(value, min_size=n, max_size=n)) if draw(st.integers(0, 5)) else None
        for _ in range(length)
    ]
    present_after = []
    for _ in range(length):
        row = (
            draw(st.lists(st.booleans(), min_size=n, max_size=n))
            if draw(st.booleans())
            else [True] * n
        )
        if not any(row):
            row[draw(st.integers(0, n - 1))] = True
        present_after.append(row)
    hyper = {
        "weight_lr": draw(st.sampled_from([0.025, 0.2]) | st.floats(1e-3, 0.3)),
        "gamma": draw(st.sampled_from([0.0, 1e-3, 1e-2]) | st.floats(0.0, 0.1)),
        "eps": draw(st.sampled_from([1e-8, 1e-3])),
        "min_losses": draw(
            st.sampled_from([0.0]) | st.lists(st.floats(0.0, 0.5), min_size=n, max_size=n)
        ),
    }
    return before, after, present, present_after, hyper


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(famo_runs())
@pytest.mark.parametrize("path", ["host", "device"])
def test_trajectories_match_the_float64_oracle(path, case):
    before, after, present, present_after, hyper = case
    famo = make(path, len(before[0]), **hyper)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a step without update warns: drawn on purpose
        got = run(famo, before, after, present, present_after)
    want = oracles.reference_famo(
        before, after, present_before=present, present_after=present_after, **hyper
    )
    for key in ("weights", "totals", "gradient_weights"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-12, err_msg=key)
    # Adam divides by sqrt(v) + 1e-8: a rounding-level g moves a logit by up to ~1e-10.
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-10, atol=1e-9)


def test_the_reference_formulation_with_torch_adam():
    """The logits follow the official formulation: autograd's softmax VJP of delta as the
    gradient, torch.optim.Adam(lr=w_lr, weight_decay=gamma) stepping them."""
    rng = np.random.default_rng(3)
    before = rng.uniform(0.1, 5.0, size=(30, 3))
    after = before * rng.uniform(0.6, 1.05, size=(30, 3))
    lr, gamma, eps = 0.05, 0.01, 1e-8
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=lr, weight_decay=gamma)
    famo = FAMO(3, weight_lr=lr, gamma=gamma)
    for b, a in zip(before, after, strict=True):
        loss = torch.tensor(b, dtype=torch.float64)
        z = torch.softmax(w, -1)
        d = loss + eps
        c = (z / d).sum().detach()
        reference_total = (d.log() * z / c).sum()
        assert famo.step(b.tolist()) == pytest.approx(reference_total.item(), rel=1e-13)
        delta = (loss + eps).log() - (torch.tensor(a, dtype=torch.float64) + eps).log()
        (grad,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)
        optimizer.zero_grad()
        w.grad = grad
        optimizer.step()
        famo.update(a.tolist())
        np.testing.assert_allclose(famo.logits, w.detach(), rtol=1e-12, atol=1e-15)
    assert int(famo.num_updates) == optimizer.state[w]["step"].item() == 30
    np.testing.assert_allclose(
        famo.state_dict()["state"]["exp_avg_sq"], optimizer.state[w]["exp_avg_sq"], rtol=1e-12
    )


# ----------------------------------------------------------------------------- second call
def test_update_without_a_step_raises_and_changes_nothing():
    famo = FAMO(2)
    with pytest.raises(RuntimeError, match=r"should follow a FAMO\.step"):
        famo.update([1.0, 1.0])
    famo.step([1.0, 2.0])
    famo.update([0.5, 2.0])
    before = helpers.snapshot(famo)
    with pytest.raises(RuntimeError, match="no step ran since the last update"):
        famo.update([0.25, 2.0])
    assert helpers.snapshot(famo) == before


@pytest.mark.parametrize("path", ["host", "device"])
def test_two_steps_without_update_warn_and_the_second_is_the_one_updated(path):
    famo = make(path, 2, weight_lr=0.1)
    famo.step(helpers.tensors([1.0, 2.0]))
    with pytest.warns(UserWarning, match="without FAMO.update"):
        famo.step(helpers.tensors([3.0, 1.0]))
    np.testing.assert_array_equal(famo.logits, [0.0, 0.0])
    famo.update(helpers.tensors([1.0, 0.9]))
    want = oracles.reference_famo([[1.0, 2.0], [3.0, 1.0]], [None, [1.0, 0.9]], weight_lr=0.1)
    np.testing.assert_allclose(famo.logits, want["logits"][-1], rtol=1e-12)
    assert int(famo.num_updates) == 1


@pytest.mark.parametrize("path", ["host", "device"])
def test_an_update_after_a_masked_step_changes_nothing(path):
    famo = make(path, 2)
    famo.step(helpers.tensors([1.0, 2.0]))
    famo.update(helpers.tensors([0.5, 1.9]))
    logits = famo.logits.clone()
    famo.step(helpers.tensors([math.nan, 2.0]))  # masked: no losses recorded
    famo.update(helpers.tensors([0.4, 1.8]))
    assert torch.equal(famo.logits, logits)
    assert (int(famo.num_updates), int(famo.num_updates_skipped), int(famo.num_skipped)) == (
        1,
        1,
        1,
    )
    famo.step(helpers.tensors([0.5, 1.9]))  # and the next pair works again
    famo.update(helpers.tensors([0.4, 1.8]))
    assert int(famo.num_updates) == 2 and not torch.equal(famo.logits, logits)


@pytest.mark.parametrize("path", ["host", "device"])
def test_invalid_update_losses(path):
    famo = make(path, ["a", "b"])
    famo.step(helpers.tensors([1.0, 2.0]))
    logits = famo.logits.clone()
    famo.update(helpers.tensors([math.inf, 1.0]))  # tensors: skipped and counted
    assert torch.equal(famo.logits, logits) and int(famo.num_updates_skipped) == 1
    with pytest.raises(RuntimeError):  # the step's losses were consumed
        famo.update(helpers.tensors([1.0, 1.0]))
    if path == "host":  # numbers on the host, as step does: raised, nothing changed
        famo.step([1.0, 2.0])
        before = helpers.snapshot(famo)
        with pytest.raises(ValueError, match="`b` should be finite and non-negative"):
            famo.update([0.5, -1.0])
        assert helpers.snapshot(famo) == before
        famo.update([0.5, 1.0])  # the update is still due
        assert int(famo.num_updates) == 1


@pytest.mark.parametrize("path", ["host", "device"])
def test_strict_update_raises_and_changes_nothing(path):
    famo = make(path, ["a", "b"], strict=True)
    famo.step(helpers.tensors([1.0, 2.0]))
    before = helpers.snapshot(famo)
    with pytest.raises(ValueError, match="`a` should be finite"):
        famo.update(helpers.tensors([math.nan, 1.0]))
    assert helpers.snapshot(famo) == before


# ----------------------------------------------------------------------------- absent losses
@pytest.mark.parametrize("path", helpers.PATHS)
def test_absent_losses(path):
    # z = (1/3, 1/3, 1/3), losses (1, -, 4): c = 1 / (1/3 + 1/12) = 2.4 over the present ones,
    # total = 2.4 (log 1 + log 4) / 3 = 0.8 log 4 and gradient weights (0.8, 0, 0.2), as if
    # the absent loss had never been declared.
    famo = make(path, ["a", "b", "c"])
    dtype = helpers.dtype_of(path)
    tolerance = 1e-6 if path == "float32" else 1e-7
    a, c = (
        torch.tensor(1.0, dtype=dtype, requires_grad=True),
        torch.tensor(4.0, dtype=dtype, requires_grad=True),
    )
    total = famo.step({"a": a, "c": c})
    assert total.item() == pytest.approx(0.8 * math.log(4), rel=tolerance)
    total.backward()
    assert [a.grad.item(), c.grad.item()] == pytest.approx([0.8, 0.2], rel=tolerance)
    # The update runs over a and c only: b's logit and Adam moments stay at 0.
    famo.update(helpers.tensors([0.5, 1.0, 3.0], dtype))
    state = famo.state_dict()["state"]
    for key in ("logits", "exp_avg", "exp_avg_sq"):
        assert state[key][1].item() == 0.0 and state[key][0].item() != 0.0, key
    np.testing.assert_allclose(famo.logits[[0, 2]], [-0.025, 0.025], atol=1e-6)
    # Present at the step but absent from the update: no update for it either.
    famo.step(helpers.tensors([1.0, 1.0, 1.0], dtype))
    logits = famo.logits.clone()
    famo.update([torch.tensor(0.5, dtype=dtype), None, torch.tensor(0.9, dtype=dtype)])
    assert famo.logits[1].item() == logits[1].item() == 0.0  # b: no progress measured
    assert famo.logits[0].item() != logits[0].item()


# ----------------------------------------------------------------------------- state dicts
def _feed(famo, rows, dtype):
    for before, after in rows:
        famo.step(helpers.tensors(before, dtype))
        if after is not None:
            famo.update(helpers.tensors(after, dtype))


def _trajectory():
    rng = np.random.default_rng(5)
    rows = [
        (rng.uniform(0.1, 3.0, 3).tolist(), rng.uniform(0.1, 3.0, 3).tolist()) for _ in range(16)
    ]
    rows[3] = ([math.nan, 1.0, 1.0], [1.0, 1.0, 1.0])  # a masked step, its update skipped
    rows[6] = ([1.0, None, 2.0], [0.9, 1.0, None])  # absent losses
    return rows


@pytest.mark.parametrize("path", helpers.PATHS)
@pytest.mark.parametrize("split", ["after_update", "before_update"])
def test_resume_is_bit_identical(path, split):
    """Saved between two pairs, or between a step and its update: the resumed run continues
    bit-identically, the logits' Adam moments and step count included."""
    rows, dtype = _trajectory(), helpers.dtype_of(path)
    whole = make(path, ["a", "b", "c"], weight_lr=0.07, gamma=0.01, history_size=10)
    _feed(whole, rows, dtype)
    first = make(path, ["a", "b", "c"], weight_lr=0.07, gamma=0.01, history_size=10)
    _feed(first, rows[:9], dtype)
    if split == "before_update":
        first.step(helpers.tensors(rows[9][0], dtype))
    saved = helpers.roundtrip(first.state_dict())
    resumed = make(path, ["a", "b", "c"], weight_lr=0.5, gamma=0.0, min_losses=1.0, history_size=10)
    resumed.load_state_dict(saved)
    assert resumed.weight_lr == 0.07 and resumed.gamma == 0.01
    if split == "before_update":
        resumed.update(helpers.tensors(rows[9][1], dtype))
        _feed(resumed, rows[10:], dtype)
    else:
        _feed(resumed, rows[9:], dtype)
    assert helpers.snapshot(resumed) == helpers.snapshot(whole)
    assert int(resumed.num_updates) == 15 and int(resumed.num_updates_skipped) == 1


def _valid_state():
    famo = FAMO(["a", "b"], gamma=0.01)
    _feed(famo, [([2.0, 1.0], [1.5, 0.9]), ([1.5, 0.9], [1.0, 0.8])], torch.float64)
    return famo.state_dict()


def _edit(section, key, value):
    def apply(state_dict):
        if value is _DELETE:
            state_dict[section].pop(key, None)
        else:
            state_dict[section][key] = value(state_dict[section][key]) if callable(value) else value
        return state_dict

    return apply


_DELETE = object()
F64 = torch.float64
BAD = [
    (_edit("state", "awaiting_update", _DELETE), "`awaiting_update` should be a bool"),
    (_edit("state", "awaiting_update", 1), "`awaiting_update` should be a bool"),
    (_edit("state", "logits", torch.tensor([0.5, 0.0], dtype=F64)), "softmax of `logits`"),
    (_edit("state", "weights", torch.tensor([0.9, 0.1], dtype=F64)), "softmax of `logits`"),
    (_edit("state", "weights", torch.tensor([0.9, 0.2], dtype=F64)), "simplex"),
    (_edit("state", "exp_avg_sq", torch.tensor([-1.0, 0.0], dtype=F64)), "`exp_avg_sq`"),
    (_edit("state", "exp_avg", torch.tensor([math.nan, 0.0], dtype=F64)), "`exp_avg`"),
    (_edit("state", "pending_losses", torch.tensor([-1.0, 0.0], dtype=F64)), "`pending_losses`"),
    (_edit("state", "pending_present", torch.tensor([1.0, 0.0])), "bool"),
    (_edit("state", "pending_at", torch.tensor(9)), "`pending_at`"),
    (_edit("state", "num_updates", torch.tensor(3)), "`num_updates`"),
    (_edit("state", "num_updates_skipped", _DELETE), "`num_updates_skipped`"),
    (_edit("hyperparameters", "gamma", -0.1), "`gamma`"),
    (_edit("hyperparameters", "weight_lr", 0.0), "`weight_lr`"),
    (_edit("hyperparameters", "eps", math.inf), "`eps`"),
    (_edit("hyperparameters", "min_losses", [0.0]), "`min_losses`"),
    (_edit("hyperparameters", "rule", "UncertaintyWeighting"), "should come from"),
]


@pytest.mark.parametrize(("corrupt", "match"), BAD)
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, match):
    famo = FAMO(["a", "b"], weight_lr=0.3)
    famo.step([3.0, 1.0])
    before = helpers.snapshot(famo)
    with pytest.raises(ValueError, match=match):
        famo.load_state_dict(corrupt(copy.deepcopy(_valid_state())))
    assert helpers.snapshot(famo) == before
    famo.update([2.0, 1.0])  # still usable, still awaiting its update


_KEYS = [
    ("state", k)
    for k in (
        "logits",
        "weights",
        "exp_avg",
        "exp_avg_sq",
        "num_updates",
        "num_updates_skipped",
        "pending_losses",
        "pending_present",
        "pending_at",
        "awaiting_update",
        "num_steps",
    )
] + [("hyperparameters", k) for k in ("weight_lr", "gamma", "eps", "min_losses")]
_VALUES = st.one_of(
    st.just(_DELETE),
    st.none(),
    st.booleans(),
    st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(-2, 2), max_size=3),
    st.builds(
        lambda v, n: torch.full((n,), v, dtype=F64),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(0, 3),
    ),
    st.builds(lambda v: torch.tensor(v), st.integers(-3, 12)),
    st.builds(lambda b: torch.tensor([b, not b]), st.booleans()),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), min_size=1, max_size=3))
def test_fuzz_load_state_dict_is_a_clear_error_with_state_unchanged_or_a_valid_state(edits):
    famo = FAMO(["a", "b"], weight_lr=0.3)
    famo.step([3.0, 1.0])
    before = helpers.snapshot(famo)
    state_dict = _valid_state()
    for (section, key), value in edits:
        _edit(section, key, value)(state_dict)
    try:
        famo.load_state_dict(state_dict)
    except (ValueError, TypeError) as error:
        assert str(error) and "\n" not in str(error)
        assert helpers.snapshot(famo) == before
        return
    # Accepted: consistent, and it keeps working.
    assert abs(famo.weights.sum().item() - 1.0) < 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        famo.step([1.0, 1.0])
    famo.update([0.5, 1.0])
    assert torch.isfinite(famo.logits).all() and torch.isfinite(famo.weights).all()


# ----------------------------------------------------------------------------- masking, syncs
@pytest.mark.parametrize("path", helpers.PATHS)
def test_a_masked_step_keeps_the_state(path):
    famo = make(path, ["a", "b"])
    dtype = helpers.dtype_of(path)
    famo.step(helpers.tensors([1.0, 2.0], dtype))
    famo.update(helpers.tensors([0.5, 1.0], dtype))
    before = helpers.snapshot(famo)
    total = famo.step(helpers.tensors([1.0, math.nan], dtype))
    assert not torch.isfinite(total)
    after = helpers.snapshot(famo)
    for key in ("weights", "logits", "exp_avg", "exp_avg_sq", "pending_losses", "pending_at"):
        assert after["state"][key] == before["state"][key], key
    assert after["state"]["num_skipped"][0] == 1
    strict = make(path, ["a", "b"], strict=True)
    strict.step(helpers.tensors([1.0, 2.0], dtype))
    before = helpers.snapshot(strict)
    with pytest.raises(ValueError, match="`b` should be finite"):
        strict.step(helpers.tensors([1.0, math.nan], dtype))
    assert helpers.snapshot(strict) == before


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_device_path_never_reads_a_tensor_back(dtype):
    famo = FAMO(["a", "b", "c"], dtype=dtype)
    famo.supports_host = False
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    pairs = [
        (lambda: [x[0] * 2, x[1], x[2] * 0.5], [1.5, 1.9, 1.2]),
        (lambda: [x[0], x[1] * 0.5, x[2] * 0.1], [0.9, 0.8, 0.2]),
        (lambda: [x[0] * math.nan, x[1], x[2]], [1.0, 1.0, 1.0]),  # masked step
        (lambda: [x[0], None, x[2]], [0.5, None, 0.2]),  # absent
        (lambda: [x[0], x[1], x[2]], [math.inf, 1.0, 1.0]),  # masked update
    ]
    with helpers.CountScalarReads() as counter:
        for losses, after in pairs:
            famo.step(losses()).backward()
            famo.update([None if v is None else torch.tensor(v) for v in after])
        famo.combine(pairs[0][0]()).backward()
    assert counter.count == 0
    assert int(famo.num_updates) == 3 and int(famo.num_updates_skipped) == 2


# ----------------------------------------------------------------------------- hyperparameters
def test_hyperparameters_are_settable_and_checked():
    famo = FAMO(2)
    assert famo.defaults == {
        "weight_lr": 0.025,
        "gamma": 1e-3,
        "min_losses": [0.0, 0.0],
        "eps": 1e-8,
    }
    famo.weight_lr *= 0.1
    famo.gamma = 0
    assert famo.weight_lr == pytest.approx(0.0025) and famo.gamma == 0.0
    with pytest.raises(ValueError, match="`gamma`"):
        famo.gamma = -1.0
    assert famo.gamma == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight_lr": 0.0}, "`weight_lr` should be a finite number > 0"),
        ({"weight_lr": True}, "`weight_lr`"),
        ({"gamma": math.nan}, "`gamma`"),
        ({"eps": 0.0}, "`eps`"),
        ({"min_losses": [0.0, 1.0, 2.0]}, "`min_losses`"),
        ({"min_losses": math.inf}, "`min_losses`"),
        ({"min_losses": "0"}, "`min_losses`"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FAMO(2, **kwargs)
