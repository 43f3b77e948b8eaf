"""Transfer attacks crafted once per surrogate and scored on any number of models.

A transfer example depends on the surrogate (the adversarial teacher in the paper) and the
point only, so a reproduction crafts them once (:func:`craft_transfer`, per rank shard under
``torch.distributed``, joined by :func:`merge_transfer`) and
:func:`~.robustness.evaluate` scores them on every student (``transfer_examples``), with
exactly the numbers it would get by crafting them itself.
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
