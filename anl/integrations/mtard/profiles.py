"""MTARD experiment profiles: what a profile says and what it implies.

A profile is a JSON file of ``configs/`` (``default``, ``full``, ``smoke``, ``paper-cifar10``,
``paper-cifar100``) or any path (:func:`load_profile`, :func:`profile_names`); command-line
flags override single entries (:func:`apply_overrides`); :func:`validate_profile` checks it
and names the first wrong entry. From a profile follow the training configuration of every
teacher trained here and every student run (:func:`teacher_config`, :func:`student_config`),
the teachers it needs and where loaded ones live (:func:`teacher_path`, :class:`Teacher`),
and its evaluation settings. :mod:`.reproduce` runs the experiment a profile describes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as _data
from . import loop as _loop
from . import methods as _methods
from .attacks import ATTACK_NAMES, make_attack

__all__ = [
    "CONFIG_DIR",
    "METHOD_ORDER",
    "ROLES",
    "Teacher",
    "apply_overrides",
    "load_profile",
    "profile_names",
    "student_config",
    "teacher_config",
    "teacher_path",
    "validate_profile",
]

CONFIG_DIR = Path(__file__).with_name("configs")
"""The folder of the packaged profiles (``configs/*.json``)."""

METHOD_ORDER = ("natural", "sat", "trades", "ard", "rslad", "baseline", "baseline_mt", "mtard")
"""Row order of the tables: the paper's (Tables 2-5), then the ablations, MTARD last."""

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
    "attack_n_examples",
}

_CHECKPOINTS = ("best", "final")


def _bad(name: str, value: object, expected: str) -> None:
    raise ValueError(f"Parameter `{name}` should be {expected}. Found `{name} = {value!r}`.")


# ==============================================================================================
# Profiles
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
    limits = evaluation.get("attack_n_examples", {})
    direct = [a for a in attacks if not a.startswith("transfer_")]
    if not isinstance(limits, dict) or not set(limits) <= set(direct):
        _bad(
            "profile['evaluation']['attack_n_examples']",
            limits,
            f"a dict keyed by attacks of {direct} (transfer attacks run on every point)",
        )
    for name, limit in limits.items():
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            _bad(f"profile['evaluation']['attack_n_examples']['{name}']", limit, "an integer >= 1")


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


# ----------------------------------------------------------------------------------------------
# Teachers and evaluation settings implied by a profile
# ----------------------------------------------------------------------------------------------
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
        "attack_n_examples": dict(evaluation.get("attack_n_examples", {})),
    }


def _json_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in settings.items() if k != "attacks"}))


def _device(profile: Mapping[str, Any]) -> torch.device:
    """The profile's device for this process (``cuda`` is ``cuda:LOCAL_RANK`` under torchrun)."""
    local_rank = _loop._local_rank(_loop._dist_info())
    return _loop.resolve_device(profile.get("device", "auto"), local_rank)
