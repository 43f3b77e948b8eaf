"""What the tests of the rules with parameters or a second call share: the three paths, a
sync counter, state snapshots, and the checks common to UncertaintyWeighting and IMTLL."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

# Three ways to run the same rule: host floats (CPU tensors, float64 state), the tensor path
# forced on the CPU (what accelerators run), and a float32 state (tensor path).
PATHS = ["host", "device", "float32"]


def configure(weighting, path):
    """Force ``path`` on a weighting built with ``dtype=float32`` when ``path == "float32"``."""
    if path == "device":
        weighting.supports_host = False
    return weighting


def dtype_of(path):
    return torch.float32 if path == "float32" else torch.float64


def tensors(values, dtype=torch.float64):
    """One 0-dim tensor per value (``None`` kept: an absent loss)."""
    return [None if v is None else torch.tensor(v, dtype=dtype) for v in values]


def roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def snapshot(weighting):
    """A comparable copy of the library-format state (NaN-aware), parameters included."""
    state = type(weighting).state_dict(weighting)
    return {
        "hyper": state["hyperparameters"],
        "state": {
            k: (v.nan_to_num(nan=-7.0).tolist(), str(v.dtype)) if isinstance(v, torch.Tensor) else v
            for k, v in state["state"].items()
        },
        "history": {k: np.nan_to_num(v, nan=-7.0).tolist() for k, v in weighting.history().items()},
    }


class CountScalarReads(TorchDispatchMode):
    """Counts reads of a tensor value back to the host (``aten._local_scalar_dense``)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------- strategies
@st.composite
def masked_trajectories(draw, max_n=4, max_length=8, low=1e-2, high=10.0):
    """``(trajectory, present)``: ``T x N`` positive losses and which are given (at least one
    per step)."""
    n = draw(st.integers(1, max_n))
    length = draw(st.integers(1, max_length))
    value = st.floats(low, high, allow_nan=False, allow_infinity=False)
    trajectory = draw(
        st.lists(st.lists(value, min_size=n, max_size=n), min_size=length, max_size=length)
    )
    present = []
    for _ in range(length):
        row = (
            draw(st.lists(st.booleans(), min_size=n, max_size=n))
            if draw(st.booleans())
            else [True] * n
        )
        if not any(row):
            row[draw(st.integers(0, n - 1))] = True
        present.append(row)
    return trajectory, present


# ----------------------------------------------------------------------------- learned scales
@dataclass
class Spec:
    """One rule with a learned parameter: how to build it and its oracle."""

    cls: type
    parameter: str  # "log_vars" or "log_scales"
    initial: str  # the constructor's keyword for s(0)
    oracle: Callable[..., dict[str, np.ndarray]]
    options: Callable[[Any, int], dict[str, Any]]  # draw -> extra constructor kwargs (and oracle's)

    def make(self, path, losses, **kwargs):
        if path == "float32":
            kwargs["dtype"] = torch.float32
        return configure(self.cls(losses, **kwargs), path)


def run_sgd(weighting, trajectory, present, lr, dtype=torch.float64):
    """Step the weighting with SGD on its parameter only; the weights, totals and parameters."""
    optimizer = torch.optim.SGD(weighting.parameters(), lr=lr)
    parameter = next(iter(weighting.parameters()))
    weights, totals, params = [], [], [parameter.detach().clone()]
    for row, here in zip(trajectory, present, strict=True):
        optimizer.zero_grad()
        total = weighting.step(
            tensors([v if p else None for v, p in zip(row, here, strict=True)], dtype)
        )
        totals.append(float(total.detach()))
        weights.append(weighting.weights.clone())
        total.backward()
        optimizer.step()
        params.append(parameter.detach().clone())
    return {
        "weights": torch.stack(weights).double().numpy(),
        "totals": np.asarray(totals),
        "parameters": torch.stack(params).double().numpy(),
    }


