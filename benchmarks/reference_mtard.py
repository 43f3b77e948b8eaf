"""The MTARD training step written the way the official code writes it: the benchmarks' baseline.

This is the *reference* that :mod:`benchmarks.step_vs_reference` times our step against, and
that ``tests/test_benchmark_reference.py`` proves our step equal to. It follows the official
CIFAR-10 script of Zhao et al. (ECCV 2022) and the RSLAD attack it builds on, with their
costs kept on purpose:

- the attack calls ``loss.backward()`` on ``x_adv.requires_grad_()``: a full backward pass that
  also computes (and accumulates into ``.grad``) every parameter gradient of the student,
  thrown away by ``optimizer.zero_grad()`` after the attack;
- the teachers are plain modules in eval mode run under :func:`torch.no_grad` (no BatchNorm
  folding, parameters still ``requires_grad``);
- the ANL weights (paper Eq. 6-11) are updated from ``loss.item()`` on the host, and the total
  loss is read with ``.item()`` for logging: two host-device synchronisations per step.

What it computes is the official step exactly: (1) clean teacher on ``x``; (2) PGD on the
student's cross-entropy (summed over the batch, as ``nn.CrossEntropyLoss(size_average=False)``)
from ``x + 0.001 N(0, 1)`` (no clamp) with the student in eval mode, ``steps`` sign steps of
``step_size``, projected to the ``eps``-ball and clamped to [0, 1]; (3) adversarial teacher on
``x_adv``; (4) student in train mode on ``x_adv`` then on ``x``; (5) the official KL
``mean(-log_softmax(s) * p_t + log(p_t + 1e-5) * p_t)`` over all ``B x C`` elements;
(6) ``w_adv L_adv + w_nat L_nat`` with the ANL weights, backward, ``optimizer.step()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ReferenceMTARD", "official_kl"]


def official_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """The MTARD/RSLAD scripts' ``kl_loss(a, b) = -a * b + torch.log(b + 1e-5) * b``, meaned."""
    a = F.log_softmax(student_logits, dim=1)
    b = F.softmax(teacher_logits.detach(), dim=1)
    return torch.mean(-a * b + torch.log(b + 1e-5) * b)


class ReferenceMTARD:
    """One official-style MTARD step per :meth:`step` call (state: ANL weights, ``L(0)``).

    Args:
        student, clean_teacher, adv_teacher: the three networks (teachers used as given).
        optimizer: the student's optimiser (the official code: SGD 0.1, momentum 0.9, wd 2e-4).
        eps, step_size, steps: the student attack (8/255, 2/255, 10 on CIFAR).
        weight_lr: ANL's ``r_w`` (0.025); beta: ANL's exponent (1).
    """

    def __init__(
        self,
        student: nn.Module,
        clean_teacher: nn.Module,
        adv_teacher: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        eps: float,
        step_size: float,
        steps: int,
        weight_lr: float = 0.025,
        beta: float = 1.0,
    ) -> None:
        self.student = student
        self.clean_teacher = clean_teacher
        self.adv_teacher = adv_teacher
        self.optimizer = optimizer
        self.eps = eps
        self.step_size = step_size
        self.steps = steps
        self.weight_lr = weight_lr
        self.beta = beta
        self.weight = {"adv_loss": 0.5, "nat_loss": 0.5}
        self.init_loss: dict[str, float] | None = None
        self.train_loss = 0.0

    def attack(self, x: Tensor, y: Tensor) -> Tensor:
        """The official inner maximisation (``mtard_inner_loss_ce``), full backward included."""
        model, eps = self.student, self.eps
        model.eval()
        x_adv = x.detach() + 0.001 * torch.randn(x.shape, device=x.device).detach()
        for _ in range(self.steps):
            x_adv.requires_grad_()
            with torch.enable_grad():
                loss_ce = F.cross_entropy(model(x_adv), y, reduction="sum")
            loss_ce.backward()  # also fills every parameter's .grad
            x_adv = x_adv.detach() + self.step_size * torch.sign(x_adv.grad.detach())
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
            x_adv = torch.clamp(x_adv, 0.0, 1.0)
        model.train()
        x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
        self.optimizer.zero_grad()
        return x_adv

    def step(self, x: Tensor, y: Tensor) -> dict[str, Tensor | float]:
        """One training step; returns ``x_adv``, the two losses, the total and the weights."""
        student = self.student
        self.clean_teacher.eval()
        with torch.no_grad():
            teacher_nat_logits = self.clean_teacher(x)
        x_adv = self.attack(x, y)
        self.adv_teacher.eval()
        with torch.no_grad():
            teacher_adv_logits = self.adv_teacher(x_adv)
        student.train()
        adv_logits = student(x_adv)
        nat_logits = student(x)
        kl_loss1 = official_kl(adv_logits, teacher_adv_logits)
        kl_loss2 = official_kl(nat_logits, teacher_nat_logits)

        # ANL (paper Eq. 6-11) on host floats, as the official script does.
        adv_value, nat_value = kl_loss1.item(), kl_loss2.item()
        if self.init_loss is None:
            self.init_loss = {"adv_loss": adv_value, "nat_loss": nat_value}
        adv_rate = (adv_value / self.init_loss["adv_loss"]) ** self.beta
        nat_rate = (nat_value / self.init_loss["nat_loss"]) ** self.beta
        lr = self.weight_lr
        self.weight["adv_loss"] = (
            lr * adv_rate / (adv_rate + nat_rate) + (1 - lr) * self.weight["adv_loss"]
        )
        self.weight["nat_loss"] = (
            lr * nat_rate / (adv_rate + nat_rate) + (1 - lr) * self.weight["nat_loss"]
        )
        total_loss = self.weight["adv_loss"] * kl_loss1 + self.weight["nat_loss"] * kl_loss2

        self.optimizer.zero_grad()
        total_loss.backward()
        self.optimizer.step()
        self.train_loss += total_loss.item()
        return {
            "x_adv": x_adv,
            "adv": kl_loss1.detach(),
            "nat": kl_loss2.detach(),
            "total": total_loss.detach(),
            "w_adv": self.weight["adv_loss"],
            "w_nat": self.weight["nat_loss"],
        }
