"""The files of a run directory: where each lives, the student checkpoints and ``last.pt``.

``checkpoints/best.pt`` and ``final.pt`` hold the student in the model format of
:mod:`..models.checkpoint`, with the epoch, the method, the dataset and the validation metrics
of the epoch they come from (:func:`save_student`). ``checkpoints/last.pt`` holds everything a
resumed run needs (format :data:`RUN_CHECKPOINT_FORMAT`, written by :func:`write_last`), and
:func:`read_last` refuses one made with another configuration
(:func:`~.config.config_differences`). Both carry the SHA-256 of their content, verified on
load (:mod:`..runtime.integrity`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.registry import DATASETS
from ..models.checkpoint import save_model_checkpoint
from ..runtime.files import atomic_save, safe_load_verified
from ..runtime.integrity import warn_unhashed
from .config import TrainConfig, config_differences

RUN_CHECKPOINT_FORMAT = "anl-mtard-run"
"""The ``format`` entry of ``checkpoints/last.pt`` (the resumable training state)."""


def run_paths(run_dir: Path) -> dict[str, Path]:
    """The files of a run directory by role (the ``paths`` of ``metrics.json``)."""
    return {
        "config": run_dir / "config.json",
        "last": run_dir / "checkpoints" / "last.pt",
        "best": run_dir / "checkpoints" / "best.pt",
        "final": run_dir / "final.pt",
        "steps_log": run_dir / "logs" / "steps.csv",
        "epochs_log": run_dir / "logs" / "epochs.csv",
        "metrics": run_dir / "metrics.json",
    }


def save_student(
    path: Path,
    student: nn.Module,
    config: TrainConfig,
    *,
    epoch: int,
    row: Mapping[str, Any],
    validated: bool,
) -> None:
    """Write ``student`` with the epoch's validation metrics (``row``); ``validated`` says
    whether it was selected by validation W-Robust or is simply the latest epoch."""
    info = DATASETS[config.dataset]
    save_model_checkpoint(
        path,
        student,
        arch=config.student,
        num_classes=info.num_classes,
        in_channels=info.channels,
        model_kwargs=dict(config.student_kwargs) or None,
        extra={
            "epoch": epoch,
            "method": config.method,
            "dataset": config.dataset,
            "selection": "val_wrobust" if validated else "last",
            "val_clean": float(row["val_clean"]),
            "val_robust": float(row["val_robust"]),
            "val_wrobust": float(row["val_wrobust"]),
        },
    )


def write_last(path: Path, state: Mapping[str, Any]) -> None:
    """Write the training state ``state`` (format :data:`RUN_CHECKPOINT_FORMAT`) to
    ``last.pt``, atomically and with its content hash."""
    atomic_save(state, path, digest=True)


def read_last(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The training state of ``last.pt``, checked to be one, to be intact (its content hash,
    when it has one: ``CorruptFileError`` otherwise) and to come from ``config``."""
    state, hashed = safe_load_verified(path, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != RUN_CHECKPOINT_FORMAT:
        raise ValueError(
            f"Cannot resume: {path} is not a training checkpoint "
            f"(format {state.get('format') if isinstance(state, dict) else None!r})."
        )
    if not hashed:
        warn_unhashed(path)
    differences = config_differences(TrainConfig.from_dict(state["config"]), config)
    if differences:
        raise ValueError(
            "Cannot resume with a different configuration: " + "; ".join(differences) + "."
        )
    return state


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """This process's random state (CPU, and CUDA on a CUDA device), for ``last.pt``."""
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore a state of :func:`rng_state`."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
