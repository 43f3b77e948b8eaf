r"""The evaluation attacks of the paper's protocol, in one registry.

Each :class:`AttackSpec` of :data:`ATTACKS` says everything about one evaluation attack: its
name, the title the tables print, its group (white-box, paper Tables 2-3; black-box, Tables
4-5), whether it is in the teachers' table (Table 1) and in ``anl-mtard evaluate``'s default
set, its settings at a budget (the paper's protocol, :func:`protocol`), which settings may be
overridden, and how it runs. The groups, titles and the protocol are all read from it.

At ``eps = 8/255`` (CIFAR), in table order:

============  ==============================================================
fgsm          one step of size eps
pgd_sat       20 steps of 2/255, start ``U(-eps, eps)``, CE
pgd_trades    20 steps of 0.003, start ``U(-eps, eps)``, CE
cw_inf        30 steps of 2/255 on the CW margin (confidence 50), ``U(-eps, eps)`` start
autoattack    AutoAttack "standard" (not in the paper)
transfer_pgd  pgd_trades crafted on a surrogate (the adversarial teacher)
transfer_cw   cw_inf crafted on a surrogate
square        5000 queries, p_init 0.8
============  ==============================================================

Other budgets (e.g. 0.1 on Fashion-MNIST) keep the step-to-budget ratios: step sizes
``eps / 4`` (SAT, CW) and ``0.003 * eps / (8/255)`` (TRADES). Every random start is
``U(-eps, eps)``, as in TRADES' ``_pgd_whitebox`` and MTARD's ``attack_pgd``. The paper's text gives 2/255 for
PGD_TRADES; the TRADES/RSLAD evaluation code it follows uses 0.003. Random starts are not
clipped to [0, 1], as in that code.

:func:`make_attack` (or ``ATTACKS[name](...)``) builds an :class:`Attack` with fixed settings.
Its randomness comes from a counter-based hash keyed by ``(seed, sample id)``
(:mod:`.keyed_rng`), so an attack's output for an image does not depend on the batch it sits
in, on the batch size or on the number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..checks import fail
from .autoattack import autoattack
from .gradient import check_nonnegative, fgsm, pgd, transfer
from .keyed_rng import sample_keys
from .square import square

DEFAULT_EPS = 8 / 255
"""The paper's budget on CIFAR (L-infinity, inputs in [0, 1])."""

_PGD_KEYS = frozenset(
    {"eps", "steps", "step_size", "random_start", "start_std", "clamp_start", "loss"}
)

