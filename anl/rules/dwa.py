r"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, Sec. 3.3, Eq. 7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anl import functional
from anl.inputs import parse_names
from anl.rules import _common
from anl.weighting import DEFAULT_HISTORY_SIZE, Hyperparameter, LossWeighting

__all__ = ["DynamicWeightAverage"]

#: Largest accepted window (steps): 2^24 keeps the window's counts exact in a float32 state.
MAX_WINDOW = 2**24


class DynamicWeightAverage(LossWeighting):
    r"""Weights each loss by how much its windowed mean rose between the last two windows.

    .. math::

        \bar L_i(k) &= \operatorname{mean}\{L_i(t) : t \text{ in window } k\} \\
        r_i(k-1) &= \bar L_i(k-1) / \bar L_i(k-2) \\
        w_i(k) &= N \exp(r_i(k-1) / T) \Big/ \sum_{j=1}^{N} \exp(r_j(k-1) / T)
               && \text{(Eq. 7)} \\
        L_{total}(t) &= \sum_{i=1}^{N} w_i(k)\, L_i(t) \quad (t \text{ in window } k)

    - :math:`L_i(t)`: the ``i``-th value passed to :meth:`step` at its ``t``-th applied call.
    - Window :math:`k`: applied calls :math:`kW, \dots, kW + W - 1`, with :math:`W` = ``window``
      (the paper's epoch: set ``window`` to the batches per epoch to reproduce MTAN).
    - :math:`\bar L_i(k)`: the mean of loss ``i`` over window ``k``.
    - :math:`r_i(k-1)`: the paper's relative descending rate; :math:`T`: ``temperature``.
    - :math:`w_i(k)`: :attr:`weights` during window ``k``; :math:`w_i(0) = w_i(1) = 1`.

    Choices the paper leaves open:

    - The weights change at the *first step of a window*, from the two windows before it, and
      stay constant inside it (MTAN computes them at the start of each epoch): the last step of
      a window is still weighted by that window's weights. They are 1 during windows 0 and 1.
    - ``window`` defaults to 1, i.e. :math:`r_i(t-1) = L_i(t-1)/L_i(t-2)` on single steps, the
      form of per-step libraries; per-batch losses are noisy, so set it to the batches per
      epoch for the paper's DWA. Masked steps (invalid losses) do not count in a window.
    - The window's running mean is kept, not its sum (a sum of huge losses could overflow),
      with its count, so a resume mid-window continues exactly.
    - A ratio is *defined* for loss ``i`` when it has a mean in both windows and
      :math:`\bar L_i(k-2) > 0`. A loss whose ratio is undefined keeps its weight, and the
      others share the weight they held, :math:`M = \sum_{i\ defined} w_i(k-1)`, by Eq. 7
      over themselves; with every ratio defined :math:`M = N`, exactly Eq. 7. A ratio of
      :math:`+\infty` (overflow) takes the weight, as the limit of Eq. 7.

    Absent losses (``None``): a loss absent at a step does not enter its window's mean (the
    mean is over the steps that computed it); the weights change only at window starts, so an
    absent loss keeps its weight, and the total sums the present losses, not renormalised. A
    loss absent for a whole window has no mean there: its ratio is undefined for the next two
    windows.

    Relation to :class:`anl.AdaptiveLossBalancer`: both favour the loss that falls least. ANL's
    target :math:`r_i = \mathrm{softmax}_i(\beta \log \tilde L_i(t))` compares each loss to a
    *fixed* reference :math:`L_i(0)` and smooths the weights by an EMA; DWA compares each
    loss to its *previous window* and uses the softmax directly, without smoothing.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        temperature: :math:`T > 0` (the paper: 2); larger is more uniform. Settable.
        window: :math:`W \ge 1`, steps per averaging window (default 1). Settable: a window
            already :math:`\ge` the new ``W`` steps long ends at the next step.
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks under ``torch.distributed``.
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's dtype (default float64, whatever the losses' dtype).

    Example:
        >>> from anl.rules import DynamicWeightAverage
        >>> dwa = DynamicWeightAverage(["seg", "depth"], window=2)
        >>> for losses in ([4.0, 2.0], [2.0, 2.0], [2.0, 2.0], [1.0, 2.0]):  # windows 0, 1
        ...     _ = dwa.step(losses)
        >>> dwa.as_dict()  # w = 1 in the first two windows
        {'seg': 1.0, 'depth': 1.0}
        >>> round(dwa.step([1.0, 0.5]), 4)  # window 2: r = (1.5/3, 2/2), w = 2 softmax(r / 2)
        1.4378
        >>> [round(w, 4) for w in dwa.weights.tolist()]
        [0.8756, 1.1244]
    """

    update_takes_losses = True

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        temperature: float = 2.0,
        window: int = 1,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        n = len(parse_names(losses))
        super().__init__(
            losses,
            {"temperature": temperature, "window": window},
            initial_weights=[1.0] * n,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    temperature: Hyperparameter[float] = Hyperparameter(
        r""":math:`T`, the softmax temperature of Eq. 7."""
    )

    window: Hyperparameter[int] = Hyperparameter(
        """:math:`W`, the applied steps per averaging window."""
    )

    # ------------------------------------------------------------------------ the rule
    def _extra_state(self) -> dict[str, Any]:
        n = self.num_losses
        return {
            "window_means": [0.0] * n,  # the running mean of the window in progress
            "window_counts": [0.0] * n,  # how many values each mean is over
            "window_steps": 0,  # applied steps in the window in progress
            "previous_means": [0.0] * n,  # L̄(k-1), the last complete window
            "older_means": [0.0] * n,  # L̄(k-2)
            "has_previous": [False] * n,  # whether L̄_i(k-1) exists
            "has_older": [False] * n,
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
        n = len(losses)
        temperature = self.defaults["temperature"]
        weights = state["weights"]
        means, counts = state["window_means"], state["window_counts"]
        steps = state["window_steps"]
        previous, older = state["previous_means"], state["older_means"]
        has_previous, has_older = state["has_previous"], state["has_older"]
        if steps >= self.defaults["window"]:  # the first step of a window: Eq. 7
            older, has_older = previous, has_previous
            previous, has_previous = means, [c > 0 for c in counts]
            means, counts, steps = [0.0] * n, [0.0] * n, 0
            defined = [
                p and o and b > 0 for p, o, b in zip(has_previous, has_older, older, strict=True)
            ]
            logits = [
                a / b / temperature if d else 0.0
                for a, b, d in zip(previous, older, defined, strict=True)
            ]
            weights = _common.shared_softmax(logits, weights, defined, float(n))
        here = _common.all_of(present, n, losses)
        counts = [c + 1.0 if h else c for c, h in zip(counts, here, strict=True)]
        means = [
            m + (v - m) / c if h else m
            for m, v, c, h in zip(means, losses, counts, here, strict=True)
        ]
        return {
            "weights": weights,
            "window_means": means,
            "window_counts": counts,
            "window_steps": steps + 1,
            "previous_means": previous,
            "older_means": older,
            "has_previous": has_previous,
            "has_older": has_older,
        }

    def _update_tensor(
        self, state: Mapping[str, Tensor], present: Tensor | None, losses: Tensor
    ) -> dict[str, Tensor]:
        n = losses.shape[0]
        zero = torch.zeros_like(losses)
        roll = state["window_steps"] >= self.defaults["window"]
        counts, means = state["window_counts"], state["window_means"]
        older = torch.where(roll, state["previous_means"], state["older_means"])
        has_older = torch.where(roll, state["has_previous"], state["has_older"])
        previous = torch.where(roll, means, state["previous_means"])
        has_previous = torch.where(roll, counts > 0, state["has_previous"])
        defined = has_previous & has_older & (older > 0)
        ratio = previous / torch.where(defined, older, torch.ones_like(older))
        logits = torch.where(defined, ratio / self.defaults["temperature"], zero)
        rolled = _common.shared_softmax(logits, state["weights"], defined, float(n))
        weights = torch.where(roll, rolled, state["weights"])
        counts = torch.where(roll, zero, counts)
        means = torch.where(roll, zero, means)
        steps = torch.where(roll, torch.zeros_like(state["window_steps"]), state["window_steps"])
        here = _common.all_of(present, n, losses)
        counts = counts + here.to(counts.dtype)
        safe = torch.where(here, counts, torch.ones_like(counts))
        means = torch.where(here, means + (losses - means) / safe, means)
        return {
            "weights": weights,
            "window_means": means,
            "window_counts": counts,
            "window_steps": steps + 1,
            "previous_means": previous,
            "older_means": older,
            "has_previous": has_previous,
            "has_older": has_older,
        }

    # ------------------------------------------------------------------------ checks
    def _check_hyperparameter(self, name: str, value: Any) -> Any:
        if name == "temperature":
            return _common.positive_real(name, value)
        if name == "window":
            return _common.integer(name, value, 1, MAX_WINDOW)
        return super()._check_hyperparameter(name, value)

    def _check_weights(self, weights: list[float], name: str) -> list[float]:
        _common.check_sum(weights, name, float(len(weights)))
        return weights

    def _check_loaded_state(self, state: dict[str, Any]) -> None:
        steps = state["window_steps"]
        for name in ("window_means", "previous_means", "older_means"):
            if any(v < 0 for v in state[name]):
                raise ValueError(f"State `{name}` should be non-negative. Found {state[name]}.")
        counts = state["window_counts"]
        if any(c != int(c) or not 0 <= c <= steps for c in counts):
            raise ValueError(
                f"State `window_counts` should hold whole numbers in [0, `window_steps` = "
                f"{steps}]. Found {counts}."
            )
