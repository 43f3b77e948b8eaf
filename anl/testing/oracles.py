"""Float64 NumPy oracles: each weighting rule written plainly from its paper's equations.

Independent of :mod:`anl.functional` (no torch), so that a test comparing the two catches a
mistake in either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Trajectory = Sequence[Sequence[float]]

__all__ = ["Trajectory", "reference_weights"]


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
