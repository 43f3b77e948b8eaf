"""The per-step history of a weighting rule, kept on the device without synchronising.

Rows are written into preallocated chunks (one copy kernel per step, no new tensor object
per step), so a long run keeps a few contiguous blocks instead of one small tensor per step,
and ``matrix()`` is a single concatenation. With ``max_rows`` set, only the newest rows are
kept: whole chunks are dropped once every row in them has left the window.
"""

from __future__ import annotations

import torch


class StepHistory:
    """The newest ``max_rows`` (all when None) rows of width ``width`` appended so far."""

    def __init__(
        self, width: int, dtype: torch.dtype, max_rows: int | None, chunk_rows: int = 1024
    ) -> None:
        self.width, self.dtype, self.max_rows = width, dtype, max_rows
        self.chunk_rows = chunk_rows if max_rows is None else max(1, min(chunk_rows, max_rows))
        self._chunks: list[torch.Tensor] = []
        self._fill = 0  # rows used in the last chunk
        self._offset = 0  # rows dropped at the front of the first chunk

    def __len__(self) -> int:
        if not self._chunks:
            return 0
        full = sum(chunk.shape[0] for chunk in self._chunks[:-1])
        return full + self._fill - self._offset

    def append(self, *parts: torch.Tensor) -> None:
        """Write the concatenation of ``parts`` into the next free slot (on their device)."""
        if self.max_rows == 0:
            return
        if not self._chunks or self._fill == self._chunks[-1].shape[0]:
            shape = (self.chunk_rows, self.width)
            self._chunks.append(torch.empty(shape, dtype=self.dtype, device=parts[0].device))
            self._fill = 0
        torch.cat(parts, out=self._chunks[-1][self._fill])
        self._fill += 1
        if self.max_rows is not None and len(self) > self.max_rows:
            self._offset += 1
            if self._offset == self._chunks[0].shape[0]:
                self._chunks.pop(0)
                self._offset = 0

    def matrix(self) -> torch.Tensor:
        """The kept rows, oldest first, as one ``(T, width)`` tensor."""
        if not self._chunks:
            return torch.zeros((0, self.width), dtype=self.dtype)
        rows = self._chunks[0] if len(self._chunks) == 1 else torch.cat(self._chunks)
        return rows[self._offset : self._offset + len(self)]

    def to(self, device: torch.device) -> None:
        """Move the kept rows to ``device``."""
        self._chunks = [chunk.to(device) for chunk in self._chunks]

    def load(self, matrix: torch.Tensor) -> None:
        """Replace the rows by the newest ``max_rows`` rows of ``matrix``."""
        if self.max_rows is not None:
            matrix = matrix[max(0, matrix.shape[0] - self.max_rows) :]
        matrix = matrix.to(self.dtype).clone()
        self._chunks = [matrix] if matrix.shape[0] else []
        self._fill, self._offset = matrix.shape[0], 0
