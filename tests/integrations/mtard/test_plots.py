"""Tests of the figures: those drawn from training logs (:mod:`anl.integrations.mtard.plots`)
and a reproduction's (:mod:`anl.integrations.mtard.pipeline.figures`, on a results directory of
fake logs and evaluations).

Each figure is checked on what it holds (panels, axis limits, milestone lines, seed bands, the
files and their resolution), read from the matplotlib figure the function drew, not from its
pixels.
"""

from __future__ import annotations

import math
import re
import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from anl.integrations.mtard import plots
from anl.integrations.mtard.methods.registry import ABLATION, METHOD_ORDER, METHODS
from anl.integrations.mtard.pipeline import figures
from anl.integrations.mtard.pipeline.profile import Profile, Teacher
from anl.integrations.mtard.pipeline.report_tables import aggregate
from anl.integrations.mtard.pipeline.stages import run_dir
from anl.integrations.mtard.plots import curves, draw

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


def fake_run(run_dir, epochs=6, steps_per_epoch=5, decay=0.7, val=True, milestones=(), seed=0):
    """Logs shaped like the trainer's, with losses decaying geometrically and the lr (and
    weight_lr) multiplied by 0.1 after each epoch of ``milestones``."""
    rng = np.random.default_rng(seed)
    step_rows, epoch_rows = [], []
    step = 0
    for e in range(1, epochs + 1):
        lr = 0.1 * 0.1 ** sum(m < e for m in milestones)
        for _ in range(steps_per_epoch):
            step += 1
            adv, nat = 2.0 * decay ** (step / 10), 1.0 * decay ** (step / 5)
            w_adv = 0.5 + 0.002 * step + 0.001 * rng.standard_normal()
            rel_adv, rel_nat = adv / 2.0, nat / 1.0
            total = w_adv * adv + (1 - w_adv) * nat
            step_rows.append([e, step, lr, adv, nat, total, w_adv, 1 - w_adv, rel_adv, rel_nat])
        block = np.array(step_rows[-steps_per_epoch:])[:, 3:].mean(axis=0)
        shift = 0.01 * seed
        clean, robust = (0.5 + 0.02 * e + shift, 0.3 + 0.01 * e) if val else (math.nan,) * 2
        row = [e, *block, clean, robust, (clean + robust) / 2, lr, lr / 4, 0, 1.5]
        epoch_rows.append(row)
    write_csv(run_dir / "logs" / "steps.csv", STEP_COLUMNS, step_rows)
    write_csv(run_dir / "logs" / "epochs.csv", EPOCH_COLUMNS, epoch_rows)
    return run_dir


def epochs_log(tmp_path, name, **kwargs):
    return curves.read_log(fake_run(tmp_path / name, **kwargs) / "logs" / "epochs.csv")


@pytest.fixture
def drawn(monkeypatch):
    """The figures drawn, in order, as the plotting functions hand them to save_figure."""
    figs = []
    save = draw.save_figure

    def keep(fig, path):
        figs.append(fig)
        return save(fig, path)

    monkeypatch.setattr(draw, "save_figure", keep)
    monkeypatch.setattr(figures, "save_figure", keep)
    return figs


def png_size_and_dpi(path):
    """``(width, height, dots per inch)`` from the PNG's IHDR and pHYs chunks."""
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    width, height = struct.unpack(">II", data[16:24])
    at = data.index(b"pHYs")
    per_metre, _, unit = struct.unpack(">IIB", data[at + 4 : at + 13])
    assert unit == 1  # metres
    return width, height, per_metre * 0.0254


def assert_figure_files(png, fig=None):
    """The PNG at >= 200 dpi (the figure's size times DPI) and a parseable SVG beside it."""
    width, height, dpi = png_size_and_dpi(png)
    assert dpi == pytest.approx(draw.DPI, abs=0.5) and draw.DPI >= 200
    if fig is not None:
        w_in, h_in = fig.get_size_inches()
        assert (width, height) == (round(w_in * draw.DPI), round(h_in * draw.DPI))
    svg = png.with_suffix(".svg")
    assert draw.figure_files(png) == [png, svg]
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and 1000 < svg.stat().st_size < 400_000


def milestone_lines(ax):
    return sorted(line.get_xdata()[0] for line in ax.lines if line.get_gid() == draw.MILESTONE_GID)


