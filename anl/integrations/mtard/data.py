"""Datasets of the MTARD experiments: CIFAR-10, CIFAR-100 and Fashion-MNIST.

Everything a training or evaluation run needs from the data, in one place:

* :data:`DATASETS` — static facts per dataset (classes, shape, mean/std, the paper's epsilon);
* :func:`load_dataset` — find, download, verify and decode a split into an :class:`ImageData`
  (uint8 ``N x C x H x W`` CPU tensor plus int64 labels);
* :func:`split_validation` — a seeded, disjoint train/validation split (the paper selects its
  checkpoint on the test set; a held-out split is the honest alternative);
* :class:`BatchLoader` — batches in ``[0, 1]`` float32 on the device, with the official codes'
  augmentation (random crop 32 with zero padding 4 and horizontal flip) done batched on the
  device, deterministic per ``(seed, epoch)`` and sharded across ranks like
  ``torch.utils.data.DistributedSampler``.

Sources and integrity
---------------------
CIFAR-10/100 come from the official python-pickle archives of
https://www.cs.toronto.edu/~kriz/cifar.html, verified by their published md5 and read directly
from the ``.tar.gz`` (nothing is extracted to disk); an already extracted folder
(``cifar-10-batches-py/``, ``cifar-100-python/``, torchvision's layout) is read as well. The
batches are pickles, so they are decoded by a restricted unpickler that only rebuilds NumPy
arrays and refuses every other global.

Fashion-MNIST comes from four gzip IDX files, searched in ``data_dir`` (also
``data_dir/FashionMNIST/raw``, torchvision's layout) and then in Debian's
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``) before it is
downloaded. Debian recompressed the files, so the sha256 of the *decompressed* bytes is what
is verified.

Downloads stream into a temporary file next to the destination, are verified, and are moved
into place with :func:`os.replace`; a failure leaves no partial file behind. The default data
folder is ``$ANL_DATA_DIR`` or ``~/.cache/anl/data``.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DatasetInfo",
    "ImageData",
    "default_data_dir",
    "load_dataset",
    "split_validation",
]


# --------------------------------------------------------------------------------------------
# Static facts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset.

    Attributes:
        name: registry key (``"cifar10"``, ``"cifar100"``, ``"fashion_mnist"``).
        num_classes: number of label classes.
        channels: image channels ``C``.
        image_size: image height = width ``H``.
        mean: per-channel mean of the training images in ``[0, 1]`` (for models that
            normalise inside, as RobustBench models do).
        std: per-channel standard deviation of the training images in ``[0, 1]``.
        default_eps: the L-infinity budget used with this dataset: ``8/255`` on CIFAR
            (the paper's Sec. 4.1), ``0.1`` on Fashion-MNIST (the usual benchmark value).
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_eps: float


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        default_eps=8 / 255,
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        channels=3,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        default_eps=8 / 255,
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        default_eps=0.1,
    ),
}

_SPLITS = ("train", "test")


def default_data_dir() -> Path:
    """Return the default data folder: ``$ANL_DATA_DIR`` if set, else ``~/.cache/anl/data``."""
    env = os.environ.get("ANL_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "anl" / "data"


# --------------------------------------------------------------------------------------------
# ImageData
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------


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
            are ignored: ``"CIFAR-10"`` and ``"fashion-mnist"`` work too).
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
    key = _dataset_key(name)
    if split not in _SPLITS:
        raise ValueError(
            f"Parameter `split` should be one of {list(_SPLITS)}. Found `split = {split!r}`."
        )
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    info = DATASETS[key]
    if key == "fashion_mnist":
        images, labels = _load_fashion_mnist(root, split, download=download, progress=progress)
    else:
        images, labels = _load_cifar(key, root, split, download=download, progress=progress)
    return ImageData(images, labels, info)


def _dataset_key(name: str) -> str:
    def squash(text: str) -> str:
        return text.lower().replace("-", "").replace("_", "")

    keys = {squash(key): key for key in DATASETS}
    if not isinstance(name, str) or squash(name) not in keys:
        raise ValueError(
            f"Parameter `name` should be one of {sorted(DATASETS)}. Found `name = {name!r}`."
        )
    return keys[squash(name)]


# --------------------------------------------------------------------------------------------
# Checksums and downloads
# --------------------------------------------------------------------------------------------

_CHUNK_SIZE = 1 << 20


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, verify: Callable[[Path], None], progress: bool) -> None:
    """Stream ``url`` into ``dest`` atomically.

    The bytes go to a temporary file in ``dest``'s folder; ``verify(tmp_path)`` must raise
    :class:`ValueError` if the content is wrong. Only a verified, fsynced file is moved to
    ``dest`` (:func:`os.replace`); on any failure (including ``KeyboardInterrupt``) the
    temporary file is deleted.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                length = response.headers.get("Content-Length") if response.headers else None
                total = int(length) if length is not None else None
                received = 0
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"Downloading {dest.name}",
                    disable=not progress,
                ) as bar:
                    while True:
                        chunk = response.read(_CHUNK_SIZE)
                        if not chunk:
                            break
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if total is not None and received != total:
                    raise OSError(f"received {received} of {total} bytes")
                out.flush()
                os.fsync(out.fileno())
        except Exception as exc:
            raise OSError(f"Download of `{url}` to `{dest}` failed: {exc}") from exc
        verify(tmp)
        tmp.chmod(0o644)  # mkstemp creates 0600; a data cache may be shared read-only
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _checksum_error(
    path: Path, what: str, expected: str, found: str, downloaded: bool
) -> ValueError:
    advice = (
        "The download was corrupt and has been deleted; try again."
        if downloaded
        else "The file is corrupt or incomplete; delete it to download it again."
    )
    return ValueError(f"File `{path}`: {what} is `{found}`, expected `{expected}`. {advice}")


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarSource:
    """Where a CIFAR archive lives and what it must contain (all fields hashable)."""

    archive: str
    url: str
    md5: str
    folder: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: bytes
    num_classes: int
    train_size: int
    test_size: int


