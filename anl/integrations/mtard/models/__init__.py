"""The networks of the MTARD reproduction: a registry by name, their checkpoints, the teachers.

This module is the registry (:data:`MODELS`, :func:`build_model`, :func:`model_names`); the
architectures live in :mod:`.resnet`, :mod:`.wideresnet`, :mod:`.mobilenetv2` and
:mod:`.small` (their input normalisation in :mod:`.normalization`). Around them:
:mod:`.state_dict` (strict loading with readable errors), :mod:`.checkpoint` (this project's
checkpoint format and third-party teacher weights), :mod:`.folding` (BatchNorm folded into
convolutions) and :mod:`.teachers` (a frozen, folded teacher from a checkpoint).

>>> from anl.integrations.mtard.models import build_model, model_names
>>> model_names()
['large_cnn', 'mobilenetv2', 'resnet18', 'resnet56', 'small_cnn', 'wrn22_6', 'wrn34_10', 'wrn70_16']
>>> import torch
>>> model = build_model("small_cnn").eval()
>>> model(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 10])

Every model takes images in ``[0, 1]`` (NCHW, float32); where its weights expect standardised
inputs, it normalises them itself from non-persistent ``mean``/``std`` buffers (RobustBench's
convention), so attacks and evaluations never handle normalisation. Parameter names follow the
upstream code of each architecture, so upstream checkpoints load strictly
(:func:`~.checkpoint.load_teacher`).

| name | role in MTARD | structure | parameters (10 classes) |
|---|---|---|---|
| ``resnet18`` | student | RSLAD/kuangliu CIFAR ResNet-18 | 11.17 M |
| ``mobilenetv2`` | student | RSLAD/kuangliu CIFAR MobileNetV2 | 2.30 M |
| ``resnet56`` | CIFAR-10 clean teacher | chenyaofo ResNet-56 | 0.86 M |
| ``wrn34_10`` | CIFAR-10 adversarial teacher | TRADES WRN-34-10 | 46.16 M used (48.26 M with the unused ``sub_block1``, built by default) |
| ``wrn22_6`` | CIFAR-100 clean teacher | Gowal/RobustBench WRN-22-6, Swish | 9.66 M |
| ``wrn70_16`` | CIFAR-100 adversarial teacher | Gowal/RobustBench WRN-70-16, Swish | 266.80 M |
| ``small_cnn`` | Fashion-MNIST student | 2 conv + BN, 2-layer head | 0.21 M |
| ``large_cnn`` | Fashion-MNIST teachers | 3 conv + BN, 2-layer head | 1.69 M |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .mobilenetv2 import mobilenetv2
from .resnet import resnet18, resnet56
from .small import large_cnn, small_cnn
from .wideresnet import wrn22_6, wrn34_10, wrn70_16

#: Name -> constructor ``f(num_classes, in_channels, **kwargs) -> nn.Module``. The constructor's
#: own ``in_channels`` default (3 for CIFAR models, 1 for the Fashion-MNIST CNNs) applies when
#: :func:`build_model` gets ``in_channels=None``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "mobilenetv2": mobilenetv2,
    "resnet56": resnet56,
    "wrn34_10": wrn34_10,
    "wrn22_6": wrn22_6,
    "wrn70_16": wrn70_16,
    "small_cnn": small_cnn,
    "large_cnn": large_cnn,
}


def model_names() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(MODELS)


def build_model(
    name: str, num_classes: int = 10, in_channels: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build the architecture ``name`` with freshly initialised weights (train mode).

    Args:
        name: One of :func:`model_names`.
        num_classes: Number of outputs (>= 2).
        in_channels: Channels of the input images; ``None`` for the architecture's default
            (3, or 1 for ``small_cnn``/``large_cnn``).
        **kwargs: Architecture options, e.g. ``mean``/``std`` (input normalisation),
            ``dataset`` (``wrn22_6``/``wrn70_16``: whose statistics to normalise with),
            ``depth``/``width``/``widen_factor`` (smaller WRNs of the same structure),
            ``sub_block1`` (``wrn34_10``), ``channels``/``hidden`` (the CNNs).

    Returns:
        The model. It has attributes ``num_classes``, ``in_channels`` and ``normalization``
        (``None`` or ``(mean, std)``).

    Raises:
        ValueError: for an unknown name or an invalid ``num_classes``/``in_channels``.
    """
    if name not in MODELS:
        raise ValueError(
            f"Parameter `name` should be one of {model_names()}. Found `name = {name!r}`."
        )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(
            f"Parameter `num_classes` should be an int >= 2. Found `num_classes = {num_classes!r}`."
        )
    if in_channels is not None and (
        not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1
    ):
        raise ValueError(
            "Parameter `in_channels` should be a positive int (or None for the architecture's "
            f"default). Found `in_channels = {in_channels!r}`."
        )
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    return MODELS[name](num_classes=num_classes, **kwargs)
