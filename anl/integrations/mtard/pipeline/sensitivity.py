"""``anl-mtard sensitivity``: MTARD's settings varied on a finished reproduction (issue #15).

The paper reports no sensitivity of ANL. On a reproduction's results directory this trains
the MTARD student once per setting (one seed) with the profile's student configuration and
teachers, evaluates it on the profile's test points under PGD_TRADES (same eps, points and
seed as the reproduction's evaluation), and reports each setting beside the reproduction's own
rows (:mod:`.sensitivity_report`). The grids (:func:`grid_settings`):

- ``anl``: ANL's ``r_w`` in {0.0025, 0.025, 0.25} × ``β`` in {0.5, 1, 2} (3 × 3), constant
  weights ``w_adv`` in {0.3, 0.5, 0.7} (Baseline+MT's step, :data:`W_ADV_GRID`), and, when
  the profile scales the KL (``kl_factor`` ≠ 1), MTARD at the official scale 1 (a control);
- ``balancers``: MTARD with the paper's ANL and with every rule of :mod:`anl.rules` as its
  balancer (:data:`~..methods.balancers.BALANCERS`, issue #19);
- ``all``: both.

Each setting is a run directory ``<out>/runs/<student>/<setting>/seed<k>/`` and an evaluation
``<out>/eval/<student>__<setting>__seed<k>.json``, made by the reproduction's tasks
(:mod:`.tasks`) and run by its executor (:func:`~.executor.run_tasks`, ``jobs`` workers), so
``resume`` skips what is complete by the same checks (a finished run of the same
configuration, an evaluation of the same checkpoint and settings) and continues interrupted
runs. A run whose loss becomes NaN is reported as diverged rather than stopping the study.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checks import check_int, fail
from ..methods.balancers import BALANCER_NAMES, BALANCERS
from ..methods.registry import METHODS
from ..runtime.execution import torch_threads
from ..runtime.files import atomic_write_text
from ..runtime.process import (
    agree,
    command_line,
    current_ranks,
    distributed_session,
    node_main_first,
)
from ..training.config import TrainConfig
from ..training.trainer import NonFiniteLossError
from .executor import Task, default_worker_threads
from .profile import EvalSettings, Profile
from .sensitivity_report import ATTACK, write_sensitivity_report
from .stages import Stages, checkpoint_path, run_recorded
from .tasks import (
    DataSource,
    EvalJob,
    eval_complete,
    eval_task,
    read_eval_task,
    run_state,
    train_task,
)

RW_GRID = (0.0025, 0.025, 0.25)
"""ANL's ``r_w`` (Eq. 9): the paper's 0.025 and ten times less and more."""
BETA_GRID = (0.5, 1.0, 2.0)
"""ANL's ``β`` (Eq. 8): the paper's 1, half and twice."""
W_ADV_GRID = (0.3, 0.5, 0.7)
"""Constant weights of the adversarial teacher's loss (``w_nat = 1 - w_adv``)."""
GRIDS = ("anl", "balancers", "all")
DIVERGED = "diverged.txt"
"""Written into a run directory whose loss became NaN or infinite (the error's text)."""

