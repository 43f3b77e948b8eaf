r"""IMTL-L, the loss balance (IMTL-L) of Liu et al., "Towards Impartial Multi-task Learning",
ICLR 2021.

Each raw loss :math:`L_i` is scaled by :math:`e^{s_i}`, with :math:`s_i` learned with the
model by minimising

.. math::

    L_{total} = \sum_{i\ \text{present}} \left( e^{s_i} L_i - s_i \right),
    \qquad w_i = e^{s_i},

- :math:`L_i`: the ``i``-th loss passed to :meth:`IMTLL.step`;
- :math:`s_i`: the parameter :attr:`IMTLL.log_scales` (``initial_log_scales``, default 0),
  updated by the user's optimiser;
- :math:`w_i`: :attr:`IMTLL.weights`, the scale :math:`e^{s_i}` applied at the last step
  (detached).

Setting :math:`\partial L_{total} / \partial s_i = e^{s_i} L_i - 1` to zero shows the aim: the
scaled losses :math:`e^{s_i} L_i` are all driven to 1, whatever each loss's scale, with no
assumption on its distribution. (Up to :math:`s \mapsto -s` this is
:class:`anl.UncertaintyWeighting`'s ``"plain"`` form; the two give mirrored :math:`s`
trajectories and the same model updates under SGD.)

The choices the paper leaves open, and ours:

- **The balance alone.** The paper's full IMTL combines this loss balance with a gradient
  balance (IMTL-G) on the shared parameters, which needs per-task gradients; here the total
  is back-propagated as it is, so the shared parameters see :math:`\sum_i e^{s_i} \nabla
  L_i`, which is IMTL-L on its own (the paper's ablation of it).
- **Initialisation** :math:`s_i = 0` (unit scales, the plain sum at the start); **optimiser**:
  the user's, like any parameter (the paper trains the scales with the network).
- **Reported weight** :math:`e^{s_i}`, saturating at the largest finite float rather than
  overflow (the parameter is never clamped).

A loss absent at a step (``None``) contributes neither :math:`e^{s_i} L_i` nor
:math:`-s_i`: the regulariser alone would raise :math:`s_i` at every step the loss is
missing. Its :math:`s_i` gets an exactly zero gradient (plain SGD leaves it), and its
reported weight is that of the current :math:`s_i`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anl.rules._learned import LearnedScales
from anl.weighting import DEFAULT_HISTORY_SIZE

__all__ = ["IMTLL"]


class IMTLL(LearnedScales):
    r"""Learned loss scales :math:`e^{s_i}`: :math:`L_{total} = \sum_i e^{s_i} L_i - s_i` (IMTL-L).

    Liu et al. (ICLR 2021), the loss balance of Impartial Multi-Task Learning. The rule is a
    :class:`torch.nn.Module` whose parameter :attr:`log_scales` (:math:`s`) the user's
    optimiser updates: add ``weighting.parameters()`` to it (or make the weighting a
    submodule of the model). :meth:`step` stays the single call: its total's gradient
    reaches the model (through each :math:`L_i`, scaled by :math:`e^{s_i}`) and :math:`s`,
    which settles where every scaled loss :math:`e^{s_i} L_i` equals 1.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        initial_log_scales: :math:`s(0)`, a number or one per loss (default 0).
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks (for the recorded losses and
            history; :math:`s` itself needs its gradients averaged: see below).
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's and the parameter's dtype (default float64).

    Under :class:`~torch.nn.parallel.DistributedDataParallel`, DDP averages the gradients of
    the module it wraps only: make the weighting a submodule of that module (its
    ``forward`` may call ``self.weighting(losses)``), or average the gradients of
    ``weighting.parameters()`` across ranks yourself (``all_reduce`` then divide by the world
    size) before the optimiser step. Otherwise each rank's :math:`s` follows its own shard
    and the ranks drift apart.

    Example:
        >>> import torch
        >>> from anl import IMTLL
        >>> model = torch.nn.Linear(1, 2, bias=False, dtype=torch.float64)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> weighting = IMTLL(["depth", "seg"])
        >>> optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.1)
        >>> out = model(torch.ones(1, dtype=torch.float64))
        >>> total = weighting.step([2 * out[0], 0.5 * out[1]])  # L = (2, 0.5), s = 0
        >>> total.item()  # e^0 * 2 - 0 + e^0 * 0.5 - 0
        2.5
        >>> total.backward()
        >>> optimizer.step()  # s -= 0.1 * (e^s L - 1) = (-0.1, 0.05)
        >>> weighting.log_scales.tolist()
        [-0.1, 0.05]
    """

    parameter_name = "log_scales"
    sign = 1.0

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        initial_log_scales: float | Sequence[float] | Tensor = 0.0,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(
            losses,
            {},
            initial=initial_log_scales,
            initial_name="initial_log_scales",
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    log_scales: torch.nn.Parameter
    """:math:`s`, the log of each loss's scale (a parameter: give it to an optimiser)."""

    @classmethod
    def _coefficients_of(
        cls, defaults: Mapping[str, Any], n: int
    ) -> tuple[list[float], list[float]]:
        return [1.0] * n, [1.0] * n
