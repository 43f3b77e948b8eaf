"""State dicts: unwrapping, prefix stripping and strict loading with readable errors.

A checkpoint that does not fit its network is the most common failure when loading teachers
from other projects; :func:`check_state_dict` names the missing keys, the unexpected keys and
the shape mismatches (and hints at a wrapper's key prefix) instead of PyTorch's long listing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 10


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DataParallel``/``DistributedDataParallel``/``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove leading ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) from keys."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = key
        while new.startswith(_PREFIXES):
            new = new.split(".", 1)[1]
        if new in out:
            raise ValueError(
                f"State dict keys collide after removing {_PREFIXES} prefixes: {key!r} -> {new!r}."
            )
        out[new] = value
    return out


def _listing(label: str, items: list[str]) -> str:
    """``"\n  <n> <label>: a, b, ..."`` with at most 10 items shown."""
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"\n  {len(items)} {label}: {shown}{more}"


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def check_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    source: str = "the state dict",
    target: str = "the model",
) -> dict[str, Tensor]:
    """Compare ``state_dict`` with ``model.state_dict()`` key by key and shape by shape.

    Returns a copy ready for ``model.load_state_dict(..., strict=True)``, in which:

    * missing ``*.num_batches_tracked`` entries (checkpoints of PyTorch < 0.4.1) are filled
      with the model's own counters;
    * entries for the model's non-persistent buffers (the input normalisation ``mean``/``std``
      that RobustBench's ``DMWideResNet`` saves) are dropped if their values equal the
      model's, and raise a ``ValueError`` naming both values otherwise.

    Works on meta tensors (keys and shapes only).

    Raises:
        ValueError: listing the missing keys, the unexpected keys and the shape mismatches
            (``name: expected (...), found (...)``), at most 10 of each.
    """
    expected = model.state_dict()
    sd = dict(state_dict)
    bad_values = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad_values:
        raise ValueError(
            f"{source} is not a state dict:" + _listing("non-tensor entries", bad_values)
        )
    extra_buffers = {n: b for n, b in model.named_buffers() if n not in expected}
    for key in [k for k in sd if k not in expected and k in extra_buffers]:
        ours, theirs = extra_buffers[key], sd.pop(key)
        same = ours.numel() == theirs.numel() and (
            ours.is_meta
            or theirs.is_meta
            or torch.allclose(
                ours.detach().flatten().double().cpu(),
                theirs.detach().flatten().double().cpu(),
                rtol=0.0,
                atol=1e-4,
            )
        )
        if not same:
            raise ValueError(
                f"{source} stores `{key} = {_values(theirs)}` but {target} uses "
                f"`{key} = {_values(ours)}` (input normalisation). Build the model with the "
                "statistics its weights were trained with, e.g. "
                "model_kwargs={'mean': ..., 'std': ...} or {'dataset': ...}."
            )
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = value.clone()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: expected {_shape(expected[k])}, found {_shape(sd[k])}"
        for k in expected
        if k in sd and _shape(sd[k]) != _shape(expected[k])
    ]
    if missing or unexpected or mismatched:
        message = f"{source} does not fit {target}:"
        if missing:
            message += _listing("missing keys", missing)
        if unexpected:
            message += _listing("unexpected keys", unexpected)
        if mismatched:
            message += _listing("shape mismatches", mismatched)
        message += _prefix_hint(missing, unexpected)
        raise ValueError(message)
    return sd


def _values(t: Tensor) -> tuple[float, ...] | str:
    if t.is_meta:
        return f"<meta {tuple(t.shape)}>"
    return tuple(round(float(v), 4) for v in t.detach().flatten().cpu()[:8])


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    if not missing or not unexpected:
        return ""
    heads = {k.split(".", 1)[0] for k in unexpected if "." in k}
    if len(heads) == 1:
        head = heads.pop()
        stripped = {k.split(".", 1)[1] for k in unexpected if "." in k}
        if stripped & set(missing):
            return f"\n  (the checkpoint's keys look prefixed with {head + '.'!r})"
    return ""


def load_state_dict_strict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    source: str = "the state dict",
    target: str = "the model",
) -> None:
    """:func:`check_state_dict`, then ``model.load_state_dict(..., strict=True)``."""
    model.load_state_dict(check_state_dict(model, state_dict, source=source, target=target))
