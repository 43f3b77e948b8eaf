"""Content hashes: what a file of this package records about its content, and the check of it
on load.

A hashed file is a dict with one more entry, :data:`DIGEST_KEY`, holding the SHA-256 of a
canonical serialization of every other entry (:func:`content_digest` for ``torch.save``
files, :func:`json_digest` for JSON ones; :func:`with_digest` adds it). The hash lives inside
the file, so the file and its hash are replaced by the same atomic rename
(:func:`~.files.atomic_file`) and cannot disagree after a crash at any point; and it is
computed over what a reader gets back (tensors by dtype, shape and bytes), not over the bytes
of the archive, so it covers exactly what is loaded. :func:`check_digest` recomputes it over
a loaded file: a difference raises :class:`CorruptFileError` naming the file. A hash detects
damage and edits that did not recompute it; it is not a signature.

Files without the entry were written before hashes (or by others): they are read as before,
and this package's readers of its own formats call :func:`warn_unhashed`, which warns once per
process.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch

#: The entry of a hashed file (a dict) that holds the SHA-256 (hex) of the rest.
DIGEST_KEY = "content_sha256"


class CorruptFileError(ValueError):
    """A file that cannot be what this package wrote: truncated, damaged, or modified since."""


class UnhashedFileWarning(UserWarning):
    """A file of this package's formats read without verification: it carries no hash."""


def _chunk(h: Any, tag: bytes, data: bytes) -> None:
    h.update(tag + struct.pack("<Q", len(data)) + data)


def _feed(h: Any, obj: Any) -> None:
    """One canonical, unambiguous encoding of ``obj`` into the hash ``h``."""
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        header = f"{type(obj).__name__}|{tensor.dtype}|{tuple(tensor.shape)}"
        _chunk(h, b"T", header.encode())
        if tensor.is_quantized:  # its integers, and the values they stand for
            _feed(h, tensor.dequantize())
            tensor = tensor.int_repr()
        flat = tensor.to("cpu").contiguous().reshape(-1)
        h.update(b"D" + struct.pack("<Q", flat.numel() * flat.element_size()))
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
    elif obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"B1" if obj else b"B0")
    elif isinstance(obj, int):
        _chunk(h, b"I", str(obj).encode())
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif isinstance(obj, complex):
        h.update(b"C" + struct.pack("<dd", obj.real, obj.imag))
    elif isinstance(obj, str):
        _chunk(h, b"S", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray)):
        _chunk(h, b"Y", bytes(obj))
    elif isinstance(obj, (torch.dtype, torch.device)):
        _chunk(h, b"V", f"{type(obj).__name__}|{obj}".encode())
    elif isinstance(obj, Mapping):
        _chunk(h, b"M", f"{type(obj).__name__}|{len(obj)}".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):  # torch.Size is a tuple: its name tells them apart
        _chunk(h, b"L", f"{type(obj).__name__}|{len(obj)}".encode())
        for value in obj:
            _feed(h, value)
    elif isinstance(obj, (set, frozenset)):  # no order of its own: its items' hashes, sorted
        items = []
        for value in obj:
            item = hashlib.sha256()
            _feed(item, value)
            items.append(item.digest())
        _chunk(h, b"E", f"{type(obj).__name__}|{len(obj)}".encode() + b"".join(sorted(items)))
    else:
        raise TypeError(
            f"cannot hash an object of type {type(obj).__module__}.{type(obj).__qualname__}"
        )


def content_digest(obj: Any) -> str:
    """The SHA-256 (hex) of a canonical serialization of ``obj``, as ``torch.load`` gives it
    back: container types, dict order, keys, scalars, and each tensor's class, dtype, shape and
    bytes (on the CPU, contiguous), so it depends neither on the device the tensors are on nor
    on the layout of the zip archive. Tensors, numbers, strings, bytes, None, dtypes, devices
    and dicts, lists, tuples and sets of those are supported (what
    ``torch.load(weights_only=True)`` reads); anything else raises ``TypeError``.

    Example:
        >>> a = content_digest({"w": torch.ones(2), "epoch": 3})
        >>> a == content_digest({"w": torch.ones(2), "epoch": 3}), len(a)
        (True, 64)
        >>> a == content_digest({"w": torch.tensor([1.0, 1.5]), "epoch": 3})
        False
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def json_digest(value: Any) -> str:
    """The SHA-256 (hex) of ``value`` as canonical JSON (keys sorted, no spaces, ASCII), after
    a JSON round trip (tuples become lists, keys strings), so that the value read back from
    the file gives the same hash.

    Example:
        >>> json_digest({"b": (1, 2.5), "a": None}) == json_digest({"a": None, "b": [1, 2.5]})
        True
    """
    value = json.loads(json.dumps(value))
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def with_digest(obj: Any, digest: Callable[[Any], str]) -> dict[Any, Any]:
    """``obj`` (a dict) with :data:`DIGEST_KEY` added: ``digest(obj)``.

    Raises:
        ValueError: if ``obj`` is not a dict, or already has the entry.
    """
    if not isinstance(obj, Mapping) or DIGEST_KEY in obj:
        found = type(obj).__name__ + (f" with {DIGEST_KEY!r}" if isinstance(obj, Mapping) else "")
        raise ValueError(
            f"Parameter `obj` should be a dict without a {DIGEST_KEY!r} entry, to be written "
            f"with a content hash. Found a {found}."
        )
    return {**obj, DIGEST_KEY: digest(obj)}


def check_digest(
    obj: Any, path: str | os.PathLike, digest: Callable[[Any], str]
) -> tuple[Any, bool]:
    """``(obj without its hash entry, whether it had one)`` for ``obj`` loaded from ``path``.

    Raises:
        CorruptFileError: if ``obj`` has the entry and it differs from ``digest`` of the rest.
    """
    if not isinstance(obj, dict) or DIGEST_KEY not in obj:
        return obj, False
    content = {k: v for k, v in obj.items() if k != DIGEST_KEY}
    if type(obj) is OrderedDict:
        content = OrderedDict(content)
    recorded = obj[DIGEST_KEY]
    try:
        actual = digest(content)
    except (TypeError, RuntimeError, ValueError) as exc:  # e.g. an object we never write
        raise CorruptFileError(
            f"'{path}' is corrupt or was modified after it was written: its content cannot be "
            f"hashed ({exc})."
        ) from None
    if recorded != actual:
        shown = recorded[:16] + "..." if isinstance(recorded, str) else repr(recorded)[:40]
        raise CorruptFileError(
            f"'{path}' is corrupt or was modified after it was written: the SHA-256 of its "
            f"content ({actual[:16]}...) differs from the one recorded in it ({shown}). "
            "Restore it from a copy, or delete it to have it made again."
        )
    return content, True


_warned_unhashed = False


def warn_unhashed(path: str | os.PathLike) -> None:
    """Warn (:class:`UnhashedFileWarning`, once per process) that ``path``, a file of this
    package's formats, carries no content hash and is read unverified: an earlier version
    wrote it (files written from now on carry one)."""
    global _warned_unhashed
    if _warned_unhashed:
        return
    _warned_unhashed = True
    warnings.warn(
        f"'{path}' carries no content hash (written by an earlier version of anl-mtard): it "
        "is read without verification, as are other such files (this warning is shown once "
        "per process). Files written from now on carry one.",
        UnhashedFileWarning,
        stacklevel=3,
    )
