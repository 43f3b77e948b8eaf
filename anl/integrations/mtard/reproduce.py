"""``anl-mtard reproduce``: the whole MTARD experiment, from a profile to a results directory.

The pipeline of the paper's Sec. 4 (Zhao et al., ECCV 2022), one function per stage, in the
order they run (:func:`reproduce` calls them top to bottom):

1. **Profile** (:func:`load_profile`, :func:`apply_overrides`): a JSON file of
   ``configs/`` (``default``, ``full``, ``smoke``, ``paper-cifar10``, ``paper-cifar100``) or
   any path; command-line flags override single entries. The resolved profile is written to
   ``<out>/config.json``.
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
5. **Report** (:func:`write_report`): ``white_box.md`` (Tables 2-3), ``black_box.md``
   (Tables 4-5), ``ablation.md`` (Fig. 2), ``teachers.md`` (Table 1), ``results.json``,
   figures (Fig. 2-4 analogues, ANL weights, accuracy per epoch) and ``summary.md`` (wall
   times, machine, command and a comparison with the paper's claims computed from the
   numbers).

Results directory::

    <out>/config.json                        the resolved profile
    <out>/teachers/{clean,adv}/              teacher run directories (when trained here)
    <out>/runs/<student>/<method>/seed<k>/   student run directories (loop.train)
    <out>/eval/*.json, *.md                  one evaluation per teacher and per run
    <out>/white_box.md, black_box.md, ablation.md, teachers.md, results.json, summary.md
    <out>/figures/*.png

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
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoints as _checkpoints
from . import data as _data
from . import evaluation as _evaluate
from . import loop as _loop
from . import methods as _methods
from .attacks import ATTACK_NAMES, make_attack, model_mode

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

CONFIG_DIR = Path(__file__).with_name("configs")
"""The folder of the packaged profiles (``configs/*.json``)."""

METHOD_ORDER = ("natural", "sat", "trades", "ard", "rslad", "baseline", "baseline_mt", "mtard")
"""Row order of the tables: the paper's (Tables 2-5), then the ablations, MTARD last."""

DEFENSE_LABELS = {
    "natural": "Natural",
    "sat": "SAT",
    "trades": "TRADES",
    "ard": "ARD",
    "rslad": "RSLAD",
    "baseline": "Baseline",
    "baseline_mt": "Baseline+MT",
    "mtard": "MTARD",
}
"""Row labels of the tables (the paper's names; Baseline+MT+ANL is MTARD)."""

BASELINES = ("sat", "trades", "ard", "rslad")
"""The methods MTARD is compared with in the paper's Tables 2-5."""

WHITE_BOX = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack")
BLACK_BOX = ("transfer_pgd", "transfer_cw", "square")
TABLE1_ATTACKS = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf")
ROLES = ("clean", "adv")

# TrainConfig fields that the pipeline sets itself: a profile may not give them.
_PIPELINE_FIELDS = frozenset(
    {
        "method",
        "dataset",
        "student",
        "seed",
        "device",
        "data_dir",
        "download",
        "clean_teacher",
        "adv_teacher",
        "clean_teacher_arch",
        "adv_teacher_arch",
        "clean_teacher_kwargs",
        "adv_teacher_kwargs",
    }
)
# Fields that may change between a finished run and a resumed reproduce: the loop's, and the
# teachers' paths (a moved results or model directory; the teachers are checked themselves).
_RESUME_MUTABLE = frozenset(
    {"device", "log_every", "data_dir", "download", "tensorboard", "clean_teacher", "adv_teacher"}
)

_PROFILE_KEYS = {
    "name": str,
    "description": str,
    "notes": list,
    "dataset": str,
    "data_dir": (str, type(None)),
    "model_dir": (str, type(None)),
    "download": bool,
    "device": str,
    "threads": (int, type(None)),
    "seeds": list,
    "students": list,
    "methods": list,
    "train": dict,
    "method_train": dict,
    "teachers": dict,
    "evaluation": dict,
    "paper_results": dict,
}
_REQUIRED_KEYS = ("name", "dataset", "seeds", "students", "methods", "train", "evaluation")
_TEACHER_KEYS = {"arch", "kwargs", "label", "path", "train", "checkpoint", "seed", "paper"}
_EVAL_KEYS = {
    "attacks",
    "checkpoint",
    "n_examples",
    "batch_size",
    "square_queries",
    "attack_overrides",
    "seed",
    "eps",
}
_CHECKPOINTS = ("best", "final")


def _bad(name: str, value: object, expected: str) -> None:
    raise ValueError(f"Parameter `{name}` should be {expected}. Found `{name} = {value!r}`.")


# ==============================================================================================
# 1. Profiles
# ==============================================================================================
def profile_names() -> list[str]:
    """Names of the packaged profiles (``configs/*.json``), sorted.

    Example:
        >>> {"default", "full", "paper-cifar10", "paper-cifar100"} <= set(profile_names())
        True
    """
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_profile(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a profile: a packaged name (``"default"``) or the path of a JSON file.

    The profile is validated (:func:`validate_profile`); a ``ValueError`` names the first
    wrong entry.
    """
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{text}.json"
        if not path.exists():
            _bad("profile", text, f"a packaged profile {profile_names()} or a JSON file path")
    try:
        profile = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Could not read the profile {str(path)!r}: {exc}") from exc
    validate_profile(profile)
    return profile


def validate_profile(profile: Mapping[str, Any]) -> None:
    """Check a profile's structure and values; raise ``ValueError`` naming the bad entry.

    Every training configuration it implies is built (:func:`student_config`,
    :func:`teacher_config`), so :class:`loop.TrainConfig` checks the training fields too.
    """
    if not isinstance(profile, Mapping):
        _bad("profile", profile, "a JSON object")
    unknown = sorted(set(profile) - set(_PROFILE_KEYS))
    if unknown:
        _bad("profile", unknown, f"a JSON object with keys among {sorted(_PROFILE_KEYS)}")
    for key in _REQUIRED_KEYS:
        if key not in profile:
            _bad(f"profile['{key}']", None, "given")
    for key, kind in _PROFILE_KEYS.items():
        if key in profile and not isinstance(profile[key], kind):
            _bad(f"profile['{key}']", profile[key], f"of type {kind}")
    threads = profile.get("threads")
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        _bad("profile['threads']", threads, "None or an integer >= 1")
    if profile["dataset"] not in _data.DATASETS:
        _bad("profile['dataset']", profile["dataset"], f"one of {sorted(_data.DATASETS)}")
    seeds = profile["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _bad("profile['seeds']", seeds, "a non-empty list of integers")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        _bad("profile['seeds']", seeds, "distinct integers >= 0")
    methods = profile["methods"]
    if not methods or len(set(methods)) != len(methods) or not set(methods) <= set(METHOD_ORDER):
        _bad("profile['methods']", methods, f"a non-empty list of distinct names of {METHOD_ORDER}")
    if not profile["students"] or len(set(profile["students"])) != len(profile["students"]):
        _bad("profile['students']", profile["students"], "a non-empty list of distinct names")
    forbidden = sorted(set(profile["train"]) & _PIPELINE_FIELDS)
    if forbidden:
        _bad("profile['train']", forbidden, "free of the fields the pipeline sets")
    for method, overrides in profile.get("method_train", {}).items():
        if method not in METHOD_ORDER or not isinstance(overrides, dict):
            _bad("profile['method_train']", {method: overrides}, "a dict method -> field dict")
        bad = sorted(set(overrides) & _PIPELINE_FIELDS)
        if bad:
            _bad(f"profile['method_train']['{method}']", bad, "free of pipeline fields")
    _validate_evaluation(profile)
    teachers = profile.get("teachers", {})
    needed = _needed_teachers(profile)
    for role in needed:
        if role not in teachers:
            _bad("profile['teachers']", sorted(teachers), f"a spec for the {role!r} teacher")
    for role, spec in teachers.items():
        _validate_teacher(profile, role, spec)
    # Build every training configuration once: TrainConfig validates the fields.
    placeholder = {role: "teacher.pt" for role in ROLES}
    for student in profile["students"]:
        for method in methods:
            student_config(profile, student, method, seeds[0], teacher_paths=placeholder)


def _validate_evaluation(profile: Mapping[str, Any]) -> None:
    evaluation = profile["evaluation"]
    unknown = sorted(set(evaluation) - _EVAL_KEYS)
    if unknown:
        _bad("profile['evaluation']", unknown, f"keys among {sorted(_EVAL_KEYS)}")
    attacks = evaluation.get("attacks", [])
    if not isinstance(attacks, list) or len(set(attacks)) != len(attacks):
        _bad("profile['evaluation']['attacks']", attacks, "a list of distinct attack names")
    if not set(attacks) <= set(ATTACK_NAMES):
        _bad("profile['evaluation']['attacks']", attacks, f"names of {ATTACK_NAMES}")
    if evaluation.get("checkpoint", "best") not in _CHECKPOINTS:
        _bad("profile['evaluation']['checkpoint']", evaluation["checkpoint"], "best | final")
    for key, minimum in (("batch_size", 1), ("square_queries", 1), ("seed", 0)):
        value = evaluation.get(key, minimum)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            _bad(f"profile['evaluation']['{key}']", value, f"an integer >= {minimum}")
    n = evaluation.get("n_examples")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        _bad("profile['evaluation']['n_examples']", n, "None or an integer >= 1")
    eps = evaluation.get("eps")
    if eps is not None and (not isinstance(eps, (int, float)) or not eps > 0):
        _bad("profile['evaluation']['eps']", eps, "None or a positive number")
    overrides = evaluation.get("attack_overrides", {})
    if not isinstance(overrides, dict) or not set(overrides) <= set(attacks):
        _bad("profile['evaluation']['attack_overrides']", overrides, "a dict keyed by attacks")
    for name, values in overrides.items():
        make_attack(name, eps=0.1, surrogate=nn.Identity(), **values)  # unknown keys raise


def _validate_teacher(profile: Mapping[str, Any], role: str, spec: Any) -> None:
    where = f"profile['teachers']['{role}']"
    if role not in ROLES or not isinstance(spec, dict):
        _bad("profile['teachers']", {role: spec}, "a dict with keys 'clean' and/or 'adv'")
    unknown = sorted(set(spec) - _TEACHER_KEYS)
    if unknown:
        _bad(where, unknown, f"keys among {sorted(_TEACHER_KEYS)}")
    if not isinstance(spec.get("arch"), str):
        _bad(f"{where}['arch']", spec.get("arch"), "an architecture name")
    if ("path" in spec) == ("train" in spec):
        _bad(where, sorted(spec), "exactly one of 'path' (load) and 'train' (train here)")
    if "path" in spec:
        if not isinstance(spec["path"], str) or not spec["path"]:
            _bad(f"{where}['path']", spec["path"], "a path, optionally with {model_dir}")
        if "{model_dir}" in spec["path"] and "{" in spec["path"].replace("{model_dir}", ""):
            _bad(f"{where}['path']", spec["path"], "a path whose only placeholder is {model_dir}")
    else:
        if not isinstance(spec["train"], dict) or "method" not in spec["train"]:
            _bad(f"{where}['train']", spec["train"], "a dict of TrainConfig fields with 'method'")
        if spec.get("checkpoint", "best") not in _CHECKPOINTS:
            _bad(f"{where}['checkpoint']", spec.get("checkpoint"), "best | final")
        teacher_config(profile, role)  # TrainConfig validates the fields


def _needed_teachers(profile: Mapping[str, Any]) -> list[str]:
    """Roles of the teachers the profile's methods and transfer attacks need."""
    needed = set()
    for method in profile["methods"]:
        spec = _methods.METHODS[method]
        if spec.needs_clean_teacher:
            needed.add("clean")
        if spec.needs_adv_teacher:
            needed.add("adv")
    if any(a.startswith("transfer_") for a in profile["evaluation"].get("attacks", [])):
        needed.add("adv")
    return [role for role in ROLES if role in needed]


def apply_overrides(
    profile: Mapping[str, Any],
    *,
    data_dir: str | None = None,
    model_dir: str | None = None,
    seeds: int | None = None,
    seed_list: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    students: Sequence[str] | None = None,
    device: str | None = None,
    epochs: int | None = None,
    train_subset: int | None = None,
    n_eval: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """A copy of ``profile`` with command-line overrides applied (``None``: keep).

    ``seeds=N`` means seeds ``0 .. N-1``; ``seed_list`` gives them explicitly. ``epochs`` and
    ``train_subset`` apply to *every* training stage: students of every method and teachers
    trained here (per-method and per-teacher values are replaced too). ``n_eval`` sets the
    number of test points evaluated, ``threads`` the torch CPU threads. The result is
    validated.

    Example:
        >>> p = apply_overrides(load_profile("default"), seeds=3, methods=["sat", "mtard"])
        >>> p["seeds"], p["methods"]
        ([0, 1, 2], ['sat', 'mtard'])
    """
    out = copy.deepcopy(dict(profile))
    if seeds is not None and seed_list is not None:
        _bad("seeds", seeds, "None when `seed_list` is given")
    if seeds is not None:
        if not isinstance(seeds, int) or seeds < 1:
            _bad("seeds", seeds, "an integer >= 1")
        out["seeds"] = list(range(seeds))
    if seed_list is not None:
        out["seeds"] = [int(s) for s in seed_list]
    if methods is not None:
        out["methods"] = list(dict.fromkeys(methods))
    if students is not None:
        out["students"] = list(dict.fromkeys(students))
    if data_dir is not None:
        out["data_dir"] = str(data_dir)
    if model_dir is not None:
        out["model_dir"] = str(model_dir)
    if device is not None:
        out["device"] = device
    if threads is not None:
        out["threads"] = threads
    for key, value in (("epochs", epochs), ("train_subset", train_subset)):
        if value is None:
            continue
        out["train"][key] = value
        for overrides in out.get("method_train", {}).values():
            if key in overrides:
                overrides[key] = value
        for spec in out.get("teachers", {}).values():
            if "train" in spec:
                spec["train"][key] = value
    if n_eval is not None:
        out["evaluation"]["n_examples"] = n_eval
    validate_profile(out)
    return out


# ----------------------------------------------------------------------------------------------
# Training configurations implied by a profile
# ----------------------------------------------------------------------------------------------
def teacher_config(profile: Mapping[str, Any], role: str) -> _loop.TrainConfig:
    """The :class:`loop.TrainConfig` of a teacher trained here (``teachers[role]['train']``).

    The profile's shared ``train`` fields, then the teacher's own; the teacher's
    architecture is the run's "student".
    """
    spec = profile["teachers"][role]
    values = {**profile["train"], **spec["train"]}
    values.update(
        dataset=profile["dataset"],
        student=spec["arch"],
        student_kwargs=dict(spec.get("kwargs", {})),
        seed=int(spec.get("seed", 0)),
        device=profile.get("device", "auto"),
        data_dir=profile.get("data_dir"),
        download=profile.get("download", True),
    )
    return _loop.TrainConfig.from_dict(values)


def student_config(
    profile: Mapping[str, Any],
    student: str,
    method: str,
    seed: int,
    *,
    teacher_paths: Mapping[str, str],
) -> _loop.TrainConfig:
    """The :class:`loop.TrainConfig` of one student run.

    The profile's shared ``train`` fields, then ``method_train[method]``; the teachers the
    method needs are given by path (``teacher_paths[role]``), with their architecture when
    they are loaded from a foreign checkpoint (``arch=None``: this project's format).
    """
    spec = _methods.METHODS[method]
    values = {**profile["train"], **profile.get("method_train", {}).get(method, {})}
    values.update(
        method=method,
        dataset=profile["dataset"],
        student=student,
        seed=int(seed),
        device=profile.get("device", "auto"),
        data_dir=profile.get("data_dir"),
        download=profile.get("download", True),
    )
    for role, needed in (("clean", spec.needs_clean_teacher), ("adv", spec.needs_adv_teacher)):
        if not needed:
            continue
        teacher = profile["teachers"][role]
        values[f"{role}_teacher"] = str(teacher_paths[role])
        if "path" in teacher:  # a foreign checkpoint: built by name, then filled
            values[f"{role}_teacher_arch"] = teacher["arch"]
            values[f"{role}_teacher_kwargs"] = dict(teacher.get("kwargs", {}))
    return _loop.TrainConfig.from_dict(values)


def teacher_path(profile: Mapping[str, Any], role: str) -> Path:
    """The checkpoint path of a loaded teacher, with ``{model_dir}`` filled in."""
    template = profile["teachers"][role]["path"]
    if "{model_dir}" in template:
        if not profile.get("model_dir"):
            _bad(
                "model_dir",
                profile.get("model_dir"),
                f"a folder (--model-dir): the {role} teacher's path is {template!r}",
            )
        template = template.replace("{model_dir}", str(profile["model_dir"]))
    return Path(template).expanduser()


# ==============================================================================================
# Stage bookkeeping
# ==============================================================================================
@dataclasses.dataclass
class _Stages:
    """Wall time and status of each stage, for this invocation and across resumed ones.

    Stages that did work are recorded in ``<out>/stages.json`` as soon as they end, so that a
    resumed reproduction can report how long its skipped stages took when they ran.
    """

    path: Path
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    history: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    main: bool = True  # rank 0 (or a lone process): the one that logs and writes the file

    def __post_init__(self) -> None:
        if self.main and self.path.exists():
            with contextlib.suppress(json.JSONDecodeError):
                self.history = json.loads(self.path.read_text())

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        if self.main:
            logger.info("stage %s: start", name)
        row: dict[str, Any] = {"stage": name, "status": "ran"}
        start = time.perf_counter()
        try:
            yield row
        finally:
            row["wall_s"] = time.perf_counter() - start
            if row["status"].startswith("skipped"):
                if name in self.history:
                    row["earlier_s"] = self.history[name]["wall_s"]
            else:
                self.history[name] = {"status": row["status"], "wall_s": row["wall_s"]}
                if self.main:
                    _write_text(self.path, json.dumps(self.history, indent=2) + "\n")
            self.rows.append(row)
            if self.main:
                logger.info("stage %s: %s in %.1f s", name, row["status"], row["wall_s"])


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


def _checkpoint_path(run_dir: Path, which: str) -> Path:
    """``best.pt`` (validation W-Robust) or ``final.pt`` of a :func:`loop.train` run directory."""
    return run_dir / "checkpoints" / "best.pt" if which == "best" else run_dir / "final.pt"


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
@dataclasses.dataclass
class Teacher:
    """A teacher of the experiment: where it comes from and its checkpoint."""

    role: str
    arch: str
    label: str
    source: str  # "trained here" | "loaded"
    checkpoint: Path
    foreign: bool  # a foreign checkpoint (needs arch) rather than this project's format
    kwargs: dict[str, Any]
    run_dir: Path | None = None
    train: dict[str, Any] | None = None

    def load(self, info: _data.DatasetInfo, device: torch.device) -> nn.Module:
        """The teacher in eval mode, frozen, BatchNorm folded, on ``device``."""
        return _loop.load_teacher_model(
            self.checkpoint,
            arch=self.arch if self.foreign else None,
            num_classes=info.num_classes,
            in_channels=info.channels,
            model_kwargs=self.kwargs or None,
            device=device,
        )


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
        spec = profile["teachers"][role]
        label = spec.get("label", f"{spec['arch']} ({role})")
        with stages.stage(f"teacher/{role}") as row:
            if "path" in spec:
                path = teacher_path(profile, role)
                if not path.is_file():
                    raise FileNotFoundError(
                        f"The {role} teacher checkpoint {path} does not exist. Put the "
                        f"paper's teacher there (docs/mtard.md, 'Real teachers'), or give "
                        f"--model-dir."
                    )
                row["status"] = "loaded"
                teachers[role] = Teacher(
                    role, spec["arch"], label, "loaded", path, True, dict(spec.get("kwargs", {}))
                )
                continue
            config = teacher_config(profile, role)
            run_dir = out / "teachers" / role
            metrics = _train_run(
                config,
                run_dir,
                resume=resume,
                progress=progress,
                train_data=train_data,
                row=row,
            )
            which = spec.get("checkpoint", "best")
            checkpoint = _checkpoint_path(run_dir, which)
            teachers[role] = Teacher(
                role,
                spec["arch"],
                label,
                "trained here",
                checkpoint,
                False,
                dict(spec.get("kwargs", {})),
                run_dir=run_dir,
                train=metrics,
            )
    return teachers


# ==============================================================================================
# 3. Students
# ==============================================================================================
def _run_dir(out: Path, student: str, method: str, seed: int) -> Path:
    return out / "runs" / student / method / f"seed{seed}"


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
def _eval_settings(profile: Mapping[str, Any]) -> dict[str, Any]:
    evaluation = profile["evaluation"]
    info = _data.DATASETS[profile["dataset"]]
    return {
        "attacks": list(evaluation.get("attacks", [])),
        "checkpoint": evaluation.get("checkpoint", "best"),
        "n_examples": evaluation.get("n_examples"),
        "batch_size": int(evaluation.get("batch_size", 256)),
        "square_queries": int(evaluation.get("square_queries", 5000)),
        "attack_overrides": dict(evaluation.get("attack_overrides", {})),
        "seed": int(evaluation.get("seed", 0)),
        "eps": float(evaluation.get("eps") or info.default_eps),
    }


def _device(profile: Mapping[str, Any]) -> torch.device:
    """The profile's device for this process (``cuda`` is ``cuda:LOCAL_RANK`` under torchrun)."""
    local_rank = _loop._local_rank(_loop._dist_info())
    return _loop.resolve_device(profile.get("device", "auto"), local_rank)


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
) -> dict[str, dict[str, Any]]:
    """Transfer adversarial examples crafted once on ``surrogate`` for the first test points.

    Each attack is :func:`attacks.make_attack` with the profile's settings, keyed by the same
    per-point seeds as :func:`evaluation.evaluate` (the dataset index), so the examples are
    exactly those ``evaluate(..., ["transfer_pgd"], surrogate=...)`` would craft for any
    student: they depend on the surrogate only. With ``rank`` and ``world_size``, only the
    shard ``indices[rank::world_size]`` is crafted (the shard :func:`evaluation.evaluate`
    attacks on that rank). Returns ``{attack: {"x_adv": Tensor (CPU), "indices": the dataset
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
    surrogate = surrogate.to(device)
    out: dict[str, list[Tensor]] = {name: [] for name in attacks}
    batches = _evaluate._batches(data, indices, batch_size, device)
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
) -> dict[str, dict[str, Any]]:
    """The entries :func:`evaluation.evaluate` gives for transfer attacks, on crafted examples.

    ``crafted`` is :func:`craft_transfer`'s output (this rank's shard under
    ``torch.distributed``: the counts are then summed over the ``world_size`` ranks).
    """
    model.to(device)
    results = {}
    for name, entry in crafted.items():
        x_adv_all = entry["x_adv"]
        indices = entry.get("indices")
        if indices is None:
            indices = torch.arange(x_adv_all.shape[0])
        counts = torch.zeros(4, dtype=torch.int64)  # points, clean, robust, adversarial correct
        start = 0
        with model_mode(model, "eval"), torch.no_grad():
            for x, y, _ids in _evaluate._batches(data, indices, batch_size, device):
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


def _eval_complete(
    path: Path, attacks: Sequence[str], settings: Mapping[str, Any], key: str, checkpoint: Path
) -> bool:
    """Whether ``path`` holds an evaluation of ``checkpoint`` (not older than it) with these
    attacks and settings."""
    if not path.exists() or path.stat().st_mtime_ns < checkpoint.stat().st_mtime_ns:
        return False
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return (
        list(saved.get("attacks", {})) == list(attacks)
        and saved.get("checkpoint_key") == key
        and saved.get("eval_settings") == _json_settings(settings)
    )


def _json_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in settings.items() if k != "attacks"}))


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
    info = _data.DATASETS[profile["dataset"]]
    device = _device(profile)
    eval_dir = out / "eval"
    attacks = settings["attacks"]

    # The evaluations to run: (file stem, checkpoint, loader, attacks, record fields).
    jobs = []
    for role, teacher in teachers.items():
        jobs.append(
            (
                f"teacher_{role}",
                teacher.checkpoint,
                lambda t=teacher: t.load(info, device),
                [a for a in TABLE1_ATTACKS if a in attacks] or list(TABLE1_ATTACKS[:1]),
                {"defense": teacher.label, "role": role},
            )
        )
    for student, method, seed in runs:
        checkpoint = _checkpoint_path(_run_dir(out, student, method, seed), settings["checkpoint"])
        jobs.append(
            (
                f"{student}__{method}__seed{seed}",
                checkpoint,
                lambda c=checkpoint: _checkpoints.load_model(c, map_location=device),
                attacks,
                {
                    "defense": DEFENSE_LABELS[method],
                    "student": student,
                    "method": method,
                    "train_seed": seed,
                },
            )
        )

    # Evaluations that a resume can read back. Decided once, before anything is written; the
    # ranks must agree (each evaluation is a collective).
    done = {
        name: resume
        and _eval_complete(
            eval_dir / f"{name}.json",
            wanted,
            settings,
            _checkpoint_key(checkpoint, out),
            checkpoint,
        )
        for name, checkpoint, _, wanted, _ in jobs
    }
    _agree(done, f"which evaluations in {str(eval_dir)!r} are complete")

    # Transfer examples: crafted once on the adversarial teacher, if any evaluation needs them.
    crafted = None
    transfer = [a for a in attacks if a.startswith("transfer_")]
    if transfer and any(not done[n] for n, _, _, w, _ in jobs if set(w) & set(transfer)):
        with stages.stage("evaluate/craft-transfer"):
            crafted = craft_transfer(
                teachers["adv"].load(info, device),
                test_data,
                transfer,
                eps=settings["eps"],
                n_examples=settings["n_examples"],
                batch_size=settings["batch_size"],
                device=device,
                seed=settings["seed"],
                attack_overrides=settings["attack_overrides"],
                progress=progress and ddp.main,
                rank=ddp.rank,
                world_size=ddp.world_size,
            )

    results: dict[str, dict[str, Any]] = {}
    for name, checkpoint, load, wanted, extra in jobs:
        path = eval_dir / f"{name}.json"
        with stages.stage(f"evaluate/{name}") as row:
            if done[name]:
                row["status"] = "skipped (complete)"
                results[name] = json.loads(path.read_text())
                continue
            result = _evaluate_model(
                load(),
                test_data,
                settings,
                wanted,
                crafted=crafted,
                device=device,
                progress=progress and ddp.main,
                rank=ddp.rank,
                world_size=ddp.world_size,
            )
            result.update(
                extra,
                checkpoint=str(checkpoint),
                checkpoint_key=_checkpoint_key(checkpoint, out),
                eval_settings=_json_settings(settings),
            )
            if ddp.main:
                _evaluate.write_results(result, eval_dir, name, defense=extra["defense"])
            results[name] = result
    teacher_results = {role: results[f"teacher_{role}"] for role in teachers}
    student_results = {(s, m, k): results[f"{s}__{m}__seed{k}"] for s, m, k in runs}
    return teacher_results, student_results


# ==============================================================================================
# 5. Report
# ==============================================================================================
def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (``n - 1``; ``None`` with one value)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return {"mean": float(array.mean()), "std": std, "n": len(array)}


def aggregate(
    student_results: Mapping[tuple[str, str, int], Mapping[str, Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean and std over seeds: ``{student: {method: {"clean", "attacks": {a: {...}}}}}``."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for (student, method, _seed), result in student_results.items():
        grouped.setdefault((student, method), []).append(result)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (student, method), results in grouped.items():
        attacks = list(results[0]["attacks"])
        out.setdefault(student, {})[method] = {
            "seeds": [r["train_seed"] for r in results],
            "clean": _mean_std([r["clean"]["accuracy"] for r in results]),
            "attacks": {
                a: {
                    "robust": _mean_std([r["attacks"][a]["robust"] for r in results]),
                    "w_robust": _mean_std([r["attacks"][a]["w_robust"] for r in results]),
                }
                for a in attacks
            },
        }
    return out


def _table_rows(
    agg: Mapping[str, Mapping[str, Any]], dataset: str, attacks: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    for attack in attacks:
        for method in METHOD_ORDER:
            if method not in agg or attack not in agg[method]["attacks"]:
                continue
            entry = agg[method]
            values = entry["attacks"][attack]
            rows.append(
                {
                    "dataset": dataset,
                    "defense": DEFENSE_LABELS[method],
                    "attack": attack,
                    "clean": entry["clean"]["mean"],
                    "clean_std": entry["clean"]["std"],
                    "robust": values["robust"]["mean"],
                    "robust_std": values["robust"]["std"],
                    "w_robust": values["w_robust"]["mean"],
                    "w_robust_std": values["w_robust"]["std"],
                }
            )
    return rows


def _pct(stat: Mapping[str, Any]) -> str:
    text = f"{100 * stat['mean']:.2f}"
    return text if stat.get("std") is None else f"{text} ± {100 * stat['std']:.2f}"


def _table_caption(profile: Mapping[str, Any], student: str, agg: Mapping[str, Any]) -> str:
    settings = _eval_settings(profile)
    n_seeds = max(len(v["seeds"]) for v in agg.values())
    title = _evaluate.DATASET_TITLES.get(profile["dataset"], profile["dataset"])
    return (
        f"## {student} on {title}\n\n"
        f"Mean ± sample std over {n_seeds} seed(s); {settings['checkpoint']} checkpoint "
        f"(validation W-Robust); L-inf eps = {settings['eps']:.4g}; "
        f"{settings['n_examples'] or 'all'} test points. Robust counts a point only when it is "
        f"right on both the clean and the attacked input. W-Robust = (Clean + Robust) / 2 "
        f"(Eq. 12)."
    )


def _attack_table(
    profile: Mapping[str, Any], agg: Mapping[str, Any], attacks: Sequence[str], heading: str
) -> str:
    parts = [heading]
    for student, per_method in agg.items():
        present = [a for a in attacks if any(a in v["attacks"] for v in per_method.values())]
        if not present:
            continue
        parts.append(_table_caption(profile, student, per_method))
        parts.append(_evaluate.results_table(_table_rows(per_method, profile["dataset"], present)))
    return "\n\n".join(parts) + "\n"


def _ablation_table(profile: Mapping[str, Any], agg: Mapping[str, Any]) -> str:
    labels = {
        "baseline": "Baseline",
        "baseline_mt": "Baseline+MT",
        "mtard": "Baseline+MT+ANL (MTARD)",
    }
    parts = [
        "# Ablation (paper Fig. 2): one adversarial teacher, + clean teacher (constant 0.5/0.5), "
        "+ ANL"
    ]
    for student, per_method in agg.items():
        present = [m for m in labels if m in per_method]
        if not present:
            continue
        attacks = list(per_method[present[0]]["attacks"])
        names = [_evaluate.ATTACK_TITLES.get(a, a) for a in attacks]
        parts.append(_table_caption(profile, student, per_method))
        for key, what in (("robust", "Robust accuracy (%)"), ("w_robust", "W-Robust (%)")):
            lines = [
                f"{what}:",
                "",
                "| Variant | Clean | " + " | ".join(names) + " |",
                "|---|---:|" + "---:|" * len(names),
            ]
            for m in present:
                cells = [_pct(per_method[m]["attacks"][a][key]) for a in attacks]
                lines.append(
                    f"| {labels[m]} | {_pct(per_method[m]['clean'])} | " + " | ".join(cells) + " |"
                )
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _teachers_table(
    profile: Mapping[str, Any],
    teachers: Mapping[str, Teacher],
    results: Mapping[str, Mapping[str, Any]],
) -> str:
    title = _evaluate.DATASET_TITLES.get(profile["dataset"], profile["dataset"])
    attacks = [a for a in TABLE1_ATTACKS if any(a in r["attacks"] for r in results.values())]
    names = [_evaluate.ATTACK_TITLES[a] for a in attacks]
    lines = [
        "# Teachers (paper Table 1 analogue)",
        "",
        f"{title}, robust accuracy under each attack (%), {_eval_settings(profile)['eps']:.4g} "
        "L-inf.",
        "",
        "| Model | Type | Source | Clean | " + " | ".join(names) + " |",
        "|---|---|---|---:|" + "---:|" * len(names),
    ]
    for role, teacher in teachers.items():
        r = results[role]
        cells = [f"{100 * r['attacks'][a]['robust']:.2f}" for a in attacks]
        kind = "Clean" if role == "clean" else "Adv"
        lines.append(
            f"| {teacher.label} | {kind} | {teacher.source} | "
            f"{100 * r['clean']['accuracy']:.2f} | " + " | ".join(cells) + " |"
        )
        paper = profile["teachers"][role].get("paper")
        if paper:
            ref = [f"{paper.get(a, float('nan')):.2f}" for a in attacks]
            lines.append(
                f"| {teacher.label} (paper Table 1) | {kind} | paper | {paper['clean']:.2f} | "
                + " | ".join(ref)
                + " |"
            )
    if any(t.source == "trained here" for t in teachers.values()):
        lines += [
            "",
            "The teachers above were **trained here** with the same loop as the students, not "
            "loaded: the paper's teachers (CIFAR ResNet-56 / WRN-34-10 / WRN-22-6 / WRN-70-16) "
            "cannot be had on this machine, and this profile's dataset has no published "
            "teachers.",
        ]
    return "\n".join(lines) + "\n"


def compare_with_claims(
    agg: Mapping[str, Mapping[str, Any]], attacks: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The paper's claims about MTARD, measured on these numbers, per student.

    Claims (Sec. 4.2): (1) higher clean accuracy than the baselines (SAT, TRADES, ARD, RSLAD)
    at (2) similar robustness, hence (3) the best W-Robust, and (4) the largest gains under
    black-box attacks. For each attack: ``MTARD - best baseline`` of robust and W-Robust
    accuracy (in points), and MTARD's rank by W-Robust among MTARD and the baselines.
    """
    out: dict[str, dict[str, Any]] = {}
    for student, per_method in agg.items():
        baselines = [m for m in BASELINES if m in per_method]
        if "mtard" not in per_method or not baselines:
            continue
        mt = per_method["mtard"]
        best_clean = max(baselines, key=lambda m: per_method[m]["clean"]["mean"])
        entry: dict[str, Any] = {
            "baselines": baselines,
            "clean": {
                "mtard": 100 * mt["clean"]["mean"],
                "best_baseline": best_clean,
                "best_baseline_value": 100 * per_method[best_clean]["clean"]["mean"],
                "delta": 100 * (mt["clean"]["mean"] - per_method[best_clean]["clean"]["mean"]),
            },
            "attacks": {},
        }
        for attack in attacks:
            if attack not in mt["attacks"]:
                continue
            row = {}
            for key in ("robust", "w_robust"):
                best = max(
                    baselines, key=lambda m, k=key: per_method[m]["attacks"][attack][k]["mean"]
                )
                value = mt["attacks"][attack][key]["mean"]
                row[key] = {
                    "mtard": 100 * value,
                    "best_baseline": best,
                    "best_baseline_value": 100 * per_method[best]["attacks"][attack][key]["mean"],
                    "delta": 100 * (value - per_method[best]["attacks"][attack][key]["mean"]),
                }
            scores = sorted(
                (
                    per_method[m]["attacks"][attack]["w_robust"]["mean"]
                    for m in [*baselines, "mtard"]
                ),
                reverse=True,
            )
            row["w_robust_rank"] = 1 + scores.index(mt["attacks"][attack]["w_robust"]["mean"])
            entry["attacks"][attack] = row
        white = [a for a in entry["attacks"] if a in WHITE_BOX]
        black = [a for a in entry["attacks"] if a in BLACK_BOX]
        for name, group in (("white_box", white), ("black_box", black)):
            if group:
                entry[f"{name}_mean_w_robust_delta"] = float(
                    np.mean([entry["attacks"][a]["w_robust"]["delta"] for a in group])
                )
        entry["best_w_robust_count"] = sum(
            1 for a in entry["attacks"].values() if a["w_robust_rank"] == 1
        )
        if "baseline" in per_method and "baseline_mt" in per_method:
            key = "pgd_trades" if "pgd_trades" in mt["attacks"] else next(iter(mt["attacks"]), None)
            if key is not None:
                entry["ablation"] = {
                    "attack": key,
                    **{
                        m: {
                            "clean": 100 * per_method[m]["clean"]["mean"],
                            "w_robust": 100 * per_method[m]["attacks"][key]["w_robust"]["mean"],
                        }
                        for m in ("baseline", "baseline_mt", "mtard")
                    },
                }
        out[student] = entry
    return out


def _claims_text(comparison: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not comparison:
        return ["MTARD or the baselines were not run: no comparison."]
    lines = []
    for student, c in comparison.items():
        lines.append(f"### {student}")
        lines.append("")
        clean = c["clean"]
        verdict = "holds here" if clean["delta"] > 0 else "does NOT hold here"
        lines.append(
            f"- Claim 1, higher clean accuracy: MTARD clean − best baseline clean "
            f"({DEFENSE_LABELS[clean['best_baseline']]}) = {clean['delta']:+.2f} points "
            f"({clean['mtard']:.2f} vs {clean['best_baseline_value']:.2f}): {verdict}. "
            "Paper, ResNet-18 on CIFAR-10: +3.16 (87.36 vs 84.20, SAT)."
        )
        for attack, row in c["attacks"].items():
            title = _evaluate.ATTACK_TITLES.get(attack, attack)
            r, w = row["robust"], row["w_robust"]
            lines.append(
                f"- {title}: robust MTARD − best baseline ({DEFENSE_LABELS[r['best_baseline']]}) "
                f"= {r['delta']:+.2f}; W-Robust MTARD − best baseline "
                f"({DEFENSE_LABELS[w['best_baseline']]}) = {w['delta']:+.2f}; MTARD ranks "
                f"#{row['w_robust_rank']} of {len(c['baselines']) + 1} by W-Robust."
            )
        n = len(c["attacks"])
        white = [a for a in c["attacks"] if a in WHITE_BOX]
        if white:
            deltas = [c["attacks"][a]["robust"]["delta"] for a in white]
            lines.append(
                f"- Claim 2, similar robustness: MTARD robust − best baseline robust ranges "
                f"from {min(deltas):+.2f} to {max(deltas):+.2f} points under the white-box "
                "attacks (paper, ResNet-18 CIFAR-10: from −4.10 under CW_inf to +0.79 under "
                "FGSM, both vs RSLAD; −2.13 under PGD_TRADES)."
            )
        lines.append(
            f"- Claim 3, best W-Robust: MTARD has the best W-Robust under "
            f"{c['best_w_robust_count']} of {n} attacks "
            f"({'holds' if c['best_w_robust_count'] == n else 'holds partly' if c['best_w_robust_count'] else 'does NOT hold'} here)."
        )
        if "white_box_mean_w_robust_delta" in c and "black_box_mean_w_robust_delta" in c:
            wb, bb = c["white_box_mean_w_robust_delta"], c["black_box_mean_w_robust_delta"]
            lines.append(
                f"- Claim 4, largest gains under black-box attacks: mean W-Robust delta "
                f"black-box {bb:+.2f} vs white-box {wb:+.2f} "
                f"({'holds' if bb > wb and bb > 0 else 'does NOT hold'} here; paper, ResNet-18 "
                "CIFAR-10, Square: +4.97 vs ARD)."
            )
        if "ablation" in c:
            a = c["ablation"]
            title = _evaluate.ATTACK_TITLES.get(a["attack"], a["attack"])
            lines.append(
                f"- Ablation (Fig. 2), clean / W-Robust under {title}: Baseline "
                f"{a['baseline']['clean']:.2f} / {a['baseline']['w_robust']:.2f}, Baseline+MT "
                f"{a['baseline_mt']['clean']:.2f} / {a['baseline_mt']['w_robust']:.2f}, MTARD "
                f"{a['mtard']['clean']:.2f} / {a['mtard']['w_robust']:.2f} (paper: each "
                "component improves W-Robust)."
            )
        lines.append("")
    lines.append(
        "Differences smaller than the seeds' standard deviations (tables) are not significant."
    )
    return lines


def _paper_comparison(profile: Mapping[str, Any], agg: Mapping[str, Any]) -> list[str]:
    """Our numbers next to the paper's (``profile['paper_results']``, in percent)."""
    reference = profile.get("paper_results", {})
    lines: list[str] = []
    for student, per_method in agg.items():
        paper = reference.get(student)
        if not paper:
            continue
        attacks = [a for a in (*WHITE_BOX, *BLACK_BOX) if any(a in p for p in paper.values())]
        lines += [
            f"### {student}: here vs paper (robust accuracy, %)",
            "",
            "| Defense | Clean here | Clean paper | "
            + " | ".join(f"{_evaluate.ATTACK_TITLES[a]} here | paper" for a in attacks)
            + " |",
            "|---|---:|---:|" + "---:|---:|" * len(attacks),
        ]
        for method in METHOD_ORDER:
            if method not in paper:
                continue
            ours = per_method.get(method)
            cells = [
                f"{100 * ours['clean']['mean']:.2f}" if ours else "–",
                f"{paper[method]['clean']:.2f}",
            ]
            for a in attacks:
                here = ours["attacks"].get(a) if ours else None
                cells.append(f"{100 * here['robust']['mean']:.2f}" if here else "–")
                cells.append(f"{paper[method][a]:.2f}" if a in paper[method] else "–")
            lines.append(f"| {DEFENSE_LABELS[method]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _machine(device: torch.device) -> dict[str, Any]:
    ddp = _loop._dist_info()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "processes": ddp.world_size,
    }
    if ddp.enabled:
        info["backend"] = str(torch.distributed.get_backend())
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _plot_ablation(per_method: Mapping[str, Any], path: Path, title: str) -> Path | None:
    """Grouped bars of clean and robust accuracy of the three ablation variants (Fig. 2)."""
    variants = [
        (m, label)
        for m, label in (
            ("baseline", "Baseline"),
            ("baseline_mt", "Baseline+MT"),
            ("mtard", "Baseline+MT+ANL"),
        )
        if m in per_method
    ]
    if not variants:
        return None
    from matplotlib.figure import Figure

    attacks = list(per_method[variants[0][0]]["attacks"])
    groups = ["Clean", *[_evaluate.ATTACK_TITLES.get(a, a) for a in attacks]]
    fig = Figure(figsize=(max(6.0, 1.3 * len(groups)), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(variants)
    x = np.arange(len(groups))
    for i, (method, label) in enumerate(variants):
        stats = [per_method[method]["clean"]] + [
            per_method[method]["attacks"][a]["robust"] for a in attacks
        ]
        means = [100 * s["mean"] for s in stats]
        errors = [100 * (s["std"] or 0.0) for s in stats]
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, means, width, yerr=errors, label=label)
    ax.set_xticks(x, groups, rotation=20)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(variants))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def write_figures(
    profile: Mapping[str, Any],
    out: Path,
    agg: Mapping[str, Mapping[str, Any]],
    teachers: Mapping[str, Teacher],
) -> list[Path]:
    """The figures: Fig. 2 (ablation bars), Fig. 3 (total loss of Baseline, Baseline+MT,
    MTARD), Fig. 4 (relative losses of Baseline+MT and MTARD), MTARD's ANL weights, and the
    validation clean / robust / W-Robust accuracy per epoch of every run (first seed for the
    loss figures)."""
    from . import plots

    figures = out / "figures"
    written: list[Path] = []
    seed = profile["seeds"][0]

    def log(student: str, method: str, kind: str) -> dict[str, np.ndarray] | None:
        path = _run_dir(out, student, method, seed) / "logs" / f"{kind}.csv"
        return plots.read_log(path) if path.exists() else None

    for student, per_method in agg.items():
        path = _plot_ablation(
            per_method, figures / f"ablation_{student}.png", f"Ablation, {student} (Fig. 2)"
        )
        if path is not None:
            written.append(path)
        total = {
            DEFENSE_LABELS[m]: log(student, m, "epochs")
            for m in ("baseline", "baseline_mt", "mtard")
            if m in per_method
        }
        total = {k: v for k, v in total.items() if v is not None}
        if total:
            written.append(
                plots.plot_total_loss(
                    total,
                    figures / f"total_loss_{student}.png",
                    title=f"Total training loss, {student}, seed {seed} (Fig. 3)",
                )
            )
        relative = {
            DEFENSE_LABELS[m]: log(student, m, "epochs")
            for m in ("baseline_mt", "mtard")
            if m in per_method
        }
        relative = {k: v for k, v in relative.items() if v is not None}
        if relative:
            written.append(
                plots.plot_relative_losses(
                    relative,
                    figures / f"relative_losses_{student}.png",
                    title=f"Relative training losses, {student}, seed {seed} (Fig. 4)",
                )
            )
        steps = log(student, "mtard", "steps") if "mtard" in per_method else None
        if steps is not None:
            written.append(
                plots.plot_weights(
                    steps,
                    figures / f"mtard_weights_{student}.png",
                    title=f"MTARD weights (ANL), {student}, seed {seed}",
                )
            )
        for method in per_method:
            for k in profile["seeds"]:
                epochs_csv = _run_dir(out, student, method, k) / "logs" / "epochs.csv"
                if epochs_csv.exists():
                    written.append(
                        plots.plot_accuracy(
                            plots.read_log(epochs_csv),
                            figures / "accuracy" / f"{student}_{method}_seed{k}.png",
                            title=f"Validation accuracy, {student} {DEFENSE_LABELS[method]} "
                            f"seed {k}",
                        )
                    )
    for role, teacher in teachers.items():
        if teacher.run_dir is not None and (teacher.run_dir / "logs" / "epochs.csv").exists():
            written.append(
                plots.plot_accuracy(
                    plots.read_log(teacher.run_dir / "logs" / "epochs.csv"),
                    figures / "accuracy" / f"teacher_{role}.png",
                    title=f"Validation accuracy, {role} teacher",
                )
            )
    return written


def write_report(
    profile: Mapping[str, Any],
    out: Path,
    teachers: Mapping[str, Teacher],
    teacher_results: Mapping[str, Mapping[str, Any]],
    student_results: Mapping[tuple[str, str, int], Mapping[str, Any]],
    runs: Mapping[tuple[str, str, int], Mapping[str, Any]],
    *,
    stages: _Stages,
    plots: bool,
    command: str,
    started: datetime.datetime,
    wall_start: float,
) -> dict[str, Any]:
    """Write the tables, ``results.json``, the figures and ``summary.md``; return the results."""
    agg = aggregate(student_results)
    attacks = _eval_settings(profile)["attacks"]
    white = [a for a in WHITE_BOX if a in attacks]
    black = [a for a in BLACK_BOX if a in attacks]
    tables = {
        "white_box.md": _attack_table(
            profile, agg, white, "# White-box robustness (paper Tables 2-3 layout)"
        ),
        "black_box.md": _attack_table(
            profile,
            agg,
            black,
            "# Black-box robustness (paper Tables 4-5 layout; transfer attacks crafted on the "
            "adversarial teacher)",
        ),
        "ablation.md": _ablation_table(profile, agg),
        "teachers.md": _teachers_table(profile, teachers, teacher_results),
    }
    for name, text in tables.items():
        _write_text(out / name, text)

    figures: list[Path] = []
    if plots:
        with stages.stage("figures"):
            figures = write_figures(profile, out, agg, teachers)

    comparison = compare_with_claims(agg, [*white, *black])
    device = _device(profile)
    machine = _machine(device)
    total_s = time.perf_counter() - wall_start
    results = {
        "profile": profile["name"],
        "dataset": profile["dataset"],
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "eval_settings": _json_settings(_eval_settings(profile)),
        "teachers": {
            role: {
                "label": t.label,
                "arch": t.arch,
                "source": t.source,
                "checkpoint": str(t.checkpoint),
                "run_dir": str(t.run_dir) if t.run_dir else None,
                "evaluation": teacher_results.get(role),
            }
            for role, t in teachers.items()
        },
        "runs": [
            {
                "student": s,
                "method": m,
                "seed": k,
                "run_dir": str(_run_dir(out, s, m, k)),
                "train": {key: runs[s, m, k].get(key) for key in ("best", "final", "time_s")},
                "evaluation": student_results[s, m, k],
            }
            for (s, m, k) in runs
        ],
        "aggregate": agg,
        "comparison": comparison,
        "stages": stages.rows,
        "wall_time_s": total_s,
        "figures": [str(p.relative_to(out)) for p in figures],
    }
    _write_text(out / "results.json", json.dumps(_finite(results), indent=2) + "\n")
    _write_text(
        out / "summary.md",
        _summary(
            profile, teachers, runs, comparison, agg, stages, machine, command, started, total_s
        ),
    )
    return results


def _summary(
    profile: Mapping[str, Any],
    teachers: Mapping[str, Teacher],
    runs: Mapping[tuple[str, str, int], Mapping[str, Any]],
    comparison: Mapping[str, Any],
    agg: Mapping[str, Any],
    stages: _Stages,
    machine: Mapping[str, Any],
    command: str,
    started: datetime.datetime,
    total_s: float,
) -> str:
    lines = [
        f"# MTARD reproduction, profile `{profile['name']}`",
        "",
        profile.get("description", ""),
        "",
        f"- Date: {started.isoformat(timespec='seconds')}",
        f"- Command: `{command}`",
        f"- Machine: {machine['platform']}, {machine['processor']}, {machine['cpu_count']} CPUs, "
        f"Python {machine['python']}, torch {machine['torch']} (threads: "
        f"{machine['torch_threads']}), device {machine['device']}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
        + (
            f"; {machine['processes']} processes (torch.distributed, {machine.get('backend')}; "
            "the device is rank 0's, the threads are per process)"
            if machine.get("processes", 1) > 1
            else ""
        )
        + (
            f"; load average at the end {machine['load_average']} (other processes share "
            "the CPU when it exceeds the core count)"
            if "load_average" in machine
            else ""
        ),
        f"- Dataset {profile['dataset']}; students {', '.join(profile['students'])}; methods "
        f"{', '.join(DEFENSE_LABELS[m] for m in METHOD_ORDER if m in profile['methods'])}; "
        f"seeds {profile['seeds']}",
        f"- Total wall time of this invocation: {total_s / 60:.1f} min ({total_s:.0f} s)",
        "",
        "## Teachers",
        "",
    ]
    for role, t in teachers.items():
        where = (
            f"trained here ({t.run_dir}) — the paper's teachers cannot be had on this machine"
            if t.source == "trained here"
            else f"loaded from {t.checkpoint}"
        )
        lines.append(f"- {role}: {t.label}, {where}")
    lines += [
        "",
        "## Wall time per stage",
        "",
        "| Stage | Status | Wall time, this invocation (s) | When it ran, if earlier (s) |",
        "|---|---|---:|---:|",
    ]
    groups: dict[str, float] = {}
    for row in stages.rows:
        earlier = f"{row['earlier_s']:.1f}" if "earlier_s" in row else ""
        lines.append(f"| {row['stage']} | {row['status']} | {row['wall_s']:.1f} | {earlier} |")
        group = row["stage"].split("/")[0]
        groups[group] = groups.get(group, 0.0) + row.get("earlier_s", row["wall_s"])
    lines.append(f"| **total** | | {total_s:.1f} | |")
    work = sum(groups.values())
    lines += [
        "",
        f"Work by kind, over all invocations ({work / 60:.1f} min): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in groups.items())
        + ".",
    ]
    trained = [r.get("time_s") or 0.0 for r in runs.values()]
    if trained:
        lines.append(
            f"Training time recorded by the runs themselves (also for runs completed by an "
            f"earlier invocation): {sum(trained):.0f} s over {len(trained)} runs."
        )
    lines += ["", "## The paper's claims, measured here", ""]
    lines += _claims_text(comparison)
    paper = _paper_comparison(profile, agg)
    if paper:
        lines += ["", "## Here vs the paper", "", *paper]
    if profile.get("notes"):
        lines += ["", "## Profile notes (every reduction from the paper's protocol)", ""]
        lines += [f"- {note}" for note in profile["notes"]]
    lines += [
        "",
        "Tables: white_box.md, black_box.md, ablation.md, teachers.md; all numbers: "
        "results.json; figures: figures/.",
    ]
    return "\n".join(lines) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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

    Returns:
        The content of ``results.json`` (on every rank).
    """
    wall_start = time.perf_counter()
    started = datetime.datetime.now().astimezone()
    if not isinstance(profile, Mapping):
        profile = load_profile(profile)
    validate_profile(profile)
    out = Path(out)
    command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    # One process group for every stage (under torchrun; a lone process runs alone).
    with _loop.distributed_session(profile.get("device", "auto")) as ddp:
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
        with _torch_threads(threads if threads is not None else profile.get("threads")):
            results = _run_stages(
                profile,
                out,
                ddp,
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
    *,
    resume: bool,
    plots: bool,
    progress: bool,
    command: str,
    started: datetime.datetime,
    wall_start: float,
) -> dict[str, Any] | None:
    """The stages of :func:`reproduce`, in ``ddp``'s process group; ``None`` on ranks > 0,
    which write nothing."""
    stages = _Stages(out / "stages.json", main=ddp.main)
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
    )
    if not _loop._is_main_process():
        return 0
    print((out / "white_box.md").read_text())
    print(f"Results in {out} ({results['wall_time_s'] / 60:.1f} min); see {out / 'summary.md'}.")
    return 0
