"""One loss function per training method: MTARD, its ablations and the baselines of the paper.

A method maps a batch and the models (:class:`~.context.MethodContext`) to *named* losses; the
weights are the business of :mod:`.registry` (:func:`~.registry.build_weighting`).

Every method follows its official code, including the order of the forward passes and the
mode switches, because both decide which batches BatchNorm's running statistics see (the
statistics the student is evaluated with). Teachers are put in eval mode and run under
:func:`torch.no_grad`; they never get gradients. "eval attack" means the student runs in eval
mode during the attack (running statistics, no update); "train attack" means train mode
(batch statistics, each attack step updates the running statistics). The attack runs
``ctx.attack_steps`` signed-gradient steps of ``ctx.step_size`` in the L-inf ball of radius
``ctx.eps``, clamped to [0, 1] after each step (:func:`~..attacks.gradient.pgd`).

============  =====================================  =========================================  ====
method        attack (start; loss; student mode)     forwards after the attack (train mode)      BN
============  =====================================  =========================================  ====
natural       none                                   S(x)                                        1
sat           U(-eps, eps), clamped; CE; eval        S(x')                                       1
trades        x + 0.001 N(0,1); sum KL(S(x')|S(x))   S(x), S(x'), S(x) [stats only, see trades]  3
ard           U(-eps, eps), no clamp; CE; **train**  S(x'), S(x)                                 12
rslad         x + 0.001 N(0,1); sum KL(S(x')|T(x))   S(x'), S(x)                                 2
baseline      x + 0.001 N(0,1); CE; eval             S(x')                                       1
baseline_mt   x + 0.001 N(0,1); CE; eval             S(x'), S(x)                                 2
mtard         x + 0.001 N(0,1); CE; eval             S(x'), S(x)                                 2
============  =====================================  =========================================  ====

(BN: running-statistics updates per step with 10 attack steps; ``x'`` the adversarial batch.)
The teachers see: ARD and RSLAD, their one adversarial teacher on the *clean* batch ``x``;
baseline, the adversarial teacher on ``x'``; MTARD and baseline_mt, the clean teacher on ``x``
and the adversarial teacher on ``x'`` (paper Eq. 3).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from ..attacks.gradient import pgd
from .context import MethodContext, hyper_value
from .losses import ce, kl_ard, kl_official, kl_sum, kl_trades

#: Standard deviation of the Gaussian start of the TRADES, RSLAD and MTARD attacks.
START_STD = 0.001


def _require(module: nn.Module | None, role: str, method: str) -> nn.Module:
    if module is None:
        raise ValueError(
            f"Parameter `ctx.{role}` should be an nn.Module for method '{method}'. "
            f"Found `ctx.{role} = None`."
        )
    return module


def _teacher_logits(teacher: nn.Module, x: Tensor) -> Tensor:
    """Teacher logits in eval mode without a graph (``no_grad``, not ``inference_mode``: the
    result enters autograd later as a constant)."""
    teacher.eval()
    with torch.no_grad():
        return teacher(x)


def _attack(
    ctx: MethodContext,
    x: Tensor,
    target: Tensor,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor],
    random_start: Literal["normal", "uniform"],
    clamp_start: bool,
    model_mode: Literal["eval", "train"],
) -> Tensor:
    model = ctx.student
    if model_mode == "eval" and ctx.eval_attack_model is not None:
        model = ctx.eval_attack_model(x)
    return pgd(
        model,
        x,
        target,
        eps=ctx.eps,
        step_size=ctx.step_size,
        steps=ctx.attack_steps,
        loss=loss,
        random_start=random_start,
        start_std=START_STD,
        clamp_start=clamp_start,
        model_mode=model_mode,
        generator=ctx.generator,
    )


def mtard_attack(ctx: MethodContext, x: Tensor, y: Tensor) -> Tensor:
    """MTARD's student attack (paper Eq. 4, official ``mtard_inner_loss_ce``): CE on the true
    labels, start ``x + 0.001 N(0, 1)`` not clamped, student in eval mode."""
    return _attack(
        ctx, x, y, loss="ce", random_start="normal", clamp_start=False, model_mode="eval"
    )


def natural(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""Natural training: :math:`\mathrm{CE}(S(x), y)`, student in train mode (one BN update).

    Losses: ``"ce"``. Weights ``(1,)``.
    """
    ctx.student.train()
    return {"ce": ce(ctx.student(x), y)}


