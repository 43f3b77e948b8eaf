r"""FAMO: Liu, Feng, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

FAMO decreases every loss at about the same *relative* rate, from the loss values alone (no
per-task gradient: the paper's O(1) space and time). It keeps logits :math:`\xi`
and task weights :math:`z = \mathrm{softmax}(\xi)`. At a step, :meth:`FAMO.step` returns

.. math::

    D_i &= \max(L_i - L_i^*, 0) + \epsilon, \qquad
    c = \Big( \sum_{i\ \text{present}} z_i / D_i \Big)^{-1}, \\
    L_{total} &= c \sum_{i\ \text{present}} z_i \log D_i
    \qquad\text{so}\qquad
    \nabla_\theta L_{total} = \sum_{i\ \text{present}} \frac{c\, z_i}{D_i} \nabla_\theta L_i,

with :math:`z` and :math:`c` constants for autograd: the model follows a convex combination of
the loss gradients. After the optimiser has stepped, :meth:`FAMO.update` takes the same
losses re-evaluated on the same batch, :math:`L_i^+`, and moves the logits by one Adam step on

.. math::

    \delta_i = \log D_i - \log D_i^+, \qquad
    g_i = z_i \Big( \delta_i - \sum_j z_j \delta_j \Big) + \gamma\, \xi_i
    \quad (g = J_{\mathrm{softmax}}(\xi)^\top \delta + \gamma \xi),

so a loss that fell less than the others (smaller :math:`\delta_i`) gains weight.

- :math:`L_i`: the ``i``-th loss passed to :meth:`FAMO.step`; :math:`L_i^+`: the one passed to
  the following :meth:`FAMO.update`;
- :math:`L_i^*`: ``min_losses`` (a lower bound of each loss; default 0);
- :math:`\epsilon`: ``eps`` (default ``1e-8``, as the reference code);
- :math:`\xi`: :attr:`FAMO.logits`, 0 at the start (uniform :math:`z`);
- :math:`z`: :attr:`FAMO.weights`;
- :math:`\gamma`: ``gamma``, the logits' weight decay; the Adam step size is ``weight_lr``.

The choices the paper leaves open, and ours:

- **The logits' optimiser.** The paper's Algorithm 1 writes a plain step
  :math:`\xi \leftarrow \xi - \beta (J^\top \delta + \gamma \xi)`; its practical version and
  the official code use Adam with weight decay :math:`\gamma`. We run exactly
  :class:`torch.optim.Adam`'s update (coupled weight decay, betas ``(0.9, 0.999)``, Adam
  epsilon ``1e-8``, its defaults), written out so that it runs on the host, on the device
  without synchronising, and saves its moments and step count in the state dict.
- **Defaults.** ``weight_lr = 0.025`` (official); ``gamma = 1e-3``, the paper's practical
  algorithm and LibMTL's default (the official class defaults to ``1e-5`` and its example to
  ``1e-2``; its experiments use ``1e-3`` or ``1e-2``).
- **A loss at or below its bound** counts as at its bound (:math:`D_i = \epsilon`), where the
  reference code would take the logarithm of a non-positive number.
- **The second call.** The paper measures :math:`L^+` on the same batch after the parameter
  update, so :meth:`FAMO.update` is a second, explicit call (below). The gradient clipping of
  the official training loop is the user's, not the weighting's.
- **Under ``torch.distributed``** the losses of both calls are averaged across ranks, so every
  rank holds the same logits; and the total is FAMO's objective at those cross-rank means,
  :math:`L_{total} = c \sum_i z_i \log \bar D_i + \sum_i \frac{c z_i}{\bar D_i}(L_i -
  \mathrm{sg}(L_i))`, whose gradient, averaged by DDP, is exactly FAMO's on the global batch
  (alone, the second sum is zero and this is the formula above).

**The second call.** ``step(losses)`` returns the total and records :math:`L`;
``update(losses_after)`` consumes them and moves the logits once. In a loop::

    total = famo.step(losses(model, batch))
    optimizer.zero_grad(); total.backward(); optimizer.step()
    with torch.no_grad():
        famo.update(losses(model, batch))   # same batch, after the step

``update`` without a ``step`` since the last ``update`` raises :class:`RuntimeError`. A
``step`` that follows a ``step`` (no ``update`` in between) warns and replaces the
recorded losses: the logits do not move for the earlier step. An ``update`` after a masked
step (invalid tensor losses), or with invalid tensor losses itself, changes nothing but
:attr:`FAMO.num_updates_skipped`; with numbers only, or ``strict=True``, invalid losses raise.

**Absent losses** (``None``). The total runs over the present losses (FAMO on that
sub-problem, :math:`c` renormalising their weights). The logits update runs over the losses
present at both calls, with the softmax restricted to them; the other logits and their Adam
moments do not move (as :class:`torch.optim.SparseAdam` treats entries without a gradient),
while the Adam step count, shared, advances.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anl import functional
from anl.inputs import LossBatch, Losses, collect_losses, constant_vector, describe, parse_names
from anl.state import split_state_dict
from anl.weighting import DEFAULT_HISTORY_SIZE, Hyperparameter, LossWeighting

__all__ = ["FAMO"]

#: torch.optim.Adam's defaults, which the reference code uses for the logits.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

_UPDATE_FIELDS = ("logits", "exp_avg", "exp_avg_sq", "weights")


class FAMO(LossWeighting):
    r"""Fast Adaptive Multitask Optimization: :math:`L_{total} = c \sum_i z_i \log(L_i - L_i^* + \epsilon)`.

    Liu, Feng, Stone and Liu (NeurIPS 2023). :meth:`step` returns the total (its gradient is
    :math:`\sum_i c z_i / D_i\, \nabla L_i`, a convex combination); :meth:`update`, called
    after the optimiser step with the losses re-evaluated on the same batch, moves the logits
    :math:`\xi` (:math:`z = \mathrm{softmax}(\xi)`) by one Adam step. The logits are FAMO's
    own state, not parameters: nothing is added to the user's optimiser.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        weight_lr: the logits' Adam learning rate (the reference's ``w_lr``; default 0.025).
            Settable between steps.
        gamma: :math:`\gamma \ge 0`, the logits' weight decay (default ``1e-3``). Settable.
        min_losses: :math:`L^*`, a lower bound of each loss (a number or one per loss;
            default 0).
        eps: :math:`\epsilon > 0` in :math:`\log(L - L^* + \epsilon)` (default ``1e-8``).
        strict: for tensor losses, raise on invalid values instead of masking (synchronises).
        distributed: average the detached losses of :meth:`step` and :meth:`update` across
            ranks under ``torch.distributed``.
        history_size: keep this many newest steps of :meth:`history` (``None``: all).
        dtype: the state's dtype (default float64).

    The :mod:`module documentation <anl.rules.famo>` lists the open choices, the contract of
    the second call and what happens to an absent loss.

    Example:
        >>> from anl import FAMO
        >>> famo = FAMO(["a", "b"])
        >>> total = famo.step([1.0, 4.0])  # z = (1/2, 1/2), c = 1 / (1/2 + 1/8) = 1.6
        >>> round(total, 6)  # 1.6 * (log 1 + log 4) / 2
        1.109036
        >>> famo.update([0.5, 3.0])  # a fell by log 2, b by log 4/3: b gains weight
        >>> [round(x, 6) for x in famo.logits.tolist()]  # Adam's first step: +-weight_lr
        [-0.025, 0.025]
    """

    update_takes_losses = True  # the log-loss total and its update use L, not L / L(0)

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        weight_lr: float = 0.025,
        gamma: float = 1e-3,
        min_losses: float | Sequence[float] = 0.0,
        eps: float = 1e-8,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        n = len(parse_names(losses))
        super().__init__(
            losses,
            {"weight_lr": weight_lr, "gamma": gamma, "min_losses": min_losses, "eps": eps},
            initial_weights=[1.0 / n] * n,
            strict=strict,
            distributed=distributed,
            history_size=history_size,
            dtype=dtype,
        )
        self._awaiting_update = False  # a step has run since the last update
        self._reference: functional.Vector | None = None  # the step's losses, for _combine

    # ------------------------------------------------------------------------ hyperparameters
    weight_lr: Hyperparameter[float] = Hyperparameter("""The logits' Adam learning rate.""")

    gamma: Hyperparameter[float] = Hyperparameter(r""":math:`\gamma`, the logits' weight decay.""")

    def _check_hyperparameter(self, name: str, value: Any) -> Any:
        if name == "weight_lr":
            if not _is_real(value) or not 0 < value < math.inf:
                raise ValueError(
                    "Parameter `weight_lr` should be a finite number > 0. "
                    f"Found `weight_lr = {describe(value)}`."
                )
            return float(value)
        if name == "gamma":
            if not _is_real(value) or not 0 <= value < math.inf:
                raise ValueError(
                    f"Parameter `gamma` should be a finite number >= 0. Found `gamma = {describe(value)}`."
                )
            return float(value)
        if name == "eps":
            if not _is_real(value) or not 0 < value < math.inf:
                raise ValueError(
                    f"Parameter `eps` should be a finite number > 0. Found `eps = {describe(value)}`."
                )
            return float(value)
        if name == "min_losses":
            return _min_losses(value, self.num_losses)
        return super()._check_hyperparameter(name, value)

    def _check_weights(self, weights: list[float], name: str) -> list[float]:
        if abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(
                f"Parameter `{name}` should lie on the simplex (non-negative, summing to 1). "
                f"Found `{name} = {weights}` (sum {sum(weights)})."
            )
        return weights

    # ------------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        n = self.num_losses
        return {
            "logits": [0.0] * n,
            "exp_avg": [0.0] * n,
            "exp_avg_sq": [0.0] * n,
            "num_updates": 0,  # Adam's step count
            "num_updates_skipped": 0,
            "pending_losses": [0.0] * n,  # the last valid step's losses (0 where absent)
            "pending_present": [False] * n,
            "pending_at": 0,  # that step's index among the calls counted, 0 once consumed
        }

    @property
    def logits(self) -> Tensor:
        r""":math:`\xi`, whose softmax is :attr:`weights`."""
        return self._public("logits")

    @property
    def num_updates(self) -> Tensor:
        """How many :meth:`update` calls moved the logits (Adam's step count; 0-dim int64)."""
        return self._public("num_updates")

    @property
    def num_updates_skipped(self) -> Tensor:
        """How many :meth:`update` calls changed nothing (invalid losses, or a masked step)."""
        return self._public("num_updates_skipped")

    def _check_loaded_state(self, state: dict[str, Any]) -> None:
        if any(v < 0 for v in state["exp_avg_sq"]):
            raise ValueError(
                f"State `exp_avg_sq` should be non-negative. Found {state['exp_avg_sq']}."
            )
        if any(v < 0 for v in state["pending_losses"]):
            raise ValueError(
                f"State `pending_losses` should be non-negative. Found {state['pending_losses']}."
            )
        if state["num_updates"] > state["num_steps"]:
            raise ValueError(
                f"State `num_updates` ({state['num_updates']}) should be at most `num_steps` "
                f"({state['num_steps']}): one update per step."
            )
        if state["pending_at"] > state["num_steps"] + state["num_skipped"]:
            raise ValueError(
                f"State `pending_at` ({state['pending_at']}) should be at most `num_steps` + "
                f"`num_skipped` ({state['num_steps'] + state['num_skipped']})."
            )
        softmax = _softmax_host(state["logits"])
        tolerance = 100 * torch.finfo(self._dtype).eps  # the state's rounding, not more
        if any(abs(a - b) > tolerance for a, b in zip(softmax, state["weights"], strict=True)):
            raise ValueError(
                f"State `weights` should be the softmax of `logits`. Found {state['weights']} "
                f"for logits {state['logits']}."
            )

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`anl.LossWeighting.state_dict`, the logits' Adam state included, and
        whether an :meth:`update` is due."""
        saved = super().state_dict()
        saved["state"]["awaiting_update"] = self._awaiting_update
        return saved

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """As :meth:`anl.LossWeighting.load_state_dict` (all or nothing)."""
        state, _ = split_state_dict(state_dict, type(self).__name__)
        awaiting = state.get("awaiting_update")
        if not isinstance(awaiting, bool):
            raise ValueError(
                f"State `awaiting_update` should be a bool. Found {describe(awaiting)}."
            )
        super().load_state_dict(state_dict)
        self._awaiting_update = awaiting

    # ------------------------------------------------------------------------ step
    def step(self, losses: Losses) -> Tensor | float:
        """Record the losses and return FAMO's total for them (see the class documentation)."""
        self._reference = None  # only this step's _update may set it
        total = super().step(losses)
        if self._awaiting_update:
            warnings.warn(
                "FAMO.step was called again without FAMO.update(losses_after) in between: "
                "the logits were not updated for the previous step.",
                stacklevel=2,
            )
        self._awaiting_update = True
        return total

    def combine(self, losses: Losses) -> Tensor | float:
        """FAMO's total for ``losses`` with the current weights, updating nothing (its
        :math:`c` and :math:`D` from these losses)."""
        self._reference = None
        return super().combine(losses)

    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
        *,
        losses: functional.Vector,
    ) -> dict[str, Any]:
        values = losses
        self._reference = values
        index = state["num_steps"] + state["num_skipped"] + 1  # this call, if it is applied
        if isinstance(values, Tensor):
            here = present if present is not None else torch.ones_like(values, dtype=torch.bool)
            return {
                "pending_losses": torch.where(here, values, torch.zeros_like(values)),
                "pending_present": here,
                "pending_at": index,
            }
        here = present if present is not None else [True] * len(values)
        return {
            "pending_losses": [v if p else 0.0 for v, p in zip(values, here, strict=True)],
            "pending_present": list(here),
            "pending_at": index,
        }

    def _combine(
        self,
        weights: functional.Vector,
        losses: list[Tensor] | list[float],
        kept: list[int] | None,
    ) -> Tensor | float:
        reference, self._reference = self._reference, None  # set by this step's _update only
        bounds = self.defaults["min_losses"]
        if kept is not None:
            bounds = [bounds[i] for i in kept]
        tensors = isinstance(losses[0], Tensor)
        if tensors and (isinstance(weights, Tensor) or losses[0].device.type != "cpu"):
            return self._combine_tensors(weights, losses, kept, reference, bounds)
        # Python floats: numbers only, or CPU tensors on the host path.
        z = weights.tolist() if isinstance(weights, Tensor) else list(weights)
        if reference is None:
            reference = [v.item() if isinstance(v, Tensor) else v for v in losses]
        else:
            if isinstance(reference, Tensor):
                reference = reference.tolist()
            if kept is not None:
                reference = [reference[i] for i in kept]
        if kept is not None:
            z = [z[i] for i in kept]
        eps = self.defaults["eps"]
        d = [max(v - b, 0.0) + eps for v, b in zip(reference, bounds, strict=True)]
        c = 1.0 / sum(zi / di for zi, di in zip(z, d, strict=True))
        value = c * sum(zi * math.log(di) for zi, di in zip(z, d, strict=True))
        if not tensors:
            return value
        dtype = _total_dtype(losses)  # type: ignore[arg-type]
        scale = torch.tensor([c * zi / di for zi, di in zip(z, d, strict=True)], dtype=dtype)
        return _straight_through(value, scale, losses, dtype)  # type: ignore[arg-type]

    def _combine_tensors(
        self,
        z: functional.Vector,
        losses: list[Tensor],
        kept: list[int] | None,
        reference: functional.Vector | None,
        bounds: list[float],
    ) -> Tensor:
        device, state_dtype = losses[0].device, self._dtype
        if not isinstance(z, Tensor):  # a host-form state meeting device losses (combine)
            z = torch.tensor(z, dtype=state_dtype, device=device)
        if reference is None:
            reference = torch.stack([v.detach().to(state_dtype) for v in losses])
        else:
            if not isinstance(reference, Tensor):
                reference = torch.tensor(reference, dtype=state_dtype, device=device)
            if kept is not None:
                reference = reference[kept]
        if kept is not None:
            z = z[kept]
        floor = constant_vector(tuple(bounds), device, state_dtype)
        d = (reference - floor).clamp(min=0) + self.defaults["eps"]
        ratio = z / d
        c = 1.0 / ratio.sum()
        value = c * (z * torch.log(d)).sum()
        dtype = _total_dtype(losses)
        return _straight_through(value.to(dtype), (c * ratio).to(dtype), losses, dtype)

    # ------------------------------------------------------------------------ update
    def update(self, losses: Losses) -> None:
        """Move the logits once, from the losses of the last :meth:`step` to these ones.

        ``losses`` (same forms as :meth:`step`) are the losses re-evaluated on the same batch
        after the optimiser step; no gradient is needed (call it under
        :func:`torch.no_grad`). Raises :class:`RuntimeError` if no :meth:`step` ran since the
        last ``update``.
        """
        if not self._awaiting_update:
            raise RuntimeError(
                "FAMO.update(losses_after) should follow a FAMO.step(losses): no step ran "
                "since the last update. Nothing was changed."
            )
        batch = collect_losses(losses, self._names)
        if self._runs_on_host(batch):
            self._update_on_host(batch)
        else:
            self._update_on_device(batch)
        self._awaiting_update = False

    def _update_on_host(self, batch: LossBatch) -> None:
        values, present = self._host_values(batch)
        here = present if present is not None else [True] * len(values)
        for name, value, p in zip(self._names, values, here, strict=True):
            if p and not (0 <= value < math.inf):
                if self._strict or batch.device is None:
                    raise ValueError(
                        f"Loss `{name}` should be finite and non-negative. Found `{name} = "
                        f"{value}`. The weighting state was left unchanged."
                    )
                state = self._host_state()
                state["num_updates_skipped"] += 1
                state["pending_at"] = 0
                return
        state = self._host_state()
        both = [p and q for p, q in zip(state["pending_present"], here, strict=True)]
        due = 0 < state["pending_at"] == state["num_steps"] + state["num_skipped"]
        state["pending_at"] = 0
        if not due or not any(both):
            state["num_updates_skipped"] += 1
            return
        new = _logits_step_host(state, values, both, self.defaults, state["num_updates"] + 1)
        state.update(new)
        state["num_updates"] += 1

    def _update_on_device(self, batch: LossBatch) -> None:
        values, mask, device = self._device_values(batch)
        n = self.num_losses
        state = self._device_state(device)
        here = mask if mask is not None else torch.ones(n, dtype=torch.bool, device=device)
        valid = ((torch.isfinite(values) & (values >= 0)) | ~here).all()
        if self._strict and not bool(valid):  # strict=True reads `valid` back by design
            rows = zip(values.tolist(), here.tolist(), strict=True)
            bad = [i for i, (v, p) in enumerate(rows) if p and not 0 <= v < math.inf]
            name = self._names[bad[0]]
            raise ValueError(
                f"Loss `{name}` should be finite and non-negative. Found `{name} = "
                f"{values[bad[0]].item()}`. The weighting state was left unchanged."
            )
        both = state["pending_present"] & here
        count = state["num_steps"] + state["num_skipped"]
        due = (state["pending_at"] > 0) & (state["pending_at"] == count)
        ok = valid & due & both.any()
        new = _logits_step_tensor(state, values, both, self.defaults, state["num_updates"] + 1)
        for key in _UPDATE_FIELDS:
            state[key].copy_(torch.where(ok, new[key], state[key]))
        state["num_updates"].add_(ok.to(torch.int64))
        state["num_updates_skipped"].add_((~ok).to(torch.int64))
        state["pending_at"].zero_()


