"""The training loop: optimiser, schedule, validation, checkpoint/resume, logs, ``train`` command.

One call of :func:`train` runs one method (see :mod:`.methods`) for one student and writes a run
directory::

    run_dir/
      config.json             the TrainConfig, as JSON (resume reads it back)
      checkpoints/last.pt     everything needed to resume, written atomically after every epoch
      checkpoints/best.pt     the student of the epoch with the best validation W-Robust
      final.pt                the student after the last epoch
      logs/steps.csv          one row per optimisation step
      logs/epochs.csv         one row per epoch
      logs/tensorboard/       scalars, when ``torch.utils.tensorboard`` imports
      metrics.json            final metrics and paths

Optimisation follows the official MTARD script (Zhao et al., ECCV 2022, Sec. 4.1): SGD with
lr 0.1, momentum 0.9, weight decay 2e-4, batch 128, 300 epochs, lr x 0.1 after epochs 215, 260
and 285. The milestones are stored as fractions of the number of epochs so that short runs
keep the same shape. The ANL rate ``r_w`` (paper Eq. 9-11) decays with the learning rate: at each
milestone, ``weight_lr`` is multiplied by the same ``lr_gamma``, as in the official code.

Checkpoint selection: the paper keeps the checkpoint with the best W-Robust accuracy
``0.5 * clean + 0.5 * robust`` (Eq. 12), measured on the test set by the official code. Here a
validation split carved from the training set is used instead (``val_size`` images), attacked by
a short PGD; the test set is never seen during training.

The step never synchronises host and device: the per-step log rows (losses, total, weights,
relative losses) stay on the device and are read back in one block every ``log_every`` steps;
the finiteness of the total loss is checked on that block.

Speed (``docs/benchmarks.md``): the attack differentiates with respect to the input only, the
teachers are frozen, BatchNorm-folded and run without a graph, and the step never synchronises.
``memory_format`` puts the networks and batches in the channels-last layout (the default on
CPU, where it wins); ``amp`` (bf16 autocast) and ``compile`` (``torch.compile`` of the
student) are opt-in, meant for GPUs.

Data parallelism (``docs/distributed.md``): under ``torchrun`` :func:`train` joins the process
group itself (:func:`distributed_session`: NCCL on GPUs, Gloo on CPUs, one GPU per
``LOCAL_RANK``) and leaves it at the end. The student is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, each rank reads a disjoint shard of every
epoch's permutation, and ``batch_size`` stays the *global* batch: each rank takes
``batch_size // world_size`` images (``batch_size`` must be divisible by ``world_size``), so
the averaged gradient, the balancer's averaged losses and hence the learning rate mean the same
as in one process. The teachers are replicated, frozen. Each rank attacks its own shard through
the DDP module: ``torch.autograd.grad`` with respect to the input never runs the parameters'
gradient-accumulation nodes, where DDP's all-reduce hooks live, and DDP's pre-forward buffer
broadcast makes every rank attack the same model. BatchNorm keeps per-rank batch statistics
with rank 0's running statistics (plain DDP; ``sync_bn`` for SyncBatchNorm on GPUs), and the
buffers are re-broadcast from rank 0 at the end of each epoch. Only rank 0 writes files;
validation is sharded exactly and its counts summed over ranks.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from anl import AdaptiveLossBalancer

from . import attacks as _attacks
from . import checkpoints as _checkpoints
from . import data as _data
from . import methods as _methods
from . import models as _models

__all__ = [
    "RUN_CHECKPOINT_FORMAT",
    "VAL_ATTACKS",
    "NonFiniteLossError",
    "TrainConfig",
    "distributed_backend",
    "distributed_session",
    "fold_batchnorm",
    "load_teacher_model",
    "milestone_epochs",
    "prepare_teacher",
    "register_cli",
    "resolve_device",
    "resolve_memory_format",
    "run_train_cli",
    "train",
    "validate",
]

RUN_CHECKPOINT_FORMAT = "anl-mtard-run"
"""The ``format`` entry of ``checkpoints/last.pt`` (the resumable training state)."""

VAL_ATTACKS = ("pgd_sat", "pgd_cw")
"""Attacks available for validation: PGD with step ``eps / 4`` and a uniform random start, on
the cross-entropy (``pgd_sat``, the SAT protocol of Madry et al.) or on the CW margin
(``pgd_cw``)."""

AUGMENTATIONS = ("none", "crop", "crop_flip")

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
"""Values of ``TrainConfig.memory_format`` (see :func:`resolve_memory_format`)."""

# Fields that may differ between the saved config and the one given to a resumed run: they
# change where or how verbosely the run happens, never what it computes.
_RESUME_MUTABLE = frozenset({"device", "log_every", "data_dir", "download", "tensorboard"})


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or infinite; the last good checkpoint is kept."""


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

    method: str = field(metadata=_h("training method, a key of methods.METHODS"))
    dataset: str = field(metadata=_h("cifar10 | cifar100 | fashion_mnist"))
    student: str = field(metadata=_h("student architecture (models.model_names())"))
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
    memory_format: str = field(
        default="auto",
        metadata=_h(
            "auto | channels_last | contiguous: layout of the networks and batches "
            "(auto: channels_last on CPU, measured faster there; contiguous on GPUs)"
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
    augment: str | None = field(
        default=None, metadata=_h("none | crop | crop_flip (default: the dataset's)")
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
    weight_lr: float = field(default=0.025, metadata=_h("ANL weight rate r_w (paper Eq. 9-11)"))
    beta: float = field(default=1.0, metadata=_h("ANL exponent beta (paper Eq. 8)"))
    eps: float | None = field(default=None, metadata=_h("training attack epsilon (e.g. 8/255)"))
    step_size: float | None = field(default=None, metadata=_h("training attack step size"))
    attack_steps: int | None = field(default=None, metadata=_h("training attack steps"))
    hyper: dict[str, Any] = field(
        default_factory=dict, metadata=_h("JSON dict of method hyperparameters")
    )
    val_attack: str = field(default="pgd_sat", metadata=_h("validation attack: pgd_sat | pgd_cw"))
    val_attack_steps: int = field(default=10, metadata=_h("validation attack steps"))
    val_batch_size: int | None = field(
        default=None, metadata=_h("validation batch size (default: batch_size)")
    )
    seed: int = field(default=0, metadata=_h("random seed"))
    deterministic: bool = field(
        default=False, metadata=_h("torch.use_deterministic_algorithms during the run")
    )
    device: str = field(default="auto", metadata=_h("auto | cpu | cuda | cuda:N"))
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
        if self.method not in _methods.METHODS:
            _bad("method", self.method, f"one of {sorted(_methods.METHODS)}")
        if self.dataset not in _data.DATASETS:
            _bad("dataset", self.dataset, f"one of {sorted(_data.DATASETS)}")
        names = _models.model_names()
        if self.student not in names:
            _bad("student", self.student, f"one of {names}")
        for name in ("clean_teacher_arch", "adv_teacher_arch"):
            value = getattr(self, name)
            if value is not None and value not in names:
                _bad(name, value, f"None or one of {names}")
        for name in ("clean_teacher", "adv_teacher", "data_dir"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                _bad(name, value, "None or a non-empty path string")
        spec = _methods.METHODS[self.method]
        if spec.needs_clean_teacher and self.clean_teacher is None:
            _bad("clean_teacher", None, f"a checkpoint path (method {self.method!r} needs one)")
        if spec.needs_adv_teacher and self.adv_teacher is None:
            _bad("adv_teacher", None, f"a checkpoint path (method {self.method!r} needs one)")
        for name in ("clean_teacher_kwargs", "adv_teacher_kwargs", "student_kwargs", "hyper"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                _bad(name, value, "a dict with string keys")
        spec.resolve_hyper(self.hyper)  # unknown keys and bad values raise ValueError
        for name in (
            "fold_bn",
            "amp",
            "compile",
            "download",
            "nesterov",
            "deterministic",
            "sync_bn",
            "tensorboard",
        ):
            if not isinstance(getattr(self, name), bool):
                _bad(name, getattr(self, name), "a bool")
        if self.memory_format not in MEMORY_FORMATS:
            _bad("memory_format", self.memory_format, f"one of {list(MEMORY_FORMATS)}")
        for name in ("epochs", "batch_size", "val_attack_steps", "log_every"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("val_size", self.val_size, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        for name in ("train_subset", "val_batch_size"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.attack_steps is not None:
            _check_int("attack_steps", self.attack_steps, minimum=0)
        _check_float("lr", self.lr, "a positive finite float", lambda v: v > 0)
        _check_float("momentum", self.momentum, "a float in [0, 1)", lambda v: 0 <= v < 1)
        _check_float("weight_decay", self.weight_decay, "a float >= 0", lambda v: v >= 0)
        _check_float("lr_gamma", self.lr_gamma, "a float in (0, 1]", lambda v: 0 < v <= 1)
        _check_float("weight_lr", self.weight_lr, "a float in (0, 1]", lambda v: 0 < v <= 1)
        _check_float("beta", self.beta, "a finite float >= 0", lambda v: v >= 0)
        for name in ("eps", "step_size"):
            if getattr(self, name) is not None:
                _check_float(name, getattr(self, name), "None or a positive float", lambda v: v > 0)
        if self.nesterov and self.momentum == 0:
            _bad("momentum", self.momentum, "> 0 when `nesterov = True`")
        if not isinstance(self.milestones, tuple) or not all(
            _is_real(m) and 0 < m <= 1 for m in self.milestones
        ):
            _bad("milestones", self.milestones, "a sequence of fractions of the epochs in (0, 1]")
        if list(self.milestones) != sorted(self.milestones):
            _bad("milestones", self.milestones, "sorted in increasing order")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            _bad("augment", self.augment, f"None or one of {list(AUGMENTATIONS)}")
        if self.val_attack not in VAL_ATTACKS:
            _bad("val_attack", self.val_attack, f"one of {list(VAL_ATTACKS)}")
        if not isinstance(self.device, str):
            _bad("device", self.device, "'auto' or a torch device string")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                _bad("device", self.device, "'auto' or a torch device string such as 'cuda:0'")

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
            _bad("values", values, "a mapping of TrainConfig fields")
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
        """Write the config as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

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
        eps = self.eps if self.eps is not None else float(_data.DATASETS[self.dataset].default_eps)
        step = self.step_size if self.step_size is not None else eps / 4
        steps = self.attack_steps if self.attack_steps is not None else 10
        return float(eps), float(step), int(steps)

    def resolved_augment(self) -> str | None:
        """The loader's ``augment`` argument: the dataset default when ``augment`` is None."""
        if self.augment is None:
            return None if self.dataset == "fashion_mnist" else "crop_flip"
        return None if self.augment == "none" else self.augment


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad(name: str, value: object, expected: str) -> None:
    raise ValueError(f"Parameter `{name}` should be {expected}. Found `{name} = {value!r}`.")


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _bad(name, value, f"an integer >= {minimum}")


def _check_float(name: str, value: object, expected: str, ok) -> None:
    if not _is_real(value) or not math.isfinite(value) or not ok(value):
        _bad(name, value, expected)


def resolve_memory_format(memory_format: str, device: torch.device | str) -> torch.memory_format:
    """The memory format of the student, the teachers and the batches.

    ``"auto"`` is ``torch.channels_last`` on CPU, where it makes the MTARD step of the
    Fashion-MNIST CNNs markedly faster (``python -m benchmarks.step_options``; figures in
    ``docs/benchmarks.md``), and ``torch.contiguous_format`` on other devices (not measured
    there yet). The layout changes no result beyond float rounding.

    Example:
        >>> resolve_memory_format("auto", "cpu")
        torch.channels_last
        >>> resolve_memory_format("contiguous", "cpu")
        torch.contiguous_format
    """
    if memory_format not in MEMORY_FORMATS:
        _bad("memory_format", memory_format, f"one of {list(MEMORY_FORMATS)}")
    if memory_format == "auto":
        memory_format = "channels_last" if torch.device(device).type == "cpu" else "contiguous"
    return torch.channels_last if memory_format == "channels_last" else torch.contiguous_format


def milestone_epochs(config: TrainConfig) -> list[int]:
    """Epoch counts after which lr (and ``weight_lr``) are multiplied by ``lr_gamma``.

    ``round(fraction * epochs)``, at least 1; ``(215/300, 260/300, 285/300)`` with 300 epochs
    gives ``[215, 260, 285]``: epochs 216 to 260 (1-based) run at ``0.1 * lr``, as in the
    official code, which decays at the end of epoch 215. Milestones that coincide decay twice.
    """
    return [max(1, round(m * config.epochs)) for m in config.milestones]


# ----------------------------------------------------------------------------------------------
# Teachers
# ----------------------------------------------------------------------------------------------
def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` that computes ``bn(conv(x))`` with BN in eval mode.

    ``s = gamma / sqrt(running_var + eps)``; ``W' = s * W`` (per output channel) and
    ``b' = s * (b - running_mean) + beta``, computed in float64 and cast back.
    """
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        var = bn.running_var.double()
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        fused.weight.copy_(weight.to(conv.weight.dtype))
        fused.bias.copy_(bias.to(conv.weight.dtype))
    fused.eval()
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` fed directly and only by a ``Conv2d`` into it.

    ``bn(conv(x)) = conv'(x)`` with :func:`_fuse_conv_bn`'s weights, exactly up to float
    rounding, *in eval mode only* (BN then applies a fixed per-channel affine map), so
    ``model.training`` must be False. The pairs are found by running ``model`` once on
    ``example_input`` with hooks and reading the autograd graph: a pair is folded only when
    the BN's input is the conv's output, nothing else uses that output, and each module is
    called once. Anything else is left as it is, so the function works on any architecture
    (no symbolic tracing). The conv is replaced by the fused conv and the BN by
    ``nn.Identity`` *in place*; the model is returned and must stay in eval mode.
    """
    if model.training:
        raise ValueError(
            "Parameter `model` should be in eval mode to fold BatchNorm (running statistics). "
            "Found `model.training = True`."
        )
    calls: collections.Counter[str] = collections.Counter()
    conv_out: dict[str, Any] = {}  # conv name -> autograd node of its output
    bn_in: dict[str, Any] = {}  # bn name -> autograd node of its input

    def after_conv(name: str):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            calls[name] += 1
            conv_out[name] = output.grad_fn

        return hook

    def before_bn(name: str):
        def hook(module: nn.Module, inputs: Any) -> None:
            calls[name] += 1
            bn_in[name] = inputs[0].grad_fn

        return hook

    modules = dict(model.named_modules())
    handles = []
    for name, module in modules.items():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(after_conv(name)))
        elif type(module) is nn.BatchNorm2d:
            handles.append(module.register_forward_pre_hook(before_bn(name)))
    try:
        with torch.enable_grad():
            output = model(example_input.detach().clone().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()

    # How many graph edges (and model outputs) use each autograd node.
    uses: collections.Counter[Any] = collections.Counter()
    outputs = _tensors(output)
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    uses.update(stack)
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                uses[child] += 1
                stack.append(child)

    producer = {node: name for name, node in conv_out.items() if node is not None}
    for bn_name, node in bn_in.items():
        conv_name = producer.get(node)
        bn = modules[bn_name]
        if (
            conv_name is None
            or uses[node] != 1
            or calls[conv_name] != 1
            or calls[bn_name] != 1
            or bn.running_mean is None
            or bn.running_var is None
        ):
            continue
        _set_submodule(model, conv_name, _fuse_conv_bn(modules[conv_name], bn))
        _set_submodule(model, bn_name, nn.Identity())
    return model.eval()


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple, list or dict of outputs."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def prepare_teacher(
    model: nn.Module,
    *,
    device: str | torch.device | None = None,
    fold_bn: bool = True,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Freeze a teacher: eval mode, no parameter gradients, on ``device``, BN folded.

    Folding (:func:`fold_batchnorm`) needs an ``example_input`` (one small batch of the
    model's input shape); without one, or with ``fold_bn=False``, the BN layers stay.
    """
    model.eval()
    model.requires_grad_(False)
    if device is not None:
        model = model.to(device)
    if fold_bn and example_input is not None:
        example = example_input.to(next(model.parameters()).device)
        model = fold_batchnorm(model, example)
        model.requires_grad_(False)
    return model.eval()


def load_teacher_model(
    path: str | Path,
    *,
    arch: str | None,
    num_classes: int,
    in_channels: int,
    model_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    fold_bn: bool = True,
    image_size: int | None = None,
) -> nn.Module:
    """Load a teacher checkpoint and :func:`prepare_teacher` it.

    ``arch=None`` reads one of this project's checkpoints (:func:`checkpoints.load_model`);
    otherwise a foreign checkpoint (RobustBench, TRADES) is read into ``build_model(arch, ...)``
    with :func:`checkpoints.load_teacher`. BatchNorm is folded when ``fold_bn`` and
    ``image_size`` (the side of the square input images) are given.
    """
    if arch is None:
        model = _checkpoints.load_model(path)
    else:
        model = _checkpoints.load_teacher(
            path,
            arch=arch,
            num_classes=num_classes,
            in_channels=in_channels,
            fmt="auto",
            model_kwargs=model_kwargs or None,
        )
    example = None
    if image_size is not None:
        generator = torch.Generator().manual_seed(0)  # leaves the global RNG alone
        example = torch.rand(2, in_channels, image_size, image_size, generator=generator)
    return prepare_teacher(model, device=device, fold_bn=fold_bn, example_input=example)


# ----------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (moved to the current CUDA device for NCCL)."""
        if not self.enabled:
            return tensor
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_device)
            tensor.copy_(on_device)
        else:
            dist.all_reduce(tensor)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _dist_info() -> _Dist:
    if dist.is_available() and dist.is_initialized():
        return _Dist(rank=dist.get_rank(), world_size=dist.get_world_size())
    return _Dist()


def _launched_by_torchrun() -> bool:
    """Whether the environment holds a process group's coordinates (``torchrun``, or any
    launcher that sets ``RANK`` and ``WORLD_SIZE`` for ``init_method="env://"``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _is_main_process() -> bool:
    """Rank 0 of the process group, or of the launcher's environment, or a lone process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _local_rank(ddp: _Dist) -> int | None:
    """This process's index on its node (``LOCAL_RANK``); None for a single process."""
    if not ddp.enabled:
        return None
    return int(os.environ.get("LOCAL_RANK", ddp.rank))


def resolve_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device of this process.

    ``"auto"`` is ``cuda:<local_rank>`` (modulo the number of GPUs) when CUDA is available and
    ``cpu`` otherwise; ``"cuda"`` without an index is ``cuda:<local_rank>``; anything else is
    used as given. ``local_rank`` is ``LOCAL_RANK`` under ``torchrun`` and ``None`` (index 0)
    for a single process.

    Example:
        >>> resolve_device("cpu", local_rank=3)
        device(type='cpu')
        >>> resolve_device("cuda", local_rank=3)
        device(type='cuda', index=3)
    """
    index = local_rank or 0
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", index % torch.cuda.device_count())
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", index)
    return resolved


def distributed_backend(device: str = "auto") -> str:
    """``"nccl"`` for CUDA devices (``"auto"`` when CUDA is available), ``"gloo"`` otherwise.

    Example:
        >>> distributed_backend("cpu")
        'gloo'
    """
    if device == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[_Dist]:
    """Join the process group that ``torchrun`` describes, for the duration of the block.

    Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment) and with
    ``torch.distributed`` not yet initialised, calls ``init_process_group(backend,
    init_method="env://")`` with :func:`distributed_backend` of ``device`` (NCCL on GPUs, Gloo
    on CPUs; for NCCL the process's GPU, :func:`resolve_device` of ``LOCAL_RANK``, is selected
    first) and destroys the group on exit. A group initialised by the caller is used as it is
    and left alone; a plain process runs alone. Yields the rank and world size.

    Example:
        >>> with distributed_session("cpu") as ddp:  # not under torchrun: a lone process
        ...     (ddp.rank, ddp.world_size)
        (0, 1)
    """
    initialised = False
    if _launched_by_torchrun() and dist.is_available() and not dist.is_initialized():
        backend = distributed_backend(device)
        if backend == "nccl":
            local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
            torch.cuda.set_device(resolve_device(device, local_rank))
        dist.init_process_group(backend=backend, init_method="env://")
        initialised = True
    try:
        yield _dist_info()
    finally:
        if initialised and dist.is_initialized():
            dist.destroy_process_group()


def _broadcast_buffers(module: nn.Module, ddp: _Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DistributedDataParallel broadcasts rank 0's buffers before each forward with gradients,
    so after the last forward of an epoch each rank holds its own statistics update. This
    makes the replicas identical again before validation and checkpoints (one broadcast per
    dtype, a no-op for a single process).
    """
    if not ddp.enabled:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for buffer in module.buffers():
        groups.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    nccl = dist.get_backend() == "nccl"
    for (_, device), buffers in groups.items():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        if nccl and device.type != "cuda":
            flat = flat.to(torch.device("cuda", torch.cuda.current_device()))
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for b in buffers:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def _count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x).argmax(dim=1) == y).sum()


def validate(
    model: nn.Module,
    loader: _data.BatchLoader,
    *,
    eps: float,
    steps: int,
    attack: str = "pgd_sat",
    step_size: float | None = None,
    ddp: _Dist | None = None,
) -> dict[str, float]:
    """Clean, robust and W-Robust accuracy (paper Eq. 12) of ``model`` on ``loader``.

    The robust accuracy is under PGD (``VAL_ATTACKS``): ``steps`` steps of ``step_size``
    (default ``eps / 4``) from a uniform random start in the eps-ball, drawn per image from its
    position in the validation set (``attacks.pgd(sample_seeds=...)``). So validation uses no
    global random state (it neither depends on nor disturbs training) and gives the same
    numbers whatever the batch size or the number of ranks. ``loader`` must not shuffle; under
    ``torch.distributed`` it must be built with ``pad_to_even=False`` (exact shards) and the
    counts are summed over ranks. The model's mode is restored. Returns
    ``{"clean", "robust", "wrobust", "n"}`` with accuracies in [0, 1].
    """
    if attack not in VAL_ATTACKS:
        _bad("attack", attack, f"one of {list(VAL_ATTACKS)}")
    if getattr(loader, "shuffle", False):
        _bad("loader", loader, "a loader with `shuffle=False`")
    ddp = ddp or _Dist()
    step_size = eps / 4 if step_size is None else step_size
    rank, world_size = getattr(loader, "rank", 0), getattr(loader, "world_size", 1)
    was_training = model.training
    device = next(model.parameters()).device
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    position = 0  # position of the batch's first image in this rank's shard
    model.eval()
    try:
        for x, y in loader:
            ids = rank + world_size * torch.arange(position, position + len(y))
            position += len(y)
            x_adv = _attacks.pgd(
                model,
                x,
                y,
                eps=eps,
                step_size=step_size,
                steps=steps,
                loss="ce" if attack == "pgd_sat" else "cw",
                random_start="uniform",
                model_mode="eval",
                sample_seeds=ids,
            )
            counts[0] += _count_correct(model, x, y)
            counts[1] += _count_correct(model, x_adv, y)
            counts[2] += len(y)
    finally:
        model.train(was_training)
    clean, robust, n = ddp.sum_(counts).tolist()
    clean, robust = (clean / n, robust / n) if n else (float("nan"), float("nan"))
    return {"clean": clean, "robust": robust, "wrobust": 0.5 * clean + 0.5 * robust, "n": int(n)}


# ----------------------------------------------------------------------------------------------
# Logs
# ----------------------------------------------------------------------------------------------
def _format(value: object) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


class _CsvLog:
    """Append-only CSV with a fixed header, flushed after each block of rows."""

    def __init__(self, path: Path, columns: list[str], *, keep_epochs: int | None) -> None:
        self.path = path
        self.columns = columns
        if keep_epochs is not None and path.exists():
            self._truncate(keep_epochs)
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(columns)
            self._file.flush()

    def _truncate(self, keep_epochs: int) -> None:
        """Drop rows of epochs after ``keep_epochs`` (written before an interruption)."""
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != self.columns:
            raise ValueError(
                f"Cannot resume: the log {str(self.path)!r} has columns {rows[0] if rows else []}, "
                f"expected {self.columns}."
            )
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= keep_epochs]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, self.path)

    def write(self, rows: list[list[object]]) -> None:
        self._writer.writerows([[_format(v) for v in row] for row in rows])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _row_tensor(value: object, n: int, device: torch.device) -> torch.Tensor:
    """A float64 1-D tensor of ``n`` values on ``device`` (NaN when the value is unknown)."""
    if value is None:
        return torch.full((n,), float("nan"), dtype=torch.float64, device=device)
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(-1).to(device=device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64).reshape(-1), device=device)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _config_differences(saved: TrainConfig, given: TrainConfig) -> list[str]:
    a, b = saved.to_dict(), given.to_dict()
    return [
        f"{k}: {a[k]!r} (saved) vs {b[k]!r} (given)"
        for k in a
        if k not in _RESUME_MUTABLE and a[k] != b[k]
    ]


def _prepare_data(
    config: TrainConfig,
    train_data: _data.ImageData | None,
    progress: bool,
    ddp: _Dist | None = None,
) -> tuple[_data.ImageData, _data.ImageData | None]:
    if train_data is None:
        ddp = ddp or _Dist()

        def load() -> _data.ImageData:
            return _data.load_dataset(
                config.dataset,
                "train",
                data_dir=config.data_dir,
                download=config.download,
                progress=progress,
            )

        # One process per node downloads a missing dataset; the others wait, then read it.
        node_main = _local_rank(ddp) in (None, 0)
        if node_main:
            train_data = load()
        ddp.barrier()
        if not node_main:
            train_data = load()
    if config.val_size >= len(train_data):
        _bad("val_size", config.val_size, f"smaller than the {len(train_data)} training images")
    val_data = None
    if config.val_size > 0:
        train_data, val_data = _data.split_validation(train_data, config.val_size, seed=config.seed)
    if config.train_subset is not None:
        if config.train_subset > len(train_data):
            _bad(
                "train_subset",
                config.train_subset,
                f"at most the {len(train_data)} training images left after validation",
            )
        generator = torch.Generator().manual_seed(config.seed)
        keep = torch.randperm(len(train_data), generator=generator)[: config.train_subset]
        train_data = train_data.subset(torch.sort(keep).values)
    return train_data, val_data


def train(
    config: TrainConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    train_data: _data.ImageData | None = None,
) -> dict[str, Any]:
    """Train a student as ``config`` says and write the run directory ``run_dir``.

    Args:
        config: the run's :class:`TrainConfig`. ``None`` with ``resume=True`` reads
            ``run_dir/config.json``.
        run_dir: the run directory (created). A directory that already holds a run needs
            ``resume=True``.
        resume: continue from ``checkpoints/last.pt`` (model, optimizer, scheduler, balancer,
            RNG states, loader epoch, best metric). On CPU the final weights are bit-identical
            to those of an uninterrupted run. The config must equal the saved one except for
            ``device``, ``log_every``, ``data_dir``, ``download``, ``tensorboard``. Without a
            ``last.pt`` the run starts from scratch.
        progress: show tqdm bars (rank 0 only).
        stop_after_epochs: stop once this many epochs are complete, leaving a resumable run
            (for time-limited jobs); ``final.pt`` is written only when all epochs are done.
        train_data: use this training set instead of loading ``config.dataset`` (the
            validation split and ``train_subset`` still apply).

    Returns:
        A JSON-serialisable dict, also written to ``metrics.json``: ``epochs_completed``,
        ``finished``, ``final`` (last epoch's row of ``epochs.csv``), ``best`` (epoch and
        validation metrics of ``best.pt``), ``num_skipped``, ``paths``, ``time_s``.

    Raises:
        NonFiniteLossError: a loss became NaN or infinite; ``last.pt`` is the last good epoch.
    """
    run_dir = Path(run_dir)
    if config is None:
        if not resume:
            _bad("config", None, "a TrainConfig (None is only allowed with `resume=True`)")
        config = TrainConfig.load(run_dir / "config.json")
    if not isinstance(config, TrainConfig):
        _bad("config", config, "a TrainConfig")
    config.validate()
    if stop_after_epochs is not None:
        _check_int("stop_after_epochs", stop_after_epochs, minimum=0)

    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_benchmark = torch.backends.cudnn.benchmark
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        with distributed_session(config.device):
            trainer = _Trainer(config, run_dir, progress=progress, train_data=train_data)
            return trainer.run(resume=resume, stop_after_epochs=stop_after_epochs)
    finally:
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        torch.backends.cudnn.benchmark = previous_benchmark


class _Trainer:
    """The state of one training run (one per :func:`train` call)."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        *,
        progress: bool,
        train_data: _data.ImageData | None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.ddp = _dist_info()
        self.progress = progress and self.ddp.main
        self.device = resolve_device(config.device, _local_rank(self.ddp))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.info = _data.DATASETS[config.dataset]
        self.spec = _methods.METHODS[config.method]
        self.paths = {
            "config": run_dir / "config.json",
            "last": run_dir / "checkpoints" / "last.pt",
            "best": run_dir / "checkpoints" / "best.pt",
            "final": run_dir / "final.pt",
            "steps_log": run_dir / "logs" / "steps.csv",
            "epochs_log": run_dir / "logs" / "epochs.csv",
            "metrics": run_dir / "metrics.json",
        }
        if config.batch_size % self.ddp.world_size:
            _bad(
                "batch_size",
                config.batch_size,
                f"divisible by the world size {self.ddp.world_size} (it is the global batch)",
            )
        if self.ddp.enabled and config.sync_bn and self.device.type != "cuda":
            _bad("sync_bn", True, "False on CPU devices (torch's SyncBatchNorm needs CUDA)")

        # Data: validation split first (independent of train_subset), then the subset.
        train_set, val_set = _prepare_data(
            config, train_data, progress and self.ddp.main, ddp=self.ddp
        )
        self.loader = _data.BatchLoader(
            train_set,
            config.batch_size // self.ddp.world_size,
            shuffle=True,
            augment=config.resolved_augment(),
            device=self.device,
            seed=config.seed,
            rank=self.ddp.rank,
            world_size=self.ddp.world_size,
        )
        self.val_loader = None
        if val_set is not None:
            val_batch = config.val_batch_size or config.batch_size
            self.val_loader = _data.BatchLoader(
                val_set,
                max(1, val_batch // self.ddp.world_size),
                device=self.device,
                rank=self.ddp.rank,
                world_size=self.ddp.world_size,
                pad_to_even=False,
            )

        # Student: same initialisation on every rank, then a per-rank random stream.
        torch.manual_seed(config.seed)
        self.memory_format = resolve_memory_format(config.memory_format, self.device)
        self.student = _models.build_model(
            config.student,
            num_classes=self.info.num_classes,
            in_channels=self.info.channels,
            **config.student_kwargs,
        ).to(self.device, memory_format=self.memory_format)
        if self.ddp.enabled and config.sync_bn:
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.model: nn.Module = self.student
        if self.ddp.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        torch.manual_seed((config.seed + 1) * 1_000_003 + self.ddp.rank)

        teachers = {}
        for role in ("clean", "adv"):
            path = getattr(config, f"{role}_teacher")
            teachers[role] = (
                None
                if path is None
                else load_teacher_model(
                    path,
                    arch=getattr(config, f"{role}_teacher_arch"),
                    num_classes=self.info.num_classes,
                    in_channels=self.info.channels,
                    model_kwargs=getattr(config, f"{role}_teacher_kwargs"),
                    device=self.device,
                    fold_bn=config.fold_bn,
                    image_size=self.info.image_size,
                ).to(memory_format=self.memory_format)
            )
        eps, step_size, attack_steps = config.resolved_attack()
        self.eps = eps
        self.ctx = _methods.MethodContext(
            student=torch.compile(self.model) if config.compile else self.model,
            clean_teacher=teachers["clean"],
            adv_teacher=teachers["adv"],
            eps=eps,
            step_size=step_size,
            attack_steps=attack_steps,
            num_classes=self.info.num_classes,
            hyper=self.spec.resolve_hyper(config.hyper),
        )
        self.weighting = _methods.build_weighting(
            self.spec, hyper=config.hyper, weight_lr=config.weight_lr, beta=config.beta
        )
        self.adaptive = isinstance(self.weighting, AdaptiveLossBalancer)
        self.names = list(self.weighting.names)
        self.optimizer = torch.optim.SGD(
            self.student.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        self.milestones = milestone_epochs(config)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=self.milestones, gamma=config.lr_gamma
        )
        self.start_epoch = 0
        self.global_step = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.time_s = 0.0

    # -- run ----------------------------------------------------------------------------------
    def run(self, *, resume: bool, stop_after_epochs: int | None) -> dict[str, Any]:
        config, paths = self.config, self.paths
        resumed = False
        has_last = paths["last"].exists()
        seen = self.ddp.gather_objects(has_last)
        if len(set(seen)) > 1:
            raise ValueError(
                f"The ranks disagree on whether {paths['last']} exists (rank k sees {seen}[k]): "
                "under torch.distributed the run directory must be on a file system that "
                "every rank shares."
            )
        if resume and has_last:
            self._load_last()
            resumed = True
        elif not resume and has_last:
            raise ValueError(
                f"The run directory {str(self.run_dir)!r} already holds a run "
                f"({paths['last']}). Pass `resume=True` (--resume) or choose another directory."
            )
        elif resume:
            warnings.warn(
                f"No {paths['last']} to resume from: starting from scratch.", stacklevel=3
            )

        self.steps_log = self.epochs_log = self.writer = None
        if self.ddp.main:
            for sub in ("checkpoints", "logs"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            if not resumed:
                config.save(paths["config"])
            keep = self.start_epoch if resumed else 0
            if not resumed:  # a fresh run starts fresh logs
                for key in ("steps_log", "epochs_log"):
                    paths[key].unlink(missing_ok=True)
            self.steps_log = _CsvLog(paths["steps_log"], self._step_columns(), keep_epochs=keep)
            self.epochs_log = _CsvLog(paths["epochs_log"], self._epoch_columns(), keep_epochs=keep)
            if config.tensorboard:
                self.writer = _summary_writer(self.run_dir / "logs" / "tensorboard")
        self.ddp.barrier()

        last_row: dict[str, Any] | None = None
        try:
            end = config.epochs
            if stop_after_epochs is not None:
                end = min(end, max(stop_after_epochs, self.start_epoch))
            for epoch in range(self.start_epoch, end):
                last_row = self._train_epoch(epoch)
            finished = end == config.epochs
            if last_row is None and self.ddp.main:
                last_row = _last_row(self.paths["epochs_log"])
            return self._finish(finished, last_row)
        finally:
            for log in (self.steps_log, self.epochs_log):
                if log is not None:
                    log.close()
            if self.writer is not None:
                self.writer.close()

    def _step_columns(self) -> list[str]:
        n = self.names
        return (
            ["epoch", "step", "lr"]
            + [f"loss_{k}" for k in n]
            + ["total"]
            + [f"w_{k}" for k in n]
            + [f"rel_{k}" for k in n]
        )

    def _epoch_columns(self) -> list[str]:
        n = self.names
        return (
            ["epoch"]
            + [f"loss_{k}" for k in n]
            + ["total"]
            + [f"w_{k}" for k in n]
            + [f"rel_{k}" for k in n]
            + ["val_clean", "val_robust", "val_wrobust", "lr", "weight_lr", "skipped", "time_s"]
        )

    # -- one epoch ----------------------------------------------------------------------------
    def _log_row(self, losses: Mapping[str, torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        """Detached losses, total, weights, relative losses as one float64 device tensor."""
        device = total.device
        n = len(self.names)
        values = torch.stack([losses[k].detach().reshape(()) for k in self.names]).double()
        return torch.cat(
            [
                values,
                total.detach().reshape(1).double(),
                _row_tensor(self.weighting.weights, n, device),
                _row_tensor(getattr(self.weighting, "relative_losses", None), n, device),
            ]
        )

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        config = self.config
        start = time.perf_counter()
        lr = float(self.optimizer.param_groups[0]["lr"])
        weight_lr = float(self.weighting.weight_lr) if self.adaptive else float("nan")
        self.loader.set_epoch(epoch)
        self.model.train()
        num_steps = len(self.loader)
        sums = np.zeros(3 * len(self.names) + 1)
        count = 0
        pending: list[torch.Tensor] = []
        first_step = epoch_first = self.global_step + 1
        bar = _tqdm(num_steps, f"epoch {epoch + 1}/{config.epochs}", self.progress)

        def flush() -> None:
            nonlocal sums, count, first_step
            block = torch.stack(pending)
            if self.ddp.enabled:  # mean over ranks; a NaN anywhere reaches every rank
                block = self.ddp.sum_(block) / self.ddp.world_size
            host = block.cpu().numpy()  # the one host-device synchronisation per flush
            steps = np.arange(first_step, first_step + len(host))
            rows = [
                [epoch + 1, int(s), lr, *map(float, r)] for s, r in zip(steps, host, strict=True)
            ]
            if self.steps_log is not None:
                self.steps_log.write(rows)
            total_col = len(self.names)
            bad = ~np.isfinite(host[:, total_col])
            if bad.any():
                i = int(np.argmax(bad))
                detail = ", ".join(
                    f"{k}={float(host[i, j])!r}" for j, k in enumerate([*self.names, "total"])
                )
                bar.close()
                raise NonFiniteLossError(
                    f"Non-finite training loss at epoch {epoch + 1}, step {int(steps[i])} "
                    f"(step {int(steps[i]) - epoch_first + 1} of {num_steps} in the "
                    f"epoch): {detail}. The run stopped; the last good checkpoint "
                    f"{self.paths['last']} (epoch {epoch}) was left untouched."
                )
            sums += host.sum(axis=0)
            count += len(host)
            if self.writer is not None:
                for s, r in zip(steps, host, strict=True):
                    for j, name in enumerate(self._step_columns()[3:]):
                        self.writer.add_scalar(f"step/{name}", r[j], int(s))
            means = host.mean(axis=0)
            bar.update(len(host))
            bar.set_postfix(
                {
                    **{k: f"{means[j]:.4g}" for j, k in enumerate(self.names)},
                    **{
                        f"w_{k}": f"{means[j + len(self.names) + 1]:.3f}"
                        for j, k in enumerate(self.names)
                    },
                },
                refresh=False,
            )
            pending.clear()
            first_step += len(host)

        for x, y in self.loader:
            x = x.contiguous(memory_format=self.memory_format)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.amp):
                losses = self.spec.loss_fn(self.ctx, x, y)
            total = self.weighting.step(losses)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            pending.append(self._log_row(losses, total))
            self.global_step += 1
            if len(pending) >= config.log_every:
                flush()
        if pending:
            flush()
        bar.close()
        # Under DDP each rank's BatchNorm statistics took their own last update: make every
        # replica rank 0's again before it is validated and saved.
        _broadcast_buffers(self.student, self.ddp)

        val = {"clean": float("nan"), "robust": float("nan"), "wrobust": float("nan")}
        if self.val_loader is not None:
            val = validate(
                self.student,
                self.val_loader,
                eps=self.eps,
                steps=config.val_attack_steps,
                attack=config.val_attack,
                ddp=self.ddp,
            )

        # End of epoch: schedule, then checkpoints (nothing reaches here after a NaN loss).
        self.scheduler.step()
        completed = epoch + 1
        if self.adaptive:
            decays = self.milestones.count(completed)
            if decays:
                self.weighting.weight_lr = self.weighting.weight_lr * config.lr_gamma**decays
        skipped = int(getattr(self.weighting, "num_skipped", 0))
        self.time_s += time.perf_counter() - start
        means = sums / max(count, 1)
        row = {
            "epoch": completed,
            **{c: float(v) for c, v in zip(self._step_columns()[3:], means, strict=True)},
            "val_clean": val["clean"],
            "val_robust": val["robust"],
            "val_wrobust": val["wrobust"],
            "lr": lr,
            "weight_lr": weight_lr,
            "skipped": skipped,
            "time_s": time.perf_counter() - start,
        }
        improved = False
        if self.val_loader is not None:
            if self.best_metric is None or val["wrobust"] > self.best_metric:
                self.best_metric, self.best_epoch, improved = val["wrobust"], completed, True
        else:  # no validation: "best" is the latest epoch
            self.best_epoch, improved = completed, True

        rng = self.ddp.gather_objects(_rng_state(self.device))
        if self.ddp.main:
            # The log row first: a run killed before last.pt is replaced re-runs this epoch and
            # resume drops the rows of epochs after the checkpoint.
            self.epochs_log.write([[row[c] for c in self._epoch_columns()]])
            if improved:
                self._save_model(self.paths["best"], completed, row)
            self._save_last(completed, rng)
            if self.writer is not None:
                for c in self._epoch_columns()[1:]:
                    self.writer.add_scalar(f"epoch/{c}", row[c], completed)
                self.writer.flush()
        if self.progress:
            _tqdm_write(
                f"epoch {completed}/{config.epochs}: total {row['total']:.4f}, "
                f"val clean {val['clean']:.4f}, robust {val['robust']:.4f}, "
                f"W-Robust {val['wrobust']:.4f}, lr {lr:.4g}, {row['time_s']:.1f}s"
            )
        self.ddp.barrier()
        return row

    # -- checkpoints --------------------------------------------------------------------------
    def _save_model(self, path: Path, epoch: int, row: Mapping[str, Any]) -> None:
        _checkpoints.save_model_checkpoint(
            path,
            self.student,
            arch=self.config.student,
            num_classes=self.info.num_classes,
            in_channels=self.info.channels,
            model_kwargs=dict(self.config.student_kwargs) or None,
            extra={
                "epoch": epoch,
                "method": self.config.method,
                "dataset": self.config.dataset,
                "selection": "val_wrobust" if self.val_loader is not None else "last",
                "val_clean": float(row["val_clean"]),
                "val_robust": float(row["val_robust"]),
                "val_wrobust": float(row["val_wrobust"]),
            },
        )

    def _save_last(self, epoch: int, rng: list[dict[str, Any]]) -> None:
        state = {
            "format": RUN_CHECKPOINT_FORMAT,
            "version": 1,
            "epoch": epoch,
            "loader_epoch": epoch,
            "global_step": self.global_step,
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "weight_lr": float(self.weighting.weight_lr) if self.adaptive else None,
            "rng": rng,
            "world_size": self.ddp.world_size,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "time_s": self.time_s,
            "config": self.config.to_dict(),
        }
        _checkpoints.atomic_save(state, self.paths["last"])

    def _load_last(self) -> None:
        state = _checkpoints.safe_load(self.paths["last"], map_location="cpu")
        if not isinstance(state, dict) or state.get("format") != RUN_CHECKPOINT_FORMAT:
            raise ValueError(
                f"Cannot resume: {self.paths['last']} is not a training checkpoint "
                f"(format {state.get('format') if isinstance(state, dict) else None!r})."
            )
        differences = _config_differences(TrainConfig.from_dict(state["config"]), self.config)
        if differences:
            raise ValueError(
                "Cannot resume with a different configuration: " + "; ".join(differences) + "."
            )
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.weighting.load_state_dict(state["weighting"])
        if self.adaptive and state["weight_lr"] is not None:
            self.weighting.weight_lr = state["weight_lr"]
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.time_s = float(state.get("time_s", 0.0))
        rng = state["rng"]
        if len(rng) == self.ddp.world_size:
            _set_rng_state(rng[self.ddp.rank], self.device)
        else:
            warnings.warn(
                f"Resuming with {self.ddp.world_size} ranks from a checkpoint of {len(rng)}: "
                "the random streams are reseeded, so the run is not bit-identical.",
                stacklevel=3,
            )
            torch.manual_seed((self.config.seed + 1) * 1_000_003 + self.ddp.rank + self.start_epoch)

    def _finish(self, finished: bool, last_row: dict[str, Any] | None) -> dict[str, Any]:
        completed = self.start_epoch
        if last_row is not None:
            completed = max(completed, int(last_row["epoch"]))
        paths = dict(self.paths)
        if not finished:
            paths.pop("final")
        if self.ddp.main and finished:
            self._save_model(
                self.paths["final"],
                completed,
                last_row
                or {
                    "val_clean": float("nan"),
                    "val_robust": float("nan"),
                    "val_wrobust": float("nan"),
                },
            )
        best = None
        if self.best_epoch is not None:
            best = {"epoch": self.best_epoch, "val_wrobust": self.best_metric}
        result = {
            "run_dir": str(self.run_dir),
            "method": self.config.method,
            "dataset": self.config.dataset,
            "student": self.config.student,
            "epochs_completed": completed,
            "finished": finished,
            "final": last_row,
            "best": best,
            "num_steps": self.global_step,
            "num_skipped": int(getattr(self.weighting, "num_skipped", 0)),
            "time_s": self.time_s,
            "paths": {k: str(v) for k, v in paths.items()},
        }
        result = _json_clean(result)
        if self.ddp.main:
            tmp = self.paths["metrics"].with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, self.paths["metrics"])
        self.ddp.barrier()
        return result


def _last_row(path: Path) -> dict[str, Any] | None:
    """The last row of an epochs log, as floats (None when the log has no rows)."""
    if not path.exists():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items()} if rows else None


def _json_clean(value: Any) -> Any:
    """Replace non-finite floats by None so that the result is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tqdm(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional dependency of the integration
        return _NoBar()
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _tqdm_write(text: str) -> None:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(text)
    else:
        tqdm.write(text)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _parse_float(text: str) -> float:
    """A float, also written as a fraction such as ``8/255``."""
    if "/" in text:
        num, _, den = text.partition("/")
        return float(num) / float(den)
    return float(text)


def _optional(parse):
    def parser(text: str):
        return None if text.lower() in ("none", "null", "") else parse(text)

    parser.__name__ = getattr(parse, "__name__", "value")
    return parser


def _json_dict(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {text!r}")
    return value


_FIELD_PARSERS = {
    "str": str,
    "str | None": _optional(str),
    "int": int,
    "int | None": _optional(int),
    "float": _parse_float,
    "float | None": _optional(_parse_float),
    "dict[str, Any]": _json_dict,
}


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:.6g}" for v in value)
    return "None" if value is None else str(value)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand: every :class:`TrainConfig` field is a flag.

    Precedence: the defaults, then ``RUN_DIR/config.json`` when resuming, then ``--config``
    (a JSON file of fields), then the flags given on the command line.
    """
    parser = subparsers.add_parser(
        "train",
        help="train a student (MTARD or a baseline) and write a run directory",
        description=(
            "Train a student and write a run directory (config.json, checkpoints/last.pt and "
            "best.pt, final.pt, logs/steps.csv and epochs.csv, metrics.json). Every "
            "TrainConfig field is a flag. Precedence: the defaults, then RUN_DIR/config.json "
            "when resuming, then --config, then the flags given."
        ),
    )
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints/last.pt")
    parser.add_argument(
        "--config", dest="config_file", metavar="JSON", help="JSON file of TrainConfig fields"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        metavar="N",
        help="stop (resumably) once this many epochs are complete",
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING:
            help_text += f" (default: {_default_text(f.default)})"
        elif f.default_factory is not dataclasses.MISSING:
            help_text += f" (default: {json.dumps(f.default_factory())})"
        else:
            help_text += " (required unless given by --config or a resumed run)"
        kwargs: dict[str, Any] = {
            "dest": f"cfg_{f.name}",
            "default": argparse.SUPPRESS,
            "help": help_text,
        }
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type == "tuple[float, ...]":
            kwargs.update(type=_parse_float, nargs="*", metavar="FRACTION")
        else:
            kwargs.update(type=_FIELD_PARSERS[f.type], metavar=f.name.upper())
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(func=run_train_cli)


def run_train_cli(args: argparse.Namespace) -> int:
    """Run the ``train`` subcommand from parsed arguments; returns the exit status."""
    run_dir = Path(args.out)
    values: dict[str, Any] = {}
    if args.resume and (run_dir / "config.json").exists():
        values.update(json.loads((run_dir / "config.json").read_text()))
    if args.config_file:
        values.update(json.loads(Path(args.config_file).read_text()))
    for f in dataclasses.fields(TrainConfig):
        if hasattr(args, f"cfg_{f.name}"):
            values[f.name] = getattr(args, f"cfg_{f.name}")
    try:
        config = TrainConfig.from_dict(values)
    except ValueError as exc:
        print(f"anl-mtard train: error: {exc}", file=sys.stderr)
        return 2
    result = train(
        config,
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        stop_after_epochs=args.stop_after_epochs,
    )
    if _is_main_process():
        final = result["final"] or {}
        print(
            f"{result['method']} on {result['dataset']}: {result['epochs_completed']} epochs, "
            f"val clean {final.get('val_clean')}, robust {final.get('val_robust')}, "
            f"W-Robust {final.get('val_wrobust')}; best epoch {(result['best'] or {}).get('epoch')}"
            f"; run directory {result['run_dir']}"
        )
    return 0