_ANL = {"balancer": "anl", "balancer_kwargs": {}}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One line of the study: a method and what it changes in the profile's configuration.

    ``name`` is the run directory's name, ``label`` the table's, ``group`` one of ``"anl"``
    (the r_w × β grid), ``"constant"``, ``"control"`` and ``"balancer"``.
    """

    name: str
    label: str
    group: str
    method: str
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    hyper: dict[str, Any] = dataclasses.field(default_factory=dict)

    def config(
        self, profile: Profile, student: str, seed: int, teacher_paths: dict[str, str]
    ) -> TrainConfig:
        """The profile's configuration of ``student`` for the method, with the setting's
        fields and hyperparameters."""
        base = profile.student_config(student, self.method, seed, teacher_paths=teacher_paths)
        values = {**base.to_dict(), **self.fields, "hyper": {**base.hyper, **self.hyper}}
        return TrainConfig.from_dict(values)


def _anl(weight_lr: float, beta: float) -> Setting:
    return Setting(
        f"anl-rw{weight_lr:g}-beta{beta:g}",
        f"MTARD, r_w {weight_lr:g}, β {beta:g}",
        "anl",
        "mtard",
        {**_ANL, "weight_lr": weight_lr, "beta": beta},
    )


def grid_settings(profile: Profile, grid: str) -> list[Setting]:
    """The settings of ``grid`` (``anl``, ``balancers`` or ``all``) for ``profile``."""
    if grid not in GRIDS:
        fail("grid", grid, f"one of {list(GRIDS)}")
    settings: list[Setting] = []
    if grid in ("anl", "all"):
        settings += [_anl(rw, beta) for rw in RW_GRID for beta in BETA_GRID]
        settings += [
            Setting(
                f"constant-wadv{w:g}",
                f"Baseline+MT, w_adv {w:g}",
                "constant",
                "baseline_mt",
                hyper={"w_adv": w},
            )
            for w in W_ADV_GRID
        ]
        placeholder = {"clean": "teacher.pt", "adv": "teacher.pt"}
        mtard = profile.student_config(profile.students[0], "mtard", 0, teacher_paths=placeholder)
        if METHODS["mtard"].resolve_hyper(mtard.hyper)["kl_factor"] != 1.0:
            settings.append(
                Setting(
                    "anl-kl1",
                    "MTARD, r_w 0.025, β 1, KL × 1 (official scale)",
                    "control",
                    "mtard",
                    {**_ANL, "weight_lr": 0.025, "beta": 1.0},
                    {"kl_factor": 1.0},
                )
            )
    if grid in ("balancers", "all"):
        if grid == "balancers":
            settings.append(_anl(0.025, 1.0))
        settings += [
            Setting(
                name,
                f"MTARD, {BALANCERS[name].label}",
                "balancer",
                "mtard",
                {"balancer": name, "balancer_kwargs": {}},
            )
            for name in BALANCER_NAMES
            if name not in ("anl", "constant")
        ]
    return settings


def train_setting_task(
    config: TrainConfig, run_dir: Path, resume: bool, data: DataSource, progress: bool
) -> tuple[dict[str, Any], str]:
    """:func:`~.tasks.train_task`, with a NaN loss recorded (``diverged.txt``) and returned
    as ``{"diverged": message}`` instead of raised; a resumed study does not retry it."""
    marker = run_dir / DIVERGED
    diverged = resume and marker.exists()
    agree(diverged, f"whether {str(marker)!r} exists", current_ranks())
    if diverged:
        run_state(run_dir, config)  # the same configuration, or a ValueError
        return {"diverged": marker.read_text()}, "skipped (diverged)"
    try:
        return train_task(config, run_dir, resume, data, progress)
    except NonFiniteLossError as exc:
        if current_ranks().main:
            atomic_write_text(marker, f"{exc}\n")
        return {"diverged": str(exc)}, "diverged"


def eval_setting_task(
    job: EvalJob,
    run_dir: Path,
    out: Path,
    data: DataSource,
    settings: EvalSettings,
    device: Any,
    progress: bool,
) -> tuple[dict[str, Any], str]:
    """:func:`~.tasks.eval_task` of a setting's checkpoint; nothing for a diverged run."""
    if (run_dir / DIVERGED).exists():
        return {"diverged": (run_dir / DIVERGED).read_text()}, "skipped (diverged)"
    return eval_task(job, out, data, settings, device, None, progress)


