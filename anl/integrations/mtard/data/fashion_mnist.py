"""Fashion-MNIST from its four gzip IDX files.

The files are searched in ``data_dir`` (also ``data_dir/FashionMNIST/raw``, torchvision's
layout) and then in Debian's ``/usr/share/datasets/fashion-mnist`` (``apt-get install
dataset-fashion-mnist``) before they are downloaded. Debian recompressed the files, so the
sha256 of the *decompressed* bytes is what is verified.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .download import checksum_error, fetch

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
"""Where missing files are downloaded from."""
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Debian's copy (``apt-get install dataset-fashion-mnist``), searched after ``data_dir``."""


@dataclass(frozen=True)
class IdxFile:
    """One Fashion-MNIST IDX file: its name and the sha256 and size of its decompressed bytes."""

    name: str
    sha256: str
    size: int
    magic: int
    count: int


#: The (images, labels) files of each split.
FILES: dict[str, tuple[IdxFile, IdxFile]] = {
    "train": (
        IdxFile(
            "train-images-idx3-ubyte.gz",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            47_040_016,
            2051,
            60_000,
        ),
        IdxFile(
            "train-labels-idx1-ubyte.gz",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            60_008,
            2049,
            60_000,
        ),
    ),
    "test": (
        IdxFile(
            "t10k-images-idx3-ubyte.gz",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            7_840_016,
            2051,
            10_000,
        ),
        IdxFile(
            "t10k-labels-idx1-ubyte.gz",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            10_008,
            2049,
            10_000,
        ),
    ),
}


def load_fashion_mnist(
    root: Path, split: str, *, download: bool, progress: bool
) -> tuple[Tensor, Tensor]:
    """The images (uint8 ``N x 1 x 28 x 28``) and labels of a Fashion-MNIST split."""
    image_file, label_file = FILES[split]
    images = _fashion_array(image_file, root, download=download, progress=progress)
    labels = _fashion_array(label_file, root, download=download, progress=progress)
    return torch.from_numpy(images.reshape(-1, 1, 28, 28)), torch.from_numpy(labels)


def _fashion_array(spec: IdxFile, root: Path, *, download: bool, progress: bool) -> np.ndarray:
    path = _find_fashion_file(spec, root)
    if path is None:
        dest = root / spec.name
        if not download:
            raise FileNotFoundError(
                f"Fashion-MNIST file `{spec.name}` not found in `{root}`, "
                f"`{root / 'FashionMNIST' / 'raw'}` or `{DEBIAN_DIR}` and "
                f"`download=False`. Install it with `apt-get install dataset-fashion-mnist` or "
                f"download {URL}{spec.name} into `{root}`."
            )
        fetch(
            URL + spec.name,
            dest,
            lambda tmp: _read_idx_bytes(tmp, spec, downloaded=True, shown=dest),
            progress,
        )
        path = dest
    stat = path.stat()
    # Copy out of the per-process cache so callers may modify their tensors freely.
    return _cached_idx_array(str(path), stat.st_mtime_ns, stat.st_size, spec).copy()


def _find_fashion_file(spec: IdxFile, root: Path) -> Path | None:
    """First of ``root``, ``root/FashionMNIST/raw`` and Debian's folder holding the file.

    The gzip file is preferred; an uncompressed copy (same name without ``.gz``) also counts.
    """
    plain = spec.name.removesuffix(".gz")
    for folder in (root, root / "FashionMNIST" / "raw", DEBIAN_DIR):
        for candidate in (folder / spec.name, folder / plain):
            if candidate.is_file():
                return candidate
    return None


def _read_idx_bytes(
    path: Path, spec: IdxFile, *, downloaded: bool = False, shown: Path | None = None
) -> bytes:
    """Decompressed bytes of an IDX file, checked against the expected size and sha256."""
    shown = shown or path
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"  # the gzip magic number
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            content = handle.read(spec.size + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"File `{shown}` is corrupt or truncated: {exc}.") from exc
    if len(content) != spec.size:
        found = f"{len(content)} bytes" if len(content) <= spec.size else "more bytes"
        raise ValueError(
            f"File `{shown}`: decompressed size should be {spec.size} bytes. Found {found}."
        )
    found_sha = hashlib.sha256(content).hexdigest()
    if found_sha != spec.sha256:
        raise checksum_error(
            shown, "sha256 of the decompressed bytes", spec.sha256, found_sha, downloaded
        )
    return content


@functools.lru_cache(maxsize=8)
def _cached_idx_array(path: str, mtime_ns: int, size: int, spec: IdxFile) -> np.ndarray:
    """Verified, decoded IDX array, cached per process by (path, mtime, size, spec)."""
    del mtime_ns, size  # part of the cache key only
    return parse_idx(_read_idx_bytes(Path(path), spec), Path(path), spec)


def parse_idx(content: bytes, path: Path, spec: IdxFile) -> np.ndarray:
    """Decode an IDX file of unsigned bytes (magic 2049: labels, 2051: 28 x 28 images)."""
    ndim = spec.magic & 0xFF
    header = 4 + 4 * ndim
    magic = struct.unpack(">I", content[:4])[0]
    if magic != spec.magic:
        raise ValueError(f"File `{path}`: IDX magic should be {spec.magic}. Found {magic}.")
    dims = struct.unpack(f">{ndim}I", content[4:header])
    expected_dims = (spec.count,) + ((28, 28) if ndim == 3 else ())
    if dims != expected_dims:
        raise ValueError(f"File `{path}`: IDX dimensions should be {expected_dims}. Found {dims}.")
    if len(content) != header + math.prod(dims):
        raise ValueError(
            f"File `{path}`: should hold {header + math.prod(dims)} bytes. Found {len(content)}."
        )
    array = np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)
    if ndim == 1:
        if array.max() > 9:
            raise ValueError(f"File `{path}`: labels should lie in [0, 9]. Found {array.max()}.")
        return array.astype(np.int64)
    return array.copy()
