"""Independent pieces of a reproduction run side by side in worker processes (``--jobs N``).

A reproduction is a graph of tasks: each teacher trained here, each student run (after the
teachers its method distils from), the transfer examples (after the adversarial teacher) and
each evaluation (after its model and the transfer examples). :func:`run_tasks` keeps ``jobs``
spawned worker processes busy with the tasks whose prerequisites are done, so that on a
machine with several cores (or GPUs) the work of a profile is limited by the longest chain of
tasks rather than by their sum.

A task is a module-level function and picklable arguments; it returns ``(result, status)``.
Workers run with a fixed number of torch threads, and a task must not depend on the process
that runs it: the training runs seed themselves from their configuration and the attacks seed
per test point, so the results equal those of one process running the tasks in turn with the
same number of threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import data as _data

__all__ = ["DataSource", "Task", "default_worker_threads", "run_tasks"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A data split that a worker loads itself (once per process) instead of receiving it.

    ``load()`` is :func:`data.load_dataset` without a download: the main process has fetched
    the files before any worker starts.
    """

    dataset: str
    split: str
    data_dir: str | None = None

    def load(self) -> _data.ImageData:
        return _load_cached(self)


@functools.lru_cache(maxsize=4)
def _load_cached(source: DataSource) -> _data.ImageData:
    return _data.load_dataset(
        source.dataset, source.split, data_dir=source.data_dir, download=False, progress=False
    )


@dataclasses.dataclass(frozen=True)
class Task:
    """A piece of work: ``fn(*args) -> (result, status)``, once the tasks ``after`` are done.

    ``name`` is the stage name recorded in ``stages.json`` (``"train/small_cnn/mtard/seed0"``);
    ``fn`` must be a module-level function so that a spawned worker can import it.
    """

    name: str
    fn: Callable[..., tuple[Any, str]]
    args: tuple[Any, ...] = ()
    after: tuple[str, ...] = ()


def default_worker_threads(jobs: int) -> int:
    """Torch threads per worker when none are given: the CPU cores shared out, at least 1."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """End this worker once the main process is gone (killed by a signal it could not catch):
    an orphaned worker would go on training into the run directory that a ``--resume`` is
    about to continue. Checkpoints are written atomically, so stopping at any point is safe."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _run_in_worker(fn: Callable[..., tuple[Any, str]], args: tuple[Any, ...]) -> tuple:
    start = time.perf_counter()
    result, status = fn(*args)
    return result, status, time.perf_counter() - start


def _check_graph(tasks: Sequence[Task]) -> None:
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"Parameter `tasks` should have distinct names. Found `{names}`.")
    for position, task in enumerate(tasks):
        earlier = set(names[:position])
        missing = [a for a in task.after if a not in earlier]
        if missing:
            raise ValueError(
                f"Task {task.name!r} waits for {missing}, which are not earlier tasks: the "
                "tasks must be listed in an order that runs (prerequisites first)."
            )


def run_tasks(
    tasks: Sequence[Task],
    *,
    jobs: int,
    threads: int,
    record: Callable[[str, str, float], None],
    on_start: Callable[[str], None] = lambda name: None,
    bar: Any = None,
) -> dict[str, Any]:
    """Run ``tasks`` in ``jobs`` spawned processes (``torch.set_num_threads(threads)`` each).

    Each task starts as soon as every task of its ``after`` is done, in the listed order among
    those ready. ``record(name, status, wall_s)`` is called in this process as each task ends
    (its ``wall_s`` measured in the worker), ``on_start(name)`` as it is handed to a worker;
    ``bar`` (a tqdm bar, optional) advances by one per task and shows the running ones.
    The first task that raises stops the run: it is logged at once, no further task starts,
    the running ones are waited for, and the error is raised again, naming the task.
    Interrupted training runs continue from their last checkpoint on a resume.

    Returns:
        ``{name: result}`` for every task.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"Parameter `jobs` should be an integer >= 1. Found `jobs = {jobs!r}`.")
    _check_graph(tasks)
    results: dict[str, Any] = {}
    pending = list(tasks)
    running: dict[concurrent.futures.Future, Task] = {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=context,
        initializer=_init_worker,
        initargs=(threads, os.getpid()),
    ) as pool:
        try:
            while pending or running:
                ready = [t for t in pending if all(a in results for a in t.after)]
                for task in ready[: jobs - len(running)]:
                    pending.remove(task)
                    on_start(task.name)
                    running[pool.submit(_run_in_worker, task.fn, task.args)] = task
                if bar is not None:
                    bar.set_postfix_str(", ".join(t.name for t in running.values()))
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    task = running.pop(future)
                    try:
                        result, status, wall_s = future.result()
                    except Exception as exc:
                        # Said now: the running tasks may take long to end (see below).
                        logger.error(
                            "task %s failed (%s); waiting for the running tasks to end: %s",
                            task.name,
                            exc,
                            ", ".join(t.name for t in running.values()) or "none",
                        )
                        raise RuntimeError(f"The task {task.name!r} failed: {exc}") from exc
                    results[task.name] = result
                    record(task.name, status, wall_s)
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
