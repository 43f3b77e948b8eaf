"""Files: one atomic, fsync'd write for everything the package writes, and safe reading of
``torch.save`` and JSON files, verified against their content hashes.

:func:`atomic_file` is the one way a file is written: the bytes go to a temporary file in the
destination's folder (``.<name>.anl-XXXXXXXX.tmp``, locked with ``flock`` until it is renamed),
which is flushed, ``fsync``-ed, given the permissions of the file it replaces (or
``0o666 & ~umask``) and renamed over the destination with :func:`os.replace` (atomic on POSIX
and Windows), after which the folder is ``fsync``-ed too. A reader sees the old file or the new
one, never a partial one. A failure removes the temporary file (``KeyboardInterrupt``
included); a process killed outright cannot, so each write first removes the temporary files
that killed writes left in its folder (:func:`remove_stale_temps`). :func:`atomic_write_text`,
:func:`atomic_write_json` and :func:`atomic_save` (``torch.save``) are built on it; with
``digest=True`` the last two add the content hash of :mod:`.integrity` to the dict they write.

:func:`safe_load` is ``torch.load(weights_only=True)``: tensors and plain containers only. The
official MTARD code loads checkpoints with unrestricted unpickling, which runs whatever code a
file asks for; here such a file is refused with a :class:`ValueError` naming the global it
asks for. :func:`safe_load` and :func:`read_json` verify a content hash when the file has one
(:class:`~.integrity.CorruptFileError` when it differs) and return the dict without it; their
``*_verified`` forms also say whether there was one; :func:`read_json_object` also insists on a
JSON object. :func:`json_finite` makes a result strict JSON (no NaN).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from .integrity import CorruptFileError, check_digest, content_digest, json_digest, with_digest

try:  # POSIX: a writer holds a lock on its temporary file; Windows has no fcntl
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike

#: A temporary file of :func:`atomic_file` for the destination named by group 1.
TEMP_RE = re.compile(r"^\.(.+)\.anl-[a-z0-9_]{8}\.tmp$")
#: A temporary file of ours younger than this (seconds) is never removed: its writer may not
#: have taken its lock yet (it does so right after creating it).
FRESH_TEMP_S = 60.0
#: Where locks say nothing (earlier versions' ``.<name>.XXXXXXXX.tmp``, which hold none, and
#: file systems without ``flock``), a temporary file is abandoned once this old (seconds): a
#: live write touches its file far more often.
UNLOCKED_TEMP_S = 600.0

# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


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


def _legacy_temp_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp$")


def _remove_if_abandoned(path: Path, *, locked_by_writer: bool) -> bool:
    """Remove the temporary file ``path`` if no live writer owns it; return whether it did.

    A writer of this version holds a lock on its temporary file from right after creating it
    until it renames or removes it, and the system drops the lock when the writer dies: a file
    older than :data:`FRESH_TEMP_S` whose lock we can take is abandoned. Where locks say
    nothing, a file older than :data:`UNLOCKED_TEMP_S` is.
    """
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    if age <= FRESH_TEMP_S:
        return False
    if locked_by_writer and fcntl is not None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # a live writer
        except OSError:
            os.close(fd)  # no locks on this file system: judge by age below
        else:
            try:
                path.unlink()  # while holding the lock
                return True
            except OSError:
                return False
            finally:
                os.close(fd)
    if age <= UNLOCKED_TEMP_S:
        return False
    try:
        path.unlink()
        return True
    except OSError:
        return False


def remove_stale_temps(path: PathLike) -> list[Path]:
    """Remove the temporary files that killed writes left in ``path``'s folder; return them.

    Only files of our naming are candidates: ``.<any name>.anl-XXXXXXXX.tmp`` (this
    version's, removed when no live writer holds its lock, once older than
    :data:`FRESH_TEMP_S`) and ``.<path's name>.XXXXXXXX.tmp`` (earlier versions', which hold
    no lock: removed once older than :data:`UNLOCKED_TEMP_S`). :func:`atomic_file` calls it
    before each write.
    """
    path = Path(path)
    legacy = _legacy_temp_re(path.name)
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    removed = []
    for entry in entries:
        ours = TEMP_RE.match(entry.name) is not None
        if not (ours or legacy.match(entry.name)) or not entry.is_file(follow_symlinks=False):
            continue
        if _remove_if_abandoned(Path(entry.path), locked_by_writer=ours):
            removed.append(Path(entry.path))
    return removed


def _lock(name: str) -> int | None:
    """A descriptor holding a lock on the new temporary file ``name`` (None without locks)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(name, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: cleaners judge by age
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through; it replaces ``path`` when the block ends.

    The folder is created if needed, and the temporary files of killed writes in it are
    removed (:func:`remove_stale_temps`). Inside the block the handle's ``name`` is the
    temporary file (flush before reading it back, e.g. to verify a download); an exception in
    the block removes it and leaves an existing ``path`` untouched.

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
    remove_stale_temps(path)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed below; kept on success)
        mode="wb", dir=directory, prefix=f".{path.name}.anl-", suffix=".tmp", delete=False
    )
    lock = _lock(tmp.name)  # held until the rename: a cleaner never takes a live file
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
    finally:
        if lock is not None:
            os.close(lock)
    _fsync_directory(directory)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))


