"""Hypothesis strategies for loss trajectories and weighting hyperparameters.

Needs ``hypothesis`` (``pip install "anl[testing]"``).
"""

from __future__ import annotations

from hypothesis import strategies as st

__all__ = [
    "balancer_settings",
    "betas",
    "loss_trajectories",
    "loss_values",
    "simplex_weights",
    "weight_lrs",
]


def loss_values(min_value: float = 1e-3, max_value: float = 1e3) -> st.SearchStrategy[float]:
    """Positive, finite loss values spanning several orders of magnitude."""
    return st.floats(
        min_value=min_value, max_value=max_value, allow_nan=False, allow_infinity=False
    )


@st.composite
def loss_trajectories(
    draw: st.DrawFn,
    n_losses: int | st.SearchStrategy[int] = st.integers(1, 8),  # noqa: B008
    min_length: int = 1,
    max_length: int = 30,
    min_value: float = 1e-3,
    max_value: float = 1e3,
) -> list[list[float]]:
    """A ``T x N`` list of positive loss values: ``trajectory[t][i] = L_i(t)``."""
    n = draw(n_losses) if isinstance(n_losses, st.SearchStrategy) else n_losses
    length = draw(st.integers(min_length, max_length))
    row = st.lists(loss_values(min_value, max_value), min_size=n, max_size=n)
    return draw(st.lists(row, min_size=length, max_size=length))


def betas(max_value: float = 4.0) -> st.SearchStrategy[float]:
    """``beta >= 0``, with the paper's 1 and the edge cases 0 and 2 drawn often."""
    return st.one_of(
        st.sampled_from([0.0, 1.0, 2.0]),
        st.floats(min_value=0.0, max_value=max_value, allow_nan=False),
    )


def weight_lrs() -> st.SearchStrategy[float]:
    """``r_w`` in (0, 1], with the paper's 0.025 and the edge case 1 drawn often."""
    return st.one_of(
        st.sampled_from([0.025, 0.0025, 1.0]),
        st.floats(min_value=1e-4, max_value=1.0, allow_nan=False),
    )


@st.composite
def simplex_weights(draw: st.DrawFn, n: int) -> list[float]:
    """A point of the probability simplex in ``n`` dimensions (some coordinates may be 0)."""
    raw = draw(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=n, max_size=n))
    total = sum(raw)
    if total <= 1e-3:
        return [1.0 / n] * n
    return [value / total for value in raw]


def balancer_settings() -> st.SearchStrategy[dict[str, float]]:
    """Keyword arguments ``beta`` and ``weight_lr`` for :class:`AdaptiveLossBalancer`."""
    return st.fixed_dictionaries({"beta": betas(), "weight_lr": weight_lrs()})
