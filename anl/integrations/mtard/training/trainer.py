"""The training loop: one method, one student, one run directory.

One call of :func:`train` runs one method (:mod:`..methods`) for one student and writes a run
directory::

    run_dir/
      config.json             the TrainConfig, as JSON (resume reads it back)
      checkpoints/last.pt     everything needed to resume, written atomically after every epoch
      checkpoints/best.pt     the student of the epoch with the best validation W-Robust
      final.pt                the student after the last epoch
      logs/steps.csv          one row per optimisation step
      logs/epochs.csv         one row per epoch
      logs/tensorboard/       scalars, with ``tensorboard=True`` and TensorBoard installed
      metrics.json            final metrics and paths

Optimisation follows the official MTARD script (Zhao et al., ECCV 2022, Sec. 4.1): SGD with
lr 0.1, momentum 0.9, weight decay 2e-4, batch 128, 300 epochs, lr x 0.1 after epochs 215, 260
and 285 (:func:`~.config.milestone_epochs`). The ANL rate ``r_w`` (paper Eq. 9-11) decays with
the learning rate: at each milestone, ``weight_lr`` is multiplied by the same ``lr_gamma``, as
in the official code.

Checkpoint selection: the paper keeps the checkpoint with the best W-Robust accuracy
``0.5 * clean + 0.5 * robust`` (Eq. 12), measured on the test set by the official code. Here a
validation split carved from the training set is used instead (``val_size`` images), attacked
by a short PGD (:func:`~..evaluation.validation.validate`); the test set is never seen during
training.

The step never synchronises host and device: the per-step log rows (losses, total, weights,
relative losses) stay on the device and are read back in one block every ``log_every`` steps;
the finiteness of the total loss is checked on that block.

Speed (``docs/benchmarks.md``): the attack differentiates with respect to the input only, the
teachers are frozen and BatchNorm-folded (:mod:`..models.teachers`), the step never
synchronises; ``memory_format``, ``amp`` and ``compile`` are :class:`~.config.TrainConfig`'s.
Under ``torchrun`` (``docs/distributed.md``) the run is data-parallel (:mod:`.build`); rank
0's BatchNorm statistics are re-broadcast after each epoch and only rank 0 writes files.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anl.distributed import mean_across_ranks

from ..checks import check_int, fail
from ..data.registry import DATASETS, ImageData
from ..evaluation.validation import validate
from ..methods.balancers import decay_rate, has_second_call, rate_of, rule_parameters
from ..methods.registry import METHODS, build_weighting
from ..runtime.execution import deterministic_algorithms, resolve_memory_format
from ..runtime.files import atomic_write_text, json_finite
from ..runtime.optional import progress_bar, progress_write
from ..runtime.process import (
    agree,
    broadcast_buffers,
    current_ranks,
    distributed_session,
    process_device,
)
from .build import build_context, build_loaders, build_optimizer, build_student, check_parallel
from .checkpoints import (
    RUN_CHECKPOINT_FORMAT,
    read_last,
    rng_state,
    run_paths,
    save_student,
    set_rng_state,
    write_last,
)
from .config import TrainConfig, milestone_epochs
from .logs import RunLogs, StepRows, last_row, step_columns
from .run_data import load_run_data, split_run_data


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or infinite; the last good checkpoint is kept."""


def train(
    config: TrainConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    train_data: ImageData | None = None,
) -> dict[str, Any]:
    """Train a student as ``config`` says and write the run directory ``run_dir``.

    Args:
        config: the run's :class:`~.config.TrainConfig`. ``None`` with ``resume=True`` reads
            ``run_dir/config.json``.
        run_dir: the run directory (created). A directory that already holds a run needs
            ``resume=True``.
        resume: continue from ``checkpoints/last.pt`` (model, optimizer, scheduler, balancer,
            RNG states, loader epoch, best metric). On CPU the final weights are bit-identical
            to those of an uninterrupted run. The config must equal the saved one except for
            :data:`~.config.RESUME_MUTABLE`. Without a ``last.pt`` the run starts from scratch.
        progress: show tqdm bars (rank 0 only).
        stop_after_epochs: stop once this many epochs are complete, leaving a resumable run
            (for time-limited jobs); ``final.pt`` is written only when all epochs are done.
        train_data: use this training set instead of loading ``config.dataset`` (the
            validation split and ``train_subset`` still apply).

    Returns:
        A JSON-serialisable dict, also written to ``metrics.json``: ``epochs_completed``,
        ``finished``, ``final`` (last epoch's row of ``epochs.csv``), ``best`` (epoch and
        validation metrics of ``best.pt``), ``num_skipped``, ``paths``, ``time_s``.

    Raises:
        NonFiniteLossError: a loss became NaN or infinite; ``last.pt`` is the last good epoch.
    """
    run_dir = Path(run_dir)
    if config is None:
        if not resume:
            fail("config", None, "a TrainConfig (None is only allowed with `resume=True`)")
        config = TrainConfig.load(run_dir / "config.json")
    if not isinstance(config, TrainConfig):
        fail("config", config, "a TrainConfig")
    config.validate()
    if stop_after_epochs is not None:
        check_int("stop_after_epochs", stop_after_epochs, minimum=0)

    with deterministic_algorithms(config.deterministic), distributed_session(config.device):
        trainer = Trainer(config, run_dir, progress=progress, train_data=train_data)
        return trainer.run(resume=resume, stop_after_epochs=stop_after_epochs)


