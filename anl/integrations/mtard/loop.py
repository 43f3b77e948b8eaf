"""The training loop: optimiser, schedule, validation, checkpoint/resume, ``train`` command.

One call of :func:`train` runs one method (see :mod:`.methods`) for one student and writes a run
directory::

    run_dir/
      config.json             the TrainConfig, as JSON (resume reads it back)
      checkpoints/last.pt     everything needed to resume, written atomically after every epoch
      checkpoints/best.pt     the student of the epoch with the best validation W-Robust
      final.pt                the student after the last epoch
      logs/steps.csv          one row per optimisation step
      logs/epochs.csv         one row per epoch
      logs/tensorboard/       scalars, when ``torch.utils.tensorboard`` imports
      metrics.json            final metrics and paths

Optimisation follows the official MTARD script (Zhao et al., ECCV 2022, Sec. 4.1): SGD with
lr 0.1, momentum 0.9, weight decay 2e-4, batch 128, 300 epochs, lr x 0.1 after epochs 215, 260
and 285. The milestones are stored as fractions of the number of epochs so that short runs
keep the same shape. The ANL rate ``r_w`` (paper Eq. 9-11) decays with the learning rate: at each
milestone, ``weight_lr`` is multiplied by the same ``lr_gamma``, as in the official code.

Checkpoint selection: the paper keeps the checkpoint with the best W-Robust accuracy
``0.5 * clean + 0.5 * robust`` (Eq. 12), measured on the test set by the official code. Here a
validation split carved from the training set is used instead (``val_size`` images), attacked by
a short PGD; the test set is never seen during training.

The step never synchronises host and device: the per-step log rows (losses, total, weights,
relative losses) stay on the device and are read back in one block every ``log_every`` steps;
the finiteness of the total loss is checked on that block.

Speed (``docs/benchmarks.md``): the attack differentiates with respect to the input only, the
teachers are frozen, BatchNorm-folded and run without a graph (:mod:`.teachers`), and the step
never synchronises. ``memory_format`` puts the networks and batches in the channels-last layout
(the default on CPU, where it wins; :func:`~.config.resolve_memory_format`); ``amp`` (bf16
autocast) and ``compile`` (``torch.compile`` of the student) are opt-in, meant for GPUs.

The pieces the loop assembles live in modules of their own: the run's configuration in
:mod:`.config`, the teachers in :mod:`.teachers`, the process group and device under
``torchrun`` (data parallelism, ``docs/distributed.md``) in :mod:`.parallel`, the CSV and
TensorBoard logs and progress bars in :mod:`.runlog`. Their public names are re-exported here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anl import AdaptiveLossBalancer

from . import attacks as _attacks
from . import checkpoints as _checkpoints
from . import data as _data
from . import methods as _methods
from . import models as _models
from .config import (
    VAL_ATTACKS,
    TrainConfig,
    _bad,
    _check_int,
    _config_differences,
    milestone_epochs,
    resolve_memory_format,
)
from .folding import FoldedEvalView
from .parallel import (
    _broadcast_buffers,
    _Dist,
    _dist_info,
    _is_main_process,
    _local_rank,
    distributed_backend,
    distributed_session,
    resolve_device,
)
from .runlog import _CsvLog, _last_row, _row_tensor, _summary_writer, _tqdm, _tqdm_write
from .teachers import fold_batchnorm, load_teacher_model, prepare_teacher

__all__ = [
    "RUN_CHECKPOINT_FORMAT",
    "VAL_ATTACKS",
    "NonFiniteLossError",
    "TrainConfig",
    "distributed_backend",
    "distributed_session",
    "fold_batchnorm",
    "load_teacher_model",
    "milestone_epochs",
    "prepare_teacher",
    "register_cli",
    "resolve_device",
    "resolve_memory_format",
    "run_train_cli",
    "train",
    "validate",
]

RUN_CHECKPOINT_FORMAT = "anl-mtard-run"
"""The ``format`` entry of ``checkpoints/last.pt`` (the resumable training state)."""


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def _count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x).argmax(dim=1) == y).sum()


def validate(
    model: nn.Module,
    loader: _data.BatchLoader,
    *,
    eps: float,
    steps: int,
    attack: str = "pgd_sat",
    step_size: float | None = None,
    ddp: _Dist | None = None,
) -> dict[str, float]:
    """Clean, robust and W-Robust accuracy (paper Eq. 12) of ``model`` on ``loader``.

    The robust accuracy is under PGD (``VAL_ATTACKS``): ``steps`` steps of ``step_size``
    (default ``eps / 4``) from a uniform random start in the eps-ball, drawn per image from its
    position in the validation set (``attacks.pgd(sample_seeds=...)``). So validation uses no
    global random state (it neither depends on nor disturbs training) and gives the same
    numbers whatever the batch size or the number of ranks. ``loader`` must not shuffle; under
    ``torch.distributed`` it must be built with ``pad_to_even=False`` (exact shards) and the
    counts are summed over ranks. The model's mode is restored. Returns
    ``{"clean", "robust", "wrobust", "n"}`` with accuracies in [0, 1].
    """
    if attack not in VAL_ATTACKS:
        _bad("attack", attack, f"one of {list(VAL_ATTACKS)}")
    if getattr(loader, "shuffle", False):
        _bad("loader", loader, "a loader with `shuffle=False`")
    ddp = ddp or _Dist()
    step_size = eps / 4 if step_size is None else step_size
    rank, world_size = getattr(loader, "rank", 0), getattr(loader, "world_size", 1)
    was_training = model.training
    device = next(model.parameters()).device
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    position = 0  # position of the batch's first image in this rank's shard
    model.eval()
    try:
        for x, y in loader:
            ids = rank + world_size * torch.arange(position, position + len(y))
            position += len(y)
            x_adv = _attacks.pgd(
                model,
                x,
                y,
                eps=eps,
                step_size=step_size,
                steps=steps,
                loss="ce" if attack == "pgd_sat" else "cw",
                random_start="uniform",
                model_mode="eval",
                sample_seeds=ids,
            )
            counts[0] += _count_correct(model, x, y)
            counts[1] += _count_correct(model, x_adv, y)
            counts[2] += len(y)
    finally:
        model.train(was_training)
    clean, robust, n = ddp.sum_(counts).tolist()
    clean, robust = (clean / n, robust / n) if n else (float("nan"), float("nan"))
    return {"clean": clean, "robust": robust, "wrobust": 0.5 * clean + 0.5 * robust, "n": int(n)}


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _prepare_data(
    config: TrainConfig,
    train_data: _data.ImageData | None,
    progress: bool,
    ddp: _Dist | None = None,
) -> tuple[_data.ImageData, _data.ImageData | None]:
    if train_data is None:
        ddp = ddp or _Dist()

        def load() -> _data.ImageData:
            return _data.load_dataset(
                config.dataset,
                "train",
                data_dir=config.data_dir,
                download=config.download,
                progress=progress,
            )

        # One process per node downloads a missing dataset; the others wait, then read it.
        node_main = _local_rank(ddp) in (None, 0)
        if node_main:
            train_data = load()
        ddp.barrier()
        if not node_main:
            train_data = load()
    if config.val_size >= len(train_data):
        _bad("val_size", config.val_size, f"smaller than the {len(train_data)} training images")
    val_data = None
    if config.val_size > 0:
        split_seed = config.seed if config.val_seed is None else config.val_seed
        train_data, val_data = _data.split_validation(train_data, config.val_size, seed=split_seed)
    if config.train_subset is not None:
        if config.train_subset > len(train_data):
            _bad(
                "train_subset",
                config.train_subset,
                f"at most the {len(train_data)} training images left after validation",
            )
        generator = torch.Generator().manual_seed(config.seed)
        keep = torch.randperm(len(train_data), generator=generator)[: config.train_subset]
        train_data = train_data.subset(torch.sort(keep).values)
    return train_data, val_data


def train(
    config: TrainConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    train_data: _data.ImageData | None = None,
) -> dict[str, Any]:
    """Train a student as ``config`` says and write the run directory ``run_dir``.

    Args:
        config: the run's :class:`TrainConfig`. ``None`` with ``resume=True`` reads
            ``run_dir/config.json``.
        run_dir: the run directory (created). A directory that already holds a run needs
            ``resume=True``.
        resume: continue from ``checkpoints/last.pt`` (model, optimizer, scheduler, balancer,
            RNG states, loader epoch, best metric). On CPU the final weights are bit-identical
            to those of an uninterrupted run. The config must equal the saved one except for
            ``device``, ``log_every``, ``data_dir``, ``download``, ``tensorboard``. Without a
            ``last.pt`` the run starts from scratch.
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
            _bad("config", None, "a TrainConfig (None is only allowed with `resume=True`)")
        config = TrainConfig.load(run_dir / "config.json")
    if not isinstance(config, TrainConfig):
        _bad("config", config, "a TrainConfig")
    config.validate()
    if stop_after_epochs is not None:
        _check_int("stop_after_epochs", stop_after_epochs, minimum=0)

    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        with distributed_session(config.device):
            trainer = _Trainer(config, run_dir, progress=progress, train_data=train_data)
            return trainer.run(resume=resume, stop_after_epochs=stop_after_epochs)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        torch.backends.cudnn.benchmark = previous_benchmark


