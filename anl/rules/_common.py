r"""What the rules share: a softmax over the losses that take part, the weight mass they share,
and the checks of their hyperparameters.

Every function takes the host form (lists of Python floats, tuples of bools) or the device
form (1-D tensors, bool tensors) and returns the same form; the device form never reads a
value back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anl.functional import Vector
from anl.inputs import describe

Mask = Sequence[bool] | Tensor | None


def all_of(mask: Mask, n: int, like: Vector) -> Sequence[bool] | Tensor:
    """``mask``, or every loss when it is None, in the form of ``like``."""
    if mask is not None:
        return mask
    if isinstance(like, Tensor):
        return torch.ones(n, dtype=torch.bool, device=like.device)
    return (True,) * n


def masked_softmax(logits: Vector, share: Mask) -> Vector:
    r""":math:`p_i = e^{x_i} / \sum_{j \in S} e^{x_j}` for :math:`i \in S` (``share``; None: every
    loss), 0 elsewhere.

    Computed after subtracting :math:`\max_{j \in S} x_j`, so it never overflows. Its limits
    where the plain formula is 0/0 or inf/inf: logits of :math:`+\infty` share the mass evenly
    (the limit of ever larger logits), and if every logit in :math:`S` is :math:`-\infty` the
    mass is shared evenly over :math:`S`. Logits outside :math:`S` are ignored (they may be NaN);
    those in :math:`S` must not be NaN. With :math:`S` empty the result is not used.

    Example:
        >>> masked_softmax([0.0, math.log(3.0), 5.0], [True, True, False])
        [0.25, 0.75, 0.0]
        >>> masked_softmax([math.inf, 1.0, math.inf], None)
        [0.5, 0.0, 0.5]
        >>> masked_softmax([-math.inf, -math.inf, 0.0], [True, True, False])
        [0.5, 0.5, 0.0]
        >>> masked_softmax([-math.inf, -math.inf], None)
        [0.5, 0.5]
    """
    if isinstance(logits, Tensor):
        return _masked_softmax_tensor(logits, share)
    if share is None:  # every loss takes part and the logits are finite: the common case
        top = max(logits)
        if -math.inf < top < math.inf:
            exps = [math.exp(x - top) for x in logits]
            total = sum(exps)
            return [e / total for e in exps]
    n = len(logits)
    members = [i for i in range(n) if share is None or share[i]]
    out = [0.0] * n
    if not members:
        return out
    top = max(logits[i] for i in members)
    if top == math.inf:
        members = [i for i in members if logits[i] == math.inf]
    if top in (math.inf, -math.inf):
        for i in members:
            out[i] = 1.0 / len(members)
        return out
    exps = [math.exp(logits[i] - top) for i in members]
    total = sum(exps)  # >= 1: the largest logit contributes exp(0)
    for i, e in zip(members, exps, strict=True):
        out[i] = e / total
    return out


def _masked_softmax_tensor(logits: Tensor, share: Mask) -> Tensor:
    if share is None:
        share = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
    share = torch.as_tensor(share, dtype=torch.bool, device=logits.device)
    inf = torch.full_like(logits, math.inf)
    masked = torch.where(share, logits, -inf)
    top = masked.max()
    finite_top = torch.isfinite(top)
    exps = torch.exp(masked - torch.where(finite_top, top, torch.zeros_like(top)))
    exps = torch.where(top == math.inf, (masked == math.inf).to(logits.dtype), exps)
    exps = torch.where(top == -math.inf, share.to(logits.dtype), exps)
    return exps / exps.sum()


def shared_mass(previous: Vector, share: Mask, full: float) -> float | Tensor:
    r"""The weight :math:`M` that the losses of ``share`` split among themselves.

    ``full`` (the paper's total, ``N`` or 1) when every loss takes part, so that the paper's
    equations hold exactly; otherwise :math:`M = \sum_{i \in S} w_i(t-1)`, the weight those
    losses held, so that the losses left out keep theirs and the total stays ``full``.
    """
    if isinstance(previous, Tensor):
        if share is None:
            return torch.tensor(full, dtype=previous.dtype, device=previous.device)
        share = torch.as_tensor(share, dtype=torch.bool, device=previous.device)
        held = torch.where(share, previous, torch.zeros_like(previous)).sum()
        return torch.where(share.all(), torch.full_like(held, full), held)
    if share is None or all(share):
        return full
    return sum(w for w, s in zip(previous, share, strict=True) if s)


def shared_softmax(logits: Vector, previous: Vector, share: Mask, full: float) -> Vector:
    r""":math:`w_i = M\, \mathrm{softmax}_{S}(x)_i` for :math:`i \in S` and
    :math:`w_i = w_i(t-1)` elsewhere, with :math:`M` from :func:`shared_mass`."""
    mass = shared_mass(previous, share, full)
    p = masked_softmax(logits, share)
    if isinstance(p, Tensor):
        if share is None:
            return mass * p
        share = torch.as_tensor(share, dtype=torch.bool, device=p.device)
        return torch.where(share, mass * p, previous)
    if share is None:
        return [mass * q for q in p]
    return [mass * q if s else w for q, w, s in zip(p, previous, share, strict=True)]


def stacked_losses(losses: Sequence[Tensor]) -> Tensor:
    """The 0-dim losses as one 1-D tensor of their promoted dtype, float32 at least (so that
    narrower losses give a float32 total); one ``stack`` where the dtypes allow it."""
    values = torch.stack(losses)  # stack promotes mixed dtypes
    return values if values.dtype in _TOTAL_DTYPES else values.float()


_TOTAL_DTYPES = (torch.float32, torch.float64)


def check_sum(weights: list[float], name: str, total: float, tolerance: float = 1e-6) -> None:
    """``ValueError`` unless the weights add up to ``total`` (relative ``tolerance``)."""
    found = math.fsum(weights)
    if abs(found - total) > tolerance * max(1.0, total):
        raise ValueError(
            f"Parameter `{name}` should add up to {total:g}. Found `{name} = {weights}` "
            f"(sum {found})."
        )


# ---------------------------------------------------------------------------- hyperparameters
def is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_real(name: str, value: Any) -> float:
    if not is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"Parameter `{name}` should be a finite number > 0. Found `{name} = {describe(value)}`."
        )
    return float(value)


def finite_real(name: str, value: Any) -> float:
    if not is_real(value) or not math.isfinite(value):
        raise ValueError(
            f"Parameter `{name}` should be a finite number. Found `{name} = {describe(value)}`."
        )
    return float(value)


def unit_interval(name: str, value: Any) -> float:
    if not is_real(value) or not 0 <= value <= 1:
        raise ValueError(
            f"Parameter `{name}` should be in [0, 1]. Found `{name} = {describe(value)}`."
        )
    return float(value)


def integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"Parameter `{name}` should be an int in [{low}, {high}]. "
            f"Found `{name} = {describe(value)}`."
        )
    return int(value)
