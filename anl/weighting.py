r"""What every loss-weighting rule shares: inputs, the reference losses, masking, state, history.

At its ``t``-th :meth:`LossWeighting.step` call a rule sees the detached losses
:math:`L_i(t)`, the reference :math:`L_i(0)` (each loss's value at its first valid step), the
relative losses :math:`\tilde L_i(t) = L_i(t) / L_i(0)` (paper Eq. 7) and its state; its one
hook, ``_update``, returns the new weights :math:`w(t)` (and any state of its own).
:meth:`LossWeighting.step` then returns :math:`\sum_i w_i(t) L_i(t)` (Eq. 6) with the weights
as constants, so autograd flows into every :math:`L_i` unchanged.

Two ways to run the same rule:

- **on the host**, when every loss is a number or a CPU tensor and the state is float64: the
  values are read as Python floats (on a CPU this is no synchronisation) and the rule's
  arithmetic runs on floats, which costs microseconds;
- **on the device** otherwise (accelerators, float32 state, or under ``torch.compile``): the
  rule runs as tensor operations without a single read-back, so it never synchronises host and
  device, and the state tensors are updated in place.

Invalid values (a NaN, infinite or negative loss, a reference :math:`L_i(0)` that is zero or
whose reciprocal overflows, a relative loss that overflows) never enter the state: with
numbers only, or ``strict=True``, ``step`` raises :class:`ValueError`; for tensors the update
is masked (on the device, with :func:`torch.where`) and counted in :attr:`num_skipped`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

import numpy as np
import torch
from torch import Tensor

from anl import functional
from anl.distributed import device_mean_across_ranks, host_mean_across_ranks, is_distributed
from anl.history import StepHistory
from anl.inputs import LossBatch, Losses, collect_losses, describe, parse_names
from anl.state import (
    StateLayout,
    check_flag,
    check_history,
    check_history_size,
    floats_of,
    reference_ok,
    split_state_dict,
)

__all__ = ["DEFAULT_HISTORY_SIZE", "Hyperparameter", "LossWeighting"]

#: Steps of :meth:`LossWeighting.history` kept by default (the newest ones).
DEFAULT_HISTORY_SIZE = 10_000

T = TypeVar("T")

_VECTORS = ("weights", "initial_losses", "relative_losses")
_CPU = torch.device("cpu")


class Hyperparameter(Generic[T]):
    """A rule's hyperparameter as an attribute (``balancer.weight_lr *= 0.1``): read from
    :attr:`LossWeighting.defaults`, written through the rule's ``_check_hyperparameter``, so a
    bad value raises and changes nothing. It is saved in the state dict with the others."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Hyperparameter[T]: ...

    @overload
    def __get__(self, obj: LossWeighting, objtype: type | None = None) -> T: ...

    def __get__(self, obj: LossWeighting | None, objtype: type | None = None) -> Any:
        return self if obj is None else obj.defaults[self.name]

    def __set__(self, obj: LossWeighting, value: T) -> None:
        obj.defaults[self.name] = obj._check_hyperparameter(self.name, value)


