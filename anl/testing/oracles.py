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


# ----------------------------------------------------------------------------- learned weights
#: Uncertainty weighting's factors ``(a, b)`` of ``e^{-s} L`` and of ``s``, per likelihood.
LIKELIHOOD_FACTORS = {"plain": (1.0, 1.0), "gaussian": (0.5, 0.5), "softmax": (1.0, 0.5)}


def reference_learned_scales(
    trajectory: Trajectory,
    *,
    sign: float,
    scale: Sequence[float],
    bias: Sequence[float],
    lr: float,
    initial: float | Sequence[float] = 0.0,
    present: Sequence[Sequence[bool]] | None = None,
) -> dict[str, np.ndarray]:
    """Plain SGD on ``s`` for ``L = sum_i a_i e^{sign s_i} L_i - sign b_i s_i`` (present terms).

    The analytic gradient is ``dL/ds_i = sign (a_i e^{sign s_i} L_i - b_i)`` for a present
    loss and 0 for an absent one; ``s <- s - lr dL/ds`` after each step. Returns the weights
    ``a e^{sign s}`` each step applied (``T x N``), the totals (``T``) and ``s`` before each
    step and after the last (``(T + 1) x N``).
    """
    losses = np.asarray(trajectory, dtype=np.float64)
    steps, n = losses.shape
    here = np.ones((steps, n), bool) if present is None else np.asarray(present, bool)
    a, b = np.asarray(scale, np.float64), np.asarray(bias, np.float64)
    s = np.broadcast_to(np.asarray(initial, np.float64), (n,)).copy()
    weights, totals, params = np.empty((steps, n)), np.empty(steps), [s.copy()]
    for t in range(steps):
        w = a * np.exp(sign * s)
        value = np.where(here[t], losses[t], 0.0)  # absent values may be anything
        weights[t] = w
        totals[t] = np.sum(np.where(here[t], w * value - sign * b * s, 0.0))
        gradient = np.where(here[t], sign * (w * value - b), 0.0)
        s = s - lr * gradient
        params.append(s.copy())
    return {"weights": weights, "totals": totals, "parameters": np.stack(params)}


def reference_uncertainty_weighting(
    trajectory: Trajectory,
    *,
    lr: float,
    likelihoods: str | Sequence[str] = "plain",
    initial_log_vars: float | Sequence[float] = 0.0,
    present: Sequence[Sequence[bool]] | None = None,
) -> dict[str, np.ndarray]:
    """Kendall et al.'s ``sum_i a_i e^{-s_i} L_i + b_i s_i`` under SGD on ``s`` (see
    :func:`reference_learned_scales`); ``(a_i, b_i)`` from :data:`LIKELIHOOD_FACTORS`."""
    n = np.asarray(trajectory).shape[1]
    kinds = [likelihoods] * n if isinstance(likelihoods, str) else list(likelihoods)
    return reference_learned_scales(
        trajectory,
        sign=-1.0,
        scale=[LIKELIHOOD_FACTORS[k][0] for k in kinds],
        bias=[LIKELIHOOD_FACTORS[k][1] for k in kinds],
        lr=lr,
        initial=initial_log_vars,
        present=present,
    )


def reference_imtl_l(
    trajectory: Trajectory,
    *,
    lr: float,
    initial_log_scales: float | Sequence[float] = 0.0,
    present: Sequence[Sequence[bool]] | None = None,
) -> dict[str, np.ndarray]:
    """IMTL-L's ``sum_i e^{s_i} L_i - s_i`` under SGD on ``s`` (see
    :func:`reference_learned_scales`)."""
    n = np.asarray(trajectory).shape[1]
    return reference_learned_scales(
        trajectory,
        sign=1.0,
        scale=[1.0] * n,
        bias=[1.0] * n,
        lr=lr,
        initial=initial_log_scales,
        present=present,
    )


def reference_famo(
    before: Trajectory,
    after: Sequence[Sequence[float] | None],
    *,
    weight_lr: float = 0.025,
    gamma: float = 1e-3,
    eps: float = 1e-8,
    min_losses: float | Sequence[float] = 0.0,
    present_before: Sequence[Sequence[bool]] | None = None,
    present_after: Sequence[Sequence[bool]] | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
) -> dict[str, np.ndarray]:
    """FAMO (Liu et al., NeurIPS 2023) with Adam on the logits, written plainly in float64.

    Step ``t`` sees ``before[t]``; ``after[t]`` (``None``: no update) are the losses after the
    parameter step. With ``D = max(L - L*, 0) + eps``, ``z = softmax(xi)`` and ``P`` the
    present losses, the step's total is ``c sum_P z_i log D_i`` with ``c = 1 / sum_P z_i /
    D_i``, and the gradient weight of loss ``i`` is ``c z_i / D_i``. The update restricts the
    softmax to the losses ``Q`` present at both calls: ``delta = log D - log D+``,
    ``g_i = zq_i (delta_i - sum_Q zq_j delta_j) + gamma xi_i`` for ``i`` in ``Q``, then Adam
    (Kingma and Ba, with the L2 term in the gradient as torch.optim.Adam) on those entries
    only, with one step count for all. Returns ``weights`` (the ``z`` each step used),
    ``gradient_weights`` (0 where absent), ``totals``, and ``logits`` after each step's update.
    """
    low = np.asarray(before, dtype=np.float64)
    steps, n = low.shape
    floor = np.broadcast_to(np.asarray(min_losses, np.float64), (n,))
    here = np.ones((steps, n), bool) if present_before is None else np.asarray(present_before, bool)
    beta1, beta2 = betas
    xi, m, v, count = np.zeros(n), np.zeros(n), np.zeros(n), 0
    out = {k: np.zeros((steps, n)) for k in ("weights", "gradient_weights", "logits")}
    out["totals"] = np.zeros(steps)

    def d_of(values: np.ndarray) -> np.ndarray:
        return np.maximum(values - floor, 0.0) + eps

    for t in range(steps):
        z = np.exp(xi - xi.max())
        z /= z.sum()
        p = here[t]
        d = d_of(np.where(p, low[t], 1.0))
        c = 1.0 / np.sum((z / d)[p])
        out["weights"][t] = z
        out["gradient_weights"][t] = np.where(p, c * z / d, 0.0)
        out["totals"][t] = c * np.sum((z * np.log(d))[p])
        if after[t] is not None:
            high = np.asarray(after[t], dtype=np.float64)
            q = p & (np.ones(n, bool) if present_after is None else np.asarray(present_after[t]))
            if q.any():
                count += 1
                delta = np.where(q, np.log(d) - np.log(d_of(np.where(q, high, 1.0))), 0.0)
                zq = np.where(q, np.exp(xi - xi[q].max()), 0.0)
                zq /= zq.sum()
                g = zq * (delta - np.sum(zq * delta)) + gamma * xi
                m = np.where(q, beta1 * m + (1 - beta1) * g, m)
                v = np.where(q, beta2 * v + (1 - beta2) * g * g, v)
                m_hat, v_hat = m / (1 - beta1**count), v / (1 - beta2**count)
                xi = np.where(q, xi - weight_lr * m_hat / (np.sqrt(v_hat) + adam_eps), xi)
        out["logits"][t] = xi
    return out


__all__ += [
    "LIKELIHOOD_FACTORS",
    "reference_famo",
    "reference_imtl_l",
    "reference_learned_scales",
    "reference_uncertainty_weighting",
]
