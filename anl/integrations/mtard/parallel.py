"""The process group and device of a training process (data parallelism under ``torchrun``).

See ``docs/distributed.md``. Under ``torchrun`` :func:`~.loop.train` joins the process group
itself (:func:`distributed_session`: NCCL on GPUs, Gloo on CPUs, one GPU per ``LOCAL_RANK``,
:func:`resolve_device`) and leaves it at the end. The student is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, each rank reads a disjoint shard of every
epoch's permutation, and ``batch_size`` stays the *global* batch: each rank takes
``batch_size // world_size`` images (``batch_size`` must be divisible by ``world_size``), so
the averaged gradient, the balancer's averaged losses and hence the learning rate mean the same
as in one process. The teachers are replicated, frozen. Each rank attacks its own shard through
the DDP module: ``torch.autograd.grad`` with respect to the input never runs the parameters'
gradient-accumulation nodes, where DDP's all-reduce hooks live, and DDP's pre-forward buffer
broadcast makes every rank attack the same model. BatchNorm keeps per-rank batch statistics
with rank 0's running statistics (plain DDP; ``sync_bn`` for SyncBatchNorm on GPUs), and the
buffers are re-broadcast from rank 0 at the end of each epoch (:func:`_broadcast_buffers`).
Only rank 0 writes files; validation is sharded exactly and its counts summed over ranks
(:meth:`_Dist.sum_`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["distributed_backend", "distributed_session", "resolve_device"]


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (moved to the current CUDA device for NCCL)."""
        if not self.enabled:
            return tensor
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_device)
            tensor.copy_(on_device)
        else:
            dist.all_reduce(tensor)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _dist_info() -> _Dist:
    if dist.is_available() and dist.is_initialized():
        return _Dist(rank=dist.get_rank(), world_size=dist.get_world_size())
    return _Dist()


def _launched_by_torchrun() -> bool:
    """Whether the environment holds a process group's coordinates (``torchrun``, or any
    launcher that sets ``RANK`` and ``WORLD_SIZE`` for ``init_method="env://"``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _is_main_process() -> bool:
    """Rank 0 of the process group, or of the launcher's environment, or a lone process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _local_rank(ddp: _Dist) -> int | None:
    """This process's index on its node (``LOCAL_RANK``); None for a single process."""
    if not ddp.enabled:
        return None
    return int(os.environ.get("LOCAL_RANK", ddp.rank))


def resolve_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device of this process.

    ``"auto"`` is ``cuda:<local_rank>`` (modulo the number of GPUs) when CUDA is available and
    ``cpu`` otherwise; ``"cuda"`` without an index is ``cuda:<local_rank>``; anything else is
    used as given. ``local_rank`` is ``LOCAL_RANK`` under ``torchrun`` and ``None`` (index 0)
    for a single process.

    Example:
        >>> resolve_device("cpu", local_rank=3)
        device(type='cpu')
        >>> resolve_device("cuda", local_rank=3)
        device(type='cuda', index=3)
    """
    index = local_rank or 0
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", index % torch.cuda.device_count())
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", index)
    return resolved


def distributed_backend(device: str = "auto") -> str:
    """``"nccl"`` for CUDA devices (``"auto"`` when CUDA is available), ``"gloo"`` otherwise.

    Example:
        >>> distributed_backend("cpu")
        'gloo'
    """
    if device == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[_Dist]:
    """Join the process group that ``torchrun`` describes, for the duration of the block.

    Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) and with
    ``torch.distributed`` not yet initialised, calls ``init_process_group(backend,
    init_method="env://")`` with :func:`distributed_backend` of ``device`` (NCCL on GPUs, Gloo
    on CPUs; for NCCL the process's GPU, :func:`resolve_device` of ``LOCAL_RANK``, is selected
    first) and destroys the group on exit. A group initialised by the caller is used as it is
    and left alone; a plain process runs alone. Yields the rank and world size.

    Example:
        >>> with distributed_session("cpu") as ddp:  # not under torchrun: a lone process
        ...     (ddp.rank, ddp.world_size)
        (0, 1)
    """
    initialised = False
    if _launched_by_torchrun() and dist.is_available() and not dist.is_initialized():
        backend = distributed_backend(device)
        if backend == "nccl":
            local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
            torch.cuda.set_device(resolve_device(device, local_rank))
        dist.init_process_group(backend=backend, init_method="env://")
        initialised = True
    try:
        yield _dist_info()
    finally:
        if initialised and dist.is_initialized():
            dist.destroy_process_group()


def _broadcast_buffers(module: nn.Module, ddp: _Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DistributedDataParallel broadcasts rank 0's buffers before each forward with gradients,
    so after the last forward of an epoch each rank holds its own statistics update. This
    makes the replicas identical again before validation and checkpoints (one broadcast per
    dtype, a no-op for a single process).
    """
    if not ddp.enabled:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for buffer in module.buffers():
        groups.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    nccl = dist.get_backend() == "nccl"
    for (_, device), buffers in groups.items():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        if nccl and device.type != "cuda":
            flat = flat.to(torch.device("cuda", torch.cuda.current_device()))
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for b in buffers:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