_CIFAR_SOURCES: dict[str, _CifarSource] = {
    "cifar10": _CifarSource(
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_members=("test_batch",),
        label_key=b"labels",
        num_classes=10,
        train_size=50_000,
        test_size=10_000,
    ),
    "cifar100": _CifarSource(
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train_members=("train",),
        test_members=("test",),
        label_key=b"fine_labels",
        num_classes=100,
        train_size=50_000,
        test_size=10_000,
    ),
}

_MAX_MEMBER_BYTES = 512 << 20  # a CIFAR batch is ~30 MB; refuse anything absurd


def _load_cifar(
    key: str, root: Path, split: str, *, download: bool, progress: bool
) -> tuple[Tensor, Tensor]:
    source = _CIFAR_SOURCES[key]
    members = source.train_members if split == "train" else source.test_members
    archive = root / source.archive
    folder = root / source.folder
    if archive.is_file():
        _verify_archive_md5(archive, source.md5, downloaded=False)
        raw = _read_tar_members(archive, [f"{source.folder}/{m}" for m in members])
    elif folder.is_dir():
        raw = {}
        for member in members:
            path = folder / member
            if not path.is_file():
                raise FileNotFoundError(f"CIFAR folder `{folder}` lacks the batch file `{member}`.")
            raw[f"{source.folder}/{member}"] = path.read_bytes()
    elif download:
        _download(
            source.url,
            archive,
            lambda tmp: _verify_archive_md5(tmp, source.md5, downloaded=True, shown=archive),
            progress,
        )
        raw = _read_tar_members(archive, [f"{source.folder}/{m}" for m in members])
    else:
        raise FileNotFoundError(
            f"Dataset `{key}` not found: neither `{archive}` nor `{folder}/` exists and "
            f"`download=False`. Download {source.url} into `{root}`."
        )
    where = archive if archive.is_file() else folder
    batches = [
        _parse_cifar_batch(raw[f"{source.folder}/{m}"], f"{where}:{m}", source) for m in members
    ]
    data = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    expected = source.train_size if split == "train" else source.test_size
    if data.shape[0] != expected:
        raise ValueError(
            f"File `{where}`: the {split} split should hold {expected} images. "
            f"Found {data.shape[0]}."
        )
    # Each row is 1024 red, 1024 green, 1024 blue values, each plane row-major 32 x 32.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32))
    return images, torch.from_numpy(labels)


