"""Turn user loss values (Python floats, NumPy scalars, 0-dim tensors) into one detached tensor.

The weighting rules compute everything in torch so that floats, NumPy scalars and tensors give
bit-identical weights. Host values (floats and NumPy scalars) become a CPU float64 tensor;
as soon as one value is a tensor, the others are placed on that tensor's device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

LossValue = float | np.floating | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class PreparedLosses:
    """Losses in declared order: ``graphs`` keep autograd, ``values`` is detached."""

    graphs: tuple[torch.Tensor | float, ...]
    values: torch.Tensor
    on_host: bool


def parse_names(losses: int | Sequence[str]) -> tuple[str, ...]:
    """Names of the losses from a count ``N`` (``"0"`` … ``"N-1"``) or a sequence of names."""
    if isinstance(losses, bool) or not isinstance(losses, (numbers.Integral, Sequence)):
        raise ValueError(
            "Parameter `losses` should be a positive int or a sequence of distinct names. "
            f"Found `losses = {losses!r}`."
        )
    if isinstance(losses, numbers.Integral):
        if losses < 1:
            raise ValueError(
                f"Parameter `losses` should be a positive number of losses. Found `losses = {losses}`."
            )
        return tuple(str(i) for i in range(int(losses)))
    if isinstance(losses, str):
        raise ValueError(
            "Parameter `losses` should be a sequence of names, not a single string. "
            f"Found `losses = {losses!r}`."
        )
    names = tuple(losses)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            "Parameter `losses` should be a non-empty sequence of non-empty strings. "
            f"Found `losses = {names!r}`."
        )
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(
            f"Parameter `losses` should hold distinct names. Found duplicates {duplicates}."
        )
    return names


def order_losses(losses: Sequence[LossValue] | Mapping[str, LossValue], names: tuple[str, ...]):
    """Return the loss values as a tuple in declared order, checking count and names."""
    if isinstance(losses, Mapping):
        missing = [n for n in names if n not in losses]
        unknown = [k for k in losses if k not in names]
        if missing or unknown:
            raise ValueError(
                f"Parameter `losses` should be keyed by the declared names {list(names)}. "
                f"Found missing names {missing} and unknown names {unknown}."
            )
        return tuple(losses[n] for n in names)
    if isinstance(losses, (str, bytes)) or not isinstance(losses, Sequence):
        if isinstance(losses, torch.Tensor) and losses.dim() == 1:
            losses = tuple(losses.unbind())
        else:
            raise ValueError(
                "Parameter `losses` should be a sequence or a mapping of scalar losses. "
                f"Found `losses` of type {type(losses).__name__}."
            )
    if len(losses) != len(names):
        raise ValueError(
            f"Parameter `losses` should hold {len(names)} values (one per declared loss). "
            f"Found {len(losses)} values."
        )
    return tuple(losses)


def _scalar_tensor(value: torch.Tensor, name: str) -> torch.Tensor:
    if value.numel() != 1:
        raise ValueError(
            f"Loss `{name}` should be a scalar (0-dim) tensor. Found shape {tuple(value.shape)}."
        )
    if value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"Loss `{name}` should be real-valued. Found dtype {value.dtype}.")
    return value.reshape(())


def _host_float(value: object, name: str) -> float:
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"Loss `{name}` should be a scalar. Found shape {value.shape}.")
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Loss `{name}` should be a float, a NumPy scalar or a 0-dim tensor. "
            f"Found {type(value).__name__}."
        )
    return float(value)


def prepare(
    ordered: tuple[LossValue, ...], names: tuple[str, ...], dtype: torch.dtype
) -> PreparedLosses:
    """Detach and stack the losses into a ``(N,)`` tensor of ``dtype`` without any host sync."""
    device = next((v.device for v in ordered if isinstance(v, torch.Tensor)), None)
    if device is None:
        floats = [_host_float(v, n) for v, n in zip(ordered, names, strict=True)]
        values = torch.tensor(floats, dtype=dtype)
        return PreparedLosses(graphs=tuple(floats), values=values, on_host=True)
    graphs = []
    for value, name in zip(ordered, names, strict=True):
        if isinstance(value, torch.Tensor):
            graphs.append(_scalar_tensor(value, name))
        else:
            graphs.append(torch.tensor(_host_float(value, name), device=device))
    values = torch.stack([g.detach().to(device=device, dtype=dtype) for g in graphs])
    return PreparedLosses(graphs=tuple(graphs), values=values, on_host=False)


def first_bad_value(values: torch.Tensor, names: tuple[str, ...]) -> tuple[str, float] | None:
    """The first loss (name, value) that is non-finite or negative, for eager host errors."""
    for name, value in zip(names, values.tolist(), strict=True):
        if not math.isfinite(value) or value < 0:
            return name, value
    return None
