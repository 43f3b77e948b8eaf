"""The tasks of a reproduction: training a run, crafting the transfer examples, evaluating.

Each task is a module-level function of picklable arguments returning ``(result, status)``
(:class:`~.executor.Task`), so that it runs the same in this process, in a worker of
``--jobs N`` or on every rank under ``torchrun``. A task decides from the files of the results
directory whether its work is already done (``--resume``); under ``torchrun`` the ranks must
agree on that (:func:`~..runtime.process.agree`). The data splits come as
:class:`DataSource`, which a worker loads itself.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.registry import DatasetInfo, ImageData, load_dataset
from ..evaluation.counting import shard_indices
from ..evaluation.robustness import evaluate
from ..evaluation.transfer import craft_transfer, merge_transfer, transfer_problems
from ..models.checkpoint import load_model
from ..runtime.files import (
    atomic_save,
    read_json,
    read_json_object,
    read_json_verified,
    safe_load,
    safe_load_verified,
)
from ..runtime.integrity import warn_unhashed
from ..runtime.process import agree, current_ranks
from ..tables import write_results
from ..training.config import RESUME_MUTABLE, TEACHER_PATHS, TrainConfig, config_differences
from ..training.trainer import train
from .profile import EvalSettings, Teacher

#: Where transfer examples are crafted (the paper: the adversarial teacher), as recorded.
CRAFTED_ON = "adversarial teacher"

_LOADED: dict[DataSource, ImageData] = {}


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A data split that a task loads itself (once per process) instead of receiving it.

    The reproduction's ``data`` stage loads each split once in the main process (downloading
    what is missing, :meth:`load` with ``download=True``); the tasks then read it from this
    process's cache, and a worker from the files.
    """

    dataset: str
    split: str
    data_dir: str | None = None

    def load(self, *, download: bool = False, progress: bool = False) -> ImageData:
        if self not in _LOADED:
            _LOADED[self] = load_dataset(
                self.dataset,
                self.split,
                data_dir=self.data_dir,
                download=download,
                progress=progress,
            )
        return _LOADED[self]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def run_state(run_dir: Path, config: TrainConfig) -> str:
    """``"done"`` (finished, same config), ``"partial"`` (resumable) or ``"new"``.

    The saved config must equal ``config`` but for where and how verbosely the run happens and
    where the teachers are (a moved results or model directory; the teachers are checked
    themselves)."""
    config_path = run_dir / "config.json"
    if not config_path.exists():
        return "new"
    differences = config_differences(
        TrainConfig.load(config_path), config, ignore=RESUME_MUTABLE | TEACHER_PATHS
    )
    if differences:
        raise ValueError(
            f"The run {str(run_dir)!r} was made with another configuration ("
            + "; ".join(differences)
            + "). Choose another --out, or delete that run directory."
        )
    metrics = run_dir / "metrics.json"
    finished = metrics.exists() and read_json_object(metrics).get("finished")
    if finished and (run_dir / "final.pt").exists():
        return "done"
    return "partial"


def train_task(
    config: TrainConfig, run_dir: Path, resume: bool, data: DataSource, progress: bool
) -> tuple[dict[str, Any], str]:
    """Train one run (:func:`~..training.trainer.train`) unless ``resume`` finds it complete;
    returns its ``metrics.json`` and ``"ran"``, ``"resumed"`` or ``"skipped (complete)"``."""
    state = run_state(run_dir, config) if resume else "new"
    agree(state, f"the state of the run {str(run_dir)!r}", current_ranks())
    if state == "done":
        return read_json_object(run_dir / "metrics.json"), "skipped (complete)"
    metrics = train(
        config, run_dir, resume=state == "partial", progress=progress, train_data=data.load()
    )
    return metrics, "resumed" if state == "partial" else "ran"


# --------------------------------------------------------------------------------------------
# Transfer examples
# --------------------------------------------------------------------------------------------


def craft_key(adv: Teacher, settings: EvalSettings, attacks: tuple[str, ...]) -> str:
    """What a file of transfer examples was made from: the teacher's checkpoint (path and
    modification time), the attacks and the evaluation settings."""
    stat = adv.checkpoint.stat()
    return json.dumps(
        [str(adv.checkpoint.resolve()), stat.st_mtime_ns, list(attacks), settings.to_json()]
    )