def check_matches_oracle(spec, data, path):
    """The library's weights, totals and SGD trajectory of ``s`` equal the float64 oracle's."""
    trajectory, present = data.draw(masked_trajectories())
    n = len(trajectory[0])
    lr = data.draw(st.floats(1e-3, 0.3))
    initial = data.draw(st.lists(st.floats(-1.0, 1.0), min_size=n, max_size=n))
    options = spec.options(data, n)
    weighting = spec.make(path, n, **{spec.initial: initial}, **options)
    got = run_sgd(weighting, trajectory, present, lr)
    want = spec.oracle(trajectory, lr=lr, present=present, **{spec.initial: initial}, **options)
    for key in ("weights", "totals"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-300, err_msg=key)
    # The gradient of s_i is +-(b_i - a_i e^{+-s_i} L_i): where its two terms nearly cancel,
    # one ulp of exp (NumPy's and torch's may differ by one) is a large *relative* error of
    # the difference. So each SGD step may move s_i by lr x a few ulps of the larger term
    # more or less than the oracle's: that, summed over the steps, is the absolute tolerance.
    terms = np.asarray(want["weights"]) * np.asarray(trajectory, dtype=np.float64)
    largest = max(1.0, float(np.max(np.abs(terms))))
    steps = np.arange(len(trajectory) + 1)[:, None]
    atol = 8 * np.finfo(np.float64).eps * lr * largest * steps
    np.testing.assert_array_less(
        np.abs(got["parameters"] - want["parameters"]),
        atol + 1e-10 * np.abs(want["parameters"]) + 1e-300,
        err_msg="parameters",
    )


def check_absent_loss_gets_zero_gradient(spec, path):
    """An absent loss has neither term in the total: its parameter gets a zero gradient."""
    weighting = spec.make(path, ["a", "b"], **{spec.initial: [0.3, -0.2]})
    parameter = getattr(weighting, spec.parameter)
    total = weighting.step({"a": torch.tensor(2.0, dtype=torch.float64)})
    total.backward()
    assert parameter.grad[1].item() == 0.0 and parameter.grad[0].item() != 0.0
    # Its weight is still the current a e^{sign s} (recorded, not frozen at some old value).
    sign = spec.cls.sign
    np.testing.assert_allclose(weighting.weights[1].item(), np.exp(sign * -0.2), rtol=1e-6)


def check_gradients_reach_model_and_parameter(spec, path):
    """d total / d theta = sum_i w_i dL_i/dtheta and d total / ds_i = sign (w_i L_i - b_i)."""
    weighting = spec.make(path, 2, **{spec.initial: [0.5, -1.0]})
    dtype = dtype_of(path)
    theta = torch.tensor([1.5, 2.0], dtype=dtype, requires_grad=True)
    losses = [theta[0] ** 2, 3.0 * theta[1]]  # L = (2.25, 6), dL/dtheta = (3, 3)
    total = weighting.step(losses)
    total.backward()
    w = weighting.weights.double().numpy()
    tolerance = 1e-6 if path == "float32" else 1e-13
    np.testing.assert_allclose(theta.grad.double().numpy(), w * [3.0, 3.0], rtol=tolerance)
    b = np.asarray(spec.cls._coefficients_of(weighting.defaults, 2)[1])
    expected = spec.cls.sign * (w * [2.25, 6.0] - b)
    parameter = getattr(weighting, spec.parameter)
    np.testing.assert_allclose(parameter.grad.double().numpy(), expected, rtol=tolerance)
    assert not weighting.weights.requires_grad


def check_resume_bit_identical(spec, path, optimizer_cls, **optimizer_kwargs):
    """Save the weighting and a user optimiser on ``s`` mid-run; the resumed run continues
    bit-identically (a masked step and an absent loss inside the run)."""
    rng = np.random.default_rng(1)
    trajectory = rng.uniform(0.05, 4.0, size=(14, 3)).tolist()
    trajectory[4][1] = float("nan")  # masked
    trajectory[7][2] = None  # absent
    dtype = dtype_of(path)

    def make(initial):
        weighting = spec.make(path, ["a", "b", "c"], history_size=8, **{spec.initial: initial})
        return weighting, optimizer_cls(weighting.parameters(), **optimizer_kwargs)

    def feed(weighting, optimizer, rows):
        for row in rows:
            optimizer.zero_grad()
            total = weighting.step(tensors(row, dtype))
            if torch.isfinite(total):
                total.backward()
                optimizer.step()

    whole, whole_opt = make(0.1)
    feed(whole, whole_opt, trajectory)
    first, first_opt = make(0.1)
    feed(first, first_opt, trajectory[:6])
    saved = roundtrip({"weighting": first.state_dict(), "optimizer": first_opt.state_dict()})
    resumed, resumed_opt = make([2.0, -3.0, 1.0])  # a differently started run
    resumed.load_state_dict(saved["weighting"])
    resumed_opt.load_state_dict(saved["optimizer"])
    feed(resumed, resumed_opt, trajectory[6:])
    assert torch.equal(getattr(resumed, spec.parameter), getattr(whole, spec.parameter))
    assert torch.equal(resumed.weights, whole.weights)
    assert snapshot(resumed) == snapshot(whole)
    assert int(resumed.num_skipped) == 1