class LossWeighting:
    """Base class of the weighting rules.

    A rule passes its hyperparameters as ``defaults`` (checked by ``_check_hyperparameter``),
    its starting weights as ``initial_weights``, and implements ``_update``.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        defaults: the rule's hyperparameters (saved in :meth:`state_dict`).
        initial_weights: ``w(-1)``, one finite non-negative weight per loss.
        strict: raise on invalid tensor losses instead of masking the update (synchronises).
        distributed: average the detached losses across ranks when ``torch.distributed`` is
            initialised, so that every rank holds the same weights.
        history_size: keep this many newest steps of :meth:`history` (``None``: every step;
            ``0``: none).
        dtype: floating dtype of the state, float32 or wider (default float64).
    """

    #: Whether ``_update`` also runs on lists of Python floats (the host path). Set it to
    #: False on an instance to run CPU losses through the tensor path (tests do).
    supports_host: bool = True

    #: Whether ``_update`` also takes ``losses=``, this step's detached loss values
    #: :math:`L_i(t)` (cross-rank averaged, NaN where absent), in the form of ``relative``:
    #: for rules that are not scale-free (GLS, SoftAdapt), which :math:`\tilde L` cannot feed.
    update_takes_losses: bool = False

    #: Whether a loss of 0 is invalid (masked, or raised, like a negative one): for rules
    #: that take logarithms of the losses or divide by them (GLS).
    requires_positive_losses: bool = False

    def __init__(
        self,
        losses: int | Sequence[str],
        defaults: Mapping[str, Any],
        *,
        initial_weights: Sequence[float] | np.ndarray | Tensor,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = DEFAULT_HISTORY_SIZE,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self._names = parse_names(losses)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(
                f"Parameter `dtype` should be a floating dtype. Found `dtype = {dtype}`."
            )
        if torch.finfo(dtype).bits < 32:
            raise ValueError(
                "Parameter `dtype` should be float32 or wider to keep the weights exact. "
                f"Found `dtype = {dtype}`."
            )
        self._dtype = dtype
        self._float64 = dtype == torch.float64
        self._strict = check_flag("strict", strict)
        self._distributed = check_flag("distributed", distributed)
        self._history_size = check_history_size(history_size)
        self.defaults = {name: self._check_hyperparameter(name, v) for name, v in defaults.items()}
        self._initial_weights = self._check_weights(
            floats_of(initial_weights, len(self._names), "initial_weights"), "initial_weights"
        )
        self._reset()

    # ------------------------------------------------------------------------ rule hooks
    def _update(
        self,
        state: Mapping[str, Any],
        relative: functional.Vector,
        present: Sequence[bool] | Tensor | None,
    ) -> dict[str, Any]:
        """The new ``weights`` (and the rule's own state) from ``L~(t)`` and the state.

        Every argument is either host-form (lists of floats) or device-form (tensors), and
        the result must be of the same form. ``present`` is ``None`` when every loss was
        given. Device-form code must not read a value back (no ``.item()``, no branch on a
        tensor). A rule that sets :attr:`update_takes_losses` also gets ``losses=``.
        """
        raise NotImplementedError

    def _check_hyperparameter(self, name: str, value: Any) -> Any:
        """Validate one hyperparameter; raise ``ValueError``/``TypeError`` naming it."""
        raise ValueError(f"{type(self).__name__} has no hyperparameter `{name}`.")

    def _check_weights(self, weights: list[float], name: str) -> list[float]:
        """Rule-specific check of a weight vector (initial or restored); returns it."""
        return weights

    def _extra_state(self) -> dict[str, Any]:
        """The rule's own state fields in host form, at their initial values (see
        :mod:`anl.state` for the kinds a field may be)."""
        return {}

    def _check_loaded_state(self, state: dict[str, Any]) -> None:
        """Rule-specific check of a restored host-form state (raise ``ValueError``)."""

    # ------------------------------------------------------------------------ state
    def _reset(self) -> None:
        n = len(self._names)
        self._state: dict[str, Any] = {
            "weights": list(self._initial_weights),
            "initial_losses": [0.0] * n,
            "has_reference": [False] * n,
            "relative_losses": [1.0] * n,
            "num_steps": 0,
            "num_skipped": 0,
            **self._extra_state(),
        }
        self._layout = StateLayout(self._state, self._dtype)
        self._device: torch.device | None = None  # None: the state is in host form
        self._all_referenced = False  # every loss has its L(0)
        self._called = False  # a step was made (for `initial_losses` and friends)
        self._history = StepHistory(3 * n + 1, self._history_size, self._dtype)

    def _host_state(self) -> dict[str, Any]:
        if self._device is not None:
            self._state = self._layout.to_host(self._state)
            self._device = None
            self._all_referenced = all(self._state["has_reference"])
        return self._state

    def _device_state(self, device: torch.device) -> dict[str, Tensor]:
        if self._device is None:
            self._state = self._layout.to_device(self._state, device)
            self._device = device
        elif self._device != device:
            self._state = {k: v.to(device) for k, v in self._state.items()}
            self._device = device
        return self._state

    def _public(self, key: str) -> Tensor:
        value = self._state[key]
        if self._device is None:
            return torch.tensor(value, dtype=self._layout.torch_dtype(key))
        return value.clone()

    @property
    def names(self) -> tuple[str, ...]:
        """The loss names, in the order of :attr:`weights`."""
        return self._names

    @property
    def num_losses(self) -> int:
        return len(self._names)

    @property
    def strict(self) -> bool:
        return self._strict

    @property
    def distributed(self) -> bool:
        return self._distributed

    @property
    def history_size(self) -> int | None:
        return self._history_size

    @property
    def weights(self) -> Tensor:
        """The current weights ``w(t)`` in loss order: a tensor of the state's dtype, on the
        device of the last tensor losses (the CPU before any, and after host steps)."""
        return self._public("weights")

    @property
    def initial_losses(self) -> Tensor | None:
        """The reference losses ``L(0)`` (0 until a loss's first valid step; None before any call)."""
        return self._public("initial_losses") if self._called else None

    @property
    def relative_losses(self) -> Tensor | None:
        """``L~(t) = L(t) / L(0)`` as of the last valid step (paper Eq. 7); None before any call."""
        return self._public("relative_losses") if self._called else None

    @property
    def num_steps(self) -> Tensor:
        """How many calls updated the state (a 0-dim int64 tensor; ``int()`` it to read it)."""
        return self._public("num_steps")

    @property
    def num_skipped(self) -> Tensor:
        """How many calls were masked for invalid losses (a 0-dim int64 tensor)."""
        return self._public("num_skipped")

    def as_dict(self) -> dict[str, float]:
        """``{name: weight}`` as Python floats, for loggers (reads the weights back once)."""
        return dict(zip(self._names, self.weights.tolist(), strict=True))

    # ------------------------------------------------------------------------ step
    def step(self, losses: Losses) -> Tensor | float:
        """Update the weights from this step's losses and return ``sum_i w_i(t) L_i(t)`` (Eq. 6).

        ``losses`` is a sequence in declared order or a mapping keyed by the declared names,
        of Python numbers, NumPy scalars or 0-dim tensors; ``None`` (or a name left out of the
        mapping) marks a loss not computed at this step. The weights used are the ones this
        call just computed. For tensor inputs the result is a 0-dim tensor carrying every
        loss's autograd graph; for numbers only it is a Python float.
        """
        if type(losses) is list or type(losses) is tuple:
            total = self._steady_host_step(losses)
            if total is not None:
                return total
        batch = collect_losses(losses, self._names)
        self._check_device(batch.device)
        if self._runs_on_host(batch):
            weights = self._step_on_host(batch)
        else:
            weights = self._step_on_device(batch)
        return self._total(weights, batch)

    def combine(self, losses: Losses) -> Tensor | float:
        """``sum_i w_i L_i`` (Eq. 6) with the current weights, without updating anything.

        For gradient accumulation: call :meth:`step` on one micro-batch and ``combine`` on the
        others, or ``combine`` on every micro-batch and :meth:`step` once on their mean.
        """
        batch = collect_losses(losses, self._names)
        self._check_device(batch.device)
        return self._total(self._state["weights"], batch)

    def _check_device(self, device: torch.device | None) -> None:
        """Rule-specific check of the tensor losses' device (``None``: numbers only), before
        anything changes (raise ``ValueError``); the base accepts every device."""

    def _total(self, weights: functional.Vector, batch: LossBatch) -> Tensor | float:
        if isinstance(weights, Tensor) and batch.device is not None:
            weights = weights.clone()  # the state is updated in place by later steps
        if batch.all_present and not batch.mixed:
            return self._combine(weights, batch.values, None)  # type: ignore[arg-type]
        kept = [i for i, value in enumerate(batch.values) if value is not None]
        losses = [
            value
            if isinstance(value, Tensor) or batch.device is None
            else torch.tensor(value, device=batch.device)
            for value in batch.values
            if value is not None
        ]
        return self._combine(weights, losses, None if len(kept) == len(batch.values) else kept)

    def _combine(
        self,
        weights: functional.Vector,
        losses: list[Tensor] | list[float],
        kept: list[int] | None,
    ) -> Tensor | float:
        """The total returned by :meth:`step` and :meth:`combine`: Eq. 6 by default.

        ``losses`` are the present losses (0-dim tensors with their graphs, or Python floats
        when no loss is a tensor), ``kept`` their indices (``None``: every loss). A rule whose
        total is not a weighted sum with constant weights overrides this hook.
        """
        if kept is not None:
            weights = weights[kept] if isinstance(weights, Tensor) else [weights[i] for i in kept]
        if losses and not isinstance(losses[0], Tensor):
            if isinstance(weights, Tensor):
                weights = weights.tolist()
            return sum(w * v for w, v in zip(weights, losses, strict=True))
        return functional.weighted_sum(weights, losses)  # type: ignore[arg-type]

    # -------------------------------------------------------------- the host path
    def _runs_on_host(self, batch: LossBatch) -> bool:
        """Whether this batch takes the host path (numbers or CPU tensors, a float64 state,
        not under ``torch.compile``)."""
        return (
            self.supports_host
            and self._float64
            and (batch.device is None or batch.device.type == "cpu")
            and not torch.compiler.is_compiling()
        )

    def _host_values(self, batch: LossBatch) -> tuple[list[float], tuple[bool, ...] | None]:
        """The detached losses as floats (NaN where absent, cross-rank means under
        ``distributed``) and which are present (``None``: all)."""
        present: tuple[bool, ...] | None = None if batch.all_present else batch.present
        values = [
            v.item() if isinstance(v, Tensor) else math.nan if v is None else v
            for v in batch.values
        ]
        if self._distributed and is_distributed():
            values, present = host_mean_across_ranks(values, present)
        return values, present

    def _device_values(self, batch: LossBatch) -> tuple[Tensor, Tensor | None, torch.device]:
        """The detached losses as one tensor of the state's dtype on their device (NaN where
        absent, cross-rank means under ``distributed``), the mask of the present ones
        (``None``: all) and the device; no read-back."""
        device = batch.device if batch.device is not None else torch.device("cpu")
        dtype, n = self._dtype, len(self._names)
        detached = torch.stack(
            [
                v.detach().to(dtype)
                if isinstance(v, Tensor)
                else torch.tensor(v, dtype=dtype, device=device)
                for v in batch.values
                if v is not None
            ]
        )
        mask: Tensor | None = None
        values = detached
        if not batch.all_present:
            kept = torch.tensor([i for i, p in enumerate(batch.present) if p], device=device)
            values = torch.full((n,), math.nan, dtype=dtype, device=device)
            values = values.index_copy(0, kept, detached)
            mask = torch.tensor(batch.present, device=device)
        if self._distributed and is_distributed():
            values, mask = device_mean_across_ranks(values, mask)
        return values, mask, device

    def _steady_host_step(self, losses: list[Any] | tuple[Any, ...]) -> Tensor | None:
        """:meth:`step` in its most common case, in one pass: every loss a valid 0-dim floating
        CPU tensor, every reference :math:`L_i(0)` known, the state on the host in
        float64, no process group, not under ``torch.compile``. ``None`` (nothing changed)
        whenever any of that does not hold: the general path then checks and explains."""
        if not (
            self._all_referenced
            and self._device is None
            and self._float64
            and self.supports_host
            and len(losses) == len(self._names)
        ):
            return None
        values = []
        for value in losses:
            if (
                type(value) is not Tensor
                or value.dim()
                or not value.dtype.is_floating_point
                or value.device.type != "cpu"
            ):
                return None
            values.append(value.item())
        if (self._distributed and is_distributed()) or torch.compiler.is_compiling():
            return None
        state = self._state
        relative, valid = self._steady_relative(values, state["initial_losses"])
        if not valid:
            return None
        self._check_device(_CPU)
        weights = self._apply_host_update(state, values, relative, None)
        return self._combine(weights, list(losses), None)  # type: ignore[return-value]

    def _steady_relative(
        self, values: list[float], initial: list[float]
    ) -> tuple[list[float], bool]:
        """``L~ = L / L(0)`` with every loss present and referenced, and whether the values
        are certainly valid: a NaN or infinite loss makes the sum of the relative losses NaN
        or inf (every L(0) is finite and positive). The sum can also overflow from finite
        terms, so ``False`` asks for the exact check (:meth:`_host_invalid`), not an error."""
        relative = [v / r for v, r in zip(values, initial, strict=True)]
        smallest = min(values)
        valid = sum(relative) < math.inf and (
            smallest > 0.0 if self.requires_positive_losses else smallest >= 0.0
        )
        return relative, valid

    def _apply_host_update(
        self,
        state: dict[str, Any],
        values: list[float],
        relative: list[float],
        present: tuple[bool, ...] | None,
    ) -> list[float]:
        """Run the rule on valid host values and record the step (``initial_losses`` and
        ``has_reference`` are the caller's); the new weights."""
        extra = {"losses": values} if self.update_takes_losses else {}
        state.update(self._update(state, relative, present, **extra))  # sees the old state
        state["relative_losses"] = relative
        state["num_steps"] += 1
        self._called = True
        self._history.append((*values, *relative, *state["weights"], 1.0))
        return state["weights"]

    def _step_on_host(self, batch: LossBatch) -> list[float]:
        values, present = self._host_values(batch)
        state = self._state if self._device is None else self._host_state()
        initial = state["initial_losses"]
        if present is None and self._all_referenced:  # the steady state, checked in one pass
            relative, quick = self._steady_relative(values, initial)
            error = None if quick else self._host_invalid(state, values, (True,) * len(values))
        else:
            here = present if present is not None else (True,) * len(values)
            error = self._host_invalid(state, values, here)
            if error is None:
                has_reference = state["has_reference"]
                initial = [
                    r if h or not p else v
                    for v, r, h, p in zip(values, initial, has_reference, here, strict=True)
                ]
                relative = [
                    v / r if p else old
                    for v, r, p, old in zip(
                        values, initial, here, state["relative_losses"], strict=True
                    )
                ]
                has_reference = [h or p for h, p in zip(has_reference, here, strict=True)]
        if error is not None:
            if self._strict or batch.device is None:
                raise ValueError(error + " The weighting state was left unchanged.")
            self._called = True
            state["num_skipped"] += 1
            self._history.append((*values, *state["relative_losses"], *state["weights"], 0.0))
            return state["weights"]
        weights = self._apply_host_update(state, values, relative, present)
        if not self._all_referenced:
            state["has_reference"] = has_reference
            self._all_referenced = all(has_reference)
        state["initial_losses"] = initial
        return weights

    def _host_invalid(
        self, state: Mapping[str, Any], values: Sequence[float], here: Sequence[bool]
    ) -> str | None:
        """Why this step's values cannot enter the state (None when they can)."""
        rows = zip(
            self._names, values, here, state["has_reference"], state["initial_losses"], strict=True
        )
        for name, value, present, has_reference, reference in rows:
            if not present:
                continue
            if not math.isfinite(value) or value < 0:
                return f"Loss `{name}` should be finite and non-negative. Found `{name} = {value}`."
            if value == 0 and self.requires_positive_losses:
                return (
                    f"Loss `{name}` should be positive ({type(self).__name__} is undefined "
                    f"at 0). Found `{name} = {value}`."
                )
            if not has_reference:
                reference = value
            if not reference_ok(reference):
                return (
                    f"Loss `{name}` should have a reference value L(0) > 0 whose reciprocal is "
                    f"finite (paper Eq. 7 divides by it). Found `{name} = {value}` at its "
                    "reference step."
                )
            if not math.isfinite(value / reference):
                return f"Loss `{name}`'s relative value L(t)/L(0) = {value}/{reference} overflows."
        return None

    # -------------------------------------------------------------- the device path
    def _step_on_device(self, batch: LossBatch) -> Tensor:
        values, mask, device = self._device_values(batch)
        dtype, n = self._dtype, len(self._names)
        state = self._device_state(device)
        here = mask if mask is not None else torch.ones(n, dtype=torch.bool, device=device)
        has_reference = state["has_reference"]
        reference = torch.where(has_reference, state["initial_losses"], values)
        positive = reference > 0
        safe_reference = torch.where(positive, reference, torch.ones_like(reference))
        relative_new = values / safe_reference
        ok = (
            torch.isfinite(values)
            & ((values > 0) if self.requires_positive_losses else (values >= 0))
            & positive
            & torch.isfinite(1.0 / safe_reference)
            & torch.isfinite(relative_new)
        )
        valid = (ok | ~here).all()
        # strict=True reads `valid` back by design; numbers only were on the host anyway.
        if (self._strict or batch.device is None) and not bool(valid):
            error = self._host_invalid(
                {"has_reference": [True] * n, "initial_losses": reference.tolist()},
                values.tolist(),
                here.tolist(),
            )
            raise ValueError(f"{error} The weighting state was left unchanged.")
        relative = torch.where(here, relative_new, state["relative_losses"])
        extra = {"losses": values} if self.update_takes_losses else {}
        new = self._update(state, relative, mask, **extra)
        new["initial_losses"] = torch.where(here & ~has_reference, values, state["initial_losses"])
        new["has_reference"] = has_reference | here
        new["relative_losses"] = relative
        for key, value in new.items():  # in place, so a captured CUDA graph sees the state
            state[key].copy_(torch.where(valid, value, state[key]))
        state["num_steps"].add_(valid.to(torch.int64))
        state["num_skipped"].add_((~valid).to(torch.int64))
        self._called = True
        if self._history_size != 0:
            row = [values, state["relative_losses"], state["weights"], valid.to(dtype)[None]]
            self._history.append(torch.cat(row))
        return state["weights"]

    # ------------------------------------------------------------------------ history
    def history(self) -> dict[str, np.ndarray]:
        """Per-step arrays for plotting: ``step`` (T,), ``losses`` (NaN where absent),
        ``relative_losses``, ``weights`` (T, N) and ``applied`` (T,) (False where invalid
        losses were masked). The newest :attr:`history_size` calls are kept.

        Reading the history copies it to the host once (a single synchronisation).
        """
        n = self.num_losses
        matrix = self._history.matrix()
        calls = int(self._state["num_steps"]) + int(self._state["num_skipped"])
        return {
            "step": np.arange(calls - len(matrix), calls, dtype=np.int64),
            "losses": matrix[:, :n].copy(),
            "relative_losses": matrix[:, n : 2 * n].copy(),
            "weights": matrix[:, 2 * n : 3 * n].copy(),
            "applied": matrix[:, 3 * n] > 0.5,
        }

    # ------------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """The whole state as tensors and plain containers (``torch.load(weights_only=True)`` safe).

        As :meth:`torch.optim.Optimizer.state_dict`: ``"state"`` holds what evolves (CPU
        tensors, the history included), ``"hyperparameters"`` the settings a resumed run
        reuses (the rule's :attr:`defaults`, ``strict``, ``distributed``).
        """
        state = self._layout.to_cpu_tensors(self._state)
        state["history"] = torch.from_numpy(self._history.matrix())
        hyperparameters = {
            "rule": type(self).__name__,
            "names": list(self._names),
            "strict": self._strict,
            "distributed": self._distributed,
            **self.defaults,
        }
        return {"state": state, "hyperparameters": hyperparameters}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`: everything is checked first, so a bad one changes nothing.

        The saved hyperparameters (the rule's, ``strict``, ``distributed``) replace this
        object's, as ``torch.optim`` does; :attr:`history_size` stays this object's, and the
        restored history is cut to its newest rows.
        """
        state, hyperparameters = split_state_dict(state_dict, type(self).__name__)
        names = hyperparameters.get("names")
        if not isinstance(names, (list, tuple)) or list(names) != list(self._names):
            raise ValueError(
                f"Parameter `state_dict` should have the loss names {list(self._names)}. "
                f"Found `names = {describe(names)}`."
            )
        strict = check_flag("strict", hyperparameters.get("strict", self._strict))
        distributed = check_flag(
            "distributed", hyperparameters.get("distributed", self._distributed)
        )
        extra = set(hyperparameters) - {"rule", "names", "strict", "distributed", "history_size"}
        unknown = extra - set(self.defaults)
        if unknown:
            raise ValueError(
                f"Parameter `state_dict` has hyperparameters {sorted(unknown)} that "
                f"{type(self).__name__} does not know."
            )
        defaults = {
            name: self._check_hyperparameter(name, hyperparameters.get(name, value))
            for name, value in self.defaults.items()
        }
        loaded = self._layout.load(state)
        for key in _VECTORS:
            if any(x < 0 for x in loaded[key]):
                raise ValueError(f"State `{key}` should be non-negative. Found {loaded[key]}.")
        for name, has, reference in zip(
            self._names, loaded["has_reference"], loaded["initial_losses"], strict=True
        ):
            if has and not reference_ok(reference):
                raise ValueError(
                    f"State `initial_losses` should be > 0 with a finite reciprocal where "
                    f"`has_reference` is set. Found `{name}`: {reference}."
                )
        loaded["weights"] = self._check_weights(loaded["weights"], "weights")
        self._check_loaded_state(loaded)
        history = check_history(
            state.get("history"), loaded["num_steps"] + loaded["num_skipped"], self.num_losses
        )
        # Everything is checked: swap it in.
        self.defaults = defaults
        self._strict, self._distributed = strict, distributed
        self._state, self._device = loaded, None
        self._all_referenced = all(loaded["has_reference"])
        self._called = loaded["num_steps"] + loaded["num_skipped"] > 0
        self._history = StepHistory(3 * self.num_losses + 1, self._history_size, self._dtype)
        self._history.replace(history)

    def __repr__(self) -> str:
        hyper = "".join(f", {k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({list(self._names)!r}{hyper})"
