"""The training methods by name, and the weighting each one gets.

Each :class:`MethodSpec` of :data:`METHODS` says everything about one method: its loss
function (:mod:`.steps`), the names of its losses, how they are weighted (ANL or constant
weights), the teachers it distils from, its hyperparameters, and how the report names it (the
paper's row label, whether it is one of the baselines MTARD is compared with, and its name in
the ablation of Fig. 2). :data:`METHODS` is in the row order of the tables: the paper's
(Tables 2-5), then the ablations, MTARD last. The training loop owns the optimiser and a
weighting object (:func:`build_weighting`) owns the weights, so neither knows which method
runs::

    spec = METHODS["mtard"]
    weighting = build_weighting(spec)
    losses = spec.loss_fn(ctx, x, y)          # {"adv": L_adv, "nat": L_nat}
    total = weighting.step(losses)            # paper Eq. 5 with ANL weights (Eq. 6-11)
    opt.zero_grad(set_to_none=True); total.backward(); opt.step()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from anl import ConstantWeights, LossWeighting

from ..checks import fail
from .balancers import build_balancer, check_balancer
from .context import LossFn, check_hyper
from .steps import ard, baseline, baseline_mt, mtard, natural, rslad, sat, trades


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """A training method: its losses, how they are weighted, its teachers and its labels.

    Args:
        name: the key in :data:`METHODS`.
        label: the row label of the tables (the paper's name: ``"MTARD"``, ``"Baseline+MT"``).
        loss_fn: ``fn(ctx, x, y) -> dict[str, Tensor]`` with the keys :attr:`loss_names`.
        loss_names: the names of the losses, in the order of the weights.
        weighting: ``"anl"`` (an :class:`anl.AdaptiveLossBalancer`) or constant weights, one
            per loss, for the default hyperparameters.
        teachers: the roles (``"clean"``, ``"adv"``) of the teachers the method distils from;
            ``ctx.clean_teacher`` / ``ctx.adv_teacher`` must be given for them.
        defaults: the method's hyperparameters and their defaults.
        weights_from_hyper: for constant weights that depend on hyperparameters (TRADES'
            beta, ARD's alpha), a function of the resolved hyperparameters giving the weights.
        baseline: one of the methods MTARD is compared with in the paper's Tables 2-5.
        ablation: its name in the paper's ablation (Sec. 4.3, Fig. 2), if it is a step of it.
        description: one line for listings.
    """

    name: str
    label: str
    loss_fn: LossFn
    loss_names: tuple[str, ...]
    weighting: Literal["anl"] | tuple[float, ...]
    teachers: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    weights_from_hyper: Callable[[Mapping[str, Any]], tuple[float, ...]] | None = None
    baseline: bool = False
    ablation: str | None = None
    description: str = ""

    def resolve_hyper(self, hyper: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated by ``hyper``, checked; unknown keys raise a :class:`ValueError`.

        Example:
            >>> METHODS["ard"].resolve_hyper({"temperature": 5.0, "alpha": 0.95})
            {'temperature': 5.0, 'alpha': 0.95, 'kl_factor': 1.0}
        """
        hyper = dict(hyper or {})
        unknown = sorted(set(hyper) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"Parameter `hyper` should only contain keys of method '{self.name}' "
                f"({sorted(self.defaults)}). Found unknown keys {unknown}."
            )
        resolved = {**self.defaults, **hyper}
        return {key: check_hyper(key, value) for key, value in resolved.items()}

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

    @property
    def ablation_label(self) -> str | None:
        """The row label of the ablation table: ``"Baseline+MT+ANL (MTARD)"``, ``"Baseline"``."""
        if self.ablation is None:
            return None
        return self.ablation if self.ablation == self.label else f"{self.ablation} ({self.label})"


def _trades_weights(hyper: Mapping[str, Any]) -> tuple[float, ...]:
    return (1.0, float(hyper["beta"]))


def _ard_weights(hyper: Mapping[str, Any]) -> tuple[float, ...]:
    alpha = float(hyper["alpha"])
    return (alpha, 1.0 - alpha)


def _two_teacher_weights(hyper: Mapping[str, Any]) -> tuple[float, ...]:
    w_adv = float(hyper["w_adv"])
    return (w_adv, 1.0 - w_adv)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="natural",
            label="Natural",
            loss_fn=natural,
            loss_names=("ce",),
            weighting=(1.0,),
            description="natural training",
        ),
        MethodSpec(
            name="sat",
            label="SAT",
            loss_fn=sat,
            loss_names=("adv_ce",),
            weighting=(1.0,),
            baseline=True,
            description="PGD adversarial training",
        ),
        MethodSpec(
            name="trades",
            label="TRADES",
            loss_fn=trades,
            loss_names=("natural", "robust"),
            weighting=(1.0, 6.0),
            defaults={"beta": 6.0},
            weights_from_hyper=_trades_weights,
            baseline=True,
            description="TRADES, CE + beta * KL",
        ),
        MethodSpec(
            name="ard",
            label="ARD",
            loss_fn=ard,
            loss_names=("kd", "ce"),
            weighting=(1.0, 0.0),
            teachers=("adv",),
            defaults={"temperature": 30.0, "alpha": 1.0, "kl_factor": 1.0},
            weights_from_hyper=_ard_weights,
            baseline=True,
            description="ARD, one adversarial teacher on clean inputs",
        ),
        MethodSpec(
            name="rslad",
            label="RSLAD",
            loss_fn=rslad,
            loss_names=("adv", "nat"),
            weighting=(5.0 / 6.0, 1.0 / 6.0),
            teachers=("adv",),
            defaults={"kl_factor": 1.0},
            baseline=True,
            description="RSLAD, robust soft labels of one adversarial teacher",
        ),
        MethodSpec(
            name="baseline",
            label="Baseline",
            loss_fn=baseline,
            loss_names=("adv",),
            weighting=(1.0,),
            teachers=("adv",),
            defaults={"kl_factor": 1.0},
            ablation="Baseline",
            description="ablation: one adversarial teacher",
        ),
        MethodSpec(
            name="baseline_mt",
            label="Baseline+MT",
            loss_fn=baseline_mt,
            loss_names=("adv", "nat"),
            weighting=(0.5, 0.5),
            teachers=("clean", "adv"),
            defaults={"kl_factor": 1.0, "w_adv": 0.5},
            weights_from_hyper=_two_teacher_weights,
            ablation="Baseline+MT",
            description="ablation: two teachers, constant weights w_adv / 1 - w_adv (0.5 / 0.5)",
        ),
        MethodSpec(
            name="mtard",
            label="MTARD",
            loss_fn=mtard,
            loss_names=("adv", "nat"),
            weighting="anl",
            teachers=("clean", "adv"),
            defaults={"kl_factor": 1.0},
            ablation="Baseline+MT+ANL",
            description="MTARD: two teachers weighted by ANL",
        ),
    )
}
"""Training methods by name, in the row order of the tables (Baseline+MT+ANL is MTARD)."""

