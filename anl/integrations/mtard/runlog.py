"""The logs of a training run: CSV files, TensorBoard scalars and progress bars.

``logs/steps.csv`` (one row per optimisation step) and ``logs/epochs.csv`` (one row per epoch)
are append-only CSV files with a fixed header (:class:`_CsvLog`); a resumed run first drops the
rows of epochs after its checkpoint. The scalars also go to TensorBoard (``logs/tensorboard/``)
when ``torch.utils.tensorboard`` imports (:func:`_summary_writer`), and progress shows as tqdm
bars when tqdm imports (:func:`_tqdm`, :func:`_tqdm_write`); both are optional dependencies.
:func:`_row_tensor` builds the device-side pieces of a step's log row, which the loop reads back
in blocks.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _format(value: object) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


class _CsvLog:
    """Append-only CSV with a fixed header, flushed after each block of rows."""

    def __init__(self, path: Path, columns: list[str], *, keep_epochs: int | None) -> None:
        self.path = path
        self.columns = columns
        if keep_epochs is not None and path.exists():
            self._truncate(keep_epochs)
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(columns)
            self._file.flush()

    def _truncate(self, keep_epochs: int) -> None:
        """Drop rows of epochs after ``keep_epochs`` (written before an interruption)."""
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != self.columns:
            raise ValueError(
                f"Cannot resume: the log {str(self.path)!r} has columns {rows[0] if rows else []}, "
                f"expected {self.columns}."
            )
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= keep_epochs]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, self.path)

    def write(self, rows: list[list[object]]) -> None:
        self._writer.writerows([[_format(v) for v in row] for row in rows])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _row_tensor(value: object, n: int, device: torch.device) -> torch.Tensor:
    """A float64 1-D tensor of ``n`` values on ``device`` (NaN when the value is unknown)."""
    if value is None:
        return torch.full((n,), float("nan"), dtype=torch.float64, device=device)
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(-1).to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64).reshape(-1), device=device)


def _last_row(path: Path) -> dict[str, Any] | None:
    """The last row of an epochs log, as floats (None when the log has no rows)."""
    if not path.exists():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items()} if rows else None


def _tqdm(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional dependency of the integration
        return _NoBar()
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _tqdm_write(text: str) -> None:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(text)
    else:
        tqdm.write(text)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
