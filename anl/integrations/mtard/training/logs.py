"""The logs of a training run: CSV files and TensorBoard scalars.

``logs/steps.csv`` (one row per optimisation step) and ``logs/epochs.csv`` (one row per epoch)
are append-only CSV files with a fixed header (:class:`CsvLog`, columns :func:`step_columns`
and :func:`epoch_columns`); a resumed run first drops the rows of epochs after its
checkpoint. The scalars also go to TensorBoard (``logs/tensorboard/``) when asked for
(:func:`tensorboard_writer`; a missing TensorBoard is said in one warning). :class:`RunLogs`
holds the three of a run.

The step never synchronises host and device: :class:`StepRows` keeps each step's row (losses,
total, weights, relative losses) on the device and reads them back in blocks.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anl.distributed import mean_across_ranks

from ..runtime.files import atomic_write_text
from ..runtime.optional import require
from ..runtime.process import Ranks


def step_columns(names: Sequence[str]) -> list[str]:
    """The columns of ``steps.csv`` for losses ``names``: epoch, step, lr, then per loss its
    value, the weighted total, the weights and the relative losses (paper Eq. 7)."""
    return (
        ["epoch", "step", "lr"]
        + [f"loss_{k}" for k in names]
        + ["total"]
        + [f"w_{k}" for k in names]
        + [f"rel_{k}" for k in names]
    )


def epoch_columns(names: Sequence[str]) -> list[str]:
    """The columns of ``epochs.csv``: the epoch means of the step values, then validation,
    schedule, skipped updates and wall time."""
    validation = ["val_clean", "val_robust", "val_wrobust"]
    return ["epoch", *step_columns(names)[3:], *validation, "lr", "weight_lr", "skipped", "time_s"]


def _format(value: object) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


class CsvLog:
    """Append-only CSV with a fixed header, flushed after each block of rows.

    With ``keep_epochs``, an existing file first loses the rows of epochs after it (written
    before an interruption); its header must be ``columns``.
    """

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
        text = io.StringIO(newline="")
        csv.writer(text).writerows(kept)
        atomic_write_text(self.path, text.getvalue())

    def write(self, rows: list[list[object]]) -> None:
        """Append ``rows`` (floats written exactly, as ``repr``) and flush."""
        self._writer.writerows([[_format(v) for v in row] for row in rows])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def last_row(path: Path) -> dict[str, Any] | None:
    """The last row of an epochs log, as floats (None when the log has no rows)."""
    if not path.exists():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items()} if rows else None


def tensorboard_writer(log_dir: Path) -> Any:
    """A ``SummaryWriter`` into ``log_dir``, or ``None`` with one warning when TensorBoard is
    not installed (the CSV logs hold the same numbers)."""
    try:
        tensorboard = require("torch.utils.tensorboard", "TensorBoard logging (--tensorboard)")
    except ImportError as exc:
        warnings.warn(f"{exc}; logging to the CSV files only.", stacklevel=2)
        return None
    return tensorboard.SummaryWriter(log_dir=str(log_dir))


def row_tensor(value: object, n: int, device: torch.device) -> torch.Tensor:
    """A float64 1-D tensor of ``n`` values on ``device`` (NaN when the value is unknown)."""
    if value is None:
        return torch.full((n,), float("nan"), dtype=torch.float64, device=device)
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(-1).to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64).reshape(-1), device=device)


class RunLogs:
    """The CSV logs and the TensorBoard writer of a run (rank 0 opens them).

    ``keep_epochs``: the epochs whose rows an existing log keeps (those of the checkpoint a
    resumed run starts from; 0 for a fresh run).
    """

    def __init__(
        self, paths: dict[str, Path], names: Sequence[str], *, keep_epochs: int, tensorboard: bool
    ) -> None:
        self.step_columns = step_columns(names)
        self.epoch_columns = epoch_columns(names)
        self.steps = CsvLog(paths["steps_log"], self.step_columns, keep_epochs=keep_epochs)
        self.epochs = CsvLog(paths["epochs_log"], self.epoch_columns, keep_epochs=keep_epochs)
        self.writer = None
        if tensorboard:
            self.writer = tensorboard_writer(paths["epochs_log"].parent / "tensorboard")

    def write_steps(self, epoch: int, lr: float, steps: np.ndarray, rows: np.ndarray) -> None:
        """The step rows of a block, after the epoch, step and lr columns."""
        self.steps.write(
            [[epoch, int(s), lr, *map(float, r)] for s, r in zip(steps, rows, strict=True)]
        )

    def step_scalars(self, steps: np.ndarray, rows: np.ndarray) -> None:
        if self.writer is not None:
            for s, r in zip(steps, rows, strict=True):
                for j, name in enumerate(self.step_columns[3:]):
                    self.writer.add_scalar(f"step/{name}", r[j], int(s))

    def write_epoch(self, row: dict[str, Any]) -> None:
        """An epoch's row (a dict keyed by :func:`epoch_columns`)."""
        self.epochs.write([[row[c] for c in self.epoch_columns]])

    def epoch_scalars(self, row: dict[str, Any]) -> None:
        if self.writer is not None:
            for c in self.epoch_columns[1:]:
                self.writer.add_scalar(f"epoch/{c}", row[c], row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        self.steps.close()
        self.epochs.close()
        if self.writer is not None:
            self.writer.close()


class StepRows:
    """The step log rows of one epoch: appended on the device, read back in blocks.

    Each row is the detached losses, the total, the weights and the relative losses (paper
    Eq. 7) of one step, as float64 on the device (:func:`row_tensor`); :meth:`read_back` is the
    one host-device synchronisation per block and returns their mean over ranks (a NaN on any
    rank reaches every rank). :meth:`means` gives the epoch means of the rows read back.
    """

    def __init__(self, weighting: Any, names: Sequence[str], first_step: int) -> None:
        self.weighting = weighting
        self.names = list(names)
        self.epoch_first = self.next_step = first_step
        self.pending: list[torch.Tensor] = []
        self.sums = np.zeros(3 * len(self.names) + 1)
        self.count = 0

    def __len__(self) -> int:
        return len(self.pending)

    def append(self, losses: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        device = total.device
        n = len(self.names)
        values = torch.stack([losses[k].detach().reshape(()) for k in self.names]).double()
        row = torch.cat(
            [
                values,
                total.detach().reshape(1).double(),
                row_tensor(self.weighting.weights, n, device),
                row_tensor(getattr(self.weighting, "relative_losses", None), n, device),
            ]
        )
        self.pending.append(row)

    def read_back(self, ranks: Ranks) -> tuple[np.ndarray, np.ndarray]:
        """``(global steps, rows)`` of the pending rows, on the host; the block is emptied."""
        rows = torch.stack(self.pending)
        if ranks.enabled:
            rows = mean_across_ranks(rows)
        host = rows.cpu().numpy()
        steps = np.arange(self.next_step, self.next_step + len(host))
        self.pending.clear()
        self.next_step += len(host)
        return steps, host

    def first_non_finite(self, rows: np.ndarray) -> int | None:
        """The index of the first row whose total loss is NaN or infinite, if any."""
        bad = ~np.isfinite(rows[:, len(self.names)])
        return int(np.argmax(bad)) if bad.any() else None

    def add(self, rows: np.ndarray) -> None:
        """Count checked rows into the epoch means."""
        self.sums += rows.sum(axis=0)
        self.count += len(rows)

    def means(self) -> np.ndarray:
        return self.sums / max(self.count, 1)