class Net(torch.nn.Module):
    """A user's model with the weighting as a submodule (its forward calls ``step``)."""

    def __init__(self, weighting):
        super().__init__()
        self.body = torch.nn.Linear(2, 2, dtype=torch.float64)
        self.weighting = weighting

    def forward(self, x):
        out = self.body(x)
        return self.weighting([out[:, 0].pow(2).mean(), out[:, 1].abs().mean()])


def check_submodule_state_dict(spec):
    """As a submodule, the parameter is an ordinary entry and the rest of the state the
    module's extra state; ``model.load_state_dict`` restores both, and training continues
    identically."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, dtype=torch.float64)

    def train(model, steps):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(steps):
            optimizer.zero_grad()
            model(x).backward()
            optimizer.step()

    model = Net(spec.make("host", 2))
    train(model, 3)
    saved = roundtrip(model.state_dict())
    assert set(saved) == {
        "body.weight",
        "body.bias",
        f"weighting.{spec.parameter}",
        "weighting._extra_state",
    }
    extra = saved["weighting._extra_state"]
    assert extra["hyperparameters"]["rule"] == spec.cls.__name__
    assert spec.parameter not in extra["state"]  # saved once, as the module's entry
    restored = Net(spec.make("host", 2, **{spec.initial: 5.0}))
    torch.nn.init.zeros_(restored.body.weight)
    restored.load_state_dict(saved)
    assert torch.equal(
        getattr(restored.weighting, spec.parameter), getattr(model.weighting, spec.parameter)
    )
    assert snapshot(restored.weighting) == snapshot(model.weighting)
    train(model, 2)
    train(restored, 2)
    assert torch.equal(
        getattr(restored.weighting, spec.parameter), getattr(model.weighting, spec.parameter)
    )
    assert torch.equal(restored.body.weight, model.body.weight)
    assert snapshot(restored.weighting) == snapshot(model.weighting)
    # The top-level format is the library's, not the module's.
    top = model.weighting.state_dict()
    assert set(top) == {"state", "hyperparameters"} and spec.parameter in top["state"]
    assert set(torch.nn.Module.state_dict(model.weighting)) == {spec.parameter, "_extra_state"}


def check_submodule_load_is_all_or_nothing(spec):
    """A bad parameter or a bad extra state: torch reports it and nothing of the weighting
    changes (neither the parameter nor the state)."""
    model = Net(spec.make("host", 2))
    model(torch.ones(3, 2, dtype=torch.float64))
    good = model.state_dict()
    before_param = getattr(model.weighting, spec.parameter).detach().clone()
    before = snapshot(model.weighting)
    bad_extra = copy.deepcopy(good)
    bad_extra[f"weighting.{spec.parameter}"] = torch.tensor([7.0, 7.0], dtype=torch.float64)
    bad_extra["weighting._extra_state"]["state"]["num_steps"] = torch.tensor(-1)
    bad_param = copy.deepcopy(good)
    bad_param[f"weighting.{spec.parameter}"] = torch.tensor(
        [7.0, float("nan")], dtype=torch.float64
    )
    bad_param["weighting._extra_state"]["state"]["num_skipped"] = torch.tensor(5)
    for bad, match in ((bad_extra, ">= 0"), (bad_param, "finite floating tensor")):
        with pytest.raises(RuntimeError, match=match):
            model.load_state_dict(bad)
        assert torch.equal(getattr(model.weighting, spec.parameter), before_param)
        assert snapshot(model.weighting) == before


def bad_state_dicts(spec):
    """``(corrupt, error, match)`` edits of a valid library-format state dict."""

    def edit(key, value):
        def apply(state_dict):
            section, name = key
            if value is None:
                state_dict[section].pop(name, None)
            else:
                state_dict[section][name] = value
            return state_dict

        return apply

    p = spec.parameter
    return [
        (edit(("state", p), None), ValueError, f"`{p}` should be a finite floating tensor"),
        (edit(("state", p), torch.zeros(3, dtype=torch.float64)), ValueError, r"shape \(2,\)"),
        (edit(("state", p), torch.tensor([0.0, float("nan")])), ValueError, f"`{p}`"),
        (edit(("state", p), torch.tensor([0, 1])), ValueError, f"`{p}`"),
        (edit(("state", p), [0.0, 1.0]), ValueError, f"`{p}`"),
        (
            edit(("state", "weights"), torch.tensor([-1.0, 1.0], dtype=torch.float64)),
            ValueError,
            "non-negative",
        ),
        (edit(("state", "num_steps"), torch.tensor(-2)), ValueError, ">= 0"),
        (edit(("hyperparameters", "rule"), "AdaptiveLossBalancer"), ValueError, "should come from"),
        (edit(("hyperparameters", "names"), ["b", "a"]), ValueError, "loss names"),
        (edit(("hyperparameters", "extra"), 1.0), ValueError, r"\['extra'\]"),
        (lambda sd: {"log_vars": torch.zeros(2)}, ValueError, "'state' and 'hyperparameters'"),
    ]


def check_bad_state_dict(spec, corrupt, error, match):
    weighting = spec.make("host", ["a", "b"], strict=True)
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.1)
    for row in ([2.0, 1.0], [1.0, 3.0]):
        optimizer.zero_grad()
        weighting.step(tensors(row)).backward()
        optimizer.step()
    source = spec.make("host", ["a", "b"], **{spec.initial: [1.0, 2.0]})
    source.step([1.0, 1.0])
    before = snapshot(weighting)
    parameter = getattr(weighting, spec.parameter).detach().clone()
    with pytest.raises(error, match=match):
        weighting.load_state_dict(corrupt(copy.deepcopy(source.state_dict())))
    assert snapshot(weighting) == before
    assert torch.equal(getattr(weighting, spec.parameter), parameter)


def check_load_keeps_the_optimisers_parameter(spec):
    """Loading copies into the registered parameter, so an optimiser built before still
    updates the weighting's ``s``."""
    source = spec.make("host", 2, **{spec.initial: [0.25, -0.5]})
    weighting = spec.make("host", 2)
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.1)
    parameter = getattr(weighting, spec.parameter)
    weighting.load_state_dict(source.state_dict())
    assert getattr(weighting, spec.parameter) is parameter
    assert parameter.tolist() == [0.25, -0.5] and parameter.requires_grad
    weighting.step(tensors([1.0, 1.0])).backward()
    optimizer.step()
    assert parameter.tolist() != [0.25, -0.5]


