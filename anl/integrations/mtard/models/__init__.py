"""The networks of the MTARD reproduction: a registry by name, their checkpoints, the teachers.

This module is the registry (:data:`MODELS`, :func:`build_model`, :func:`model_names`,
:func:`register_model`); the
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

Your own architecture is a *factory* ``f(num_classes, in_channels, **kwargs) -> nn.Module`` whose
model takes images in ``[0, 1]``. Name it by its import path wherever an architecture is named
(``build_model("my_nets:tiny_cnn")``, ``TrainConfig(student="my_nets:tiny_cnn")``,
``anl-mtard train --student my_nets:tiny_cnn``, a profile's ``students`` or a teacher's
``arch``), or register it under a short name first (:func:`register_model`); checkpoints record
the name, so an import path also works when the run is resumed or evaluated in another process.

>>> from anl.integrations.mtard.models.small import small_cnn
>>> register_model("my_cnn", small_cnn)
>>> build_model("my_cnn", num_classes=5)(torch.rand(1, 1, 28, 28)).shape
torch.Size([1, 5])
>>> build_model("anl.integrations.mtard.models.small:small_cnn").num_classes
10
>>> del MODELS["my_cnn"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..checks import fail
from ..runtime.plugins import Registry
from .mobilenetv2 import mobilenetv2
from .resnet import resnet18, resnet56
from .small import large_cnn, small_cnn
from .wideresnet import wrn22_6, wrn34_10, wrn70_16


def _factory(path: str, found: Any) -> Callable[..., nn.Module]:
    """The factory an import path names (it must be callable)."""
    if not callable(found):
        raise ValueError(
            f"names a `{type(found).__name__}` object, not a model factory "
            "f(num_classes, in_channels)."
        )
    return found


#: Name -> constructor ``f(num_classes, in_channels, **kwargs) -> nn.Module``. The constructor's
#: own ``in_channels`` default (3 for CIFAR models, 1 for the Fashion-MNIST CNNs) applies when
#: :func:`build_model` gets ``in_channels=None``. An import path ``package.module:factory`` is
#: an architecture too (:class:`~..runtime.plugins.Registry`); :func:`register_model` adds one.
MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "architecture",
    {
        "resnet18": resnet18,
        "mobilenetv2": mobilenetv2,
        "resnet56": resnet56,
        "wrn34_10": wrn34_10,
        "wrn22_6": wrn22_6,
        "wrn70_16": wrn70_16,
        "small_cnn": small_cnn,
        "large_cnn": large_cnn,
    },
    adapt=_factory,
)


def model_names() -> list[str]:
    """The registered architecture names, sorted (import paths are accepted besides)."""
    return sorted(MODELS)


def register_model(name: str, factory: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Register a user architecture under ``name``, for :func:`build_model` and every place that
    names an architecture (a student, a teacher's ``arch``, ``anl-mtard --student``).

    Args:
        name: a new name without ``:`` (import paths need no registration).
        factory: ``factory(num_classes=..., in_channels=..., **kwargs) -> nn.Module``; the
            model takes images in ``[0, 1]`` (NCHW, float32) and returns logits.
        replace: replace an architecture registered under ``name``.

    Raises:
        ValueError: for an invalid or taken name, or a factory that is not callable.

    A registration lives in this process: worker processes (``reproduce --jobs N``) and a later
    ``anl-mtard`` command do not see it, whereas an import path works everywhere.
    """
    if not callable(factory):
        fail("factory", factory, "a callable f(num_classes, in_channels, **kwargs) -> nn.Module")
    MODELS.register(name, factory, replace=replace)


def build_model(
    name: str, num_classes: int = 10, in_channels: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build the architecture ``name`` with freshly initialised weights (train mode).

    Args:
        name: One of :func:`model_names`, or the import path ``package.module:factory`` of a
            user architecture.
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
    factory = MODELS.resolve(name)
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
    return factory(num_classes=num_classes, **kwargs)
