"""The MTARD recipe (Zhao et al., ECCV 2022) on top of :mod:`anl`.

Data flows one way: ``data -> models -> attacks -> methods -> loop -> evaluation -> reproduce``.
Each piece is usable alone::

    from anl.integrations.mtard import build_model, evaluate, load_dataset, pgd
    model = build_model("small_cnn", num_classes=10)
    test = load_dataset("fashion_mnist", "test")
    results = evaluate(model, test, ["fgsm", "pgd_sat"], n_examples=500)

The console script ``anl-mtard`` (``train``, ``evaluate``, ``reproduce``) wraps the same calls.
"""

from anl.integrations.mtard.attacks import (
    ATTACKS,
    autoattack,
    cw_inf,
    fgsm,
    make_attack,
    pgd,
    protocol,
    square,
    transfer,
)
from anl.integrations.mtard.checkpoints import (
    atomic_save,
    load_model,
    load_teacher,
    robustbench_path,
    safe_load,
    save_model_checkpoint,
)
from anl.integrations.mtard.data import (
    DATASETS,
    BatchLoader,
    ImageData,
    load_dataset,
    split_validation,
)
from anl.integrations.mtard.evaluation import evaluate, results_table, write_results
from anl.integrations.mtard.loop import TrainConfig, train
from anl.integrations.mtard.methods import METHODS, MethodContext, build_weighting
from anl.integrations.mtard.models import build_model, model_names
from anl.integrations.mtard.reproduce import load_profile

__all__ = [
    "ATTACKS",
    "DATASETS",
    "METHODS",
    "BatchLoader",
    "ImageData",
    "MethodContext",
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
    "load_profile",
    "load_teacher",
    "make_attack",
    "model_names",
    "pgd",
    "protocol",
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
