"""The counting kernel of every evaluation, and the batches it counts over.

:func:`count_correct` counts the correct clean and adversarial predictions of a model over
batches of ``(x, y, dataset index)`` (:func:`indexed_batches`) and sums them over ranks;
:func:`w_robust` is the paper's Eq. 12 on the resulting accuracies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from anl.distributed import sum_across_ranks

from ..checks import check_int, fail
from ..data.loader import BatchLoader
from ..data.registry import ImageData

#: ``attack(x, y, ids) -> x_adv`` for a batch, ``ids`` the points' dataset indices (CPU).
AttackFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def w_robust(clean: float, robust: float, weight: float = 0.5) -> float:
    """Weighted robust accuracy (paper Eq. 12): ``weight * clean + (1 - weight) * robust``."""
    return weight * clean + (1.0 - weight) * robust


@dataclass(frozen=True)
class AttackCounts:
    """What one attack did to the points it ran on.

    Attributes:
        n: the points attacked (all of them, or the first ones for a limited attack).
        clean: those correct on the clean input.
        robust: those correct on the clean *and* the adversarial input.
        adv: those correct on the adversarial input.
    """

    n: int
    clean: int
    robust: int
    adv: int

    def accuracies(self) -> tuple[float, float]:
        """``(clean, robust)`` accuracy over the attacked points (NaN when there are none)."""
        if not self.n:
            return float("nan"), float("nan")
        return self.clean / self.n, self.robust / self.n


@dataclass(frozen=True)
class Counts:
    """Correct predictions of one scoring pass (:func:`count_correct`), summed over ranks.

    Attributes:
        n: the points scored; ``clean``: those correct on the clean input.
        attacks: the counts of each attack.
        reduced: whether the counts were summed over the ranks of a process group.
    """

    n: int
    clean: int
    attacks: dict[str, AttackCounts]
    reduced: bool


def count_correct(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    attacks: Mapping[str, AttackFn],
    *,
    device: torch.device,
    limits: Mapping[str, int] | None = None,
    world_size: int = 1,
) -> Counts:
    r"""Count the correct clean and adversarial predictions of ``model`` (run as it is: the
    caller sets its mode and layout) over ``batches`` of ``(x, y, ids)``.

    Over the points :math:`i` of the batches, and for each attack :math:`A` over those it
    runs on:

    .. math::

        \text{clean} = \sum_i [f(x_i) = y_i], \quad
        \text{robust}_A = \sum_i [f(x_i) = y_i]\,[f(A(x_i)) = y_i], \quad
        \text{adv}_A = \sum_i [f(A(x_i)) = y_i],

    from which :meth:`AttackCounts.accuracies` and :func:`w_robust` (paper Eq. 12) follow.
    For each batch the clean prediction is computed once (without a graph), then each attack
    of ``attacks`` gives ``x_adv`` on the points whose dataset index is below its entry of
    ``limits`` (all points without one). When ``torch.distributed`` is initialised and
    ``world_size > 1`` (each rank holds its own shard of the points), the counts are summed
    over the ranks (:func:`anl.distributed.sum_across_ranks`). The counts stay on ``device``
    until the end: no host-device synchronisation per batch.
    """
    names = list(attacks)
    limits = dict(limits or {})
    # [points, clean correct, then per attack: robust, adv correct, attacked, clean attacked]
    counts = torch.zeros(2 + 4 * len(names), dtype=torch.int64, device=device)
    for x, y, ids in batches:
        with torch.no_grad():
            clean_ok = model(x).argmax(dim=1) == y
        counts[0] += y.shape[0]
        counts[1] += clean_ok.sum()
        for k, name in enumerate(names):
            xs, ys, seeds, ok = x, y, ids, clean_ok
            if name in limits:
                keep = ids < limits[name]  # ids live on the CPU: no device sync
                if not keep.any():
                    continue
                if not keep.all():
                    on_device = keep.to(device)
                    xs, ys, seeds, ok = x[on_device], y[on_device], ids[keep], ok[on_device]
            x_adv = attacks[name](xs, ys, seeds)
            with torch.no_grad():
                adv_ok = model(x_adv).argmax(dim=1) == ys
            counts[2 + 4 * k] += (adv_ok & ok).sum()
            counts[3 + 4 * k] += adv_ok.sum()
            counts[4 + 4 * k] += ys.shape[0]
            counts[5 + 4 * k] += ok.sum()
    reduced = world_size > 1 and dist.is_available() and dist.is_initialized()
    if reduced:
        counts = sum_across_ranks(counts)
    values = counts.tolist()
    per_attack = {
        name: AttackCounts(
            n=values[4 + 4 * k],
            clean=values[5 + 4 * k],
            robust=values[2 + 4 * k],
            adv=values[3 + 4 * k],
        )
        for k, name in enumerate(names)
    }
    return Counts(n=values[0], clean=values[1], attacks=per_attack, reduced=reduced)


def indexed_batches(
    data: Any, indices: Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y, ids)`` for the samples of ``data`` at ``indices``, in order.

    ``data`` is an :class:`~.data.registry.ImageData` or a pair ``(x, y)`` of tensors; ``x``
    and ``y`` come on ``device`` (``x`` float in [0, 1]), ``ids`` (the dataset indices of the
    batch, which key the per-point attack randomness) on the CPU.
    """
    if indices.numel() == 0:  # an empty shard (more ranks than points) has no batch
        return
    if isinstance(data, tuple | list):
        images, labels = data
        for start in range(0, indices.numel(), batch_size):
            ids = indices[start : start + batch_size]
            yield images[ids].to(device).float(), labels[ids].to(device), ids
        return
    loader = BatchLoader(data.subset(indices), batch_size, device=device)
    for start, (x, y) in zip(range(0, indices.numel(), batch_size), loader, strict=True):
        yield x, y, indices[start : start + batch_size]


def check_data(data: Any) -> tuple[int, str | None, float | None]:
    """Return ``(n, dataset name or None, default eps or None)`` after validating ``data``."""
    if isinstance(data, tuple | list):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise ValueError(
                "Parameter `data` should be an ImageData or a pair of tensors (x, y). "
                f"Found a {type(data).__name__} of length {len(data)}."
            )
        x, y = data
        if x.dim() != 4 or not x.is_floating_point() or y.shape != (x.shape[0],):
            raise ValueError(
                "Parameter `data` should be (x float (N, C, H, W) in [0, 1], y int64 (N,)). "
                f"Found `x.shape = {tuple(x.shape)}`, `y.shape = {tuple(y.shape)}`."
            )
        return int(x.shape[0]), None, None
    if not isinstance(data, ImageData):
        raise ValueError(
            "Parameter `data` should be an ImageData or a pair of tensors (x, y). "
            f"Found `data` of type {type(data).__name__}."
        )
    return len(data), data.info.name, float(data.info.default_eps)


def shard_indices(n_total: int, n_examples: int | None, rank: int, world_size: int) -> Tensor:
    """The dataset indices this rank scores: ``arange(n)[rank::world_size]``."""
    check_int("world_size", world_size, minimum=1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        fail("rank", rank, f"an integer in [0, {world_size - 1}]")
    if n_examples is not None:
        check_int("n_examples", n_examples, minimum=1)
    n = n_total if n_examples is None else min(n_examples, n_total)
    return torch.arange(n)[rank::world_size]
