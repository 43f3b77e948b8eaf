"""``anl-mtard reproduce``: the whole MTARD experiment, from a profile to a results directory.

The pipeline of the paper's Sec. 4 (Zhao et al., ECCV 2022), one function per stage, in the
order they run (:func:`reproduce` calls them top to bottom):

1. **Profile** (:mod:`.profiles`: :func:`load_profile`, :func:`apply_overrides`): a JSON file
   of ``configs/`` or any path; command-line flags override single entries. The resolved
   profile is written to ``<out>/config.json``.
2. **Teachers** (:func:`prepare_teachers`): a clean and an adversarial teacher, either
   trained here with the same loop as the students (:func:`loop.train`, natural training and
   TRADES) or loaded from checkpoints (RobustBench / chenyaofo / this project's format,
   :func:`checkpoints.load_teacher`). Evaluated for the teachers' table (paper Table 1).
3. **Students** (:func:`train_students`): every method and ablation (``natural``, ``sat``,
   ``trades``, ``ard``, ``rslad``, ``baseline``, ``baseline_mt``, ``mtard``) for every student
   architecture and seed, each a :func:`loop.train` run directory.
4. **Evaluation** (:func:`evaluate_students`): :func:`evaluation.evaluate` with the profile's
   attacks on the test split, on the checkpoint chosen by validation W-Robust (Eq. 12).
   Transfer attacks are crafted on the adversarial teacher, as in the paper; they do not
   depend on the student, so they are crafted once and reused (:func:`craft_transfer`).
5. **Report** (:mod:`.report`: :func:`write_report`): tables, ``results.json``, figures and
   ``summary.md``.

The layout of the results directory and the stage bookkeeping are :mod:`.stages`'.

``resume=True`` (``--resume``) skips every stage whose outputs exist and are complete (a
finished run with ``final.pt`` and the same configuration; an evaluation JSON with the same
attacks), continues interrupted training runs from ``checkpoints/last.pt``, and redoes the
rest, so a killed ``reproduce`` picks up where it stopped.

Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) the whole pipeline runs in
one process group (:func:`loop.distributed_session`, created once for every stage): each
training run is data-parallel (:func:`loop.train`), each evaluation and the transfer crafting
attack the exact shard ``indices[rank::world_size]`` with the counts summed over ranks (the
numbers equal the single-process ones), and only rank 0 writes files and draws progress bars.
Every rank returns the same results. ``out`` must be on a file system every rank shares.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import checkpoints as _checkpoints
from . import data as _data
from . import evaluation as _evaluate
from . import loop as _loop
from . import methods as _methods
from .attacks import make_attack, model_mode
from .config import in_memory_format, resolve_memory_format
from .pool import DataSource, Task, default_worker_threads, run_tasks
from .profiles import (
    CONFIG_DIR,
    METHOD_ORDER,
    Teacher,
    _bad,
    _device,
    _eval_settings,
    _json_settings,
    _needed_teachers,
    apply_overrides,
    load_profile,
    profile_names,
    student_config,
    teacher_config,
    teacher_path,
    validate_profile,
)
from .profiles import ROLES as ROLES
from .report import BASELINES as BASELINES
from .report import BLACK_BOX as BLACK_BOX
from .report import (
    DEFENSE_LABELS,
    TABLE1_ATTACKS,
    aggregate,
    compare_with_claims,
    write_figures,
    write_report,
)
from .report import WHITE_BOX as WHITE_BOX
from .report import _claims_text as _claims_text
from .report import _finite as _finite
from .report import _table_rows as _table_rows
from .stages import _checkpoint_path, _run_dir, _Stages, _write_text

__all__ = [
    "CONFIG_DIR",
    "DEFENSE_LABELS",
    "METHOD_ORDER",
    "Teacher",
    "aggregate",
    "apply_overrides",
    "compare_with_claims",
    "craft_transfer",
    "evaluate_students",
    "load_profile",
    "prepare_teachers",
    "profile_names",
    "register_cli",
    "reproduce",
    "run_reproduce_cli",
    "student_config",
    "teacher_config",
    "teacher_path",
    "train_students",
    "validate_profile",
    "write_figures",
    "write_report",
]

logger = logging.getLogger(__name__)

# Fields that may change between a finished run and a resumed reproduce: the loop's, and the
# teachers' paths (a moved results or model directory; the teachers are checked themselves).
_RESUME_MUTABLE = frozenset(
    {"device", "log_every", "data_dir", "download", "tensorboard", "clean_teacher", "adv_teacher"}
)


# ==============================================================================================
# Stage bookkeeping
# ==============================================================================================
def _agree(value: Any, what: str) -> None:
    """Raise on every rank when the ranks see different ``value`` (a no-op for one process):
    they decide from the files of the results directory, which must therefore be shared."""
    seen = _loop._dist_info().gather_objects(value)
    if any(v != seen[0] for v in seen):
        raise ValueError(
            f"The ranks disagree on {what} (rank k sees {seen}[k]): under torch.distributed the "
            "results directory must be on a file system that every rank shares."
        )


def _same_config(saved: _loop.TrainConfig, wanted: _loop.TrainConfig) -> list[str]:
    a, b = saved.to_dict(), wanted.to_dict()
    return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if k not in _RESUME_MUTABLE and a[k] != b[k]]


def _run_state(run_dir: Path, config: _loop.TrainConfig) -> str:
    """``"done"`` (finished, same config), ``"partial"`` (resumable) or ``"new"``."""
    config_path = run_dir / "config.json"
    if not config_path.exists():
        return "new"
    differences = _same_config(_loop.TrainConfig.load(config_path), config)
    if differences:
        raise ValueError(
            f"The run {str(run_dir)!r} was made with another configuration ("
            + "; ".join(differences)
            + "). Choose another --out, or delete that run directory."
        )
    metrics = run_dir / "metrics.json"
    finished = metrics.exists() and json.loads(metrics.read_text()).get("finished")
    if finished and (run_dir / "final.pt").exists():
        return "done"
    return "partial"


def _train_run(
    config: _loop.TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    progress: bool,
    train_data: _data.ImageData,
    row: dict[str, Any],
) -> dict[str, Any]:
    """Train one run unless ``resume`` finds it complete; returns its ``metrics.json``."""
    state = _run_state(run_dir, config) if resume else "new"
    _agree(state, f"the state of the run {str(run_dir)!r}")
    if state == "done":
        row["status"] = "skipped (complete)"
        return json.loads((run_dir / "metrics.json").read_text())
    if state == "partial":
        row["status"] = "resumed"
    return _loop.train(
        config, run_dir, resume=state == "partial", progress=progress, train_data=train_data
    )


# ==============================================================================================
# 2. Teachers
# ==============================================================================================
def prepare_teachers(
    profile: Mapping[str, Any],
    out: Path,
    *,
    train_data: _data.ImageData,
    stages: _Stages,
    resume: bool,
    progress: bool,
) -> dict[str, Teacher]:
    """Train (``teachers[role]['train']``) or locate (``['path']``) each needed teacher.

    Teachers trained here use :func:`loop.train` on the same data as the students (clean:
    natural training; adversarial: TRADES, as the paper's CIFAR-10 WRN-34-10), into
    ``out/teachers/<role>``; their checkpoint is ``best.pt`` (validation W-Robust) or
    ``final.pt``. Loaded teachers must exist; they are read with
    :func:`checkpoints.load_teacher` (RobustBench, TRADES or this project's format).
    """
    teachers: dict[str, Teacher] = {}
    for role in _needed_teachers(profile):
        with stages.stage(f"teacher/{role}") as row:
            teacher, config = _teacher_entry(profile, out, role)
            if config is None:
                row["status"] = "loaded"
            else:
                metrics = _train_run(
                    config,
                    teacher.run_dir,
                    resume=resume,
                    progress=progress,
                    train_data=train_data,
                    row=row,
                )
                teacher = dataclasses.replace(teacher, train=metrics)
            teachers[role] = teacher
    return teachers


def _teacher_entry(
    profile: Mapping[str, Any], out: Path, role: str
) -> tuple[Teacher, _loop.TrainConfig | None]:
    """The ``role`` teacher of ``profile`` and, when it is trained here, its training
    configuration (its run directory is ``out/teachers/<role>``); a loaded teacher's
    checkpoint must exist."""
    spec = profile["teachers"][role]
    label = spec.get("label", f"{spec['arch']} ({role})")
    kwargs = dict(spec.get("kwargs", {}))
    if "path" in spec:
        path = teacher_path(profile, role)
        if not path.is_file():
            raise FileNotFoundError(
                f"The {role} teacher checkpoint {path} does not exist. Put the paper's teacher "
                "there (docs/mtard.md, 'Real teachers'), or give --model-dir."
            )
        return Teacher(role, spec["arch"], label, "loaded", path, True, kwargs), None
    run_dir = out / "teachers" / role
    checkpoint = _checkpoint_path(run_dir, spec.get("checkpoint", "best"))
    teacher = Teacher(
        role, spec["arch"], label, "trained here", checkpoint, False, kwargs, run_dir=run_dir
    )
    return teacher, teacher_config(profile, role)


# ==============================================================================================
# 3. Students
# ==============================================================================================
def _run_list(profile: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    methods = [m for m in METHOD_ORDER if m in profile["methods"]]
    return [(s, m, k) for s in profile["students"] for m in methods for k in profile["seeds"]]


def train_students(
    profile: Mapping[str, Any],
    out: Path,
    teachers: Mapping[str, Teacher],
    *,
    train_data: _data.ImageData,
    stages: _Stages,
    resume: bool,
    progress: bool,
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Train every (student, method, seed) with :func:`loop.train`; returns their metrics."""
    paths = {role: str(t.checkpoint) for role, t in teachers.items()}
    runs = _run_list(profile)
    results = {}
    bar = _tqdm(runs, "students", progress and _loop._dist_info().main)
    for student, method, seed in bar:
        bar.set_postfix_str(f"{student}/{method}/seed{seed}")
        config = student_config(profile, student, method, seed, teacher_paths=paths)
        run_dir = _run_dir(out, student, method, seed)
        with stages.stage(f"train/{student}/{method}/seed{seed}") as row:
            results[student, method, seed] = _train_run(
                config, run_dir, resume=resume, progress=progress, train_data=train_data, row=row
            )
    return results


# ==============================================================================================
# 4. Evaluation
# ==============================================================================================
def _sum_over_ranks(counts: Tensor, world_size: int) -> Tensor:
    """``counts`` summed over the ranks when ``torch.distributed`` is initialised and
    ``world_size > 1`` (as :func:`evaluation.evaluate` does), else unchanged."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        return _loop._dist_info().sum_(counts)
    return counts


def craft_transfer(
    surrogate: nn.Module,
    data: _data.ImageData,
    attacks: Sequence[str],
    *,
    eps: float,
    n_examples: int | None,
    batch_size: int,
    device: torch.device,
    seed: int,
    attack_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    memory_format: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Transfer adversarial examples crafted once on ``surrogate`` for the first test points.

    Each attack is :func:`attacks.make_attack` with the profile's settings, keyed by the same
    per-point seeds as :func:`evaluation.evaluate` (the dataset index), so the examples are
    exactly those ``evaluate(..., ["transfer_pgd"], surrogate=...)`` would craft for any
    student: they depend on the surrogate only. With ``rank`` and ``world_size``, only the
    shard ``indices[rank::world_size]`` is crafted (the shard :func:`evaluation.evaluate`
    attacks on that rank). ``memory_format`` is :func:`evaluation.evaluate`'s (the surrogate
    runs in that layout). Returns ``{attack: {"x_adv": Tensor (CPU), "indices": the dataset
    indices of its rows, "settings": dict}}``.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        _bad("world_size", world_size, "an integer >= 1")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        _bad("rank", rank, f"an integer in [0, {world_size - 1}]")
    n = len(data) if n_examples is None else min(n_examples, len(data))
    indices = torch.arange(n)[rank::world_size]
    overrides = attack_overrides or {}
    built = {
        name: make_attack(name, eps=eps, seed=seed, surrogate=surrogate, **overrides.get(name, {}))
        for name in attacks
    }
    surrogate = in_memory_format(surrogate.to(device), resolve_memory_format(memory_format, device))
    out: dict[str, list[Tensor]] = {name: [] for name in attacks}
    batches = _evaluate.indexed_batches(data, indices, batch_size, device)
    total = math.ceil(indices.numel() / batch_size)
    target = _Unqueried()
    with model_mode(surrogate, "eval"):
        for x, y, ids in _tqdm(batches, "transfer", progress and rank == 0, total=total):
            for name, attack in built.items():
                out[name].append(attack(target, x, y, seeds=ids).cpu())
    return {
        name: {
            "x_adv": torch.cat(out[name]) if out[name] else torch.empty(0),  # empty: no point
            "indices": indices,
            "settings": built[name].settings,
        }
        for name in attacks
    }


class _Unqueried(nn.Module):
    """Stands for the target of a transfer attack, which is never queried."""

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never called
        raise RuntimeError("A transfer attack queried its target.")


def _transfer_results(
    model: nn.Module,
    data: _data.ImageData,
    crafted: Mapping[str, Mapping[str, Any]],
    *,
    batch_size: int,
    device: torch.device,
    world_size: int = 1,
    memory_format: str = "auto",
) -> dict[str, dict[str, Any]]:
    """The entries :func:`evaluation.evaluate` gives for transfer attacks, on crafted examples.

    ``crafted`` is :func:`craft_transfer`'s output (this rank's shard under
    ``torch.distributed``: the counts are then summed over the ``world_size`` ranks). The
    model runs in ``memory_format``, as in :func:`evaluation.evaluate`.
    """
    model = in_memory_format(model.to(device), resolve_memory_format(memory_format, device))
    results = {}
    for name, entry in crafted.items():
        x_adv_all = entry["x_adv"]
        indices = entry.get("indices")
        if indices is None:
            indices = torch.arange(x_adv_all.shape[0])
        counts = torch.zeros(4, dtype=torch.int64)  # points, clean, robust, adversarial correct
        start = 0
        with model_mode(model, "eval"), torch.no_grad():
            for x, y, _ids in _evaluate.indexed_batches(data, indices, batch_size, device):
                x_adv = x_adv_all[start : start + len(y)].to(device)
                start += len(y)
                clean_ok = model(x).argmax(dim=1) == y
                adv_ok = model(x_adv).argmax(dim=1) == y
                counts += torch.stack(
                    [
                        torch.tensor(len(y)),
                        clean_ok.sum().cpu(),
                        (clean_ok & adv_ok).sum().cpu(),
                        adv_ok.sum().cpu(),
                    ]
                )
        n, clean, robust, adv = _sum_over_ranks(counts, world_size).tolist()
        results[name] = {
            "correct": robust,
            "adv_correct": adv,
            "robust": robust / n,
            "w_robust": _evaluate.w_robust(clean / n, robust / n),
            "settings": {**entry["settings"], "crafted_once_on": "adversarial teacher"},
        }
    return results


def _evaluate_model(
    model: nn.Module,
    test_data: _data.ImageData,
    settings: Mapping[str, Any],
    attacks: Sequence[str],
    *,
    crafted: Mapping[str, Mapping[str, Any]] | None,
    device: torch.device,
    progress: bool,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Every attack on ``model``: :func:`evaluation.evaluate`, and the crafted transfer examples.
    Under ``torch.distributed`` each rank attacks its shard; every rank gets the summed counts.
    """
    direct = [a for a in attacks if not a.startswith("transfer_")]
    results = _evaluate.evaluate(
        model,
        test_data,
        direct,
        eps=settings["eps"],
        batch_size=settings["batch_size"],
        device=device,
        n_examples=settings["n_examples"],
        square_queries=settings["square_queries"],
        progress=progress,
        seed=settings["seed"],
        attack_overrides={k: v for k, v in settings["attack_overrides"].items() if k in direct},
        attack_n_examples={k: v for k, v in settings["attack_n_examples"].items() if k in direct},
        rank=rank,
        world_size=world_size,
    )
    transfer = [a for a in attacks if a.startswith("transfer_")]
    if transfer:
        assert crafted is not None
        extra = _transfer_results(
            model,
            test_data,
            {a: crafted[a] for a in transfer},
            batch_size=settings["batch_size"],
            device=device,
            world_size=world_size,
        )
        results["attacks"].update(extra)
        results["attacks"] = {a: results["attacks"][a] for a in attacks}
    return results


def _checkpoint_key(checkpoint: Path, out: Path) -> str:
    """The checkpoint's path relative to the results directory when inside it (so that a moved
    results directory still matches), else absolute."""
    try:
        return checkpoint.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(checkpoint.resolve())


def _eval_complete(job: _EvalJob, settings: Mapping[str, Any], out: Path) -> bool:
    """Whether ``out/eval/<job>.json`` holds an evaluation of the job's checkpoint (not older
    than it) with its attacks and these settings."""
    path = job.path(out)
    if not path.exists() or not job.checkpoint.exists():
        return False
    if path.stat().st_mtime_ns < job.checkpoint.stat().st_mtime_ns:
        return False
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return (
        list(saved.get("attacks", {})) == list(job.attacks)
        and saved.get("checkpoint_key") == _checkpoint_key(job.checkpoint, out)
        and saved.get("eval_settings") == _json_settings(settings)
    )


def evaluate_students(
    profile: Mapping[str, Any],
    out: Path,
    teachers: Mapping[str, Teacher],
    runs: Mapping[tuple[str, str, int], Mapping[str, Any]],
    *,
    test_data: _data.ImageData,
    stages: _Stages,
    resume: bool,
    progress: bool,
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, int], dict[str, Any]]]:
    """Evaluate the teachers (Table 1 attacks) and every student run (the profile's attacks).

    Writes ``out/eval/teacher_<role>.json|md`` and ``out/eval/<student>__<method>__seed<k>
    .json|md`` (:func:`evaluation.write_results`). Transfer attacks use the adversarial teacher
    as the surrogate (paper Sec. 4.2), crafted once (:func:`craft_transfer`). With ``resume``,
    an evaluation whose JSON holds the same attacks and settings is read back instead.

    Under ``torch.distributed`` every rank attacks its exact shard of the test points (the
    crafting too), the counts are summed over ranks, and rank 0 writes the files: the numbers
    are those of one process.
    """
    ddp = _loop._dist_info()
    settings = _eval_settings(profile)
    device = _device(profile)
    attacks = settings["attacks"]
    jobs = _eval_jobs(profile, out, teachers, runs)

    # Evaluations that a resume can read back. Decided once, before anything is written; the
    # ranks must agree (each evaluation is a collective).
    done = {job.name: resume and _eval_complete(job, settings, out) for job in jobs}
    _agree(done, f"which evaluations in {str(out / 'eval')!r} are complete")

    # Transfer examples: crafted once on the adversarial teacher, if any evaluation needs them.
    crafted = None
    transfer = [a for a in attacks if a.startswith("transfer_")]
    if transfer and any(not done[j.name] for j in jobs if set(j.attacks) & set(transfer)):
        with stages.stage("evaluate/craft-transfer"):
            crafted = _craft_on_teacher(
                teachers["adv"],
                test_data,
                settings,
                transfer,
                device,
                progress=progress and ddp.main,
                rank=ddp.rank,
                world_size=ddp.world_size,
            )

    results: dict[str, dict[str, Any]] = {}
    for job in jobs:
        with stages.stage(f"evaluate/{job.name}") as row:
            if done[job.name]:
                row["status"] = "skipped (complete)"
                results[job.name] = json.loads(job.path(out).read_text())
                continue
            results[job.name] = _run_eval_job(
                job,
                out,
                test_data,
                settings,
                crafted=crafted,
                device=device,
                progress=progress and ddp.main,
                rank=ddp.rank,
                world_size=ddp.world_size,
            )
    return _split_eval_results(results, teachers, runs)