def _verify_archive_md5(
    path: Path, expected: str, *, downloaded: bool, shown: Path | None = None
) -> None:
    found = _file_digest(path, "md5")
    if found != expected:
        raise _checksum_error(shown or path, "md5", expected, found, downloaded)


def _read_tar_members(archive: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Read regular-file members ``names`` from a ``.tar.gz`` in one streaming pass.

    Nothing is written to disk, so member paths cannot escape anywhere; links, devices and
    oversized members are refused. The whole archive is read, so truncation is always noticed.
    """
    wanted = set(names)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name not in wanted:
                    continue
                if not member.isfile():
                    raise ValueError(f"member `{name}` is not a regular file")
                if member.size > _MAX_MEMBER_BYTES:
                    raise ValueError(f"member `{name}` is too large ({member.size} bytes)")
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - isfile() members always have data
                    raise ValueError(f"member `{name}` has no data")
                content = handle.read()
                if len(content) != member.size:
                    raise ValueError(f"member `{name}` is truncated")
                found[name] = content
    except ValueError as exc:
        raise ValueError(f"Archive `{archive}` is corrupt: {exc}.") from exc
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"Archive `{archive}` is corrupt or truncated: {exc}.") from exc
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(f"Archive `{archive}` lacks the member(s) {missing}.")
    return found


try:  # NumPy >= 2 moved the array reconstructor; CIFAR's pickles name the NumPy 1 path.
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 round trip protocol 2 uses for bytes."""
    if not isinstance(obj, str) or encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"Only `_codecs.encode(str, 'latin1')` is allowed. Found encoding {encoding!r}."
        )
    return codecs.encode(obj, "latin-1", errors)