def check_device_path_never_syncs(spec):
    weighting = spec.make("device", ["a", "b", "c"])
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    steps = [
        lambda: [x[0] * 2, x[1] * 1, x[2] * 0.5],
        lambda: [x[0], x[1] * 0.5, x[2] * 0.1],
        lambda: [x[0] * float("nan"), x[1], x[2]],  # masked on the device
        lambda: [x[0] * 0.3, -x[1], x[2]],  # negative: masked
        lambda: [x[0] * 0.3, None, x[2]],  # absent
    ]
    with CountScalarReads() as counter:
        for losses in steps:
            weighting.step(losses()).backward()
        weighting.combine(steps[1]()).backward()
    assert counter.count == 0
    assert int(weighting.num_skipped) == 2 and int(weighting.num_steps) == 3


def check_masking_keeps_state(spec, path):
    """Invalid tensor losses: the state is unchanged, the step counted in ``num_skipped``;
    with ``strict=True`` the step raises and changes nothing."""
    weighting = spec.make(path, ["a", "b"])
    dtype = dtype_of(path)
    weighting.step(tensors([2.0, 1.0], dtype))
    with torch.no_grad():
        getattr(weighting, spec.parameter).add_(0.5)  # as an optimiser step would
    before = snapshot(weighting)
    total = weighting.step(tensors([float("nan"), 1.0], dtype))
    assert not torch.isfinite(total)
    after = snapshot(weighting)
    assert after["state"]["weights"] == before["state"]["weights"]
    assert after["state"]["num_skipped"][0] == 1 and after["state"]["num_steps"][0] == 1
    strict = spec.make(path, ["a", "b"], strict=True)
    strict.step(tensors([2.0, 1.0], dtype))
    before = snapshot(strict)
    with pytest.raises(ValueError, match="`a` should be finite"):
        strict.step(tensors([float("inf"), 1.0], dtype))
    assert snapshot(strict) == before