def _craft_on_teacher(
    adv: Teacher,
    test_data: _data.ImageData,
    settings: Mapping[str, Any],
    attacks: Sequence[str],
    device: torch.device,
    *,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, dict[str, Any]]:
    """:func:`craft_transfer` on the adversarial teacher with the evaluation settings."""
    return craft_transfer(
        adv.load(test_data.info, device),
        test_data,
        attacks,
        eps=settings["eps"],
        n_examples=settings["n_examples"],
        batch_size=settings["batch_size"],
        device=device,
        seed=settings["seed"],
        attack_overrides=settings["attack_overrides"],
        progress=progress,
        rank=rank,
        world_size=world_size,
    )


@dataclasses.dataclass(frozen=True)
class _EvalJob:
    """One evaluation of :func:`evaluate_students`: a teacher (``teacher`` given) or a student
    run's checkpoint, the attacks it gets, and the fields recorded with its results."""

    name: str  # file stem in out/eval
    checkpoint: Path
    attacks: tuple[str, ...]
    record: Mapping[str, Any]
    teacher: Teacher | None = None

    def path(self, out: Path) -> Path:
        return out / "eval" / f"{self.name}.json"

    def load(self, info: _data.DatasetInfo, device: torch.device) -> nn.Module:
        if self.teacher is not None:
            return self.teacher.load(info, device)
        return _checkpoints.load_model(self.checkpoint, map_location=device)


