"""Multi-Fashion: every loss-weighting method of ``anl`` on a real two-task problem.

Each image holds two Fashion-MNIST items, one shifted up-left and one down-right, overlaid on
a 36 x 36 canvas (:mod:`benchmarks.multifashion_data`); task 1 classifies the top-left item,
task 2 the bottom-right one. The network is Pareto MTL's shared-bottom LeNet (Lin et al.,
NeurIPS 2019: two convolutions and a 50-unit layer shared, a linear head per task), trained
with Adam on the two cross-entropies combined by each method:

==============  ====================================================================
``constant``    ``ConstantWeights`` with 0.5 / 0.5 (equal; ANL's starting weights)
``anl``         ``AdaptiveLossBalancer`` (beta 1, weight_lr 0.025)
``dwa``         ``DynamicWeightAverage`` (T 2, window = the batches of one epoch, as MTAN)
``rlw``         ``RandomLossWeighting`` (seed = the run's seed)
``gls``         ``GeometricLossStrategy``
``softadapt``   ``SoftAdapt`` (beta 0.1, original variant, order 1)
``relobralo``   ``ReLoBRaLo`` (alpha 0.999, E[rho] 0.999, T 0.1, seed = the run's seed)
``uw``          ``UncertaintyWeighting`` ("plain"; its log-variances in the Adam optimiser)
``imtl_l``      ``IMTLL`` (its log-scales in the Adam optimiser)
``famo``        ``FAMO`` (weight_lr 0.025, gamma 1e-3; ``update`` after each optimiser step
                on the same batch, one extra forward pass)
==============  ====================================================================

Every method runs with every seed; a seed fixes the network's initialisation and the batch
order, so the methods of one seed start from the same network and see the same batches. The
runs go seed by seed, all methods within a seed, so that a change of background load touches
every method alike. At the end the whole test set is classified once (no model selection).

A training step is ``zero_grad``, the forward pass, the two losses, the weighting's ``step``,
``backward`` and Adam's step (FAMO: plus its ``update``, after one more forward pass), on a
batch already in memory. It is timed twice:

- **interleaved**, after the training runs (:func:`time_steps`): every method's step on the
  same batch, ``--timing-repeats`` rounds of ``--timing-inner`` steps of each method in turn,
  so that a change of background load hits every method alike; the table gives the median and
  the median of the per-round ratios to ``constant``;
- **during training**: the median step of each run, and its ratio to the ``constant`` run of
  the same seed. On a shared machine these runs are minutes apart, so this ratio also
  measures the change of load between them.

The weighting's own calls (``step``, and FAMO's ``update`` without its forward pass) are
timed in training too (median per run).

Run (see ``docs/benchmarks.md``, "multifashion")::

    nice -n 10 python -m benchmarks.multifashion --out-dir docs/results/multifashion

It writes ``results.json`` (configuration, data fingerprints, machine, every run with its
per-epoch figures and its weight trajectory), ``table.md`` and ``weights.png``.
``--plot-only results.json`` redraws the table and figure from a JSON file; ``--resume``
keeps the finished runs of an interrupted invocation (same configuration) and adds the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import anl
from benchmarks import multifashion_data
from benchmarks.timing import RESULTS_DIR, machine_info

NAME = "multifashion"
TASKS = ("left", "right")
"""The two losses' names: task 1 classifies the top-left item, task 2 the bottom-right one."""

_ALL = {"history_size": None}  # keep every step's weights for the trajectory

