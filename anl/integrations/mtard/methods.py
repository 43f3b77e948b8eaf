"""One loss function per training method: MTARD, its ablations and the baselines of the paper.

A method maps a batch and the models to *named* losses; the training loop owns the optimiser
and a weighting object (:func:`build_weighting`) owns the weights, so neither knows which
method runs::

    spec = METHODS["mtard"]
    weighting = build_weighting(spec)
    losses = spec.loss_fn(ctx, x, y)          # {"adv": L_adv, "nat": L_nat}
    total = weighting.step(losses)            # paper Eq. 5 with ANL weights (Eq. 6-11)
    opt.zero_grad(set_to_none=True); total.backward(); opt.step()

Every method follows its official code, including the order of the forward passes and the
mode switches, because both decide which batches BatchNorm's running statistics see (the
statistics the student is evaluated with). Teachers are put in eval mode and run under
:func:`torch.no_grad`; they never get gradients. "eval attack" means the student runs in eval
mode during the attack (running statistics, no update); "train attack" means train mode
(batch statistics, each attack step updates the running statistics). The attack runs
``ctx.attack_steps`` signed-gradient steps of ``ctx.step_size`` in the L-inf ball of radius
``ctx.eps``, clamped to [0, 1] after each step (:func:`~anl.integrations.mtard.attacks.pgd`).

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

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from anl import AdaptiveLossBalancer, ConstantWeights
from anl.integrations.mtard.attacks import pgd
from anl.integrations.mtard.losses import ce, kl_ard, kl_official, kl_sum, kl_trades

__all__ = [
    "METHODS",
    "LossFn",
    "MethodContext",
    "MethodSpec",
    "ard",
    "baseline",
    "baseline_mt",
    "build_weighting",
    "mtard",
    "natural",
    "rslad",
    "sat",
    "trades",
]

#: Standard deviation of the Gaussian start of the TRADES, RSLAD and MTARD attacks.
START_STD = 0.001


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
            :class:`~anl.integrations.mtard.folding.FoldedEvalView` of the student (its
            BatchNorm folded, the same function up to float rounding, measured faster).
            ``None``: the attack runs on ``student`` itself. Train-mode attacks (ARD) always
            run on ``student``.
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


# --- hyperparameters ---------------------------------------------------------------------------

_HYPER_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "beta": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "alpha": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "temperature": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "kl_factor": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
}


def _check_hyper(name: str, value: Any) -> float:
    check, wanted = _HYPER_RULES[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not check(number):
        raise ValueError(f"Parameter `hyper['{name}']` should be {wanted}. Found `{value!r}`.")
    return number


def _hyper(ctx: MethodContext, name: str, default: float) -> float:
    return _check_hyper(name, ctx.hyper.get(name, default))


# --- the spec ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """A training method: its loss function, the names of its losses and how they are weighted.

    Args:
        name: the key in :data:`METHODS`.
        loss_fn: ``fn(ctx, x, y) -> dict[str, Tensor]`` with the keys :attr:`loss_names`.
        loss_names: the names of the losses, in the order of the weights.
        weighting: ``"anl"`` (an :class:`anl.AdaptiveLossBalancer`) or constant weights, one
            per loss, for the default hyperparameters.
        needs_clean_teacher: whether ``ctx.clean_teacher`` must be given.
        needs_adv_teacher: whether ``ctx.adv_teacher`` must be given.
        defaults: the method's hyperparameters and their defaults.
        weights_from_hyper: for constant weights that depend on hyperparameters (TRADES'
            beta, ARD's alpha), a function of the resolved hyperparameters giving the weights.
        description: one line for listings.
    """

    name: str
    loss_fn: LossFn
    loss_names: tuple[str, ...]
    weighting: Literal["anl"] | tuple[float, ...]
    needs_clean_teacher: bool
    needs_adv_teacher: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    weights_from_hyper: Callable[[Mapping[str, Any]], tuple[float, ...]] | None = None
    description: str = ""

    def resolve_hyper(self, hyper: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated by ``hyper``, checked; unknown keys raise a :class:`ValueError`.

        Example:
            >>> METHODS["ard"].resolve_hyper({"temperature": 5.0, "alpha": 0.95})
            {'temperature': 5.0, 'alpha': 0.95}
        """
        hyper = dict(hyper or {})
        unknown = sorted(set(hyper) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"Parameter `hyper` should only contain keys of method '{self.name}' "
                f"({sorted(self.defaults)}). Found unknown keys {unknown}."
            )
        resolved = {**self.defaults, **hyper}
        return {key: _check_hyper(key, value) for key, value in resolved.items()}

    def constant_weights(self, hyper: Mapping[str, Any] | None = None) -> tuple[float, ...]:
        """The constant weights of a non-ANL method for the given hyperparameters.

        Example:
            >>> METHODS["trades"].constant_weights({"beta": 1.0})
            (1.0, 1.0)
        """
        if self.weighting == "anl":
            raise ValueError(
                f"Method '{self.name}' has no constant weights: its weighting is 'anl'."
            )
        resolved = self.resolve_hyper(hyper)
        if self.weights_from_hyper is not None:
            return tuple(float(w) for w in self.weights_from_hyper(resolved))
        return tuple(float(w) for w in self.weighting)


# --- shared pieces -----------------------------------------------------------------------------


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


def _mtard_attack(ctx: MethodContext, x: Tensor, y: Tensor) -> Tensor:
    """MTARD's student attack (paper Eq. 4, official ``mtard_inner_loss_ce``): CE on the true
    labels, start ``x + 0.001 N(0, 1)`` not clamped, student in eval mode."""
    return _attack(
        ctx, x, y, loss="ce", random_start="normal", clamp_start=False, model_mode="eval"
    )


# --- the methods -------------------------------------------------------------------------------


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
    maximises the summed KL (:func:`~anl.integrations.mtard.losses.kl_sum`) to the student's
    eval-mode clean prediction (the official code recomputes it at every step; in eval mode it
    is the same tensor, so it is computed once). Then, in train mode, the official code runs
    ``model(x_natural)`` (for CE), ``model(x_adv)`` and ``model(x_natural)`` again (for the KL
    target, not detached). The two clean forwards give the same logits and gradients (same
    batch, same batch statistics), so the first one serves both terms; the third forward is
    still run, under ``no_grad``, so that BatchNorm's running statistics get the official
    three updates in the official order (clean, adversarial, clean).

    Losses: ``"natural"`` = CE, ``"robust"`` =
    :func:`~anl.integrations.mtard.losses.kl_trades`. Weights ``(1, beta)``, ``beta`` from
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

    Losses: ``"kd"`` = :func:`~anl.integrations.mtard.losses.kl_ard` (includes ``T^2``),
    ``"ce"``. Weights ``(alpha, 1 - alpha)``. Defaults: ``temperature = 30``, ``alpha = 1``
    (the official code, CIFAR-10); the ARD paper uses ``temperature = 5``, ``alpha = 0.95`` on
    CIFAR-100.
    """
    teacher = _require(ctx.adv_teacher, "adv_teacher", "ard")
    temperature = _hyper(ctx, "temperature", 30.0)
    student = ctx.student
    x_adv = _attack(
        ctx, x, y, loss="ce", random_start="uniform", clamp_start=False, model_mode="train"
    )
    student.train()
    logits_adv = student(x_adv)
    teacher_logits = _teacher_logits(teacher, x)
    logits_nat = student(x)
    return {"kd": kl_ard(logits_adv, teacher_logits, temperature), "ce": ce(logits_nat, y)}


def rslad(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    r"""RSLAD (Zhu et al., ICCV 2021), as its official code.

    .. math::

        L = \tfrac{5}{6} \mathrm{KL}(S(x'), T_{adv}(x)) + \tfrac{1}{6} \mathrm{KL}(S(x), T_{adv}(x))

    The robust teacher sees the **clean** batch only (its "robust soft labels"). The attack
    starts at ``x + 0.001 N(0, 1)`` (not clamped), the student in eval mode, and maximises the
    summed KL of ``S(x')`` to ``T_adv(x)`` (:func:`~anl.integrations.mtard.losses.kl_sum`,
    ``nn.KLDivLoss(size_average=False, reduce=False)`` then ``torch.sum``). Then, in train mode,
    ``S(x')`` and ``S(x)``. The KL is :func:`~anl.integrations.mtard.losses.kl_official` with
    ``factor = ctx.hyper["kl_factor"]`` (default 1; RSLAD's README multiplies by 10 on
    CIFAR-100).

    Losses: ``"adv"``, ``"nat"``. Weights ``(5/6, 1/6)``.
    """
    teacher = _require(ctx.adv_teacher, "adv_teacher", "rslad")
    factor = _hyper(ctx, "kl_factor", 1.0)
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
    factor = _hyper(ctx, "kl_factor", 1.0)
    x_adv = _mtard_attack(ctx, x, y)
    teacher_logits = _teacher_logits(teacher, x_adv)
    ctx.student.train()
    return {"adv": kl_official(ctx.student(x_adv), teacher_logits, factor)}


def _two_teachers(ctx: MethodContext, x: Tensor, y: Tensor, method: str) -> dict[str, Tensor]:
    clean_teacher = _require(ctx.clean_teacher, "clean_teacher", method)
    adv_teacher = _require(ctx.adv_teacher, "adv_teacher", method)
    factor = _hyper(ctx, "kl_factor", 1.0)
    student = ctx.student
    # (1) clean teacher on the clean batch: eval mode, no graph.
    nat_teacher_logits = _teacher_logits(clean_teacher, x)
    # (2) the student attack: eval mode (no BN update), CE on the true labels.
    x_adv = _mtard_attack(ctx, x, y)
    # (3) adversarial teacher on the adversarial batch only.
    adv_teacher_logits = _teacher_logits(adv_teacher, x_adv)
    # (4) student in train mode: x' first, then the clean batch (two BN updates, this order).
    student.train()
    student_adv_logits = student(x_adv)
    student_nat_logits = student(x)
    # (5) the official KL (mean over B * C elements, times kl_factor).
    return {
        "adv": kl_official(student_adv_logits, adv_teacher_logits, factor),
        "nat": kl_official(student_nat_logits, nat_teacher_logits, factor),
    }


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
    5. :func:`~anl.integrations.mtard.losses.kl_official` with ``factor =
       ctx.hyper["kl_factor"]`` (default 1; 10 in the official CIFAR-100 script).

    Losses: ``"adv"``, ``"nat"``, weighted by an :class:`anl.AdaptiveLossBalancer` (Eq. 6-11).
    """
    return _two_teachers(ctx, x, y, "mtard")


def baseline_mt(ctx: MethodContext, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The paper's "Baseline+MT" ablation (Sec. 4.3): :func:`mtard`'s losses, exactly, with
    constant weights ``w_adv = w_nat = 0.5`` instead of ANL.

    Losses: ``"adv"``, ``"nat"``. Weights ``(0.5, 0.5)``.
    """
    return _two_teachers(ctx, x, y, "baseline_mt")


def _trades_weights(hyper: Mapping[str, Any]) -> tuple[float, ...]:
    return (1.0, float(hyper["beta"]))


def _ard_weights(hyper: Mapping[str, Any]) -> tuple[float, ...]:
    alpha = float(hyper["alpha"])
    return (alpha, 1.0 - alpha)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "natural", natural, ("ce",), (1.0,), False, False, description="natural training"
        ),
        MethodSpec(
            "sat", sat, ("adv_ce",), (1.0,), False, False, description="PGD adversarial training"
        ),
        MethodSpec(
            "trades",
            trades,
            ("natural", "robust"),
            (1.0, 6.0),
            False,
            False,
            defaults={"beta": 6.0},
            weights_from_hyper=_trades_weights,
            description="TRADES, CE + beta * KL",
        ),
        MethodSpec(
            "ard",
            ard,
            ("kd", "ce"),
            (1.0, 0.0),
            False,
            True,
            defaults={"temperature": 30.0, "alpha": 1.0},
            weights_from_hyper=_ard_weights,
            description="ARD, one adversarial teacher on clean inputs",
        ),
        MethodSpec(
            "rslad",
            rslad,
            ("adv", "nat"),
            (5.0 / 6.0, 1.0 / 6.0),
            False,
            True,
            defaults={"kl_factor": 1.0},
            description="RSLAD, robust soft labels of one adversarial teacher",
        ),
        MethodSpec(
            "baseline",
            baseline,
            ("adv",),
            (1.0,),
            False,
            True,
            defaults={"kl_factor": 1.0},
            description="ablation: one adversarial teacher",
        ),
        MethodSpec(
            "baseline_mt",
            baseline_mt,
            ("adv", "nat"),
            (0.5, 0.5),
            True,
            True,
            defaults={"kl_factor": 1.0},
            description="ablation: two teachers, constant weights 0.5 / 0.5",
        ),
        MethodSpec(
            "mtard",
            mtard,
            ("adv", "nat"),
            "anl",
            True,
            True,
            defaults={"kl_factor": 1.0},
            description="MTARD: two teachers weighted by ANL",
        ),
    )
}


def build_weighting(
    spec: MethodSpec | str,
    *,
    hyper: Mapping[str, Any] | None = None,
    weight_lr: float = 0.025,
    beta: float = 1.0,
    **kw: Any,
) -> AdaptiveLossBalancer | ConstantWeights:
    """The weighting object of a method.

    ``"anl"`` methods get ``AdaptiveLossBalancer(spec.loss_names, beta=beta,
    weight_lr=weight_lr, **kw)`` (paper: beta = 1, r_w = 0.025); the others get
    ``ConstantWeights(spec.loss_names, weights=spec.constant_weights(hyper), **kw)``, where
    ``hyper`` sets the weights that depend on a method's hyperparameters (TRADES' ``beta``,
    ARD's ``alpha``). Note that ``beta`` here is ANL's exponent (Eq. 8), not TRADES' beta.

    Args:
        spec: a :class:`MethodSpec` or its name in :data:`METHODS`.
        hyper: the method's hyperparameters (checked against :attr:`MethodSpec.defaults`).
        weight_lr: ANL's weight learning rate ``r_w`` (Eq. 9).
        beta: ANL's exponent (Eq. 8).
        **kw: further keyword arguments of the weighting class (``history_size``, ...).

    Example:
        >>> [round(w, 6) for w in build_weighting("ard", hyper={"alpha": 0.95}).weights.tolist()]
        [0.95, 0.05]
    """
    if isinstance(spec, str):
        if spec not in METHODS:
            raise ValueError(
                f"Parameter `spec` should be a MethodSpec or one of {sorted(METHODS)}. "
                f"Found `spec = {spec!r}`."
            )
        spec = METHODS[spec]
    if spec.weighting == "anl":
        spec.resolve_hyper(hyper)
        return AdaptiveLossBalancer(list(spec.loss_names), beta=beta, weight_lr=weight_lr, **kw)
    return ConstantWeights(list(spec.loss_names), weights=spec.constant_weights(hyper), **kw)
