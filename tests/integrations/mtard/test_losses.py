"""Tests of the KL conventions of the official codes (anl.integrations.mtard.losses)."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from anl.integrations.mtard.methods.losses import ce, kl_ard, kl_official, kl_sum, kl_trades

# A 2 x 3 example written out: teacher probabilities P, student probabilities Q, logits = log.
P = [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]
Q = [[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]]


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_kl_official_hand_example() -> None:
    # Row 1: 0.5 ln(0.50001 / 0.25) + 0.25 ln(0.25001 / 0.5) + 0.25 ln(0.25001 / 0.25)
    # Row 2: 0.2 ln(3 * 0.20001) + 0.3 ln(3 * 0.30001) + 0.5 ln(3 * 0.50001)
    row1 = 0.5 * math.log(0.50001 / 0.25) + 0.25 * math.log(0.25001 / 0.5)
    row1 += 0.25 * math.log(0.25001 / 0.25)
    row2 = 0.2 * math.log(3 * 0.20001) + 0.3 * math.log(3 * 0.30001) + 0.5 * math.log(3 * 0.50001)
    expected = (row1 + row2) / 6  # mean over the 2 x 3 elements
    assert expected == pytest.approx(0.0403843448, abs=1e-9)
    value = kl_official(_logits(Q), _logits(P))
    assert float(value) == pytest.approx(expected, rel=1e-12)
    # CIFAR-100 script: factor 10.
    assert float(kl_official(_logits(Q), _logits(P), factor=10.0)) == pytest.approx(10 * expected)


def test_kl_official_is_batch_mean_kl_over_classes_up_to_the_log_eps() -> None:
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    true_kl = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    assert float(kl_official(s, t)) == pytest.approx(float(true_kl) / 7, abs=1e-5)


def test_kl_official_gradient_and_detached_teacher() -> None:
    s = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    kl_official(s, t, factor=2.0).backward()
    # d/ds of mean(p (log(p + 1e-5) - log_softmax(s))) = (softmax(s) - p) / (B C).
    expected = 2.0 * (F.softmax(s, 1) - F.softmax(t, 1)) / 12
    torch.testing.assert_close(s.grad, expected.detach())
    assert t.grad is None


def test_kl_ard_matches_kldivloss_default_times_t_squared() -> None:
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    temperature = 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nn.KLDivLoss()'s "mean" warns; it is the official one
        reference = torch.nn.KLDivLoss()(
            F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1)
        )
    reference = reference * temperature * temperature
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours must not warn
        value = kl_ard(s, t, temperature)
    assert float(value) == pytest.approx(float(reference), rel=1e-12)
    # Plain formula: T^2 / (B C) * sum p (log p - log q).
    p, log_q = F.softmax(t / temperature, 1), F.log_softmax(s / temperature, 1)
    plain = temperature**2 * (p * (p.log() - log_q)).sum() / 24
    assert float(value) == pytest.approx(float(plain), rel=1e-12)


def test_kl_ard_gradient_and_detached_teacher() -> None:
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    temperature = 30.0
    kl_ard(s, t, temperature).backward()
    # T^2 * (softmax(s / T) - p) / T / (B C)
    expected = temperature * (F.softmax(s / temperature, 1) - F.softmax(t / temperature, 1)) / 15
    torch.testing.assert_close(s.grad, expected.detach())
    assert t.grad is None


def test_kl_trades_and_kl_sum_hand_example() -> None:
    kl_rows = [
        0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(1.0),
        0.2 * math.log(3 * 0.2) + 0.3 * math.log(3 * 0.3) + 0.5 * math.log(3 * 0.5),
    ]
    assert float(kl_sum(_logits(Q), _logits(P))) == pytest.approx(sum(kl_rows), rel=1e-12)
    assert float(kl_trades(_logits(Q), _logits(P))) == pytest.approx(sum(kl_rows) / 2, rel=1e-12)


def test_kl_trades_backpropagates_through_both_branches() -> None:
    adv = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    clean = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    kl_trades(adv, clean).backward()
    p = F.softmax(clean, 1)
    torch.testing.assert_close(adv.grad, ((F.softmax(adv, 1) - p) / 4).detach())
    assert clean.grad is not None and clean.grad.abs().sum() > 0


def test_ce() -> None:
    assert float(ce(torch.zeros(3, 5), torch.tensor([0, 4, 2]))) == pytest.approx(math.log(5))
    logits = _logits(Q)
    expected = -(math.log(0.5) + math.log(1 / 3)) / 2
    assert float(ce(logits, torch.tensor([1, 2]))) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("fn", [kl_official, kl_sum, kl_trades, lambda s, t: kl_ard(s, t, 2.0)])
def test_shape_errors(fn) -> None:
    with pytest.raises(ValueError, match="teacher_logits"):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="student_logits"):
        fn(torch.zeros(6), torch.zeros(6))


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match=re.escape("`temperature = 0.0`")):
        kl_ard(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="labels"):
        ce(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        ce(torch.zeros(2, 3, 1), torch.zeros(2, dtype=torch.long))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(2, 6),
    st.integers(0, 2**31 - 1),
    st.floats(0.5, 40.0),
)
def test_properties(batch: int, classes: int, seed: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    s = 5 * torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    t = 5 * torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    # All are KL divergences up to positive constants (the 1e-5 only adds): non-negative.
    assert float(kl_official(s, t)) >= 0
    assert float(kl_ard(s, t, temperature)) >= -1e-12
    assert float(kl_sum(s, t)) >= -1e-12
    # Zero at equal logits (kl_official: only sum p log(1 + 1e-5 / p) / (B C) < 1e-5 remains).
    assert abs(float(kl_sum(t, t))) < 1e-12
    assert abs(float(kl_ard(t, t, temperature))) < 1e-12
    assert 0 <= float(kl_official(t, t)) < 1e-5
    # Relations between the conventions.
    assert float(kl_sum(s, t)) == pytest.approx(batch * float(kl_trades(s, t)), rel=1e-9)
    assert float(kl_ard(s, t, 1.0)) == pytest.approx(
        float(kl_sum(s, t)) / (batch * classes), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize(
    "fn", [kl_official, kl_sum, kl_trades, lambda s, t: kl_ard(s, t, 4.0)], ids=str
)
def test_softmax_over_the_classes_without_a_warning(fn) -> None:
    """Each loss names the class dimension (an implicit softmax dimension warns) and is the
    per-example KL: permuting the batch permutes nothing in the total, and a row whose
    student matches its teacher adds (almost) nothing."""
    s, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = float(fn(s, t))
    assert float(fn(s.flip(0), t.flip(0))) == pytest.approx(value, rel=1e-12)
    # A softmax over the batch (dim 0) would not be invariant to this per-row shift.
    shift = torch.tensor([[1.0], [-2.0], [5.0]], dtype=torch.float64)
    assert float(fn(s + shift, t - shift)) == pytest.approx(value, rel=1e-12)
