"""The Adaptive Normalization Loss (ANL) of MTARD, for any number of losses.

Zhao et al., "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation",
ECCV 2022, Sec. 3.2, Eq. 6-11. The arithmetic is :func:`anl.functional.anl_weights`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anl import functional
from anl.inputs import describe, parse_names
from anl.weighting import DEFAULT_HISTORY_SIZE, Hyperparameter, LossWeighting

__all__ = ["AdaptiveLossBalancer"]


class AdaptiveLossBalancer(LossWeighting):
    r"""Weights ``N`` losses by how little each has fallen relative to its first value.

    .. math::

        \tilde L_i(t) &= L_i(t) / L_i(0)                                  && \text{(Eq. 7)} \\
        r_i(t) &= \tilde L_i(t)^{\beta} \Big/ \sum_{j=1}^{N} \tilde L_j(t)^{\beta} && \text{(Eq. 8)} \\
        w_i(t) &= r_w\, r_i(t) + (1 - r_w)\, w_i(t-1)                     && \text{(Eq. 9)} \\
        L_{total}(t) &= \sum_{i=1}^{N} w_i(t)\, L_i(t)                    && \text{(Eq. 6)}

    - :math:`L_i(t)`: the ``i``-th value passed to :meth:`step` at its ``t``-th call.
    - :math:`L_i(0)`: its value at its first valid call, :attr:`initial_losses`.
    - :math:`\tilde L_i(t)`: :attr:`relative_losses`; :math:`\beta`: ``beta``; :math:`r_w`:
      ``weight_lr``; :math:`w(-1)`: ``initial_weights`` (uniform :math:`1/N` by default);
      :math:`w(t)`: :attr:`weights`.

    With ``N = 2`` this is the paper's Eq. 10-11 (``w_nat = 1 - w_adv``). The loss that fell
    least gains weight. As in the official code, the weights computed at step ``t`` weight
    step ``t``'s losses, and they stay a convex combination (no clipping is needed). If every
    relative loss is zero, :math:`r` is uniform; with :math:`\beta = 0` it is uniform whatever
    the losses (``0^0 = 1``). A loss absent at a step (``None``) keeps its weight, and the
    present ones share theirs by Eq. 8 over the present losses
    (:func:`anl.functional.anl_weights`).

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        beta: :math:`\beta \ge 0` (Eq. 8); the paper uses 1.
        weight_lr: :math:`r_w \in (0, 1]` (Eq. 9); the paper uses 0.025, multiplied by 0.1 at
            each learning-rate milestone. Settable between steps.
        initial_weights: :math:`w(-1)` on the simplex; default uniform.
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks under ``torch.distributed``.
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's dtype (default float64, whatever the losses' dtype).

    Example:
        >>> from anl import AdaptiveLossBalancer
        >>> balancer = AdaptiveLossBalancer(["adv", "nat"])
        >>> balancer.step({"adv": 2.0, "nat": 1.0})  # L(0) recorded: r = (1/2, 1/2)
        1.5
        >>> _ = balancer.step({"adv": 1.5, "nat": 0.5})  # L~ = (0.75, 0.5): r = (0.6, 0.4)
        >>> balancer.as_dict()  # 0.025 * 0.6 + 0.975 * 0.5
        {'adv': 0.5025, 'nat': 0.4975}
    """

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        beta: float = 1.0,
        weight_lr: float = 0.025,
        initial_weights: Sequence[float] | np.ndarray | Tensor | None = None,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if initial_weights is None:
            n = len(parse_names(losses))
            initial_weights = [1.0 / n] * n
        super().__init__(
            losses,
            {"beta": beta, "weight_lr": weight_lr},
            initial_weights=initial_weights,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    beta: Hyperparameter[float] = Hyperparameter(r""":math:`\beta`, the exponent of Eq. 8.""")

    weight_lr: Hyperparameter[float] = Hyperparameter(
        """:math:`r_w`, the learning rate of the weights (Eq. 9)."""
    )

    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
    ) -> dict[str, Any]:
        weights = functional.anl_weights(
            relative,
            state["weights"],
            beta=self.defaults["beta"],
            weight_lr=self.defaults["weight_lr"],
            present=present,
        )
        return {"weights": weights}

    def _check_hyperparameter(self, name: str, value: Any) -> Any:
        if name == "beta":
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"Parameter `beta` should be a finite number >= 0. Found `beta = {describe(value)}`."
                )
            return float(value)
        if name == "weight_lr":
            if not _is_real(value) or not 0 < value <= 1:
                raise ValueError(
                    f"Parameter `weight_lr` should be in (0, 1]. Found `weight_lr = {describe(value)}`."
                )
            return float(value)
        return super()._check_hyperparameter(name, value)

    def _check_weights(self, weights: list[float], name: str) -> list[float]:
        # Eq. 9 contracts the rounding error of the sum, so it stays within a few ulps of the
        # state's dtype times N (a float32 state drifts by about 1e-6 over long runs).
        tolerance = max(1e-6, 64 * len(weights) * torch.finfo(self._dtype).eps)
        if abs(sum(weights) - 1.0) > tolerance:
            raise ValueError(
                f"Parameter `{name}` should lie on the simplex (non-negative, summing to 1). "
                f"Found `{name} = {weights}` (sum {sum(weights)})."
            )
        return weights


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