def check_other_device_is_refused_first(spec):
    """Losses on another device than ``s`` are refused before the state changes."""
    from anl import LossWeighting

    weighting = spec.make("host", 2)
    weighting.step([1.0, 2.0])
    weighting.to("meta")
    before = LossWeighting.state_dict(weighting)
    with pytest.raises(ValueError, match="should be on the losses' device"):
        weighting.step(tensors([1.0, 2.0]))
    with pytest.raises(ValueError, match="should be on the losses' device"):
        weighting.combine({"0": tensors([1.0])[0]})
    after = LossWeighting.state_dict(weighting)
    assert int(after["state"]["num_steps"]) == int(before["state"]["num_steps"]) == 1
    assert torch.equal(after["state"]["history"], before["state"]["history"])


_DELETE = object()


def state_dict_edits(spec):
    """Hypothesis strategy: up to three edits (type swaps, shapes, values, deletions) of a
    library-format state dict of ``spec``'s rule."""
    keys = st.sampled_from(
        [
            ("state", spec.parameter),
            ("state", "weights"),
            ("state", "initial_losses"),
            ("state", "num_steps"),
            ("state", "num_skipped"),
            ("state", "history"),
            ("hyperparameters", "rule"),
            ("hyperparameters", "names"),
            ("hyperparameters", "strict"),
            ("hyperparameters", "likelihoods"),
        ]
    )
    values = st.one_of(
        st.just(_DELETE),
        st.none(),
        st.booleans(),
        st.integers(-3, 5),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["plain", "gaussian", ["softmax", "plain"], ["a", "b"]]),
        st.lists(st.floats(-2, 2), max_size=3),
        st.builds(
            lambda v, n: torch.full((n,), v, dtype=torch.float64),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(0, 3),
        ),
        st.builds(lambda v: torch.tensor(v), st.integers(-3, 5)),
        st.builds(
            lambda r, c: torch.rand(r, c, dtype=torch.float64), st.integers(0, 3), st.integers(0, 8)
        ),
    )
    return st.lists(st.tuples(keys, values), min_size=1, max_size=3)


def check_fuzz_load(spec, edits):
    """Either a one-line error with nothing changed (parameter included), or a usable state."""
    weighting = spec.make("host", ["a", "b"])
    weighting.step(tensors([3.0, 1.0]))
    before = snapshot(weighting)
    parameter = getattr(weighting, spec.parameter).detach().clone()
    source = spec.make("host", ["a", "b"], **{spec.initial: [0.5, -0.5]})
    for row in ([2.0, 1.0], [1.0, 3.0], [0.5, 2.0]):
        source.step(tensors(row))
    state_dict = source.state_dict()
    for (section, key), value in edits:
        if value is _DELETE:
            state_dict[section].pop(key, None)
        else:
            state_dict[section][key] = value
    try:
        weighting.load_state_dict(state_dict)
    except (ValueError, TypeError) as error:
        assert str(error) and "\n" not in str(error)
        assert snapshot(weighting) == before
        assert torch.equal(getattr(weighting, spec.parameter), parameter)
        return
    assert torch.isfinite(getattr(weighting, spec.parameter)).all()
    total = weighting.step(tensors([1.0, 1.0]))  # may overflow for a huge |s|: that is the rule
    assert isinstance(total, torch.Tensor) and torch.isfinite(weighting.weights).all()
