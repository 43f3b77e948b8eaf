"""anl.rules.ReLoBRaLo: the recursion and its lookbacks by hand, against the oracle on every path
(its Bernoulli draws included), absent losses, masking, resume, loading, no sync."""

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
    roundtrip,
    run,
    state_keys,
    trajectories,
)

from anl.rules import ReLoBRaLo
from anl.testing import oracles

NAN = math.nan


def balance(n, logits):
    exps = [math.exp(x) for x in logits]
    return [n * e / sum(exps) for e in exps]


# ----------------------------------------------------------------------------- by hand
# T = 1, N = 2, L = (2, 4), (2, 2), (1, 2); lambda(-1) = 1 and L(-1) = L(0), so lambda(0) = 1.
#   step 1: L~ = (1, 1/2), L(1)/L(0) = (1, 1/2): bal(1, 0) = bal(1, 0') = 2 softmax(1, 1/2)
#   step 2: L~ = (1/2, 1/2): bal(2, 0) = (1, 1); L(2)/L(1) = (1/2, 1): bal(2, 1) = 2 softmax(1/2, 1)
# E[rho] = 1 (always keep the history), alpha = 1/2:
#   lambda(1) = (1 + bal(1, 0)) / 2,   lambda(2) = lambda(1) / 2 + bal(2, 1) / 2
# E[rho] = 0 (always look back to the start), alpha = 1/2:
#   lambda(1) = bal(1, 0),             lambda(2) = (1, 1) / 2 + bal(2, 1) / 2
# A swapped ratio (L(t-1)/L(t)) would favour the falling loss instead: here the first.
TRAJECTORY_3 = [[2.0, 4.0], [2.0, 2.0], [1.0, 2.0]]
B1 = balance(2, [1.0, 0.5])
B2 = balance(2, [0.5, 1.0])
KEEP = [[1.0, 1.0], [(1 + B1[0]) / 2, (1 + B1[1]) / 2]]
KEEP.append([KEEP[1][0] / 2 + B2[0] / 2, KEEP[1][1] / 2 + B2[1] / 2])
LOOK = [[1.0, 1.0], B1, [0.5 + B2[0] / 2, 0.5 + B2[1] / 2]]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("expected_rho", "expected"), [(1.0, KEEP), (0.0, LOOK)])
def test_hand_computed_weights(path, expected_rho, expected):
    relobralo = make(ReLoBRaLo, path, 2, alpha=0.5, expected_rho=expected_rho, temperature=1.0)
    tolerance = 1e-6 if path == "float32" else 1e-15
    for losses, want in zip(TRAJECTORY_3, expected, strict=True):
        total = relobralo.step(as_input(path, losses))
        np.testing.assert_allclose(relobralo.weights, want, atol=tolerance)
        assert float(total) == pytest.approx(float(np.dot(want, losses)), rel=1e-6)
    assert B2[1] > B2[0]  # the loss that did not fall at step 2 gains


@pytest.mark.parametrize("path", PATHS)
def test_the_draws_decide_each_lookback(path):
    # E[rho] = 1/2, alpha = 0: lambda = bal(t, t-1) whatever rho; alpha = 1: lambda(t) is
    # lambda(t-1) where rho(t) = 1 and bal(t, 0) where rho(t) = 0, rho(t) = [u(t) < 1/2].
    rows = np.random.default_rng(0).uniform(0.5, 2.0, size=(12, 3))
    relobralo = make(ReLoBRaLo, path, 3, alpha=1.0, expected_rho=0.5, seed=8, temperature=1.0)
    weights = run(relobralo, path, rows)
    tolerance = 1e-6 if path == "float32" else 1e-15
    rho = [oracles.counter_uniforms(8, t, 1)[0] < 0.5 for t in range(12)]
    assert 0 < sum(rho) < 12  # both kinds of step occur
    previous = np.ones(3)
    for t in range(12):
        relative = rows[t] / rows[0]
        expected = previous if rho[t] else np.array(balance(3, relative.tolist()))
        np.testing.assert_allclose(weights[t], expected, atol=tolerance)
        previous = weights[t]


@pytest.mark.parametrize("path", PATHS)
def test_absent_losses_keep_their_weight_and_the_others_share_theirs(path):
    # alpha = 1/2, E[rho] = 1, T = 1, N = 3. Step 1: b absent; a and c held M = 2:
    #   L~ = (1/2, -, 2), ratios (1/2, -, 2): both balances are 2 softmax(1/2, 2) over (a, c)
    #   lambda_a,c = (1 + bal) / 2, lambda_b = 1.
    # Step 2: b's previous value is its step-0 value: ratio 3/2 = L~_b.
    relobralo = make(ReLoBRaLo, path, ["a", "b", "c"], alpha=0.5, expected_rho=1.0, temperature=1.0)
    weights = run(relobralo, path, [[2.0, 2.0, 2.0], [1.0, NAN, 4.0], [1.0, 3.0, 4.0]])
    tolerance = 1e-6 if path == "float32" else 1e-15
    bal = balance(2, [0.5, 2.0])
    np.testing.assert_allclose(
        weights[1], [(1 + bal[0]) / 2, 1.0, (1 + bal[1]) / 2], atol=tolerance
    )
    to_start = balance(3, [0.5, 1.5, 2.0])
    to_last = balance(3, [1.0, 1.5, 1.0])
    np.testing.assert_allclose(
        weights[2], 0.5 * weights[1] + 0.5 * np.array(to_last), atol=tolerance
    )
    assert not np.allclose(to_start, to_last)
    np.testing.assert_allclose(weights.sum(axis=1), 3.0, rtol=1e-6)