METHODS: dict[str, tuple[str, Callable[[int, int], anl.LossWeighting]]] = {
    # name: (label in the table and figure, factory(seed, steps_per_epoch))
    "constant": (
        "Constant 0.5/0.5",
        lambda seed, epoch: anl.ConstantWeights(TASKS, [0.5, 0.5], **_ALL),
    ),
    "anl": ("ANL", lambda seed, epoch: anl.AdaptiveLossBalancer(TASKS, **_ALL)),
    "dwa": ("DWA", lambda seed, epoch: anl.DynamicWeightAverage(TASKS, window=epoch, **_ALL)),
    "rlw": ("RLW", lambda seed, epoch: anl.RandomLossWeighting(TASKS, seed=seed, **_ALL)),
    "gls": ("GLS", lambda seed, epoch: anl.GeometricLossStrategy(TASKS, **_ALL)),
    "softadapt": ("SoftAdapt", lambda seed, epoch: anl.SoftAdapt(TASKS, **_ALL)),
    "relobralo": ("ReLoBRaLo", lambda seed, epoch: anl.ReLoBRaLo(TASKS, seed=seed, **_ALL)),
    "uw": ("Uncertainty", lambda seed, epoch: anl.UncertaintyWeighting(TASKS, **_ALL)),
    "imtl_l": ("IMTL-L", lambda seed, epoch: anl.IMTLL(TASKS, **_ALL)),
    "famo": ("FAMO", lambda seed, epoch: anl.FAMO(TASKS, **_ALL)),
}

WEIGHT_TOTALS = {
    "constant": "fixed, sum 1",
    "anl": "sum 1",
    "dwa": "sum 2",
    "rlw": "sum 1",
    "gls": "effective, no fixed sum",
    "softadapt": "sum 1",
    "relobralo": "sum 2",
    "uw": "exp(-s), learned",
    "imtl_l": "exp(s), learned",
    "famo": "softmax z, sum 1",
}
"""What each method's ``weights`` are (the figure's panel titles)."""

CONFIG_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "pairs_per_image",
    "data_seed",
    "train_sources",
    "test_sources",
    "max_steps_per_epoch",
    "threads",
)
"""The arguments that must match for ``--resume`` to reuse a run."""


class MultiLeNet(nn.Module):
    """Pareto MTL's LeNet for 36 x 36 inputs: a shared body and one linear head per task.

    ``conv 9x9 (1 -> 10) -> ReLU -> max-pool 2 -> conv 5x5 (10 -> 20) -> ReLU -> max-pool 2
    -> linear (500 -> 50) -> ReLU``, then ``linear (50 -> 10)`` per task.
    """

    def __init__(self, tasks: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 9)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc = nn.Linear(5 * 5 * 20, 50)
        self.heads = nn.ModuleList(nn.Linear(50, classes) for _ in range(tasks))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc(x.flatten(1)))
        return [head(x) for head in self.heads]


def _inputs(images: Tensor) -> Tensor:
    """uint8 ``(B, 1, 36, 36)`` -> float in [0, 1], channels-last (the faster layout on CPU)."""
    return images.float().div_(255).contiguous(memory_format=torch.channels_last)


def _task_losses(outputs: Sequence[Tensor], labels: Tensor) -> list[Tensor]:
    return [F.cross_entropy(out, labels[:, i]) for i, out in enumerate(outputs)]


@torch.no_grad()
def evaluate(model: nn.Module, data: multifashion_data.MultiFashion, batch_size: int = 1000):
    """Accuracy (%) and mean cross-entropy of each task on ``data``."""
    model.eval()
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    correct = np.zeros(len(TASKS))
    loss_sum = np.zeros(len(TASKS))
    for start in range(0, len(data), batch_size):
        y = labels[start : start + batch_size]
        outputs = model(_inputs(images[start : start + batch_size]))
        for i, out in enumerate(outputs):
            correct[i] += (out.argmax(1) == y[:, i]).sum().item()
            loss_sum[i] += F.cross_entropy(out, y[:, i], reduction="sum").item()
    model.train()
    return (100.0 * correct / len(data)).tolist(), (loss_sum / len(data)).tolist()