def _eval_jobs(
    profile: Mapping[str, Any],
    out: Path,
    teachers: Mapping[str, Teacher],
    runs: Iterable[tuple[str, str, int]],
) -> list[_EvalJob]:
    """The teachers' evaluations (Table 1 attacks among the profile's) and the students'."""
    settings = _eval_settings(profile)
    attacks = settings["attacks"]
    jobs = [
        _EvalJob(
            f"teacher_{role}",
            teacher.checkpoint,
            tuple(a for a in TABLE1_ATTACKS if a in attacks) or TABLE1_ATTACKS[:1],
            {"defense": teacher.label, "role": role},
            teacher,
        )
        for role, teacher in teachers.items()
    ]
    for student, method, seed in runs:
        checkpoint = _checkpoint_path(_run_dir(out, student, method, seed), settings["checkpoint"])
        record = {
            "defense": DEFENSE_LABELS[method],
            "student": student,
            "method": method,
            "train_seed": seed,
        }
        jobs.append(
            _EvalJob(f"{student}__{method}__seed{seed}", checkpoint, tuple(attacks), record)
        )
    return jobs


def _run_eval_job(
    job: _EvalJob,
    out: Path,
    test_data: _data.ImageData,
    settings: Mapping[str, Any],
    *,
    crafted: Mapping[str, Mapping[str, Any]] | None,
    device: torch.device,
    progress: bool,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Evaluate ``job``'s model (:func:`_evaluate_model`); rank 0 writes its results."""
    result = _evaluate_model(
        job.load(test_data.info, device),
        test_data,
        settings,
        list(job.attacks),
        crafted=crafted,
        device=device,
        progress=progress,
        rank=rank,
        world_size=world_size,
    )
    result.update(
        job.record,
        checkpoint=str(job.checkpoint),
        checkpoint_key=_checkpoint_key(job.checkpoint, out),
        eval_settings=_json_settings(settings),
    )
    if rank == 0:
        _evaluate.write_results(result, out / "eval", job.name, defense=job.record["defense"])
    return result


def _split_eval_results(
    results: Mapping[str, dict[str, Any]],
    teachers: Mapping[str, Teacher],
    runs: Iterable[tuple[str, str, int]],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str, int], dict[str, Any]]]:
    teacher_results = {role: results[f"teacher_{role}"] for role in teachers}
    student_results = {(s, m, k): results[f"{s}__{m}__seed{k}"] for s, m, k in runs}
    return teacher_results, student_results


