r"""Uncertainty weighting: Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR 2018, Sec. 3.

Each loss is given a learned homoscedastic variance :math:`\sigma_i^2`, parametrised by its
log-variance :math:`s_i = \log \sigma_i^2` (as the paper does, for numerical stability),
and the model and the :math:`s_i` minimise together

.. math::

    L_{total} = \sum_{i\ \text{present}} \left( a_i\, e^{-s_i}\, L_i + b_i\, s_i \right),
    \qquad w_i = a_i\, e^{-s_i},

- :math:`L_i`: the ``i``-th loss passed to :meth:`UncertaintyWeighting.step`;
- :math:`s_i`: the parameter :attr:`UncertaintyWeighting.log_vars` (``initial_log_vars``,
  default 0, i.e. :math:`\sigma_i = 1`), updated by the user's optimiser;
- :math:`(a_i, b_i)`: from ``likelihoods[i]``: ``"plain"`` :math:`(1, 1)`, ``"gaussian"``
  :math:`(\frac12, \frac12)`, ``"softmax"`` :math:`(1, \frac12)`;
- :math:`w_i`: :attr:`UncertaintyWeighting.weights`, the factor of :math:`L_i` in the total
  at the last step (detached).

The choices the paper leaves open, and ours:

- **The form.** The paper's objective has per-task factors: a regression (Gaussian) task
  contributes :math:`\frac{1}{2\sigma^2} L + \log\sigma = \frac12 e^{-s} L + \frac12 s`, a
  classification (softmax with temperature) task :math:`\frac{1}{\sigma^2} L + \log\sigma =
  e^{-s} L + \frac12 s`. The authors' own example code, and most reimplementations, drop the
  factors: :math:`e^{-s} L + s`. That ``"plain"`` form is the default: it assumes no
  likelihood, it is the total with unit factors whose learned weight :math:`e^{-s}` is
  exactly the reported weight, and it is twice the Gaussian form (the same minimiser in
  :math:`s`, gradients twice as large). ``likelihoods="gaussian"`` gives the paper's
  regression terms (LibMTL's ``UW``), and a list mixes them per loss as the paper does.
- **Initialisation.** :math:`s_i = 0` (every weight :math:`a_i` at the start), as in the
  authors' example; ``initial_log_vars`` changes it.
- **Optimiser.** The :math:`s_i` are ordinary parameters: the user adds them to an optimiser
  (the paper trains them with the network), usually the model's.
- **Reported weight.** :math:`w_i = a_i e^{-s_i}`, the factor by which the step's gradient
  reaches :math:`L_i`; it saturates at the largest finite float rather than overflow (the
  parameter itself is never clamped).

A loss absent at a step (``None``) contributes nothing, neither :math:`a_i e^{-s_i} L_i` nor
the term :math:`b_i s_i`: keeping the latter alone would push :math:`s_i` down, and the
loss's weight up, at every step it is missing. So its :math:`s_i` gets an exactly zero
gradient (SGD leaves it where it was; an optimiser with momentum or weight decay moves it as
it moves any parameter with a zero gradient) and its reported weight is that of the current
:math:`s_i`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anl.inputs import describe
from anl.rules._learned import LearnedScales
from anl.weighting import DEFAULT_HISTORY_SIZE

__all__ = ["UncertaintyWeighting"]

#: ``likelihood -> (a, b)``: the factors of ``e^{-s} L`` and of ``s`` in the total.
LIKELIHOODS = {"plain": (1.0, 1.0), "gaussian": (0.5, 0.5), "softmax": (1.0, 0.5)}


class UncertaintyWeighting(LearnedScales):
    r"""Learned log-variances :math:`s_i`: :math:`L_{total} = \sum_i a_i e^{-s_i} L_i + b_i s_i`.

    Kendall, Gal and Cipolla (CVPR 2018). The rule is a :class:`torch.nn.Module` whose
    parameter :attr:`log_vars` (:math:`s`) the user's optimiser updates: add
    ``weighting.parameters()`` to it (or make the weighting a submodule of the model, whose
    ``parameters()`` then include them). :meth:`step` stays the single call: its total's
    gradient reaches both the model (through each :math:`L_i`, scaled by :math:`a_i
    e^{-s_i}`) and :math:`s`. At a fixed model, :math:`s_i` settles where
    :math:`a_i e^{-s_i} L_i = b_i`, i.e. the weight tracks :math:`b_i / L_i`.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        likelihoods: ``"plain"`` (:math:`e^{-s} L + s`, the default), ``"gaussian"`` (the
            paper's regression term :math:`\frac12 e^{-s} L + \frac12 s`) or ``"softmax"``
            (its classification term :math:`e^{-s} L + \frac12 s`), or one of them per loss.
        initial_log_vars: :math:`s(0)`, a number or one per loss (default 0).
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks (for the recorded losses and
            history; :math:`s` itself needs its gradients averaged: see below).
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's and the parameter's dtype (default float64).

    The :mod:`module documentation <anl.rules.uncertainty>` lists the open choices, and what
    happens to an absent loss.

    Under :class:`~torch.nn.parallel.DistributedDataParallel`, DDP averages the gradients of
    the module it wraps only: make the weighting a submodule of that module (its
    ``forward`` may call ``self.weighting(losses)``), or average the gradients of
    ``weighting.parameters()`` across ranks yourself (``all_reduce`` then divide by the world
    size) before the optimiser step. Otherwise each rank's :math:`s` follows its own shard
    and the ranks drift apart.

    Example:
        >>> import torch
        >>> from anl import UncertaintyWeighting
        >>> model = torch.nn.Linear(1, 2, bias=False, dtype=torch.float64)
        >>> _ = torch.nn.init.ones_(model.weight)
        >>> weighting = UncertaintyWeighting(["depth", "seg"])
        >>> optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.1)
        >>> out = model(torch.ones(1, dtype=torch.float64))  # (1, 1)
        >>> total = weighting.step({"depth": 2 * out[0], "seg": 0.5 * out[1]})  # L = (2, 0.5)
        >>> total.item()  # e^0 * 2 + 0 + e^0 * 0.5 + 0
        2.5
        >>> total.backward()
        >>> optimizer.step()  # s -= 0.1 * (1 - e^{-s} L) = (0.1, -0.05)
        >>> weighting.log_vars.tolist(), model.weight.flatten().tolist()
        ([0.1, -0.05], [0.8, 0.95])
    """

    parameter_name = "log_vars"
    sign = -1.0

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        likelihoods: str | Sequence[str] = "plain",
        initial_log_vars: float | Sequence[float] | Tensor = 0.0,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(
            losses,
            {"likelihoods": likelihoods},
            initial=initial_log_vars,
            initial_name="initial_log_vars",
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    log_vars: torch.nn.Parameter
    """:math:`s = \\log \\sigma^2`, one per loss (a parameter: give it to an optimiser)."""

    @property
    def likelihoods(self) -> list[str]:
        """The likelihood of each loss, which sets its factors :math:`(a_i, b_i)`."""
        return list(self.defaults["likelihoods"])

    @classmethod
    def _coefficients_of(
        cls, defaults: Mapping[str, Any], n: int
    ) -> tuple[list[float], list[float]]:
        kinds = _checked_likelihoods(defaults["likelihoods"], n)
        return [LIKELIHOODS[k][0] for k in kinds], [LIKELIHOODS[k][1] for k in kinds]

    def _check_hyperparameter(self, name: str, value: Any) -> Any:
        if name == "likelihoods":
            return _checked_likelihoods(value, self.num_losses)
        return super()._check_hyperparameter(name, value)


def _checked_likelihoods(value: Any, n: int) -> list[str]:
    kinds = [value] * n if isinstance(value, str) else value
    if (
        not isinstance(kinds, (list, tuple))
        or len(kinds) != n
        or not all(isinstance(k, str) and k in LIKELIHOODS for k in kinds)
    ):
        raise ValueError(
            f"Parameter `likelihoods` should be one of {sorted(LIKELIHOODS)}, or {n} of them "
            f"(one per loss). Found `likelihoods = {describe(value)}`."
        )
    return list(kinds)