class Trainer:
    """The network, the weighting and the optimiser of one run, and its training step."""

    def __init__(self, method: str, seed: int, *, steps_per_epoch: int, lr: float) -> None:
        torch.manual_seed(seed)
        self.model = MultiLeNet().to(memory_format=torch.channels_last)
        self.weighting = METHODS[method][1](seed, steps_per_epoch)
        params = list(self.model.parameters())
        if isinstance(self.weighting, nn.Module):  # uncertainty, IMTL-L: learned log-scales
            params += list(self.weighting.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.is_famo = isinstance(self.weighting, anl.FAMO)

    def step(self, x: Tensor, y: Tensor) -> tuple[list[Tensor], list[Tensor], float]:
        """One training step on the batch ``(x, y)``: the outputs, the two losses and the
        seconds spent in the weighting's own calls (``step``; FAMO's ``update`` too)."""
        clock = time.perf_counter
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.model(x)
        losses = _task_losses(outputs, y)
        start = clock()
        total = self.weighting.step(losses)
        weighting_s = clock() - start
        total.backward()
        self.optimizer.step()
        if self.is_famo:  # FAMO's second call: the losses after the step, same batch
            with torch.no_grad():
                after = _task_losses(self.model(x), y)
                start = clock()
                self.weighting.update(after)
                weighting_s += clock() - start
        return outputs, losses, weighting_s


def _steps_per_epoch(n: int, batch_size: int, cap: int | None) -> int:
    steps = n // batch_size  # the last partial batch is dropped
    if cap is not None:
        steps = min(steps, cap)
    if steps < 1:
        raise ValueError(f"{n} training images make no batch of {batch_size}.")
    return steps


def train_run(
    method: str,
    seed: int,
    train: multifashion_data.MultiFashion,
    test: multifashion_data.MultiFashion,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    max_steps_per_epoch: int | None = None,
    trajectory_points: int = 250,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the network on ``train`` with ``method`` and ``seed``; test it on ``test``."""
    steps_per_epoch = _steps_per_epoch(len(train), batch_size, max_steps_per_epoch)
    trainer = Trainer(method, seed, steps_per_epoch=steps_per_epoch, lr=lr)
    weighting = trainer.weighting
    order = torch.Generator().manual_seed(seed)
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)

    step_s: list[float] = []
    weighting_s: list[float] = []
    epochs_log = []
    clock = time.perf_counter
    run_start = clock()
    for epoch in range(epochs):
        epoch_start = clock()
        perm = torch.randperm(len(train), generator=order)
        loss_sum = np.zeros(len(TASKS))
        correct = np.zeros(len(TASKS))
        for b in range(steps_per_epoch):
            index = perm[b * batch_size : (b + 1) * batch_size]
            x, y = _inputs(images[index]), labels[index]
            start = clock()
            outputs, losses, w_time = trainer.step(x, y)
            step_s.append(clock() - start)
            weighting_s.append(w_time)
            for i, (out, loss) in enumerate(zip(outputs, losses, strict=True)):
                loss_sum[i] += loss.item()
                correct[i] += (out.detach().argmax(1) == y[:, i]).sum().item()
        seen = steps_per_epoch * batch_size
        epochs_log.append(
            {
                "epoch": epoch + 1,
                "train_loss": (loss_sum / steps_per_epoch).tolist(),
                "train_acc": (100.0 * correct / seen).tolist(),
                "seconds": clock() - epoch_start,
            }
        )
        log(
            f"  {method} seed {seed} epoch {epoch + 1}/{epochs}: train loss "
            f"{loss_sum[0] / steps_per_epoch:.4f}/{loss_sum[1] / steps_per_epoch:.4f}, "
            f"{clock() - epoch_start:.1f} s"
        )
    train_seconds = clock() - run_start
    test_acc, test_loss = evaluate(trainer.model, test)

    history = weighting.history()
    stride = max(1, math.ceil(len(history["step"]) / trajectory_points))
    keep = np.arange(0, len(history["step"]), stride)
    return {
        "method": method,
        "seed": seed,
        "test_acc": test_acc,
        "test_acc_mean": float(np.mean(test_acc)),
        "test_loss": test_loss,
        "epochs": epochs_log,
        "steps": len(step_s),
        "steps_per_epoch": steps_per_epoch,
        "train_seconds": train_seconds,
        "step_ms_median": 1e3 * statistics.median(step_s),
        "step_ms_mean": 1e3 * statistics.fmean(step_s),
        "step_ms_p10_p90": (1e3 * np.percentile(step_s, [10, 90])).tolist(),
        "weighting_us_median": 1e6 * statistics.median(weighting_s),
        "final_weights": [float(w) for w in weighting.weights.tolist()],
        "trajectory": {
            "step": history["step"][keep].tolist(),
            "weights": np.round(history["weights"][keep], 5).tolist(),
        },
    }


def time_steps(
    methods: Sequence[str],
    train: multifashion_data.MultiFashion,
    *,
    batch_size: int,
    lr: float,
    repeats: int,
    inner: int,
    warmup: int,
) -> dict[str, Any]:
    """Every method's training step on one batch, timed interleaved (``benchmarks.timing``):
    ``warmup`` untimed steps each, then ``repeats`` rounds of ``inner`` steps of every method
    in turn, so that background load hits them alike; medians over the rounds and the ratio to
    ``constant`` (of the medians, and the median of the per-round ratios)."""
    from benchmarks.timing import ratio, time_interleaved

    steps_per_epoch = _steps_per_epoch(len(train), batch_size, None)
    x = _inputs(torch.from_numpy(train.images[:batch_size]))
    y = torch.from_numpy(train.labels[:batch_size])
    candidates = {}
    for method in methods:
        trainer = Trainer(method, 0, steps_per_epoch=steps_per_epoch, lr=lr)
        candidates[method] = lambda trainer=trainer: trainer.step(x, y)
    timings = time_interleaved(candidates, repeats=repeats, warmup=warmup, inner=inner)
    result: dict[str, Any] = {
        "batch_size": batch_size,
        "repeats": repeats,
        "inner": inner,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "methods": {},
    }
    for method, timing in timings.items():
        entry: dict[str, Any] = {
            "step_ms": 1e3 * timing.median,
            "samples_ms": [1e3 * t for t in timing.samples],
        }
        if "constant" in timings:
            ratios = ratio(timing, timings["constant"])
            entry["x_constant"] = ratios["ratio_of_medians"]
            entry["x_constant_paired"] = ratios["median_of_ratios"]
        result["methods"][method] = entry
    return result


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(
    runs: Sequence[dict[str, Any]],
    methods: Sequence[str],
    timing: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per method: accuracies (mean, std over seeds); the step time of the
    interleaved timing (``timing``) and its ratio to ``constant``; the median step time
    during the training runs and its ratio to the ``constant`` run of the same seed (mean over
    seeds)."""
    baseline = {r["seed"]: r["step_ms_median"] for r in runs if r["method"] == "constant"}
    timed = (timing or {}).get("methods", {})
    rows = []
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        ratios = [r["step_ms_median"] / baseline[r["seed"]] for r in mine if r["seed"] in baseline]
        row: dict[str, Any] = {"method": method, "label": METHODS[method][0]}
        row["seeds"] = [r["seed"] for r in mine]
        for key, values in (
            ("task1_acc", [r["test_acc"][0] for r in mine]),
            ("task2_acc", [r["test_acc"][1] for r in mine]),
            ("mean_acc", [r["test_acc_mean"] for r in mine]),
            ("train_step_ms", [r["step_ms_median"] for r in mine]),
            ("weighting_us", [r["weighting_us_median"] for r in mine]),
        ):
            row[key], row[key + "_std"] = _mean_std(values)
        row["train_step_x_constant"] = statistics.fmean(ratios) if ratios else None
        row["train_step_x_constant_per_seed"] = ratios
        entry = timed.get(method, {})
        row["step_ms"] = entry.get("step_ms")
        row["step_x_constant"] = entry.get("x_constant_paired")
        rows.append(row)
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (accuracies in %, mean ± sample std over seeds)."""
    lines = [
        "| method | task 1 (top-left) acc. % | task 2 (bottom-right) acc. % | mean acc. % "
        "| step ms | step × constant | weighting µs | step ms in training (× constant) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} "
            f"| {row['task1_acc']:.2f} ± {row['task1_acc_std']:.2f} "
            f"| {row['task2_acc']:.2f} ± {row['task2_acc_std']:.2f} "
            f"| **{row['mean_acc']:.2f}** ± {row['mean_acc_std']:.2f} "
            f"| {_num(row['step_ms'], '.1f')} "
            f"| {_num(row['step_x_constant'], '.3f')} "
            f"| {row['weighting_us']:.0f} "
            f"| {row['train_step_ms']:.0f} ({_num(row['train_step_x_constant'], '.2f')}) |"
        )
    return "\n".join(lines) + "\n"


def plot_weights(record: dict[str, Any], path: Path, dpi: int = 90) -> None:
    """One panel per method: both weights against the step, every seed (seed order: solid
    first, then fainter), epoch boundaries dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [
        m for m in record["config"]["methods"] if any(r["method"] == m for r in record["runs"])
    ]
    cols = min(5, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.5 * rows), squeeze=False)
    colors = ("tab:blue", "tab:orange")
    for ax in axes.flat[len(methods) :]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods, strict=False):
        runs = sorted((r for r in record["runs"] if r["method"] == method), key=lambda r: r["seed"])
        for k, run in enumerate(runs):
            steps = np.asarray(run["trajectory"]["step"])
            weights = np.asarray(run["trajectory"]["weights"])
            for i, task in enumerate(("task 1 (top-left)", "task 2 (bottom-right)")):
                ax.plot(
                    steps,
                    weights[:, i],
                    color=colors[i],
                    lw=0.8,
                    alpha=1.0 if k == 0 else 0.35,
                    label=task if k == 0 else None,
                )
        if runs:
            per_epoch = runs[0]["steps_per_epoch"]
            for e in range(1, len(runs[0]["epochs"])):
                ax.axvline(e * per_epoch, color="0.6", lw=0.6, ls=":")
        ax.set_title(f"{METHODS[method][0]} ({WEIGHT_TOTALS[method]})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("weight", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seeds = ", ".join(str(s) for s in record["config"]["seeds"])
    fig.suptitle(
        f"Multi-Fashion: loss weights per step (seeds {seeds}; seed {record['config']['seeds'][0]}"
        " solid, the others faint; epochs dotted)",
        fontsize=10,
        y=0.99,
    )
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=2,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.95),
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def write_outputs(record: dict[str, Any], out_dir: Path, *, figure: bool = True) -> None:
    """``results.json``, ``table.md`` and (``figure``) ``weights.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record["summary"] = summarize(record["runs"], record["config"]["methods"], record.get("timing"))
    (out_dir / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    config = record["config"]
    commands = "\n".join(inv["command"] for inv in record["invocations"])
    header = (
        f"Multi-Fashion, {config['epochs']} epochs of {record['data']['train']['size']} images "
        f"(batch {config['batch_size']}, Adam lr {config['lr']}), "
        f"test on {record['data']['test']['size']} images; seeds "
        f"{', '.join(str(s) for s in config['seeds'])}; accuracies: mean ± sample std over "
        "seeds. Step times: see the README beside this file.\n\n"
        f"```bash\n{commands}\n```\n\n"
    )
    (out_dir / "table.md").write_text(header + markdown_table(record["summary"]))
    if figure:
        plot_weights(record, out_dir / "weights.png")


def code_version() -> dict[str, Any]:
    """The commit of this checkout and whether ``anl/`` or ``benchmarks/`` differ from it."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "anl", "benchmarks"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": bool(dirty)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{NAME}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    parser.add_argument(
        "--pairs-per-image", type=int, default=2, help="composites per source image (2: 120k/20k)"
    )
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the pairing")
    parser.add_argument("--train-sources", type=int, help="use the first N training items only")
    parser.add_argument("--test-sources", type=int, help="use the first N test items only")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap (for quick checks)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--data-dir", type=Path, help="where the Fashion-MNIST files are")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR / NAME)
    parser.add_argument("--trajectory-points", type=int, default=250)
    parser.add_argument("--no-figure", action="store_true")
    parser.add_argument("--no-timing", action="store_true", help="skip the interleaved timing")
    parser.add_argument("--timing-repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--timing-inner", type=int, default=10, help="steps per round")
    parser.add_argument("--timing-warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs in --out-dir")
    parser.add_argument("--plot-only", type=Path, metavar="JSON", help="redraw table and figure")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.plot_only is not None:
        record = json.loads(args.plot_only.read_text())
        write_outputs(record, args.plot_only.parent, figure=not args.no_figure)
        return record
    torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()
    machine = machine_info()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), {machine['date']}, "
        f"load {machine.get('load_average_1m')}",
        flush=True,
    )
    data = {}
    for split, limit in (("train", args.train_sources), ("test", args.test_sources)):
        data[split] = multifashion_data.load(
            split,
            pairs_per_image=args.pairs_per_image,
            seed=args.data_seed,
            limit=limit,
            data_dir=args.data_dir,
        )
    data_record = {
        split: {
            "size": len(d),
            "sha256": multifashion_data.fingerprint(d),
            "label_counts": [np.bincount(d.labels[:, i], minlength=10).tolist() for i in (0, 1)],
        }
        for split, d in data.items()
    }
    print(
        f"data: {len(data['train'])} training / {len(data['test'])} test images "
        f"({time.perf_counter() - wall_start:.1f} s)",
        flush=True,
    )
    config = {key: getattr(args, key) for key in CONFIG_KEYS}
    config.update(methods=args.methods, seeds=args.seeds)
    command = "python -m benchmarks.multifashion"
    argv_list = list(sys.argv[1:] if argv is None else argv)
    if argv_list:
        command += " " + shlex.join(argv_list)
    invocation = {"command": command, "code": code_version(), "machine": machine}
    record: dict[str, Any] = {
        "benchmark": NAME,
        "invocations": [invocation],
        "config": config,
        "data": data_record,
        "runs": [],
    }
    results = args.out_dir / "results.json"
    if args.resume and results.is_file():
        old = json.loads(results.read_text())
        same = all(old["config"].get(k) == config[k] for k in CONFIG_KEYS)
        if not same or old["data"] != data_record:
            raise SystemExit(f"--resume: {results} was made with another configuration or data.")
        wanted = {(m, s) for m in args.methods for s in args.seeds}
        record["runs"] = [r for r in old["runs"] if (r["method"], r["seed"]) in wanted]
        previous = old.get("invocations") or [
            {key: old.get(key) for key in ("command", "code", "machine", "wall_seconds")}
        ]
        record["invocations"] = [*previous, invocation]
        print(f"resuming: {len(record['runs'])} runs kept from {results}", flush=True)
    done = {(r["method"], r["seed"]) for r in record["runs"]}
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in done:
                continue
            run = train_run(
                method,
                seed,
                data["train"],
                data["test"],
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                max_steps_per_epoch=args.max_steps_per_epoch,
                trajectory_points=args.trajectory_points,
            )
            record["runs"].append(run)
            print(
                f"{method} seed {seed}: test acc {run['test_acc'][0]:.2f} / "
                f"{run['test_acc'][1]:.2f} %, step {run['step_ms_median']:.1f} ms, "
                f"{run['train_seconds']:.0f} s",
                flush=True,
            )
            invocation["wall_seconds"] = time.perf_counter() - wall_start
            write_outputs(record, args.out_dir, figure=False)  # a crash keeps the finished runs
    if not args.no_timing:
        print("timing every method's step, interleaved", flush=True)
        record["timing"] = time_steps(
            args.methods,
            data["train"],
            batch_size=args.batch_size,
            lr=args.lr,
            repeats=args.timing_repeats,
            inner=args.timing_inner,
            warmup=args.timing_warmup,
        )
    invocation["wall_seconds"] = time.perf_counter() - wall_start
    write_outputs(record, args.out_dir, figure=not args.no_figure)
    print(markdown_table(record["summary"]), end="")
    total = sum(inv.get("wall_seconds") or 0.0 for inv in record["invocations"])
    print(
        f"wall time {invocation['wall_seconds']:.0f} s (all invocations: {total:.0f} s); "
        f"written to {args.out_dir}",
        flush=True,
    )
    return record


if __name__ == "__main__":
    main()