def craft_task(
    adv: Teacher,
    data: DataSource,
    settings: EvalSettings,
    device: torch.device,
    path: Path,
    progress: bool,
) -> tuple[Path, str]:
    """Transfer examples crafted on the adversarial teacher for the settings' transfer
    attacks (:func:`~..evaluation.transfer.craft_transfer`), saved to ``path`` (with its
    content hash) for the evaluation tasks; a file made for the same teacher checkpoint,
    attacks and settings is kept if :func:`reusable_transfer` accepts it. Under ``torchrun``
    each rank crafts its shard and rank 0 writes them all."""
    ranks = current_ranks()
    key = craft_key(adv, settings, settings.transfer)
    test_data = data.load()
    complete = reusable_transfer(path, key, test_data, settings)
    agree(complete, f"whether {str(path)!r} is complete", ranks)
    if complete:
        return path, "skipped (complete)"
    crafted = craft_transfer(
        adv.load(test_data.info, device),
        test_data,
        settings.transfer,
        eps=settings.eps,
        n_examples=settings.n_examples,
        batch_size=settings.batch_size,
        device=device,
        seed=settings.seed,
        attack_overrides=settings.attack_overrides,
        progress=progress and ranks.main,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    if ranks.enabled:
        crafted = merge_transfer(ranks.gather_objects(crafted))
    if ranks.main:
        atomic_save({"key": key, "crafted": crafted}, path, digest=True)
    ranks.barrier()
    return path, "ran"


def reusable_transfer(path: Path, key: str, test_data: ImageData, settings: EvalSettings) -> bool:
    """Whether the transfer examples of ``path`` can be scored instead of crafted again: made
    for ``key`` (:func:`craft_key`), and for each transfer attack, one example per evaluated
    test point, in order, within the eps-ball of its point and in [0, 1]
    (:func:`~..evaluation.transfer.transfer_problems`).

    A file made for another key is crafted again silently (the settings changed). A file for
    this key whose examples fail the checks cannot come from this code; since crafting is
    deterministic (keyed by the dataset index), crafting again gives exactly the examples the
    evaluation should score, so it is crafted again, with a warning saying what was wrong.

    Raises:
        CorruptFileError: the file is unreadable, or its content hash does not match (it was
            damaged or modified after it was written): the user should know, and decide.
    """
    if not path.exists():
        return False
    saved, hashed = safe_load_verified(path)
    if not isinstance(saved, dict) or saved.get("key") != key:
        return False
    if not hashed:
        warn_unhashed(path)
    crafted = saved.get("crafted")
    indices = shard_indices(len(test_data), settings.n_examples, 0, 1)
    problems = []
    for name in settings.transfer:
        entry = crafted.get(name) if isinstance(crafted, dict) else None
        if not isinstance(entry, dict):
            problems.append(f"{name}: no examples")
            continue
        found = transfer_problems(entry, test_data, eps=settings.eps, indices=indices, exact=True)
        problems += [f"{name}: {problem}" for problem in found]
    if problems:
        warnings.warn(
            f"The transfer examples of '{path}' cannot be reused (" + "; ".join(problems) + "): "
            "crafting them again.",
            stacklevel=2,
        )
        return False
    return True


# --------------------------------------------------------------------------------------------
# Evaluations
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalJob:
    """One evaluation: a teacher (``teacher`` given) or a student run's checkpoint, the
    attacks it gets, and the fields recorded with its results."""

    name: str  # file stem in out/eval
    checkpoint: Path
    attacks: tuple[str, ...]
    record: Mapping[str, Any]
    teacher: Teacher | None = None

    def path(self, out: Path) -> Path:
        return out / "eval" / f"{self.name}.json"

    def load(self, info: DatasetInfo, device: torch.device) -> nn.Module:
        if self.teacher is not None:
            return self.teacher.load(info, device)
        return load_model(self.checkpoint, map_location=device)


def checkpoint_key(checkpoint: Path, out: Path) -> str:
    """The checkpoint's path relative to the results directory when inside it (so that a moved
    results directory still matches), else absolute."""
    try:
        return checkpoint.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(checkpoint.resolve())


def eval_complete(job: EvalJob, settings: EvalSettings, out: Path) -> bool:
    """Whether ``out/eval/<job>.json`` holds an evaluation of the job's checkpoint (not older
    than it) with its attacks and these settings.

    Raises:
        CorruptFileError: the file is not valid JSON or its content hash does not match (it
            was damaged or modified after it was written).
    """
    path = job.path(out)
    if not path.exists() or not job.checkpoint.exists():
        return False
    if path.stat().st_mtime_ns < job.checkpoint.stat().st_mtime_ns:
        return False
    saved, hashed = read_json_verified(path)
    if not hashed:
        warn_unhashed(path)
    return (
        isinstance(saved, dict)
        and list(saved.get("attacks", {})) == list(job.attacks)
        and saved.get("checkpoint_key") == checkpoint_key(job.checkpoint, out)
        and saved.get("eval_settings") == settings.to_json()
    )


def read_eval_task(path: Path) -> tuple[dict[str, Any], str]:
    """An evaluation a resumed reproduction found complete, read back (its content hash
    verified when it has one)."""
    return read_json(path), "skipped (complete)"


def eval_task(
    job: EvalJob,
    out: Path,
    data: DataSource,
    settings: EvalSettings,
    device: torch.device,
    crafted_path: Path | None,
    progress: bool,
) -> tuple[dict[str, Any], str]:
    """Evaluate the job's model under its attacks (:func:`~..evaluation.robustness.evaluate`),
    scoring the transfer examples of ``crafted_path``; rank 0 writes ``out/eval/<job>.*``.
    Under ``torchrun`` each rank attacks its shard; every rank gets the summed counts."""
    ranks = current_ranks()
    test_data = data.load()
    transfer = {}
    if crafted_path is not None and set(job.attacks) & set(settings.transfer):
        crafted = safe_load(crafted_path)["crafted"]
        transfer = {
            name: {**entry, "settings": {**entry["settings"], "crafted_once_on": CRAFTED_ON}}
            for name, entry in crafted.items()
        }
    result = evaluate(
        job.load(test_data.info, device),
        test_data,
        list(job.attacks),
        eps=settings.eps,
        batch_size=settings.batch_size,
        device=device,
        transfer_examples=transfer,
        n_examples=settings.n_examples,
        square_queries=settings.square_queries,
        progress=progress,
        seed=settings.seed,
        attack_overrides={k: v for k, v in settings.attack_overrides.items() if k in job.attacks},
        attack_n_examples={k: v for k, v in settings.attack_n_examples.items() if k in job.attacks},
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    result.update(
        job.record,
        checkpoint=str(job.checkpoint),
        checkpoint_key=checkpoint_key(job.checkpoint, out),
        eval_settings=settings.to_json(),
    )
    if ranks.main:
        write_results(result, out / "eval", job.name, defense=job.record["defense"])
    return result, "ran"
