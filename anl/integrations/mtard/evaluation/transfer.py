"""Transfer attacks crafted once per surrogate and scored on any number of models.

A transfer example depends on the surrogate (the adversarial teacher in the paper) and the
point only, so a reproduction crafts them once (:func:`craft_transfer`, per rank shard under
``torch.distributed``, joined by :func:`merge_transfer`) and
:func:`~.robustness.evaluate` scores them on every student (``transfer_examples``), with
exactly the numbers it would get by crafting them itself.

Crafted examples are data read back from a file, so they are checked before they are scored
(:func:`transfer_problems`): one for every evaluated point, each within the L-infinity ball of
radius ``eps`` around its clean point (up to :data:`BALL_TOLERANCE`) and in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.registry import make_attack
from ..data.registry import ImageData
from ..runtime.execution import in_memory_format, model_mode, resolve_memory_format
from ..runtime.optional import progress_bar
from .counting import AttackFn, indexed_batches, shard_indices

#: The slack of the eps-ball and [0, 1] checks of crafted examples: float32 rounding of
#: ``x +- eps`` (about 6e-8 near 1) is far below it, any real perturbation far above.
BALL_TOLERANCE = 1e-6
_CHUNK = 1024


class _Unqueried(nn.Module):
    """Stands for the target of a transfer attack, which is never queried."""

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never called
        raise RuntimeError("A transfer attack queried its target.")


def craft_transfer(
    surrogate: nn.Module,
    data: ImageData,
    attacks: Sequence[str],
    *,
    eps: float,
    n_examples: int | None,
    batch_size: int,
    device: torch.device,
    seed: int,
    attack_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    memory_format: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Transfer adversarial examples crafted once on ``surrogate`` for the first test points.

    Each attack is :func:`~.attacks.registry.make_attack` with the given settings, keyed by the
    same per-point seeds as :func:`evaluate` (the dataset index), so the examples are exactly
    those ``evaluate(..., ["transfer_pgd"], surrogate=...)`` would craft for any model: they
    depend on the surrogate only, and :func:`evaluate` scores them given as
    ``transfer_examples``. With ``rank`` and ``world_size``, only the shard
    ``indices[rank::world_size]`` is crafted (:func:`merge_transfer` joins the shards).
    ``memory_format`` is :func:`evaluate`'s (the surrogate runs in that layout). Returns
    ``{attack: {"x_adv": Tensor (CPU), "indices": the dataset indices of its rows,
    "settings": dict}}``.
    """
    indices = shard_indices(len(data), n_examples, rank, world_size)
    overrides = attack_overrides or {}
    built = {
        name: make_attack(name, eps=eps, seed=seed, surrogate=surrogate, **overrides.get(name, {}))
        for name in attacks
    }
    surrogate = in_memory_format(surrogate.to(device), resolve_memory_format(memory_format, device))
    out: dict[str, list[Tensor]] = {name: [] for name in attacks}
    batches = indexed_batches(data, indices, batch_size, device)
    total = math.ceil(indices.numel() / batch_size)
    target = _Unqueried()
    with model_mode(surrogate, "eval"):
        for x, y, ids in progress_bar(batches, desc="transfer", enabled=progress, total=total):
            for name, attack in built.items():
                out[name].append(attack(target, x, y, seeds=ids).cpu())
    return {
        name: {
            "x_adv": torch.cat(out[name]) if out[name] else torch.empty(0),  # empty: no point
            "indices": indices,
            "settings": built[name].settings,
        }
        for name in attacks
    }