# ==============================================================================================
# The stages as a task graph (--jobs N)
# ==============================================================================================
def _train_task(
    config: _loop.TrainConfig, run_dir: Path, resume: bool, data: DataSource
) -> tuple[dict[str, Any], str]:
    """A worker's training run (:func:`_train_run`, no progress bars)."""
    row = {"status": "ran"}
    metrics = _train_run(
        config, run_dir, resume=resume, progress=False, train_data=data.load(), row=row
    )
    return metrics, row["status"]


def _craft_key(adv: Teacher, settings: Mapping[str, Any], attacks: Sequence[str]) -> str:
    stat = adv.checkpoint.stat()
    return json.dumps(
        [str(adv.checkpoint.resolve()), stat.st_mtime_ns, list(attacks), _json_settings(settings)]
    )


def _craft_task(
    adv: Teacher,
    data: DataSource,
    settings: Mapping[str, Any],
    attacks: Sequence[str],
    device: torch.device,
    path: Path,
) -> tuple[Path, str]:
    """Transfer examples crafted on the adversarial teacher (:func:`craft_transfer`), saved to
    ``path`` for the evaluation tasks; a file made for the same teacher checkpoint, attacks and
    settings is kept."""
    key = _craft_key(adv, settings, attacks)
    if path.exists():
        with contextlib.suppress(ValueError):
            if _checkpoints.safe_load(path).get("key") == key:
                return path, "skipped (complete)"
    crafted = _craft_on_teacher(adv, data.load(), settings, attacks, device)
    _checkpoints.atomic_save({"key": key, "crafted": crafted}, path)
    return path, "ran"


