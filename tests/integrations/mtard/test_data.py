"""Tests of ``anl.integrations.mtard.data``: loaders, integrity checks, splits, batching.

CIFAR archives are written here in the exact on-disk format (a ``.tar.gz`` holding protocol-2
pickles with bytes keys) and read through the real loader; Fashion-MNIST uses Debian's real
files in ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anl.integrations.mtard.data import cifar, fashion_mnist
from anl.integrations.mtard.data.loader import BatchLoader, split_validation
from anl.integrations.mtard.data.registry import DATASETS, ImageData, load_dataset

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------
# Writing CIFAR archives in the official format
# --------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2 wrote the official CIFAR batches.

    ``str`` and ``bytes`` become ``BINSTRING`` opcodes (Python 2 ``str``), and NumPy's array
    reconstructor is named ``numpy.core.multiarray._reconstruct`` as NumPy 1 named it.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_binstring(self, obj: str | bytes) -> None:
        raw = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_binstring
    dispatch[str] = _save_binstring

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__
        if module.endswith("multiarray"):
            module = "numpy.core.multiarray"
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def _py2_dumps(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _py3_dumps(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _batch(rows: np.ndarray, labels: list[int], label_key: bytes, title: bytes) -> dict:
    batch = {
        b"batch_label": title,
        label_key: labels,
        b"data": rows,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [label // 5 for label in labels]
    return batch


def _cifar10_members(seed: int = 0, per_batch: int = 3, n_test: int = 2):
    """Members of a small CIFAR-10 archive plus the rows and labels they hold."""
    rng = np.random.default_rng(seed)
    members: dict[str, bytes] = {}
    expected: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        split = "test" if name == "test_batch" else "train"
        expected[split][0].append(rows)
        expected[split][1].extend(labels)
        batch = _batch(rows, labels, b"labels", name.encode())
        members[f"cifar-10-batches-py/{name}"] = _py2_dumps(batch)
    members["cifar-10-batches-py/batches.meta"] = _py2_dumps(
        {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    )
    flat = {k: (np.concatenate(v[0]), np.array(v[1], dtype=np.int64)) for k, v in expected.items()}
    return members, flat


def _write_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(next(iter(members)).split("/")[0])
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _expect_source(monkeypatch, key: str, *, md5: str | None, train: int, test: int) -> None:
    """Point the loader's table at a test archive (its checksum and split sizes)."""
    source = cifar.CIFAR_SOURCES[key]
    replaced = dataclasses.replace(
        source, md5=source.md5 if md5 is None else md5, train_size=train, test_size=test
    )
    monkeypatch.setitem(cifar.CIFAR_SOURCES, key, replaced)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    """A small CIFAR-10 archive (5 x 3 train, 2 test images) the loader accepts."""
    members, expected = _cifar10_members()
    archive = tmp_path / "cifar-10-python.tar.gz"
    _write_tar(archive, members)
    _expect_source(monkeypatch, "cifar10", md5=_md5(archive), train=15, test=2)
    return tmp_path, archive, members, expected


# --------------------------------------------------------------------------------------------
# Static facts and ImageData
# --------------------------------------------------------------------------------------------


def test_dataset_facts():
    assert set(DATASETS) == {"cifar10", "cifar100", "fashion_mnist"}
    assert DATASETS["cifar10"].default_eps == pytest.approx(8 / 255)
    assert DATASETS["cifar100"].num_classes == 100
    fashion = DATASETS["fashion_mnist"]
    assert (fashion.channels, fashion.image_size, fashion.default_eps) == (1, 28, 0.1)
    for info in DATASETS.values():
        assert len(info.mean) == len(info.std) == info.channels
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.num_classes = 3  # type: ignore[misc]


def _toy(n: int = 6, name: str = "cifar10") -> ImageData:
    info = DATASETS[name]
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    images = images.expand(n, info.channels, info.image_size, info.image_size).contiguous()
    return ImageData(images, torch.arange(n) % info.num_classes, info)


def test_image_data_subset_and_len():
    data = _toy(6)
    part = data.subset([4, 1])
    assert len(part) == 2
    assert part.images[:, 0, 0, 0].tolist() == [4, 1]
    assert part.labels.tolist() == [4, 1]
    assert "cifar10" in repr(part)


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), "images"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.int32), "labels"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), "same"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), "shape"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 10]), r"\[0, 9\]"),
    ],
)
def test_image_data_rejects_bad_input(images, labels, match):
    with pytest.raises(ValueError, match=match):
        ImageData(images, labels, DATASETS["cifar10"])


