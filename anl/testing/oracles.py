"""Float64 NumPy oracles: each weighting rule written plainly from its paper's equations.

Independent of :mod:`anl.functional` (no torch), so that a test comparing the two catches a
mistake in either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Trajectory = Sequence[Sequence[float]]

__all__ = [
    "LIKELIHOOD_FACTORS",
    "Trajectory",
    "backward_difference",
    "counter_normals",
    "counter_uniforms",
    "counter_words",
    "dwa_weights",
    "gls_totals",
    "gls_weights",
    "reference_famo",
    "reference_imtl_l",
    "reference_learned_scales",
    "reference_uncertainty_weighting",
    "reference_weights",
    "relobralo_weights",
    "rlw_weights",
    "softadapt_weights",
]


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


# ----------------------------------------------------------------------------- other rules
# The oracles of :mod:`anl.rules`, each written from its paper's equations. A trajectory holds
# the applied steps only, ``trajectory[t][i] = L_i(t)``, with NaN where loss ``i`` is absent;
# each oracle returns the ``T x N`` weights after every step. Where a paper leaves a choice
# open, the oracle takes the one documented in the rule's docstring.


def _rows(trajectory: Trajectory) -> np.ndarray:
    losses = np.asarray(trajectory, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError("A trajectory should be a T x N table of losses.")
    return losses


def _softmax(logits: np.ndarray) -> np.ndarray:
    exps = np.exp(logits - logits.max())
    return exps / exps.sum()


def dwa_weights(trajectory: Trajectory, *, temperature: float = 2.0, window: int = 1) -> np.ndarray:
    """Dynamic Weight Average (Liu et al., CVPR 2019, Eq. 7) over windows of ``window`` steps.

    ``w(k) = N softmax(r(k-1) / T)`` with ``r_i(k-1)`` the ratio of loss ``i``'s means over
    windows ``k-1`` and ``k-2``, set at the first step of window ``k``; 1 in windows 0 and 1.
    A loss without both means keeps its weight, the others share the weight they held.
    """
    losses = _rows(trajectory)
    steps, n = losses.shape
    means = []  # per complete window: each loss's mean (NaN if it had no value)
    w = np.ones(n)
    out = np.empty_like(losses)
    for t in range(steps):
        k = t // window
        if t % window == 0 and k >= 1:
            block = losses[(k - 1) * window : k * window]
            seen = ~np.isnan(block)
            counts = seen.sum(axis=0)
            sums = np.where(seen, block, 0.0).sum(axis=0)
            means.append(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
            if k >= 2:
                previous, older = means[-1], means[-2]
                defined = ~np.isnan(previous) & ~np.isnan(older) & (np.nan_to_num(older) > 0)
                if defined.any():
                    mass = n if defined.all() else w[defined].sum()
                    ratios = previous[defined] / older[defined]
                    w[defined] = mass * _softmax(ratios / temperature)
        out[t] = w
    return out


_M32 = np.uint64(0xFFFFFFFF)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & _M32
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & _M32
    return x ^ (x >> np.uint64(16))


def counter_words(seed: int, counter: int, count: int) -> np.ndarray:
    """The ``count`` 32-bit words of the counter-based generator of :mod:`anl.rules._random`
    for update ``counter``, in NumPy uint64 arithmetic (an independent implementation)."""
    s, k = np.uint64(seed), np.uint64(counter)
    key = _lowbias32(_lowbias32((s & _M32) ^ np.uint64(0x243F6A88)) ^ (s >> np.uint64(32)))
    key = _lowbias32(_lowbias32((k & _M32) ^ key) ^ (k >> np.uint64(32)))
    return _lowbias32(key ^ np.arange(count, dtype=np.uint64))


def counter_uniforms(seed: int, counter: int, count: int) -> np.ndarray:
    """``(x + 1/2) / 2^32`` for the words ``x`` of :func:`counter_words`."""
    return (counter_words(seed, counter, count).astype(np.float64) + 0.5) / 2.0**32


def counter_normals(seed: int, counter: int, count: int) -> np.ndarray:
    """Box-Muller normals ``sqrt(-2 ln u_2i) cos(2 pi u_2i+1)`` of :func:`counter_uniforms`."""
    u = counter_uniforms(seed, counter, 2 * count)
    return np.sqrt(-2.0 * np.log(u[0::2])) * np.cos(2.0 * np.pi * u[1::2])


def rlw_weights(trajectory: Trajectory, *, seed: int = 0) -> np.ndarray:
    """Random Loss Weighting (Lin et al., TMLR 2022): ``w(t) = softmax(z(t))``, ``z(t)`` the
    standard normals of update ``t``; over the present losses, an absent one keeping its
    weight (``1/N`` before the first step)."""
    losses = _rows(trajectory)
    steps, n = losses.shape
    w = np.full(n, 1.0 / n)
    out = np.empty_like(losses)
    for t in range(steps):
        present = ~np.isnan(losses[t])
        z = counter_normals(seed, t, n)
        w[present] = _softmax(z[present])
        out[t] = w
    return out


def gls_totals(trajectory: Trajectory) -> np.ndarray:
    """Geometric Loss Strategy (Chennupati et al., CVPRW 2019): ``(prod_i L_i)^(1/n)`` over
    the ``n`` present losses of each step."""
    losses = _rows(trajectory)
    totals = np.empty(len(losses))
    for t, row in enumerate(losses):
        kept = row[~np.isnan(row)]
        totals[t] = np.prod(kept) ** (1.0 / len(kept))
    return totals


def gls_weights(trajectory: Trajectory) -> np.ndarray:
    """GLS's effective weights ``dTotal/dL_i = Total / (n L_i)`` of the present losses; an
    absent loss keeps its weight (``1/N`` before the first step)."""
    losses = _rows(trajectory)
    steps, n = losses.shape
    totals = gls_totals(losses)
    w = np.full(n, 1.0 / n)
    out = np.empty_like(losses)
    for t in range(steps):
        present = ~np.isnan(losses[t])
        w[present] = totals[t] / (present.sum() * losses[t, present])
        out[t] = w
    return out


def backward_difference(order: int) -> np.ndarray:
    """The coefficients ``c_k`` of ``f'(t) ~ sum_k c_k f(t - k)``, k = 0..order, exact for
    polynomials of degree ``order``: the solution of ``sum_k c_k (-k)^m = [m = 1]``."""
    k = np.arange(order + 1, dtype=np.float64)
    powers = np.vstack([(-k) ** m for m in range(order + 1)])
    target = np.zeros(order + 1)
    target[1] = 1.0
    return np.linalg.solve(powers, target)


def softadapt_weights(
    trajectory: Trajectory, *, beta: float = 0.1, variant: str = "original", order: int = 1
) -> np.ndarray:
    """SoftAdapt (Heydari et al., 2019): ``w = softmax(beta s)`` of the rates of change ``s``
    (backward differences of accuracy ``order`` over each loss's last values), or of
    ``beta s / sum |s|`` (``"normalized"``), or ``f e^(beta s) / sum f e^(beta s)`` with ``f``
    the mean of those values (``"loss_weighted"``). Uniform until the rates exist; a loss
    without a rate (or absent) keeps its weight, the others share the weight they held."""
    losses = _rows(trajectory)
    steps, n = losses.shape
    c = backward_difference(order)
    past: list[list[float]] = [[] for _ in range(n)]
    w = np.full(n, 1.0 / n)
    out = np.empty_like(losses)
    for t in range(steps):
        for i in range(n):
            if not np.isnan(losses[t, i]):
                past[i].append(losses[t, i])
        share = np.array(
            [not np.isnan(losses[t, i]) and len(past[i]) > order for i in range(n)], dtype=bool
        )
        if share.any():
            recent = np.array([past[i][::-1][: order + 1] for i in np.flatnonzero(share)])
            s = (recent[:, 1:] - recent[:, :1]) @ c[1:]  # = recent @ c, as sum(c) = 0
            if variant == "normalized":
                norm = np.abs(s).sum()
                s = s / norm if norm > 0 else np.zeros_like(s)
            logits = beta * s
            if variant == "loss_weighted":
                f = recent.mean(axis=1)
                target = f * np.exp(logits - logits.max())
                target = target / target.sum()
            else:
                target = _softmax(logits)
            mass = 1.0 if share.all() else w[share].sum()
            w[share] = mass * target
        out[t] = w
    return out


def relobralo_weights(
    trajectory: Trajectory,
    *,
    alpha: float = 0.999,
    expected_rho: float = 0.999,
    temperature: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """ReLoBRaLo (Bischof & Kraus, 2021): ``lambda = alpha (rho lambda(t-1) + (1 - rho)
    bal(t, 0)) + (1 - alpha) bal(t, t-1)``, ``bal(t, t') = N softmax(L(t) / (T L(t')))``,
    ``rho(t) = [u(t) < E[rho]]`` with ``u(t)`` the first uniform of update ``t``;
    ``lambda(-1) = 1``, ``L(-1) = L(0)``. Absent losses keep their weight; the present ones
    share the weight they held, and ``L_i(t-1)``, ``L_i(0)`` are loss ``i``'s previous and
    first values."""
    losses = _rows(trajectory)
    steps, n = losses.shape
    lam = np.ones(n)
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    out = np.empty_like(losses)
    for t in range(steps):
        rho = float(counter_uniforms(seed, t, 1)[0] < expected_rho)
        row = losses[t]
        p = ~np.isnan(row)
        first[p & np.isnan(first)] = row[p & np.isnan(first)]
        last[p & np.isnan(last)] = row[p & np.isnan(last)]
        mass = n if p.all() else lam[p].sum()
        to_start = mass * _softmax(row[p] / (temperature * first[p]))
        to_last = mass * _softmax(row[p] / (temperature * last[p]))
        lam[p] = alpha * (rho * lam[p] + (1 - rho) * to_start) + (1 - alpha) * to_last
        last[p] = row[p]
        out[t] = lam
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