def _eval_task(
    job: _EvalJob,
    out: Path,
    data: DataSource,
    settings: Mapping[str, Any],
    device: torch.device,
    crafted_path: Path | None,
    resume: bool,
) -> tuple[dict[str, Any], str]:
    """A worker's evaluation (:func:`_run_eval_job`), read back when ``resume`` finds it
    complete."""
    if resume and _eval_complete(job, settings, out):
        return json.loads(job.path(out).read_text()), "skipped (complete)"
    crafted = None
    if crafted_path is not None and any(a.startswith("transfer_") for a in job.attacks):
        crafted = _checkpoints.safe_load(crafted_path)["crafted"]
    result = _run_eval_job(
        job, out, data.load(), settings, crafted=crafted, device=device, progress=False
    )
    return result, "ran"


def _task_graph(
    profile: Mapping[str, Any], out: Path, stages: _Stages, *, resume: bool
) -> tuple[list[Task], dict[str, Teacher]]:
    """Every stage after ``data`` as tasks (:mod:`.pool`), prerequisites first: the teachers
    trained here; each student run after the teachers its method needs; the transfer examples
    after the adversarial teacher; each evaluation after its model and the transfer examples.
    Loaded teachers are recorded as stages at once. Returns the tasks and the teachers."""
    settings = _eval_settings(profile)
    device = _device(profile)
    train_data = DataSource(profile["dataset"], "train", profile.get("data_dir"))
    test_data = DataSource(profile["dataset"], "test", profile.get("data_dir"))
    tasks: list[Task] = []
    teachers: dict[str, Teacher] = {}
    for role in _needed_teachers(profile):
        teacher, config = _teacher_entry(profile, out, role)
        teachers[role] = teacher
        if config is None:
            stages.record(f"teacher/{role}", "loaded", 0.0)
            continue
        tasks.append(
            Task(f"teacher/{role}", _train_task, (config, teacher.run_dir, resume, train_data))
        )
    trained = {task.name for task in tasks}

    def after(*names: str) -> tuple[str, ...]:
        return tuple(name for name in names if name in trained)

    paths = {role: str(t.checkpoint) for role, t in teachers.items()}
    runs = _run_list(profile)
    for student, method, seed in runs:
        spec = _methods.METHODS[method]
        needs = [f"teacher/{role}" for role in ROLES if getattr(spec, f"needs_{role}_teacher")]
        name = f"train/{student}/{method}/seed{seed}"
        config = student_config(profile, student, method, seed, teacher_paths=paths)
        run_dir = _run_dir(out, student, method, seed)
        tasks.append(Task(name, _train_task, (config, run_dir, resume, train_data), after(*needs)))
        trained.add(name)

    transfer = [a for a in settings["attacks"] if a.startswith("transfer_")]
    crafted_path = None
    if transfer:
        crafted_path = out / "eval" / "transfer_examples.pt"
        craft_args = (teachers["adv"], test_data, settings, transfer, device, crafted_path)
        tasks.append(Task("evaluate/craft-transfer", _craft_task, craft_args, after("teacher/adv")))
        trained.add("evaluate/craft-transfer")
    for job in _eval_jobs(profile, out, teachers, runs):
        if job.teacher is not None:
            needs = [f"teacher/{job.record['role']}"]
        else:
            record = job.record
            needs = [f"train/{record['student']}/{record['method']}/seed{record['train_seed']}"]
            needs += ["evaluate/craft-transfer"] * bool(set(job.attacks) & set(transfer))
        eval_args = (job, out, test_data, settings, device, crafted_path, resume)
        tasks.append(Task(f"evaluate/{job.name}", _eval_task, eval_args, after(*needs)))
    return tasks, teachers


