"""Files: one atomic, fsync'd write for everything the package writes, and safe reading of
``torch.save`` files.

:func:`atomic_file` is the one way a file is written: the bytes go to a temporary file in the
destination's folder, which is flushed, ``fsync``-ed, given the permissions of the file it
replaces (or ``0o666 & ~umask``) and renamed over the destination with :func:`os.replace`
(atomic on POSIX and Windows), after which the folder is ``fsync``-ed too. A reader sees the
old file or the new one, never a partial one, and a crash leaves no partial file behind: the
temporary file is removed when anything fails (``KeyboardInterrupt`` included).
:func:`atomic_write_text` and :func:`atomic_save` (``torch.save``) are built on it.

:func:`json_finite` makes a result strict JSON (no NaN); :func:`read_json_object` reads a JSON
file back and names it when it is truncated or corrupt. :func:`safe_load` is
``torch.load(weights_only=True)``: tensors and plain containers only. The
official MTARD code loads checkpoints with unrestricted unpickling, which runs whatever code a
file asks for; here such a file is refused with a :class:`ValueError`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

PathLike = str | os.PathLike


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through; it replaces ``path`` when the block ends.

    The folder is created if needed. Inside the block the handle's ``name`` is the temporary
    file (flush before reading it back, e.g. to verify a download); an exception in the block
    removes it and leaves an existing ``path`` untouched.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_file(folder / "a.bin") as handle:
        ...     _ = handle.write(b"data")
        >>> (folder / "a.bin").read_bytes(), sorted(p.name for p in folder.iterdir())
        (b'data', ['a.bin'])
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below; kept on success)
        mode="wb", dir=directory, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with tmp:
            yield tmp
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise
    _fsync_directory(directory)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_file`: never a partial file at ``path``."""
    with atomic_file(path) as handle:
        torch.save(obj, handle)


_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def safe_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a file written by ``torch.save`` with ``weights_only=True``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is truncated, corrupt or not a PyTorch file, or if it stores
            objects that only unrestricted unpickling could rebuild (arbitrary classes,
            NumPy arrays, ...); such files are never unpickled.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file '{path}' does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"Checkpoint path '{path}' is a directory, not a file.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        match = _GLOBAL_RE.search(str(exc))
        if match is not None:
            raise ValueError(
                f"Checkpoint '{path}' needs unsafe unpickling: it stores `{match.group(1)}`, "
                "which only unrestricted unpickling (able to run arbitrary code) could rebuild; "
                "it is refused (torch.load with weights_only=True). If you trust the file, "
                "re-save its tensors as a plain state dict."
            ) from exc
        raise _invalid_checkpoint(path, exc) from exc
    except (PermissionError, IsADirectoryError, FileNotFoundError, MemoryError):
        raise
    except RuntimeError as exc:
        if "device" in str(exc).lower() and "archive" not in str(exc):
            raise  # e.g. map_location="cuda" on a machine without CUDA
        raise _invalid_checkpoint(path, exc) from exc
    except Exception as exc:  # EOFError, OSError, KeyError, ...: not a torch.save file
        raise _invalid_checkpoint(path, exc) from exc


def _invalid_checkpoint(path: Path, exc: BaseException) -> ValueError:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return ValueError(
        f"'{path}' is not a valid checkpoint (truncated, corrupt, or not written by torch.save; "
        f"{path.stat().st_size} bytes): {type(exc).__name__}" + (f": {detail}" if detail else "")
    )


def json_finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (and dict keys made
    strings), so that ``json.dumps`` writes strict JSON.

    Example:
        >>> json_finite({"a": [1.0, float("nan")], 2: float("inf")})
        {'a': [1.0, None], '2': None}
    """
    if isinstance(value, dict):
        return {str(k): json_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json_object(path: PathLike) -> dict[str, Any]:
    """The JSON object (a dict) that the file ``path`` holds.

    Raises:
        FileNotFoundError, PermissionError, ...: the file cannot be opened (the ``OSError``
            names it).
        ValueError: naming the file, when it is not UTF-8 JSON (e.g. truncated by a crash or
            half-written by another program) or holds something other than an object.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"'{path}' is not valid JSON (truncated or corrupt?): {exc.msg} (line "
            f"{exc.lineno}, column {exc.colno})."
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"'{path}' is not a UTF-8 text file: {exc}.") from exc
    if not isinstance(value, dict):
        raise ValueError(f"'{path}' should hold a JSON object. Found a {type(value).__name__}.")
    return value
