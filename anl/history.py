"""The per-step history of a weighting: the newest rows, kept without synchronising.

Each row holds one ``step`` call: the losses (NaN where absent), the relative losses, the
weights after the call, and whether the call updated the state. Rows come in two forms, as
the state does (:mod:`anl.weighting`):

- from host steps, tuples of floats in a bounded deque;
- from device steps, rows written into a preallocated ring buffer on the device at an index
  kept on the device, so that appending is two in-place kernels: no read-back, no Python
  state that changes per step (``torch.compile`` would recompile on it), and a CUDA graph
  replay keeps appending. An unbounded history (``max_rows=None``) keeps device rows in a
  Python list instead.

Nothing is copied to the host until :meth:`StepHistory.matrix` is read.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import Tensor

Row = tuple[float, ...] | Tensor

__all__ = ["StepHistory"]


class StepHistory:
    """The newest ``max_rows`` rows (every row when ``None``) of width ``width``."""

    def __init__(self, width: int, max_rows: int | None, dtype: torch.dtype) -> None:
        self.width = width
        self.max_rows = max_rows
        self.dtype = dtype
        self._rows: deque[Row] = deque(maxlen=max_rows)
        self._ring: Tensor | None = None  # (max_rows, width) on the device
        self._written: Tensor | None = None  # rows written into the ring so far (int64)

    def append(self, row: Row) -> None:
        """Keep ``row`` (dropping the oldest beyond ``max_rows``)."""
        if self.max_rows == 0:
            return
        if isinstance(row, Tensor) and self.max_rows is not None:
            if self._ring is None or self._ring.device != row.device:
                self._to_ring(row.device)
            slot = torch.remainder(self._written, self.max_rows).reshape(1)
            self._ring.index_copy_(0, slot, row.to(self.dtype).reshape(1, -1))
            self._written.add_(1)
            return
        if self._ring is not None:
            self._from_ring()
        self._rows.append(row)

    def _to_ring(self, device: torch.device) -> None:
        # The host rows stay where they are (older than any ring row); traceable as is.
        if self._ring is not None:
            self._from_ring()
        self._ring = torch.zeros((self.max_rows, self.width), dtype=self.dtype, device=device)
        self._written = torch.zeros((), dtype=torch.int64, device=device)

    def _from_ring(self) -> None:
        ring = self._ring_rows()
        self._ring = self._written = None
        self._rows.extend(tuple(r) for r in ring.tolist())

    def _ring_rows(self) -> np.ndarray:
        written = int(self._written)
        ring = self._ring.to("cpu", torch.float64).numpy()
        if written <= self.max_rows:
            return ring[:written].copy()
        start = written % self.max_rows
        return np.concatenate([ring[start:], ring[:start]])

    def matrix(self) -> np.ndarray:
        """The kept rows, oldest first, as one float64 ``(T, width)`` array (one host copy)."""
        if not self._rows:
            older = np.zeros((0, self.width))
        elif any(isinstance(r, Tensor) for r in self._rows):
            # Read every device row back at once, then interleave with the host rows.
            tensors = [r for r in self._rows if isinstance(r, Tensor)]
            device_rows = iter(torch.stack(tensors).to("cpu", torch.float64).numpy())
            older = np.stack(
                [next(device_rows) if isinstance(r, Tensor) else np.asarray(r) for r in self._rows]
            )
        else:
            older = np.asarray(self._rows, dtype=np.float64)
        if self._ring is None:
            return older
        rows = np.concatenate([older, self._ring_rows()])
        return rows[max(0, len(rows) - self.max_rows) :]

    def replace(self, matrix: np.ndarray) -> None:
        """Replace the rows by the newest ``max_rows`` rows of ``matrix``."""
        rows = [tuple(float(x) for x in row) for row in np.asarray(matrix, dtype=np.float64)]
        self._ring = self._written = None
        self._rows = deque(rows, maxlen=self.max_rows)
