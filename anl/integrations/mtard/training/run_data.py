"""The data of one training run: the training split, its validation part and its subset.

The validation split is carved first (:func:`~..data.loader.split_validation`, seeded by
``val_seed``, by default the run's seed, independent of ``train_subset``), then ``train_subset`` random images of the rest
are kept. Under ``torchrun`` one process per node loads (and may download) the data first
(:func:`~..runtime.process.node_main_first`).
"""

from __future__ import annotations

import torch

from ..checks import fail
from ..data.loader import split_validation
from ..data.registry import ImageData, load_dataset
from ..runtime.process import Ranks, node_main_first
from .config import TrainConfig


def load_run_data(config: TrainConfig, *, progress: bool, ranks: Ranks) -> ImageData:
    """The training split of ``config.dataset``, downloaded first by one process per node."""

    def load() -> ImageData:
        return load_dataset(
            config.dataset,
            "train",
            data_dir=config.data_dir,
            download=config.download,
            progress=progress,
        )

    return node_main_first(load, ranks)


def split_run_data(config: TrainConfig, data: ImageData) -> tuple[ImageData, ImageData | None]:
    """``(train, validation)``: ``config.val_size`` validation images carved from ``data``
    (``None`` when 0), then ``config.train_subset`` random images of the rest."""
    if config.val_size >= len(data):
        fail("val_size", config.val_size, f"smaller than the {len(data)} training images")
    train, val = data, None
    if config.val_size > 0:
        split_seed = config.seed if config.val_seed is None else config.val_seed
        train, val = split_validation(data, config.val_size, seed=split_seed)
    if config.train_subset is not None:
        if config.train_subset > len(train):
            fail(
                "train_subset",
                config.train_subset,
                f"at most the {len(train)} training images left after validation",
            )
        generator = torch.Generator().manual_seed(config.seed)
        keep = torch.randperm(len(train), generator=generator)[: config.train_subset]
        train = train.subset(torch.sort(keep).values)
    return train, val
