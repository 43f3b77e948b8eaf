"""Tests of the figures drawn from training logs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from anl.integrations.mtard import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCH_COLUMNS = [
    "epoch", "loss_adv", "loss_nat", "total", "w_adv", "w_nat", "rel_adv", "rel_nat",
    "val_clean", "val_robust", "val_wrobust", "lr", "weight_lr", "skipped", "time_s",
]  # fmt: skip
STEP_COLUMNS = [
    "epoch", "step", "lr", "loss_adv", "loss_nat", "total", "w_adv", "w_nat", "rel_adv", "rel_nat",
]  # fmt: skip


def write_csv(path, columns, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(columns)] + [",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def fake_run(run_dir, epochs=6, steps_per_epoch=5, decay=0.7, val=True):
    """Logs shaped like loop.train's, with losses decaying geometrically."""
    step_rows, epoch_rows = [], []
    step = 0
    for e in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            adv, nat = 2.0 * decay ** (step / 10), 1.0 * decay ** (step / 5)
            w_adv = 0.5 + 0.002 * step
            rel_adv, rel_nat = adv / 2.0, nat / 1.0
            total = w_adv * adv + (1 - w_adv) * nat
            step_rows.append([e, step, 0.1, adv, nat, total, w_adv, 1 - w_adv, rel_adv, rel_nat])
        block = np.array(step_rows[-steps_per_epoch:])[:, 3:].mean(axis=0)
        clean, robust = (0.5 + 0.05 * e, 0.3 + 0.02 * e) if val else (math.nan, math.nan)
        epoch_rows.append([e, *block, clean, robust, (clean + robust) / 2, 0.1, 0.025, 0, 1.5])
    write_csv(run_dir / "logs" / "steps.csv", STEP_COLUMNS, step_rows)
    write_csv(run_dir / "logs" / "epochs.csv", EPOCH_COLUMNS, epoch_rows)
    return run_dir


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000


def test_read_log_parses_columns_and_nan(tmp_path):
    run = fake_run(tmp_path / "run", epochs=3, val=False)
    log = plots.read_log(run / "logs" / "epochs.csv")
    assert list(log) == EPOCH_COLUMNS
    assert log["epoch"].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(log["val_clean"]).all()
    steps = plots.read_log(run / "logs" / "steps.csv")
    assert steps["step"].tolist() == list(range(1, 16))
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,total\n1,abc\n")
    with pytest.raises(ValueError, match=r"Line 2 .*`total` should be a number\. Found 'abc'"):
        plots.read_log(bad)
    with pytest.raises(ValueError, match="Could not read"):
        plots.read_log(tmp_path / "missing.csv")


def test_plot_run_writes_four_pngs(tmp_path):
    run = fake_run(tmp_path / "mtard")
    paths = plots.plot_run(run)
    assert sorted(paths) == ["accuracy", "relative_losses", "total_loss", "weights"]
    for path in paths.values():
        assert path.parent == run / "plots"
        assert_png(path)


def test_figure_3_and_4_for_several_runs(tmp_path):
    logs = {
        label: plots.read_log(fake_run(tmp_path / label, decay=d) / "logs" / "epochs.csv")
        for label, d in (("Baseline", 0.9), ("Baseline+MT", 0.8), ("MTARD", 0.7))
    }
    out = plots.plot_total_loss(logs, tmp_path / "fig3.png", zoom_fraction=0.5)
    assert out == tmp_path / "fig3.png"
    assert_png(out)
    two = {k: logs[k] for k in ("Baseline+MT", "MTARD")}
    assert_png(plots.plot_relative_losses(two, tmp_path / "fig4.png"))
    # A steps log is averaged per epoch.
    steps = plots.read_log(tmp_path / "MTARD" / "logs" / "steps.csv")
    epochs, values = plots.per_epoch(steps, "total")
    assert epochs.tolist() == [1, 2, 3, 4, 5, 6]
    assert values[0] == pytest.approx(steps["total"][:5].mean())
    assert_png(plots.plot_total_loss({"steps": steps}, tmp_path / "sub" / "from_steps.png"))


def test_accuracy_plot_without_validation_and_input_errors(tmp_path):
    run = fake_run(tmp_path / "run", val=False)
    epochs = plots.read_log(run / "logs" / "epochs.csv")
    assert_png(plots.plot_accuracy(epochs, tmp_path / "acc.png"))
    with pytest.raises(ValueError, match="zoom_fraction"):
        plots.plot_total_loss({"a": epochs}, tmp_path / "x.png", zoom_fraction=0)
    with pytest.raises(ValueError, match="at least one run"):
        plots.plot_relative_losses({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=re.escape("missing ['step']")):
        plots.plot_weights(epochs, tmp_path / "x.png")
    with pytest.raises(ValueError, match="rel_<loss>"):
        plots.plot_relative_losses({"a": {"epoch": np.arange(3.0)}}, tmp_path / "x.png")


def test_accuracy_plot_keeps_its_legend_off_the_curves_and_ticks_whole_epochs(
    tmp_path, monkeypatch
):
    drawn = []
    save = plots.save_png
    monkeypatch.setattr(plots, "save_png", lambda fig, path: drawn.append(fig) or save(fig, path))
    epochs = plots.read_log(fake_run(tmp_path / "run", epochs=20) / "logs" / "epochs.csv")
    assert_png(plots.plot_accuracy(epochs, tmp_path / "acc.png"))
    (fig,) = drawn
    (ax,) = fig.axes
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 < ax.get_window_extent().y0  # wholly below the axes, over no curve
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
