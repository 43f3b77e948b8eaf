r"""The Adaptive Normalization Loss as pure functions (Zhao et al., ECCV 2022, Sec. 3.2).

In the spirit of ``torch.optim``'s functional forms: the classes of :mod:`anl` keep state,
these functions only compute. Each takes either a 1-D tensor or a list of Python floats
(the classes use plain floats on the host, where reading a value back costs nothing, and
tensors on accelerators, where it would synchronise) and returns the same kind. Both forms
run the same float64 arithmetic (they may differ in the last bit where a sum of more than
two terms is ordered differently).

.. math::

    L_{total}(t) &= \sum_{i=1}^{N} w_i(t)\, L_i(t)                      && \text{(Eq. 6, :func:`weighted_sum`)} \\
    \tilde L_i(t) &= L_i(t) / L_i(0)                                    && \text{(Eq. 7, :func:`relative_losses`)} \\
    r_i(t) &= \tilde L_i(t)^{\beta} \Big/ \sum_{j=1}^{N} \tilde L_j(t)^{\beta} && \text{(Eq. 8, :func:`relative_weights`)} \\
    w_i(t) &= r_w\, r_i(t) + (1 - r_w)\, w_i(t-1)                       && \text{(Eq. 9, :func:`moving_average`)}

Eq. 10-11 are Eq. 8-9 for ``N = 2`` (``w_nat = 1 - w_adv``). :func:`anl_weights` chains
Eq. 8 and 9, with the rule for losses absent at a step.

None of the tensor forms reads a value back to the host, so they never synchronise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

Vector = Tensor | list[float]

__all__ = [
    "Vector",
    "anl_weights",
    "moving_average",
    "relative_losses",
    "relative_weights",
    "weighted_sum",
]


def relative_losses(losses: Vector, initial: Vector) -> Vector:
    r"""Eq. 7: :math:`\tilde L_i = L_i / L_i(0)`, how far each loss has come down.

    Example:
        >>> relative_losses([1.5, 0.5], [2.0, 1.0])
        [0.75, 0.5]
    """
    if isinstance(losses, Tensor):
        return losses / initial
    return [value / reference for value, reference in zip(losses, initial, strict=True)]


def relative_weights(relative: Vector, beta: float) -> Vector:
    r"""Eq. 8: :math:`r_i = \tilde L_i^{\beta} / \sum_j \tilde L_j^{\beta}`.

    - If every :math:`\tilde L_i` is zero, :math:`r` is uniform (``1/N``), the limit of
      equal relative losses; with :math:`\beta = 0`, :math:`r` is uniform whatever they are
      (``0^0 = 1``).
    - When the powers overflow or underflow (large or tiny :math:`\tilde L`, large
      :math:`\beta`), the same ratio is taken after dividing :math:`\tilde L` by its largest
      entry, which is mathematically identical.

    Equivalently :math:`r = \mathrm{softmax}(\beta \log \tilde L)`.

    Example:
        >>> relative_weights([0.75, 0.5], 1.0)
        [0.6, 0.4]
        >>> relative_weights([1e-170, 2e-170], 2.0)  # the powers underflow to 0
        [0.2, 0.8]
    """
    if isinstance(relative, Tensor):
        return _relative_weights_tensor(relative, beta)
    n = len(relative)
    if beta == 0:
        return [1.0 / n] * n
    try:
        powers = relative if beta == 1.0 else [value**beta for value in relative]
        total = sum(powers)
    except OverflowError:
        total = math.inf
    if 0.0 < total < math.inf:
        return [power / total for power in powers]
    largest = max(relative)
    if not largest > 0:
        return [1.0 / n] * n
    scaled = [(value / largest) ** beta for value in relative]
    scaled_total = sum(scaled)
    return [value / scaled_total for value in scaled]


def _relative_weights_tensor(relative: Tensor, beta: float) -> Tensor:
    n = relative.shape[-1]
    uniform = torch.full_like(relative, 1.0 / n)
    if beta == 0:
        return uniform
    powers = relative if beta == 1.0 else relative**beta  # x ** 1.0 is x, bit for bit
    total = powers.sum()
    largest = relative.max()
    scaled = (relative / torch.where(largest > 0, largest, torch.ones_like(largest))) ** beta
    scaled_total = scaled.sum()
    direct_ok = torch.isfinite(total) & (total > 0)
    ratio = torch.where(
        direct_ok,
        powers / torch.where(direct_ok, total, torch.ones_like(total)),
        scaled / torch.where(scaled_total > 0, scaled_total, torch.ones_like(scaled_total)),
    )
    return torch.where(scaled_total > 0, ratio, uniform)


def moving_average(target: Vector, previous: Vector, rate: float) -> Vector:
    r"""Eq. 9: :math:`w_i(t) = r_w\, r_i(t) + (1 - r_w)\, w_i(t-1)` with ``rate`` :math:`= r_w`.

    Example:
        >>> moving_average([0.6, 0.4], [0.5, 0.5], 0.025)
        [0.5025, 0.4975]
    """
    keep = 1.0 - rate
    if isinstance(target, Tensor):
        return rate * target + keep * previous
    return [rate * t + keep * p for t, p in zip(target, previous, strict=True)]


def anl_weights(
    relative: Vector,
    previous: Vector,
    *,
    beta: float,
    weight_lr: float,
    present: Sequence[bool] | Tensor | None = None,
) -> Vector:
    r"""Eq. 8 then Eq. 9: the Adaptive Normalization Loss weights ``w(t)`` from ``L~(t)``, ``w(t-1)``.

    ``present`` marks the losses computed at this step (``None``: all of them). An absent
    loss keeps its weight; the present ones share the weight they held,
    :math:`M = \sum_{i\ present} w_i(t-1)`, by Eq. 8 over the present losses only:

    .. math::

        w_i(t) = r_w\, M\, r_i(t) + (1 - r_w)\, w_i(t-1) \quad (i \text{ present}),
        \qquad w_i(t) = w_i(t-1) \quad (i \text{ absent}).

    So the weights stay on the simplex, and with every loss present (:math:`M = 1`) this is
    exactly Eq. 8-9.

    Example:
        >>> anl_weights([0.75, 0.5], [0.5, 0.5], beta=1.0, weight_lr=0.025)
        [0.5025, 0.4975]
        >>> anl_weights([0.75, 0.5, 9.0], [0.25, 0.25, 0.5], beta=1.0, weight_lr=1.0,
        ...             present=[True, True, False])
        [0.3, 0.2, 0.5]
    """
    if present is None:
        return moving_average(relative_weights(relative, beta), previous, weight_lr)
    if isinstance(relative, Tensor):
        mask = torch.as_tensor(present, dtype=torch.bool, device=relative.device)
        # Absent entries enter Eq. 8 as 0, so they take no share: r is over present losses.
        masked = torch.where(mask, relative, torch.zeros_like(relative))
        n_present = mask.sum()
        target = relative_weights(masked, beta)
        if beta == 0:  # uniform over the present losses, not over all N
            target = torch.where(mask, 1.0 / n_present.clamp(min=1).to(relative.dtype), 0.0)
        else:  # all-zero present losses: uniform over the present ones
            uniform = mask.to(relative.dtype) / n_present.clamp(min=1).to(relative.dtype)
            target = torch.where((masked > 0).any(), target, uniform)
        held = torch.where(mask, previous, torch.zeros_like(previous)).sum()
        # Every loss present: exactly Eq. 8-9 (M = 1), as the list form, not M = sum(w).
        mass = torch.where(mask.all(), torch.ones_like(held), held)
        updated = moving_average(mass * target, previous, weight_lr)
        return torch.where(mask, updated, previous)
    indices = [i for i, here in enumerate(present) if here]
    if len(indices) == len(relative):
        return anl_weights(relative, previous, beta=beta, weight_lr=weight_lr)
    out = list(previous)
    if not indices:
        return out
    mass = sum(previous[i] for i in indices)
    target = relative_weights([relative[i] for i in indices], beta)
    for i, share in zip(indices, target, strict=True):
        out[i] = weight_lr * (mass * share) + (1.0 - weight_lr) * previous[i]
    return out


def weighted_sum(weights: Vector, losses: Sequence[Tensor]) -> Tensor:
    r"""Eq. 6: :math:`L_{total} = \sum_i w_i L_i` with the weights as constants for autograd.

    ``losses`` are 0-dim tensors (each with its graph); the result has their promoted dtype
    (at least float32) and flows into each :math:`L_i` scaled by :math:`w_i`. Up to three
    losses with host weights are combined by fused multiply-adds, more by one dot product
    (the cheapest forms measured by ``benchmarks/small_step.py``).

    Example:
        >>> import torch
        >>> weighted_sum([0.25, 0.75], [torch.tensor(2.0), torch.tensor(4.0)])
        tensor(3.5000)
    """
    if len(weights) != len(losses):
        raise ValueError(
            f"Parameter `weights` should hold one weight per loss ({len(losses)}). "
            f"Found {len(weights)} weights."
        )
    dtype = losses[0].dtype
    for loss in losses:  # one dtype, float32 or float64: no cast (the common case)
        if loss.dtype is not dtype:
            dtype = None
            break
    if dtype is not torch.float32 and dtype is not torch.float64:
        dtype = functools.reduce(torch.promote_types, (x.dtype for x in losses), torch.float32)
        losses = [loss.to(dtype) for loss in losses]
    if not isinstance(weights, Tensor):
        if len(losses) <= 3:
            total = losses[0].mul(weights[0])
            for i in range(1, len(losses)):
                total = torch.add(total, losses[i], alpha=weights[i])
            return total
        weights = torch.tensor(weights, dtype=dtype, device=losses[0].device)
    else:
        weights = weights.detach().to(device=losses[0].device, dtype=dtype)
    return torch.stack(losses) @ weights
