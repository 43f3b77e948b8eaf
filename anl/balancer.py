"""The Adaptive Normalization Loss (ANL) of MTARD, for any number of losses.

Zhao et al., "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation",
ECCV 2022, Sec. 3.2, Eq. 6-11.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from anl._backend import parse_names
from anl._weighting import LossWeighting


class AdaptiveLossBalancer(LossWeighting):
    r"""Weights ``N`` losses by how little each has fallen relative to its first value.

    .. math::

        \tilde L_i(t) &= L_i(t) / L_i(0)                                  && \text{(Eq. 7)} \\
        r_i(t) &= \tilde L_i(t)^{\beta} \Big/ \sum_{j=1}^{N} \tilde L_j(t)^{\beta} && \text{(Eq. 8)} \\
        w_i(t) &= r_w\, r_i(t) + (1 - r_w)\, w_i(t-1)                     && \text{(Eq. 9)} \\
        L_{total}(t) &= \sum_{i=1}^{N} w_i(t)\, L_i(t)                    && \text{(Eq. 6)}

    - :math:`L_i(t)`: the ``i``-th value passed to :meth:`step` at its ``t``-th call.
    - :math:`L_i(0)`: the value at the first (valid) call, :attr:`initial_losses`.
    - :math:`\tilde L_i(t)`: :attr:`relative_losses`; :math:`\beta`: ``beta``; :math:`r_w`:
      ``weight_lr``; :math:`w(-1)`: ``initial_weights`` (uniform :math:`1/N` by default);
      :math:`w(t)`: :attr:`weights`.

    With ``N = 2`` this is the paper's Eq. 10-11 (``w_nat = 1 - w_adv``). The loss that fell
    least keeps the larger weight. As in the official code, the weights computed at step ``t``
    weight step ``t``'s losses, and they stay a convex combination (no clipping needed).
    If every relative loss is zero, :math:`r` is taken uniform (:math:`1/N`); with
    :math:`\beta = 0`, :math:`r` is uniform whatever the losses (``0^0 = 1``).
    Equivalently, :math:`r = \mathrm{softmax}(\beta \log \tilde L)`.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        beta: :math:`\beta \ge 0` (Eq. 8); the paper uses 1.
        weight_lr: :math:`r_w \in (0, 1]` (Eq. 9); the paper uses 0.025, multiplied by 0.1 at
            each learning-rate milestone. Settable between steps.
        initial_weights: :math:`w(-1)` on the simplex; default uniform.
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks under ``torch.distributed``.
        history_size: keep at most this many steps of :meth:`history` (``None``: unbounded).
        dtype: the weight state's dtype (default float64, whatever the losses' dtype).

    Example:
        >>> from anl import AdaptiveLossBalancer
        >>> balancer = AdaptiveLossBalancer(["adv", "nat"])
        >>> balancer.step({"adv": 2.0, "nat": 1.0})  # L(0) recorded: r = (1/2, 1/2)
        1.5
        >>> _ = balancer.step({"adv": 1.5, "nat": 0.5})  # L~ = (0.75, 0.5): r = (0.6, 0.4)
        >>> balancer.weights.round(6).tolist()  # 0.025 * 0.6 + 0.975 * 0.5
        [0.5025, 0.4975]
    """

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        beta: float = 1.0,
        weight_lr: float = 0.025,
        initial_weights: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.beta = _check_beta(beta)
        self.weight_lr = weight_lr
        if initial_weights is None:
            n = len(parse_names(losses))
            initial_weights = [1.0 / n] * n
        super().__init__(
            losses,
            initial_weights=initial_weights,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    @property
    def weight_lr(self) -> float:
        """:math:`r_w`, the learning rate of the weights (Eq. 9)."""
        return self._weight_lr

    @weight_lr.setter
    def weight_lr(self, value: float) -> None:
        self._weight_lr = _check_weight_lr(value)

    def _check_initial_weights(self, initial_weights: Any) -> torch.Tensor:
        weights = super()._check_initial_weights(initial_weights)
        _check_simplex(weights, "initial_weights")
        return weights

    def _check_loaded_weights(self, weights: torch.Tensor) -> None:
        _check_simplex(weights, "weights")

    def _next_weights(self, relative: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        target = relative_weights(relative, self.beta)
        return self._weight_lr * target + (1.0 - self._weight_lr) * weights

    def _hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.beta, "weight_lr": self._weight_lr}

    def _load_hyperparameters(self, hyper: Mapping[str, Any]) -> None:
        beta = _check_beta(hyper.get("beta", self.beta))
        weight_lr = _check_weight_lr(hyper.get("weight_lr", self._weight_lr))
        self.beta, self._weight_lr = beta, weight_lr


def relative_weights(relative: torch.Tensor, beta: float) -> torch.Tensor:
    r"""Eq. 8: :math:`r_i = \tilde L_i^\beta / \sum_j \tilde L_j^\beta`, uniform if all are zero.

    Computed directly; when the powers overflow, the same ratio is taken after dividing the
    relative losses by their maximum (mathematically identical). Never synchronises.
    """
    n = relative.shape[-1]
    uniform = torch.full_like(relative, 1.0 / n)
    if beta == 0:
        return uniform
    powers = relative**beta
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


def _check_beta(beta: float) -> float:
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not math.isfinite(beta)
        or beta < 0
    ):
        raise ValueError(
            f"Parameter `beta` should be a finite number >= 0. Found `beta = {beta!r}`."
        )
    return float(beta)


def _check_weight_lr(weight_lr: float) -> float:
    if (
        isinstance(weight_lr, bool)
        or not isinstance(weight_lr, (int, float))
        or not math.isfinite(weight_lr)
        or not 0 < weight_lr <= 1
    ):
        raise ValueError(
            f"Parameter `weight_lr` should be in (0, 1]. Found `weight_lr = {weight_lr!r}`."
        )
    return float(weight_lr)


def _check_simplex(weights: torch.Tensor, name: str) -> None:
    if abs(float(weights.sum()) - 1.0) > 1e-6:
        raise ValueError(
            f"Parameter `{name}` should lie on the simplex (non-negative, summing to 1). "
            f"Found `{name} = {weights.tolist()}` (sum {float(weights.sum())})."
        )