def bands(ax):
    return [c for c in ax.collections if c.get_gid() == draw.BAND_GID]


def test_read_log_parses_columns_and_nan(tmp_path):
    run = fake_run(tmp_path / "run", epochs=3, val=False)
    log = curves.read_log(run / "logs" / "epochs.csv")
    assert list(log) == EPOCH_COLUMNS
    assert log["epoch"].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(log["val_clean"]).all()
    steps = curves.read_log(run / "logs" / "steps.csv")
    assert steps["step"].tolist() == list(range(1, 16))
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,total\n1,abc\n")
    with pytest.raises(ValueError, match=r"Line 2 .*`total` should be a number\. Found 'abc'"):
        curves.read_log(bad)
    with pytest.raises(ValueError, match="Could not read"):
        curves.read_log(tmp_path / "missing.csv")


def test_lr_drops_are_the_milestones_that_took_effect(tmp_path):
    run = fake_run(tmp_path / "run", epochs=20, milestones=(14, 17, 19))
    assert curves.lr_drops(curves.read_log(run / "logs" / "epochs.csv")) == [14.0, 17.0, 19.0]
    assert curves.lr_drops(curves.read_log(run / "logs" / "steps.csv")) == [14.0, 17.0, 19.0]
    # A milestone at the last epoch changes nothing that was trained; no lr, no milestones.
    short = fake_run(tmp_path / "short", epochs=3, milestones=(2, 3, 3))
    assert curves.lr_drops(curves.read_log(short / "logs" / "epochs.csv")) == [2.0]
    assert curves.lr_drops({"epoch": np.arange(1.0, 4.0)}) == []


def test_step_positions_and_seed_band(tmp_path):
    steps = curves.read_log(
        fake_run(tmp_path / "run", epochs=2, steps_per_epoch=4) / "logs" / "steps.csv"
    )
    assert curves.step_positions(steps).tolist() == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    logs = [
        {"epoch": np.array([1.0, 2.0, 3.0]), "x": np.array([1.0, 2.0, 3.0])},
        {"epoch": np.array([1.0, 2.0, 3.0]), "x": np.array([3.0, 4.0, 9.0])},
        {"epoch": np.array([1.0, 2.0]), "x": np.array([2.0, 0.0])},  # stopped early
    ]
    band = curves.seed_band(logs, "x")
    assert band.n == 3 and band.x.tolist() == [1.0, 2.0]  # the epochs every seed reached
    assert band.mean.tolist() == [2.0, 2.0]
    assert band.low.tolist() == [1.0, 0.0] and band.high.tolist() == [3.0, 4.0]
    grouped = curves.seed_band([steps], "step", per_step=True, group=3)
    assert grouped.x.tolist() == pytest.approx([0.5, 1.25, 1.875])  # groups of 3, 3, 2 steps
    assert grouped.mean.tolist() == [2.0, 5.0, 7.5]
    with pytest.raises(ValueError, match="group"):
        curves.seed_band([steps], "step", group=0)