def test_subset_rejects_float_indices():
    with pytest.raises(ValueError, match="indices"):
        _toy(4).subset(torch.tensor([0.0, 1.0]))


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def test_cifar10_archive_round_trip(cifar10):
    root, _, _, expected = cifar10
    before = _listing(root)
    train = load_dataset("cifar10", "train", data_dir=root, download=False)
    test = load_dataset("cifar10", "test", data_dir=root, download=False)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (2, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == expected["train"][1].tolist()
    assert test.labels.tolist() == expected["test"][1].tolist()
    rows = expected["train"][0]
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    for sample, channel, i, j in [(0, 0, 0, 0), (4, 2, 5, 7), (14, 1, 31, 30), (7, 0, 12, 31)]:
        assert int(train.images[sample, channel, i, j]) == int(
            rows[sample, channel * 1024 + i * 32 + j]
        )
    flat = train.images.reshape(15, -1).numpy()
    np.testing.assert_array_equal(flat, rows)
    assert _listing(root) == before  # nothing extracted next to the archive


def test_cifar10_extracted_folder(tmp_path, monkeypatch):
    members, expected = _cifar10_members(seed=1)
    for name, payload in members.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(payload)
    _expect_source(monkeypatch, "cifar10", md5=None, train=15, test=2)
    test = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(test.images.reshape(2, -1).numpy(), expected["test"][0])


def test_cifar100_python3_pickles(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    train_rows = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    test_rows = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    members = {
        "cifar-100-python/train": _py3_dumps(
            _batch(train_rows, [0, 99, 42, 7], b"fine_labels", b"t")
        ),
        "cifar-100-python/test": _py3_dumps(_batch(test_rows, [3, 98, 1], b"fine_labels", b"t")),
        "cifar-100-python/meta": _py3_dumps({b"fine_label_names": [b"apple"] * 100}),
    }
    archive = tmp_path / "cifar-100-python.tar.gz"
    _write_tar(archive, members)
    _expect_source(monkeypatch, "cifar100", md5=_md5(archive), train=4, test=3)
    train = load_dataset("CIFAR-100", "train", data_dir=tmp_path, download=False)
    test = load_dataset("cifar100", "test", data_dir=tmp_path, download=False)
    assert train.info.num_classes == 100
    assert train.labels.tolist() == [0, 99, 42, 7]  # fine labels, not coarse ones
    assert test.labels.tolist() == [3, 98, 1]
    assert int(test.images[2, 1, 3, 4]) == int(test_rows[2, 1024 + 3 * 32 + 4])


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _replace_member(members: dict[str, bytes], name: str, payload: bytes) -> dict[str, bytes]:
    return {**members, f"cifar-10-batches-py/{name}": payload}


def _bad_batch(rows: np.ndarray, labels: list[int]) -> bytes:
    return _py2_dumps(_batch(rows, labels, b"labels", b"bad"))


@pytest.mark.parametrize(
    "case",
    [
        "wrong_md5",
        "truncated_archive",
        "garbage_archive",
        "corrupt_pickle",
        "forbidden_global",
        "wrong_columns",
        "label_out_of_range",
        "label_count",
        "missing_member",
        "symlink_member",
        "wrong_size",
    ],
)
def test_cifar_corruption_is_rejected(tmp_path, monkeypatch, case):
    members, _ = _cifar10_members(seed=2)
    archive = tmp_path / "cifar-10-python.tar.gz"
    marker = tmp_path / "pwned"
    sizes = {"train": 15, "test": 2}
    split, match = "train", None
    links = None
    if case == "corrupt_pickle":
        good = members["cifar-10-batches-py/data_batch_3"]
        members = _replace_member(members, "data_batch_3", good[: len(good) // 2])
        match = "data_batch_3.*could not be unpickled"
    elif case == "forbidden_global":
        members = _replace_member(members, "data_batch_2", pickle.dumps(_Exploit(marker), 2))
        match = "data_batch_2.*system.*forbidden"
    elif case == "wrong_columns":
        rows = np.zeros((3, 3000), dtype=np.uint8)
        members = _replace_member(members, "data_batch_1", _bad_batch(rows, [0, 1, 2]))
        match = "data_batch_1.*3072"
    elif case == "label_out_of_range":
        rows = np.zeros((3, 3072), dtype=np.uint8)
        members = _replace_member(members, "data_batch_4", _bad_batch(rows, [0, 10, 2]))
        match = r"data_batch_4.*\[0, 9\]"
    elif case == "label_count":
        rows = np.zeros((3, 3072), dtype=np.uint8)
        members = _replace_member(members, "data_batch_5", _bad_batch(rows, [0, 1]))
        match = "data_batch_5.*3 images but 2 labels"
    elif case == "missing_member":
        del members["cifar-10-batches-py/test_batch"]
        split, match = "test", "lacks.*test_batch"
    elif case == "symlink_member":
        del members["cifar-10-batches-py/test_batch"]
        links = {"cifar-10-batches-py/test_batch": "/etc/passwd"}
        split, match = "test", "test_batch.*not a regular file"
    elif case == "wrong_size":
        sizes["train"] = 50_000
        match = "50000"
    _write_tar(archive, members, links)
    md5 = _md5(archive)
    if case == "wrong_md5":
        md5 = "0" * 32
        match = f"md5 is `{_md5(archive)}`, expected `{'0' * 32}`"
    elif case == "truncated_archive":
        archive.write_bytes(archive.read_bytes()[:-200])
        md5, match = _md5(archive), "corrupt or truncated"
    elif case == "garbage_archive":
        archive.write_bytes(b"this is not a gzip file" * 10)
        md5, match = _md5(archive), "corrupt or truncated"
    _expect_source(monkeypatch, "cifar10", md5=md5, train=sizes["train"], test=sizes["test"])
    before = _listing(tmp_path)
    with pytest.raises(ValueError, match=match) as error:
        load_dataset("cifar10", split, data_dir=tmp_path, download=False)
    assert str(archive) in str(error.value)
    assert not marker.exists()
    assert _listing(tmp_path) == before


def test_forbidden_global_rejected_in_extracted_folder(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(_Exploit(marker), 2))
    _expect_source(monkeypatch, "cifar10", md5=None, train=15, test=2)
    with pytest.raises(ValueError, match=r"test_batch.*forbidden"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert not marker.exists()


def test_cifar_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


# --------------------------------------------------------------------------------------------
# Simulated downloads
# --------------------------------------------------------------------------------------------


class _FakeResponse:
    """Streams bytes from memory in small chunks; optionally fails after ``fail_after`` bytes."""

    def __init__(self, payload: bytes, fail_after: int | None, error: BaseException) -> None:
        self._buffer = io.BytesIO(payload)
        self._fail_after = fail_after
        self._error = error
        self.headers = {"Content-Length": str(len(payload))}

    def read(self, size: int = -1) -> bytes:
        if self._fail_after is not None and self._buffer.tell() >= self._fail_after:
            raise self._error
        return self._buffer.read(min(size, 4096) if size > 0 else 4096)

    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _serve(monkeypatch, files: dict[str, bytes], fail_after=None, error=None) -> list[str]:
    requested: list[str] = []

    def fake_urlopen(url: str, timeout: float | None = None) -> _FakeResponse:
        requested.append(url)
        error_ = error or ConnectionResetError("connection reset by peer")
        return _FakeResponse(files[url.rsplit("/", 1)[-1]], fail_after, error_)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def _archive_bytes(tmp_path: Path) -> tuple[bytes, dict]:
    members, expected = _cifar10_members(seed=3)
    staging = tmp_path / "staging.tar.gz"
    _write_tar(staging, members)
    payload = staging.read_bytes()
    staging.unlink()
    return payload, expected


def test_cifar_download_succeeds(tmp_path, monkeypatch):
    payload, expected = _archive_bytes(tmp_path)
    root = tmp_path / "data"
    _expect_source(monkeypatch, "cifar10", md5=hashlib.md5(payload).hexdigest(), train=15, test=2)
    requested = _serve(monkeypatch, {"cifar-10-python.tar.gz": payload})
    test = load_dataset("cifar10", "test", data_dir=root, progress=False)
    assert requested == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    np.testing.assert_array_equal(test.images.reshape(2, -1).numpy(), expected["test"][0])
    assert _listing(root) == ["cifar-10-python.tar.gz"]
    assert (root / "cifar-10-python.tar.gz").read_bytes() == payload
    load_dataset("cifar10", "train", data_dir=root, progress=False)  # now offline
    assert len(requested) == 1


@pytest.mark.parametrize("failure", ["connection_reset", "interrupt", "bad_checksum"])
def test_cifar_failed_download_leaves_nothing(tmp_path, monkeypatch, failure):
    payload, _ = _archive_bytes(tmp_path)
    root = tmp_path / "data"
    good_md5 = hashlib.md5(payload).hexdigest()
    md5 = "f" * 32 if failure == "bad_checksum" else good_md5
    _expect_source(monkeypatch, "cifar10", md5=md5, train=15, test=2)
    if failure == "bad_checksum":
        _serve(monkeypatch, {"cifar-10-python.tar.gz": payload})
        expected_error, match = ValueError, f"md5 is `{good_md5}`, expected `{'f' * 32}`"
    elif failure == "interrupt":
        _serve(monkeypatch, {"cifar-10-python.tar.gz": payload}, 8192, KeyboardInterrupt())
        expected_error, match = KeyboardInterrupt, None
    else:
        _serve(monkeypatch, {"cifar-10-python.tar.gz": payload}, 8192)
        expected_error, match = OSError, "connection reset"
    with pytest.raises(expected_error, match=match) as error:
        load_dataset("cifar10", "test", data_dir=root, progress=False)
    if expected_error is not KeyboardInterrupt:
        assert "cifar-10-python.tar.gz" in str(error.value)
    assert _listing(root) == []


def test_download_shorter_than_announced_is_rejected(tmp_path, monkeypatch):
    payload, _ = _archive_bytes(tmp_path)
    _expect_source(monkeypatch, "cifar10", md5=hashlib.md5(payload).hexdigest(), train=15, test=2)
    _serve(monkeypatch, {"cifar-10-python.tar.gz": payload})
    original = _FakeResponse.__init__

    def lying_init(self, body, fail_after, error):
        original(self, body[:-10], fail_after, error)
        self.headers = {"Content-Length": str(len(body))}

    monkeypatch.setattr(_FakeResponse, "__init__", lying_init)
    with pytest.raises(OSError, match=f"received {len(payload) - 10} of {len(payload)} bytes"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "data", progress=False)
    assert _listing(tmp_path / "data") == []


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian's real files)
# --------------------------------------------------------------------------------------------


def test_fashion_mnist_real_files(tmp_path):
    train = load_dataset("fashion_mnist", "train", data_dir=tmp_path, download=False)
    test = load_dataset("fashion_mnist", "test", data_dir=tmp_path, download=False)
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 1, 28, 28)
    assert int(train.labels[0]) == 9  # the first training image is an ankle boot
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    with gzip.open(DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz") as handle:
        raw = handle.read()
    assert bytes(test.images[1, 0].flatten().tolist()) == raw[16 + 784 : 16 + 2 * 784]
    assert _listing(tmp_path) == []


def test_fashion_mnist_returns_independent_copies(tmp_path):
    first = load_dataset("fashion_mnist", "test", data_dir=tmp_path, download=False)
    reference = first.images[0].clone()
    first.images[0] = 0
    first.labels[0] = 0
    second = load_dataset("fashion_mnist", "test", data_dir=tmp_path, download=False)
    assert torch.equal(second.images[0], reference)
    assert int(second.labels[0]) == 9  # the first test image is an ankle boot too


@pytest.mark.parametrize("where", ["decompressed", "compressed"])
def test_fashion_mnist_corrupted_copy_rejected(tmp_path, where):
    name = "t10k-images-idx3-ubyte.gz"
    if where == "decompressed":
        with gzip.open(DEBIAN_FASHION / name) as handle:
            content = bytearray(handle.read())
        content[16 + 5000] ^= 0xFF
        (tmp_path / name).write_bytes(gzip.compress(bytes(content), compresslevel=1))
        match = "sha256 of the decompressed bytes is `[0-9a-f]{64}`, expected `5b4141f0"
    else:
        content = bytearray((DEBIAN_FASHION / name).read_bytes())
        content[len(content) // 2] ^= 0xFF
        (tmp_path / name).write_bytes(bytes(content))
        match = "corrupt|sha256|size"
    with pytest.raises(ValueError, match=match) as error:
        load_dataset("fashion_mnist", "test", data_dir=tmp_path, download=False)
    assert str(tmp_path / name) in str(error.value)


def test_fashion_mnist_download(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    names = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    files = {name: (DEBIAN_FASHION / name).read_bytes() for name in names}
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_dataset("fashion_mnist", "test", data_dir=root, download=False)
    requested = _serve(monkeypatch, files)
    test = load_dataset("fashion_mnist", "test", data_dir=root, progress=False)
    assert len(test) == 10_000 and int(test.labels[0]) == 9
    assert requested == [
        f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{n}" for n in names
    ]
    assert _listing(root) == sorted(names)


def test_fashion_mnist_download_with_wrong_content_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    labels = "t10k-labels-idx1-ubyte.gz"
    with gzip.open(DEBIAN_FASHION / labels) as handle:
        content = bytearray(handle.read())
    content[-1] = (content[-1] + 1) % 10
    files = {
        "t10k-images-idx3-ubyte.gz": (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").read_bytes(),
        labels: gzip.compress(bytes(content)),
    }
    _serve(monkeypatch, files)
    root = tmp_path / "data"
    with pytest.raises(ValueError, match=f"{labels}.*sha256.*expected `0402a96d"):
        load_dataset("fashion_mnist", "test", data_dir=root, progress=False)
    assert _listing(root) == ["t10k-images-idx3-ubyte.gz"]  # the good file stays, the bad one not


def test_idx_header_is_validated(tmp_path):
    spec = fashion_mnist.FILES["test"][1]
    good = struct.pack(">II", 2049, spec.count) + bytes(spec.count)
    assert fashion_mnist.parse_idx(good, tmp_path / "x", spec).shape == (spec.count,)
    with pytest.raises(ValueError, match=r"magic should be 2049\. Found 2051"):
        fashion_mnist.parse_idx(
            struct.pack(">II", 2051, spec.count) + bytes(spec.count), tmp_path / "x", spec
        )
    with pytest.raises(ValueError, match=r"dimensions should be \(10000,\)"):
        fashion_mnist.parse_idx(
            struct.pack(">II", 2049, 7) + bytes(spec.count), tmp_path / "x", spec
        )
    with pytest.raises(ValueError, match=r"labels should lie in \[0, 9\]"):
        fashion_mnist.parse_idx(good[:-1] + b"\x0a", tmp_path / "x", spec)


# --------------------------------------------------------------------------------------------
# split_validation
# --------------------------------------------------------------------------------------------


def test_split_validation_is_disjoint_and_deterministic():
    data = _toy(20, "cifar100")
    train, val = split_validation(data, 6, seed=1)
    ids_train = train.images[:, 0, 0, 0].tolist()
    ids_val = val.images[:, 0, 0, 0].tolist()
    assert len(ids_val) == 6 and len(ids_train) == 14
    assert sorted(ids_train + ids_val) == list(range(20))
    assert ids_train == sorted(ids_train) and ids_val == sorted(ids_val)
    assert train.labels.tolist() == ids_train  # labels travel with their images
    again = split_validation(data, 6, seed=1)[1].images[:, 0, 0, 0].tolist()
    other = split_validation(data, 6, seed=2)[1].images[:, 0, 0, 0].tolist()
    assert again == ids_val
    assert other != ids_val


@pytest.mark.parametrize("val_size", [0, 20, 25, -1, 2.5, True])
def test_split_validation_rejects_bad_size(val_size):
    with pytest.raises(ValueError, match="val_size"):
        split_validation(_toy(20), val_size)


# --------------------------------------------------------------------------------------------
# BatchLoader
# --------------------------------------------------------------------------------------------


def _ids(loader: BatchLoader) -> list[int]:
    """Sample ids seen in one pass (images of `_toy` hold their own index in every pixel)."""
    out: list[int] = []
    for x, y in loader:
        ids = (x[:, 0, 0, 0] * 255).round().long()
        assert torch.equal(y, ids % loader.data.info.num_classes)
        out.extend(ids.tolist())
    return out


def test_loader_covers_data_once_per_epoch():
    data = _toy(23)
    loader = BatchLoader(data, 5, shuffle=True, seed=4)
    batches = list(loader)
    assert [x.shape[0] for x, _ in batches] == [5, 5, 5, 5, 3]
    assert len(loader) == 5
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (3, 32, 32)
    ids = _ids(loader)
    assert sorted(ids) == list(range(23))
    assert ids != list(range(23))  # shuffled
    assert _ids(BatchLoader(data, 5)) == list(range(23))  # in order without shuffle


def test_loader_is_deterministic_per_seed_and_epoch():
    data = _toy(30)
    first = BatchLoader(data, 8, shuffle=True, seed=7)
    second = BatchLoader(data, 8, shuffle=True, seed=7)
    first.set_epoch(2)
    second.set_epoch(2)
    assert _ids(first) == _ids(second) == _ids(first)
    epoch_two = _ids(first)
    first.set_epoch(3)
    assert _ids(first) != epoch_two
    assert _ids(BatchLoader(data, 8, shuffle=True, seed=8)) != _ids(
        BatchLoader(data, 8, shuffle=True, seed=7)
    )


def test_loader_shards_exactly_without_padding():
    data = _toy(11)
    shards = [
        _ids(BatchLoader(data, 4, shuffle=True, seed=1, rank=r, world_size=2, pad_to_even=False))
        for r in range(2)
    ]
    assert [len(s) for s in shards] == [6, 5]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(11))
    # Rank r takes positions r, r + 2, ... of the same epoch order.
    order = _ids(BatchLoader(data, 4, shuffle=True, seed=1))
    assert shards[0] == order[0::2] and shards[1] == order[1::2]


def test_loader_pads_shards_to_equal_length():
    data = _toy(11)
    shards = [
        _ids(BatchLoader(data, 4, shuffle=True, seed=1, rank=r, world_size=3, pad_to_even=True))
        for r in range(3)
    ]
    order = _ids(BatchLoader(data, 4, shuffle=True, seed=1))
    padded = order + order[:1]  # 11 -> 12, the leading sample repeated
    assert shards == [padded[r::3] for r in range(3)]
    assert sorted(set(shards[0] + shards[1] + shards[2])) == list(range(11))


@pytest.mark.parametrize("n", [1, 7, 12])
@pytest.mark.parametrize("batch_size", [1, 3, 5])
@pytest.mark.parametrize("world_size", [1, 2, 5])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("pad_to_even", [False, True])
def test_loader_len_matches_iteration(n, batch_size, world_size, drop_last, pad_to_even):
    data = _toy(n)
    seen = []
    for rank in range(world_size):
        loader = BatchLoader(
            data,
            batch_size,
            shuffle=True,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
            pad_to_even=pad_to_even,
        )
        sizes = [x.shape[0] for x, _ in loader]
        assert len(sizes) == len(loader)
        assert all(size == batch_size for size in sizes[:-1])
        if drop_last and sizes:
            assert sizes[-1] == batch_size
        seen.append(sum(sizes))
        if not drop_last:
            assert sum(sizes) == loader.num_samples
    if pad_to_even:
        assert len(set(seen)) == 1  # every rank runs the same number of steps
    elif not drop_last:
        assert sum(seen) == n


def _candidates(image: torch.Tensor) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every crop (offsets 0..8, zero padding 4) and its mirror, computed one by one."""
    padded = F.pad(image, (4, 4, 4, 4))
    out = {}
    for oy in range(9):
        for ox in range(9):
            crop = padded[:, oy : oy + 32, ox : ox + 32]
            out[(oy, ox, False)] = crop
            out[(oy, ox, True)] = crop.flip(-1)
    return out


@pytest.mark.parametrize("augment", ["crop_flip", "crop"])
def test_loader_augmentation_is_a_shifted_flipped_copy(augment):
    generator = torch.Generator().manual_seed(0)
    n = 24
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    data = ImageData(images, torch.arange(n), DATASETS["cifar100"])  # label = sample id
    loader = BatchLoader(data, 10, shuffle=True, augment=augment, seed=5)
    loader.set_epoch(1)
    found = []
    for x, y in loader:
        assert x.shape[1:] == (3, 32, 32)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        for image, sample in zip(x, y.tolist(), strict=True):
            matches = [
                key
                for key, crop in _candidates(images[sample].float() / 255).items()
                if torch.equal(crop, image)
            ]
            assert len(matches) == 1
            found.append(matches[0])
    assert len(found) == n
    flips = {flip for _, _, flip in found}
    assert flips == ({False, True} if augment == "crop_flip" else {False})
    assert len({(oy, ox) for oy, ox, _ in found}) > 5  # offsets vary per sample
    again = BatchLoader(data, 10, shuffle=True, augment=augment, seed=5)
    again.set_epoch(1)
    for (x1, _), (x2, _) in zip(loader, again, strict=True):
        assert torch.equal(x1, x2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2, "augment": "flip"}, "augment"),
        ({"batch_size": 2, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 2, "world_size": 0}, "world_size"),
        ({"batch_size": 2, "seed": 1.5}, "seed"),
    ],
)
def test_loader_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchLoader(_toy(4), **kwargs)


def test_loader_rejects_bad_epoch():
    loader = BatchLoader(_toy(4), 2)
    with pytest.raises(ValueError, match="epoch"):
        loader.set_epoch(-1)
