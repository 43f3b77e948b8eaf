"""Input normalisation inside the model, as RobustBench does it.

Every model of this package takes images in ``[0, 1]`` and, where its weights were trained on
standardised inputs, computes

.. math::

    \\hat x_c = \\frac{x_c - \\mu_c}{\\sigma_c}

itself, from two buffers ``mean`` and ``std`` of shape ``(1, C, 1, 1)``. The buffers are
*non-persistent*: they are not part of ``state_dict()``, so the parameter layout stays exactly
the one of the upstream code (chenyaofo's ResNet-56, RobustBench's WideResNets), whose state
dicts then load strictly. The statistics are recorded as constructor arguments instead
(``mean=..., std=...``), which is what :func:`~.checkpoint.save_model_checkpoint`
writes into our checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: CIFAR-10 per-channel mean and standard deviation of the training set (RobustBench,
#: ``robustbench/model_zoo/architectures/dm_wide_resnet.py``).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
#: The standard deviation that chenyaofo/pytorch-cifar-models trained its CIFAR-10 models with
#: (``logs/cifar10/resnet56/default.log``: ``std = [0.2023, 0.1994, 0.201]``), a value widely
#: copied from early CIFAR tutorials. It is *not* the data set's standard deviation, but a
#: checkpoint trained with it must be evaluated with it.
CHENYAOFO_CIFAR10_STD = (0.2023, 0.1994, 0.2010)
#: CIFAR-100 per-channel mean and standard deviation (RobustBench).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

#: Data set name -> (mean, std).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}

Stats = float | Sequence[float] | None


def _as_channel_tuple(value: float | Sequence[float], name: str, in_channels: int) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * in_channels
    if isinstance(value, Tensor):
        value = value.detach().flatten().tolist()
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Parameter `{name}` should be a float or a sequence of {in_channels} floats. "
            f"Found `{name} = {value!r}`."
        ) from None
    if len(values) != in_channels:
        raise ValueError(
            f"Parameter `{name}` should have one value per input channel ({in_channels}). "
            f"Found `{name} = {value!r}`."
        )
    return values


class NormalizedModel(nn.Module):
    """Base class of the models: holds the optional input normalisation.

    Subclasses call :meth:`_init_normalization` in ``__init__`` and :meth:`normalize` first
    thing in ``forward``. ``mean = std = None`` means no normalisation (the input in
    ``[0, 1]`` goes straight into the first layer, as in the RSLAD/MTARD students).

    Attributes:
        normalization: ``None`` or ``(mean, std)`` as tuples of floats, the values of the
            buffers as plain Python data (what a checkpoint records).
    """

    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None

    def _init_normalization(self, mean: Stats, std: Stats, in_channels: int) -> None:
        if (mean is None) != (std is None):
            raise ValueError(
                "Parameters `mean` and `std` should both be given or both be None. "
                f"Found `mean = {mean!r}`, `std = {std!r}`."
            )
        if mean is None or std is None:
            self.normalization = None
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
            return
        mean_t = _as_channel_tuple(mean, "mean", in_channels)
        std_t = _as_channel_tuple(std, "std", in_channels)
        if any(not s > 0 for s in std_t):
            raise ValueError(f"Parameter `std` should be positive. Found `std = {std!r}`.")
        self.normalization = (mean_t, std_t)
        shape = (1, in_channels, 1, 1)
        self.register_buffer("mean", torch.tensor(mean_t).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std_t).view(shape), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        """Return ``(x - mean) / std``, or ``x`` when the model has no normalisation."""
        if self.mean is None:
            return x
        return (x - self.mean) / self.std


def dataset_stats(
    dataset: str | None, num_classes: int, mean: Stats, std: Stats
) -> tuple[Stats, Stats]:
    """Resolve ``(mean, std)`` from an explicit value, a data set name, or ``num_classes``.

    Explicit ``mean``/``std`` win. Otherwise ``dataset`` ("cifar10" or "cifar100") picks the
    statistics; when ``dataset`` is None it is inferred from ``num_classes`` (10 -> CIFAR-10,
    100 -> CIFAR-100).
    """
    if mean is not None or std is not None:
        return mean, std
    if dataset is None:
        inferred = {10: "cifar10", 100: "cifar100"}.get(num_classes)
        if inferred is None:
            raise ValueError(
                "Parameter `dataset` should be given ('cifar10' or 'cifar100'), or `mean` and "
                f"`std`, when `num_classes` is not 10 or 100. Found `num_classes = {num_classes}`."
            )
        dataset = inferred
    if dataset not in DATASET_STATS:
        raise ValueError(
            f"Parameter `dataset` should be one of {sorted(DATASET_STATS)}. "
            f"Found `dataset = {dataset!r}`."
        )
    return DATASET_STATS[dataset]
