"""Constant loss weights with the same interface as :class:`anl.AdaptiveLossBalancer`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from anl._weighting import LossWeighting


class ConstantWeights(LossWeighting):
    r"""Fixed weights: :math:`L_{total}(t) = \sum_i c_i L_i(t)` (paper Eq. 6 with constant ``w``).

    The baselines use it (Baseline+MT's 0.5/0.5, RSLAD's 5/6 and 1/6, TRADES' 1 and 6), so
    that every method is stepped, logged and checkpointed the same way. It still records the
    reference :math:`L_i(0)` and the relative losses :math:`\tilde L_i(t) = L_i(t)/L_i(0)`
    (Eq. 7) for plotting (the paper's Fig. 4 shows them for Baseline+MT); they never change
    the weights. The weights need not sum to one.

    Example:
        >>> from anl import ConstantWeights
        >>> weighting = ConstantWeights(["natural", "robust"], weights=[1.0, 6.0])
        >>> weighting.step([0.5, 0.25])
        2.0
    """

    def __init__(
        self,
        losses: int | Sequence[str],
        weights: Sequence[float] | np.ndarray | torch.Tensor,
        *,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(
            losses,
            initial_weights=weights,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    def _next_weights(self, relative: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return weights