def sensitivity(
    results_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    grid: str = "anl",
    only: Sequence[str] | None = None,
    students: Sequence[str] | None = None,
    resume: bool = False,
    jobs: int = 1,
    threads: int | None = None,
    plots: bool = True,
    progress: bool = True,
    data_dir: str | None = None,
    model_dir: str | None = None,
    device: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the study of ``grid`` on the reproduction in ``results_dir`` into ``out``.

    Args:
        results_dir: a reproduction's results directory: its ``config.json`` (the profile),
            its teachers (``teachers/`` or the loaded ones) and, for the reference rows, its
            ``results.json`` and run logs.
        out: where the study goes (default ``<results_dir>/sensitivity``); an existing one
            needs ``resume``.
        seed: the training seed of every setting.
        grid: ``"anl"``, ``"balancers"`` or ``"all"`` (see the module doc).
        only: run these settings of the grid only (their names), e.g. to add one.
        students: a subset of the profile's students (default: all).
        resume: skip complete settings, continue interrupted runs.
        jobs, threads: as :func:`~.reproduce.reproduce`'s.
        plots, progress: draw the figure; show progress bars.
        data_dir, model_dir, device: override the profile's.
        command: recorded in ``sensitivity.json`` (default: ``sys.argv``).

    Returns:
        The content of ``sensitivity.json``.
    """
    started = datetime.datetime.now().astimezone()
    wall_start = time.perf_counter()
    check_int("seed", seed, minimum=0)
    check_int("jobs", jobs, minimum=1)
    results_dir = Path(results_dir)
    if not (results_dir / "config.json").is_file():
        fail("results_dir", str(results_dir), "a reproduction's results directory (config.json)")
    profile = Profile.load(results_dir / "config.json").with_overrides(
        data_dir=data_dir, model_dir=model_dir, device=device, students=students
    )
    settings = grid_settings(profile, grid)
    if only is not None:
        names = [s.name for s in settings]
        unknown = [name for name in only if name not in names]
        if unknown:
            fail("only", list(only), f"names of the {grid!r} grid's settings {names}")
        settings = [s for s in settings if s.name in only]
    out = Path(out) if out is not None else results_dir / "sensitivity"
    command = command or command_line()
    teachers = {role: profile.teacher(role, results_dir) for role in ("clean", "adv")}
    for teacher in teachers.values():
        if not teacher.checkpoint.is_file():
            raise FileNotFoundError(
                f"The {teacher.role} teacher {teacher.checkpoint} does not exist: finish the "
                f"reproduction first (anl-mtard reproduce --resume --out {results_dir})."
            )
    paths = {role: str(t.checkpoint) for role, t in teachers.items()}
    evaluation = dataclasses.replace(
        profile.evaluation,
        attacks=(ATTACK,),
        attack_overrides={
            k: v for k, v in profile.evaluation.attack_overrides.items() if k == ATTACK
        },
        attack_n_examples={
            k: v for k, v in profile.evaluation.attack_n_examples.items() if k == ATTACK
        },
    )
    with distributed_session(profile.device) as ranks:
        if ranks.enabled and jobs > 1:
            fail("jobs", jobs, "1 under torchrun (its processes already share every stage)")
        exists = (out / "config.json").exists()
        agree(exists, f"whether {str(out / 'config.json')!r} exists", ranks)
        if exists and not resume:
            raise ValueError(
                f"{str(out)!r} already holds a sensitivity study. Pass `resume=True` "
                "(--resume) to continue it, or choose another --out."
            )
        if ranks.main:
            atomic_write_text(out / "config.json", json.dumps(profile.to_dict(), indent=2) + "\n")
        threads = threads if threads is not None else profile.threads
        if jobs > 1 and threads is None:
            threads = default_worker_threads(jobs)
        stages = Stages(out / "stages.json", main=ranks.main)
        invocation = stages.invocation(started.isoformat(timespec="seconds"), command, jobs)
        with torch_threads(threads), invocation:
            sources = [DataSource(profile.dataset, s, profile.data_dir) for s in ("train", "test")]
            node_main_first(lambda: [s.load(download=profile.download) for s in sources], ranks)
            tasks, runs = _plan(
                profile, settings, out, seed, paths, evaluation, resume, progress and jobs == 1
            )
            done = run_recorded(
                tasks,
                stages,
                jobs=jobs,
                threads=threads,
                desc="settings",
                progress=progress and ranks.main,
            )
            results = None
            if ranks.main:
                results = write_sensitivity_report(
                    profile,
                    results_dir,
                    out,
                    runs=[(run, done[train], done[evaluate]) for run, train, evaluate in runs],
                    names=[(train, evaluate) for _, train, evaluate in runs],
                    stages=stages,
                    evaluation=evaluation,
                    meta={
                        "grid": grid,
                        "seed": seed,
                        "command": command,
                        "date": started.isoformat(timespec="seconds"),
                        "wall_time_s": time.perf_counter() - wall_start,
                    },
                    plots=plots,
                )
        return ranks.gather_objects(results)[0]


def _plan(
    profile: Profile,
    settings: Sequence[Setting],
    out: Path,
    seed: int,
    paths: dict[str, str],
    evaluation: EvalSettings,
    resume: bool,
    progress: bool,
) -> tuple[list[Task], list[tuple[dict[str, Any], str, str]]]:
    """The tasks (a training run then its evaluation per student and setting) and, per
    setting, its description and the names of its two tasks."""
    train_data = DataSource(profile.dataset, "train", profile.data_dir)
    test_data = DataSource(profile.dataset, "test", profile.data_dir)
    device = profile.device_here()
    tasks: list[Task] = []
    runs = []
    for student in profile.students:
        for setting in settings:
            config = setting.config(profile, student, seed, paths)
            run_dir = out / "runs" / student / setting.name / f"seed{seed}"
            train = f"train/{student}/{setting.name}/seed{seed}"
            tasks.append(
                Task(train, train_setting_task, (config, run_dir, resume, train_data, progress))
            )
            job = EvalJob(
                f"{student}__{setting.name}__seed{seed}",
                checkpoint_path(run_dir, evaluation.checkpoint),
                (ATTACK,),
                {"defense": setting.label, "student": student, "setting": setting.name,
                 "method": setting.method, "train_seed": seed},
            )  # fmt: skip
            evaluate = f"evaluate/{job.name}"
            complete = resume and eval_complete(job, evaluation, out)
            agree(complete, f"whether {str(job.path(out))!r} is complete", current_ranks())
            if complete:
                tasks.append(Task(evaluate, read_eval_task, (job.path(out),)))
            else:
                args = (job, run_dir, out, test_data, evaluation, device, progress)
                tasks.append(Task(evaluate, eval_setting_task, args, (train,)))
            described = {
                **dataclasses.asdict(setting),
                "student": student,
                "seed": seed,
                "run_dir": str(run_dir),
            }
            runs.append((described, train, evaluate))
    return tasks, runs
