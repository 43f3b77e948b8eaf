"""The MTARD recipe (Zhao et al., ECCV 2022) on top of :mod:`anl`.

Data flows one way (``docs/architecture.md``)::

    runtime -> data -> models -> attacks -> methods -> evaluation -> training -> pipeline -> cli

Each piece is usable alone; the names below are the most used ones, each defined in the module
named in its docstring::

    from anl.integrations.mtard import build_model, evaluate, load_dataset
    model = build_model("small_cnn", num_classes=10)
    test = load_dataset("fashion_mnist", "test")
    results = evaluate(model, test, ["fgsm", "pgd_sat"], n_examples=500)

The console script ``anl-mtard`` (``train``, ``evaluate``, ``reproduce``; also
``python -m anl.integrations.mtard``) wraps the same calls.
"""

from anl.integrations.mtard.attacks.autoattack import autoattack
from anl.integrations.mtard.attacks.gradient import cw_inf, fgsm, pgd, transfer
from anl.integrations.mtard.attacks.registry import ATTACKS, make_attack, protocol
from anl.integrations.mtard.attacks.square import square
from anl.integrations.mtard.data.loader import BatchLoader, split_validation
from anl.integrations.mtard.data.registry import DATASETS, ImageData, load_dataset
from anl.integrations.mtard.evaluation.robustness import evaluate
from anl.integrations.mtard.methods.context import MethodContext
from anl.integrations.mtard.methods.registry import METHODS, build_weighting
from anl.integrations.mtard.models import build_model, model_names
from anl.integrations.mtard.models.checkpoint import (
    load_model,
    load_teacher,
    robustbench_path,
    save_model_checkpoint,
)
from anl.integrations.mtard.pipeline.profile import Profile
from anl.integrations.mtard.pipeline.reproduce import reproduce
from anl.integrations.mtard.runtime.files import atomic_save, safe_load
from anl.integrations.mtard.tables import results_table, write_results
from anl.integrations.mtard.training.config import TrainConfig
from anl.integrations.mtard.training.trainer import train

__all__ = [
    "ATTACKS",
    "DATASETS",
    "METHODS",
    "BatchLoader",
    "ImageData",
    "MethodContext",
    "Profile",
    "TrainConfig",
    "atomic_save",
    "autoattack",
    "build_model",
    "build_weighting",
    "cw_inf",
    "evaluate",
    "fgsm",
    "load_dataset",
    "load_model",
    "load_teacher",
    "make_attack",
    "model_names",
    "pgd",
    "protocol",
    "reproduce",
    "results_table",
    "robustbench_path",
    "safe_load",
    "save_model_checkpoint",
    "split_validation",
    "square",
    "train",
    "transfer",
    "write_results",
]
