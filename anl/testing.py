"""Hypothesis strategies and invariant checks for property-testing loss-weight dynamics.

Use them to test the weights your own training produces, or to test a new rule against
the Adaptive Normalization Loss (paper Eq. 7-9)::

    from hypothesis import given
    from anl import testing

    @given(testing.loss_trajectories(), testing.balancer_settings())
    def test_my_setup(trajectory, settings):
        testing.check_weight_invariants(trajectory, **settings)

Every ``check_*`` function raises :class:`AssertionError` with a message that names the step,
the loss and the values when an invariant fails. :func:`reference_weights` is an independent
float64 NumPy implementation of Eq. 7-9, the oracle the checks compare against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hypothesis import strategies as st

from anl.balancer import AdaptiveLossBalancer

Trajectory = Sequence[Sequence[float]]

__all__ = [
    "balancer_settings",
    "betas",
    "check_beta_zero_is_geometric",
    "check_constant_losses_keep_uniform",
    "check_permutation_equivariance",
    "check_scale_invariance",
    "check_weight_invariants",
    "loss_trajectories",
    "loss_values",
    "reference_weights",
    "run_balancer",
    "simplex_weights",
    "weight_lrs",
]


# --------------------------------------------------------------------------------- strategies
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


# --------------------------------------------------------------------------------- oracle
def reference_weights(
    trajectory: Trajectory,
    *,
    beta: float = 1.0,
    weight_lr: float = 0.025,
    initial_weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Eq. 7-9 written plainly in float64 NumPy: the ``T x N`` weights ``w(0) … w(T-1)``."""
    losses = np.asarray(trajectory, dtype=np.float64)
    n = losses.shape[1]
    w = np.full(n, 1.0 / n) if initial_weights is None else np.asarray(initial_weights, float)
    out = np.empty_like(losses)
    for t, row in enumerate(losses):
        relative = row / losses[0]
        powered = relative**beta
        r = powered / powered.sum() if powered.sum() > 0 else np.full(n, 1.0 / n)
        w = weight_lr * r + (1.0 - weight_lr) * w
        out[t] = w
    return out


def run_balancer(trajectory: Trajectory, **settings: object) -> np.ndarray:
    """The weights an :class:`AdaptiveLossBalancer` produces on ``trajectory`` (``T x N``)."""
    n = len(trajectory[0])
    balancer = AdaptiveLossBalancer(n, **settings)  # type: ignore[arg-type]
    rows = []
    for row in trajectory:
        balancer.step(list(row))
        rows.append(np.asarray(balancer.weights, dtype=np.float64))
    return np.stack(rows)


# --------------------------------------------------------------------------------- checks
def _fail(message: str) -> None:
    raise AssertionError(message)


def check_weight_invariants(
    trajectory: Trajectory,
    *,
    beta: float = 1.0,
    weight_lr: float = 0.025,
    initial_weights: Sequence[float] | None = None,
    atol: float = 1e-12,
) -> np.ndarray:
    """Check, step by step, that the balancer's weights
    (1) equal the float64 oracle :func:`reference_weights` (Eq. 7-9),
    (2) lie on the simplex, and
    (3) lie between ``w(t-1)`` and ``r(t)`` coordinate-wise (Eq. 9 is a convex combination).
    Returns the weights.
    """
    settings = {"beta": beta, "weight_lr": weight_lr, "initial_weights": initial_weights}
    weights = run_balancer(trajectory, **settings)
    expected = reference_weights(trajectory, **settings)
    n = weights.shape[1]
    previous = np.full(n, 1.0 / n) if initial_weights is None else np.asarray(initial_weights)
    losses = np.asarray(trajectory, dtype=np.float64)
    for t in range(len(weights)):
        w = weights[t]
        if not np.allclose(w, expected[t], rtol=1e-12, atol=atol):
            _fail(f"step {t}: weights {w.tolist()} differ from Eq. 7-9's {expected[t].tolist()}")
        if np.any(w < -atol) or abs(w.sum() - 1.0) > 1e-9:
            _fail(f"step {t}: weights {w.tolist()} are off the simplex (sum {w.sum()})")
        relative = (losses[t] / losses[0]) ** beta
        r = relative / relative.sum() if relative.sum() > 0 else np.full(n, 1.0 / n)
        low, high = np.minimum(previous, r) - atol, np.maximum(previous, r) + atol
        outside = np.nonzero((w < low) | (w > high))[0]
        if outside.size:
            i = int(outside[0])
            _fail(
                f"step {t}, loss {i}: w = {w[i]} is not between w(t-1) = {previous[i]} "
                f"and r(t) = {r[i]}"
            )
        previous = w
    return weights


def check_scale_invariance(
    trajectory: Trajectory, scales: Sequence[float], *, rtol: float = 1e-9, **settings: object
) -> None:
    """Multiplying loss ``i`` by ``scales[i] > 0`` from the start leaves the weights unchanged
    (the relative losses of Eq. 7 are scale-free)."""
    scaled = [[v * s for v, s in zip(row, scales, strict=True)] for row in trajectory]
    plain, rescaled = run_balancer(trajectory, **settings), run_balancer(scaled, **settings)
    if not np.allclose(plain, rescaled, rtol=rtol, atol=1e-12):
        step = int(np.argmax(np.abs(plain - rescaled).max(axis=1)))
        _fail(
            f"scaling the losses by {list(scales)} changed the weights at step {step}: "
            f"{plain[step].tolist()} -> {rescaled[step].tolist()}"
        )


def check_permutation_equivariance(
    trajectory: Trajectory, permutation: Sequence[int], **settings: object
) -> None:
    """Permuting the losses permutes the weights the same way."""
    perm = list(permutation)
    initial = settings.pop("initial_weights", None)
    permuted_initial = None if initial is None else [list(initial)[p] for p in perm]  # type: ignore[call-overload]
    plain = run_balancer(trajectory, initial_weights=initial, **settings)
    permuted = run_balancer(
        [[row[p] for p in perm] for row in trajectory], initial_weights=permuted_initial, **settings
    )
    if not np.allclose(plain[:, perm], permuted, rtol=1e-12, atol=1e-12):
        _fail(f"permuting the losses by {perm} did not permute the weights the same way")


def check_beta_zero_is_geometric(
    trajectory: Trajectory, *, weight_lr: float, initial_weights: Sequence[float]
) -> None:
    """With ``beta = 0``, ``r`` is uniform, so ``w(t) - 1/N = (1 - r_w)^(t+1) (w(-1) - 1/N)``."""
    weights = run_balancer(
        trajectory, beta=0.0, weight_lr=weight_lr, initial_weights=initial_weights
    )
    n = weights.shape[1]
    start = np.asarray(initial_weights, dtype=np.float64) - 1.0 / n
    for t, w in enumerate(weights):
        expected = 1.0 / n + (1.0 - weight_lr) ** (t + 1) * start
        if not np.allclose(w, expected, rtol=1e-9, atol=1e-12):
            _fail(f"beta = 0, step {t}: weights {w.tolist()} are not {expected.tolist()}")


def check_constant_losses_keep_uniform(
    values: Sequence[float], steps: int, **settings: object
) -> None:
    """Losses that never change keep uniform initial weights uniform."""
    weights = run_balancer([list(values)] * steps, **settings)
    n = weights.shape[1]
    if not np.allclose(weights, 1.0 / n, rtol=0, atol=1e-12):
        _fail(f"constant losses {list(values)} moved uniform weights to {weights[-1].tolist()}")
