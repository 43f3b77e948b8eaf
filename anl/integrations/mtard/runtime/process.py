"""The processes of a run: the process group under ``torchrun``, this process's rank and device.

See ``docs/distributed.md``. Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment)
:func:`distributed_session` joins the process group (NCCL on GPUs, Gloo on CPUs,
:func:`distributed_backend`) for the duration of a block, one GPU per ``LOCAL_RANK``
(:func:`process_device`), and leaves it at the end; a group that the caller initialised is
used as it is. :class:`Ranks` says who this process is; everything else here is written once
for every stage that runs on several ranks:

- :func:`node_main_first`: one process per node runs a loader first (it may download a
  dataset), the others wait and then read what it fetched;
- :func:`agree`: the ranks decide from the files of a shared directory, so they must see the
  same thing; a disagreement is an error on every rank;
- :func:`broadcast_buffers`: rank 0's BatchNorm statistics copied to every replica.

Sums over ranks are :func:`anl.distributed.sum_across_ranks`, means
:func:`anl.distributed.mean_across_ranks`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``world_size`` processes (``0`` of ``1`` when alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """Whether several processes share the work."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0, the one that writes files, logs and draws progress bars."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.enabled:
            dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (``[obj]`` for one process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def current_ranks() -> Ranks:
    """The :class:`Ranks` of the initialised process group, or a lone process's."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size())
    return Ranks()


def launched_by_torchrun() -> bool:
    """Whether the environment holds a process group's coordinates (``torchrun``, or any
    launcher that sets ``RANK`` and ``WORLD_SIZE`` for ``init_method="env://"``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0 of the process group, or of the launcher's environment, or a lone process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def local_rank(ranks: Ranks) -> int | None:
    """This process's index on its node (``LOCAL_RANK``); ``None`` for a single process."""
    if not ranks.enabled:
        return None
    return int(os.environ.get("LOCAL_RANK", ranks.rank))


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


def require_device(device: torch.device) -> torch.device:
    """``device`` if this machine has it; else a ``RuntimeError`` that says what is missing.

    A CPU is always there; an accelerator (``cuda``, ``xpu``, ``mps``, ...) must be
    available to this PyTorch build, and an index must be below its device count.

    Example:
        >>> require_device(torch.device("cpu"))
        device(type='cpu')
    """
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if device.type == "cpu" or not callable(is_available):
        return device
    if not is_available():
        built = device.type != "cuda" or torch.backends.cuda.is_built()
        raise RuntimeError(
            f"Device '{device}' is not available: "
            + (
                f"torch.{device.type}.is_available() is False on this machine"
                if built
                else f"this PyTorch ({torch.__version__}) is built without CUDA"
            )
            + " (use the device 'cpu' or 'auto')."
        )
    count = getattr(backend, "device_count", None)
    if device.index is not None and callable(count) and device.index >= count():
        raise RuntimeError(
            f"Device '{device}' is not available: this machine has {count()} {device.type} "
            f"device(s), indexed from 0."
        )
    return device


def process_device(device: str, ranks: Ranks) -> torch.device:
    """:func:`resolve_device` for this process's ``LOCAL_RANK``, checked by
    :func:`require_device`; a CUDA device is made the current one (one GPU per process)."""
    resolved = require_device(resolve_device(device, local_rank(ranks)))
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
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
def distributed_session(device: str = "auto") -> Iterator[Ranks]:
    """Join the process group that ``torchrun`` describes, for the duration of the block.

    Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) and with
    ``torch.distributed`` not yet initialised, calls ``init_process_group(backend,
    init_method="env://")`` with :func:`distributed_backend` of ``device`` (NCCL on GPUs, Gloo
    on CPUs; for NCCL the process's GPU, :func:`resolve_device` of ``LOCAL_RANK``, is selected
    first) and destroys the group on exit. A group initialised by the caller is used as it is
    and left alone; a plain process runs alone. Yields the :class:`Ranks`.

    Example:
        >>> with distributed_session("cpu") as ranks:  # not under torchrun: a lone process
        ...     (ranks.rank, ranks.world_size)
        (0, 1)
    """
    initialised = False
    if launched_by_torchrun() and dist.is_available() and not dist.is_initialized():
        backend = distributed_backend(device)
        if backend == "nccl":
            index = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
            torch.cuda.set_device(resolve_device(device, index))
        dist.init_process_group(backend=backend, init_method="env://")
        initialised = True
    try:
        yield current_ranks()
    finally:
        if initialised and dist.is_initialized():
            dist.destroy_process_group()


def node_main_first(load: Callable[[], T], ranks: Ranks) -> T:
    """``load()`` on every rank, by one process per node first (it may download what is
    missing) and by the others once it is done, so that they read its files."""
    first = local_rank(ranks) in (None, 0)
    if first:
        result = load()
    ranks.barrier()
    if not first:
        result = load()
    return result


def agree(value: Any, what: str, ranks: Ranks) -> None:
    """Raise on every rank when the ranks see different ``value`` (a no-op for one process):
    they decide from the files of a run or results directory, which must therefore be on a
    file system that every rank shares. ``what`` names the value in the message."""
    seen = ranks.gather_objects(value)
    if any(v != seen[0] for v in seen):
        raise ValueError(
            f"The ranks disagree on {what} (rank k sees {seen}[k]): under torch.distributed the "
            "directory must be on a file system that every rank shares."
        )


def broadcast_buffers(module: nn.Module, ranks: Ranks) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DistributedDataParallel broadcasts rank 0's buffers before each forward with gradients,
    so after the last forward of an epoch each rank holds its own statistics update. This
    makes the replicas identical again before validation and checkpoints (one broadcast per
    dtype and device, a no-op for a single process).
    """
    if not ranks.enabled:
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


def command_line() -> str:
    """This process's command line as a user would type it: ``anl-mtard ...`` also when it
    was started as ``python -m anl.integrations.mtard`` (recorded in the results)."""
    program = Path(sys.argv[0]).name
    if program in ("__main__.py", "-c"):  # python -m anl.integrations.mtard(.cli)
        program = "anl-mtard"
    return shlex.join([program, *sys.argv[1:]])
