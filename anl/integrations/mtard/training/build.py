"""The parts of a training run, built from its configuration.

:func:`check_parallel` refuses what cannot run on the ranks at hand; :func:`build_loaders`,
:func:`build_student`, :func:`build_context` (the frozen teachers and the training attack) and
:func:`build_optimizer` make what the loop of :mod:`.trainer` runs. Under ``torchrun`` the
student is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` and each rank's
loader reads its shard of the *global* batch ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..checks import fail
from ..data.loader import BatchLoader
from ..data.registry import DATASETS, ImageData
from ..methods.context import TEACHER_ROLES, MethodContext
from ..methods.registry import METHODS
from ..models import build_model
from ..models.folding import FoldedEvalView
from ..models.teachers import load_teacher_model
from ..runtime.process import Ranks
from .config import TrainConfig, milestone_epochs


def check_parallel(config: TrainConfig, ranks: Ranks, device: torch.device) -> None:
    """Raise when ``config`` cannot run data-parallel on ``ranks``: the global batch must
    divide among them, and SyncBatchNorm needs CUDA."""
    if config.batch_size % ranks.world_size:
        fail(
            "batch_size",
            config.batch_size,
            f"divisible by the world size {ranks.world_size} (it is the global batch)",
        )
    if ranks.enabled and config.sync_bn and device.type != "cuda":
        fail("sync_bn", True, "False on CPU devices (torch's SyncBatchNorm needs CUDA)")


def build_loaders(
    config: TrainConfig,
    train_set: ImageData,
    val_set: ImageData | None,
    *,
    ranks: Ranks,
    device: torch.device,
) -> tuple[BatchLoader, BatchLoader | None]:
    """The shuffled, augmented training loader (this rank's share of the global batch) and
    the validation loader (exact shards, ``None`` without a validation split)."""
    loader = BatchLoader(
        train_set,
        config.batch_size // ranks.world_size,
        shuffle=True,
        augment=config.resolved_augment(),
        device=device,
        seed=config.seed,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    if val_set is None:
        return loader, None
    val_batch = config.val_batch_size or config.batch_size
    val_loader = BatchLoader(
        val_set,
        max(1, val_batch // ranks.world_size),
        device=device,
        rank=ranks.rank,
        world_size=ranks.world_size,
        pad_to_even=False,
    )
    return loader, val_loader


def build_student(
    config: TrainConfig,
    *,
    ranks: Ranks,
    device: torch.device,
    memory_format: torch.memory_format,
) -> tuple[nn.Module, nn.Module]:
    """The student (the same initialisation on every rank, from ``config.seed``) and the module
    that trains it (its DDP wrapper under ``torchrun``); then each rank gets its own random
    stream, seeded ``(seed + 1) * 1000003 + rank``."""
    info = DATASETS[config.dataset]
    torch.manual_seed(config.seed)
    student = build_model(
        config.student,
        num_classes=info.num_classes,
        in_channels=info.channels,
        **config.student_kwargs,
    ).to(device, memory_format=memory_format)
    if ranks.enabled and config.sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    model: nn.Module = student
    if ranks.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(student, device_ids=device_ids)
    torch.manual_seed((config.seed + 1) * 1_000_003 + ranks.rank)
    return student, model


def _teacher(
    config: TrainConfig, role: str, device: torch.device, memory_format: torch.memory_format
) -> nn.Module | None:
    """The ``role`` teacher, frozen and BatchNorm-folded, or ``None`` when not given."""
    path = getattr(config, f"{role}_teacher")
    if path is None:
        return None
    info = DATASETS[config.dataset]
    teacher = load_teacher_model(
        path,
        arch=getattr(config, f"{role}_teacher_arch"),
        num_classes=info.num_classes,
        in_channels=info.channels,
        model_kwargs=getattr(config, f"{role}_teacher_kwargs"),
        device=device,
        fold_bn=config.fold_bn,
        image_size=info.image_size,
    )
    return teacher.to(memory_format=memory_format)


def build_context(
    config: TrainConfig,
    student: nn.Module,
    model: nn.Module,
    *,
    device: torch.device,
    memory_format: torch.memory_format,
) -> MethodContext:
    """What the method is given besides the batch: the training module (compiled with
    ``compile``), the teachers, the training attack, and the folded eval-mode view of the
    plain student that the eval-mode attacks run on."""
    teachers = {role: _teacher(config, role, device, memory_format) for role in TEACHER_ROLES}
    eps, step_size, attack_steps = config.resolved_attack()
    spec = METHODS[config.method]
    return MethodContext(
        student=torch.compile(model) if config.compile else model,
        clean_teacher=teachers["clean"],
        adv_teacher=teachers["adv"],
        eps=eps,
        step_size=step_size,
        attack_steps=attack_steps,
        num_classes=DATASETS[config.dataset].num_classes,
        hyper=spec.resolve_hyper(config.hyper),
        # The eval-mode attacks run on the plain student's folded function: no DDP wrapper
        # (no parameter gradients there), no compiled graph to bypass.
        eval_attack_model=(
            FoldedEvalView(student) if config.fold_attack_bn and not config.compile else None
        ),
    )


def build_optimizer(
    config: TrainConfig, student: nn.Module, rule_parameters: Sequence[nn.Parameter] = ()
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    """SGD on the student's parameters and its step schedule (:func:`~.config.milestone_epochs`).

    ``rule_parameters`` (uncertainty weighting's, IMTL-L's: :func:`~..methods.balancers
    .rule_parameters`) form a second group with the same learning rate, schedule and momentum
    and no weight decay."""
    groups: list[dict[str, Any]] = [{"params": list(student.parameters())}]
    if rule_parameters:
        groups.append({"params": list(rule_parameters), "weight_decay": 0.0})
    optimizer = torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=milestone_epochs(config), gamma=config.lr_gamma
    )
    return optimizer, scheduler
