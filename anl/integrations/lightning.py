"""PyTorch Lightning: the balancer in a ``LightningModule``, in its checkpoints and in its logs.

Two pieces:

- :func:`balanced_loss` in ``training_step``: ``return balanced_loss(self, self.balancer,
  {name: loss})`` steps the balancer once per optimiser step (``combine`` on the micro-batches
  that ``accumulate_grad_batches`` accumulates, and outside training) and returns the
  weighted total for Lightning's backward;
- :class:`LossBalancerCallback`: saves the balancer's :meth:`~anl.LossWeighting.state_dict`
  in every Lightning checkpoint and restores it on ``trainer.fit(..., ckpt_path=...)``
  (bit-identically), and logs its weights and relative losses with ``LightningModule.log``
  every ``Trainer(log_every_n_steps=...)`` steps, reading them back on those steps only.

Under DDP each process holds its own balancer, and ``step`` averages the detached losses
across the ranks (one ``all_reduce``) before the update, so every rank holds the same weights
and the same callback state; nothing needs ``sync_dist``.

Needs ``pytorch-lightning`` (``pip install "adaptive-normalization-loss[lightning]"``);
importing this module without it raises one ``ModuleNotFoundError`` that says so. The classes
derive from ``pytorch_lightning``, not from the ``lightning`` umbrella package
(``lightning.pytorch``), whose Trainer would not accept them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anl.inputs import Losses
from anl.integrations._optional import missing_extra
from anl.integrations.logging import balancer_metrics
from anl.weighting import LossWeighting

try:
    import pytorch_lightning as pl
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(
        __name__, error, module="pytorch_lightning", package="pytorch-lightning", extra="lightning"
    ) from None

__all__ = ["LossBalancerCallback", "balanced_loss"]


def balanced_loss(
    module: pl.LightningModule, balancer: LossWeighting, losses: Losses
) -> Tensor | float:
    """The weighted total of ``losses`` for ``module``'s current step.

    In training, on a batch that ends an optimiser step (every batch unless
    ``accumulate_grad_batches > 1``): ``balancer.step(losses)``, which updates the weights.
    On the other accumulated micro-batches, and in validation, test or predict steps:
    ``balancer.combine(losses)``, the current weights without an update.
    """
    trainer = module.trainer
    # `_should_accumulate` is how Lightning itself decides whether this batch's backward is
    # followed by an optimiser step (accumulate_grad_batches, the epoch's last batch, and
    # strategies that accumulate on their own); it is always False in manual optimisation.
    if trainer.training and not trainer.fit_loop._should_accumulate():
        return balancer.step(losses)
    return balancer.combine(losses)


class LossBalancerCallback(pl.Callback):
    """Checkpoints and logs a weighting for a Lightning ``Trainer``.

    - **Checkpoints**: the balancer's state dict is the callback's state
      (``checkpoint["callbacks"][callback.state_key]["balancer"]``); Lightning saves it with
      every checkpoint and restores it before training resumes. The state key names the
      losses, so several balancers (with different losses) can each have a callback.
    - **Logging**: on the steps where Lightning logs (``trainer.global_step`` a multiple of
      ``Trainer(log_every_n_steps=...)``), ``pl_module.log_dict`` of
      ``{f"{prefix}weights/{name}": w, f"{prefix}relative_loss/{name}": r}``, read back once;
      nothing is read on the other steps. ``sync_dist`` is not needed: every rank holds the
      same values.

    Args:
        balancer: the weighting the module steps (the same object).
        prefix: put before every logged key.
        prog_bar: also show the values in the progress bar.

    Example:
        ``callback = LossBalancerCallback(model.balancer)``, then
        ``pl.Trainer(callbacks=[callback]).fit(model, ckpt_path=...)``; see
        ``docs/integrations.md`` for the whole module.
    """

    def __init__(self, balancer: LossWeighting, *, prefix: str = "anl/", prog_bar: bool = False):
        if not isinstance(balancer, LossWeighting):
            raise TypeError(
                "Parameter `balancer` should be an anl weighting (an AdaptiveLossBalancer, "
                f"ConstantWeights, ...). Found `balancer = {type(balancer).__name__}`."
            )
        self.balancer = balancer
        self.prefix = str(prefix)
        self.prog_bar = bool(prog_bar)
        self._last_logged_step = 0  # step 0 (before any optimiser step) is never logged

    @property
    def state_key(self) -> str:
        return self._generate_state_key(losses=list(self.balancer.names))

    def state_dict(self) -> dict[str, Any]:
        """``{"balancer": balancer.state_dict()}``."""
        return {"balancer": self.balancer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the balancer from :meth:`state_dict` (checked first; a bad one changes nothing)."""
        self.balancer.load_state_dict(state_dict["balancer"])

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        every, step = trainer.log_every_n_steps, trainer.global_step
        if every < 1 or step == self._last_logged_step or step % every:
            return
        self._last_logged_step = step  # once per optimiser step, whatever the accumulation
        pl_module.log_dict(
            balancer_metrics(self.balancer, self.prefix),
            on_step=True,
            on_epoch=False,
            prog_bar=self.prog_bar,
            batch_size=1,
        )
