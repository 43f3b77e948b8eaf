"""The teachers of a distillation run: frozen, on the device, BatchNorm folded.

:func:`load_teacher_model` reads a teacher checkpoint (one of this project's, or a foreign
RobustBench or TRADES one) and :func:`prepare_teacher` freezes it: eval mode, no parameter
gradients. The teachers only ever run in eval mode, where BatchNorm applies a fixed
per-channel affine map, so :func:`~.folding.fold_batchnorm` merges each BatchNorm into the
convolution that feeds it, exactly up to float rounding: one layer fewer per block in every
teacher forward of every training step (``docs/benchmarks.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_model, load_teacher
from .folding import fold_batchnorm


def prepare_teacher(
    model: nn.Module,
    *,
    device: str | torch.device | None = None,
    fold_bn: bool = True,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Freeze a teacher: eval mode, no parameter gradients, on ``device``, BN folded.

    Folding (:func:`fold_batchnorm`) needs an ``example_input`` (one small batch of the
    model's input shape); without one, or with ``fold_bn=False``, the BN layers stay.
    """
    model.eval()
    model.requires_grad_(False)
    if device is not None:
        model = model.to(device)
    if fold_bn and example_input is not None:
        example = example_input.to(next(model.parameters()).device)
        model = fold_batchnorm(model, example)
        model.requires_grad_(False)
    return model.eval()


def load_teacher_model(
    path: str | Path,
    *,
    arch: str | None,
    num_classes: int,
    in_channels: int,
    model_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    fold_bn: bool = True,
    image_size: int | None = None,
) -> nn.Module:
    """Load a teacher checkpoint and :func:`prepare_teacher` it.

    ``arch=None`` reads one of this project's checkpoints (:func:`~.checkpoint.load_model`);
    otherwise a foreign checkpoint (RobustBench, TRADES) is read into ``build_model(arch, ...)``
    with :func:`~.checkpoint.load_teacher`. BatchNorm is folded when ``fold_bn`` and
    ``image_size`` (the side of the square input images) are given.
    """
    if arch is None:
        model = load_model(path)
    else:
        model = load_teacher(
            path,
            arch=arch,
            num_classes=num_classes,
            in_channels=in_channels,
            fmt="auto",
            model_kwargs=model_kwargs or None,
        )
    example = None
    if image_size is not None:
        generator = torch.Generator().manual_seed(0)  # leaves the global RNG alone
        example = torch.rand(2, in_channels, image_size, image_size, generator=generator)
    return prepare_teacher(model, device=device, fold_bn=fold_bn, example_input=example)
