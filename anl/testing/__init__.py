"""Oracles, invariant checks and Hypothesis strategies for testing loss-weight dynamics.

Use them to test the weights your own training produces, or a new rule against the
Adaptive Normalization Loss (paper Eq. 7-9)::

    from hypothesis import given
    from anl import testing

    @given(testing.loss_trajectories(), testing.balancer_settings())
    def test_my_setup(trajectory, settings):
        testing.check_weight_invariants(trajectory, **settings)

- :mod:`anl.testing.oracles`: independent float64 NumPy implementations of each rule
  (:func:`reference_weights` for ANL), the oracles the checks compare against;
- :mod:`anl.testing.checks`: ``check_*`` functions raising :class:`AssertionError` with a
  message that names the step, the loss and the values;
- :mod:`anl.testing.strategies`: Hypothesis strategies (needs ``hypothesis``:
  ``pip install "anl[testing]"``); imported on first use, so the oracles and checks work
  without it.
"""

from __future__ import annotations

import importlib
from typing import Any

from anl.testing.checks import (
    check_beta_zero_is_geometric,
    check_constant_losses_keep_uniform,
    check_permutation_equivariance,
    check_scale_invariance,
    check_weight_invariants,
    run_balancer,
)
from anl.testing.oracles import reference_weights

_STRATEGIES = (
    "balancer_settings",
    "betas",
    "loss_trajectories",
    "loss_values",
    "simplex_weights",
    "weight_lrs",
)

__all__ = [
    "check_beta_zero_is_geometric",
    "check_constant_losses_keep_uniform",
    "check_permutation_equivariance",
    "check_scale_invariance",
    "check_weight_invariants",
    "reference_weights",
    "run_balancer",
    *_STRATEGIES,
]


def __getattr__(name: str) -> Any:
    if name in _STRATEGIES:
        try:
            strategies = importlib.import_module("anl.testing.strategies")
        except ModuleNotFoundError as error:
            if error.name != "hypothesis":
                raise
            raise ModuleNotFoundError(
                f'anl.testing.{name} needs hypothesis: pip install "anl[testing]"',
                name="hypothesis",
            ) from None
        return getattr(strategies, name)
    raise AttributeError(f"module 'anl.testing' has no attribute {name!r}")
