"""The plan of a reproduction: every stage after ``data`` as a graph of tasks.

:func:`build_plan` turns a profile into tasks (:class:`~.executor.Task`), prerequisites
first, in the order one process runs them:

1. each teacher trained here (``teacher/<role>``; loaded teachers need no task);
2. each student run (``train/<student>/<method>/seed<k>``), after the teachers its method
   distils from;
3. the transfer examples (``evaluate/craft-transfer``), after the adversarial teacher, when
   an evaluation left to do needs them;
4. each evaluation (``evaluate/teacher_<role>``, ``evaluate/<student>__<method>__seed<k>``),
   after its model and the transfer examples.

With ``resume`` the evaluations that are complete (:func:`~.tasks.eval_complete`) are decided
once, before anything is written, and only read back. :meth:`Plan.outcome` sorts the tasks'
results into what the report needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..methods.registry import METHODS
from ..runtime.process import Ranks, agree
from .executor import Task
from .profile import Profile, Teacher
from .stages import Stages, checkpoint_path, run_dir
from .tasks import (
    DataSource,
    EvalJob,
    craft_task,
    eval_complete,
    eval_task,
    read_eval_task,
    train_task,
)

CRAFT = "evaluate/craft-transfer"

Run = tuple[str, str, int]  # (student, method, seed)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a reproduction produced: the teachers (with their training metrics), each run's
    training metrics, and the evaluations of the teachers and of the runs."""

    teachers: dict[str, Teacher]
    runs: dict[Run, dict[str, Any]]
    teacher_results: dict[str, dict[str, Any]]
    student_results: dict[Run, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The tasks of a reproduction and the teachers and runs they serve."""

    tasks: list[Task]
    teachers: dict[str, Teacher]
    runs: list[Run]

    def outcome(self, done: Mapping[str, Any]) -> Outcome:
        """Sort the tasks' results (:func:`~.executor.run_tasks`) by teacher and run."""
        teachers = {
            role: dataclasses.replace(t, train=done.get(f"teacher/{role}", t.train))
            for role, t in self.teachers.items()
        }
        return Outcome(
            teachers=teachers,
            runs={(s, m, k): done[train_name(s, m, k)] for s, m, k in self.runs},
            teacher_results={role: done[f"evaluate/teacher_{role}"] for role in teachers},
            student_results={r: done[f"evaluate/{eval_name(*r)}"] for r in self.runs},
        )


def train_name(student: str, method: str, seed: int) -> str:
    """The stage name of a student run."""
    return f"train/{student}/{method}/seed{seed}"


def eval_name(student: str, method: str, seed: int) -> str:
    """The name of a student run's evaluation (its file stem in ``out/eval``)."""
    return f"{student}__{method}__seed{seed}"


def eval_jobs(profile: Profile, out: Path, teachers: Mapping[str, Teacher]) -> list[EvalJob]:
    """The teachers' evaluations (the teachers' table attacks among the profile's) and the
    students' (every attack of the profile), on the checkpoint the profile selects."""
    settings = profile.evaluation
    jobs = [
        EvalJob(
            f"teacher_{role}",
            teacher.checkpoint,
            settings.teachers_attacks,
            {"defense": teacher.label, "role": role},
            teacher,
        )
        for role, teacher in teachers.items()
    ]
    for student, method, seed in profile.runs():
        checkpoint = checkpoint_path(run_dir(out, student, method, seed), settings.checkpoint)
        record = {
            "defense": METHODS[method].label,
            "student": student,
            "method": method,
            "train_seed": seed,
        }
        jobs.append(EvalJob(eval_name(student, method, seed), checkpoint, settings.attacks, record))
    return jobs


def build_plan(
    profile: Profile,
    out: Path,
    stages: Stages,
    *,
    resume: bool,
    progress: bool,
    ranks: Ranks,
) -> Plan:
    """The tasks of ``profile`` into the results directory ``out`` (see the module doc).

    Loaded teachers are recorded as stages at once. ``progress`` is passed to the tasks
    (progress bars inside a training run or an evaluation: for tasks run in this process).
    """
    settings = profile.evaluation
    device = profile.device_here()
    train_data = DataSource(profile.dataset, "train", profile.data_dir)
    test_data = DataSource(profile.dataset, "test", profile.data_dir)
    tasks: list[Task] = []
    teachers: dict[str, Teacher] = {}
    for role in profile.needed_teachers():
        teachers[role] = teacher = profile.teacher(role, out)
        if teacher.run_dir is None:
            stages.record(f"teacher/{role}", "loaded", 0.0)
            continue
        args = (profile.teacher_config(role), teacher.run_dir, resume, train_data, progress)
        tasks.append(Task(f"teacher/{role}", train_task, args))
    trained = {task.name for task in tasks}

    def after(*names: str) -> tuple[str, ...]:
        return tuple(name for name in names if name in trained)

    paths = {role: str(t.checkpoint) for role, t in teachers.items()}
    runs = profile.runs()
    for student, method, seed in runs:
        config = profile.student_config(student, method, seed, teacher_paths=paths)
        args = (config, run_dir(out, student, method, seed), resume, train_data, progress)
        needs = after(*(f"teacher/{role}" for role in METHODS[method].teachers))
        tasks.append(Task(train_name(student, method, seed), train_task, args, needs))
        trained.add(tasks[-1].name)

    jobs = eval_jobs(profile, out, teachers)
    # Decided once, before anything is written; the ranks must agree (evaluations are
    # collectives under torchrun).
    done = {job.name: resume and eval_complete(job, settings, out) for job in jobs}
    agree(done, f"which evaluations in {str(out / 'eval')!r} are complete", ranks)
    transfer = set(settings.transfer)
    crafted_path = None
    if any(not done[job.name] for job in jobs if transfer & set(job.attacks)):
        crafted_path = out / "eval" / "transfer_examples.pt"
        craft_args = (teachers["adv"], test_data, settings, device, crafted_path, progress)
        tasks.append(Task(CRAFT, craft_task, craft_args, after("teacher/adv")))
        trained.add(CRAFT)
    for job in jobs:
        name = f"evaluate/{job.name}"
        if done[job.name]:
            tasks.append(Task(name, read_eval_task, (job.path(out),)))
            continue
        if job.teacher is not None:
            needs = [f"teacher/{job.record['role']}"]
        else:
            record = job.record
            needs = [train_name(record["student"], record["method"], record["train_seed"])]
            needs += [CRAFT] * bool(transfer & set(job.attacks))
        args = (job, out, test_data, settings, device, crafted_path, progress)
        tasks.append(Task(name, eval_task, args, after(*needs)))
    return Plan(tasks=tasks, teachers=teachers, runs=runs)
