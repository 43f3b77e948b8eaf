"""A weighting's state: the kind and shape of each field, its two forms, and checked loading.

Every field is one of four kinds, read off its initial value:

- ``float``: a Python float or a (nested) list of floats on the host; a tensor of the
  state's floating dtype on the device;
- ``int``: a Python int / an int64 tensor (counters);
- ``bool``: a list of bools / a bool tensor (flags per loss);
- ``tensor``: a tensor in both forms (for instance a random generator's state), kept as is.

The host form is what the host path computes with; the device form what the device path
updates in place. :class:`StateLayout` converts between them and builds a complete, checked
host-form state from a state dict's tensors, so that loading is all-or-nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anl.inputs import describe

__all__ = [
    "StateLayout",
    "check_flag",
    "check_history",
    "check_history_size",
    "floats_of",
    "reference_ok",
    "split_state_dict",
]


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return "tensor"
    if isinstance(value, bool) or (
        isinstance(value, list) and value and isinstance(value[0], bool)
    ):
        return "bool"
    if isinstance(value, int):
        return "int"
    return "float"


class StateLayout:
    """The fields of a state, from its initial host form."""

    def __init__(self, initial: Mapping[str, Any], dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.kinds = {key: _kind(value) for key, value in initial.items()}
        self.shapes = {
            key: tuple(value.shape) if isinstance(value, Tensor) else np.shape(value)
            for key, value in initial.items()
        }
        self.tensor_dtypes = {k: v.dtype for k, v in initial.items() if isinstance(v, Tensor)}

    def torch_dtype(self, key: str) -> torch.dtype:
        kind = self.kinds[key]
        if kind == "bool":
            return torch.bool
        if kind == "int":
            return torch.int64
        if kind == "tensor":
            return self.tensor_dtypes[key]
        return self.dtype

    def to_device(self, state: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
        """The device form of a host-form state."""
        return {
            key: (
                value.to(device, copy=True)
                if isinstance(value, Tensor)
                else torch.tensor(value, dtype=self.torch_dtype(key), device=device)
            )
            for key, value in state.items()
        }

    def to_host(self, state: Mapping[str, Tensor]) -> dict[str, Any]:
        """The host form of a device-form state (reads it back: one synchronisation)."""
        return {
            key: value.cpu() if self.kinds[key] == "tensor" else value.tolist()
            for key, value in state.items()
        }

    def to_cpu_tensors(self, state: Mapping[str, Any]) -> dict[str, Tensor]:
        """Every field as a CPU tensor (for a state dict), from either form."""
        return {
            key: (
                value.detach().to("cpu", copy=True)
                if isinstance(value, Tensor)
                else torch.tensor(value, dtype=self.torch_dtype(key))
            )
            for key, value in state.items()
        }

    def load(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The host form of a state dict's ``state``, every field type-, shape- and
        range-checked (floats finite, integers non-negative); raises ``ValueError`` naming
        the field."""
        loaded: dict[str, Any] = {}
        for key, kind in self.kinds.items():
            value = state.get(key)
            shape = self.shapes[key]
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                found = (
                    f"a tensor of shape {tuple(value.shape)}"
                    if isinstance(value, Tensor)
                    else describe(value)
                )
                raise ValueError(
                    f"State `{key}` should be a tensor of shape {shape}. Found {found}."
                )
            value = value.detach().cpu()
            if kind == "tensor":
                if value.dtype != self.tensor_dtypes[key]:
                    raise ValueError(
                        f"State `{key}` should have dtype {self.tensor_dtypes[key]}. "
                        f"Found {value.dtype}."
                    )
                loaded[key] = value.clone()
            elif kind == "bool":
                if value.dtype != torch.bool:
                    raise ValueError(f"State `{key}` should be a bool tensor. Found {value.dtype}.")
                loaded[key] = value.tolist()
            elif kind == "int":
                if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                    raise ValueError(
                        f"State `{key}` should be an integer tensor. Found {value.dtype}."
                    )
                if bool((value < 0).any()):
                    raise ValueError(f"State `{key}` should be >= 0. Found {value.tolist()}.")
                loaded[key] = value.tolist()
            else:
                if not value.is_floating_point():
                    raise ValueError(
                        f"State `{key}` should be a floating tensor. Found {value.dtype}."
                    )
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(f"State `{key}` should be finite. Found {describe(value)}.")
                loaded[key] = value.to(torch.float64).tolist()
        return loaded


