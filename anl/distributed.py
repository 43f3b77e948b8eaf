"""Cross-rank sums and means of detached values, so that every rank computes the same weights.

Under data parallelism each rank sees its own shard of the batch, so its loss values differ
from the other ranks'. Averaging them with one ``all_reduce`` before the weight update gives
every rank the global-batch losses ``L_i = (1/K) sum_k L_i^(k)`` (exact when the shards have
equal size, as DistributedDataParallel assumes), hence identical weights on every rank. The
reduction is enqueued on the device's stream: it never synchronises host and device. The same
``all_reduce`` without the division (:func:`sum_across_ranks`) adds up counts, e.g. of correctly
classified points in a sharded evaluation.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_ranks(values: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Return the element-wise sum of ``values`` over all ranks (``values`` unchanged when alone).

    ``values`` itself is left untouched: the reduction runs on a copy. With the NCCL backend a
    CPU tensor is moved to the current CUDA device for the reduction and moved back, so
    host-valued counts and losses work too.
    """
    if not is_distributed():
        return values
    reduced = values.clone()
    backend = dist.get_backend(group)
    if backend == "nccl" and reduced.device.type != "cuda":
        on_device = reduced.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM, group=group)
        return on_device.to(values.device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
    return reduced


def mean_across_ranks(values: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Return the element-wise mean of ``values`` over all ranks (``values`` unchanged when alone).

    :func:`sum_across_ranks` divided by the world size.
    """
    if not is_distributed():
        return values
    return sum_across_ranks(values, group) / dist.get_world_size(group)