class Trainer:
    """The state of one training run (one per :func:`train` call).

    Building it assembles the run (:mod:`.build`): the data and its loaders, the student (and
    its DDP wrapper), the frozen teachers, the method's context and weighting, the optimiser
    and the schedule. :meth:`run` trains the remaining epochs and writes the run directory.
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        *,
        progress: bool,
        train_data: ImageData | None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.ranks = current_ranks()
        self.progress = progress and self.ranks.main
        self.device = process_device(config.device, self.ranks)
        self.info = DATASETS[config.dataset]
        self.spec = METHODS[config.method]
        self.paths = run_paths(run_dir)
        check_parallel(config, self.ranks, self.device)
        if train_data is None:
            train_data = load_run_data(config, progress=self.progress, ranks=self.ranks)
        train_set, val_set = split_run_data(config, train_data)
        self.loader, self.val_loader = build_loaders(
            config, train_set, val_set, ranks=self.ranks, device=self.device
        )
        self.memory_format = resolve_memory_format(config.memory_format, self.device)
        placement = {"device": self.device, "memory_format": self.memory_format}
        self.student, self.model = build_student(config, ranks=self.ranks, **placement)
        self.ctx = build_context(config, self.student, self.model, **placement)
        self.eps = self.ctx.eps
        self.weighting = build_weighting(
            self.spec,
            hyper=config.hyper,
            weight_lr=config.weight_lr,
            beta=config.beta,
            balancer=config.balancer,
            balancer_kwargs=config.balancer_kwargs,
        )
        # A rule with parameters trains with the student (methods.balancers); FAMO is
        # called again after each optimiser step.
        if rule_parameters(self.weighting):
            self.weighting.to(self.device)  # type: ignore[attr-defined]
        self.rule_parameters = rule_parameters(self.weighting)
        self.second_call = has_second_call(self.weighting)
        self.names = list(self.weighting.names)
        self.optimizer, self.scheduler = build_optimizer(config, self.student, self.rule_parameters)
        self.milestones = milestone_epochs(config)
        self.start_epoch = 0
        self.global_step = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.time_s = 0.0
        self.logs: RunLogs | None = None  # rank 0's

    # -- the run ------------------------------------------------------------------------------
    def run(self, *, resume: bool, stop_after_epochs: int | None) -> dict[str, Any]:
        """Train from the start or from ``last.pt`` to the last (or ``stop_after_epochs``-th)
        epoch; returns the run's metrics (:func:`train`)."""
        resumed = self._restore(resume)
        self._open_logs(resumed)
        last: dict[str, Any] | None = None
        try:
            end = self.config.epochs
            if stop_after_epochs is not None:
                end = min(end, max(stop_after_epochs, self.start_epoch))
            for epoch in range(self.start_epoch, end):
                last = self._train_epoch(epoch)
            if last is None and self.ranks.main:
                last = last_row(self.paths["epochs_log"])
            return self.finish(end == self.config.epochs, last)
        finally:
            if self.logs is not None:
                self.logs.close()

    def _restore(self, resume: bool) -> bool:
        """Load ``last.pt`` when resuming; whether the run was resumed."""
        last = self.paths["last"]
        has_last = last.exists()
        agree(has_last, f"whether {last} exists", self.ranks)
        if resume and has_last:
            self._load_last()
            return True
        if has_last:
            raise ValueError(
                f"The run directory {str(self.run_dir)!r} already holds a run ({last}). Pass "
                "`resume=True` (--resume) or choose another directory."
            )
        if resume:
            warnings.warn(f"No {last} to resume from: starting from scratch.", stacklevel=4)
        return False

    def _open_logs(self, resumed: bool) -> None:
        """Rank 0 opens the CSV logs (a fresh run starts fresh ones; a resumed run drops the
        rows after its checkpoint) and TensorBoard; the config is saved."""
        if self.ranks.main:
            paths = self.paths
            for sub in ("checkpoints", "logs"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            if not resumed:
                self.config.save(paths["config"])
                for key in ("steps_log", "epochs_log"):
                    paths[key].unlink(missing_ok=True)
            self.logs = RunLogs(
                paths,
                self.names,
                keep_epochs=self.start_epoch if resumed else 0,
                tensorboard=self.config.tensorboard,
            )
        self.ranks.barrier()

    # -- one epoch ----------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        start = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        rate = rate_of(self.weighting)
        weight_lr = rate if rate is not None else float("nan")
        means = self._train_steps(epoch, lr)
        # Under DDP each rank's BatchNorm statistics took their own last update: make every
        # replica rank 0's again before it is validated and saved.
        broadcast_buffers(self.student, self.ranks)
        val = self._validate()
        # End of epoch: schedule, then checkpoints (nothing reaches here after a NaN loss).
        completed = epoch + 1
        self._step_schedule(completed)
        self.time_s += time.perf_counter() - start
        row = {
            "epoch": completed,
            **{c: float(v) for c, v in zip(step_columns(self.names)[3:], means, strict=True)},
            "val_clean": val["clean"],
            "val_robust": val["robust"],
            "val_wrobust": val["wrobust"],
            "lr": lr,
            "weight_lr": weight_lr,
            "skipped": int(getattr(self.weighting, "num_skipped", 0)),
            "time_s": time.perf_counter() - start,
        }
        improved = self._track_best(completed, val["wrobust"])
        self._save_epoch(completed, row, improved)
        if self.progress:
            progress_write(
                f"epoch {completed}/{self.config.epochs}: total {row['total']:.4f}, "
                f"val clean {val['clean']:.4f}, robust {val['robust']:.4f}, "
                f"W-Robust {val['wrobust']:.4f}, lr {lr:.4g}, {row['time_s']:.1f}s"
            )
        self.ranks.barrier()
        return row

    def _train_steps(self, epoch: int, lr: float) -> np.ndarray:
        """The optimisation steps of one epoch; returns the epoch means of the step rows."""
        config = self.config
        self.loader.set_epoch(epoch)
        self.model.train()
        block = StepRows(self.weighting, self.names, first_step=self.global_step + 1)
        bar = progress_bar(
            total=len(self.loader), desc=f"epoch {epoch + 1}/{config.epochs}", enabled=self.progress
        )
        try:
            for x, y in self.loader:
                x = x.contiguous(memory_format=self.memory_format)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.amp):
                    losses = self.spec.loss_fn(self.ctx, x, y)
                total = self.weighting.step(losses)
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                if self.ranks.enabled:
                    for p in self.rule_parameters:  # as DDP averages the student's
                        if p.grad is not None:
                            p.grad.copy_(mean_across_ranks(p.grad))
                self.optimizer.step()
                if self.second_call:  # FAMO: the losses after the step, same batch
                    with (
                        torch.no_grad(),
                        torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.amp),
                    ):
                        self.weighting.update(self.ctx.replay())  # type: ignore[attr-defined, misc]
                block.append(losses, total)
                self.global_step += 1
                if len(block) >= config.log_every:
                    self._read_back(block, epoch, lr, bar)
            if len(block):
                self._read_back(block, epoch, lr, bar)
        finally:
            bar.close()
        return block.means()

    def _read_back(self, block: StepRows, epoch: int, lr: float, bar: Any) -> None:
        """Read the pending step rows back, log them, and stop on a non-finite total loss."""
        steps, rows = block.read_back(self.ranks)
        if self.logs is not None:
            self.logs.write_steps(epoch + 1, lr, steps, rows)
        bad = block.first_non_finite(rows)
        if bad is not None:
            detail = ", ".join(
                f"{k}={float(rows[bad, j])!r}" for j, k in enumerate([*self.names, "total"])
            )
            raise NonFiniteLossError(
                f"Non-finite training loss at epoch {epoch + 1}, step {int(steps[bad])} "
                f"(step {int(steps[bad]) - block.epoch_first + 1} of {len(self.loader)} in the "
                f"epoch): {detail}. The run stopped; the last good checkpoint "
                f"{self.paths['last']} (epoch {epoch}) was left untouched."
            )
        block.add(rows)
        if self.logs is not None:
            self.logs.step_scalars(steps, rows)
        means = rows.mean(axis=0)
        n = len(self.names)
        bar.update(len(rows))
        bar.set_postfix(
            {
                **{k: f"{means[j]:.4g}" for j, k in enumerate(self.names)},
                **{f"w_{k}": f"{means[j + n + 1]:.3f}" for j, k in enumerate(self.names)},
            },
            refresh=False,
        )

    def _validate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {"clean": float("nan"), "robust": float("nan"), "wrobust": float("nan")}
        return validate(
            self.student,
            self.val_loader,
            eps=self.eps,
            steps=self.config.val_attack_steps,
            attack=self.config.val_attack,
        )

    def _step_schedule(self, completed: int) -> None:
        """The lr schedule's epoch step; the balancer's rate (ANL's r_w, FAMO's step size)
        decays at the same milestones."""
        self.scheduler.step()
        decays = self.milestones.count(completed)
        if decays:
            decay_rate(self.weighting, self.config.lr_gamma**decays)

    def _track_best(self, completed: int, wrobust: float) -> bool:
        """Whether this epoch is the new best (by validation W-Robust; without validation,
        the latest epoch)."""
        if self.val_loader is None:
            self.best_epoch = completed
            return True
        if self.best_metric is None or wrobust > self.best_metric:
            self.best_metric, self.best_epoch = wrobust, completed
            return True
        return False

    def _save_epoch(self, completed: int, row: dict[str, Any], improved: bool) -> None:
        rng = self.ranks.gather_objects(rng_state(self.device))
        if self.logs is None:  # ranks > 0 write nothing
            return
        # The log row first: a run killed before last.pt is replaced re-runs this epoch and
        # resume drops the rows of epochs after the checkpoint.
        self.logs.write_epoch(row)
        if improved:
            self._save_student(self.paths["best"], completed, row)
        self._save_last(completed, rng)
        self.logs.epoch_scalars(row)

    def _save_student(self, path: Path, epoch: int, row: Mapping[str, Any]) -> None:
        save_student(
            path,
            self.student,
            self.config,
            epoch=epoch,
            row=row,
            validated=self.val_loader is not None,
        )

    def _save_last(self, epoch: int, rng: list[dict[str, Any]]) -> None:
        state = {
            "format": RUN_CHECKPOINT_FORMAT,
            "version": 1,
            "epoch": epoch,
            "loader_epoch": epoch,
            "global_step": self.global_step,
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "weight_lr": rate_of(self.weighting),
            "rng": rng,
            "world_size": self.ranks.world_size,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "time_s": self.time_s,
            "config": self.config.to_dict(),
        }
        write_last(self.paths["last"], state)

    def _load_last(self) -> None:
        state = read_last(self.paths["last"], self.config)
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weighting.load_state_dict(state["weighting"])
        if state["weight_lr"] is not None and rate_of(self.weighting) is not None:
            self.weighting.weight_lr = state["weight_lr"]  # type: ignore[attr-defined]
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.time_s = float(state.get("time_s", 0.0))
        rng = state["rng"]
        if len(rng) == self.ranks.world_size:
            set_rng_state(rng[self.ranks.rank], self.device)
        else:
            warnings.warn(
                f"Resuming with {self.ranks.world_size} ranks from a checkpoint of {len(rng)}: "
                "the random streams are reseeded, so the run is not bit-identical.",
                stacklevel=4,
            )
            seed = (self.config.seed + 1) * 1_000_003 + self.ranks.rank + self.start_epoch
            torch.manual_seed(seed)

    def finish(self, finished: bool, last: dict[str, Any] | None) -> dict[str, Any]:
        """Write ``final.pt`` (a finished run) and ``metrics.json``; return the metrics."""
        completed = self.start_epoch
        if last is not None:
            completed = max(completed, int(last["epoch"]))
        paths = dict(self.paths)
        if not finished:
            paths.pop("final")
        if self.ranks.main and finished:
            nan = float("nan")
            row = last or {"val_clean": nan, "val_robust": nan, "val_wrobust": nan}
            self._save_student(self.paths["final"], completed, row)
        best = None
        if self.best_epoch is not None:
            best = {"epoch": self.best_epoch, "val_wrobust": self.best_metric}
        result = json_finite(
            {
                "run_dir": str(self.run_dir),
                "method": self.config.method,
                "dataset": self.config.dataset,
                "student": self.config.student,
                "epochs_completed": completed,
                "finished": finished,
                "final": last,
                "best": best,
                "num_steps": self.global_step,
                "num_skipped": int(getattr(self.weighting, "num_skipped", 0)),
                "time_s": self.time_s,
                "paths": {k: str(v) for k, v in paths.items()},
            }
        )
        if self.ranks.main:
            text = json.dumps(result, indent=2, sort_keys=True) + "\n"
            atomic_write_text(self.paths["metrics"], text)
        self.ranks.barrier()
        return result
