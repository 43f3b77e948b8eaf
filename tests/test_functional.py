"""anl.functional: Eq. 6-9 by hand, host (float list) and tensor forms agree, extremes, absence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anl import functional as F
from anl.testing import strategies as anl_st


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- by hand
def test_eq7_relative_losses_divide_by_the_reference():
    assert F.relative_losses([1.5, 0.5, 3.0], [2.0, 1.0, 6.0]) == [0.75, 0.5, 0.5]
    assert F.relative_losses(_t([1.5, 0.5]), _t([2.0, 1.0])).tolist() == [0.75, 0.5]


@pytest.mark.parametrize(
    ("relative", "beta", "expected"),
    [
        ([0.75, 0.5], 1.0, [0.6, 0.4]),
        ([0.5, 1.0, 0.25], 1.0, [2 / 7, 4 / 7, 1 / 7]),
        ([0.5, 1.0, 0.25], 2.0, [4 / 21, 16 / 21, 1 / 21]),
        ([0.5, 0.75], 2.0, [4 / 13, 9 / 13]),
        ([3.0, 1.0], 0.0, [0.5, 0.5]),  # beta = 0: uniform whatever the losses
        ([0.0, 0.0, 0.0], 1.0, [1 / 3, 1 / 3, 1 / 3]),  # all zero: uniform
        ([0.0, 2.0], 1.0, [0.0, 1.0]),
        ([1e-170, 2e-170], 2.0, [0.2, 0.8]),  # the powers underflow to 0
        ([1e200, 3e200], 2.0, [0.1, 0.9]),  # the powers overflow
        ([1e-300, 1.0], 0.5, [1e-150 / (1 + 1e-150), 1 / (1 + 1e-150)]),
    ],
)
def test_eq8_relative_weights_by_hand(relative, beta, expected):
    for form, read in ((list, list), (_t, lambda x: x.tolist())):
        got = read(F.relative_weights(form(relative), beta))
        np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)
        assert abs(sum(got) - 1.0) < 1e-15


def test_eq9_moving_average_by_hand():
    assert F.moving_average([0.6, 0.4], [0.5, 0.5], 0.025) == [0.5025, 0.4975]
    np.testing.assert_allclose(
        F.moving_average(_t([0.6, 0.4]), _t([0.5, 0.5]), 0.1).tolist(), [0.51, 0.49]
    )
    assert F.moving_average([0.2, 0.8], [0.9, 0.1], 1.0) == [0.2, 0.8]  # r_w = 1: w = r


def test_anl_weights_is_eq8_then_eq9():
    # L~ = (1/2, 3/4), beta 1: r = (0.4, 0.6); w = 0.1 r + 0.9 (0.5, 0.5) = (0.49, 0.51)
    for form in (list, _t):
        got = F.anl_weights(form([0.5, 0.75]), form([0.5, 0.5]), beta=1.0, weight_lr=0.1)
        np.testing.assert_allclose(list(got), [0.49, 0.51], rtol=1e-15)


def test_the_lagging_loss_gains_weight():
    # Loss 0 fell to 90 % of its start, loss 1 to 30 %: loss 0 is disadvantaged and gains.
    w = F.anl_weights([0.9, 0.3], [0.5, 0.5], beta=1.0, weight_lr=0.5)
    assert w[0] > 0.5 > w[1]
    np.testing.assert_allclose(w, [0.5 * 0.75 + 0.25, 0.5 * 0.25 + 0.25], rtol=1e-15)


# ----------------------------------------------------------------------------- absence
@pytest.mark.parametrize("form", [list, _t])
def test_absent_losses_keep_their_weight_and_the_rest_share_theirs(form):
    # Present: losses 0 and 1, which held 0.25 + 0.25 = 0.5; r over them = (0.6, 0.4).
    # w_i = 0.5 * (0.5 * r_i) + 0.5 * 0.25; the absent loss keeps 0.5 exactly.
    got = F.anl_weights(
        form([0.75, 0.5, 123.0]),
        form([0.25, 0.25, 0.5]),
        beta=1.0,
        weight_lr=0.5,
        present=[True, True, False],
    )
    got = list(got) if isinstance(got, list) else got.tolist()
    np.testing.assert_allclose(got, [0.275, 0.225, 0.5], rtol=1e-15)
    assert got[2] == 0.5


@pytest.mark.parametrize("form", [list, _t])
def test_absent_with_beta_zero_and_all_zero_present_losses(form):
    uniform_present = F.anl_weights(
        form([3.0, 0.5, 1.0]), form([0.2, 0.2, 0.6]), beta=0.0, weight_lr=1.0, present=[1, 0, 1]
    )
    np.testing.assert_allclose(list(uniform_present), [0.4, 0.2, 0.4], rtol=1e-15)
    zeros = F.anl_weights(
        form([0.0, 5.0, 0.0]), form([0.2, 0.2, 0.6]), beta=1.0, weight_lr=1.0, present=[1, 0, 1]
    )
    np.testing.assert_allclose(list(zeros), [0.4, 0.2, 0.4], rtol=1e-15)


@pytest.mark.parametrize("form", [list, _t])
def test_one_present_loss_with_beta_zero_takes_all_the_weight_it_held(form):
    """Uniform over the present losses is 1 for a single present loss, whatever N is."""
    got = F.anl_weights(
        form([3.0, 0.5, 1.0]), form([0.2, 0.2, 0.6]), beta=0.0, weight_lr=0.5, present=[0, 1, 0]
    )
    np.testing.assert_allclose(list(got), [0.2, 0.5 * 0.2 + 0.5 * 0.2, 0.6], rtol=1e-15)


@pytest.mark.parametrize("form", [list, _t])
def test_every_loss_marked_present_is_exactly_eq8_and_eq9(form):
    """``present`` all True is ``present=None``: Eq. 8-9 exactly, even for weights that do not
    add up to 1 (the shared mass M enters only when a loss is absent)."""
    relative, previous = form([0.75, 0.5]), form([0.25, 0.25])
    marked = F.anl_weights(relative, previous, beta=1.0, weight_lr=0.5, present=[True, True])
    plain = F.anl_weights(relative, previous, beta=1.0, weight_lr=0.5)
    assert list(marked) == list(plain) == pytest.approx([0.5 * 0.6 + 0.125, 0.5 * 0.4 + 0.125])


@pytest.mark.parametrize("form", [list, _t])
def test_nothing_present_changes_nothing(form):
    got = F.anl_weights(form([1.0, 2.0]), form([0.3, 0.7]), beta=1.0, weight_lr=0.5, present=[0, 0])
    assert list(got) == [0.3, 0.7]


# ----------------------------------------------------------------------------- both forms
def _mask(data, n):
    return data.draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(1, 8), anl_st.betas(), anl_st.weight_lrs())
def test_host_and_tensor_forms_agree(data, n, beta, weight_lr):
    relative = data.draw(
        st.lists(
            st.floats(0.0, 1e6, allow_nan=False) | st.sampled_from([1e-200, 1e200]),
            min_size=n,
            max_size=n,
        )
    )
    previous = data.draw(anl_st.simplex_weights(n))
    present = _mask(data, n)
    host = F.anl_weights(relative, previous, beta=beta, weight_lr=weight_lr, present=present)
    tensor = F.anl_weights(
        _t(relative),
        _t(previous),
        beta=beta,
        weight_lr=weight_lr,
        present=None if present is None else torch.tensor(present),
    )
    np.testing.assert_allclose(tensor.tolist(), host, rtol=1e-12, atol=1e-300)
    assert all(math.isfinite(w) and w >= 0 for w in host)
    assert abs(sum(host) - sum(previous)) < 1e-12
    if present is not None:
        for i, here in enumerate(present):
            if not here:
                assert host[i] == previous[i] and tensor[i].item() == previous[i]


# ----------------------------------------------------------------------------- Eq. 6
def test_eq6_weighted_sum_value_and_gradients():
    for n in (1, 2, 3, 4, 7):
        x = torch.linspace(0.5, 2.0, n, requires_grad=True)
        losses = [x[i] * (i + 1) for i in range(n)]
        weights = [0.1 * (i + 1) for i in range(n)]
        total = F.weighted_sum(weights, losses)
        expected = sum(w * (i + 1) * x[i].item() for i, w in enumerate(weights))
        assert total.item() == pytest.approx(expected, rel=1e-6)
        total.backward()
        np.testing.assert_allclose(
            x.grad.numpy(), [w * (i + 1) for i, w in enumerate(weights)], rtol=1e-6
        )


def test_weighted_sum_dtypes():
    half = torch.tensor(2.0, dtype=torch.bfloat16)
    single = torch.tensor(4.0)
    double = torch.tensor(1.0, dtype=torch.float64)
    assert F.weighted_sum([0.5, 0.5], [half, half]).dtype == torch.float32
    assert F.weighted_sum([0.5, 0.5], [half, single]).dtype == torch.float32
    assert F.weighted_sum([0.5, 0.5], [single, double]).dtype == torch.float64
    assert F.weighted_sum(_t([0.25, 0.75]), [single, single]).item() == 4.0
    integer = torch.tensor(3)
    assert F.weighted_sum([2.0], [integer]).item() == 6.0
