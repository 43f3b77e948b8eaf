"""``pipeline.executor.run_tasks``: tasks in turn in this process, or in spawned worker
processes, each after its prerequisites.

The task functions live in this module, which a spawned worker imports by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anl.integrations.mtard.pipeline.executor import Task, default_worker_threads, run_tasks


def write_stamp(path: str, needs: list[str]) -> tuple[dict, str]:
    """Write ``path`` with this process's pid and clock, after checking ``needs`` exist."""
    missing = [n for n in needs if not Path(n).exists()]
    if missing:
        raise AssertionError(f"ran before its prerequisites: {missing}")
    stamp = {"pid": os.getpid(), "start": time.time(), "threads": torch.get_num_threads()}
    time.sleep(0.2)
    stamp["end"] = time.time()
    Path(path).write_text(json.dumps(stamp))
    return stamp, "ran"


def rendezvous(mine: str, other: str) -> tuple[dict, str]:
    """Write ``mine``, then wait (up to 2 minutes) for another task to write ``other``: two
    such tasks end only if they run at the same time, in different processes."""
    Path(mine).write_text(str(os.getpid()))
    deadline = time.time() + 120
    while not Path(other).exists():
        if time.time() > deadline:
            raise AssertionError(f"{other} never appeared: the tasks did not run side by side")
        time.sleep(0.01)
    return {"pid": os.getpid(), "end": time.time(), "threads": torch.get_num_threads()}, "ran"


def sleep_forever(pid_file: str) -> tuple[None, str]:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(300)
    return None, "ran"


def fail(message: str) -> tuple[None, str]:
    raise ValueError(message)


def test_tasks_run_after_their_prerequisites_in_several_processes(tmp_path):
    paths = {name: str(tmp_path / name) for name in ("a", "b", "c", "d")}
    tasks = [
        Task("a", rendezvous, (paths["a"], paths["b"])),
        Task("b", rendezvous, (paths["b"], paths["a"])),
        Task("c", write_stamp, (paths["c"], [paths["a"]]), after=("a",)),
        Task("d", write_stamp, (paths["d"], [paths["b"], paths["c"]]), after=("b", "c")),
    ]
    recorded = []
    started = []
    results = run_tasks(
        tasks,
        jobs=2,
        threads=1,
        record=lambda *row: recorded.append(row),
        on_start=started.append,
    )
    assert set(results) == {"a", "b", "c", "d"}
    assert {r["threads"] for r in results.values()} == {1}
    # a and b met (side by side, two worker processes); c waited for a, d for b and c.
    assert len({results["a"]["pid"], results["b"]["pid"]} - {os.getpid()}) == 2
    assert results["c"]["start"] >= results["a"]["end"]
    assert results["d"]["start"] >= max(results["b"]["end"], results["c"]["end"])
    assert started[:2] == ["a", "b"] and sorted(started) == ["a", "b", "c", "d"]
    assert sorted(name for name, _, _ in recorded) == ["a", "b", "c", "d"]
    assert all(status == "ran" for _, status, _ in recorded)
    assert all(wall_s >= 0.2 for name, _, wall_s in recorded if name in "cd")


def test_a_failing_task_stops_the_run_and_is_named(tmp_path, caplog):
    later = tmp_path / "later"
    tasks = [
        Task("broken", fail, ("bad input",)),
        Task("later", write_stamp, (str(later), []), after=("broken",)),
    ]
    with pytest.raises(RuntimeError, match="'broken' failed: bad input"):
        run_tasks(tasks, jobs=2, threads=1, record=lambda *row: None)
    assert not later.exists()
    assert "task broken failed (bad input)" in caplog.text


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_workers_end_when_the_main_process_is_killed(tmp_path):
    """A main process killed by SIGKILL leaves no worker training on (a resume would then
    share its run directory with an orphan)."""
    pid_file = tmp_path / "worker.pid"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import test_executor\n"
        "from anl.integrations.mtard.pipeline.executor import Task, run_tasks\n"
        "if __name__ == '__main__':\n"
        "    task = Task('sleep', test_executor.sleep_forever, (sys.argv[2],))\n"
        "    run_tasks([task], jobs=2, threads=1, record=lambda *row: None)\n"
    )
    main = subprocess.Popen(
        [sys.executable, "-c", script, str(Path(__file__).parent), str(pid_file)]
    )
    try:
        deadline = time.time() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline and main.poll() is None, "the worker never started"
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        assert _alive(worker)
    finally:
        main.send_signal(signal.SIGKILL)
        main.wait()
    deadline = time.time() + 30
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the worker outlived the main process"


def test_one_job_runs_the_tasks_in_turn_in_this_process(tmp_path):
    paths = {name: str(tmp_path / name) for name in ("a", "b", "c")}
    tasks = [
        Task("a", write_stamp, (paths["a"], [])),
        Task("b", write_stamp, (paths["b"], [paths["a"]])),
        Task("c", write_stamp, (paths["c"], [paths["a"], paths["b"]]), after=("a",)),
    ]
    recorded, started = [], []
    results = run_tasks(
        tasks, jobs=1, threads=1, record=lambda *row: recorded.append(row), on_start=started.append
    )
    assert {r["pid"] for r in results.values()} == {os.getpid()}
    assert started == [name for name, _, _ in recorded] == ["a", "b", "c"]
    assert (
        results["a"]["end"] <= results["b"]["start"] <= results["b"]["end"] <= results["c"]["start"]
    )
    with pytest.raises(ValueError, match="bad input"):  # the task's own error, as it is
        run_tasks([Task("broken", fail, ("bad input",))], jobs=1, threads=1, record=print)


def test_the_task_list_must_put_prerequisites_first():
    tasks = [Task("b", fail, ("x",), after=("a",)), Task("a", fail, ("x",))]
    with pytest.raises(ValueError, match="'b' waits for \\['a'\\]"):
        run_tasks(tasks, jobs=1, threads=1, record=lambda *row: None)
    with pytest.raises(ValueError, match="distinct names"):
        run_tasks([tasks[1], tasks[1]], jobs=1, threads=1, record=lambda *row: None)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_must_be_a_positive_integer(jobs):
    with pytest.raises(ValueError, match="jobs"):
        run_tasks([], jobs=jobs, threads=1, record=lambda *row: None)


def test_default_worker_threads_share_the_cores():
    cores = os.cpu_count() or 1
    assert default_worker_threads(1) == cores
    assert default_worker_threads(cores) == 1
    assert default_worker_threads(4 * cores) == 1