def _run_task_graph(
    profile: Mapping[str, Any],
    out: Path,
    stages: _Stages,
    *,
    jobs: int,
    threads: int,
    resume: bool,
    progress: bool,
) -> tuple[
    dict[str, Teacher],
    dict[tuple[str, str, int], dict[str, Any]],
    dict[str, dict[str, Any]],
    dict[tuple[str, str, int], dict[str, Any]],
]:
    """The teachers, students and evaluations of :func:`_run_stages` in ``jobs`` worker
    processes (:func:`pool.run_tasks`); returns what the sequential stages return."""
    tasks, teachers = _task_graph(profile, out, stages, resume=resume)
    bar = _task_bar(len(tasks), progress)
    try:
        done = run_tasks(
            tasks,
            jobs=jobs,
            threads=threads,
            record=stages.record,
            on_start=lambda name: logger.info("stage %s: start", name),
            bar=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    teachers = {
        role: dataclasses.replace(t, train=done.get(f"teacher/{role}", t.train))
        for role, t in teachers.items()
    }
    runs = {(s, m, k): done[f"train/{s}/{m}/seed{k}"] for s, m, k in _run_list(profile)}
    evaluations = {
        name.removeprefix("evaluate/"): result
        for name, result in done.items()
        if name.startswith("evaluate/") and name != "evaluate/craft-transfer"
    }
    return teachers, runs, *_split_eval_results(evaluations, teachers, runs)


def _task_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional dependency of the integration
        return None
    return tqdm(total=total, desc="tasks", dynamic_ncols=True)


# ==============================================================================================
# Helpers
# ==============================================================================================
def _tqdm(iterable: Any, desc: str, enabled: bool, total: int | None = None) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional dependency of the integration
        return _NoBar(iterable)
    return tqdm(
        iterable, desc=desc, total=total, disable=not enabled, dynamic_ncols=True, leave=False
    )


class _NoBar:
    def __init__(self, iterable: Any) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable)

    def set_postfix_str(self, text: str) -> None:
        pass


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for a block (``None``: unchanged)."""
    if threads is None:
        yield
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        _bad("threads", threads, "None or an integer >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ==============================================================================================
# The whole pipeline
# ==============================================================================================
def reproduce(
    profile: Mapping[str, Any] | str,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    plots: bool = True,
    progress: bool = True,
    command: str | None = None,
    threads: int | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run the whole experiment of ``profile`` into the results directory ``out``.

    Under ``torchrun`` every stage runs on all ranks in one process group
    (:func:`loop.distributed_session`, or the caller's group if one is initialised): training
    is data-parallel, evaluations are sharded exactly with their counts summed (the numbers
    equal one process's, AutoAttack excepted), and rank 0 alone writes files and logs.

    Args:
        profile: a profile dict (:func:`load_profile`, :func:`apply_overrides`) or its name /
            path.
        out: the results directory. An existing one needs ``resume=True``. Under
            ``torch.distributed`` it must be on a file system every rank shares.
        resume: skip completed stages, continue interrupted runs (see the module doc).
        plots: write the figures.
        progress: tqdm bars (rank 0 only).
        command: the command line recorded in ``summary.md`` (default: ``sys.argv``).
        threads: ``torch.set_num_threads`` for the run (restored afterwards); default: the
            profile's ``threads``; ``None`` in both keeps torch's default. On a CPU shared with
            other jobs, 1 thread is often several times faster than oversubscribed cores.
            With ``jobs > 1`` it is per worker (default: the cores shared out).
        jobs: worker processes (:mod:`.pool`): the teachers, student runs and evaluations
            that do not wait for each other run side by side, each in a process with
            ``threads`` torch threads. The results equal those of ``jobs=1`` with the same
            threads. Not under ``torchrun``, where the processes already share each stage.

    Returns:
        The content of ``results.json`` (on every rank).
    """
    wall_start = time.perf_counter()
    started = datetime.datetime.now().astimezone()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        _bad("jobs", jobs, "an integer >= 1")
    if not isinstance(profile, Mapping):
        profile = load_profile(profile)
    validate_profile(profile)
    out = Path(out)
    command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    # One process group for every stage (under torchrun; a lone process runs alone).
    with _loop.distributed_session(profile.get("device", "auto")) as ddp:
        if ddp.enabled and jobs > 1:
            _bad("jobs", jobs, "1 under torchrun (its processes already share every stage)")
        config_path = out / "config.json"
        # Every rank looks before rank 0 writes (a collective), and they must see the same.
        exists = config_path.exists()
        _agree(exists, f"whether {str(config_path)!r} exists")
        if exists and not resume:
            raise ValueError(
                f"The results directory {str(out)!r} already holds a reproduction. Pass "
                "`resume=True` (--resume) to continue it, or choose another --out."
            )
        if ddp.main:
            out.mkdir(parents=True, exist_ok=True)
            _write_text(config_path, json.dumps(profile, indent=2) + "\n")
        threads = threads if threads is not None else profile.get("threads")
        if jobs > 1 and threads is None:
            threads = default_worker_threads(jobs)
        stages = _Stages(out / "stages.json", main=ddp.main)
        invocation = stages.invocation(started.isoformat(timespec="seconds"), command, jobs)
        with _torch_threads(threads), invocation:
            results = _run_stages(
                profile,
                out,
                ddp,
                stages,
                jobs=jobs,
                threads=threads,
                resume=resume,
                plots=plots,
                progress=progress,
                command=command,
                started=started,
                wall_start=wall_start,
            )
        # Every rank returns rank 0's results (one small all-gather).
        return ddp.gather_objects(results if ddp.main else None)[0]