_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy uint8 arrays, dicts, lists, bytes and ints only.

    CIFAR batches are pickled dicts whose only globals are NumPy's array reconstruction
    (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``) and, for
    protocol-2 pickles written by Python 3, ``_codecs.encode`` for ``bytes``. Any other global
    (``os.system``, ``builtins.eval``, ...) is refused before it is resolved.
    """

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global `{module}.{name}` is forbidden in a CIFAR batch (only NumPy array "
                "reconstruction is allowed)"
            ) from None


def _unpickle_cifar(raw: bytes, where: str) -> object:
    try:
        return _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:
        raise ValueError(f"CIFAR batch `{where}` could not be unpickled: {exc}.") from exc


def _parse_cifar_batch(
    raw: bytes, where: str, source: _CifarSource
) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_cifar(raw, where)
    if not isinstance(batch, dict):
        raise ValueError(f"CIFAR batch `{where}` should be a dict. Found {type(batch).__name__}.")
    data = batch.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(
            f"CIFAR batch `{where}`: `data` should be a uint8 array of shape (n, 3072). "
            f"Found {_describe_array(data)}."
        )
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"CIFAR batch `{where}`: `data` should have 3072 columns. Found shape {data.shape}."
        )
    labels_obj = batch.get(source.label_key)
    if labels_obj is None:
        raise ValueError(f"CIFAR batch `{where}` lacks the key {source.label_key!r}.")
    try:
        labels = np.asarray(labels_obj)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"dtype {labels.dtype}, shape {labels.shape}")
        labels = labels.astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"CIFAR batch `{where}`: {source.label_key!r} should be a list of integers ({exc})."
        ) from exc
    if labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"CIFAR batch `{where}` holds {data.shape[0]} images but {labels.shape[0]} labels."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= source.num_classes):
        raise ValueError(
            f"CIFAR batch `{where}`: labels should lie in [0, {source.num_classes - 1}]. "
            f"Found labels in [{labels.min()}, {labels.max()}]."
        )
    return data, labels


def _describe_array(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array(dtype={value.dtype}, shape={value.shape})"
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class _IdxFile:
    """One Fashion-MNIST IDX file: its name and the sha256 and size of its decompressed bytes."""

    name: str
    sha256: str
    size: int
    magic: int
    count: int


_FASHION_FILES: dict[str, tuple[_IdxFile, _IdxFile]] = {
    "train": (
        _IdxFile(
            "train-images-idx3-ubyte.gz",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            47_040_016,
            2051,
            60_000,
        ),
        _IdxFile(
            "train-labels-idx1-ubyte.gz",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            60_008,
            2049,
            60_000,
        ),
    ),
    "test": (
        _IdxFile(
            "t10k-images-idx3-ubyte.gz",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            7_840_016,
            2051,
            10_000,
        ),
        _IdxFile(
            "t10k-labels-idx1-ubyte.gz",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            10_008,
            2049,
            10_000,
        ),
    ),
}


def _load_fashion_mnist(
    root: Path, split: str, *, download: bool, progress: bool
) -> tuple[Tensor, Tensor]:
    image_file, label_file = _FASHION_FILES[split]
    images = _fashion_array(image_file, root, download=download, progress=progress)
    labels = _fashion_array(label_file, root, download=download, progress=progress)
    return torch.from_numpy(images.reshape(-1, 1, 28, 28)), torch.from_numpy(labels)


def _fashion_array(spec: _IdxFile, root: Path, *, download: bool, progress: bool) -> np.ndarray:
    path = _find_fashion_file(spec, root)
    if path is None:
        dest = root / spec.name
        if not download:
            raise FileNotFoundError(
                f"Fashion-MNIST file `{spec.name}` not found in `{root}`, "
                f"`{root / 'FashionMNIST' / 'raw'}` or `{_DEBIAN_FASHION_DIR}` and "
                f"`download=False`. Install it with `apt-get install dataset-fashion-mnist` or "
                f"download {_FASHION_URL}{spec.name} into `{root}`."
            )
        _download(
            _FASHION_URL + spec.name,
            dest,
            lambda tmp: _read_idx_bytes(tmp, spec, downloaded=True, shown=dest),
            progress,
        )
        path = dest
    stat = path.stat()
    # Copy out of the per-process cache so callers may modify their tensors freely.
    return _cached_idx_array(str(path), stat.st_mtime_ns, stat.st_size, spec).copy()


def _find_fashion_file(spec: _IdxFile, root: Path) -> Path | None:
    """First of ``root``, ``root/FashionMNIST/raw`` and Debian's folder holding the file.

    The gzip file is preferred; an uncompressed copy (same name without ``.gz``) also counts.
    """
    plain = spec.name.removesuffix(".gz")
    for folder in (root, root / "FashionMNIST" / "raw", _DEBIAN_FASHION_DIR):
        for candidate in (folder / spec.name, folder / plain):
            if candidate.is_file():
                return candidate
    return None


def _read_idx_bytes(
    path: Path, spec: _IdxFile, *, downloaded: bool = False, shown: Path | None = None
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
        raise _checksum_error(
            shown, "sha256 of the decompressed bytes", spec.sha256, found_sha, downloaded
        )
    return content


@functools.lru_cache(maxsize=8)
def _cached_idx_array(path: str, mtime_ns: int, size: int, spec: _IdxFile) -> np.ndarray:
    """Verified, decoded IDX array, cached per process by (path, mtime, size, spec)."""
    del mtime_ns, size  # part of the cache key only
    return _parse_idx(_read_idx_bytes(Path(path), spec), Path(path), spec)


def _parse_idx(content: bytes, path: Path, spec: _IdxFile) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# split_validation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# BatchLoader
# --------------------------------------------------------------------------------------------

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
        >>> from anl.integrations.mtard.data import DATASETS, BatchLoader, ImageData
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
