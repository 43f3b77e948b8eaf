"""Constant loss weights with the same interface as :class:`anl.AdaptiveLossBalancer`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anl import functional
from anl.state import floats_of
from anl.weighting import DEFAULT_HISTORY_SIZE, LossWeighting

__all__ = ["ConstantWeights"]


class ConstantWeights(LossWeighting):
    r"""Fixed weights: :math:`L_{total}(t) = \sum_i c_i L_i(t)` (paper Eq. 6 with constant ``w``).

    The baselines use it (Baseline+MT's 0.5/0.5, RSLAD's 5/6 and 1/6, TRADES' 1 and 6), so
    that every method is stepped, logged and checkpointed the same way. It still records the
    reference :math:`L_i(0)` and the relative losses :math:`\tilde L_i(t) = L_i(t)/L_i(0)`
    (Eq. 7) for plotting (the paper's Fig. 4 shows them for Baseline+MT); they never change
    the weights. The weights need not sum to one; assign :attr:`weights` to change them
    (for instance to apply weights computed once per epoch by another rule).

    Example:
        >>> from anl import ConstantWeights
        >>> weighting = ConstantWeights(["natural", "robust"], weights=[1.0, 6.0])
        >>> weighting.step([0.5, 0.25])
        2.0
        >>> weighting.weights = [1.0, 2.0]
        >>> weighting.step([0.5, 0.25])
        1.0
    """

    def __init__(
        self,
        losses: int | Sequence[str],
        weights: Sequence[float] | np.ndarray | Tensor,
        *,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(
            losses,
            {},
            initial_weights=weights,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    @property
    def weights(self) -> Tensor:
        """The constant weights ``c`` (settable: finite, non-negative, one per loss)."""
        return self._public("weights")

    @weights.setter
    def weights(self, values: Sequence[float] | np.ndarray | Tensor) -> None:
        floats = floats_of(values, self.num_losses, "weights")
        if self._device is None:
            self._state["weights"] = floats
        else:
            new = torch.tensor(floats, dtype=self._dtype, device=self._device)
            self._state["weights"].copy_(new)

    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
    ) -> dict[str, Any]:
        return {"weights": state["weights"]}
