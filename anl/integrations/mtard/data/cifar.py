"""CIFAR-10 and CIFAR-100 from the official python-pickle archives.

The archives of https://www.cs.toronto.edu/~kriz/cifar.html are verified by their published
md5 and read directly from the ``.tar.gz`` (nothing is extracted to disk); an already
extracted folder (``cifar-10-batches-py/``, ``cifar-100-python/``, torchvision's layout) is
read as well. The batches are pickles, so they are decoded by a restricted unpickler that only
rebuilds NumPy arrays and refuses every other global.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .download import checksum_error, fetch, file_digest


@dataclass(frozen=True)
class CifarSource:
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


CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
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
    "cifar100": CifarSource(
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


def load_cifar(
    key: str, root: Path, split: str, *, download: bool, progress: bool
) -> tuple[Tensor, Tensor]:
    """The images (uint8 ``N x 3 x 32 x 32``) and labels of a CIFAR split under ``root``:
    the archive, else the extracted folder, else (with ``download``) a verified download."""
    source = CIFAR_SOURCES[key]
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
        fetch(
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
    found = file_digest(path, "md5")
    if found != expected:
        raise checksum_error(shown or path, "md5", expected, found, downloaded)


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
    raw: bytes, where: str, source: CifarSource
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
