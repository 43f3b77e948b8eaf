"""Downloads and checksums of the dataset files.

A download streams into a temporary file next to its destination, is verified by the caller's
check, and only then replaces the destination (:func:`~..runtime.files.atomic_file`): a
failure leaves no partial file behind.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..runtime.files import atomic_file
from ..runtime.optional import progress_bar

CHUNK_SIZE = 1 << 20


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file's bytes (``"md5"``, ``"sha256"``, ...), read in chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, verify: Callable[[Path], None], progress: bool) -> None:
    """Stream ``url`` into ``dest`` atomically (:func:`~..runtime.files.atomic_file`).

    The bytes go to a temporary file in ``dest``'s folder; ``verify(tmp_path)`` must raise
    :class:`ValueError` if the content is wrong. Only a verified, fsynced file is moved to
    ``dest``; on any failure (including ``KeyboardInterrupt``) the temporary file is deleted.
    """
    with atomic_file(dest) as out:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                length = response.headers.get("Content-Length") if response.headers else None
                total = int(length) if length is not None else None
                received = 0
                with progress_bar(
                    desc=f"Downloading {dest.name}",
                    enabled=progress,
                    total=total,
                    leave=True,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                ) as bar:
                    while True:
                        chunk = response.read(CHUNK_SIZE)
                        if not chunk:
                            break
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                if total is not None and received != total:
                    raise OSError(f"received {received} of {total} bytes")
            out.flush()
        except Exception as exc:
            raise OSError(f"Download of `{url}` to `{dest}` failed: {exc}") from exc
        verify(Path(out.name))


def checksum_error(
    path: Path, what: str, expected: str, found: str, downloaded: bool
) -> ValueError:
    """The error of a file whose checksum is wrong, with what to do about it."""
    advice = (
        "The download was corrupt and has been deleted; try again."
        if downloaded
        else "The file is corrupt or incomplete; delete it to download it again."
    )
    return ValueError(f"File `{path}`: {what} is `{found}`, expected `{expected}`. {advice}")
