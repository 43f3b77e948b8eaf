"""The per-step history of a weighting: the newest rows, kept without synchronising.

Each row holds one ``step`` call: the losses (NaN where absent), the relative losses, the
weights after the call, and whether the call updated the state. A row is a tuple of floats
when the step ran on the host and a 1-D tensor on the losses' device otherwise; nothing is
copied to the host until :meth:`StepHistory.matrix` is read.
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

    def __init__(self, width: int, max_rows: int | None) -> None:
        self.width = width
        self.max_rows = max_rows
        self._rows: deque[Row] = deque(maxlen=max_rows)

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, row: Row) -> None:
        """Keep ``row`` (dropping the oldest beyond ``max_rows``)."""
        if self.max_rows != 0:
            self._rows.append(row)

    def matrix(self) -> np.ndarray:
        """The kept rows, oldest first, as one float64 ``(T, width)`` array (one host copy)."""
        if not self._rows:
            return np.zeros((0, self.width))
        tensors = [r for r in self._rows if isinstance(r, Tensor)]
        if not tensors:
            return np.asarray(self._rows, dtype=np.float64)
        # Read every device row back at once, then interleave with the host rows.
        device_rows = iter(torch.stack(tensors).to("cpu", torch.float64).numpy())
        return np.stack(
            [next(device_rows) if isinstance(r, Tensor) else np.asarray(r) for r in self._rows]
        )

    def replace(self, matrix: np.ndarray) -> None:
        """Replace the rows by the newest ``max_rows`` rows of ``matrix``."""
        rows = [tuple(float(x) for x in row) for row in np.asarray(matrix, dtype=np.float64)]
        self._rows = deque(rows, maxlen=self.max_rows)