def test_plot_run_writes_png_at_200_dpi_and_svg_with_milestones(tmp_path, drawn):
    run = fake_run(tmp_path / "mtard", epochs=20, milestones=(14, 17, 19))
    paths = plots.plot_run(run)
    assert sorted(paths) == ["accuracy", "relative_losses", "total_loss", "weights"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == sorted(
        f"{name}.{ext}" for name in ("accuracy", "relative_losses", "total_loss", "weights")
        for ext in ("png", "svg")
    )  # fmt: skip
    for fig, path in zip(drawn, paths.values(), strict=True):
        assert path.parent == run / "plots"
        assert_figure_files(path, fig)
        for ax in fig.axes:  # every panel has an epoch axis and marks the lr drops in it
            assert ax.get_xlabel() == "epoch"
            low, high = ax.get_xlim()
            assert milestone_lines(ax) == [m for m in (14.0, 17.0, 19.0) if low <= m <= high]
            assert not bands(ax)  # one seed: no band
    weights = drawn[0].axes[0]
    assert weights.get_legend_handles_labels()[1][-1] == "lr and $r_w$ drop"


def test_svg_is_the_same_bytes_when_redrawn(tmp_path):
    log = epochs_log(tmp_path, "run")
    first = draw.plot_accuracy(log, tmp_path / "a" / "acc.png").with_suffix(".svg")
    second = draw.plot_accuracy(log, tmp_path / "b" / "acc.png").with_suffix(".svg")
    assert first.read_bytes() == second.read_bytes()
    with pytest.raises(ValueError, match=r"\.png file"):
        draw.plot_accuracy(log, tmp_path / "acc.svg")


def test_zoom_panel_only_for_runs_long_enough(tmp_path, drawn):
    assert draw.zoom_window(300, 0.2, 3) == (241, 300)  # the paper's final 60 of 300
    assert draw.zoom_window(20, 0.2, 3) == (17, 20)
    assert draw.zoom_window(14, 0.2, 3) == (12, 14)
    assert draw.zoom_window(10, 0.2, 3) is None  # 2 epochs
    assert draw.zoom_window(3, 0.2, 3) is None  # "epochs 3 to 3"
    assert draw.zoom_window(20, 1.0, 3) is None  # the whole run again

    short = {k: epochs_log(tmp_path, k, epochs=3, milestones=(2,)) for k in ("A", "B")}
    draw.plot_total_loss(short, tmp_path / "short.png")
    (full,) = drawn[-1].axes
    assert full.get_xlim()[0] <= 1 and full.get_xlim()[1] >= 3
    assert milestone_lines(full) == [2.0]

    long = {k: epochs_log(tmp_path, k + "20", epochs=20, milestones=(14, 17, 19)) for k in "AB"}
    draw.plot_total_loss(long, tmp_path / "long.png")
    full, zoom = drawn[-1].axes
    assert zoom.get_title() == "epochs 17 to 20"
    low, high = zoom.get_xlim()
    assert 16 < low < 17 and 20 < high < 21
    for line in zoom.lines:
        if line.get_gid() != draw.MILESTONE_GID:
            assert line.get_xdata().tolist() == [17.0, 18.0, 19.0, 20.0]
    assert milestone_lines(full) == [14.0, 17.0, 19.0] and milestone_lines(zoom) == [17.0, 19.0]
    # The zoom's y axis fits the last epochs, not the whole run.
    last = [v for log in long.values() for v in log["total"][16:]]
    assert zoom.get_ylim()[0] <= min(last) and zoom.get_ylim()[1] >= max(last)
    assert zoom.get_ylim()[1] < max(v for log in long.values() for v in log["total"])
    with pytest.raises(ValueError, match="zoom_fraction"):
        draw.plot_total_loss(long, tmp_path / "x.png", zoom_fraction=0)


def test_seeds_are_drawn_as_mean_and_min_max_band(tmp_path, drawn):
    seeds = [epochs_log(tmp_path, f"s{k}", epochs=8, milestones=(5,), seed=k) for k in range(3)]
    draw.plot_accuracy(seeds, tmp_path / "acc.png")
    (ax,) = drawn[-1].axes
    assert "mean of 3 seeds, band: min to max" in ax.get_title()
    clean = next(line for line in ax.lines if line.get_label() == "clean")
    expected = 100 * np.mean([log["val_clean"] for log in seeds], axis=0)
    assert clean.get_ydata() == pytest.approx(expected)
    assert len(bands(ax)) == 3  # clean, robust, W-Robust
    ys = bands(ax)[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(100 * seeds[0]["val_clean"].min())
    assert ys.max() == pytest.approx(100 * seeds[2]["val_clean"].max())
    assert milestone_lines(ax) == [5.0]

    draw.plot_relative_losses({"Baseline+MT": seeds, "MTARD": seeds[:1]}, tmp_path / "rel.png")
    left, right = drawn[-1].axes
    assert len(bands(left)) == 2 and not bands(right)
    assert left.get_shared_y_axes().joined(left, right)  # one scale for both runs

    steps = [curves.read_log(tmp_path / f"s{k}" / "logs" / "steps.csv") for k in range(3)]
    draw.plot_weights(steps, tmp_path / "w.png", max_points=20)
    (ax,) = drawn[-1].axes
    assert ax.get_ylabel() == "weight (mean of 2 steps)"  # 40 steps > 20 points
    w_adv = next(line for line in ax.lines if "adv" in line.get_label())
    assert len(w_adv.get_xdata()) == 20 and w_adv.get_xdata()[-1] == pytest.approx(7.9)
    assert len(bands(ax)) == 2 and milestone_lines(ax) == [5.0]


def test_accuracy_grid_is_one_figure_with_a_panel_per_run(tmp_path, drawn):
    runs = {
        f"method {i}": [epochs_log(tmp_path, f"m{i}s{k}", milestones=(4,), seed=k) for k in (0, 1)]
        for i in range(6)
    }
    runs["no validation"] = epochs_log(tmp_path, "noval", val=False, milestones=(4,))
    path = draw.plot_accuracy_grid(runs, tmp_path / "grid.png", ncols=4)
    assert sorted(p.name for p in tmp_path.glob("grid.*")) == ["grid.png", "grid.svg"]
    fig = drawn[-1]
    assert_figure_files(path, fig)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == list(runs)  # the 8th cell of the grid removed
    assert all(ax.get_subplotspec().get_gridspec().get_geometry() == (2, 4) for ax in axes)
    assert all(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes)
    for ax in axes:
        assert milestone_lines(ax) == [4.0]
        assert ax.get_legend() is None
    assert len(bands(axes[0])) == 3 and not bands(axes[-1])
    assert any(t.get_text() == "no validation split" for t in axes[-1].texts)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["clean", "robust", "W-Robust", "lr drop"]


def test_accuracy_legend_off_the_curves_and_whole_epoch_ticks(tmp_path, drawn):
    draw.plot_accuracy(epochs_log(tmp_path, "run", epochs=20), tmp_path / "acc.png")
    (ax,) = drawn[-1].axes
    drawn[-1].canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 < ax.get_window_extent().y0  # wholly below the axes, over no curve
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    # A one-epoch run: one tick at epoch 1, in a range of one epoch.
    draw.plot_accuracy(epochs_log(tmp_path, "one", epochs=1), tmp_path / "one.png")
    (ax,) = drawn[-1].axes
    assert ax.get_xlim() == (0.5, 1.5)
    assert [t for t in ax.get_xticks() if 0.5 <= t <= 1.5] == [1.0]


def test_input_errors(tmp_path):
    epochs = epochs_log(tmp_path, "run", val=False)
    with pytest.raises(ValueError, match="at least one run"):
        draw.plot_relative_losses({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one run"):
        draw.plot_accuracy_grid({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one log"):
        draw.plot_total_loss({"a": []}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=re.escape("missing ['step']")):
        draw.plot_weights(epochs, tmp_path / "x.png")
    with pytest.raises(ValueError, match="rel_<loss>"):
        draw.plot_relative_losses({"a": {"epoch": np.arange(3.0)}}, tmp_path / "x.png")


# The reproduction's figures (pipeline.figures).

ATTACKS = ["fgsm", "pgd_trades", "transfer_pgd"]


def evaluation(seed: int, clean: float, robust: float) -> dict:
    """An evaluation shaped like ``evaluate``'s: clean accuracy and each attack's."""
    attacks = {
        a: {"robust": robust - 0.01 * i, "w_robust": (clean + robust - 0.01 * i) / 2}
        for i, a in enumerate(ATTACKS)
    }
    return {"train_seed": seed, "clean": {"accuracy": clean}, "attacks": attacks}


def ablation_results(seeds=(0, 1, 2)) -> dict[str, list[dict]]:
    """Baseline 84/74 %, Baseline+MT 87.5/67 %, MTARD 88.5/63 %, +-0.2 points per seed."""
    means = {"baseline": (0.84, 0.74), "baseline_mt": (0.875, 0.67), "mtard": (0.885, 0.63)}
    return {
        m: [evaluation(k, c + 0.002 * (k - 1), r - 0.002 * (k - 1)) for k in seeds]
        for m, (c, r) in means.items()
    }


def test_ablation_limits_share_a_height_and_fit_each_panel():
    groups = [[np.array([84.0, 84.5]), np.array([88.0])], [np.array([62.0]), np.array([74.0])]]
    limits = figures.ablation_limits(groups)
    assert limits == [(77.6, 94.4), (59.6, 76.4)]  # 12 points of spread, 1.4 x 12 tall
    assert figures.ablation_limits([[np.array([0.0, 1.0])]]) == [(0.0, 1.4)]  # not below 0
    assert figures.ablation_limits([[np.array([99.9])]]) == [(98.6, 100.0)]  # at least 1.4


def test_ablation_figure_fits_the_axis_to_the_data_and_shows_each_seed(tmp_path, drawn):
    results = ablation_results()
    results["sat"] = [evaluation(0, 0.5, 0.5)]  # not an ablation variant: ignored
    path = figures.plot_ablation(results, tmp_path / "ablation.png", "Ablation (Fig. 2)")
    fig = drawn[-1]
    assert_figure_files(path, fig)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["Clean", "FGSM", "PGD_TRADES", "Transfer PGD_TRADES"]
    heights = {round(ax.get_ylim()[1] - ax.get_ylim()[0], 6) for ax in axes}
    assert len(heights) == 1 and heights.pop() < 40  # one scale, far from 0-100
    for ax, column in zip(axes, ["clean", *ATTACKS], strict=True):
        seeds = [line for line in ax.lines if line.get_gid() == "seed"]
        means = [line for line in ax.lines if line.get_gid() == "mean"]
        assert len(seeds) == len(means) == 3
        values = np.concatenate([line.get_ydata() for line in seeds])
        assert len(values) == 9  # 3 variants x 3 seeds, each a dot
        low, high = ax.get_ylim()
        assert low > 0 and low < values.min() and values.max() < high
        for method, line in zip(ABLATION, means, strict=True):
            expected = figures.ablation_values(results[method])[column].mean()
            assert line.get_ydata() == pytest.approx([expected, expected])
        assert [t.get_text() for t in ax.get_xticklabels()] == ["Baseline", "+MT", "+ANL"]
    # The 3.2-point clean gap between Baseline+MT and Baseline fills over a tenth of its panel.
    clean = axes[0]
    assert 3.5 / (clean.get_ylim()[1] - clean.get_ylim()[0]) > 0.1
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][:2] == ["mean of 3 seeds", "one seed"]
    assert figures.plot_ablation({"sat": results["sat"]}, tmp_path / "none.png", "x") is None


def test_write_figures_writes_one_grid_per_student_and_lists_every_file(tmp_path, drawn):
    profile = Profile.load("smoke").with_overrides(seeds=2)
    out = tmp_path / "out"
    results, ablation = {}, ablation_results(seeds=(0, 1))
    for method in METHOD_ORDER:
        for k in (0, 1):
            fake_run(run_dir(out, "small_cnn", method, k), epochs=20, milestones=(14, 17), seed=k)
            default = [evaluation(k, 0.8, 0.5)] * 2
            results["small_cnn", method, k] = ablation.get(method, default)[k]
    teachers = {}
    for role in ("clean", "adv"):
        teacher_dir = fake_run(out / "teachers" / role, epochs=4, milestones=(3,))
        teachers[role] = Teacher(
            role, "large_cnn", f"LargeCNN ({role})", "trained here", teacher_dir / "final.pt", False, {},
            run_dir=teacher_dir,
        )  # fmt: skip
    written = figures.write_figures(profile, out, aggregate(results), teachers, results)

    names = ["ablation", "total_loss", "relative_losses", "mtard_weights", "accuracy"]
    stems = [f"{n}_small_cnn" for n in names] + ["accuracy_teachers"]
    expected = [out / "figures" / f"{s}.{ext}" for s in stems for ext in ("png", "svg")]
    assert written == expected
    on_disk = sorted(p for p in (out / "figures").rglob("*") if p.is_file())
    assert on_disk == sorted(expected)  # nothing listed that is not written, nor the reverse
    for path in written[::2]:
        assert_figure_files(path)

    ablation_fig, total, relative, weights, accuracy, teacher_grid = drawn
    assert "mean of 2 seeds, band: min to max" in total.get_suptitle()
    assert len(total.axes) == 2  # 20 epochs: the zoom on epochs 17-20
    assert [ax.get_title() for ax in relative.axes] == ["Baseline+MT", "MTARD"]
    assert [ax.get_title() for ax in accuracy.axes] == [METHODS[m].label for m in METHOD_ORDER]
    assert [ax.get_title() for ax in teacher_grid.axes] == [t.label for t in teachers.values()]
    for fig in (total, relative, weights, accuracy):
        for ax in fig.axes:
            low, high = ax.get_xlim()
            assert milestone_lines(ax) == [m for m in (14.0, 17.0) if low <= m <= high]
    assert all(milestone_lines(ax) == [3.0] for ax in teacher_grid.axes)
    assert ablation_fig.axes[0].get_title() == "Clean"