#: ``run(attack, model, x, y, ids, keys) -> x_adv``: ``ids`` are the per-image seeds given to
#: the attack (e.g. dataset indices), ``keys`` the same folded with the attack's seed.
Runner = Callable[["Attack", nn.Module, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack: its names, its group, its protocol and how it runs.

    Calling a spec builds the attack: ``ATTACKS["pgd_sat"](eps=0.1)(model, x, y)`` is
    ``make_attack("pgd_sat", eps=0.1)(model, x, y)``.

    Args:
        name: the key in :data:`ATTACKS` (``"pgd_sat"``).
        title: the name the tables print (``"PGD_SAT"``).
        group: ``"white_box"`` (paper Tables 2-3) or ``"black_box"`` (Tables 4-5).
        settings: the paper's settings at a budget ``eps`` (:func:`protocol`).
        overridable: the settings :func:`make_attack` may override.
        run: how an :class:`Attack` of this kind computes ``x_adv`` (see :data:`Runner`).
        transfer: crafted on a surrogate model, never querying the evaluated one.
        teachers_table: also run on the teachers (paper Table 1).
        default: in ``anl-mtard evaluate``'s default set.
    """

    name: str
    title: str
    group: Literal["white_box", "black_box"]
    settings: Callable[[float], dict[str, Any]]
    overridable: frozenset[str]
    run: Runner
    transfer: bool = False
    teachers_table: bool = False
    default: bool = False

    def __call__(self, **kwargs: Any) -> Attack:
        """:func:`make_attack` of this attack."""
        return make_attack(self.name, **kwargs)


# -- the paper's settings ---------------------------------------------------------------------
def _fgsm_settings(eps: float) -> dict[str, Any]:
    return {"eps": eps}


def _pgd_sat_settings(eps: float) -> dict[str, Any]:
    return {
        "eps": eps,
        "steps": 20,
        "step_size": eps / 4,
        "loss": "ce",
        "random_start": "uniform",
        "clamp_start": False,
    }


def _pgd_trades_settings(eps: float) -> dict[str, Any]:
    return {
        "eps": eps,
        "steps": 20,
        "step_size": 0.003 * (eps / DEFAULT_EPS),
        "loss": "ce",
        # TRADES' _pgd_whitebox and MTARD's attack_pgd start from U(-eps, eps).
        "random_start": "uniform",
        "clamp_start": False,
    }


def _cw_inf_settings(eps: float) -> dict[str, Any]:
    return {
        "eps": eps,
        "steps": 30,
        "step_size": eps / 4,
        "loss": "cw",
        "confidence": 50.0,
        "random_start": "uniform",
        "clamp_start": False,
    }


def _square_settings(eps: float) -> dict[str, Any]:
    return {"eps": eps, "n_queries": 5000, "p_init": 0.8}


def _autoattack_settings(eps: float) -> dict[str, Any]:
    return {"eps": eps, "version": "standard", "batch_size": 500}


# -- how each kind runs -----------------------------------------------------------------------
def _run_fgsm(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, keys: Tensor):
    return fgsm(model, x, y, eps=attack.settings["eps"])


def _run_pgd(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, keys: Tensor):
    return pgd(model, x, y, sample_seeds=keys, **attack.settings)


def _run_square(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, keys: Tensor):
    return square(
        model, x, y, seed=attack.seed, progress=attack.progress, sample_seeds=ids, **attack.settings
    )


def _run_autoattack(
    attack: Attack, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, keys: Tensor
):
    return autoattack(model, x, y, seed=attack.seed, **attack.settings)


def _run_transfer(
    attack: Attack, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, keys: Tensor
):
    if attack.surrogate is None:
        fail("surrogate", None, f"a model for attack {attack.name!r}")

    def craft(surrogate: nn.Module, xb: Tensor, yb: Tensor) -> Tensor:
        return pgd(surrogate, xb, yb, sample_seeds=keys, **attack.settings)

    return transfer(attack.surrogate, model, x, y, craft)


ATTACKS: dict[str, AttackSpec] = {
    spec.name: spec
    for spec in (
        AttackSpec(
            name="fgsm",
            title="FGSM",
            group="white_box",
            settings=_fgsm_settings,
            overridable=frozenset({"eps"}),
            run=_run_fgsm,
            teachers_table=True,
            default=True,
        ),
        AttackSpec(
            name="pgd_sat",
            title="PGD_SAT",
            group="white_box",
            settings=_pgd_sat_settings,
            overridable=_PGD_KEYS,
            run=_run_pgd,
            teachers_table=True,
            default=True,
        ),
        AttackSpec(
            name="pgd_trades",
            title="PGD_TRADES",
            group="white_box",
            settings=_pgd_trades_settings,
            overridable=_PGD_KEYS,
            run=_run_pgd,
            teachers_table=True,
            default=True,
        ),
        AttackSpec(
            name="cw_inf",
            title="CW_inf",
            group="white_box",
            settings=_cw_inf_settings,
            overridable=_PGD_KEYS | {"confidence"},
            run=_run_pgd,
            teachers_table=True,
            default=True,
        ),
        AttackSpec(
            name="autoattack",
            title="AutoAttack",
            group="white_box",
            settings=_autoattack_settings,
            overridable=frozenset(
                {"eps", "version", "batch_size", "attacks", "square_queries", "device"}
            ),
            run=_run_autoattack,
        ),
        AttackSpec(
            name="transfer_pgd",
            title="Transfer PGD_TRADES",
            group="black_box",
            settings=_pgd_trades_settings,
            overridable=_PGD_KEYS,
            run=_run_transfer,
            transfer=True,
        ),
        AttackSpec(
            name="transfer_cw",
            title="Transfer CW_inf",
            group="black_box",
            settings=_cw_inf_settings,
            overridable=_PGD_KEYS | {"confidence"},
            run=_run_transfer,
            transfer=True,
        ),
        AttackSpec(
            name="square",
            title="Square",
            group="black_box",
            settings=_square_settings,
            overridable=frozenset({"eps", "n_queries", "p_init"}),
            run=_run_square,
            default=True,
        ),
    )
}
"""Evaluation attacks by name, in the order of the tables."""

ATTACK_NAMES = tuple(ATTACKS)
WHITE_BOX = tuple(name for name, spec in ATTACKS.items() if spec.group == "white_box")
BLACK_BOX = tuple(name for name, spec in ATTACKS.items() if spec.group == "black_box")
TRANSFER_ATTACKS = tuple(name for name, spec in ATTACKS.items() if spec.transfer)
TEACHERS_TABLE_ATTACKS = tuple(name for name, spec in ATTACKS.items() if spec.teachers_table)
DEFAULT_ATTACKS = tuple(name for name, spec in ATTACKS.items() if spec.default)
"""White-box attacks of Table 2 plus Square (Table 4); transfer attacks need a surrogate."""


def attack_title(name: str) -> str:
    """The title the tables print for ``name`` (the name itself when it is not an attack).

    Example:
        >>> attack_title("transfer_pgd"), attack_title("custom")
        ('Transfer PGD_TRADES', 'custom')
    """
    spec = ATTACKS.get(name)
    return spec.title if spec is not None else name


def protocol(eps: float = DEFAULT_EPS) -> dict[str, dict[str, Any]]:
    """The paper's evaluation settings (Sec. 4.1, official code) for budget ``eps``, by attack
    (see the module docstring)."""
    check_nonnegative("eps", eps)
    return {name: spec.settings(eps) for name, spec in ATTACKS.items()}


class Attack:
    """An evaluation attack with fixed settings: ``attack(model, x, y, seeds=None) -> x_adv``.

    ``seeds`` (one integer per image, e.g. its dataset index) keys the randomness so that an
    image gets the same random start wherever it is evaluated; by default the position in
    the batch is used. ``settings`` records everything needed to reproduce the attack.
    """

    def __init__(
        self,
        name: str,
        settings: dict[str, Any],
        *,
        seed: int = 0,
        surrogate: nn.Module | None = None,
        progress: bool = False,
    ) -> None:
        self.spec = ATTACKS[name]
        self.name = name
        self.settings = dict(settings)
        self.seed = seed
        self.surrogate = surrogate
        self.progress = progress

    @property
    def is_transfer(self) -> bool:
        """Whether the attack is crafted on :attr:`surrogate`."""
        return self.spec.transfer

    def __repr__(self) -> str:
        return f"Attack({self.name!r}, {self.settings!r}, seed={self.seed})"

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, seeds: Tensor | None = None
    ) -> Tensor:
        ids = torch.arange(x.shape[0]) if seeds is None else torch.as_tensor(seeds)
        # Fold the attack seed into the per-sample seeds (pgd's keyed start uses seed 0).
        keys = sample_keys(self.seed, ids, x.device, x.shape[0])
        return self.spec.run(self, model, x, y, ids, keys)


def make_attack(
    name: str,
    *,
    eps: float = DEFAULT_EPS,
    seed: int = 0,
    surrogate: nn.Module | None = None,
    progress: bool = False,
    **overrides: Any,
) -> Attack:
    """Build the evaluation attack ``name`` with the settings of :func:`protocol` (``eps``).

    ``overrides`` replace single settings (e.g. ``steps=50``, ``n_queries=1000``); unknown
    names raise a ``ValueError``. Transfer attacks need ``surrogate``.
    """
    if name not in ATTACKS:
        fail("name", name, f"one of {ATTACK_NAMES}")
    spec = ATTACKS[name]
    unknown = sorted(set(overrides) - spec.overridable)
    if unknown:
        raise ValueError(
            f"Parameter `overrides` should only set {sorted(spec.overridable)} for attack "
            f"{name!r}. Found `overrides = {unknown}`."
        )
    if spec.transfer and surrogate is None:
        fail("surrogate", None, f"a model for attack {name!r}")
    check_nonnegative("eps", eps)
    settings = spec.settings(eps)
    settings.update(overrides)
    return Attack(name, settings, seed=seed, surrogate=surrogate, progress=progress)
