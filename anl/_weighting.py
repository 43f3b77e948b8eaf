"""The machinery every loss-weighting rule shares: inputs, reference losses, masking, state, history.

A rule sees, at step ``t``, the detached loss values ``L_i(t)``, the reference ``L_i(0)``
recorded at its first valid step, the relative losses ``L~_i(t) = L_i(t) / L_i(0)`` (paper
Eq. 7) and its previous weights ``w(t-1)``; it returns ``w(t)``. :meth:`LossWeighting.step`
then returns ``sum_i w_i(t) L_i(t)`` (Eq. 6) with the weights as constants, so autograd flows
into every ``L_i`` unchanged.

Everything in :meth:`LossWeighting.step` is written as tensor operations without a Python
branch on a tensor value, so for tensor inputs it never synchronises host and device. Invalid
values (non-finite or negative losses, a zero or non-finite reference) do not update the state:
for host values they raise a :class:`ValueError`; for tensors the update is masked on the
device with :func:`torch.where` and counted in :attr:`LossWeighting.num_skipped`, unless
``strict=True`` asks for the eager error.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from anl._backend import LossValue, first_bad_value, order_losses, parse_names, prepare
from anl._history import StepHistory
from anl.distributed import mean_across_ranks

_STATE_TENSORS = (
    "weights",
    "initial_losses",
    "has_reference",
    "relative_losses",
    "num_steps",
    "num_skipped",
)


class LossWeighting:
    """Base class of the weighting rules; subclasses define :meth:`_next_weights`.

    Args:
        losses: the number ``N`` of losses, or a sequence of their names.
        initial_weights: ``w(-1)``, one non-negative weight per loss.
        strict: raise on invalid tensor losses instead of masking the update (synchronises).
        distributed: average the detached losses across ranks when ``torch.distributed`` is
            initialised, so every rank holds the same weights.
        history_size: keep at most this many steps of history (``None``: all of them).
        dtype: floating dtype of the weight state (float32 or wider; default float64).
    """

    def __init__(
        self,
        losses: int | Sequence[str],
        *,
        initial_weights: Sequence[float] | np.ndarray | torch.Tensor,
        strict: bool = False,
        distributed: bool = True,
        history_size: int | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self._names = parse_names(losses)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(
                f"Parameter `dtype` should be a floating dtype. Found `dtype = {dtype}`."
            )
        if torch.finfo(dtype).bits < 32:
            raise ValueError(
                f"Parameter `dtype` should be float32 or wider to keep the weights exact. "
                f"Found `dtype = {dtype}`."
            )
        if history_size is not None and (
            isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0
        ):
            raise ValueError(
                "Parameter `history_size` should be None or a non-negative int. "
                f"Found `history_size = {history_size!r}`."
            )
        self._dtype = dtype
        self.strict = bool(strict)
        self.distributed = bool(distributed)
        self.history_size = history_size
        self._initial_weights = self._check_initial_weights(initial_weights)
        self._reset()

    # ----------------------------------------------------------------------------- rule hooks
    def _check_initial_weights(self, initial_weights: Any) -> torch.Tensor:
        weights = torch.as_tensor(np.asarray(initial_weights, dtype=np.float64), dtype=self._dtype)
        if weights.shape != (len(self._names),):
            raise ValueError(
                f"Parameter `initial_weights` should hold {len(self._names)} values (one per loss). "
                f"Found shape {tuple(weights.shape)}."
            )
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError(
                "Parameter `initial_weights` should be finite and non-negative. "
                f"Found `initial_weights = {weights.tolist()}`."
            )
        return weights

    def _next_weights(self, relative: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``w(t)`` from the relative losses ``L~(t)`` and ``w(t-1)``; no host sync allowed."""
        raise NotImplementedError

    def _hyperparameters(self) -> dict[str, Any]:
        return {}

    def _load_hyperparameters(self, hyper: Mapping[str, Any]) -> None:
        """Check and apply the rule's own hyperparameters from a state dict (before any change)."""

    # ----------------------------------------------------------------------------- state
    def _reset(self) -> None:
        n = len(self._names)
        self._state: dict[str, torch.Tensor] = {
            "weights": self._initial_weights.clone(),
            "initial_losses": torch.zeros(n, dtype=self._dtype),
            "has_reference": torch.zeros((), dtype=torch.bool),
            "relative_losses": torch.ones(n, dtype=self._dtype),
            "num_steps": torch.zeros((), dtype=torch.int64),
            "num_skipped": torch.zeros((), dtype=torch.int64),
        }
        self._num_calls = 0
        self._tensor_mode = False
        self._history = StepHistory(3 * n + 1, self._dtype, self.history_size)

    def _move_state(self, device: torch.device) -> None:
        if self._state["weights"].device != device:
            self._state = {k: v.to(device) for k, v in self._state.items()}
            self._history.to(device)

    @property
    def names(self) -> tuple[str, ...]:
        """The loss names, in the order of :attr:`weights`."""
        return self._names

    @property
    def num_losses(self) -> int:
        return len(self._names)

    def _public(self, tensor: torch.Tensor) -> torch.Tensor | np.ndarray:
        return tensor.clone() if self._tensor_mode else tensor.cpu().numpy().copy()

    @property
    def weights(self) -> torch.Tensor | np.ndarray:
        """The current weights ``w(t)`` in loss order (a tensor after tensor inputs, else NumPy)."""
        return self._public(self._state["weights"])

    @property
    def initial_losses(self) -> torch.Tensor | np.ndarray | None:
        """The reference losses ``L(0)`` (zeros until a valid step recorded them; None before any)."""
        return None if self._num_calls == 0 else self._public(self._state["initial_losses"])

    @property
    def relative_losses(self) -> torch.Tensor | np.ndarray | None:
        """``L~(t) = L(t) / L(0)`` of the last applied step (paper Eq. 7); None before any step."""
        return None if self._num_calls == 0 else self._public(self._state["relative_losses"])

    @property
    def num_steps(self) -> torch.Tensor:
        """How many steps updated the state (a 0-dim int64 tensor; ``int()`` it to read it)."""
        return self._state["num_steps"].clone()

    @property
    def num_skipped(self) -> torch.Tensor:
        """How many steps were masked for invalid losses (a 0-dim int64 tensor)."""
        return self._state["num_skipped"].clone()

    # ----------------------------------------------------------------------------- step
    def step(self, losses: Sequence[LossValue] | Mapping[str, LossValue]) -> Any:
        """Update the weights from this step's losses and return ``sum_i w_i(t) L_i(t)`` (Eq. 6).

        ``losses`` is a sequence in declared order or a mapping keyed by the declared names,
        of Python floats, NumPy scalars or 0-dim tensors. The weights used are the ones this
        call just computed. For tensor inputs the result is a 0-dim tensor carrying every
        loss's autograd graph; for host inputs it is a Python float.
        """
        prepared = prepare(order_losses(losses, self._names), self._names, self._dtype)
        values = prepared.values
        if self.distributed:
            values = mean_across_ranks(values)
        self._move_state(values.device)
        state = self._state

        finite = torch.isfinite(values).all() & (values >= 0).all()
        reference = torch.where(state["has_reference"], state["initial_losses"], values)
        positive = reference > 0
        relative = values / torch.where(positive, reference, torch.ones_like(reference))
        valid = finite & positive.all() & torch.isfinite(relative).all()
        if prepared.on_host or self.strict:
            self._raise_if_invalid(values, reference, valid)
        relative = torch.where(valid, relative, state["relative_losses"])
        weights = torch.where(
            valid, self._next_weights(relative, state["weights"]), state["weights"]
        )

        self._state = {
            "weights": weights,
            "initial_losses": torch.where(valid, reference, state["initial_losses"]),
            "has_reference": state["has_reference"] | valid,
            "relative_losses": relative,
            "num_steps": state["num_steps"] + valid.to(torch.int64),
            "num_skipped": state["num_skipped"] + (~valid).to(torch.int64),
        }
        self._record(values, relative, weights, valid)
        self._tensor_mode = self._tensor_mode or not prepared.on_host
        if prepared.on_host:
            return float((weights * values).sum())
        return self._weighted_sum(weights, prepared.graphs)

    @staticmethod
    def _weighted_sum(weights: torch.Tensor, graphs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        dtype = functools.reduce(torch.promote_types, (g.dtype for g in graphs), torch.float32)
        stacked = torch.stack([g.to(dtype) for g in graphs])
        return (weights.to(device=stacked.device, dtype=dtype) * stacked).sum()

    def _raise_if_invalid(
        self, values: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor
    ) -> None:
        if bool(valid):
            return
        bad = first_bad_value(values.cpu(), self._names)
        if bad is not None:
            name, value = bad
            raise ValueError(
                f"Loss `{name}` should be finite and non-negative. Found `{name} = {value}`. "
                "The weighting state was left unchanged."
            )
        for name, ref, value in zip(self._names, reference.tolist(), values.tolist(), strict=True):
            if not ref > 0:
                raise ValueError(
                    f"Loss `{name}` should have a positive reference value L(0) (paper Eq. 7 "
                    f"divides by it). Found `{name} = {value}` at the reference step. "
                    "The weighting state was left unchanged."
                )
        raise ValueError(
            f"The relative losses L(t)/L(0) overflowed: L(t) = {values.tolist()}, "
            f"L(0) = {reference.tolist()}. The weighting state was left unchanged."
        )

    def _record(
        self,
        values: torch.Tensor,
        relative: torch.Tensor,
        weights: torch.Tensor,
        valid: torch.Tensor,
    ) -> None:
        self._num_calls += 1
        if self.history_size != 0:
            self._history.append(values, relative, weights, valid.to(values.dtype).reshape(1))

    # ----------------------------------------------------------------------------- history
    def history(self) -> dict[str, np.ndarray]:
        """Per-step arrays for plotting: ``step`` (T,), ``losses``, ``relative_losses``,
        ``weights`` (T, N) and ``applied`` (T,) (False where invalid losses were masked).

        Reading the history copies it to the host once (a single synchronisation).
        """
        n = self.num_losses
        matrix = self._history.matrix().cpu().numpy()
        return {
            # Every call is recorded, so the kept rows are the newest calls.
            "step": np.arange(self._num_calls - len(matrix), self._num_calls, dtype=np.int64),
            "losses": matrix[:, :n].copy(),
            "relative_losses": matrix[:, n : 2 * n].copy(),
            "weights": matrix[:, 2 * n : 3 * n].copy(),
            "applied": matrix[:, 3 * n].astype(bool),
        }

    # ----------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """The whole state as plain containers and tensors (``torch.load(weights_only=True)`` safe).

        Like :meth:`torch.optim.Optimizer.state_dict`: ``"state"`` holds the evolving tensors,
        ``"hyperparameters"`` the settings a resumed run must reuse.
        """
        state: dict[str, Any] = {k: v.clone() for k, v in self._state.items()}
        state["num_calls"] = self._num_calls
        state["tensor_mode"] = self._tensor_mode
        state["history"] = self._history.matrix().clone()
        hyper = {
            "rule": type(self).__name__,
            "names": list(self._names),
            "strict": self.strict,
            "distributed": self.distributed,
            "history_size": self.history_size,
            **self._hyperparameters(),
        }
        return {"state": state, "hyperparameters": hyper}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; checks everything first, so a bad one changes nothing."""
        try:
            state, hyper = state_dict["state"], state_dict["hyperparameters"]
        except (KeyError, TypeError) as error:
            raise ValueError(
                "Parameter `state_dict` should have keys 'state' and 'hyperparameters'. "
                f"Found {type(state_dict).__name__} without them."
            ) from error
        if hyper.get("rule") != type(self).__name__:
            raise ValueError(
                f"Parameter `state_dict` should come from a {type(self).__name__}. "
                f"Found a state dict of `{hyper.get('rule')}`."
            )
        if list(hyper.get("names", [])) != list(self._names):
            raise ValueError(
                f"Parameter `state_dict` should have the loss names {list(self._names)}. "
                f"Found {hyper.get('names')}."
            )
        n = self.num_losses
        loaded = {}
        for key in _STATE_TENSORS:
            value = state.get(key)
            expected_shape = (n,) if key in ("weights", "initial_losses", "relative_losses") else ()
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected_shape:
                raise ValueError(
                    f"State `{key}` should be a tensor of shape {expected_shape}. Found {value!r}."
                )
            loaded[key] = value.detach().clone()
        for key in ("weights", "initial_losses", "relative_losses"):
            if not bool(torch.isfinite(loaded[key]).all()) or bool((loaded[key] < 0).any()):
                raise ValueError(
                    f"State `{key}` should be finite and non-negative. "
                    f"Found `{key} = {loaded[key].tolist()}`."
                )
            loaded[key] = loaded[key].to(self._dtype)
        loaded["has_reference"] = loaded["has_reference"].to(torch.bool)
        device = loaded["weights"].device
        loaded = {k: v.to(device) for k, v in loaded.items()}
        history, num_calls = state.get("history"), state.get("num_calls", 0)
        if (
            not isinstance(history, torch.Tensor)
            or history.dim() != 2
            or history.shape[1] != 3 * n + 1
            or not isinstance(num_calls, int)
            or not 0 <= history.shape[0] <= num_calls
        ):
            raise ValueError(
                f"State `history` should be a (T, {3 * n + 1}) tensor of the last T <= "
                f"`num_calls` steps. Found {history!r} with `num_calls = {num_calls!r}`."
            )
        self._check_loaded_weights(loaded["weights"])
        self._load_hyperparameters(hyper)
        # Everything is checked: apply.
        self._state = loaded
        self._num_calls = num_calls
        self._tensor_mode = bool(state.get("tensor_mode", False))
        self.strict = bool(hyper.get("strict", self.strict))
        self.distributed = bool(hyper.get("distributed", self.distributed))
        self._history.load(history.to(device))

    def _check_loaded_weights(self, weights: torch.Tensor) -> None:
        """Rule-specific check of restored weights (raise ValueError)."""

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}({list(self._names)!r}{', ' if hyper else ''}{hyper})"