METHOD_ORDER = tuple(METHODS)
BASELINES = tuple(name for name, spec in METHODS.items() if spec.baseline)
"""The methods MTARD is compared with in the paper's Tables 2-5."""
ABLATION = tuple(name for name, spec in METHODS.items() if spec.ablation is not None)
"""The steps of the paper's ablation (Fig. 2): one teacher, two teachers, two teachers + ANL."""


def build_weighting(
    spec: MethodSpec | str,
    *,
    hyper: Mapping[str, Any] | None = None,
    weight_lr: float = 0.025,
    beta: float = 1.0,
    balancer: str = "anl",
    balancer_kwargs: Mapping[str, Any] | None = None,
    **kw: Any,
) -> LossWeighting:
    """The weighting object of a method.

    ``"anl"`` methods (MTARD) get their balancer: by default ``AdaptiveLossBalancer(
    spec.loss_names, beta=beta, weight_lr=weight_lr, **kw)`` (paper: beta = 1, r_w = 0.025),
    or another rule named by ``balancer`` with the hyperparameters ``balancer_kwargs``
    (:func:`~.balancers.build_balancer`). The others get ``ConstantWeights(spec.loss_names,
    weights=spec.constant_weights(hyper), **kw)``, where ``hyper`` sets the weights that
    depend on a method's hyperparameters (TRADES' ``beta``, ARD's ``alpha``, Baseline+MT's
    ``w_adv``); they take no balancer. Note that ``beta`` here is ANL's exponent (Eq. 8), not
    TRADES' beta.

    Args:
        spec: a :class:`MethodSpec` or its name in :data:`METHODS`.
        hyper: the method's hyperparameters (checked against :attr:`MethodSpec.defaults`).
        weight_lr: ANL's weight learning rate ``r_w`` (Eq. 9), FAMO's step size.
        beta: ANL's exponent (Eq. 8).
        balancer: a name of :data:`~.balancers.BALANCERS` (``"anl"`` methods only).
        balancer_kwargs: the balancer's hyperparameters (its defaults when not given).
        **kw: further keyword arguments of the weighting class (``history_size``, ...).

    Example:
        >>> [round(w, 6) for w in build_weighting("ard", hyper={"alpha": 0.95}).weights.tolist()]
        [0.95, 0.05]
        >>> type(build_weighting("mtard", balancer="famo")).__name__
        'FAMO'
    """
    if isinstance(spec, str):
        if spec not in METHODS:
            fail("spec", spec, f"a MethodSpec or one of {sorted(METHODS)}")
        spec = METHODS[spec]
    check_method_balancer(spec, balancer, balancer_kwargs or {})
    if spec.weighting == "anl":
        spec.resolve_hyper(hyper)
        return build_balancer(
            balancer,
            spec.loss_names,
            weight_lr=weight_lr,
            beta=beta,
            kwargs=balancer_kwargs,
            **kw,
        )
    return ConstantWeights(list(spec.loss_names), weights=spec.constant_weights(hyper), **kw)


def check_method_balancer(spec: MethodSpec, balancer: str, kwargs: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` unless ``spec`` can be balanced by ``balancer`` with ``kwargs``:
    a method with constant weights takes the default (``"anl"``, no arguments) only."""
    if spec.weighting != "anl":
        if balancer != "anl" or kwargs:
            fail(
                "balancer",
                balancer if balancer != "anl" else dict(kwargs),
                f"'anl' without balancer_kwargs for method {spec.name!r}, whose weights are "
                "constant (only MTARD takes a balancer)",
            )
        return
    check_balancer(balancer, kwargs, spec.loss_names)
