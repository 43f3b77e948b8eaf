"""Hugging Face ``accelerate``: the balancer in ``save_state``/``load_state`` and in accumulation.

The recipe (``docs/integrations.md`` has it whole)::

    balancer = register_balancer(accelerator, AdaptiveLossBalancer(["ce", "kd"]))
    for batch in loader:
        with accelerator.accumulate(model):
            losses = {"ce": ..., "kd": ...}
            accelerator.backward(balanced_loss(accelerator, balancer, losses))
            optimizer.step()
            optimizer.zero_grad()

- :func:`register_balancer` hands the balancer to ``accelerator.register_for_checkpointing``:
  ``accelerator.save_state(dir)`` writes its state dict (``custom_checkpoint_<i>.pkl``,
  ``i`` the registration order, from the main process) and ``accelerator.load_state(dir)``
  restores it, bit-identically. Register the same objects in the same order when resuming.
- :func:`balanced_loss` steps the balancer on the micro-batch that ends an optimiser step
  (``accelerator.sync_gradients``; every batch without accumulation) and combines with the
  current weights on the others.

Under DDP each process holds its own balancer and ``step`` averages the detached losses
across the ranks (one ``all_reduce``) before the update; do not ``accelerator.gather`` the
losses for it. ``accelerator.backward`` scales the total for mixed precision; the balancer
sees the unscaled losses.

Needs ``accelerate`` (``pip install "adaptive-normalization-loss[accelerate]"``); importing
this module without it raises one ``ModuleNotFoundError`` that says so.
"""

from __future__ import annotations

from typing import TypeVar

from torch import Tensor

from anl.inputs import Losses
from anl.integrations._optional import missing_extra
from anl.weighting import LossWeighting

try:
    import accelerate
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(
        __name__, error, module="accelerate", package="accelerate", extra="accelerate"
    ) from None

__all__ = ["balanced_loss", "register_balancer"]

_W = TypeVar("_W", bound=LossWeighting)


def register_balancer(accelerator: accelerate.Accelerator, balancer: _W) -> _W:
    """Register ``balancer`` for ``accelerator.save_state``/``load_state``; return it.

    accelerate loads registered states with ``torch.load(weights_only=False)``, i.e. it
    unpickles them: load only checkpoints you trust. (The balancer's state dict itself holds
    only tensors and plain containers.)
    """
    if not isinstance(balancer, LossWeighting):
        raise TypeError(
            "Parameter `balancer` should be an anl weighting (an AdaptiveLossBalancer, "
            f"ConstantWeights, ...). Found `balancer = {type(balancer).__name__}`."
        )
    accelerator.register_for_checkpointing(balancer)
    return balancer


def balanced_loss(
    accelerator: accelerate.Accelerator, balancer: LossWeighting, losses: Losses
) -> Tensor | float:
    """``balancer.step(losses)`` on the micro-batch that ends an optimiser step, else
    ``balancer.combine(losses)``.

    Call it inside ``with accelerator.accumulate(model):``, which decides
    ``accelerator.sync_gradients``; outside it (no accumulation) every call steps.
    """
    if accelerator.sync_gradients:
        return balancer.step(losses)
    return balancer.combine(losses)
