r"""Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random
Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from anl import functional
from anl.inputs import parse_names
from anl.rules import _common, _random
from anl.weighting import DEFAULT_HISTORY_SIZE, Hyperparameter, LossWeighting

__all__ = ["RandomLossWeighting"]


class RandomLossWeighting(LossWeighting):
    r"""Weights the losses by a fresh random point of the simplex at every step.

    .. math::

        z(t) &\sim \mathcal N(0, I_N) \\
        w_i(t) &= \exp(z_i(t)) \Big/ \sum_{j=1}^{N} \exp(z_j(t)) \\
        L_{total}(t) &= \sum_{i=1}^{N} w_i(t)\, L_i(t)

    - :math:`L_i(t)`: the ``i``-th value passed to :meth:`step` at its ``t``-th applied call.
    - :math:`z(t)`: a standard normal vector drawn at every applied step (the paper's normal
      choice of the distribution of the logits).
    - :math:`w(t)`: :attr:`weights`, on the simplex; :math:`1/N` before the first step (the
      mean of the distribution).

    The losses are not used: RLW is the paper's baseline that any method using them should
    beat. Choices the paper leaves open:

    - **The generator.** The draws come from a counter-based generator
      (:mod:`anl.rules._random`): :math:`z(t)` is a pure function of ``seed`` and ``t``, the
      number of updates applied so far, which is the whole generator state (``draws`` in the
      state dict). So the draws are made on the losses' device without synchronising, a
      masked step (invalid losses) draws nothing and leaves the sequence unchanged, a resumed
      run continues bit-identically, and the host path, the tensor path on any device and
      every rank of a distributed run draw the *same* :math:`z(t)` (to the last bits of
      ``log`` and ``cos`` in Box-Muller), with no broadcast.
    - **The seed** defaults to 0, so two runs are identical unless given different seeds
      (not drawn from ``torch``'s global generator: ranks seeded differently would then
      weight differently).

    Absent losses (``None``): :math:`z(t)` is drawn for every loss (the draws do not depend on
    which losses are present), and the present losses take the softmax over themselves, i.e.
    the same draw renormalised to the losses at hand: their weights sum to 1 and the total is
    a random convex combination of the present losses, as the paper's rule applied to them.
    An absent loss keeps its last weight (RLW has no memory: it is reported, never used).

    Relation to :class:`anl.AdaptiveLossBalancer`: ANL's weights follow the losses' relative
    progress; RLW's ignore the losses, so comparing them isolates what ANL's adaptation adds.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        seed: an int in :math:`[0, 2^{64})` (default 0). Settable: later draws come from the
            new seed.
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses across ranks under ``torch.distributed``.
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's dtype (default float64, whatever the losses' dtype).

    Example:
        >>> from anl.rules import RandomLossWeighting
        >>> rlw = RandomLossWeighting(["seg", "depth", "normal"], seed=7)
        >>> _ = rlw.step([1.0, 2.0, 3.0])
        >>> w = rlw.weights
        >>> bool(w.min() > 0) and round(float(w.sum()), 12)
        1.0
        >>> again = RandomLossWeighting(["seg", "depth", "normal"], seed=7)
        >>> _ = again.step([5.0, 5.0, 5.0])  # the same seed draws the same weights
        >>> bool((again.weights == w).all())
        True
    """

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        seed: int = 0,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        n = len(parse_names(losses))
        super().__init__(
            losses,
            {"seed": seed},
            initial_weights=[1.0 / n] * n,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )

    seed: Hyperparameter[int] = Hyperparameter("""The seed of the draws.""")

    def _extra_state(self) -> dict[str, Any]:
        return {"draws": 0}  # the updates applied so far: the generator's whole state

    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
    ) -> dict[str, Any]:
        seed, counter, n = self.defaults["seed"], state["draws"], len(relative)
        if isinstance(relative, Tensor):
            z = _random.normals(seed, counter, n, relative.dtype)
        else:
            z = _random.normals(seed, counter, n)
        p = _common.masked_softmax(z, present)
        if present is None:
            weights = p
        elif isinstance(p, Tensor):
            weights = torch.where(present, p, state["weights"])
        else:
            weights = [q if h else w for q, w, h in zip(p, state["weights"], present, strict=True)]
        return {"weights": weights, "draws": counter + 1}

    def _check_hyperparameter(self, name: str, value: Any) -> Any:
        if name == "seed":
            return _common.integer(name, value, 0, 2**64 - 1)
        return super()._check_hyperparameter(name, value)

    def _check_weights(self, weights: list[float], name: str) -> list[float]:
        if any(w > 1.0 + 1e-6 for w in weights):
            raise ValueError(
                f"Parameter `{name}` should hold weights in [0, 1] (softmax values). "
                f"Found `{name} = {weights}`."
            )
        return weights
