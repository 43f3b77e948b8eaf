"""Cross-rank sums and means of detached values, so that every rank computes the same weights.

Under data parallelism each rank sees its own shard of the batch, so its loss values differ
from the other ranks'. Averaging them with one ``all_reduce`` before the weight update gives
every rank the global-batch losses ``L_i = (1/K) sum_k L_i^(k)`` (exact when the shards have
equal size, as DistributedDataParallel assumes), hence identical weights on every rank. The
reduction is enqueued on the device's stream: it never synchronises host and device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = [
    "device_mean_across_ranks",
    "host_mean_across_ranks",
    "is_distributed",
    "mean_across_ranks",
    "sum_across_ranks",
]


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_ranks(values: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Return the element-wise sum of ``values`` over all ranks (a copy; ``values`` unchanged).

    With the NCCL backend a CPU tensor is moved to the current CUDA device for the reduction
    and moved back, so host values work too. Alone, it returns a copy of ``values``.
    """
    reduced = values.clone()
    if not is_distributed():
        return reduced
    if dist.get_backend(group) == "nccl" and reduced.device.type != "cuda":
        on_device = reduced.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM, group=group)
        return on_device.to(values.device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
    return reduced


def mean_across_ranks(values: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Return the element-wise mean of ``values`` over all ranks (``values`` itself when alone)."""
    if not is_distributed():
        return values
    return sum_across_ranks(values, group) / dist.get_world_size(group)


def host_mean_across_ranks(
    values: Sequence[float], present: Sequence[bool] | None
) -> tuple[list[float], tuple[bool, ...] | None]:
    """Each loss averaged over the ranks that computed it (one ``all_reduce``).

    ``present`` marks the losses given on this rank (``None``: all). Returns the means (NaN
    for a loss no rank computed) and the losses computed on some rank (``None``: all, which
    every rank sees alike since the counts are reduced too).
    """
    n = len(values)
    here = present if present is not None else (True,) * n
    local = [v if p else 0.0 for v, p in zip(values, here, strict=True)]
    packed = sum_across_ranks(torch.tensor(local + [float(p) for p in here], dtype=torch.float64))
    sums, counts = packed[:n].tolist(), packed[n:].tolist()
    means = [s / c if c > 0 else math.nan for s, c in zip(sums, counts, strict=True)]
    seen = tuple(c > 0 for c in counts)
    return means, None if all(seen) else seen


def device_mean_across_ranks(
    values: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`host_mean_across_ranks` on the device, without a sync: the returned mask is
    always a tensor (whether it is all True is unknown without reading it), so that every
    rank runs the same arithmetic."""
    n = values.shape[0]
    here = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    packed = sum_across_ranks(torch.cat([torch.where(here > 0, values, 0.0), here]))
    sums, counts = packed[:n], packed[n:]
    means = sums / torch.where(counts > 0, counts, torch.ones_like(counts))
    return torch.where(counts > 0, means, torch.full_like(means, math.nan)), counts > 0
