"""TensorBoard charts of a weighting's weights and relative losses, every few steps.

Needs the ``tensorboard`` package (``pip install "adaptive-normalization-loss[tensorboard]"``);
importing this module without it raises one ``ModuleNotFoundError`` that says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from anl.integrations._optional import missing_extra
from anl.integrations.logging import PeriodicLogger
from anl.weighting import LossWeighting

try:
    from torch.utils.tensorboard import SummaryWriter
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(
        __name__, error, module="tensorboard", package="tensorboard", extra="tensorboard"
    ) from None

__all__ = ["TensorBoardWriter"]


class TensorBoardWriter(PeriodicLogger):
    """Writes ``{tag}/weights`` and ``{tag}/relative_loss`` (one chart each, a line per loss)
    with ``SummaryWriter.add_scalars`` every ``every_n_steps`` steps.

    Call it once per optimiser step after ``balancer.step`` (``writer(step)``, or ``writer()``
    to count the calls); only the logging steps read the values back from the device.

    Args:
        balancer: the weighting to log.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (yours: :meth:`close` flushes it
            but leaves it open), or a log directory (a writer is opened there and
            :meth:`close` closes it).
        every_n_steps: log every this many steps.
        tag: the main tag of both charts.

    Example:
        >>> import tempfile
        >>> from anl import AdaptiveLossBalancer
        >>> balancer = AdaptiveLossBalancer(["adv", "nat"])
        >>> with tempfile.TemporaryDirectory() as log_dir:
        ...     writer = TensorBoardWriter(balancer, log_dir, every_n_steps=10)
        ...     for step in range(1, 21):
        ...         _ = balancer.step({"adv": 1.0 / step, "nat": 1.0})
        ...         _ = writer(step)  # writes at steps 10 and 20
        ...     writer.close()
    """

    def __init__(
        self,
        balancer: LossWeighting,
        writer: SummaryWriter | str | os.PathLike[str],
        *,
        every_n_steps: int = 50,
        tag: str = "anl",
    ) -> None:
        super().__init__(balancer, self._write, every_n_steps=every_n_steps)
        self._owns_writer = isinstance(writer, (str, os.PathLike))
        self.writer = SummaryWriter(log_dir=os.fspath(writer)) if self._owns_writer else writer
        self.tag = str(tag)

    def _write(self, metrics: Mapping[str, float], step: int) -> None:
        for kind in ("weights", "relative_loss"):
            values = {
                name: metrics[key]
                for name in self.balancer.names
                if (key := f"{kind}/{name}") in metrics
            }
            if values:
                self.writer.add_scalars(f"{self.tag}/{kind}", values, step)

    def close(self) -> None:
        """Flush the writer, and close it if this object opened it."""
        if self._owns_writer:
            self.writer.close()
        else:
            self.writer.flush()