def _run_stages(
    profile: Mapping[str, Any],
    out: Path,
    ddp: Any,
    stages: _Stages,
    *,
    jobs: int,
    threads: int | None,
    resume: bool,
    plots: bool,
    progress: bool,
    command: str,
    started: datetime.datetime,
    wall_start: float,
) -> dict[str, Any] | None:
    """The stages of :func:`reproduce`, in ``ddp``'s process group (or as a task graph in
    ``jobs`` worker processes); ``None`` on ranks > 0, which write nothing."""
    if ddp.main:
        logger.info(
            "reproduce: profile %s -> %s%s",
            profile["name"],
            out,
            f" ({ddp.world_size} processes)" if ddp.enabled else "",
        )

    with stages.stage("data") as row:
        # One process per node downloads a missing dataset; the others wait, then read it.
        node_main = _loop._local_rank(ddp) in (None, 0)

        def load(split: str) -> _data.ImageData:
            return _data.load_dataset(
                profile["dataset"],
                split,
                data_dir=profile.get("data_dir"),
                download=profile.get("download", True),
                progress=progress and ddp.main,
            )

        if node_main:
            train_data, test_data = load("train"), load("test")
        ddp.barrier()
        if not node_main:
            train_data, test_data = load("train"), load("test")
        row["status"] = f"{len(train_data)} train / {len(test_data)} test images"

    if jobs > 1:
        teachers, runs, teacher_results, student_results = _run_task_graph(
            profile,
            out,
            stages,
            jobs=jobs,
            threads=threads or 1,
            resume=resume,
            progress=progress,
        )
    else:
        teachers = prepare_teachers(
            profile, out, train_data=train_data, stages=stages, resume=resume, progress=progress
        )
        runs = train_students(
            profile,
            out,
            teachers,
            train_data=train_data,
            stages=stages,
            resume=resume,
            progress=progress,
        )
        teacher_results, student_results = evaluate_students(
            profile,
            out,
            teachers,
            runs,
            test_data=test_data,
            stages=stages,
            resume=resume,
            progress=progress,
        )
    if not ddp.main:
        return None
    return write_report(
        profile,
        out,
        teachers,
        teacher_results,
        student_results,
        runs,
        stages=stages,
        plots=plots,
        command=command,
        started=started,
        wall_start=wall_start,
    )


