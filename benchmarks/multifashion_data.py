"""Multi-Fashion: two Fashion-MNIST items overlaid on one 36 x 36 canvas, classify both.

The two-task image benchmark of Lin et al., *Pareto Multi-Task Learning* (NeurIPS 2019),
built here deterministically from the Fashion-MNIST IDX files (Debian's
``dataset-fashion-mnist`` package, read by :func:`anl.integrations.mtard.load_dataset`).
Pareto MTL ships its data only as pickles, without the code that made them; its training
script reads 120 000 training and 20 000 test images of 36 x 36. So the construction follows
the published code of the MultiMNIST of Sener & Koltun (*Multi-Task Learning as
Multi-Objective Optimization*, NeurIPS 2018, ``multi_mnist_loader.py``; their MOO-MTL is one
of Pareto MTL's baselines), itself after Sabour et al.'s MultiMNIST (NeurIPS 2017):

1. **Canvas.** A 36 x 36 canvas of zeros; the *top-left* item's 28 x 28 image is placed with
   its corner at (0, 0) (rows and columns 0-27), the *bottom-right* item's at (6, 6)
   (rows and columns 6-33). They overlap on rows and columns 6-27.
2. **Overlay by maximum.** Each pixel is the larger of the two items' values there (0 where an
   item does not reach); outside the overlap this is the one item's pixel.
3. **No resizing.** Sener & Koltun shrink the canvas back to 28 x 28; Pareto MTL's network
   takes 36 x 36 inputs, so the canvas is kept as it is.
4. **Labels.** ``labels[:, 0]`` is the top-left item's class (task 1, "left"), ``labels[:, 1]``
   the bottom-right item's (task 2, "right"). The two may be of the same class (as in Sener &
   Koltun; Sabour et al.'s original MultiMNIST requires different classes).
5. **Pairing** (seeded, so the set is a function of the Fashion-MNIST files and the seed):
   each split's ``n`` source images are used ``pairs_per_image`` times; copy ``c`` draws a
   permutation ``p`` of ``0..n-1`` from NumPy's PCG64 seeded with ``(seed, split, c)`` and
   pairs top-left ``p[j]`` with bottom-right ``p[(j + 1) % n]``. So in every copy each source
   image appears exactly once in each position and never with itself. With the default two
   copies this gives Pareto MTL's sizes: 120 000 training images (from Fashion-MNIST's 60 000
   training images) and 20 000 test images (from its 10 000 test images); no test item is
   ever seen in training.

Nothing is cached on disk: the whole set is built in memory (about 1 s, 156 MB of uint8 for
the training split). :func:`fingerprint` hashes a built split so that two machines can check
they trained on the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CANVAS = 36
"""Height = width of a Multi-Fashion image."""
ITEM = 28
"""Height = width of a Fashion-MNIST item."""
OFFSETS = ((0, 0), (6, 6))
"""(row, column) of the top-left corner of the top-left item and of the bottom-right item."""
SPLIT_IDS = {"train": 0, "test": 1}
"""The split's number in the pairing seed, so train and test draw different permutations."""
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST's ten classes, by label."""


@dataclass(frozen=True)
class MultiFashion:
    """One split of Multi-Fashion, in memory.

    Attributes:
        images: ``uint8`` array ``(M, 1, 36, 36)``, values 0-255.
        labels: ``int64`` array ``(M, 2)``: the top-left item's class, the bottom-right's.
        sources: ``int64`` array ``(M, 2)``: the indices of the two items in the source split.
    """

    images: np.ndarray
    labels: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def pair_indices(n: int, *, pairs_per_image: int, seed: int, split: str) -> np.ndarray:
    """The ``(n * pairs_per_image, 2)`` source indices (top-left, bottom-right) of a split."""
    if n < 2:
        raise ValueError(f"Multi-Fashion needs at least 2 source images. Found n = {n}.")
    if pairs_per_image < 1:
        raise ValueError(f"`pairs_per_image` should be at least 1. Found {pairs_per_image}.")
    blocks = []
    for copy in range(pairs_per_image):
        rng = np.random.Generator(np.random.PCG64([seed, SPLIT_IDS[split], copy]))
        perm = rng.permutation(n).astype(np.int64)
        blocks.append(np.stack([perm, np.roll(perm, -1)], axis=1))
    return np.concatenate(blocks)


def overlay(top_left: np.ndarray, bottom_right: np.ndarray) -> np.ndarray:
    """Overlay two stacks of 28 x 28 items ``(M, 28, 28)`` on ``(M, 1, 36, 36)`` canvases."""
    if top_left.shape != bottom_right.shape or top_left.shape[1:] != (ITEM, ITEM):
        raise ValueError(
            f"Items should be two stacks of shape (M, {ITEM}, {ITEM}). "
            f"Found {top_left.shape} and {bottom_right.shape}."
        )
    canvas = np.zeros((top_left.shape[0], 1, CANVAS, CANVAS), dtype=np.uint8)
    for items, (row, col) in zip((top_left, bottom_right), OFFSETS, strict=True):
        window = canvas[:, 0, row : row + ITEM, col : col + ITEM]
        np.maximum(window, items, out=window)
    return canvas


def build(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    split: str,
    pairs_per_image: int = 2,
    seed: int = 0,
) -> MultiFashion:
    """Multi-Fashion from source items ``images`` (``(n, 28, 28)`` or ``(n, 1, 28, 28)``, uint8)
    and their ``labels`` (``(n,)``), paired as the module docstring says."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    labels = np.asarray(labels, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            "`images` should be uint8 (n, 28, 28) and `labels` (n,). "
            f"Found {images.dtype} {images.shape} and {labels.shape}."
        )
    pairs = pair_indices(len(images), pairs_per_image=pairs_per_image, seed=seed, split=split)
    return MultiFashion(
        images=overlay(images[pairs[:, 0]], images[pairs[:, 1]]),
        labels=labels[pairs],
        sources=pairs,
    )


def load(
    split: str,
    *,
    pairs_per_image: int = 2,
    seed: int = 0,
    limit: int | None = None,
    data_dir: str | Path | None = None,
) -> MultiFashion:
    """Build a split of Multi-Fashion from the Fashion-MNIST files (``limit``: use only the
    first ``limit`` source images, for quick runs). Nothing is downloaded: the files must be in
    ``data_dir``, ``$ANL_DATA_DIR``, ``~/.cache/anl/data`` or Debian's
    ``/usr/share/datasets/fashion-mnist``."""
    from anl.integrations.mtard.data.registry import load_dataset

    source = load_dataset("fashion_mnist", split, data_dir=data_dir, download=False, progress=False)
    images, labels = source.images.numpy(), source.labels.numpy()
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return build(images, labels, split=split, pairs_per_image=pairs_per_image, seed=seed)


def fingerprint(data: MultiFashion) -> str:
    """sha256 of a split's images and labels (hex): equal sets have equal fingerprints."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(data.images).tobytes())
    digest.update(np.ascontiguousarray(data.labels, dtype="<i8").tobytes())
    return digest.hexdigest()
