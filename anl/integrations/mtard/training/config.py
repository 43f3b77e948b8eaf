"""The configuration of a training run: :class:`TrainConfig`, its validation and resolution.

A :class:`TrainConfig` holds everything that defines one :func:`~.trainer.train` run. It checks
itself on construction (a ``ValueError`` names the first invalid field and the value found),
round-trips through JSON (``run_dir/config.json``, which a resumed run reads back) and
fills in the dataset's defaults (:meth:`TrainConfig.resolved_attack`,
:meth:`TrainConfig.resolved_augment`). The learning-rate milestones are stored as fractions
of the number of epochs, so that short runs keep the shape of the 300-epoch schedule
(:func:`milestone_epochs`). A resumed run must be given the saved config, up to the fields that
change where or how verbosely it runs, never what it computes (:data:`RESUME_MUTABLE`;
:func:`config_differences`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checks import check_float, check_int, fail, is_real
from ..data.registry import DATASETS
from ..evaluation.validation import VAL_ATTACKS
from ..methods.context import TEACHER_ROLES
from ..methods.registry import METHODS, check_method_balancer
from ..models import MODELS
from ..runtime.execution import MEMORY_FORMATS
from ..runtime.files import atomic_write_text

AUGMENTATIONS = ("none", "crop", "crop_flip")

RESUME_MUTABLE = frozenset({"device", "log_every", "data_dir", "download", "tensorboard"})
"""Fields that may differ between the saved config and the one given to a resumed run: they
change where or how verbosely the run happens, never what it computes."""

TEACHER_PATHS = frozenset({"clean_teacher", "adv_teacher"})
"""The teachers' checkpoint paths, which a resumed reproduction may move (it checks the
teachers themselves)."""


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Everything that defines a training run; JSON round-trips with :meth:`to_dict`/:meth:`from_dict`.

    Invalid values raise a ``ValueError`` naming the field and the value found. ``None`` for
    ``eps``, ``step_size``, ``attack_steps`` means the dataset's default epsilon (8/255 on CIFAR,
    0.1 on Fashion-MNIST), ``eps / 4`` and 10 steps; ``None`` for ``augment`` means the dataset
    default (``"crop_flip"`` on CIFAR, ``"none"`` on Fashion-MNIST).

    Example:
        >>> cfg = TrainConfig(method="sat", dataset="fashion_mnist", student="small_cnn", epochs=3)
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
        >>> milestone_epochs(TrainConfig(method="sat", dataset="cifar10", student="resnet18",
        ...                              epochs=300))
        [215, 260, 285]
    """

    method: str = field(metadata=_h("training method"))
    dataset: str = field(metadata=_h("dataset"))
    student: str = field(metadata=_h("student architecture"))
    epochs: int = field(metadata=_h("number of training epochs"))
    clean_teacher: str | None = field(default=None, metadata=_h("clean teacher checkpoint"))
    adv_teacher: str | None = field(default=None, metadata=_h("adversarial teacher checkpoint"))
    clean_teacher_arch: str | None = field(
        default=None, metadata=_h("architecture of a foreign clean-teacher checkpoint")
    )
    adv_teacher_arch: str | None = field(
        default=None, metadata=_h("architecture of a foreign adversarial-teacher checkpoint")
    )
    clean_teacher_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=_h("JSON dict of clean-teacher constructor arguments")
    )
    adv_teacher_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=_h("JSON dict of adversarial-teacher constructor arguments")
    )
    student_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=_h("JSON dict of student constructor arguments")
    )
    fold_bn: bool = field(default=True, metadata=_h("fold teacher BatchNorm into convolutions"))
    fold_attack_bn: bool = field(
        default=True,
        metadata=_h(
            "run the eval-mode training attacks on the student with its BatchNorm folded "
            "(the same function up to float rounding; ignored with --compile)"
        ),
    )
    memory_format: str = field(
        default="auto",
        metadata=_h(
            "layout of the networks and batches (auto: channels_last on CPU, measured faster "
            "there; contiguous on GPUs)"
        ),
    )
    amp: bool = field(
        default=False, metadata=_h("bf16 autocast of the forwards and losses (for GPUs)")
    )
    compile: bool = field(default=False, metadata=_h("torch.compile the student (for GPUs)"))
    data_dir: str | None = field(default=None, metadata=_h("dataset directory"))
    download: bool = field(default=True, metadata=_h("download the dataset when missing"))
    train_subset: int | None = field(
        default=None, metadata=_h("train on this many random training images (quick profiles)")
    )
    val_size: int = field(
        default=1000, metadata=_h("validation images carved from the training set (0 disables)")
    )
    val_seed: int | None = field(
        default=None,
        metadata=_h(
            "seed of the validation split (default: --seed); fix it so that runs of every "
            "seed, and the teachers, share one validation set"
        ),
    )
    augment: str | None = field(
        default=None,
        metadata=_h("training augmentation (default: none on Fashion-MNIST, crop_flip otherwise)"),
    )
    batch_size: int = field(default=128, metadata=_h("global batch size"))
    lr: float = field(default=0.1, metadata=_h("initial learning rate"))
    momentum: float = field(default=0.9, metadata=_h("SGD momentum"))
    weight_decay: float = field(default=2e-4, metadata=_h("SGD weight decay"))
    nesterov: bool = field(default=False, metadata=_h("Nesterov momentum"))
    milestones: tuple[float, ...] = field(
        default=(215 / 300, 260 / 300, 285 / 300),
        metadata=_h("lr milestones as fractions of the epochs"),
    )
    lr_gamma: float = field(default=0.1, metadata=_h("lr (and weight_lr) factor at milestones"))
    weight_lr: float = field(
        default=0.025,
        metadata=_h("ANL weight rate r_w (paper Eq. 9-11); FAMO's logits step size"),
    )
    beta: float = field(default=1.0, metadata=_h("ANL exponent beta (paper Eq. 8)"))
    balancer: str = field(
        default="anl",
        metadata=_h(
            "MTARD's loss weighting (the paper: anl; methods with constant weights take anl only)"
        ),
    )
    balancer_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata=_h("JSON dict of the balancer's hyperparameters (default: the rule's own)"),
    )
    eps: float | None = field(
        default=None,
        metadata=_h(
            "training attack epsilon in (0, 1], e.g. 8/255 (default: the dataset's, 8/255 on "
            "CIFAR and 0.1 on Fashion-MNIST)"
        ),
    )
    step_size: float | None = field(
        default=None, metadata=_h("training attack step size in (0, 1] (default: eps / 4)")
    )
    attack_steps: int | None = field(
        default=None, metadata=_h("training attack steps (default: 10)")
    )
    hyper: dict[str, Any] = field(
        default_factory=dict, metadata=_h("JSON dict of method hyperparameters")
    )
    val_attack: str = field(default="pgd_sat", metadata=_h("validation attack"))
    val_attack_steps: int = field(default=10, metadata=_h("validation attack steps"))
    val_batch_size: int | None = field(
        default=None, metadata=_h("validation batch size (default: batch_size)")
    )
    seed: int = field(default=0, metadata=_h("random seed"))
    deterministic: bool = field(
        default=False, metadata=_h("torch.use_deterministic_algorithms during the run")
    )
    device: str = field(
        default="auto", metadata=_h("auto (a GPU when there is one), cpu, cuda or cuda:N")
    )
    sync_bn: bool = field(default=False, metadata=_h("SyncBatchNorm under DDP"))
    log_every: int = field(default=50, metadata=_h("read the step logs back every N steps"))
    tensorboard: bool = field(default=True, metadata=_h("also log to TensorBoard if available"))

    def __post_init__(self) -> None:
        if isinstance(self.milestones, list):
            self.milestones = tuple(self.milestones)
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        if self.method not in METHODS:
            fail("method", self.method, f"one of {sorted(METHODS)}")
        DATASETS.resolve(self.dataset, parameter="dataset")
        MODELS.resolve(self.student, parameter="student")
        for name in ("clean_teacher_arch", "adv_teacher_arch"):
            value = getattr(self, name)
            if value is not None:
                MODELS.resolve(value, parameter=name)
        for name in ("clean_teacher", "adv_teacher", "data_dir"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                fail(name, value, "None or a non-empty path string")
        spec = METHODS[self.method]
        for role in TEACHER_ROLES:
            if role in spec.teachers and getattr(self, f"{role}_teacher") is None:
                fail(
                    f"{role}_teacher", None, f"a checkpoint path (method {self.method!r} needs one)"
                )
        for name in (
            "clean_teacher_kwargs",
            "adv_teacher_kwargs",
            "student_kwargs",
            "hyper",
            "balancer_kwargs",
        ):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                fail(name, value, "a dict with string keys")
        spec.resolve_hyper(self.hyper)  # unknown keys and bad values raise ValueError
        check_method_balancer(spec, self.balancer, self.balancer_kwargs)
        for name in (
            "fold_bn",
            "fold_attack_bn",
            "amp",
            "compile",
            "download",
            "nesterov",
            "deterministic",
            "sync_bn",
            "tensorboard",
        ):
            if not isinstance(getattr(self, name), bool):
                fail(name, getattr(self, name), "a bool")
        if self.memory_format not in MEMORY_FORMATS:
            fail("memory_format", self.memory_format, f"one of {list(MEMORY_FORMATS)}")
        for name in ("epochs", "batch_size", "val_attack_steps", "log_every"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("val_size", self.val_size, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if self.val_seed is not None:
            check_int("val_seed", self.val_seed, minimum=0)
        for name in ("train_subset", "val_batch_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        if self.attack_steps is not None:
            check_int("attack_steps", self.attack_steps, minimum=0)
        check_float("lr", self.lr, "a positive finite float", lambda v: v > 0)
        check_float("momentum", self.momentum, "a float in [0, 1)", lambda v: 0 <= v < 1)
        check_float("weight_decay", self.weight_decay, "a float >= 0", lambda v: v >= 0)
        check_float("lr_gamma", self.lr_gamma, "a float in (0, 1]", lambda v: 0 < v <= 1)
        check_float("weight_lr", self.weight_lr, "a float in (0, 1]", lambda v: 0 < v <= 1)
        check_float("beta", self.beta, "a finite float >= 0", lambda v: v >= 0)
        for name in ("eps", "step_size"):  # images are in [0, 1]: a budget above 1 is no budget
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), "None or a float in (0, 1]", _in_unit)
        if self.nesterov and self.momentum == 0:
            fail("momentum", self.momentum, "> 0 when `nesterov = True`")
        if not isinstance(self.milestones, tuple) or not all(
            is_real(m) and 0 < m <= 1 for m in self.milestones
        ):
            fail("milestones", self.milestones, "a sequence of fractions of the epochs in (0, 1]")
        if list(self.milestones) != sorted(self.milestones):
            fail("milestones", self.milestones, "sorted in increasing order")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            fail("augment", self.augment, f"None or one of {list(AUGMENTATIONS)}")
        if self.val_attack not in VAL_ATTACKS:
            fail("val_attack", self.val_attack, f"one of {list(VAL_ATTACKS)}")
        if not isinstance(self.device, str):
            fail("device", self.device, "'auto' or a torch device string")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                fail("device", self.device, "'auto' or a torch device string such as 'cuda:0'")

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of all fields (``milestones`` as a list)."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a dict such as :meth:`to_dict` returns; unknown keys are errors."""
        if not isinstance(values, Mapping):
            fail("values", values, "a mapping of TrainConfig fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Parameter `values` should only hold TrainConfig fields {sorted(known)}. "
                f"Found unknown keys {unknown}."
            )
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in values
        ]
        if required:
            raise ValueError(
                f"Parameter `values` should give the required fields {required}. "
                f"Found keys {sorted(values)}."
            )
        return cls(**dict(values))

    def save(self, path: str | Path) -> None:
        """Write the config as indented JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config written by :meth:`save` (or any JSON dict of fields)."""
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Could not read a TrainConfig from {str(path)!r}: {exc}") from exc
        return cls.from_dict(values)

    # -- resolved values ----------------------------------------------------------------------
    def resolved_attack(self) -> tuple[float, float, int]:
        """``(eps, step_size, attack_steps)`` with the dataset defaults filled in."""
        eps = self.eps if self.eps is not None else float(DATASETS[self.dataset].default_eps)
        step = self.step_size if self.step_size is not None else eps / 4
        steps = self.attack_steps if self.attack_steps is not None else 10
        return float(eps), float(step), int(steps)

    def resolved_augment(self) -> str | None:
        """The loader's ``augment`` argument: the dataset default when ``augment`` is None."""
        if self.augment is None:
            return None if self.dataset == "fashion_mnist" else "crop_flip"
        return None if self.augment == "none" else self.augment


def _in_unit(value: float) -> bool:
    return 0 < value <= 1


def milestone_epochs(config: TrainConfig) -> list[int]:
    """Epoch counts after which lr (and ``weight_lr``) are multiplied by ``lr_gamma``.

    ``round(fraction * epochs)``, at least 1; ``(215/300, 260/300, 285/300)`` with 300 epochs
    gives ``[215, 260, 285]``: epochs 216 to 260 (1-based) run at ``0.1 * lr``, as in the
    official code, which decays at the end of epoch 215. Milestones that coincide decay twice.
    """
    return [max(1, round(m * config.epochs)) for m in config.milestones]


def config_differences(
    saved: TrainConfig, given: TrainConfig, *, ignore: frozenset[str] = RESUME_MUTABLE
) -> list[str]:
    """``"field: saved (saved) vs given (given)"`` for every field outside ``ignore`` in which
    the config of a run to resume differs from the one given; empty when it may resume.

    Example:
        >>> a = TrainConfig(method="sat", dataset="cifar10", student="small_cnn", epochs=3)
        >>> config_differences(a, dataclasses.replace(a, epochs=4, device="cpu"))
        ['epochs: 3 (saved) vs 4 (given)']
    """
    a, b = saved.to_dict(), given.to_dict()
    return [
        f"{k}: {a[k]!r} (saved) vs {b[k]!r} (given)" for k in a if k not in ignore and a[k] != b[k]
    ]