# ==============================================================================================
# Command line
# ==============================================================================================
def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``anl-mtard reproduce``: a profile, overrides, and the results directory."""
    parser = subparsers.add_parser(
        "reproduce",
        help="run the paper's experiment (teachers, every method, evaluation, tables, figures)",
        description=(
            "Reproduce MTARD (Zhao et al., ECCV 2022): teachers -> every method and ablation "
            "for each student and seed -> evaluation under the paper's attacks -> tables, "
            "figures and summary.md in --out. Profiles: " + ", ".join(profile_names()) + "."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--profile", default="default", help="packaged profile name or JSON path")
    parser.add_argument(
        "--out", default=None, help="results directory (default: mtard-results/<profile>)"
    )
    parser.add_argument("--data-dir", default=None, help="dataset folder")
    parser.add_argument("--model-dir", default=None, help="folder of the teachers' checkpoints")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, help="N: seeds 0 .. N-1")
    seeds.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds")
    parser.add_argument(
        "--methods", nargs="+", choices=METHOD_ORDER, default=None, help="methods to run"
    )
    parser.add_argument("--students", nargs="+", default=None, help="student architectures")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of every training stage (quick runs)"
    )
    parser.add_argument(
        "--train-subset", type=int, default=None, help="training images of every training stage"
    )
    parser.add_argument("--n-eval", type=int, default=None, help="test points evaluated")
    parser.add_argument(
        "--resume", action="store_true", help="skip completed stages, continue interrupted runs"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the profile's)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes: teachers, runs and evaluations that do not wait for each "
        "other run side by side (--threads is then per worker; default: the cores shared out)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not draw the figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_reproduce_cli)


def run_reproduce_cli(args: argparse.Namespace) -> int:
    """Run ``anl-mtard reproduce`` from parsed arguments; prints the white-box table.

    Under ``torchrun`` every rank runs the pipeline (see :func:`reproduce`); rank 0 prints.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logger.setLevel(logging.INFO)
    profile = apply_overrides(
        load_profile(args.profile),
        data_dir=args.data_dir,
        model_dir=args.model_dir,
        seeds=args.seeds,
        seed_list=args.seed_list,
        methods=args.methods,
        students=args.students,
        device=args.device,
        epochs=args.epochs,
        train_subset=args.train_subset,
        n_eval=args.n_eval,
        threads=args.threads,
    )
    out = Path(args.out) if args.out else Path("mtard-results") / profile["name"]
    results = reproduce(
        profile,
        out,
        resume=args.resume,
        plots=not args.no_plots,
        progress=not args.no_progress,
        jobs=args.jobs,
    )
    if not _loop._is_main_process():
        return 0
    print((out / "white_box.md").read_text())
    print(f"Results in {out} ({results['wall_time_s'] / 60:.1f} min); see {out / 'summary.md'}.")
    return 0
