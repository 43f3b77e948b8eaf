"""The one executor of a reproduction: a graph of tasks, run in turn or side by side.

A reproduction is a graph of tasks (:mod:`.plan`): each teacher trained here, each student run
(after the teachers its method distils from), the transfer examples (after the adversarial
teacher) and each evaluation (after its model and the transfer examples). :func:`run_tasks`
runs it:

- with ``jobs=1``, in this process, in the listed order (prerequisites first). Under
  ``torchrun`` every rank runs the same list in the same order, so each task is collective:
  a training run is data-parallel, an evaluation sums its counts over ranks;
- with ``jobs > 1``, in ``jobs`` spawned worker processes kept busy with the tasks whose
  prerequisites are done, so that on a machine with several cores (or GPUs) the work of a
  profile is limited by the longest chain of tasks rather than by their sum.

A task is a module-level function and picklable arguments; it returns ``(result, status)``.
Workers run with a fixed number of torch threads, and a task must not depend on the process
that runs it: the training runs seed themselves from their configuration and the attacks seed
per test point, so the results equal those of one process running the tasks in turn with the
same number of threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..checks import check_int

logger = logging.getLogger(__name__)


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


def _run_timed(fn: Callable[..., tuple[Any, str]], args: tuple[Any, ...]) -> tuple:
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
    """Run ``tasks``: in this process in turn (``jobs=1``), or in ``jobs`` spawned processes
    (``torch.set_num_threads(threads)`` each) as soon as their prerequisites are done.

    ``record(name, status, wall_s)`` is called in this process as each task ends,
    ``on_start(name)`` as it starts (or is handed to a worker); ``bar`` (a progress bar,
    optional) advances by one per task and shows the running ones. The first task that raises
    stops the run: no further task starts, the running ones are waited for, and the error is
    raised again (naming the task when it ran in a worker). Interrupted training runs continue
    from their last checkpoint on a resume.

    Returns:
        ``{name: result}`` for every task.
    """
    check_int("jobs", jobs, minimum=1)
    _check_graph(tasks)
    if jobs == 1:
        return _run_in_turn(tasks, record=record, on_start=on_start, bar=bar)
    return _run_in_workers(
        tasks, jobs=jobs, threads=threads, record=record, on_start=on_start, bar=bar
    )


def _run_in_turn(
    tasks: Sequence[Task],
    *,
    record: Callable[[str, str, float], None],
    on_start: Callable[[str], None],
    bar: Any,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for task in tasks:
        on_start(task.name)
        if bar is not None:
            bar.set_postfix_str(task.name)
        try:
            results[task.name], status, wall_s = _run_timed(task.fn, task.args)
        except Exception as exc:
            logger.error("task %s failed (%s)", task.name, exc)
            raise
        record(task.name, status, wall_s)
        if bar is not None:
            bar.update(1)
    return results


def _run_in_workers(
    tasks: Sequence[Task],
    *,
    jobs: int,
    threads: int,
    record: Callable[[str, str, float], None],
    on_start: Callable[[str], None],
    bar: Any,
) -> dict[str, Any]:
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
                    running[pool.submit(_run_timed, task.fn, task.args)] = task
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