def merge_transfer(shards: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The :func:`craft_transfer` outputs of every rank's shard as one, in dataset order."""
    merged = {}
    for name, first in shards[0].items():
        indices = torch.cat([shard[name]["indices"] for shard in shards])
        rows = [shard[name]["x_adv"] for shard in shards if shard[name]["x_adv"].numel()]
        x_adv = torch.cat(rows) if rows else torch.empty(0)
        order = torch.argsort(indices)
        merged[name] = {
            "x_adv": x_adv[order] if x_adv.numel() else x_adv,
            "indices": indices[order],
            "settings": first["settings"],
        }
    return merged


def crafted_rows(crafted: Mapping[str, Any]) -> AttackFn:
    """The attack that looks up the crafted example of each point by its dataset index."""
    x_adv_all, indices = crafted["x_adv"], crafted["indices"]
    size = int(indices.max()) + 1 if indices.numel() else 0
    row_of = torch.full((size,), -1, dtype=torch.long)
    row_of[indices] = torch.arange(indices.numel())

    def lookup(x: Tensor, y: Tensor, ids: Tensor) -> Tensor:
        rows = row_of[ids] if ids.numel() and int(ids.max()) < size else None
        if rows is None or bool((rows < 0).any()):
            raise ValueError(
                "Parameter `transfer_examples` should hold an example for every evaluated "
                f"point. Found none for some of the dataset indices {ids.tolist()}."
            )
        return x_adv_all[rows].to(x.device)

    return lookup


def transfer_problems(
    crafted: Mapping[str, Any],
    data: Any,
    *,
    eps: float,
    indices: Tensor,
    exact: bool = False,
) -> list[str]:
    """What is wrong with one attack's crafted examples (an entry of :func:`craft_transfer`'s
    result) for scoring the points ``indices`` of ``data`` at ``eps``; empty when nothing is.

    The entry must hold ``x_adv`` (floating, one row per entry of ``indices``, each of the
    points' shape) and ``indices`` (1-D integers); every point of ``indices`` must have a row
    (with ``exact``, the entry's indices must be ``indices`` themselves: same count and
    order), and each such row must be finite, lie in [0, 1] and within ``eps`` of its clean
    point in the L-infinity norm, up to :data:`BALL_TOLERANCE`. ``data`` is an
    :class:`~..data.registry.ImageData` or a pair ``(x, y)`` of tensors.
    """
    x_adv, ids = crafted.get("x_adv"), crafted.get("indices")
    if not isinstance(x_adv, Tensor) or not isinstance(ids, Tensor):
        return ["it does not hold the tensors `x_adv` and `indices`"]
    if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        return [f"its `indices` are not 1-D integers ({ids.dtype}, shape {tuple(ids.shape)})"]
    ids = ids.to("cpu", torch.long)
    if x_adv.ndim < 1 or x_adv.shape[0] != ids.numel():
        rows = x_adv.shape[0] if x_adv.ndim else 0
        return [f"it holds {ids.numel()} indices for {rows} examples"]
    if exact and not torch.equal(ids, indices):
        return [
            f"it holds examples for {ids.numel()} points ({_span(ids)}); the evaluation is on "
            f"{indices.numel()} ({_span(indices)})"
        ]
    size = max(
        int(ids.max()) + 1 if ids.numel() else 0, int(indices.max()) + 1 if indices.numel() else 0
    )
    row_of = torch.full((size,), -1, dtype=torch.long)
    if ids.numel():
        if int(ids.min()) < 0:
            return ["its `indices` hold negative values"]
        row_of[ids] = torch.arange(ids.numel())
    rows = row_of[indices] if indices.numel() else indices
    if bool((rows < 0).any()):
        missing = indices[rows < 0]
        return [
            f"it holds no example for {missing.numel()} of the evaluated points ({_span(missing)})"
        ]
    if not x_adv.is_floating_point():
        return [f"its examples are not floating point ({x_adv.dtype})"]
    problems = []
    outside_box = outside_ball = 0
    largest = 0.0
    for start in range(0, rows.numel(), _CHUNK):
        chunk = indices[start : start + _CHUNK]
        clean = _points(data, chunk)
        adv = x_adv[rows[start : start + _CHUNK]].to("cpu", torch.float32)
        if adv.shape[1:] != clean.shape[1:]:
            return [
                f"its examples have shape {tuple(x_adv.shape[1:])}, the points "
                f"{tuple(clean.shape[1:])}"
            ]
        flat_adv = adv.reshape(adv.shape[0], -1)
        finite = torch.isfinite(flat_adv).all(dim=1)
        in_box = finite & (flat_adv >= -BALL_TOLERANCE).all(dim=1)
        in_box &= (flat_adv <= 1 + BALL_TOLERANCE).all(dim=1)
        distance = (flat_adv - clean.reshape(clean.shape[0], -1)).abs().amax(dim=1)
        distance = torch.where(finite, distance, torch.full_like(distance, math.inf))
        outside_box += int((~in_box).sum())
        outside_ball += int((distance > eps + BALL_TOLERANCE).sum())
        if distance.numel():
            largest = max(largest, float(distance.max()))
    if outside_box:
        problems.append(f"{outside_box} of its {rows.numel()} examples are not in [0, 1]")
    if outside_ball:
        problems.append(
            f"{outside_ball} of its {rows.numel()} examples lie outside the eps-ball around "
            f"their points (largest |x_adv - x| = {largest:.4g} > eps = {eps:.4g})"
        )
    return problems


def _points(data: Any, ids: Tensor) -> Tensor:
    """The clean points ``ids`` of ``data`` as float32 in [0, 1] on the CPU, as
    :func:`~.counting.indexed_batches` gives them."""
    if isinstance(data, tuple | list):
        return data[0][ids.to(data[0].device)].to("cpu", torch.float32)
    return data.images[ids].float().div_(255)


def _span(ids: Tensor) -> str:
    if ids.numel() == 0:
        return "none"
    shown = ids[:5].tolist()
    return "dataset indices " + ", ".join(map(str, shown)) + (", ..." if ids.numel() > 5 else "")