def sat(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""Standard adversarial training (Madry et al., ICLR 2018): :math:`\mathrm{CE}(S(x'), y)`.

    ``x'``: PGD on the student's cross-entropy, uniform start in the eps-ball clamped to
    [0, 1] (Madry's ``x + U(-eps, eps)`` then clip), ``ctx.attack_steps`` steps of
    ``ctx.step_size``; the student is in eval mode during the attack, as in TRADES' code
    (``model.eval()`` for attack generation), then one train-mode forward on ``x'``.

    Losses: ``"adv_ce"``. Weights ``(1,)``.
    """
    x_adv = _attack(
        ctx, x, y, loss="ce", random_start="uniform", clamp_start=True, model_mode="eval"
    )
    ctx.student.train()
    return {"adv_ce": ce(ctx.student(x_adv), y)}


def trades(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""TRADES (Zhang et al., ICML 2019), as its official ``trades_loss``.

    .. math::

        L = \mathrm{CE}(S(x), y) + \beta \, \tfrac{1}{B} \mathrm{KL}(S(x) \,\|\, S(x')),
        \qquad x' = \arg\max \textstyle\sum \mathrm{KL}(S(x) \,\|\, S(x' ))

    The attack starts at ``x + 0.001 N(0, 1)`` (not clamped) with the student in eval mode and
    maximises the summed KL (:func:`~.losses.kl_sum`) to the student's
    eval-mode clean prediction (the official code recomputes it at every step; in eval mode it
    is the same tensor, so it is computed once). Then, in train mode, the official code runs
    ``model(x_natural)`` (for CE), ``model(x_adv)`` and ``model(x_natural)`` again (for the KL
    target, not detached). The two clean forwards give the same logits and gradients (same
    batch, same batch statistics), so the first one serves both terms; the third forward is
    still run, under ``no_grad``, so that BatchNorm's running statistics get the official
    three updates in the official order (clean, adversarial, clean).

    Losses: ``"natural"`` = CE, ``"robust"`` =
    :func:`~.losses.kl_trades`. Weights ``(1, beta)``, ``beta`` from
    ``ctx.hyper["beta"]`` (default 6).
    """
    student = ctx.student
    student.eval()
    with torch.no_grad():
        clean_target = student(x)
    x_adv = _attack(
        ctx,
        x,
        clean_target,
        loss=kl_sum,
        random_start="normal",
        clamp_start=False,
        model_mode="eval",
    )
    student.train()
    logits_nat = student(x)
    logits_adv = student(x_adv)
    with torch.no_grad():
        student(x)  # the official third forward: BatchNorm running statistics only
    return {"natural": ce(logits_nat, y), "robust": kl_trades(logits_adv, logits_nat)}


def ard(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""Adversarially Robust Distillation (Goldblum et al., AAAI 2020), as its official code.

    .. math::

        L = \alpha \, T^2 \, \mathrm{KL}\!\left(S(x')/T, T_{adv}(x)/T\right)
            + (1 - \alpha) \, \mathrm{CE}(S(x), y)

    The attack is PGD on the student's CE with a uniform start in the eps-ball (not clamped)
    and the student in **train** mode, as the official ``AttackPGD`` runs inside ``net.train()``
    (every attack step updates BatchNorm's running statistics). Then, in train mode:
    ``S(x')``, the teacher on the **clean** batch ``T_adv(x)``, and ``S(x)`` (run even when
    ``alpha = 1``, as the official code does).

    Losses: ``"kd"`` = :func:`~.losses.kl_ard` (includes ``T^2``) times ``kl_factor``,
    ``"ce"``. Weights ``(alpha, 1 - alpha)``. Defaults: ``temperature = 30``, ``alpha = 1``
    (the official code, CIFAR-10); the ARD paper uses ``temperature = 5``, ``alpha = 0.95`` on
    CIFAR-100. ``kl_factor`` (default 1, the official scale) is the same control as the other
    distillation methods' (``nn.KLDivLoss()``'s default reduction is a mean over ``B x C``
    elements, so ``kl_factor = C`` makes it a per-example KL); ``T^2`` already scales ARD's
    KL up, so the profiles keep it at 1.
    """
    teacher = _require(ctx.adv_teacher, "adv_teacher", "ard")
    temperature = hyper_value(ctx, "temperature", 30.0)
    student = ctx.student
    x_adv = _attack(
        ctx, x, y, loss="ce", random_start="uniform", clamp_start=False, model_mode="train"
    )
    student.train()
    logits_adv = student(x_adv)
    teacher_logits = _teacher_logits(teacher, x)
    logits_nat = student(x)
    factor = hyper_value(ctx, "kl_factor", 1.0)
    kd = kl_ard(logits_adv, teacher_logits, temperature)
    return {"kd": kd if factor == 1.0 else factor * kd, "ce": ce(logits_nat, y)}


def rslad(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""RSLAD (Zhu et al., ICCV 2021), as its official code.

    .. math::

        L = \tfrac{5}{6} \mathrm{KL}(S(x'), T_{adv}(x)) + \tfrac{1}{6} \mathrm{KL}(S(x), T_{adv}(x))

    The robust teacher sees the **clean** batch only (its "robust soft labels"). The attack
    starts at ``x + 0.001 N(0, 1)`` (not clamped), the student in eval mode, and maximises the
    summed KL of ``S(x')`` to ``T_adv(x)`` (:func:`~.losses.kl_sum`,
    ``nn.KLDivLoss(size_average=False, reduce=False)`` then ``torch.sum``). Then, in train mode,
    ``S(x')`` and ``S(x)``. The KL is :func:`~.losses.kl_official` with
    ``factor = ctx.hyper["kl_factor"]`` (default 1; RSLAD's README multiplies by 10 on
    CIFAR-100).

    Losses: ``"adv"``, ``"nat"``. Weights ``(5/6, 1/6)``.
    """
    teacher = _require(ctx.adv_teacher, "adv_teacher", "rslad")
    factor = hyper_value(ctx, "kl_factor", 1.0)
    student = ctx.student
    teacher_logits = _teacher_logits(teacher, x)
    x_adv = _attack(
        ctx,
        x,
        teacher_logits,
        loss=kl_sum,
        random_start="normal",
        clamp_start=False,
        model_mode="eval",
    )
    student.train()
    logits_adv = student(x_adv)
    logits_nat = student(x)
    return {
        "adv": kl_official(logits_adv, teacher_logits, factor),
        "nat": kl_official(logits_nat, teacher_logits, factor),
    }


def baseline(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""The paper's "Baseline" ablation (Sec. 4.3, Fig. 2): one adversarial teacher.

    .. math::

        L = \mathrm{KL}(S(x'), T_{adv}(x'))

    "Using one well-trained adversarial teacher to guide the student": MTARD without the clean
    teacher and without ANL, i.e. Eq. 3 with :math:`\alpha = 1`. Everything else is MTARD's:
    the same student attack (CE on the true labels, eval mode, ``x + 0.001 N(0, 1)`` start),
    the adversarial teacher on ``x'`` and the official KL with ``ctx.hyper["kl_factor"]``. The
    clean batch is not forwarded (it would only feed the clean teacher's term), so BatchNorm's
    running statistics are updated once per step, on ``x'``. The official code of this ablation
    is not published; this is our reading of the paper.

    Losses: ``"adv"``. Weights ``(1,)``.
    """
    teacher = _require(ctx.adv_teacher, "adv_teacher", "baseline")
    factor = hyper_value(ctx, "kl_factor", 1.0)
    x_adv = mtard_attack(ctx, x, y)
    teacher_logits = _teacher_logits(teacher, x_adv)
    ctx.student.train()
    return {"adv": kl_official(ctx.student(x_adv), teacher_logits, factor)}


def _two_teachers(ctx: MethodContext, x: Tensor, y: Tensor, method: str) -> dict[str, Tensor]:
    clean_teacher = _require(ctx.clean_teacher, "clean_teacher", method)
    adv_teacher = _require(ctx.adv_teacher, "adv_teacher", method)
    factor = hyper_value(ctx, "kl_factor", 1.0)
    student = ctx.student
    # (1) clean teacher on the clean batch: eval mode, no graph.
    nat_teacher_logits = _teacher_logits(clean_teacher, x)
    # (2) the student attack: eval mode (no BN update), CE on the true labels.
    x_adv = mtard_attack(ctx, x, y)
    # (3) adversarial teacher on the adversarial batch only.
    adv_teacher_logits = _teacher_logits(adv_teacher, x_adv)
    # (4) student in train mode: x' first, then the clean batch (two BN updates, this order).
    student.train()
    student_adv_logits = student(x_adv)
    student_nat_logits = student(x)
    # (5) the official KL (mean over B * C elements, times kl_factor).
    ctx.replay = functools.partial(
        _replay_two_teachers, student, x, x_adv, nat_teacher_logits, adv_teacher_logits, factor
    )
    return {
        "adv": kl_official(student_adv_logits, adv_teacher_logits, factor),
        "nat": kl_official(student_nat_logits, nat_teacher_logits, factor),
    }


def _replay_two_teachers(
    student: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    nat_teacher_logits: Tensor,
    adv_teacher_logits: Tensor,
    factor: float,
) -> dict[str, Tensor]:
    """Step (4)-(5) of :func:`_two_teachers` again, with the student as it is now: the
    losses after the optimiser step on the same batch (FAMO's second call). Train mode, as
    the step (batch statistics), but BatchNorm's running statistics are left alone: this
    forward is a measurement, not a step of the recipe."""
    student.train()
    with _running_statistics_frozen(student):
        student_adv_logits = student(x_adv)
        student_nat_logits = student(x)
    return {
        "adv": kl_official(student_adv_logits, adv_teacher_logits, factor),
        "nat": kl_official(student_nat_logits, nat_teacher_logits, factor),
    }


@contextlib.contextmanager
def _running_statistics_frozen(module: nn.Module) -> Iterator[None]:
    """Train-mode forwards inside the block normalise by the batch's statistics and leave
    the running ones (and ``num_batches_tracked``) unchanged: ``track_running_stats`` is
    switched off for the block, which makes PyTorch's BatchNorm skip the update."""
    norms = [
        m
        for m in module.modules()
        if getattr(m, "track_running_stats", False) and getattr(m, "running_mean", None) is not None
    ]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def mtard(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""MTARD (paper Eq. 3-4, Algorithm 1), the official CIFAR-10 training step.

    .. math::

        L_{adv} = \mathrm{KL}(S(x'), T_{adv}(x')), \quad
        L_{nat} = \mathrm{KL}(S(x), T_{nat}(x)), \quad
        x' = \arg\max_{\|x' - x\|_\infty \le \epsilon} \mathrm{CE}(S(x'), y)

    1. clean teacher logits on the clean batch (eval mode, no grad);
    2. the student attack in eval mode: start ``x + 0.001 N(0, 1)`` (no clamp),
       ``ctx.attack_steps`` steps of ``ctx.step_size``, radius ``ctx.eps``, CE on the true
       labels;
    3. adversarial teacher logits on ``x'`` only (eval mode, no grad);
    4. student in train mode: a forward on ``x'``, then a separate forward on ``x`` (BatchNorm
       running statistics updated twice per step, never during the attack);
    5. :func:`~.losses.kl_official` with ``factor =
       ctx.hyper["kl_factor"]`` (default 1; 10 in the official CIFAR-100 script).

    Losses: ``"adv"``, ``"nat"``, weighted by an :class:`anl.AdaptiveLossBalancer` (Eq. 6-11),
    or by the run's other balancer (:mod:`.balancers`).
    """
    return _two_teachers(ctx, x, y, "mtard")


def baseline_mt(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The paper's "Baseline+MT" ablation (Sec. 4.3): :func:`mtard`'s losses, exactly, with
    constant weights instead of ANL: ``w_adv = ctx.hyper["w_adv"]`` and ``w_nat = 1 - w_adv``
    (the paper's 0.5 / 0.5 by default).

    Losses: ``"adv"``, ``"nat"``. Weights ``(w_adv, 1 - w_adv)``.
    """
    return _two_teachers(ctx, x, y, "baseline_mt")
