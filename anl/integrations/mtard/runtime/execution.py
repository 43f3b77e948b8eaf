"""How a network runs: its memory format, its train/eval mode, and the torch threads.

- :func:`resolve_memory_format` turns a ``memory_format`` setting (``"auto"``,
  ``"channels_last"``, ``"contiguous"``) into the layout of the networks and batches on a
  device, and :func:`in_memory_format` gives a network in that layout without touching the
  caller's;
- :func:`model_mode` sets train or eval mode for a block and restores every submodule's flag;
- :func:`torch_threads` sets ``torch.set_num_threads`` for a block, and
  :func:`deterministic_algorithms` torch's deterministic mode.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from ..checks import fail

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
"""Values of a ``memory_format`` setting (see :func:`resolve_memory_format`)."""

ModelMode = Literal["eval", "train"] | None


def resolve_memory_format(memory_format: str, device: torch.device | str) -> torch.memory_format:
    """The memory format of the networks and the batches on ``device``.

    ``"auto"`` is ``torch.channels_last`` on CPU, where it makes the MTARD step of the
    Fashion-MNIST CNNs markedly faster (``python -m benchmarks.step_options``; figures in
    ``docs/benchmarks.md``), and ``torch.contiguous_format`` on other devices (not measured
    there yet). The layout changes no result beyond float rounding.

    Example:
        >>> resolve_memory_format("auto", "cpu")
        torch.channels_last
        >>> resolve_memory_format("contiguous", "cpu")
        torch.contiguous_format
    """
    if memory_format not in MEMORY_FORMATS:
        fail("memory_format", memory_format, f"one of {list(MEMORY_FORMATS)}")
    if memory_format == "auto":
        memory_format = "channels_last" if torch.device(device).type == "cpu" else "contiguous"
    return torch.channels_last if memory_format == "channels_last" else torch.contiguous_format


def in_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """``model`` itself if every 4-D parameter and buffer is already in ``memory_format``,
    else a deep copy converted to it, so that the caller's model keeps its layout.

    Convolutions follow their weights' layout (a channels-last weight makes a channels-last
    convolution whatever the input's layout), so converting the model is what matters.

    Example:
        >>> conv = torch.nn.Conv2d(2, 4, 3)
        >>> converted = in_memory_format(conv, torch.channels_last)
        >>> converted is conv, converted.weight.is_contiguous(memory_format=torch.channels_last)
        (False, True)
        >>> in_memory_format(converted, torch.channels_last) is converted
        True
    """
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dim() != 4 or t.is_contiguous(memory_format=memory_format) for t in tensors):
        return model
    return copy.deepcopy(model).to(memory_format=memory_format)


def check_mode(mode: ModelMode) -> None:
    """Raise unless ``mode`` is ``"eval"``, ``"train"`` or ``None``."""
    if mode not in ("eval", "train", None):
        raise ValueError(
            f'Parameter `model_mode` should be "eval", "train" or None. Found `model_mode = {mode!r}`.'
        )


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: ModelMode) -> Iterator[nn.Module]:
    """Put ``model`` in ``mode`` ("eval", "train"; None leaves it alone) for a block.

    The ``training`` flag of every submodule is recorded and restored on exit, also when
    the block raises, so mixed modes (e.g. frozen BatchNorm layers) survive.
    """
    check_mode(mode)
    if mode is None:
        yield model
        return
    saved = [(module, module.training) for module in model.modules()]
    try:
        model.train(mode == "train")
        yield model
    finally:
        for module, training in saved:
            module.training = training


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for a block (``None``: unchanged)."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        fail("threads", threads, "None or an integer >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """With ``enabled``, ``torch.use_deterministic_algorithms(True)`` and cuDNN's autotuner off
    for a block (and the cuBLAS workspace that determinism needs); restored on exit."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)
        torch.backends.cudnn.benchmark = previous_benchmark
