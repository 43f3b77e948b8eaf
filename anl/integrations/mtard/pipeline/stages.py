"""Bookkeeping of a reproduction's results directory: where each run lives, and the wall time
and status of each stage (``<out>/stages.json``) and invocation (``<out>/invocations.json``).

Results directory::

    <out>/config.json                        the resolved profile
    <out>/stages.json                        wall time of each stage that did work
    <out>/invocations.json                   start, command, jobs, wall time of each invocation
    <out>/teachers/{clean,adv}/              teacher run directories (when trained here)
    <out>/runs/<student>/<method>/seed<k>/   student run directories (training.trainer.train)
    <out>/eval/*.json, *.md                  one evaluation per teacher and per run
    <out>/white_box.md, black_box.md, ablation.md, teachers.md, results.json, summary.md
    <out>/figures/*.png, *.svg
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_write_text
from ..runtime.optional import progress_bar
from .executor import Task, run_tasks

# The pipeline's logger (``anl-mtard reproduce`` sets its level): stage starts and ends.
logger = logging.getLogger("anl.integrations.mtard.pipeline")


def run_dir(out: Path, student: str, method: str, seed: int) -> Path:
    """The run directory of a student run in the results directory ``out``."""
    return out / "runs" / student / method / f"seed{seed}"


def checkpoint_path(run: Path, which: str) -> Path:
    """``best.pt`` (validation W-Robust) or ``final.pt`` of a training run directory."""
    return run / "checkpoints" / "best.pt" if which == "best" else run / "final.pt"


@dataclasses.dataclass
class Stages:
    """Wall time and status of each stage, for this invocation and across resumed ones.

    Stages that did work are recorded in ``<out>/stages.json`` as soon as they end, so that a
    resumed reproduction can report how long its skipped stages took when they ran. Each
    invocation of the pipeline is a row of ``<out>/invocations.json`` (start, command, jobs,
    wall time so far, rewritten as each stage ends and every ``heartbeat_s`` seconds between),
    so that a reproduction done in several invocations (``--resume`` after a kill) can state
    its whole wall time, give or take one heartbeat per killed invocation.
    """

    path: Path
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    history: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    main: bool = True  # rank 0 (or a lone process): the one that logs and writes the file
    invocations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    heartbeat_s: float = 60.0
    _start: float = dataclasses.field(default_factory=time.perf_counter)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.main and self.path.exists():
            with contextlib.suppress(json.JSONDecodeError):
                self.history = json.loads(self.path.read_text())
        invocations = self.path.with_name("invocations.json")
        if self.main and invocations.exists():
            with contextlib.suppress(json.JSONDecodeError):
                self.invocations = json.loads(invocations.read_text())

    @contextlib.contextmanager
    def invocation(self, started: str, command: str, jobs: int) -> Iterator[None]:
        """Record this invocation in ``invocations.json`` while the block runs."""
        self._start = time.perf_counter()
        self.invocations.append(
            {"started": started, "command": command, "jobs": jobs, "wall_s": 0.0}
        )
        self.save_invocation()
        self._stop.clear()
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        if self.main:
            beat.start()
        try:
            yield
        finally:
            self._stop.set()
            if beat.is_alive():
                beat.join()
            self.save_invocation()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.save_invocation()

    def save_invocation(self) -> None:
        """Write this invocation's wall time so far to ``invocations.json`` (rank 0)."""
        if not (self.main and self.invocations):
            return
        with self._lock:
            self.invocations[-1]["wall_s"] = time.perf_counter() - self._start
            atomic_write_text(
                self.path.with_name("invocations.json"),
                json.dumps(self.invocations, indent=2) + "\n",
            )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time the block as the stage ``name``; its row's ``status`` may be set inside."""
        self.start(name)
        row: dict[str, Any] = {"stage": name, "status": "ran"}
        start = time.perf_counter()
        try:
            yield row
        finally:
            row["wall_s"] = time.perf_counter() - start
            self._end(row)

    def start(self, name: str) -> None:
        """Log that the stage ``name`` starts (rank 0)."""
        if self.main:
            logger.info("stage %s: start", name)

    def record(self, name: str, status: str, wall_s: float) -> None:
        """Record a stage that ran as a task (:func:`~.executor.run_tasks`)."""
        self._end({"stage": name, "status": status, "wall_s": wall_s})

    def _end(self, row: dict[str, Any]) -> None:
        name = row["stage"]
        if row["status"].startswith("skipped"):
            if name in self.history:
                row["earlier_s"] = self.history[name]["wall_s"]
        else:
            self.history[name] = {"status": row["status"], "wall_s": row["wall_s"]}
            if self.main:
                atomic_write_text(self.path, json.dumps(self.history, indent=2) + "\n")
        self.save_invocation()
        self.rows.append(row)
        if self.main:
            logger.info("stage %s: %s in %.1f s", name, row["status"], row["wall_s"])


def run_recorded(
    tasks: Sequence[Task],
    stages: Stages,
    *,
    jobs: int,
    threads: int | None,
    desc: str,
    progress: bool,
) -> dict[str, Any]:
    """Run the task graph with :func:`~.executor.run_tasks` (``jobs`` workers of ``threads``
    threads, 1 by default), each task recorded in ``stages`` as it starts and ends, under one
    progress bar named ``desc``; returns each task's result by name."""
    bar = progress_bar(total=len(tasks), desc=desc, enabled=progress, leave=True)
    try:
        return run_tasks(
            tasks,
            jobs=jobs,
            threads=threads or 1,
            record=stages.record,
            on_start=stages.start,
            bar=bar,
        )
    finally:
        bar.close()