# ---------------------------------------------------------------------------- the arithmetic
def _logits_step_host(
    state: Mapping[str, Any],
    after: Sequence[float],
    both: Sequence[bool],
    hyper: Mapping[str, Any],
    t: int,
) -> dict[str, list[float]]:
    """One Adam step on the logits present in ``both``, in Python floats."""
    beta1, beta2 = ADAM_BETAS
    lr, gamma, eps, bounds = hyper["weight_lr"], hyper["gamma"], hyper["eps"], hyper["min_losses"]
    logits, m, v = list(state["logits"]), list(state["exp_avg"]), list(state["exp_avg_sq"])
    idx = [i for i, b in enumerate(both) if b]
    delta = {
        i: math.log(max(state["pending_losses"][i] - bounds[i], 0.0) + eps)
        - math.log(max(after[i] - bounds[i], 0.0) + eps)
        for i in idx
    }
    z = dict(zip(idx, _softmax_host([logits[i] for i in idx]), strict=True))
    mean = sum(z[i] * delta[i] for i in idx)
    bias1, bias2 = 1 - beta1**t, 1 - beta2**t
    step_size, bias2_sqrt = lr / bias1, math.sqrt(bias2)
    for i in idx:
        grad = z[i] * (delta[i] - mean) + gamma * logits[i]
        m[i] = m[i] + (1 - beta1) * (grad - m[i])
        v[i] = v[i] * beta2 + (1 - beta2) * grad * grad
        logits[i] = logits[i] - step_size * m[i] / (math.sqrt(v[i]) / bias2_sqrt + ADAM_EPS)
    return {"logits": logits, "exp_avg": m, "exp_avg_sq": v, "weights": _softmax_host(logits)}