def floats_of(values: Any, n: int, name: str) -> list[float]:
    """``n`` finite, non-negative floats from a sequence, array or tensor (``ValueError``)."""
    try:
        array = np.asarray(
            values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Parameter `{name}` should be {n} numbers. Found {describe(values)}."
        ) from error
    if array.shape != (n,):
        raise ValueError(
            f"Parameter `{name}` should hold {n} values (one per loss). Found shape {array.shape}."
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(
            f"Parameter `{name}` should be finite and non-negative. "
            f"Found `{name} = {array.tolist()}`."
        )
    return array.tolist()


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (``TypeError`` otherwise: ``"False"`` is not False)."""
    if not isinstance(value, bool):
        raise TypeError(f"Parameter `{name}` should be a bool. Found `{name} = {describe(value)}`.")
    return value


def check_history_size(value: Any) -> int | None:
    """``value`` if it is None or a non-negative int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(
            "Parameter `history_size` should be None or a non-negative int. "
            f"Found `history_size = {describe(value)}`."
        )
    return value


def check_history(history: Any, calls: int, n: int) -> np.ndarray:
    """The history matrix of a state dict, checked against the ``calls`` its counters made.

    The history has ``3 n + 1`` columns (losses, relative losses, weights, applied) and at
    most ``calls`` rows. Relative losses and weights are finite and non-negative; losses are
    finite and non-negative, or NaN where absent, in every applied row (a masked row may hold
    anything).
    """
    width = 3 * n + 1
    if (
        not isinstance(history, Tensor)
        or history.dim() != 2
        or history.shape[1] != width
        or not history.is_floating_point()
        or history.shape[0] > calls
    ):
        found = tuple(history.shape) if isinstance(history, Tensor) else describe(history)
        raise ValueError(
            f"State `history` should be a float (T, {width}) tensor of the last T <= "
            f"{calls} calls (`num_steps` + `num_skipped`). Found {found}."
        )
    matrix = history.detach().to("cpu", torch.float64).numpy()
    applied = matrix[:, -1]
    if not np.isin(applied, (0.0, 1.0)).all():
        raise ValueError("State `history` should mark each row applied (1) or masked (0).")
    kept = matrix[:, n:-1]
    if not np.isfinite(kept).all() or (kept < 0).any():
        raise ValueError(
            "State `history` should hold finite, non-negative relative losses and weights."
        )
    losses = matrix[applied == 1, :n]
    if not (((losses >= 0) & np.isfinite(losses)) | np.isnan(losses)).all():
        raise ValueError(
            "State `history` should hold finite, non-negative losses (or NaN where absent) "
            "in its applied rows."
        )
    return matrix


def reference_ok(value: float) -> bool:
    """Whether ``value`` can be a reference ``L(0)``: positive with a finite reciprocal."""
    return value > 0 and math.isfinite(1.0 / value)


def split_state_dict(state_dict: Any, rule: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The ``state`` and ``hyperparameters`` of a state dict saved by a ``rule``."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"Parameter `state_dict` should be a mapping (from `state_dict()`). "
            f"Found {type(state_dict).__name__}."
        )
    state, hyperparameters = state_dict.get("state"), state_dict.get("hyperparameters")
    if not isinstance(state, Mapping) or not isinstance(hyperparameters, Mapping):
        raise ValueError(
            "Parameter `state_dict` should have mappings under 'state' and 'hyperparameters'. "
            f"Found keys {sorted(map(str, state_dict))}."
        )
    if hyperparameters.get("rule") != rule:
        raise ValueError(
            f"Parameter `state_dict` should come from a {rule}. "
            f"Found a state dict of `{describe(hyperparameters.get('rule'))}`."
        )
    return state, hyperparameters
