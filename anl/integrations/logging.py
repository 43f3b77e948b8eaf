r"""Log a weighting's weights and relative losses to any tracker (W&B, MLflow, accelerate, ...).

:func:`balancer_metrics` reads the current weights :math:`w_i(t)` and relative losses
:math:`\tilde L_i(t) = L_i(t) / L_i(0)` back in one go (a single host-device copy on an
accelerator) as ``{"weights/<name>": w, "relative_loss/<name>": r}``. :class:`PeriodicLogger`
calls it every ``every_n_steps`` steps only and hands the result to a function of yours, so the
training steps in between never wait for the device. Nothing here imports a tracker: pass
``wandb.log``, ``mlflow.log_metrics`` or ``accelerator.log``, which all take
``(metrics, step=step)``. TensorBoard has its own writer, :mod:`anl.integrations.tensorboard`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch

from anl.weighting import LossWeighting

__all__ = ["PeriodicLogger", "balancer_metrics"]


def balancer_metrics(balancer: LossWeighting, prefix: str = "") -> dict[str, float]:
    """``{f"{prefix}weights/{name}": w, f"{prefix}relative_loss/{name}": r}`` as Python floats.

    The values are read back once (one copy for both vectors). Before the first step there
    are no relative losses, and only the weights are returned.

    Example:
        >>> from anl import AdaptiveLossBalancer
        >>> balancer = AdaptiveLossBalancer(["adv", "nat"])
        >>> _ = balancer.step({"adv": 2.0, "nat": 1.0})
        >>> _ = balancer.step({"adv": 1.5, "nat": 0.5})
        >>> balancer_metrics(balancer, prefix="anl/")  # doctest: +NORMALIZE_WHITESPACE
        {'anl/weights/adv': 0.5025, 'anl/weights/nat': 0.4975,
         'anl/relative_loss/adv': 0.75, 'anl/relative_loss/nat': 0.5}
    """
    weights = balancer.weights
    relative = balancer.relative_losses
    both = weights if relative is None else torch.cat([weights, relative.to(weights)])
    values = both.tolist()
    n = len(balancer.names)
    metrics = {
        f"{prefix}weights/{name}": float(w)
        for name, w in zip(balancer.names, values[:n], strict=True)
    }
    if relative is not None:
        metrics.update(
            {
                f"{prefix}relative_loss/{name}": float(r)
                for name, r in zip(balancer.names, values[n:], strict=True)
            }
        )
    return metrics


class PeriodicLogger:
    """Calls ``log_fn(balancer_metrics(balancer, prefix), step=step)`` every ``every_n_steps`` steps.

    Call it once per optimiser step, after ``balancer.step``: ``logger(step)`` logs when
    ``step`` is a multiple of ``every_n_steps``; ``logger()`` counts the calls itself (the
    first call is step 1). Only the logging steps read the values back.

    Args:
        balancer: the weighting to log.
        log_fn: receives the metrics dict and ``step=`` (``wandb.log``, ``mlflow.log_metrics``,
            ``accelerator.log`` or your own function).
        every_n_steps: log every this many steps (a positive int).
        prefix: put before every key (e.g. ``"anl/"``).

    Example:
        >>> from anl import AdaptiveLossBalancer
        >>> balancer = AdaptiveLossBalancer(["adv", "nat"])
        >>> logged = []
        >>> logger = PeriodicLogger(
        ...     balancer, lambda metrics, step: logged.append((step, metrics)), every_n_steps=2
        ... )
        >>> for losses in [(2.0, 1.0), (1.5, 0.5), (1.0, 0.5)]:
        ...     _ = balancer.step(losses)
        ...     _ = logger()
        >>> [(step, sorted(metrics)) for step, metrics in logged]  # doctest: +NORMALIZE_WHITESPACE
        [(2, ['relative_loss/adv', 'relative_loss/nat', 'weights/adv', 'weights/nat'])]

        With W&B, MLflow or accelerate: ``PeriodicLogger(balancer, wandb.log)``,
        ``PeriodicLogger(balancer, mlflow.log_metrics)``, ``PeriodicLogger(balancer,
        accelerator.log)``.
    """

    def __init__(
        self,
        balancer: LossWeighting,
        log_fn: Callable[..., Any],
        *,
        every_n_steps: int = 50,
        prefix: str = "",
    ) -> None:
        if not isinstance(balancer, LossWeighting):
            raise TypeError(
                "Parameter `balancer` should be an anl weighting (an AdaptiveLossBalancer, "
                f"ConstantWeights, ...). Found `balancer = {type(balancer).__name__}`."
            )
        if not callable(log_fn):
            raise TypeError(f"Parameter `log_fn` should be callable. Found `log_fn = {log_fn!r}`.")
        self.balancer = balancer
        self.log_fn = log_fn
        self.every_n_steps = _positive_int("every_n_steps", every_n_steps)
        self.prefix = str(prefix)
        self._calls = 0

    def __call__(self, step: int | None = None) -> Mapping[str, float] | None:
        """Log if ``step`` (or, when ``None``, the number of calls so far) is a multiple of
        ``every_n_steps``; return the metrics logged, or ``None`` when it did not log."""
        self._calls += 1
        if step is None:
            step = self._calls
        elif isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"Parameter `step` should be an int. Found `step = {step!r}`.")
        if step % self.every_n_steps:
            return None
        metrics = balancer_metrics(self.balancer, self.prefix)
        self.log_fn(metrics, step=int(step))
        return metrics


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"Parameter `{name}` should be a positive int. Found `{name} = {value!r}`."
        )
    return int(value)
