"""The datasets of the MTARD experiments (CIFAR-10, CIFAR-100, Fashion-MNIST) and a split in memory.

* :data:`DATASETS` — static facts per dataset (classes, shape, mean/std, the paper's epsilon)
  and how to read it; :func:`register_dataset` adds the user's own, and an import path
  ``package.module:attribute`` naming a :class:`DatasetInfo` (or a function returning one)
  is a dataset name too;
* :class:`ImageData` — a split held in memory: a uint8 ``N x C x H x W`` CPU tensor and int64
  labels;
* :func:`load_dataset` — find, download, verify and decode a split (:mod:`.cifar`,
  :mod:`.fashion_mnist`, :mod:`.download`). The default data folder is ``$ANL_DATA_DIR`` or
  ``~/.cache/anl/data``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checks import fail
from ..runtime.plugins import Registry
from .cifar import load_cifar
from .fashion_mnist import load_fashion_mnist

DatasetLoader = Callable[..., tuple[Tensor, Tensor]]
"""``load(root, split, *, download, progress) -> (images, labels)``: a split read from the data
folder ``root`` (``split`` is ``"train"`` or ``"test"``): ``uint8`` images ``N x C x H x W`` in
``0..255`` and ``int64`` labels ``N``, both on the CPU."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset.

    Attributes:
        name: registry key (``"cifar10"``, ``"cifar100"``, ``"fashion_mnist"``).
        title: the name the tables print (``"CIFAR-10"``).
        num_classes: number of label classes.
        channels: image channels ``C``.
        image_size: image height = width ``H``.
        mean: per-channel mean of the training images in ``[0, 1]`` (for models that
            normalise inside, as RobustBench models do).
        std: per-channel standard deviation of the training images in ``[0, 1]``.
        default_eps: the L-infinity budget used with this dataset: ``8/255`` on CIFAR
            (the paper's Sec. 4.1), ``0.1`` on Fashion-MNIST (the usual benchmark value).
        load: how a split is read (:data:`DatasetLoader`); a dataset without one is only
            described, not loadable by :func:`load_dataset`.
    """

    name: str
    title: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_eps: float
    load: DatasetLoader | None = field(default=None, repr=False, compare=False)


def _dataset(path: str, found: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` an import path names (itself, or what a function returns),
    named by the import path."""
    info = found() if callable(found) and not isinstance(found, DatasetInfo) else found
    if not isinstance(info, DatasetInfo) or not callable(info.load):
        raise ValueError(
            f"gives a `{type(info).__name__}` object, not a DatasetInfo with a `load` "
            "function (nor a function returning one)."
        )
    return dataclasses.replace(info, name=path)


_BUILT_IN = {
    "cifar10": DatasetInfo(
        name="cifar10",
        title="CIFAR-10",
        num_classes=10,
        channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        default_eps=8 / 255,
        load=functools.partial(load_cifar, "cifar10"),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        title="CIFAR-100",
        num_classes=100,
        channels=3,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        default_eps=8 / 255,
        load=functools.partial(load_cifar, "cifar100"),
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        title="Fashion-MNIST",
        num_classes=10,
        channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        default_eps=0.1,
        load=load_fashion_mnist,
    ),
}

#: Name -> :class:`DatasetInfo`. An import path ``package.module:attribute`` is a dataset name
#: too (:class:`~..runtime.plugins.Registry`); :func:`register_dataset` adds one.
DATASETS: Registry[DatasetInfo] = Registry("dataset", _BUILT_IN, adapt=_dataset)

SPLITS = ("train", "test")


def register_dataset(info: DatasetInfo, *, replace: bool = False) -> None:
    """Register a user dataset under ``info.name``, for :func:`load_dataset`,
    :class:`~..training.config.TrainConfig`, profiles and ``anl-mtard --dataset``.

    Args:
        info: what the dataset is, with its ``load`` function (:data:`DatasetLoader`).
        replace: replace a dataset registered under that name.

    Raises:
        ValueError: for an invalid or taken name, or an ``info`` without ``load``.

    Example:
        >>> def load(root, split, *, download, progress):
        ...     n = 8 if split == "train" else 4
        ...     return torch.zeros(n, 1, 8, 8, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)
        >>> register_dataset(DatasetInfo("tiny", "Tiny", 2, 1, 8, (0.5,), (0.5,), 0.1, load))
        >>> load_dataset("tiny", "test")
        ImageData(name='tiny', images=uint8[4, 1, 8, 8], labels=int64[4])
        >>> del DATASETS["tiny"]

    A registration lives in this process: worker processes (``reproduce --jobs N``) and a later
    ``anl-mtard`` command do not see it, whereas an import path works everywhere.
    """
    if not isinstance(info, DatasetInfo) or not callable(info.load):
        fail("info", info, "a DatasetInfo with a `load` function")
    DATASETS.register(info.name, info, replace=replace)


def default_data_dir() -> Path:
    """Return the default data folder: ``$ANL_DATA_DIR`` if set, else ``~/.cache/anl/data``."""
    env = os.environ.get("ANL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "anl" / "data"


def dataset_title(name: str | None) -> str:
    """The printed name of a dataset (``"CIFAR-10"``); unknown names are returned as they are."""
    info = DATASETS.get(name or "")
    return info.title if info is not None else str(name)


@dataclass
class ImageData:
    """A split of a dataset held in memory.

    Attributes:
        images: ``uint8`` CPU tensor of shape ``(N, C, H, W)``, values ``0..255``.
        labels: ``int64`` CPU tensor of shape ``(N,)``, values ``0..num_classes-1``.
        info: the dataset's :class:`DatasetInfo`.
    """

    images: Tensor
    labels: Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        images, labels, info = self.images, self.labels, self.info
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                "Parameter `images` should be a uint8 tensor of shape (N, C, H, W). Found "
                f"`images` = {_describe(images)}."
            )
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            raise ValueError(
                "Parameter `labels` should be an int64 tensor of shape (N,). Found "
                f"`labels` = {_describe(labels)}."
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                "Parameters `images` and `labels` should hold the same number of samples. "
                f"Found {images.shape[0]} images and {labels.shape[0]} labels."
            )
        expected = (info.channels, info.image_size, info.image_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"Parameter `images` should have per-image shape {expected} for dataset "
                f"`{info.name}`. Found `images.shape = {tuple(images.shape)}`."
            )
        if labels.numel() > 0:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= info.num_classes:
                raise ValueError(
                    f"Parameter `labels` should lie in [0, {info.num_classes - 1}] for dataset "
                    f"`{info.name}`. Found labels in [{low}, {high}]."
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.info.name!r}, images=uint8{list(self.images.shape)}, "
            f"labels=int64{list(self.labels.shape)})"
        )

    def subset(self, indices: Tensor | Sequence[int]) -> ImageData:
        """Return the samples at ``indices`` (integer positions, in the given order)."""
        index = torch.as_tensor(indices)
        if index.ndim != 1 or (index.numel() > 0 and index.dtype not in _INTEGER_DTYPES):
            raise ValueError(
                "Parameter `indices` should be a 1-D sequence of integer positions. Found "
                f"`indices` = {_describe(index)}."
            )
        index = index.to(device="cpu", dtype=torch.long)
        return ImageData(self.images[index], self.labels[index], self.info)


