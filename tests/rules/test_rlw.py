"""anl.rules.RandomLossWeighting and the counter-based generator: draws by hand and against the
NumPy oracle on every path, their distribution, absent losses, masking, resume, loading, no
sync."""

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

from anl.rules import RandomLossWeighting, _random
from anl.testing import oracles

NAN = math.nan
SEEDS = st.one_of(
    st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)
)


# ----------------------------------------------------------------------------- the generator
def test_known_words():
    """Pinned: changing the generator changes every seeded run of RLW and ReLoBRaLo."""
    assert _random.words(0, 0, 4) == [3506765480, 282191831, 1715651652, 4053787016]
    assert _random.words(2**64 - 1, 2**40 + 7, 3) == [3839098845, 3806144490, 2845651073]


@settings(max_examples=100, deadline=None)
@given(SEEDS, st.integers(0, 2**63 - 1), st.integers(1, 9))
def test_three_implementations_of_the_generator_agree(seed, counter, count):
    """Python ints (host), int64 tensors (device, split multiplications) and NumPy uint64
    (the oracle, wrapping arithmetic) give the same words, uniforms and normals."""
    host = _random.words(seed, counter, count)
    tensor = _random.words(seed, torch.tensor(counter), count).tolist()
    numpy = oracles.counter_words(seed, counter, count).tolist()
    assert host == tensor == numpy
    assert (
        _random.uniforms(seed, counter, count)
        == oracles.counter_uniforms(seed, counter, count).tolist()
    )
    np.testing.assert_allclose(
        _random.normals(seed, torch.tensor(counter), count),
        oracles.counter_normals(seed, counter, count),
        rtol=1e-14,
        atol=1e-15,
    )
    np.testing.assert_allclose(
        _random.normals(seed, counter, count),
        oracles.counter_normals(seed, counter, count),
        rtol=1e-14,
        atol=1e-15,
    )


def test_the_draws_are_uniform_normal_and_uncorrelated():
    """200 000 words over 50 000 updates: chi-square of uniform bins, normal moments, no
    correlation between consecutive updates, between words of one update, or between seeds."""
    counters = torch.arange(50_000)[:, None]
    u = _random.uniforms(0, counters, 4).numpy()
    counts, _ = np.histogram(u, bins=64, range=(0.0, 1.0))
    expected = u.size / 64
    assert ((counts - expected) ** 2 / expected).sum() < 120  # chi-square, 63 dof: p < 1e-5
    z = _random.normals(0, counters, 2).numpy().ravel()
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1) < 0.02
    assert abs((z**3).mean()) < 0.05 and abs((z**4).mean() - 3) < 0.1
    other = _random.uniforms(1, counters, 1).numpy()[:, 0]
    for a, b in [(u[:-1, 0], u[1:, 0]), (u[:, 0], u[:, 1]), (u[:, 0], other)]:
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    rho = _random.bernoulli(5, counters, 0.9).double().mean()
    assert abs(float(rho) - 0.9) < 0.01


