"""Invariant checks of a weighting's trajectories; each raises ``AssertionError`` naming the
step, the loss and the values when an invariant fails."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anl.balancer import AdaptiveLossBalancer
from anl.testing.oracles import Trajectory, reference_weights

__all__ = [
    "check_beta_zero_is_geometric",
    "check_constant_losses_keep_uniform",
    "check_permutation_equivariance",
    "check_scale_invariance",
    "check_weight_invariants",
    "run_balancer",
]


def run_balancer(trajectory: Trajectory, **settings: object) -> np.ndarray:
    """The weights an :class:`AdaptiveLossBalancer` produces on ``trajectory`` (``T x N``)."""
    n = len(trajectory[0])
    balancer = AdaptiveLossBalancer(n, **settings)  # type: ignore[arg-type]
    rows = []
    for row in trajectory:
        balancer.step(list(row))
        rows.append(np.asarray(balancer.weights, dtype=np.float64))
    return np.stack(rows)


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