_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor(dtype={value.dtype}, shape={tuple(value.shape)})"
    return f"{type(value).__name__}"


def load_dataset(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> ImageData:
    """Load one split of a dataset as uint8 images and int64 labels on the CPU.

    Args:
        name: ``"cifar10"``, ``"cifar100"`` or ``"fashion_mnist"`` (case, ``-`` and ``_``
            are ignored: ``"CIFAR-10"`` and ``"fashion-mnist"`` work too), a registered
            dataset (:func:`register_dataset`) or an import path.
        split: ``"train"`` or ``"test"``.
        data_dir: folder holding (or receiving) the files; default
            :func:`default_data_dir`.
        download: download missing files (if ``False``, a missing file raises
            :class:`FileNotFoundError`).
        progress: show a tqdm progress bar while downloading.

    Raises:
        ValueError: unknown name/split, a checksum mismatch, or a corrupt file; the message
            names the file and what is wrong.
        FileNotFoundError: the data is absent and ``download=False``.
        OSError: a download failed (no partial file is left behind).
    """
    key = dataset_key(name)
    if split not in SPLITS:
        raise ValueError(
            f"Parameter `split` should be one of {list(SPLITS)}. Found `split = {split!r}`."
        )
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    info = DATASETS[key]
    if info.load is None:
        fail("name", name, "a dataset with a `load` function")
    images, labels = info.load(root, split, download=download, progress=progress)
    return ImageData(images, labels, info)


def dataset_key(name: str, *, parameter: str = "name") -> str:
    """The :data:`DATASETS` key of ``name``, ignoring case, ``-`` and ``_`` (an import path is
    its own key); an unknown name raises an :class:`~..checks.ArgumentError` naming
    ``parameter``.

    Example:
        >>> dataset_key("Fashion-MNIST")
        'fashion_mnist'
    """

    def squash(text: str) -> str:
        return text.lower().replace("-", "").replace("_", "")

    keys = {squash(key): key for key in DATASETS}
    if isinstance(name, str) and squash(name) in keys and ":" not in name:
        return keys[squash(name)]
    return DATASETS.resolve(name, parameter=parameter).name