class _Trainer:
    """The state of one training run (one per :func:`train` call)."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        *,
        progress: bool,
        train_data: _data.ImageData | None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.ddp = _dist_info()
        self.progress = progress and self.ddp.main
        self.device = resolve_device(config.device, _local_rank(self.ddp))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.info = _data.DATASETS[config.dataset]
        self.spec = _methods.METHODS[config.method]
        self.paths = {
            "config": run_dir / "config.json",
            "last": run_dir / "checkpoints" / "last.pt",
            "best": run_dir / "checkpoints" / "best.pt",
            "final": run_dir / "final.pt",
            "steps_log": run_dir / "logs" / "steps.csv",
            "epochs_log": run_dir / "logs" / "epochs.csv",
            "metrics": run_dir / "metrics.json",
        }
        if config.batch_size % self.ddp.world_size:
            _bad(
                "batch_size",
                config.batch_size,
                f"divisible by the world size {self.ddp.world_size} (it is the global batch)",
            )
        if self.ddp.enabled and config.sync_bn and self.device.type != "cuda":
            _bad("sync_bn", True, "False on CPU devices (torch's SyncBatchNorm needs CUDA)")

        # Data: validation split first (independent of train_subset), then the subset.
        train_set, val_set = _prepare_data(
            config, train_data, progress and self.ddp.main, ddp=self.ddp
        )
        self.loader = _data.BatchLoader(
            train_set,
            config.batch_size // self.ddp.world_size,
            shuffle=True,
            augment=config.resolved_augment(),
            device=self.device,
            seed=config.seed,
            rank=self.ddp.rank,
            world_size=self.ddp.world_size,
        )
        self.val_loader = None
        if val_set is not None:
            val_batch = config.val_batch_size or config.batch_size
            self.val_loader = _data.BatchLoader(
                val_set,
                max(1, val_batch // self.ddp.world_size),
                device=self.device,
                rank=self.ddp.rank,
                world_size=self.ddp.world_size,
                pad_to_even=False,
            )

        # Student: same initialisation on every rank, then a per-rank random stream.
        torch.manual_seed(config.seed)
        self.memory_format = resolve_memory_format(config.memory_format, self.device)
        self.student = _models.build_model(
            config.student,
            num_classes=self.info.num_classes,
            in_channels=self.info.channels,
            **config.student_kwargs,
        ).to(self.device, memory_format=self.memory_format)
        if self.ddp.enabled and config.sync_bn:
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.model: nn.Module = self.student
        if self.ddp.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        torch.manual_seed((config.seed + 1) * 1_000_003 + self.ddp.rank)

        teachers = {}
        for role in ("clean", "adv"):
            path = getattr(config, f"{role}_teacher")
            teachers[role] = (
                None
                if path is None
                else load_teacher_model(
                    path,
                    arch=getattr(config, f"{role}_teacher_arch"),
                    num_classes=self.info.num_classes,
                    in_channels=self.info.channels,
                    model_kwargs=getattr(config, f"{role}_teacher_kwargs"),
                    device=self.device,
                    fold_bn=config.fold_bn,
                    image_size=self.info.image_size,
                ).to(memory_format=self.memory_format)
            )
        eps, step_size, attack_steps = config.resolved_attack()
        self.eps = eps
        self.ctx = _methods.MethodContext(
            student=torch.compile(self.model) if config.compile else self.model,
            clean_teacher=teachers["clean"],
            adv_teacher=teachers["adv"],
            eps=eps,
            step_size=step_size,
            attack_steps=attack_steps,
            num_classes=self.info.num_classes,
            hyper=self.spec.resolve_hyper(config.hyper),
            # The eval-mode attacks run on the plain student's folded function: no DDP
            # wrapper (no parameter gradients there), no compiled graph to bypass.
            eval_attack_model=(
                FoldedEvalView(self.student)
                if config.fold_attack_bn and not config.compile
                else None
            ),
        )
        self.weighting = _methods.build_weighting(
            self.spec, hyper=config.hyper, weight_lr=config.weight_lr, beta=config.beta
        )
        self.adaptive = isinstance(self.weighting, AdaptiveLossBalancer)
        self.names = list(self.weighting.names)
        self.optimizer = torch.optim.SGD(
            self.student.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        self.milestones = milestone_epochs(config)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=self.milestones, gamma=config.lr_gamma
        )
        self.start_epoch = 0
        self.global_step = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.time_s = 0.0

    # -- run ----------------------------------------------------------------------------------
    def run(self, *, resume: bool, stop_after_epochs: int | None) -> dict[str, Any]:
        config, paths = self.config, self.paths
        resumed = False
        has_last = paths["last"].exists()
        seen = self.ddp.gather_objects(has_last)
        if len(set(seen)) > 1:
            raise ValueError(
                f"The ranks disagree on whether {paths['last']} exists (rank k sees {seen}[k]): "
                "under torch.distributed the run directory must be on a file system that "
                "every rank shares."
            )
        if resume and has_last:
            self._load_last()
            resumed = True
        elif not resume and has_last:
            raise ValueError(
                f"The run directory {str(self.run_dir)!r} already holds a run "
                f"({paths['last']}). Pass `resume=True` (--resume) or choose another directory."
            )
        elif resume:
            warnings.warn(
                f"No {paths['last']} to resume from: starting from scratch.", stacklevel=3
            )

        self.steps_log = self.epochs_log = self.writer = None
        if self.ddp.main:
            for sub in ("checkpoints", "logs"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            if not resumed:
                config.save(paths["config"])
            keep = self.start_epoch if resumed else 0
            if not resumed:  # a fresh run starts fresh logs
                for key in ("steps_log", "epochs_log"):
                    paths[key].unlink(missing_ok=True)
            self.steps_log = _CsvLog(paths["steps_log"], self._step_columns(), keep_epochs=keep)
            self.epochs_log = _CsvLog(paths["epochs_log"], self._epoch_columns(), keep_epochs=keep)
            if config.tensorboard:
                self.writer = _summary_writer(self.run_dir / "logs" / "tensorboard")
        self.ddp.barrier()

        last_row: dict[str, Any] | None = None
        try:
            end = config.epochs
            if stop_after_epochs is not None:
                end = min(end, max(stop_after_epochs, self.start_epoch))
            for epoch in range(self.start_epoch, end):
                last_row = self._train_epoch(epoch)
            finished = end == config.epochs
            if last_row is None and self.ddp.main:
                last_row = _last_row(self.paths["epochs_log"])
            return self._finish(finished, last_row)
        finally:
            for log in (self.steps_log, self.epochs_log):
                if log is not None:
                    log.close()
            if self.writer is not None:
                self.writer.close()

    def _step_columns(self) -> list[str]:
        n = self.names
        return (
            ["epoch", "step", "lr"]
            + [f"loss_{k}" for k in n]
            + ["total"]
            + [f"w_{k}" for k in n]
            + [f"rel_{k}" for k in n]
        )

    def _epoch_columns(self) -> list[str]:
        n = self.names
        return (
            ["epoch"]
            + [f"loss_{k}" for k in n]
            + ["total"]
            + [f"w_{k}" for k in n]
            + [f"rel_{k}" for k in n]
            + ["val_clean", "val_robust", "val_wrobust", "lr", "weight_lr", "skipped", "time_s"]
        )

    # -- one epoch ----------------------------------------------------------------------------
    def _log_row(self, losses: Mapping[str, torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        """Detached losses, total, weights, relative losses as one float64 device tensor."""
        device = total.device
        n = len(self.names)
        values = torch.stack([losses[k].detach().reshape(()) for k in self.names]).double()
        return torch.cat(
            [
                values,
                total.detach().reshape(1).double(),
                _row_tensor(self.weighting.weights, n, device),
                _row_tensor(getattr(self.weighting, "relative_losses", None), n, device),
            ]
        )

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        config = self.config
        start = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        weight_lr = float(self.weighting.weight_lr) if self.adaptive else float("nan")
        self.loader.set_epoch(epoch)
        self.model.train()
        num_steps = len(self.loader)
        sums = np.zeros(3 * len(self.names) + 1)
        count = 0
        pending: list[torch.Tensor] = []
        first_step = epoch_first = self.global_step + 1
        bar = _tqdm(num_steps, f"epoch {epoch + 1}/{config.epochs}", self.progress)

        def flush() -> None:
            nonlocal sums, count, first_step
            block = torch.stack(pending)
            if self.ddp.enabled:  # mean over ranks; a NaN anywhere reaches every rank
                block = self.ddp.sum_(block) / self.ddp.world_size
            host = block.cpu().numpy()  # the one host-device synchronisation per flush
            steps = np.arange(first_step, first_step + len(host))
            rows = [
                [epoch + 1, int(s), lr, *map(float, r)] for s, r in zip(steps, host, strict=True)
            ]
            if self.steps_log is not None:
                self.steps_log.write(rows)
            total_col = len(self.names)
            bad = ~np.isfinite(host[:, total_col])
            if bad.any():
                i = int(np.argmax(bad))
                detail = ", ".join(
                    f"{k}={float(host[i, j])!r}" for j, k in enumerate([*self.names, "total"])
                )
                bar.close()
                raise NonFiniteLossError(
                    f"Non-finite training loss at epoch {epoch + 1}, step {int(steps[i])} "
                    f"(step {int(steps[i]) - epoch_first + 1} of {num_steps} in the "
                    f"epoch): {detail}. The run stopped; the last good checkpoint "
                    f"{self.paths['last']} (epoch {epoch}) was left untouched."
                )
            sums += host.sum(axis=0)
            count += len(host)
            if self.writer is not None:
                for s, r in zip(steps, host, strict=True):
                    for j, name in enumerate(self._step_columns()[3:]):
                        self.writer.add_scalar(f"step/{name}", r[j], int(s))
            means = host.mean(axis=0)
            bar.update(len(host))
            bar.set_postfix(
                {
                    **{k: f"{means[j]:.4g}" for j, k in enumerate(self.names)},
                    **{
                        f"w_{k}": f"{means[j + len(self.names) + 1]:.3f}"
                        for j, k in enumerate(self.names)
                    },
                },
                refresh=False,
            )
            pending.clear()
            first_step += len(host)

        for x, y in self.loader:
            x = x.contiguous(memory_format=self.memory_format)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.amp):
                losses = self.spec.loss_fn(self.ctx, x, y)
            total = self.weighting.step(losses)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            pending.append(self._log_row(losses, total))
            self.global_step += 1
            if len(pending) >= config.log_every:
                flush()
        if pending:
            flush()
        bar.close()
        # Under DDP each rank's BatchNorm statistics took their own last update: make every
        # replica rank 0's again before it is validated and saved.
        _broadcast_buffers(self.student, self.ddp)

        val = {"clean": float("nan"), "robust": float("nan"), "wrobust": float("nan")}
        if self.val_loader is not None:
            val = validate(
                self.student,
                self.val_loader,
                eps=self.eps,
                steps=config.val_attack_steps,
                attack=config.val_attack,
                ddp=self.ddp,
            )

        # End of epoch: schedule, then checkpoints (nothing reaches here after a NaN loss).
        self.scheduler.step()
        completed = epoch + 1
        if self.adaptive:
            decays = self.milestones.count(completed)
            if decays:
                self.weighting.weight_lr = self.weighting.weight_lr * config.lr_gamma**decays
        skipped = int(getattr(self.weighting, "num_skipped", 0))
        self.time_s += time.perf_counter() - start
        means = sums / max(count, 1)
        row = {
            "epoch": completed,
            **{c: float(v) for c, v in zip(self._step_columns()[3:], means, strict=True)},
            "val_clean": val["clean"],
            "val_robust": val["robust"],
            "val_wrobust": val["wrobust"],
            "lr": lr,
            "weight_lr": weight_lr,
            "skipped": skipped,
            "time_s": time.perf_counter() - start,
        }
        improved = False
        if self.val_loader is not None:
            if self.best_metric is None or val["wrobust"] > self.best_metric:
                self.best_metric, self.best_epoch, improved = val["wrobust"], completed, True
        else:  # no validation: "best" is the latest epoch
            self.best_epoch, improved = completed, True

        rng = self.ddp.gather_objects(_rng_state(self.device))
        if self.ddp.main:
            # The log row first: a run killed before last.pt is replaced re-runs this epoch and
            # resume drops the rows of epochs after the checkpoint.
            self.epochs_log.write([[row[c] for c in self._epoch_columns()]])
            if improved:
                self._save_model(self.paths["best"], completed, row)
            self._save_last(completed, rng)
            if self.writer is not None:
                for c in self._epoch_columns()[1:]:
                    self.writer.add_scalar(f"epoch/{c}", row[c], completed)
                self.writer.flush()
        if self.progress:
            _tqdm_write(
                f"epoch {completed}/{config.epochs}: total {row['total']:.4f}, "
                f"val clean {val['clean']:.4f}, robust {val['robust']:.4f}, "
                f"W-Robust {val['wrobust']:.4f}, lr {lr:.4g}, {row['time_s']:.1f}s"
            )
        self.ddp.barrier()
        return row

    # -- checkpoints --------------------------------------------------------------------------
    def _save_model(self, path: Path, epoch: int, row: Mapping[str, Any]) -> None:
        _checkpoints.save_model_checkpoint(
            path,
            self.student,
            arch=self.config.student,
            num_classes=self.info.num_classes,
            in_channels=self.info.channels,
            model_kwargs=dict(self.config.student_kwargs) or None,
            extra={
                "epoch": epoch,
                "method": self.config.method,
                "dataset": self.config.dataset,
                "selection": "val_wrobust" if self.val_loader is not None else "last",
                "val_clean": float(row["val_clean"]),
                "val_robust": float(row["val_robust"]),
                "val_wrobust": float(row["val_wrobust"]),
            },
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
            "weight_lr": float(self.weighting.weight_lr) if self.adaptive else None,
            "rng": rng,
            "world_size": self.ddp.world_size,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "time_s": self.time_s,
            "config": self.config.to_dict(),
        }
        _checkpoints.atomic_save(state, self.paths["last"])

    def _load_last(self) -> None:
        state = _checkpoints.safe_load(self.paths["last"], map_location="cpu")
        if not isinstance(state, dict) or state.get("format") != RUN_CHECKPOINT_FORMAT:
            raise ValueError(
                f"Cannot resume: {self.paths['last']} is not a training checkpoint "
                f"(format {state.get('format') if isinstance(state, dict) else None!r})."
            )
        differences = _config_differences(TrainConfig.from_dict(state["config"]), self.config)
        if differences:
            raise ValueError(
                "Cannot resume with a different configuration: " + "; ".join(differences) + "."
            )
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weighting.load_state_dict(state["weighting"])
        if self.adaptive and state["weight_lr"] is not None:
            self.weighting.weight_lr = state["weight_lr"]
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.time_s = float(state.get("time_s", 0.0))
        rng = state["rng"]
        if len(rng) == self.ddp.world_size:
            _set_rng_state(rng[self.ddp.rank], self.device)
        else:
            warnings.warn(
                f"Resuming with {self.ddp.world_size} ranks from a checkpoint of {len(rng)}: "
                "the random streams are reseeded, so the run is not bit-identical.",
                stacklevel=3,
            )
            torch.manual_seed((self.config.seed + 1) * 1_000_003 + self.ddp.rank + self.start_epoch)

    def _finish(self, finished: bool, last_row: dict[str, Any] | None) -> dict[str, Any]:
        completed = self.start_epoch
        if last_row is not None:
            completed = max(completed, int(last_row["epoch"]))
        paths = dict(self.paths)
        if not finished:
            paths.pop("final")
        if self.ddp.main and finished:
            self._save_model(
                self.paths["final"],
                completed,
                last_row
                or {
                    "val_clean": float("nan"),
                    "val_robust": float("nan"),
                    "val_wrobust": float("nan"),
                },
            )
        best = None
        if self.best_epoch is not None:
            best = {"epoch": self.best_epoch, "val_wrobust": self.best_metric}
        result = {
            "run_dir": str(self.run_dir),
            "method": self.config.method,
            "dataset": self.config.dataset,
            "student": self.config.student,
            "epochs_completed": completed,
            "finished": finished,
            "final": last_row,
            "best": best,
            "num_steps": self.global_step,
            "num_skipped": int(getattr(self.weighting, "num_skipped", 0)),
            "time_s": self.time_s,
            "paths": {k: str(v) for k, v in paths.items()},
        }
        result = _json_clean(result)
        if self.ddp.main:
            tmp = self.paths["metrics"].with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.paths["metrics"])
        self.ddp.barrier()
        return result


def _json_clean(value: Any) -> Any:
    """Replace non-finite floats by None so that the result is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _parse_float(text: str) -> float:
    """A float, also written as a fraction such as ``8/255``."""
    if "/" in text:
        num, _, den = text.partition("/")
        return float(num) / float(den)
    return float(text)