@pytest.mark.parametrize("path", ["host", "device"])
def test_a_zero_previous_loss_counts_as_no_change(path):
    # L = (1, 1), (0, 1), (1, 1), alpha = 0, T = 1: lambda(2) = bal(2, 1) with L_a(2)/L_a(1) = 1.
    relobralo = make(ReLoBRaLo, path, 2, alpha=0.0, temperature=1.0)
    weights = run(relobralo, path, [[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(weights[1], balance(2, [0.0, 1.0]), rtol=1e-15)
    np.testing.assert_allclose(weights[2], [1.0, 1.0], rtol=1e-15)


# ----------------------------------------------------------------------------- the oracle
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trajectories(max_length=14),
    st.sampled_from([0.999, 0.9, 0.5, 0.0, 1.0]),
    st.sampled_from([0.999, 0.5, 0.0, 1.0]),
    st.sampled_from([0.1, 1.0, 0.37]),
    st.integers(0, 2**64 - 1),
    st.sampled_from(PATHS),
)
def test_weights_match_the_oracle(trajectory, alpha, expected_rho, temperature, seed, path):
    relobralo = make(
        ReLoBRaLo,
        path,
        len(trajectory[0]),
        alpha=alpha,
        expected_rho=expected_rho,
        temperature=temperature,
        seed=seed,
    )
    expected = oracles.relobralo_weights(
        trajectory, alpha=alpha, expected_rho=expected_rho, temperature=temperature, seed=seed
    )
    weights = run(relobralo, path, trajectory)
    if path == "float32":  # L~/T up to 1000 in float32: 1e-4 of relative error in the logits
        np.testing.assert_allclose(weights, expected, rtol=1e-3, atol=1e-6)
    else:
        assert_matches_oracle(weights, expected, path)
    np.testing.assert_allclose(weights.sum(axis=1), len(trajectory[0]), rtol=1e-6)


# ----------------------------------------------------------------------------- guarantees
TRAJECTORY = np.random.default_rng(11).uniform(0.2, 5.0, size=(20, 3)).tolist()


def factory(path, **kwargs):
    return make(ReLoBRaLo, path, ["a", "b", "c"], alpha=0.9, expected_rho=0.6, seed=4, **kwargs)


@pytest.mark.parametrize("path", PATHS)
def test_masked_steps_change_nothing_and_strict_raises(path):
    check_masking(factory, path, TRAJECTORY[:5], [1.0, 1.0, math.inf])


@pytest.mark.parametrize("path", PATHS)
def test_resume_is_bit_identical(path):
    check_resume(factory, path, TRAJECTORY, split=11)


def test_the_device_path_never_reads_a_tensor_back():
    check_no_sync(ReLoBRaLo(4, seed=3, expected_rho=0.5), 4)
    check_no_sync(ReLoBRaLo(3, dtype=torch.float32), 3)


def test_saved_hyperparameters_replace_the_new_objects():
    saved = ReLoBRaLo(["a", "b"], alpha=0.5, expected_rho=0.25, temperature=2.0, seed=99)
    for row in TRAJECTORY[:6]:
        saved.step(row[:2])
    resumed = ReLoBRaLo(["a", "b"])
    resumed.load_state_dict(roundtrip(saved.state_dict()))
    assert (resumed.alpha, resumed.expected_rho, resumed.temperature, resumed.seed) == (
        0.5,
        0.25,
        2.0,
        99,
    )
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
            _with("state", "weights", torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64)),
            "add up to 3",
        ),
        (_with("state", "previous_losses", torch.tensor([-1.0, 1.0, 1.0])), "previous_losses"),
        (_with("state", "draws", torch.tensor(-2)), ">= 0"),
        (_with("state", "has_previous", torch.tensor([1, 1, 1])), "bool"),
        (_with("hyperparameters", "alpha", 1.5), r"`alpha` should be in \[0, 1\]"),
        (_with("hyperparameters", "expected_rho", -0.1), "`expected_rho`"),
        (_with("hyperparameters", "temperature", 0.0), "`temperature`"),
        (_with("hyperparameters", "seed", -5), "`seed`"),
    ],
)
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, match):
    check_rejected(factory, TRAJECTORY[:6], corrupt, match)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_load_state_dict(data):
    edits = data.draw(mutations(state_keys(factory("host"))))

    def check(weights):
        assert abs(float(weights.sum()) - 3.0) < 1e-5

    fuzz_load(factory, TRAJECTORY[:6], edits, check)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.1}, "`alpha`"),
        ({"alpha": True}, "`alpha`"),
        ({"expected_rho": 1.01}, "`expected_rho` should be in"),
        ({"temperature": 0.0}, "`temperature` should be a finite number > 0"),
        ({"seed": 2**64}, "`seed`"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReLoBRaLo(2, **kwargs)


def test_defaults_are_the_papers():
    relobralo = ReLoBRaLo(["pde", "bc"])
    assert relobralo.defaults == {
        "alpha": 0.999,
        "expected_rho": 0.999,
        "temperature": 0.1,
        "seed": 0,
    }
    relobralo.alpha = 0.99
    assert relobralo.alpha == 0.99


def test_a_float32_state_keeps_its_total_over_long_runs():
    """The EMA would let float32 rounding drift sum(lambda) away from N (by ~1e-5 over a few
    thousand steps), until the rule's own state dict failed the load check."""
    rows = torch.tensor(np.random.default_rng(0).uniform(0.1, 10.0, size=(600, 5)))
    relobralo = ReLoBRaLo(5, dtype=torch.float32, history_size=0)
    for row in rows:
        relobralo.step(row)
        assert abs(float(relobralo.weights.double().sum()) - 5.0) < 5e-6
    ReLoBRaLo(5).load_state_dict(relobralo.state_dict())
