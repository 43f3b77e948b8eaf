"""Batches for training and evaluation: a seeded validation split and the batch loader.

* :func:`split_validation` — a seeded, disjoint train/validation split (the paper selects its
  checkpoint on the test set; a held-out split is the honest alternative);
* :class:`BatchLoader` — batches in ``[0, 1]`` float32 on the device, with the official codes'
  augmentation (random crop 32 with zero padding 4 and horizontal flip) done batched on the
  device, deterministic per ``(seed, epoch)`` and sharded across ranks like
  ``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from .registry import ImageData


def split_validation(data: ImageData, val_size: int, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Split ``data`` into disjoint ``(train, val)`` parts, ``val`` holding ``val_size`` samples.

    The validation indices are the first ``val_size`` entries of ``torch.randperm(len(data))``
    drawn from a CPU ``torch.Generator`` seeded with ``seed``, so the split is the same on every
    machine. Both parts keep the original sample order.
    """
    n = len(data)
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size < n:
        raise ValueError(
            f"Parameter `val_size` should be an integer with 0 < val_size < {n} (the dataset "
            f"size). Found `val_size = {val_size!r}`."
        )
    generator = torch.Generator(device="cpu").manual_seed(_seed_value(seed, 0))
    perm = torch.randperm(n, generator=generator)
    val_idx = perm[:val_size].sort().values
    train_idx = perm[val_size:].sort().values
    return data.subset(train_idx), data.subset(val_idx)


def _seed_value(seed: int, epoch: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Parameter `seed` should be an integer. Found `seed = {seed!r}`.")
    return (seed * 1_000_003 + epoch) % (1 << 63)


_AUGMENTATIONS = (None, "crop_flip", "crop")
_CROP_PADDING = 4


class BatchLoader:
    r"""Batches of ``(x, y)`` with ``x`` float32 in ``[0, 1]`` and ``y`` int64, on ``device``.

    The whole dataset is moved to ``device`` once, as uint8. Each epoch draws, from a CPU
    ``torch.Generator`` seeded with ``seed * 1000003 + epoch`` (so the result does not depend on
    the device), first the permutation (if ``shuffle``), then per-position crop offsets
    :math:`(o_y, o_x) \in \{0, \dots, 8\}^2` and flips :math:`f \sim \mathrm{Bernoulli}(0.5)`.
    A batch is gathered, then augmented on the device in one indexing operation:

    .. math::

        \tilde x_{c,i,j} = \mathrm{pad}_4(x)_{c,\; o_y + i,\; o_x + (W - 1 - j \text{ if } f
        \text{ else } j)}

    i.e. ``RandomCrop(32, padding=4)`` followed by ``RandomHorizontalFlip()`` as in the official
    MTARD/RSLAD training code (``"crop_flip"``); ``"crop"`` crops only, ``None`` does nothing.

    Sharding follows ``DistributedSampler``: all ranks compute the same epoch order; with
    ``pad_to_even=True`` it is extended by its leading entries to a multiple of
    ``world_size``, and rank ``r`` takes positions ``r, r + world_size, ...`` (equal counts,
    for training); with ``pad_to_even=False`` nothing is repeated, so the shards are disjoint
    and cover the data exactly once (for evaluation; ranks may then differ by one sample and
    one batch). ``drop_last`` drops the incomplete last batch of each rank.

    Like ``DistributedSampler``, the order only changes when :meth:`set_epoch` is called.

    Example:
        >>> import torch
        >>> from anl.integrations.mtard.data.loader import BatchLoader
        >>> from anl.integrations.mtard.data.registry import DATASETS, ImageData
        >>> data = ImageData(
        ...     torch.zeros(10, 3, 32, 32, dtype=torch.uint8),
        ...     torch.arange(10) % 10,
        ...     DATASETS["cifar10"],
        ... )
        >>> loader = BatchLoader(data, batch_size=4, shuffle=True, augment="crop_flip")
        >>> loader.set_epoch(1)
        >>> [tuple(x.shape) for x, _ in loader]
        [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
        >>> len(loader)
        3
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: str | None = None,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_to_even: bool = True,
    ) -> None:
        if not isinstance(data, ImageData):
            raise ValueError(
                f"Parameter `data` should be an ImageData. Found {type(data).__name__}."
            )
        if len(data) == 0:
            raise ValueError("Parameter `data` should hold at least one sample. Found 0.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                "Parameter `batch_size` should be a positive integer. "
                f"Found `batch_size = {batch_size!r}`."
            )
        if augment not in _AUGMENTATIONS:
            raise ValueError(
                f"Parameter `augment` should be one of {list(_AUGMENTATIONS)}. "
                f"Found `augment = {augment!r}`."
            )
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(
                "Parameter `world_size` should be a positive integer. "
                f"Found `world_size = {world_size!r}`."
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(
                f"Parameter `rank` should be an integer in [0, {world_size - 1}]. "
                f"Found `rank = {rank!r}`."
            )
        _seed_value(seed, 0)  # validates `seed`
        self.data = data
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = augment
        self.device = torch.device(device)
        self.drop_last = bool(drop_last)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.pad_to_even = bool(pad_to_even)
        self.epoch = 0
        self._images = data.images.to(self.device)
        self._labels = data.labels.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration uses."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(
                f"Parameter `epoch` should be a non-negative integer. Found `epoch = {epoch!r}`."
            )
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last``)."""
        n = len(self.data)
        if self.pad_to_even:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _epoch_plan(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """This rank's sample indices and augmentation parameters for the current epoch (CPU)."""
        n = len(self.data)
        generator = torch.Generator(device="cpu").manual_seed(_seed_value(self.seed, self.epoch))
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        total = n
        if self.pad_to_even and n % self.world_size:
            total = math.ceil(n / self.world_size) * self.world_size
            order = order.repeat(math.ceil(total / n))[:total]
        offsets = flips = None
        if self.augment is not None:
            span = 2 * _CROP_PADDING + 1
            offsets = torch.randint(0, span, (total, 2), generator=generator)
            if self.augment == "crop_flip":
                flips = torch.rand(total, generator=generator) < 0.5
        positions = slice(self.rank, total, self.world_size)
        return (
            order[positions],
            None if offsets is None else offsets[positions],
            None if flips is None else flips[positions],
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order, offsets, flips = self._epoch_plan()
        order = order.to(self.device)
        if offsets is not None:
            offsets = offsets.to(self.device)
        if flips is not None:
            flips = flips.to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, order.shape[0])
            index = order[start:stop]
            images = self._images[index]
            if offsets is not None:
                images = _crop_flip(
                    images, offsets[start:stop], None if flips is None else flips[start:stop]
                )
            yield images.float().div_(255), self._labels[index]


def _crop_flip(images: Tensor, offsets: Tensor, flips: Tensor | None) -> Tensor:
    """Zero-pad by 4, crop back at per-sample ``offsets`` and mirror rows where ``flips``.

    One advanced-indexing gather from the padded batch; works on any device and dtype.
    """
    batch, channels, height, width = images.shape
    p = _CROP_PADDING
    padded = images.new_zeros((batch, channels, height + 2 * p, width + 2 * p))
    padded[:, :, p : p + height, p : p + width] = images
    device = images.device
    rows = offsets[:, :1] + torch.arange(height, device=device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(width, device=device)  # (B, W)
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch_index = torch.arange(batch, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]