def _optional(parse):
    def parser(text: str):
        return None if text.lower() in ("none", "null", "") else parse(text)

    parser.__name__ = getattr(parse, "__name__", "value")
    return parser


def _json_dict(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {text!r}")
    return value


_FIELD_PARSERS = {
    "str": str,
    "str | None": _optional(str),
    "int": int,
    "int | None": _optional(int),
    "float": _parse_float,
    "float | None": _optional(_parse_float),
    "dict[str, Any]": _json_dict,
}


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:.6g}" for v in value)
    return "None" if value is None else str(value)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand: every :class:`TrainConfig` field is a flag.

    Precedence: the defaults, then ``RUN_DIR/config.json`` when resuming, then ``--config``
    (a JSON file of fields), then the flags given on the command line.
    """
    parser = subparsers.add_parser(
        "train",
        help="train a student (MTARD or a baseline) and write a run directory",
        description=(
            "Train a student and write a run directory (config.json, checkpoints/last.pt and "
            "best.pt, final.pt, logs/steps.csv and epochs.csv, metrics.json). Every "
            "TrainConfig field is a flag. Precedence: the defaults, then RUN_DIR/config.json "
            "when resuming, then --config, then the flags given."
        ),
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    parser.add_argument(
        "--config", dest="config_file", metavar="JSON", help="JSON file of TrainConfig fields"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        metavar="N",
        help="stop (resumably) once this many epochs are complete",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING:
            help_text += f" (default: {_default_text(f.default)})"
        elif f.default_factory is not dataclasses.MISSING:
            help_text += f" (default: {json.dumps(f.default_factory())})"
        else:
            help_text += " (required unless given by --config or a resumed run)"
        kwargs: dict[str, Any] = {
            "dest": f"cfg_{f.name}",
            "default": argparse.SUPPRESS,
            "help": help_text,
        }
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type == "tuple[float, ...]":
            kwargs.update(type=_parse_float, nargs="*", metavar="FRACTION")
        else:
            kwargs.update(type=_FIELD_PARSERS[f.type], metavar=f.name.upper())
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(func=run_train_cli)


def run_train_cli(args: argparse.Namespace) -> int:
    """Run the ``train`` subcommand from parsed arguments; returns the exit status."""
    run_dir = Path(args.out)
    values: dict[str, Any] = {}
    if args.resume and (run_dir / "config.json").exists():
        values.update(json.loads((run_dir / "config.json").read_text()))
    if args.config_file:
        values.update(json.loads(Path(args.config_file).read_text()))
    for f in dataclasses.fields(TrainConfig):
        if hasattr(args, f"cfg_{f.name}"):
            values[f.name] = getattr(args, f"cfg_{f.name}")
    try:
        config = TrainConfig.from_dict(values)
    except ValueError as exc:
        print(f"anl-mtard train: error: {exc}", file=sys.stderr)
        return 2
    result = train(
        config,
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        stop_after_epochs=args.stop_after_epochs,
    )
    if _is_main_process():
        final = result["final"] or {}
        print(
            f"{result['method']} on {result['dataset']}: {result['epochs_completed']} epochs, "
            f"val clean {final.get('val_clean')}, robust {final.get('val_robust')}, "
            f"W-Robust {final.get('val_wrobust')}; best epoch {(result['best'] or {}).get('epoch')}"
            f"; run directory {result['run_dir']}"
        )
    return 0