def atomic_save(obj: Any, path: PathLike, *, digest: bool = False) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_file`: never a partial file at ``path``.

    With ``digest``, ``obj`` (a dict) is saved with its :func:`content_digest` under
    :data:`DIGEST_KEY`, which :func:`safe_load` verifies.
    """
    if digest:
        obj = with_digest(obj, content_digest)
    with atomic_file(path) as handle:
        torch.save(obj, handle)


def atomic_write_json(path: PathLike, value: Any, *, digest: bool = False) -> None:
    """``value`` as JSON (indented by 2, a final newline) written through :func:`atomic_file`.

    With ``digest``, ``value`` (a dict) is written with its :func:`json_digest` under
    :data:`DIGEST_KEY`, which :func:`read_json` verifies.
    """
    if digest:
        value = with_digest(value, json_digest)
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

#: torch's messages for a refused global: "Unsupported global: GLOBAL x.y was not an allowed
#: global by default" and "Trying to load unsupported GLOBAL x.y whose module x is blocked".
_GLOBAL_RE = re.compile(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)")
_REFUSED_RE = re.compile(
    r"(Trying to call reduce for unrecognized function .+|Can only \w+ .+ but got .+)"
)


def safe_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a file written by ``torch.save`` with ``weights_only=True``, verifying its
    content hash when it has one (:data:`DIGEST_KEY`, removed from the dict returned).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CorruptFileError (a ValueError): if the file is truncated, corrupt or not a PyTorch
            file, or its content differs from its recorded hash (modified or damaged).
        ValueError: if it stores objects that only unrestricted unpickling could rebuild
            (arbitrary classes or functions, NumPy arrays, ...), named in the message; such
            files are never unpickled.
    """
    return safe_load_verified(path, map_location)[0]


def safe_load_verified(path: PathLike, map_location: Any = "cpu") -> tuple[Any, bool]:
    """:func:`safe_load`, and whether the file carried a content hash (which then matched)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file '{path}' does not exist.")
    if path.is_dir():
        raise IsADirectoryError(f"Checkpoint path '{path}' is a directory, not a file.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused is not None:
            raise ValueError(
                f"Checkpoint '{path}' needs unsafe unpickling: it stores {refused}, which only "
                "unrestricted unpickling (able to run arbitrary code) could rebuild; it is "
                "refused (torch.load with weights_only=True). If you trust the file, re-save "
                "its tensors as a plain state dict."
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
    return check_digest(obj, path, content_digest)


def _refused_global(message: str) -> str | None:
    """What torch's weights-only unpickler refused, from its message, or None."""
    match = _GLOBAL_RE.search(message)
    if match is not None:
        return f"the global `{match.group(1)}`"
    match = _REFUSED_RE.search(message)
    if match is not None:
        return f"an object it cannot rebuild ({match.group(1).strip()[:200]})"
    return None


def _invalid_checkpoint(path: Path, exc: BaseException) -> CorruptFileError:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return CorruptFileError(
        f"'{path}' is not a valid checkpoint (truncated, corrupt, or not written by torch.save; "
        f"{path.stat().st_size} bytes): {type(exc).__name__}" + (f": {detail}" if detail else "")
    )


def read_json(path: PathLike) -> Any:
    """Read a JSON file, verifying its content hash when it has one (:data:`DIGEST_KEY`,
    removed from the dict returned).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CorruptFileError (a ValueError): if it is not valid JSON, or its content differs from
            its recorded hash (modified or damaged).
    """
    return read_json_verified(path)[0]


def read_json_verified(path: PathLike) -> tuple[Any, bool]:
    """:func:`read_json`, and whether the file carried a content hash (which then matched)."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(
            f"'{path}' is not valid JSON (truncated, corrupt or modified): {exc}"
        ) from None
    return check_digest(value, path, json_digest)


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
    """:func:`read_json` of a file that must hold a JSON object (a dict).

    Raises:
        FileNotFoundError, PermissionError, ...: the file cannot be opened (the ``OSError``
            names it).
        CorruptFileError (a ValueError): naming the file, when it is not JSON (e.g. truncated
            by a crash), its content hash differs, or it holds something other than an object.
    """
    value = read_json(path)
    if not isinstance(value, dict):
        raise CorruptFileError(
            f"'{path}' should hold a JSON object. Found a {type(value).__name__}."
        )
    return value
