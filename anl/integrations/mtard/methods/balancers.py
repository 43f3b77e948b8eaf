"""The weighting rules that can balance MTARD's two losses in place of ANL (issue #19).

MTARD's step (:func:`~.steps.mtard`) returns two losses, ``adv`` and ``nat``; the paper
weights them by ANL (:class:`anl.AdaptiveLossBalancer`). Any other rule of ``anl`` can take
its place: :data:`BALANCERS` names each, and :func:`build_balancer` builds one for a run from
``TrainConfig.balancer`` and ``TrainConfig.balancer_kwargs`` (the rule's own hyperparameters,
at the rule's defaults when not given). What a rule asks of the training loop is said here,
so that the loop asks the rule, never its name:

- **a rate** (:func:`rate_of`): ANL's ``r_w`` and FAMO's logits step size are the run's
  ``weight_lr`` and are multiplied by ``lr_gamma`` at the learning-rate milestones, as the
  official MTARD code decays ``r_w``; the rules without a rate have nothing to decay;
- **parameters** (:func:`rule_parameters`): uncertainty weighting's log-variances and IMTL-L's
  log-scales are trained with the student, in its SGD optimiser as a second parameter group
  with the same learning rate, schedule and momentum but no weight decay (a decay would pull
  every weight towards 1, a prior the methods do not have); their learning rate therefore
  decays with the student's;
- **a second call** (:func:`has_second_call`): FAMO's ``update(losses_after)`` after the
  optimiser step, with the step's losses recomputed on the same batch
  (:attr:`~.context.MethodContext.replay`).

Every rule keeps its paper's scale: ANL, RLW, SoftAdapt and FAMO's weights sum to 1, DWA's
and ReLoBRaLo's to the number of losses (2), GLS's effective weights and the learned weights
of uncertainty weighting and IMTL-L (about ``1 / L_i``) to no fixed total, so that the same
``lr`` moves the student by different amounts under different rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from anl import (
    FAMO,
    IMTLL,
    AdaptiveLossBalancer,
    ConstantWeights,
    DynamicWeightAverage,
    GeometricLossStrategy,
    LossWeighting,
    RandomLossWeighting,
    ReLoBRaLo,
    SoftAdapt,
    UncertaintyWeighting,
)

from ..checks import fail


@dataclass(frozen=True)
class BalancerSpec:
    """A weighting rule as MTARD's balancer: its class, its label and what the loop owes it.

    ``rate``: whether ``weight_lr`` is the rule's rate (set from the run, decayed at the
    milestones); ``total``: what its weights sum to, for readers of the logs.
    """

    name: str
    label: str
    rule: type[LossWeighting]
    rate: bool
    total: str


BALANCERS: dict[str, BalancerSpec] = {
    spec.name: spec
    for spec in (
        BalancerSpec("anl", "ANL", AdaptiveLossBalancer, rate=True, total="1"),
        BalancerSpec("constant", "constant", ConstantWeights, rate=False, total="as given"),
        BalancerSpec("dwa", "DWA", DynamicWeightAverage, rate=False, total="N"),
        BalancerSpec("rlw", "RLW", RandomLossWeighting, rate=False, total="1"),
        BalancerSpec("gls", "GLS", GeometricLossStrategy, rate=False, total="free"),
        BalancerSpec("softadapt", "SoftAdapt", SoftAdapt, rate=False, total="1"),
        BalancerSpec("relobralo", "ReLoBRaLo", ReLoBRaLo, rate=False, total="N"),
        BalancerSpec("uncertainty", "UW", UncertaintyWeighting, rate=False, total="free"),
        BalancerSpec("imtl", "IMTL-L", IMTLL, rate=False, total="free"),
        BalancerSpec("famo", "FAMO", FAMO, rate=True, total="1"),
    )
}
"""MTARD's balancers by name: ``"anl"`` (the paper), ``"constant"`` and every rule of
:mod:`anl.rules`."""

BALANCER_NAMES = tuple(BALANCERS)

# Keys of ``balancer_kwargs`` that the run's own fields give (or that JSON cannot hold).
_FROM_CONFIG = {"weight_lr": "weight_lr", "dtype": None}
_FROM_CONFIG_ANL = {"beta": "beta"}


def check_balancer(name: object, kwargs: object, loss_names: Sequence[str]) -> None:
    """Raise a ``ValueError`` unless ``name`` and ``kwargs`` build a balancer of ``loss_names``.

    ``kwargs`` may not give what the run's fields give (``weight_lr``; ANL's ``beta``).
    """
    if not isinstance(name, str) or name not in BALANCERS:
        fail("balancer", name, f"one of {list(BALANCER_NAMES)}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        fail("balancer_kwargs", kwargs, "a dict with string keys")
    taken = {**_FROM_CONFIG, **(_FROM_CONFIG_ANL if name == "anl" else {})}
    for key in sorted(set(kwargs) & set(taken)):
        where = f"the field `{taken[key]}`" if taken[key] else "the default"
        fail(f"balancer_kwargs['{key}']", kwargs[key], f"left out (the run uses {where})")
    try:
        build_balancer(name, loss_names, weight_lr=0.025, beta=1.0, kwargs=kwargs)
    except (TypeError, ValueError) as exc:
        fail(
            "balancer_kwargs", dict(kwargs), f"arguments of {BALANCERS[name].rule.__name__} ({exc})"
        )


def build_balancer(
    name: str,
    loss_names: Sequence[str],
    *,
    weight_lr: float,
    beta: float,
    kwargs: Mapping[str, Any] | None = None,
    **extra: Any,
) -> LossWeighting:
    """The rule ``name`` on ``loss_names`` with the hyperparameters ``kwargs``.

    ANL takes ``beta`` and ``weight_lr`` (its ``r_w``), FAMO ``weight_lr`` (its logits' step
    size); ``"constant"`` weights default to ``1 / N`` each (ANL's starting point, so that
    MTARD with constant weights is Baseline+MT). ``extra`` goes to every rule
    (``history_size``, ...).

    Example:
        >>> rule = build_balancer("famo", ["adv", "nat"], weight_lr=0.01, beta=1.0)
        >>> type(rule).__name__, rule.weight_lr
        ('FAMO', 0.01)
    """
    spec = BALANCERS[name]
    values = {**dict(kwargs or {}), **extra}
    names = list(loss_names)
    if name == "anl":
        values.update(beta=beta, weight_lr=weight_lr)
    elif name == "famo":
        values["weight_lr"] = weight_lr
    elif name == "constant":
        values.setdefault("weights", [1.0 / len(names)] * len(names))
    return spec.rule(names, **values)


def rate_of(weighting: LossWeighting) -> float | None:
    """The rule's rate (ANL's ``r_w``, FAMO's step size), ``None`` for a rule without one."""
    if "weight_lr" in getattr(weighting, "defaults", {}):
        return float(weighting.weight_lr)  # type: ignore[attr-defined]
    return None


def decay_rate(weighting: LossWeighting, factor: float) -> None:
    """Multiply the rule's rate by ``factor`` (nothing for a rule without one)."""
    rate = rate_of(weighting)
    if rate is not None:
        weighting.weight_lr = rate * factor  # type: ignore[attr-defined]


def rule_parameters(weighting: LossWeighting) -> list[nn.Parameter]:
    """The rule's trainable parameters (uncertainty weighting, IMTL-L), else ``[]``."""
    return list(weighting.parameters()) if isinstance(weighting, nn.Module) else []


def has_second_call(weighting: LossWeighting) -> bool:
    """Whether the rule needs ``update(losses_after)`` after each optimiser step (FAMO)."""
    return isinstance(weighting, FAMO)
