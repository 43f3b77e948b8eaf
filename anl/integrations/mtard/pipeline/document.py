"""The JSON document of a profile: its schema, and the training configurations it implies.

:func:`validate` checks a document's structure and values and names the first wrong entry;
:func:`teacher_config` and :func:`student_config` build the
:class:`~..training.config.TrainConfig` of a teacher trained here and of a student run.
:class:`~.profile.Profile` wraps a validated document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..attacks.registry import ATTACK_NAMES, TRANSFER_ATTACKS, make_attack
from ..checks import fail, is_real
from ..data.registry import DATASETS
from ..methods.context import TEACHER_ROLES
from ..methods.registry import METHOD_ORDER, METHODS
from ..training.config import TrainConfig

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

# TrainConfig fields of the shared ``train`` entry that only MTARD (a method weighted by a
# balancer) takes: the other runs, teachers included, leave them at their defaults.
_BALANCER_FIELDS = ("balancer", "balancer_kwargs")


def _shared_train(document: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The ``train`` entry as it applies to a run of ``method``."""
    values = dict(document["train"])
    spec = METHODS.get(method)  # an unknown method is TrainConfig's error to name
    if spec is not None and spec.weighting != "anl":
        for name in _BALANCER_FIELDS:
            values.pop(name, None)
    return values


def needed_teachers(document: Mapping[str, Any]) -> list[str]:
    """Roles of the teachers the document's methods and transfer attacks need."""
    needed = {role for method in document["methods"] for role in METHODS[method].teachers}
    if set(TRANSFER_ATTACKS) & set(document["evaluation"].get("attacks", [])):
        needed.add("adv")
    return [role for role in TEACHER_ROLES if role in needed]


def teacher_config(document: Mapping[str, Any], role: str) -> TrainConfig:
    """The :class:`~..training.config.TrainConfig` of a teacher trained here: the shared
    ``train`` fields, then the teacher's own; its architecture is the run's "student"."""
    spec = document["teachers"][role]
    values = {**_shared_train(document, spec["train"]["method"]), **spec["train"]}
    values.update(
        dataset=document["dataset"],
        student=spec["arch"],
        student_kwargs=dict(spec.get("kwargs", {})),
        seed=int(spec.get("seed", 0)),
        device=document.get("device", "auto"),
        data_dir=document.get("data_dir"),
        download=document.get("download", True),
    )
    return TrainConfig.from_dict(values)


def student_config(
    document: Mapping[str, Any],
    student: str,
    method: str,
    seed: int,
    *,
    teacher_paths: Mapping[str, str],
) -> TrainConfig:
    """The :class:`~..training.config.TrainConfig` of one student run: the shared ``train``
    fields (the balancer's for MTARD only), then ``method_train[method]``; the teachers the
    method needs are given by path (``teacher_paths[role]``), with their architecture when
    they are loaded from a foreign checkpoint (``arch=None``: this project's format)."""
    values = {**_shared_train(document, method), **document.get("method_train", {}).get(method, {})}
    values.update(
        method=method,
        dataset=document["dataset"],
        student=student,
        seed=int(seed),
        device=document.get("device", "auto"),
        data_dir=document.get("data_dir"),
        download=document.get("download", True),
    )
    for role in METHODS[method].teachers:
        teacher = document["teachers"][role]
        values[f"{role}_teacher"] = str(teacher_paths[role])
        if "path" in teacher:  # a foreign checkpoint: built by name, then filled
            values[f"{role}_teacher_arch"] = teacher["arch"]
            values[f"{role}_teacher_kwargs"] = dict(teacher.get("kwargs", {}))
    return TrainConfig.from_dict(values)


