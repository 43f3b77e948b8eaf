"""Figures from the CSV logs of training runs (:mod:`..training.logs`).

- :mod:`.curves`: the logs read as NumPy arrays, and what the figures draw from them: a column
  per epoch or per step, the mean and min-max band over seeds, the lr milestones;
- :mod:`.draw`: the figures (matplotlib, imported when drawing), each a PNG at 200 dpi and an
  SVG: the total loss (paper Fig. 3), the relative losses (Fig. 4), the loss weights and the
  validation accuracy, of one run or several;
- :func:`plot_run`: the figures of one run directory.
"""

from __future__ import annotations

from pathlib import Path

from .curves import read_log
from .draw import plot_accuracy, plot_relative_losses, plot_total_loss, plot_weights


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Draw one run's weights, accuracy, total loss and relative losses.

    Reads ``run_dir/logs/steps.csv`` and ``run_dir/logs/epochs.csv`` and writes
    ``weights.png``, ``accuracy.png``, ``total_loss.png``, ``relative_losses.png`` into
    ``out_dir`` (default ``run_dir/plots``), each with its ``.svg`` beside it
    (:func:`.draw.figure_files`). Returns ``{figure name: PNG path}``.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    steps = read_log(run_dir / "logs" / "steps.csv")
    epochs = read_log(run_dir / "logs" / "epochs.csv")
    label = run_dir.name
    return {
        "weights": plot_weights(steps, out / "weights.png", title=f"Loss weights ({label})"),
        "accuracy": plot_accuracy(epochs, out / "accuracy.png", title=f"Validation ({label})"),
        "total_loss": plot_total_loss({label: epochs}, out / "total_loss.png"),
        "relative_losses": plot_relative_losses({label: epochs}, out / "relative_losses.png"),
    }
