r"""Geometric Loss Strategy (Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation
and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019, Sec. 3.2)."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anl import functional
from anl.inputs import parse_names
from anl.rules import _common
from anl.weighting import DEFAULT_HISTORY_SIZE, LossWeighting

__all__ = ["GeometricLossStrategy"]


class GeometricLossStrategy(LossWeighting):
    r"""Minimises the geometric mean of the losses instead of a weighted sum.

    .. math::

        L_{total}(t) &= \Big(\prod_{i=1}^{N} L_i(t)\Big)^{1/N} \\
        w_i(t) &= \frac{\partial L_{total}(t)}{\partial L_i(t)} = \frac{L_{total}(t)}{N\, L_i(t)}

    - :math:`L_i(t)`: the ``i``-th value passed to :meth:`step` at its ``t``-th call.
    - :math:`L_{total}(t)`: what :meth:`step` and :meth:`combine` return; autograd flows
      through the geometric mean itself, so each :math:`L_i` receives the gradient
      :math:`w_i(t)`.
    - :math:`w_i(t)`: :attr:`weights`, the *effective* weights: the weights a weighted sum
      would need to give the same gradient at this step (detached, for logging and for
      comparison with the other rules). They are not normalised (:math:`\sum_i w_i L_i =
      L_{total}`); :math:`1/N` before the first step (equal losses).

    GLS has no hyperparameter and no memory, and it is invariant to each loss's scale up to
    a constant factor of the total (:math:`\prod_i (c_i L_i)^{1/N} = (\prod_i c_i)^{1/N}
    L_{total}`), hence to the gradient's direction: the loss that is small relative to the
    others gets the large weight, which equalises the relative progress :math:`d \log L_i`.

    Choices the paper leaves open:

    - The total is computed as :math:`\exp(\frac{1}{N} \sum_i \log L_i)` in at least float32
      (the product of many losses under- or overflows; the gradient is the same).
    - The losses must be *positive*: with a zero loss the geometric mean is 0 whatever the
      others do, and its gradient is undefined (infinite for that loss, 0 for the others).
      A zero loss is therefore invalid, like a negative or NaN one: numbers and ``strict=True``
      raise, tensors mask the update (:attr:`num_skipped`; the returned total is then 0 or
      NaN, with NaN gradients: skip that optimiser step).
    - An effective weight above the largest float (a subnormal loss next to large ones) is
      stored as the largest float, so the state stays finite.
    - Under ``torch.distributed`` each rank returns the geometric mean of its own losses, and
      :attr:`weights` are the effective weights at the cross-rank mean losses (identical on
      every rank).

    Absent losses (``None``): the total is the geometric mean over the present losses,
    :math:`(\prod_{i\ present} L_i)^{1/n}` with :math:`n` their number, and their effective
    weights are :math:`L_{total}/(n L_i)`; an absent loss keeps its last effective weight.

    Relation to :class:`anl.AdaptiveLossBalancer`: both are scale-free. GLS reweights by
    :math:`1/L_i` at every step (a loss that halves has its weight doubled); ANL by how much
    each loss fell relative to :math:`L_i(0)`, smoothed over time.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks under ``torch.distributed``.
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's dtype (default float64, whatever the losses' dtype).

    Example:
        >>> import torch
        >>> from anl.rules import GeometricLossStrategy
        >>> gls = GeometricLossStrategy(["seg", "depth"])
        >>> seg = torch.tensor(4.0, requires_grad=True)
        >>> depth = torch.tensor(1.0, requires_grad=True)
        >>> total = gls.step([seg, depth])  # sqrt(4 * 1)
        >>> total.backward()
        >>> total.item(), seg.grad.item(), depth.grad.item()
        (2.0, 0.25, 1.0)
        >>> gls.weights.tolist()  # 2 / (2 * 4), 2 / (2 * 1): the gradients above
        [0.25, 1.0]
    """

    update_takes_losses = True
    requires_positive_losses = True

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        n = len(parse_names(losses))
        super().__init__(
            losses,
            {},
            initial_weights=[1.0 / n] * n,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
        losses: functional.Vector,
    ) -> dict[str, Any]:
        if isinstance(losses, Tensor):
            here = _common.all_of(present, losses.shape[0], losses)
            safe = torch.where(here, losses, torch.ones_like(losses))
            count = here.sum().to(losses.dtype)
            mean_log = torch.where(here, safe.log(), torch.zeros_like(safe)).sum() / count
            effective = (mean_log.exp() / (count * safe)).clamp(max=torch.finfo(losses.dtype).max)
            return {"weights": torch.where(here, effective, state["weights"])}
        here = _common.all_of(present, len(losses), losses)
        kept = [v for v, h in zip(losses, here, strict=True) if h]
        total = math.exp(math.fsum(math.log(v) for v in kept) / len(kept))
        weights = [
            min(total / (len(kept) * v), sys.float_info.max) if h else w
            for v, w, h in zip(losses, state["weights"], here, strict=True)
        ]
        return {"weights": weights}

    def _combine(
        self,
        weights: functional.Vector,
        losses: list[Tensor] | list[float],
        kept: list[int] | None,
    ) -> Tensor | float:
        """The geometric mean of the present losses (the weights are not used)."""
        if not isinstance(losses[0], Tensor):
            if any(not v >= 0 for v in losses):  # negative or NaN: no real geometric mean
                return math.nan
            if min(losses) == 0:
                return 0.0
            return math.exp(math.fsum(math.log(v) for v in losses) / len(losses))
        return _common.stacked_losses(losses).log().mean().exp()