def validate(profile: Mapping[str, Any]) -> None:
    """Check a profile's structure and values; raise ``ValueError`` naming the bad entry.

    Every training configuration it implies is built, so :class:`TrainConfig` checks the
    training fields too.
    """
    if not isinstance(profile, Mapping):
        fail("profile", profile, "a JSON object")
    unknown = sorted(set(profile) - set(_PROFILE_KEYS))
    if unknown:
        fail("profile", unknown, f"a JSON object with keys among {sorted(_PROFILE_KEYS)}")
    for key in _REQUIRED_KEYS:
        if key not in profile:
            fail(f"profile['{key}']", None, "given")
    for key, kind in _PROFILE_KEYS.items():
        if key in profile and not isinstance(profile[key], kind):
            fail(f"profile['{key}']", profile[key], f"of type {kind}")
    threads = profile.get("threads")
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        fail("profile['threads']", threads, "None or an integer >= 1")
    DATASETS.resolve(profile["dataset"], parameter="profile['dataset']")
    seeds = profile["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        fail("profile['seeds']", seeds, "a non-empty list of integers")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        fail("profile['seeds']", seeds, "distinct integers >= 0")
    methods = profile["methods"]
    if not methods or len(set(methods)) != len(methods) or not set(methods) <= set(METHOD_ORDER):
        fail("profile['methods']", methods, f"a non-empty list of distinct names of {METHOD_ORDER}")
    if not profile["students"] or len(set(profile["students"])) != len(profile["students"]):
        fail("profile['students']", profile["students"], "a non-empty list of distinct names")
    forbidden = sorted(set(profile["train"]) & _PIPELINE_FIELDS)
    if forbidden:
        fail("profile['train']", forbidden, "free of the fields the pipeline sets")
    for method, overrides in profile.get("method_train", {}).items():
        if method not in METHOD_ORDER or not isinstance(overrides, dict):
            fail("profile['method_train']", {method: overrides}, "a dict method -> field dict")
        bad = sorted(set(overrides) & _PIPELINE_FIELDS)
        if bad:
            fail(f"profile['method_train']['{method}']", bad, "free of pipeline fields")
    _validate_evaluation(profile["evaluation"])
    teachers = profile.get("teachers", {})
    for role in needed_teachers(profile):
        if role not in teachers:
            fail("profile['teachers']", sorted(teachers), f"a spec for the {role!r} teacher")
    for role, spec in teachers.items():
        _validate_teacher(role, spec)
    # Build every training configuration once: TrainConfig validates the fields.
    for role, spec in teachers.items():
        if "train" in spec:
            teacher_config(profile, role)
    placeholder = {role: "teacher.pt" for role in TEACHER_ROLES}
    for student in profile["students"]:
        for method in methods:
            student_config(profile, student, method, seeds[0], teacher_paths=placeholder)


def _validate_evaluation(evaluation: Mapping[str, Any]) -> None:
    unknown = sorted(set(evaluation) - _EVAL_KEYS)
    if unknown:
        fail("profile['evaluation']", unknown, f"keys among {sorted(_EVAL_KEYS)}")
    attacks = evaluation.get("attacks", [])
    if not isinstance(attacks, list) or len(set(attacks)) != len(attacks):
        fail("profile['evaluation']['attacks']", attacks, "a list of distinct attack names")
    if not set(attacks) <= set(ATTACK_NAMES):
        fail("profile['evaluation']['attacks']", attacks, f"names of {ATTACK_NAMES}")
    if evaluation.get("checkpoint", "best") not in _CHECKPOINTS:
        fail("profile['evaluation']['checkpoint']", evaluation["checkpoint"], "best | final")
    for key, minimum in (("batch_size", 1), ("square_queries", 1), ("seed", 0)):
        value = evaluation.get(key, minimum)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            fail(f"profile['evaluation']['{key}']", value, f"an integer >= {minimum}")
    n = evaluation.get("n_examples")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        fail("profile['evaluation']['n_examples']", n, "None or an integer >= 1")
    eps = evaluation.get("eps")
    if eps is not None and (not is_real(eps) or not 0 < eps <= 1):
        fail("profile['evaluation']['eps']", eps, "None or a number in (0, 1]")
    overrides = evaluation.get("attack_overrides", {})
    if not isinstance(overrides, dict) or not set(overrides) <= set(attacks):
        fail("profile['evaluation']['attack_overrides']", overrides, "a dict keyed by attacks")
    for name, values in overrides.items():
        make_attack(name, eps=0.1, surrogate=nn.Identity(), **values)  # unknown keys raise
    limits = evaluation.get("attack_n_examples", {})
    direct = [a for a in attacks if a not in TRANSFER_ATTACKS]
    if not isinstance(limits, dict) or not set(limits) <= set(direct):
        fail(
            "profile['evaluation']['attack_n_examples']",
            limits,
            f"a dict keyed by attacks of {direct} (transfer attacks run on every point)",
        )
    for name, limit in limits.items():
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            fail(f"profile['evaluation']['attack_n_examples']['{name}']", limit, "an integer >= 1")


def _validate_teacher(role: str, spec: Any) -> None:
    where = f"profile['teachers']['{role}']"
    if role not in TEACHER_ROLES or not isinstance(spec, dict):
        fail("profile['teachers']", {role: spec}, "a dict with keys 'clean' and/or 'adv'")
    unknown = sorted(set(spec) - _TEACHER_KEYS)
    if unknown:
        fail(where, unknown, f"keys among {sorted(_TEACHER_KEYS)}")
    if not isinstance(spec.get("arch"), str):
        fail(f"{where}['arch']", spec.get("arch"), "an architecture name")
    if ("path" in spec) == ("train" in spec):
        fail(where, sorted(spec), "exactly one of 'path' (load) and 'train' (train here)")
    if "path" in spec:
        if not isinstance(spec["path"], str) or not spec["path"]:
            fail(f"{where}['path']", spec["path"], "a path, optionally with {model_dir}")
        if "{model_dir}" in spec["path"] and "{" in spec["path"].replace("{model_dir}", ""):
            fail(f"{where}['path']", spec["path"], "a path whose only placeholder is {model_dir}")
    else:
        if not isinstance(spec["train"], dict) or "method" not in spec["train"]:
            fail(f"{where}['train']", spec["train"], "a dict of TrainConfig fields with 'method'")
        if spec.get("checkpoint", "best") not in _CHECKPOINTS:
            fail(f"{where}['checkpoint']", spec.get("checkpoint"), "best | final")