def _logits_step_tensor(
    state: Mapping[str, Tensor],
    after: Tensor,
    both: Tensor,
    hyper: Mapping[str, Any],
    t: Tensor,
) -> dict[str, Tensor]:
    """The same step with tensors, never reading a value back (entries outside ``both``
    unchanged; the result is garbage when ``both`` is empty, which the caller masks)."""
    beta1, beta2 = ADAM_BETAS
    lr, gamma, eps = hyper["weight_lr"], hyper["gamma"], hyper["eps"]
    logits, m, v = state["logits"], state["exp_avg"], state["exp_avg_sq"]
    bounds = constant_vector(tuple(hyper["min_losses"]), logits.device, logits.dtype)
    before = state["pending_losses"]
    safe_after = torch.where(both, after, before)  # absent: NaN, kept out of every sum
    delta = torch.log((before - bounds).clamp(min=0) + eps) - torch.log(
        (safe_after - bounds).clamp(min=0) + eps
    )
    delta = torch.where(both, delta, torch.zeros_like(delta))
    z = torch.softmax(torch.where(both, logits, torch.full_like(logits, -math.inf)), dim=0)
    z = torch.where(both, z, torch.zeros_like(z))
    grad = z * (delta - (z * delta).sum()) + gamma * logits
    step = t.to(logits.dtype)
    bias1, bias2 = 1 - torch.pow(beta1, step), 1 - torch.pow(beta2, step)
    new_m = m + (1 - beta1) * (grad - m)
    new_v = v * beta2 + (1 - beta2) * grad * grad
    new_logits = logits - (lr / bias1) * new_m / (new_v.sqrt() / bias2.sqrt() + ADAM_EPS)
    new_logits = torch.where(both, new_logits, logits)
    return {
        "logits": new_logits,
        "exp_avg": torch.where(both, new_m, m),
        "exp_avg_sq": torch.where(both, new_v, v),
        "weights": torch.softmax(new_logits, dim=0),
    }


def _softmax_host(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _straight_through(
    value: Tensor | float, scale: Tensor, losses: list[Tensor], dtype: torch.dtype
) -> Tensor:
    """``value`` with the gradient ``scale_i`` into each loss: value + sum_i scale_i (L_i - sg(L_i))."""
    stacked = torch.stack([loss.to(dtype) for loss in losses])
    return (stacked - stacked.detach()) @ scale + value


def _total_dtype(losses: Sequence[Tensor]) -> torch.dtype:
    return functools.reduce(torch.promote_types, (x.dtype for x in losses), torch.float32)


def _min_losses(value: Any, n: int) -> list[float]:
    if _is_real(value):
        value = [value] * n
    try:
        array = np.asarray(
            value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64
        )
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape != (n,) or not np.isfinite(array).all():
        raise ValueError(
            f"Parameter `min_losses` should be a finite number or {n} finite numbers (one per "
            f"loss). Found `min_losses = {describe(value)}`."
        )
    return array.tolist()


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