@pytest.mark.parametrize("p", [0.0, 1.0, 0.5, 0.999, 1e-12, 1 - 2**-40])
def test_bernoulli_is_u_below_p_exactly(p):
    x = np.arange(0, 2**32, 2**32 // 4096, dtype=np.float64)
    x = np.concatenate([x, [0.0, 2**32 - 1.0, math.floor(p * 2**32), math.ceil(p * 2**32)]])
    x = x[(x >= 0) & (x < 2**32)]
    below = (x + 0.5) / 2**32 < p
    assert ((x < _random.bernoulli_threshold(p)) == below).all()


# ----------------------------------------------------------------------------- by hand
@pytest.mark.parametrize("path", PATHS)
def test_step_t_uses_draw_t_and_a_masked_step_draws_nothing(path):
    # w(t) = softmax(z(t)) with z(t) the normals of update t; step 2 is masked, so the
    # third applied step uses z(2), not z(3).
    rlw = make(RandomLossWeighting, path, 3, seed=11)
    tolerance = 1e-6 if path == "float32" else 1e-15
    z = [oracles.counter_normals(11, t, 3) for t in range(4)]
    expected = [np.exp(v) / np.exp(v).sum() for v in z]
    np.testing.assert_allclose(rlw.weights, [1 / 3] * 3, rtol=1e-7)  # before any step
    rlw.step(as_input(path, [1.0, 2.0, 3.0]))
    np.testing.assert_allclose(rlw.weights, expected[0], atol=tolerance)
    rlw.step(as_input(path, [5.0, 5.0, 5.0]))  # the losses do not matter
    np.testing.assert_allclose(rlw.weights, expected[1], atol=tolerance)
    rlw.step([torch.tensor(NAN), torch.tensor(1.0), torch.tensor(1.0)])
    np.testing.assert_allclose(rlw.weights, expected[1], atol=tolerance)
    rlw.step(as_input(path, [1.0, 1.0, 1.0]))
    np.testing.assert_allclose(rlw.weights, expected[2], atol=tolerance)
    assert int(rlw.state_dict()["state"]["draws"]) == 3


@pytest.mark.parametrize("path", PATHS)
def test_absent_losses_the_present_ones_take_the_draw_renormalised(path):
    # z(1) is drawn for all three; b is absent, so (w_a, w_c) = softmax(z_a, z_c) and w_b
    # keeps softmax(z(0))_b.
    rlw = make(RandomLossWeighting, path, ["a", "b", "c"], seed=3)
    tolerance = 1e-6 if path == "float32" else 1e-15
    rlw.step(as_input(path, [1.0, 1.0, 1.0]))
    z0, z1 = oracles.counter_normals(3, 0, 3), oracles.counter_normals(3, 1, 3)
    total = rlw.step(as_input(path, [2.0, NAN, 4.0]))
    kept = np.exp(z1[[0, 2]]) / np.exp(z1[[0, 2]]).sum()
    np.testing.assert_allclose(
        rlw.weights, [kept[0], np.exp(z0[1]) / np.exp(z0).sum(), kept[1]], atol=tolerance
    )
    assert float(total) == pytest.approx(2.0 * kept[0] + 4.0 * kept[1], rel=1e-6)


def test_one_loss_always_weighs_one():
    rlw = RandomLossWeighting(1)
    assert [rlw.step([v]) for v in (2.0, 3.0)] == [2.0, 3.0]


def test_seeds():
    weights = {}
    for seed in (0, 1, 2**64 - 1):
        rlw = RandomLossWeighting(4, seed=seed)
        weights[seed] = run(rlw, "host", [[1.0] * 4] * 3)
    assert not np.allclose(weights[0], weights[1]) and not np.allclose(
        weights[1], weights[2**64 - 1]
    )
    again = run(RandomLossWeighting(4, seed=1), "device", [[1.0] * 4] * 3)
    np.testing.assert_allclose(again, weights[1], rtol=1e-14)
    rlw = RandomLossWeighting(4)
    rlw.step([1.0] * 4)
    rlw.seed = 1  # later draws from the new seed, at the same counter
    rlw.step([1.0] * 4)
    np.testing.assert_allclose(rlw.weights, weights[1][1], rtol=1e-14)


# ----------------------------------------------------------------------------- the oracle
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trajectories(max_length=12), SEEDS, st.sampled_from(PATHS))
def test_weights_match_the_oracle(trajectory, seed, path):
    rlw = make(RandomLossWeighting, path, len(trajectory[0]), seed=seed)
    expected = oracles.rlw_weights(trajectory, seed=seed)
    assert_matches_oracle(run(rlw, path, trajectory), expected, path)


def test_the_weights_are_softmax_normal_on_average():
    """E[softmax(z)] = 1/N by symmetry; the weights stay in (0, 1) and sum to 1."""
    rlw = RandomLossWeighting(3, history_size=None)
    rlw.supports_host = False
    for _ in range(600):
        rlw.step(torch.ones(3))
    w = rlw.history()["weights"]
    assert (w > 0).all() and (w < 1).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(w.mean(axis=0), 1 / 3, atol=0.03)


# ----------------------------------------------------------------------------- guarantees
TRAJECTORY = np.random.default_rng(5).uniform(0.2, 5.0, size=(20, 3)).tolist()


def factory(path, **kwargs):
    return make(RandomLossWeighting, path, ["a", "b", "c"], seed=2**40 + 3, **kwargs)


@pytest.mark.parametrize("path", PATHS)
def test_masked_steps_change_nothing_and_strict_raises(path):
    check_masking(factory, path, TRAJECTORY[:5], [1.0, NAN, 1.0])


@pytest.mark.parametrize("path", PATHS)
def test_resume_is_bit_identical(path):
    check_resume(factory, path, TRAJECTORY, split=9)


def test_the_device_path_never_reads_a_tensor_back():
    check_no_sync(RandomLossWeighting(4, seed=9), 4)
    check_no_sync(RandomLossWeighting(3, dtype=torch.float32), 3)


def test_saved_hyperparameters_replace_the_new_objects():
    saved = RandomLossWeighting(["a", "b"], seed=42)
    saved.step([1.0, 2.0])
    resumed = RandomLossWeighting(["a", "b"])
    resumed.load_state_dict(roundtrip(saved.state_dict()))
    assert resumed.seed == 42
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
            _with("state", "weights", torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64)),
            r"\[0, 1\]",
        ),
        (_with("state", "draws", torch.tensor(-1)), ">= 0"),
        (_with("state", "draws", torch.tensor(1.0)), "integer"),
        (_with("hyperparameters", "seed", -1), "`seed` should be an int"),
        (_with("hyperparameters", "seed", 2**64), "`seed`"),
        (_with("hyperparameters", "seed", 1.0), "`seed`"),
    ],
)
def test_a_bad_state_dict_is_refused_and_changes_nothing(corrupt, match):
    check_rejected(factory, TRAJECTORY[:4], corrupt, match)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_load_state_dict(data):
    edits = data.draw(mutations(state_keys(factory("host"))))

    def check(weights):
        assert (weights >= 0).all() and (weights <= 1 + 1e-6).all()

    fuzz_load(factory, TRAJECTORY[:4], edits, check)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "0", None])
def test_bad_seeds(seed):
    with pytest.raises(ValueError, match="`seed` should be an int in"):
        RandomLossWeighting(2, seed=seed)
