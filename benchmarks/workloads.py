"""The MTARD workloads the benchmarks time: models, a fixed batch, our step, the reference step.

Two workloads (``--workload``):

=================  ==============================================================================
``fmnist``         Fashion-MNIST shapes (1 x 28 x 28, 10 classes), student ``small_cnn``, both
                   teachers ``large_cnn``; eps 0.1, step 0.025; batch 128 by default.
``cifar_resnet18`` CIFAR shapes (3 x 32 x 32, 10 classes), student ``resnet18``, clean teacher
                   ``resnet56`` (the paper's), adversarial teacher ``resnet18``: a CPU stand-in
                   for the paper's WRN-34-10 (48 M parameters, all at full width: too slow for
                   a quick CPU benchmark; ``build_workload(..., adv_teacher="wrn34_10")``
                   restores it, as ``python -m benchmarks.gpu_checks`` does);
                   eps 8/255, step 2/255; batch 32 by default on CPU.
=================  ==============================================================================

The images are uniform random in [0, 1] and the labels random (seeded): the cost of a step does
not depend on the pixel values, and the benchmarks need no dataset. Networks are freshly
initialised (seeded); teachers are untrained, which changes nothing in the cost either.

"Our step" is the training code path itself: :data:`~anl.integrations.mtard.methods.registry.METHODS`
``["mtard"]`` (the attack is :func:`~anl.integrations.mtard.attacks.gradient.pgd` on the student's
:class:`~anl.integrations.mtard.models.folding.FoldedEvalView`, as the loop runs it), teachers frozen by
:func:`~anl.integrations.mtard.models.teachers.prepare_teacher`, an :class:`anl.AdaptiveLossBalancer`, and
the four lines of the training loop (``weighting.step``, ``zero_grad(set_to_none=True)``,
``backward``, ``optimizer.step``) plus the loop's device-side log row. The reference is
:class:`benchmarks.reference_mtard.ReferenceMTARD`.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from anl import AdaptiveLossBalancer
from anl.integrations.mtard.methods.context import MethodContext
from anl.integrations.mtard.methods.registry import METHODS, build_weighting
from anl.integrations.mtard.models import build_model
from anl.integrations.mtard.models.folding import FoldedEvalView
from benchmarks.reference_mtard import ReferenceMTARD

__all__ = ["WORKLOADS", "Workload", "build_workload", "make_optimizer"]


@dataclass(frozen=True)
class _Shape:
    student: str
    clean_teacher: str
    adv_teacher: str
    channels: int
    size: int
    num_classes: int
    eps: float
    step_size: float
    batch_size: int


WORKLOADS: dict[str, _Shape] = {
    "fmnist": _Shape("small_cnn", "large_cnn", "large_cnn", 1, 28, 10, 0.1, 0.025, 128),
    "cifar_resnet18": _Shape("resnet18", "resnet56", "resnet18", 3, 32, 10, 8 / 255, 2 / 255, 32),
}


def make_optimizer(student: nn.Module) -> torch.optim.SGD:
    """The official optimiser: SGD, lr 0.1, momentum 0.9, weight decay 2e-4."""
    return torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)


@dataclass
class Workload:
    """A student, two teachers and one fixed batch on one device, in two layouts.

    ``student``, ``clean_teacher``, ``adv_teacher`` and ``x`` are plain contiguous NCHW, as the
    official code has them (the reference uses them). Our step uses copies in
    ``memory_format`` (the training loop's :func:`~anl.integrations.mtard.runtime.execution.resolve_memory_format`)
    and the prepared teachers ``prepared_clean`` / ``prepared_adv`` (frozen, BatchNorm folded
    unless ``fold_bn=False``, in ``memory_format``).
    """

    name: str
    student: nn.Module
    clean_teacher: nn.Module
    adv_teacher: nn.Module
    x: Tensor
    y: Tensor
    eps: float
    step_size: float
    attack_steps: int
    num_classes: int
    memory_format: torch.memory_format
    prepared_clean: nn.Module
    prepared_adv: nn.Module
    fold_attack_bn: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def x_ours(self) -> Tensor:
        """The batch as the training loop hands it to the method (in ``memory_format``)."""
        return self.x.contiguous(memory_format=self.memory_format)

    def our_student(self) -> nn.Module:
        """A fresh copy of the student in our layout."""
        return copy.deepcopy(self.student).to(memory_format=self.memory_format)

    # -- our step -------------------------------------------------------------------------
    def context(self, student: nn.Module) -> MethodContext:
        """The loop's :class:`MethodContext` for ``student`` and the prepared teachers."""
        return MethodContext(
            student=student,
            clean_teacher=self.prepared_clean,
            adv_teacher=self.prepared_adv,
            eps=self.eps,
            step_size=self.step_size,
            attack_steps=self.attack_steps,
            num_classes=self.num_classes,
            hyper=METHODS["mtard"].resolve_hyper({}),
            eval_attack_model=FoldedEvalView(student) if self.fold_attack_bn else None,
        )

    def our_step(
        self, *, student: nn.Module | None = None, autocast: torch.dtype | None = None
    ) -> Callable[[], dict[str, Tensor]]:
        """A zero-argument closure running one MTARD step of the training loop's code path.

        ``student`` defaults to :meth:`our_student` (so steps do not disturb other
        candidates); the optimiser and the balancer are fresh. ``autocast`` (e.g.
        ``torch.bfloat16``) runs the method under :func:`torch.autocast`, as the loop's
        ``amp`` option does.
        """
        student = self.our_student() if student is None else student
        optimizer = make_optimizer(student)
        spec = METHODS["mtard"]
        weighting = build_weighting(spec)
        ctx = self.context(student)
        xb, yb = self.x_ours, self.y
        device_type = xb.device.type
        log: list[Tensor] = []

        def step() -> dict[str, Tensor]:
            with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
                losses = spec.loss_fn(ctx, xb, yb)
            total = weighting.step(losses)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            # The loop's step log: one device-side row, read back in blocks (no host sync).
            log.append(_log_row(losses, total, weighting))
            if len(log) > 50:
                log.clear()
            return {**losses, "total": total}

        step.student = student  # type: ignore[attr-defined]
        step.optimizer = optimizer  # type: ignore[attr-defined]
        step.weighting = weighting  # type: ignore[attr-defined]
        return step

    # -- the reference step ---------------------------------------------------------------
    def reference_step(
        self, *, student: nn.Module | None = None
    ) -> Callable[[], dict[str, Tensor | float]]:
        """A zero-argument closure running one official-style step (:class:`ReferenceMTARD`)
        on a contiguous copy of the student, the raw teachers and the contiguous batch."""
        student = copy.deepcopy(self.student) if student is None else student
        optimizer = make_optimizer(student)
        reference = ReferenceMTARD(
            student,
            self.clean_teacher,
            self.adv_teacher,
            optimizer,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.attack_steps,
        )

        def step() -> dict[str, Tensor | float]:
            return reference.step(self.x, self.y)

        step.student = student  # type: ignore[attr-defined]
        step.optimizer = optimizer  # type: ignore[attr-defined]
        step.reference = reference  # type: ignore[attr-defined]
        return step


def _log_row(losses: dict[str, Tensor], total: Tensor, weighting: AdaptiveLossBalancer) -> Tensor:
    """As ``training.logs.StepRows.append``: detached losses, total, weights, relative losses."""
    values = torch.stack([v.detach().reshape(()) for v in losses.values()]).double()
    weights = torch.as_tensor(weighting.weights).reshape(-1).to(total.device, torch.float64)
    relative = (
        torch.as_tensor(weighting.relative_losses).reshape(-1).to(total.device, torch.float64)
    )
    return torch.cat([values, total.detach().reshape(1).double(), weights, relative])


def _teacher(name: str, shape: _Shape, device: torch.device) -> nn.Module:
    model = build_model(name, num_classes=shape.num_classes, in_channels=shape.channels)
    return model.to(device).eval()


def build_workload(
    name: str = "fmnist",
    *,
    batch_size: int | None = None,
    attack_steps: int = 10,
    device: str | torch.device = "cpu",
    seed: int = 0,
    fold_bn: bool = True,
    fold_attack_bn: bool = True,
    memory_format: str = "auto",
    clean_teacher: str | None = None,
    adv_teacher: str | None = None,
) -> Workload:
    """Build the workload ``name`` of :data:`WORKLOADS` (seeded networks and batch).

    ``fold_bn``, ``fold_attack_bn`` and ``memory_format`` ("auto", "channels_last",
    "contiguous") are the training loop's options of the same names (``TrainConfig``); they
    apply to our step only.
    """
    from anl.integrations.mtard.models.teachers import prepare_teacher
    from anl.integrations.mtard.runtime.execution import resolve_memory_format

    if name not in WORKLOADS:
        raise ValueError(
            f"Parameter `name` should be one of {sorted(WORKLOADS)}. Found `name = {name!r}`."
        )
    shape = WORKLOADS[name]
    device = torch.device(device)
    fmt = resolve_memory_format(memory_format, device)
    batch_size = shape.batch_size if batch_size is None else batch_size
    clean_name = clean_teacher or shape.clean_teacher
    adv_name = adv_teacher or shape.adv_teacher
    torch.manual_seed(seed)
    student = build_model(
        shape.student, num_classes=shape.num_classes, in_channels=shape.channels
    ).to(device)
    clean = _teacher(clean_name, shape, device)
    adv = _teacher(adv_name, shape, device)
    _warm_batchnorm(clean, shape, device)
    _warm_batchnorm(adv, shape, device)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch_size, shape.channels, shape.size, shape.size, generator=generator)
    y = torch.randint(0, shape.num_classes, (batch_size,), generator=generator)
    x, y = x.to(device), y.to(device)
    example = x[:2]
    prepared = [
        prepare_teacher(copy.deepcopy(t), fold_bn=fold_bn, example_input=example).to(
            memory_format=fmt
        )
        for t in (clean, adv)
    ]
    return Workload(
        name=name,
        student=student,
        clean_teacher=clean,
        adv_teacher=adv,
        x=x,
        y=y,
        eps=shape.eps,
        step_size=shape.step_size,
        attack_steps=attack_steps,
        num_classes=shape.num_classes,
        memory_format=fmt,
        prepared_clean=prepared[0],
        prepared_adv=prepared[1],
        fold_attack_bn=fold_attack_bn,
        info={
            "workload": name,
            "student": shape.student,
            "clean_teacher": clean_name,
            "adv_teacher": adv_name,
            "input": [batch_size, shape.channels, shape.size, shape.size],
            "batch_size": batch_size,
            "attack_steps": attack_steps,
            "eps": shape.eps,
            "step_size": shape.step_size,
            "fold_bn": fold_bn,
            "fold_attack_bn": fold_attack_bn,
            "memory_format": str(fmt).replace("torch.", ""),
            "device": str(device),
        },
    )


@torch.no_grad()
def _warm_batchnorm(model: nn.Module, shape: _Shape, device: torch.device) -> None:
    """Give the teachers' BatchNorm non-trivial running statistics (as a trained teacher has),
    so that folding them is a real test; a few train-mode forwards on random images."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    generator = torch.Generator().manual_seed(1234)
    model.train()
    for _ in range(2):
        x = torch.rand(16, shape.channels, shape.size, shape.size, generator=generator)
        model(x.to(device))
    model.eval()


def add_workload_arguments(parser: argparse.ArgumentParser, *, default: list[str]) -> None:
    """``--workload`` (one or more of :data:`WORKLOADS`), ``--batch-size``, ``--attack-steps``."""
    parser.add_argument("--workload", nargs="+", default=default, choices=sorted(WORKLOADS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the workload's")
    parser.add_argument("--attack-steps", type=int, default=10)


def workloads_from_args(args: argparse.Namespace) -> Iterator[tuple[str, Workload]]:
    """Build each workload named by :func:`add_workload_arguments`'s flags, one at a time."""
    for name in args.workload:
        yield (
            name,
            build_workload(
                name,
                batch_size=args.batch_size,
                attack_steps=args.attack_steps,
                device=args.device,
                seed=args.seed,
            ),
        )
