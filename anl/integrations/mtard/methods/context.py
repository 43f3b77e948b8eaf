"""What a training method is given besides the batch: the student, the teachers, the attack.

:class:`MethodContext` holds the networks and the training attack's budget; a method's
hyperparameters are checked by :func:`check_hyper` (one rule per name). The teachers have two
roles (:data:`TEACHER_ROLES`): the naturally trained ``"clean"`` teacher and the adversarially
trained ``"adv"`` one (paper Sec. 3.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

TEACHER_ROLES = ("clean", "adv")
"""The teachers of MTARD: the clean (natural) teacher and the adversarial one."""


@dataclass
class MethodContext:
    """Everything a method needs besides the batch.

    Args:
        student: the network being trained; the methods switch its mode themselves and leave
            it in train mode.
        clean_teacher: the naturally trained teacher (MTARD, baseline_mt), or ``None``.
        adv_teacher: the adversarially trained teacher (MTARD, ablations, ARD, RSLAD), or
            ``None``.
        eps: L-inf radius of the training attack, for images in [0, 1] (8/255 on CIFAR).
        step_size: size of each signed-gradient step (2/255 on CIFAR).
        attack_steps: number of attack steps (10 in all the official codes).
        num_classes: number of classes of the task.
        hyper: method hyperparameters; missing keys take :attr:`MethodSpec.defaults`.
        generator: random generator of the attack's random start (``None``: the global one).
        eval_attack_model: called with the clean batch before each *eval-mode* attack, it
            returns the module that attack runs on instead of ``student``; it must compute
            the student's eval-mode function. The training loop passes a
            :class:`~..models.folding.FoldedEvalView` of the student (its
            BatchNorm folded, the same function up to float rounding, measured faster).
            ``None``: the attack runs on ``student`` itself. Train-mode attacks (ARD) always
            run on ``student``.
        replay: set by the two-teacher methods (MTARD, Baseline+MT) at each step: called
            under :func:`torch.no_grad` after the optimiser step, it recomputes that step's
            losses with the student as it is now, on the same batch, adversarial examples and
            teacher outputs, in train mode without updating BatchNorm's running statistics.
            FAMO's second call (``update(losses_after)``) uses it; ``None`` before a step.
    """

    student: nn.Module
    clean_teacher: nn.Module | None
    adv_teacher: nn.Module | None
    eps: float
    step_size: float
    attack_steps: int
    num_classes: int
    hyper: dict[str, Any] = field(default_factory=dict)
    generator: torch.Generator | None = None
    eval_attack_model: Callable[[Tensor], nn.Module] | None = None
    replay: Callable[[], dict[str, Tensor]] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(
                f"Parameter `eps` should be a finite number >= 0. Found `eps = {self.eps}`."
            )
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(
                "Parameter `step_size` should be a finite number > 0. "
                f"Found `step_size = {self.step_size}`."
            )
        if isinstance(self.attack_steps, bool) or not isinstance(self.attack_steps, int):
            raise ValueError(
                "Parameter `attack_steps` should be an int >= 0. "
                f"Found `attack_steps = {self.attack_steps!r}`."
            )
        if self.attack_steps < 0:
            raise ValueError(
                "Parameter `attack_steps` should be an int >= 0. "
                f"Found `attack_steps = {self.attack_steps}`."
            )
        if self.num_classes < 2:
            raise ValueError(
                f"Parameter `num_classes` should be >= 2. Found `num_classes = {self.num_classes}`."
            )


#: A method: ``fn(ctx, x, y) -> {name: 0-dim loss with a graph to the student}``.
LossFn = Callable[[MethodContext, Tensor, Tensor], dict[str, Tensor]]


_HYPER_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "beta": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "alpha": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "temperature": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "kl_factor": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "w_adv": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
}


def check_hyper(name: str, value: Any) -> float:
    """``value`` as a float if it is a valid ``name`` hyperparameter; else a ``ValueError``."""
    check, wanted = _HYPER_RULES[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not check(number):
        raise ValueError(f"Parameter `hyper['{name}']` should be {wanted}. Found `{value!r}`.")
    return number


def hyper_value(ctx: MethodContext, name: str, default: float) -> float:
    """The checked hyperparameter ``name`` of ``ctx`` (``default`` when not given)."""
    return check_hyper(name, ctx.hyper.get(name, default))
