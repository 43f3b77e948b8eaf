"""An MTARD experiment profile: what it says and everything that follows from it.

A profile is a JSON document, one of ``configs/`` (``default``, ``default-kl10``, ``full``,
``premise``, ``smoke``, ``paper-cifar10``, ``paper-cifar100``) or any path, possibly written
as changes to another (``"extends"``); :class:`Profile` holds one, validated
(:func:`~.document.validate`: a ``ValueError`` names the first wrong entry), and answers the questions the pipeline asks of
it: its runs (:meth:`Profile.runs`), the teachers they need (:meth:`Profile.teacher`), the
training configuration of every teacher trained here and every student run
(:meth:`Profile.teacher_config`, :meth:`Profile.student_config`), and its evaluation
settings (:attr:`Profile.evaluation`). Command-line flags override single entries
(:meth:`Profile.with_overrides`). The document itself is kept as given, so that
``<out>/config.json`` is the profile that ran.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks.registry import TEACHERS_TABLE_ATTACKS, TRANSFER_ATTACKS
from ..checks import fail
from ..data.registry import DATASETS, DatasetInfo
from ..methods.registry import METHOD_ORDER
from ..models.teachers import load_teacher_model
from ..runtime.process import current_ranks, local_rank, resolve_device
from ..training.config import TrainConfig
from .document import needed_teachers, student_config, teacher_config, validate
from .stages import checkpoint_path

CONFIG_DIR = Path(__file__).parents[1] / "configs"
"""The folder of the packaged profiles (``configs/*.json``)."""


def profile_names() -> list[str]:
    """Names of the packaged profiles (``configs/*.json``), sorted.

    Example:
        >>> {"default", "full", "paper-cifar10", "paper-cifar100"} <= set(profile_names())
        True
    """
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The evaluation a profile asks for (its ``evaluation`` entry with the defaults)."""

    attacks: tuple[str, ...]
    checkpoint: str  # "best" (validation W-Robust) or "final"
    n_examples: int | None
    batch_size: int
    square_queries: int
    attack_overrides: dict[str, dict[str, Any]]
    seed: int
    eps: float
    attack_n_examples: dict[str, int]

    @property
    def transfer(self) -> tuple[str, ...]:
        """The transfer attacks among :attr:`attacks` (crafted once on the adversarial teacher)."""
        return tuple(a for a in self.attacks if a in TRANSFER_ATTACKS)

    @property
    def teachers_attacks(self) -> tuple[str, ...]:
        """The attacks the teachers get: those of the teachers' table (paper Table 1) among
        :attr:`attacks` (FGSM when there are none)."""
        chosen = tuple(a for a in TEACHERS_TABLE_ATTACKS if a in self.attacks)
        return chosen or TEACHERS_TABLE_ATTACKS[:1]

    def to_json(self) -> dict[str, Any]:
        """Every setting but the attacks, as JSON reads it back: what an evaluation records
        (``eval_settings``) and what a resumed reproduction compares."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del values["attacks"]
        return json.loads(json.dumps(values))


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

    def load(self, info: DatasetInfo, device: torch.device) -> nn.Module:
        """The teacher in eval mode, frozen, BatchNorm folded, on ``device``."""
        return load_teacher_model(
            self.checkpoint,
            arch=self.arch if self.foreign else None,
            num_classes=info.num_classes,
            in_channels=info.channels,
            model_kwargs=self.kwargs or None,
            device=device,
        )


class Profile:
    """A validated profile (a JSON document) and what it implies.

    Example:
        >>> p = Profile.load("default").with_overrides(seeds=3, methods=["sat", "mtard"])
        >>> p.seeds, p.methods, p.runs()[:2]
        ([0, 1, 2], ('sat', 'mtard'), [('small_cnn', 'sat', 0), ('small_cnn', 'sat', 1)])
    """

    def __init__(self, document: Mapping[str, Any]) -> None:
        validate(document)
        self._document = copy.deepcopy(dict(document))

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str]) -> Profile:
        """Read a profile: a packaged name (``"default"``) or the path of a JSON file; a
        document with ``"extends"`` is resolved against the profile it names."""
        return cls(_read_document(str(name_or_path), chain=()))

    def to_dict(self) -> dict[str, Any]:
        """The profile's JSON document (a copy)."""
        return copy.deepcopy(self._document)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Profile) and other._document == self._document

    def __repr__(self) -> str:
        return f"Profile({self.name!r})"

    # -- what it says -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._document["name"]

    @property
    def dataset(self) -> str:
        return self._document["dataset"]

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.dataset]

    @property
    def seeds(self) -> list[int]:
        return list(self._document["seeds"])

    @property
    def students(self) -> list[str]:
        return list(self._document["students"])

    @property
    def methods(self) -> tuple[str, ...]:
        """The profile's methods in the row order of the tables."""
        return tuple(m for m in METHOD_ORDER if m in self._document["methods"])

    @property
    def device(self) -> str:
        return self._document.get("device", "auto")

    @property
    def data_dir(self) -> str | None:
        return self._document.get("data_dir")

    @property
    def download(self) -> bool:
        return self._document.get("download", True)

    @property
    def threads(self) -> int | None:
        return self._document.get("threads")

    def get(self, key: str, default: Any = None) -> Any:
        """An entry of the document as it is (``description``, ``notes``, ``paper_results``)."""
        return copy.deepcopy(self._document.get(key, default))

    # -- what follows from it -----------------------------------------------------------------
    def runs(self) -> list[tuple[str, str, int]]:
        """Every ``(student, method, seed)``, students outermost, methods in table order."""
        return [(s, m, k) for s in self.students for m in self.methods for k in self.seeds]

    def needed_teachers(self) -> list[str]:
        """Roles of the teachers the profile's methods and transfer attacks need."""
        return needed_teachers(self._document)

    @functools.cached_property
    def evaluation(self) -> EvalSettings:
        evaluation = self._document["evaluation"]
        return EvalSettings(
            attacks=tuple(evaluation.get("attacks", [])),
            checkpoint=evaluation.get("checkpoint", "best"),
            n_examples=evaluation.get("n_examples"),
            batch_size=int(evaluation.get("batch_size", 256)),
            square_queries=int(evaluation.get("square_queries", 5000)),
            attack_overrides=dict(evaluation.get("attack_overrides", {})),
            seed=int(evaluation.get("seed", 0)),
            eps=float(evaluation.get("eps") or self.info.default_eps),
            attack_n_examples=dict(evaluation.get("attack_n_examples", {})),
        )

    def device_here(self) -> torch.device:
        """The profile's device for this process (``cuda`` is ``cuda:LOCAL_RANK`` under
        torchrun)."""
        return resolve_device(self.device, local_rank(current_ranks()))

    def teacher_path(self, role: str) -> Path:
        """The checkpoint path of a loaded teacher, with ``{model_dir}`` filled in."""
        template = self._document["teachers"][role]["path"]
        if "{model_dir}" in template:
            model_dir = self._document.get("model_dir")
            if not model_dir:
                fail(
                    "model_dir",
                    model_dir,
                    f"a folder (--model-dir): the {role} teacher's path is {template!r}",
                )
            template = template.replace("{model_dir}", str(model_dir))
        return Path(template).expanduser()

    def teacher(self, role: str, out: Path) -> Teacher:
        """The ``role`` teacher: trained here into ``out/teachers/<role>`` (its checkpoint
        ``best.pt`` or ``final.pt``), or loaded from a checkpoint that must exist."""
        spec = self._document["teachers"][role]
        label = spec.get("label", f"{spec['arch']} ({role})")
        kwargs = dict(spec.get("kwargs", {}))
        if "path" in spec:
            path = self.teacher_path(role)
            if not path.is_file():
                raise FileNotFoundError(
                    f"The {role} teacher checkpoint {path} does not exist. Put the paper's "
                    "teacher there (docs/mtard.md, 'Real teachers'), or give --model-dir."
                )
            return Teacher(role, spec["arch"], label, "loaded", path, True, kwargs)
        run_dir = out / "teachers" / role
        checkpoint = checkpoint_path(run_dir, spec.get("checkpoint", "best"))
        return Teacher(
            role, spec["arch"], label, "trained here", checkpoint, False, kwargs, run_dir=run_dir
        )

    def teacher_config(self, role: str) -> TrainConfig:
        """The training configuration of the ``role`` teacher trained here
        (:func:`~.document.teacher_config`)."""
        return teacher_config(self._document, role)

    def student_config(
        self, student: str, method: str, seed: int, *, teacher_paths: Mapping[str, str]
    ) -> TrainConfig:
        """The training configuration of one student run (:func:`~.document.student_config`)."""
        return student_config(self._document, student, method, seed, teacher_paths=teacher_paths)

    def with_overrides(
        self,
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
    ) -> Profile:
        """A copy with command-line overrides applied (``None``: keep).

        ``seeds=N`` means seeds ``0 .. N-1``; ``seed_list`` gives them explicitly. ``epochs`` and
        ``train_subset`` apply to *every* training stage: students of every method and teachers
        trained here (per-method and per-teacher values are replaced too). ``n_eval`` sets the
        number of test points evaluated, ``threads`` the torch CPU threads.
        """
        out = self.to_dict()
        if seeds is not None and seed_list is not None:
            fail("seeds", seeds, "None when `seed_list` is given")
        if seeds is not None:
            if not isinstance(seeds, int) or seeds < 1:
                fail("seeds", seeds, "an integer >= 1")
            out["seeds"] = list(range(seeds))
        if seed_list is not None:
            out["seeds"] = [int(s) for s in seed_list]
        if methods is not None:
            out["methods"] = list(dict.fromkeys(methods))
        if students is not None:
            out["students"] = list(dict.fromkeys(students))
        for key, value in (
            ("data_dir", data_dir),
            ("model_dir", model_dir),
            ("device", device),
            ("threads", threads),
        ):
            if value is not None:
                out[key] = str(value) if key.endswith("_dir") else value
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
        return Profile(out)


def _read_document(text: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """The JSON document of a packaged name or a file path, its ``extends`` resolved."""
    path = Path(text)
    if not path.suffix and not path.is_file():  # a folder called `smoke` is no profile
        path = CONFIG_DIR / f"{text}.json"
        if not path.exists():
            fail("profile", text, f"a packaged profile {profile_names()} or a JSON file path")
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Could not read the profile {str(path)!r}: {exc}") from exc
    if not isinstance(document, Mapping) or "extends" not in document:
        return document
    # A variant states only what differs: {"extends": "default", ...} is `default` with the
    # given entries merged in (mappings key by key, anything else replaced).
    base = document["extends"]
    if not isinstance(base, str) or base in (*chain, text):
        fail("profile['extends']", base, "the name or path of another profile, without a cycle")
    changes = {k: v for k, v in document.items() if k != "extends"}
    return _merged(_read_document(base, (*chain, text)), changes)


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
