r"""SoftAdapt (Heydari, Thompson & Mehmood, "SoftAdapt: Techniques for Adaptive Loss Weighting
of Neural Networks with Multi-Part Loss Functions", arXiv:1912.12355, 2019, Sec. 3)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anl import functional
from anl.inputs import describe, parse_names
from anl.rules import _common
from anl.weighting import DEFAULT_HISTORY_SIZE, Hyperparameter, LossWeighting

__all__ = ["SoftAdapt"]

VARIANTS = ("original", "normalized", "loss_weighted")

#: Backward finite differences of accuracy order p: s = sum_k c_k L(t - k), k = 0..p.
STENCILS = {
    1: (1.0, -1.0),
    2: (3 / 2, -2.0, 1 / 2),
    3: (11 / 6, -3.0, 3 / 2, -1 / 3),
    4: (25 / 12, -4.0, 3.0, -4 / 3, 1 / 4),
    5: (137 / 60, -5.0, 5.0, -10 / 3, 5 / 4, -1 / 5),
}
_KEPT = 6  # values kept per loss: enough for every order, so `order` can change mid-run


class SoftAdapt(LossWeighting):
    r"""Weights the losses by a softmax of their rates of change: the one rising fastest gains.

    .. math::

        s_i(t) &= \sum_{k=0}^{p} c^{(p)}_k\, L_i(t - k) \qquad
                 \big(p = 1:\ s_i(t) = L_i(t) - L_i(t-1)\big) \\
        w_i(t) &= \exp(\beta\, s_i(t)) \Big/ \sum_{j=1}^{N} \exp(\beta\, s_j(t))
                 && \text{(original)} \\
        w_i(t) &= \exp(\beta\, \hat s_i(t)) \Big/ \sum_j \exp(\beta\, \hat s_j(t)),\quad
                 \hat s_i = s_i \Big/ \sum_j |s_j| && \text{(normalized)} \\
        w_i(t) &= f_i(t) \exp(\beta\, s_i(t)) \Big/ \sum_j f_j(t) \exp(\beta\, s_j(t)),\quad
                 f_i(t) = \tfrac{1}{p+1} \sum_{k=0}^{p} L_i(t-k) && \text{(loss weighted)}

    - :math:`L_i(t)`: the ``i``-th value passed to :meth:`step` at its ``t``-th applied call.
    - :math:`s_i(t)`: loss ``i``'s rate of change, a backward finite difference of accuracy
      order :math:`p` = ``order`` over its last :math:`p + 1` values (:data:`STENCILS`).
    - :math:`\beta`: ``beta`` (the paper: 0.1); :math:`\beta > 0` favours the losses that rise
      or fall slowest, :math:`\beta < 0` the fastest-falling ones; with :math:`\beta = 0` the
      weights are uniform (loss weighted: proportional to :math:`f_i`).
    - :math:`f_i(t)`: the loss-weighted variant's weight, the mean of the values :math:`s_i`
      is computed from.
    - :math:`w_i(t)`: :attr:`weights`, on the simplex (sum 1); :math:`1/N` until the first
      rates exist.

    Choices the paper leaves open:

    - **Past points.** :math:`p + 1` values per loss, default :math:`p = 1` (the paper's
      :math:`s = L(t) - L(t-1)`), up to 5. The differences are *backward* (the slope at the
      newest value, that the weights act on); the authors' package applies forward stencils,
      i.e. the slope at the oldest of the points, which differs for :math:`p > 1`.
    - **When.** The weights are updated at every step from the losses up to and including
      this step's, and weight this step's losses (as ANL does); a loss with fewer than
      :math:`p + 1` values has no rate yet (the first :math:`p` steps: uniform weights).
    - **Normalisation.** :math:`\hat s` divides by :math:`\sum_j |s_j|`, so that
      :math:`\hat s \in [-1, 1]`; the package divides by the signed sum, which reverses every
      slope when the losses fall on the whole. If every slope is 0, :math:`\hat s = 0`.
    - **No** :math:`\varepsilon` in the denominators (the package adds 1e-8): the softmax is
      taken after subtracting the largest logit, and its 0/0 limits are made explicit (all
      :math:`f_i = 0`: uniform). Rates of change are computed on the losses divided by their
      largest magnitude and scaled back, so huge losses cannot turn them into NaN, and as
      :math:`s = \sum_{k \ge 1} c_k (L(t-k) - L(t))` (the same sum, since
      :math:`\sum_k c_k = 0`), so that a loss that did not change has a rate of exactly 0
      instead of rounding noise, which the normalisation would blow up to :math:`\pm 1`.
    - The rates use the raw losses, so SoftAdapt is *not* scale-free (as in the paper): a
      loss measured in other units gets another weight.

    Absent losses (``None``): a loss's values are the ones it was computed at, so its rate is
    over its own last :math:`p + 1` values (not equally spaced in steps if it skipped some).
    An absent loss, or one without a rate yet, keeps its weight; the others share the weight
    they held, :math:`M = \sum_{i\ in} w_i(t-1)`, by the softmax over themselves (the
    normalisation and the softmax run over them only); with every loss in, :math:`M = 1`,
    exactly the equations above. The total sums the present losses, not renormalised.

    Relation to :class:`anl.AdaptiveLossBalancer`: both give weight to the loss that makes
    least progress. ANL measures progress since the start, :math:`\tilde L = L(t)/L(0)`
    (scale-free), and smooths the weights; SoftAdapt measures the last step's change in
    absolute units, unsmoothed.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        beta: :math:`\beta`, any finite number (default 0.1). Settable.
        variant: ``"original"``, ``"normalized"`` or ``"loss_weighted"``. Settable.
        order: :math:`p \in \{1, \dots, 5\}`, the accuracy order of the rates (default 1).
            Settable.
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks under ``torch.distributed``.
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's dtype (default float64, whatever the losses' dtype).

    Example:
        >>> from anl.rules import SoftAdapt
        >>> softadapt = SoftAdapt(["data", "physics"], beta=1.0)
        >>> _ = softadapt.step([2.0, 2.0])  # no rate yet: uniform
        >>> _ = softadapt.step([1.0, 3.0])  # s = (-1, 1): w = softmax(-1, 1)
        >>> [round(w, 4) for w in softadapt.weights.tolist()]
        [0.1192, 0.8808]
    """

    update_takes_losses = True

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        beta: float = 0.1,
        variant: str = "original",
        order: int = 1,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        n = len(parse_names(losses))
        super().__init__(
            losses,
            {"beta": beta, "variant": variant, "order": order},
            initial_weights=[1.0 / n] * n,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    beta: Hyperparameter[float] = Hyperparameter(r""":math:`\beta`, the softmax's scale.""")

    variant: Hyperparameter[str] = Hyperparameter(
        """``"original"``, ``"normalized"`` or ``"loss_weighted"``."""
    )

    order: Hyperparameter[int] = Hyperparameter(
        """:math:`p`, the accuracy order of the finite differences."""
    )

    # ------------------------------------------------------------------------ the rule
    def _extra_state(self) -> dict[str, Any]:
        n = self.num_losses
        return {
            "recent_losses": [[0.0] * n for _ in range(_KEPT)],  # oldest row first
            "num_recent": [0.0] * n,  # how many rows hold a value of each loss (<= 6)
        }

    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
        losses: functional.Vector,
    ) -> dict[str, Any]:
        if isinstance(losses, Tensor):
            return self._update_tensor(state, present, losses)
        n, order = len(losses), self.defaults["order"]
        here = _common.all_of(present, n, losses)
        if present is None:  # every loss shifts in: the rows move up as a whole
            rows = [*state["recent_losses"][1:], list(losses)]
        else:
            rows = [list(row) for row in state["recent_losses"]]
            for i in range(n):
                if here[i]:
                    for k in range(_KEPT - 1):
                        rows[k][i] = rows[k + 1][i]
                    rows[-1][i] = losses[i]
        filled = [
            min(f + 1.0, float(_KEPT)) if h else f
            for f, h in zip(state["num_recent"], here, strict=True)
        ]
        share = [h and f >= order + 1 for h, f in zip(here, filled, strict=True)]
        stencil = [rows[-1 - k] for k in range(order + 1)]  # L(t), L(t-1), ...
        scale = max((abs(row[i]) for row in stencil for i in range(n) if share[i]), default=0.0)
        scale = scale if scale > 0 else 1.0
        newest = stencil[0]
        slopes = [  # s / scale, as the sum of c_k (L(t-k) - L(t)): exactly 0 for a flat loss
            sum(
                c * ((row[i] - newest[i]) / scale)
                for c, row in zip(STENCILS[order][1:], stencil[1:], strict=True)
            )
            if share[i]
            else 0.0
            for i in range(n)
        ]
        logits = self._logits_host(slopes, scale, stencil, share)
        weights = _common.shared_softmax(logits, state["weights"], share, 1.0)
        return {"weights": weights, "recent_losses": rows, "num_recent": filled}

    def _logits_host(
        self, slopes: list[float], scale: float, stencil: list[list[float]], share: list[bool]
    ) -> list[float]:
        beta, variant = self.defaults["beta"], self.defaults["variant"]
        n = len(slopes)
        if variant == "normalized":
            norm = sum(abs(s) for s, h in zip(slopes, share, strict=True) if h)
            return [beta * (s / norm) if norm > 0 else 0.0 for s in slopes]
        logits = [_times(beta, scale, s) for s in slopes]
        if variant == "loss_weighted":
            for i in range(n):
                mean = sum(row[i] / scale for row in stencil) / len(stencil)
                log_f = math.log(scale) + math.log(mean) if mean > 0 else -math.inf
                logits[i] = log_f + logits[i]
        return logits

    def _update_tensor(
        self, state: Mapping[str, Tensor], present: Tensor | None, losses: Tensor
    ) -> dict[str, Tensor]:
        n, order = losses.shape[0], self.defaults["order"]
        beta, variant = self.defaults["beta"], self.defaults["variant"]
        here = _common.all_of(present, n, losses)
        recent = state["recent_losses"]
        shifted = torch.cat([recent[1:], losses[None]])
        rows = torch.where(here[None], shifted, recent)
        filled = torch.where(here, (state["num_recent"] + 1).clamp(max=_KEPT), state["num_recent"])
        share = here & (filled >= order + 1)
        stencil = rows.flip(0)[: order + 1]  # L(t), L(t-1), ...
        magnitude = torch.where(share[None], stencil.abs(), torch.zeros_like(stencil)).amax()
        scale = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
        coefficients = torch.tensor(STENCILS[order], dtype=rows.dtype, device=rows.device)
        scaled = stencil / scale
        changes = (stencil[1:] - stencil[:1]) / scale  # L(t-k) - L(t), k >= 1
        slopes = torch.where(share, coefficients[1:] @ changes, torch.zeros_like(losses))
        if variant == "normalized":
            norm = torch.where(share, slopes.abs(), torch.zeros_like(slopes)).sum()
            safe = torch.where(norm > 0, norm, torch.ones_like(norm))
            logits = torch.where(norm > 0, beta * (slopes / safe), torch.zeros_like(slopes))
        else:
            logits = _times(beta, scale, slopes)
            if variant == "loss_weighted":
                mean = scaled.sum(0) / (order + 1)
                log_f = torch.where(
                    mean > 0,
                    scale.log() + torch.where(mean > 0, mean, torch.ones_like(mean)).log(),
                    torch.full_like(mean, -math.inf),
                )
                logits = torch.where(share, log_f + logits, torch.zeros_like(logits))
        weights = _common.shared_softmax(logits, state["weights"], share, 1.0)
        return {"weights": weights, "recent_losses": rows, "num_recent": filled}

    # ------------------------------------------------------------------------ checks
    def _check_hyperparameter(self, name: str, value: Any) -> Any:
        if name == "beta":
            return _common.finite_real(name, value)
        if name == "order":
            return _common.integer(name, value, 1, max(STENCILS))
        if name == "variant":
            if value not in VARIANTS or not isinstance(value, str):
                raise ValueError(
                    f"Parameter `variant` should be one of {list(VARIANTS)}. "
                    f"Found `variant = {describe(value)}`."
                )
            return value
        return super()._check_hyperparameter(name, value)

    def _check_weights(self, weights: list[float], name: str) -> list[float]:
        _common.check_sum(weights, name, 1.0)
        return weights

    def _check_loaded_state(self, state: dict[str, Any]) -> None:
        filled = state["num_recent"]
        if any(f != int(f) or not 0 <= f <= _KEPT for f in filled):
            raise ValueError(
                f"State `num_recent` should hold whole numbers in [0, {_KEPT}]. Found {filled}."
            )
        if any(v < 0 for row in state["recent_losses"] for v in row):
            raise ValueError(
                f"State `recent_losses` should be non-negative. Found {state['recent_losses']}."
            )


def _times(beta: float, scale: float | Tensor, slope: float | Tensor) -> float | Tensor:
    r""":math:`\beta\, s` from ``slope`` :math:`= s / scale`: an overflow gives :math:`\pm\infty`
    (:math:`\beta = 0` or a slope of 0 gives 0), never NaN."""
    if isinstance(slope, Tensor):
        if beta == 0:
            return torch.zeros_like(slope)
        product = (beta * slope) * scale
        return torch.where(slope == 0, torch.zeros_like(product), product)
    return 0.0 if slope == 0 or beta == 0 else (beta * slope) * scale
