r"""Relative Loss Balancing with Random Lookback (Bischof & Kraus, "Multi-Objective Loss Balancing
for Physics-Informed Deep Learning", arXiv:2110.09813, 2021, Sec. 3.4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anl import functional
from anl.inputs import parse_names
from anl.rules import _common, _random
from anl.weighting import DEFAULT_HISTORY_SIZE, Hyperparameter, LossWeighting

__all__ = ["ReLoBRaLo"]


class ReLoBRaLo(LossWeighting):
    r"""Weights the losses by a softmax of their relative progress, smoothed, with random
    lookbacks to the start.

    .. math::

        \lambda^{bal}_i(t, t') &= N \exp\!\Big(\frac{L_i(t)}{T\, L_i(t')}\Big) \Big/
            \sum_{j=1}^{N} \exp\!\Big(\frac{L_j(t)}{T\, L_j(t')}\Big) \\
        \lambda^{hist}_i(t) &= \rho(t)\, \lambda_i(t-1) + (1 - \rho(t))\, \lambda^{bal}_i(t, 0) \\
        \lambda_i(t) &= \alpha\, \lambda^{hist}_i(t) + (1 - \alpha)\, \lambda^{bal}_i(t, t-1) \\
        L_{total}(t) &= \sum_{i=1}^{N} \lambda_i(t)\, L_i(t)

    - :math:`L_i(t)`: the ``i``-th value passed to :meth:`step` at its ``t``-th applied call;
      :math:`L_i(0)`: its value at its first valid call, :attr:`initial_losses`, the same
      reference as MTARD's Eq. 7, so :math:`\lambda^{bal}(t, 0) = N\, \mathrm{softmax}(\tilde
      L(t) / T)` with :math:`\tilde L` = :attr:`relative_losses`.
    - :math:`T`: ``temperature`` (the paper: 0.1); :math:`\alpha`: ``alpha``, the weight of the
      history (the paper: 0.999); :math:`\rho(t) \sim \mathrm{Bernoulli}(\mathbb E[\rho])`, the
      "saudade", with :math:`\mathbb E[\rho]` = ``expected_rho`` (the paper: 0.999): when
      :math:`\rho(t) = 0` the history is replaced by the balance against the start.
    - :math:`\lambda(t)`: :attr:`weights`, summing to :math:`N`; :math:`\lambda(-1) = 1`.

    Choices the paper leaves open, and where the authors' code differs:

    - **The first step.** :math:`L(-1) := L(0)`, so :math:`\lambda(0) = 1` by the equations
      themselves. (The authors' code forces :math:`\alpha = 1` at step 0 and :math:`\alpha = 0`
      at step 1, and takes step 1's losses as the reference; we follow the paper, with the
      first valid step as the reference.)
    - **The draws.** :math:`\rho(t) = [u(t) < \mathbb E[\rho]]`, :math:`u(t)` the ``t``-th
      uniform of the counter-based generator of :mod:`anl.rules._random` seeded with ``seed``
      (default 0): drawn on the losses' device without synchronising, the same on every path
      and rank, untouched by masked steps, resumed exactly (``draws`` in the state dict).
    - **Rounding.** The present losses' new weights are rescaled to add up to exactly the
      weight :math:`M` they share (:math:`N` when all are present), which the equations
      preserve: a no-op in exact arithmetic (about 1e-16 in float64), it keeps a float32
      state's total from drifting through the EMA (by about 1e-5 over a few thousand steps
      with :math:`\alpha = 0.999`).
    - **Zero losses.** A ratio :math:`L_i(t) / L_i(t-1)` with :math:`L_i(t-1) = 0` is taken as 1
      (no measured change; :math:`L_i(0) > 0` always). No :math:`\varepsilon` is added to the
      denominators (the authors' code adds 1e-12): the softmax is taken after subtracting its
      largest argument, and an argument that overflows to :math:`+\infty` takes the weight.

    Absent losses (``None``): :math:`L_i(t-1)` is loss ``i``'s previous computed value (at its
    first step, itself). An absent loss keeps its weight :math:`\lambda_i`; the present ones
    share the weight they held, :math:`M = \sum_{i\ present} \lambda_i(t-1)`:
    :math:`\lambda^{bal}` is :math:`M` times the softmax over the present losses (:math:`N` when
    all are present, exactly the equations above), so :math:`\sum_i \lambda_i = N` always.
    :math:`\rho(t)` is drawn at every applied step. The total sums the present losses, not
    renormalised.

    Relation to :class:`anl.AdaptiveLossBalancer`: both weight by the relative losses
    :math:`\tilde L(t)` of MTARD's Eq. 7 and smooth by an EMA. ANL's target is
    :math:`\mathrm{softmax}(\beta \log \tilde L)` on the simplex; ReLoBRaLo's is a softmax of
    :math:`\tilde L / T` itself (scaled to sum :math:`N`), mixed with the last step's ratios,
    and its random lookbacks reset the EMA to the balance against the start.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        alpha: :math:`\alpha \in [0, 1]` (default 0.999). Settable.
        expected_rho: :math:`\mathbb E[\rho] \in [0, 1]` (default 0.999). Settable.
        temperature: :math:`T > 0` (default 0.1). Settable.
        seed: an int in :math:`[0, 2^{64})` (default 0). Settable.
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks under ``torch.distributed``.
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's dtype (default float64, whatever the losses' dtype).

    Example:
        >>> from anl.rules import ReLoBRaLo
        >>> relobralo = ReLoBRaLo(["pde", "boundary"], alpha=0.5, expected_rho=1.0, temperature=1.0)
        >>> relobralo.step([2.0, 4.0])  # lambda(0) = 1
        6.0
        >>> _ = relobralo.step([2.0, 2.0])  # L~ = (1, 1/2): both balances are 2 softmax(1, 1/2)
        >>> [round(w, 4) for w in relobralo.weights.tolist()]
        [1.1225, 0.8775]
    """

    update_takes_losses = True

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        alpha: float = 0.999,
        expected_rho: float = 0.999,
        temperature: float = 0.1,
        seed: int = 0,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        n = len(parse_names(losses))
        super().__init__(
            losses,
            {
                "alpha": alpha,
                "expected_rho": expected_rho,
                "temperature": temperature,
                "seed": seed,
            },
            initial_weights=[1.0] * n,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    alpha: Hyperparameter[float] = Hyperparameter(r""":math:`\alpha`, the weight of the history.""")

    expected_rho: Hyperparameter[float] = Hyperparameter(
        r""":math:`\mathbb E[\rho]`, the probability of keeping the history (the saudade)."""
    )

    temperature: Hyperparameter[float] = Hyperparameter(""":math:`T`, the softmax temperature.""")

    seed: Hyperparameter[int] = Hyperparameter("""The seed of the draws of :math:`\\rho`.""")

    # ------------------------------------------------------------------------ the rule
    def _extra_state(self) -> dict[str, Any]:
        n = self.num_losses
        return {
            "previous_losses": [0.0] * n,  # L_i(t-1): each loss's last computed value
            "has_previous": [False] * n,
            "draws": 0,  # the updates applied so far: the generator's whole state
        }

    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
        losses: functional.Vector,
    ) -> dict[str, Any]:
        alpha, temperature = self.defaults["alpha"], self.defaults["temperature"]
        counter, weights = state["draws"], state["weights"]
        rho = _random.bernoulli(self.defaults["seed"], counter, self.defaults["expected_rho"])
        n = len(losses)
        if isinstance(losses, Tensor):
            here = _common.all_of(present, n, losses)
            last = state["previous_losses"]
            known = state["has_previous"] & (last > 0)
            ratio = torch.where(
                known, losses / torch.where(known, last, torch.ones_like(last)), 1.0
            )
            to_start = _common.shared_softmax(relative / temperature, weights, present, float(n))
            to_last = _common.shared_softmax(ratio / temperature, weights, present, float(n))
            rho = rho.to(losses.dtype)
            updated = alpha * (rho * weights + (1.0 - rho) * to_start) + (1.0 - alpha) * to_last
            updated = torch.where(here, updated, torch.zeros_like(updated))
            mass = _common.shared_mass(weights, present, float(n))
            held = updated.sum()
            updated = updated * torch.where(held > 0, mass / held, torch.ones_like(held))
            return {
                "weights": torch.where(here, updated, weights),
                "previous_losses": torch.where(here, losses, last),
                "has_previous": state["has_previous"] | here,
                "draws": counter + 1,
            }
        here = _common.all_of(present, n, losses)
        rho = 1.0 if rho else 0.0
        last, known = state["previous_losses"], state["has_previous"]
        ratio = [v / p if k and p > 0 else 1.0 for v, p, k in zip(losses, last, known, strict=True)]
        to_start = _common.shared_softmax(
            [r / temperature for r in relative], weights, present, float(n)
        )
        to_last = _common.shared_softmax(
            [r / temperature for r in ratio], weights, present, float(n)
        )
        updated = [
            alpha * (rho * w + (1.0 - rho) * a) + (1.0 - alpha) * b if h else 0.0
            for w, a, b, h in zip(weights, to_start, to_last, here, strict=True)
        ]
        held = sum(updated)
        rescale = _common.shared_mass(weights, present, float(n)) / held if held > 0 else 1.0
        return {
            "weights": [
                u * rescale if h else w for u, w, h in zip(updated, weights, here, strict=True)
            ],
            "previous_losses": [v if h else p for v, p, h in zip(losses, last, here, strict=True)],
            "has_previous": [k or h for k, h in zip(known, here, strict=True)],
            "draws": counter + 1,
        }

    # ------------------------------------------------------------------------ checks
    def _check_hyperparameter(self, name: str, value: Any) -> Any:
        if name in ("alpha", "expected_rho"):
            return _common.unit_interval(name, value)
        if name == "temperature":
            return _common.positive_real(name, value)
        if name == "seed":
            return _common.integer(name, value, 0, 2**64 - 1)
        return super()._check_hyperparameter(name, value)

    def _check_weights(self, weights: list[float], name: str) -> list[float]:
        _common.check_sum(weights, name, float(len(weights)))
        return weights

    def _check_loaded_state(self, state: dict[str, Any]) -> None:
        if any(v < 0 for v in state["previous_losses"]):
            raise ValueError(
                f"State `previous_losses` should be non-negative. Found {state['previous_losses']}."
            )
