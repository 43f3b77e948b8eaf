"""Check and order what users pass to ``step``: names, and loss values of several kinds.

A step's losses are a sequence in declared order or a mapping keyed by the declared names;
each value is a Python number, a NumPy scalar, a 0-dim (or one-element) tensor, or ``None``
for a loss not computed at this step (a key left out of a mapping means the same). Every
check runs before a weighting touches its state, so a rejected call changes nothing.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

LossValue = float | int | np.floating | np.ndarray | Tensor | None
Losses = Sequence[LossValue] | Mapping[str, LossValue] | Tensor

__all__ = [
    "LossBatch",
    "LossValue",
    "Losses",
    "collect_losses",
    "constant_vector",
    "describe",
    "parse_names",
]


def describe(value: object, limit: int = 80) -> str:
    """A one-line description of ``value`` for error messages (tensors by shape and dtype)."""
    if isinstance(value, Tensor):
        if value.numel() == 1 and not value.is_meta:
            return f"tensor({value.item()!r}, dtype={value.dtype})"
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_names(losses: int | Sequence[str]) -> tuple[str, ...]:
    """Names of the losses from a count ``N`` (``"0"`` … ``"N-1"``) or a sequence of names."""
    if isinstance(losses, bool) or not isinstance(losses, (numbers.Integral, Sequence)):
        raise TypeError(
            "Parameter `losses` should be a positive int or a sequence of distinct names. "
            f"Found `losses = {describe(losses)}`."
        )
    if isinstance(losses, numbers.Integral):
        if losses < 1:
            raise ValueError(
                f"Parameter `losses` should be a positive number of losses. Found `losses = {losses}`."
            )
        return tuple(str(i) for i in range(int(losses)))
    if isinstance(losses, (str, bytes)):
        raise TypeError(
            "Parameter `losses` should be a sequence of names, not a single string. "
            f"Found `losses = {describe(losses)}`."
        )
    names = tuple(losses)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            "Parameter `losses` should be a non-empty sequence of non-empty strings. "
            f"Found `losses = {describe(names)}`."
        )
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(
            f"Parameter `losses` should hold distinct names. Found duplicates {duplicates}."
        )
    return names


class LossBatch(NamedTuple):
    """One step's losses in declared order.

    Attributes:
        values: per loss, a 0-dim tensor (graph kept), a Python float, or ``None`` (absent).
        present: per loss, whether it was given.
        all_present: whether every loss was given.
        device: the device of the tensor losses; ``None`` when every value is a number
            (the weighted total is then a Python float).
        mixed: whether numbers and tensors are mixed.
    """

    values: tuple[Tensor | float | None, ...]
    present: tuple[bool, ...]
    all_present: bool
    device: torch.device | None
    mixed: bool


def collect_losses(losses: Losses, names: tuple[str, ...]) -> LossBatch:
    """Order, type-check and classify one step's losses; raise before anything changes.

    Raises ``ValueError`` for a wrong count, unknown names, non-scalar tensors, values no
    float can hold, losses on two devices or no loss at all, and ``TypeError`` for values
    that are not real numbers (``bool`` and complex values included).
    """
    values = _order(losses, names)
    device: torch.device | None = None
    converted: list[Tensor | float | None] | None = None
    numbers = 0
    for i, value in enumerate(values):
        if isinstance(value, Tensor):
            if value.dim() or not value.dtype.is_floating_point:
                value = _scalar_tensor(value, names[i])
                converted = converted or list(values)
                converted[i] = value
            if device is None:
                device = value.device
            elif value.device != device:
                first = next(j for j, v in enumerate(values) if isinstance(v, Tensor))
                raise ValueError(
                    f"Losses should all live on one device. Found `{names[first]}` on {device} "
                    f"and `{names[i]}` on {value.device}."
                )
        elif value is not None:
            numbers += 1
            if type(value) is not float:
                converted = converted or list(values)
                converted[i] = _host_float(value, names[i])
    if converted is not None:
        values = tuple(converted)
    present = tuple(v is not None for v in values)
    all_present = all(present)
    if not all_present and not any(present):
        raise ValueError(
            f"Parameter `losses` should hold at least one of {list(names)}. Found none."
        )
    return LossBatch(values, present, all_present, device, numbers > 0 and device is not None)


def _order(losses: Losses, names: tuple[str, ...]) -> tuple[LossValue, ...]:
    if type(losses) is list or type(losses) is tuple:  # the common case, checked first
        if len(losses) == len(names):
            return tuple(losses)
    elif isinstance(losses, Mapping):
        if len(losses) == len(names):
            try:
                return tuple(losses[n] for n in names)
            except KeyError:
                pass
        unknown = [k for k in losses if k not in names]
        if unknown:
            raise ValueError(
                f"Parameter `losses` should be keyed by the declared names {list(names)}. "
                f"Found unknown names {unknown}."
            )
        return tuple(losses.get(n) for n in names)
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                "Parameter `losses` as a tensor should be 1-D (one value per loss). "
                f"Found shape {tuple(losses.shape)}."
            )
        losses = tuple(losses.unbind())
    elif isinstance(losses, (str, bytes)) or not isinstance(losses, Sequence):
        raise TypeError(
            "Parameter `losses` should be a sequence or a mapping of scalar losses. "
            f"Found `losses` of type {type(losses).__name__}."
        )
    if len(losses) != len(names):
        raise ValueError(
            f"Parameter `losses` should hold {len(names)} values (one per declared loss). "
            f"Found {len(losses)} values."
        )
    return tuple(losses)


def _scalar_tensor(value: Tensor, name: str) -> Tensor:
    """A real 0-dim view of a one-element tensor (integer dtypes allowed)."""
    if value.numel() != 1:
        raise ValueError(
            f"Loss `{name}` should be a scalar (0-dim) tensor. Found shape {tuple(value.shape)}."
        )
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"Loss `{name}` should be real-valued. Found dtype {value.dtype}.")
    return value.reshape(())  # a 0-dim view (of itself when already 0-dim)


def _host_float(value: object, name: str) -> float:
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"Loss `{name}` should be a scalar. Found shape {value.shape}.")
        value = value.item()  # one element, whatever the shape
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Loss `{name}` should be a float, a NumPy scalar, a 0-dim tensor or None. "
            f"Found {type(value).__name__}."
        )
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"Loss `{name}` should fit in a float. Found `{name} = {value}`."
        ) from None


def constant_vector(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """The vector ``values`` on ``device``, built once per (values, device, dtype) and reused:
    a hyperparameter vector copied to an accelerator at every step would make the host wait
    for the copy. Under ``torch.compile`` the tensor is built in the traced graph instead (no
    cache for Dynamo to bypass). The result is shared: never modify it in place.

    Example:
        >>> constant_vector((0.5, 2.0), torch.device("cpu"), torch.float64)
        tensor([0.5000, 2.0000], dtype=torch.float64)
    """
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_vector(values, device, dtype)


@functools.lru_cache(maxsize=64)
def _cached_vector(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(values, dtype=dtype, device=device)
