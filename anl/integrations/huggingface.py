"""Hugging Face ``transformers.Trainer``: several losses from the model's outputs, balanced.

:class:`BalancedTrainer` is a ``Trainer`` (and :class:`BalancedLossMixin` the same behaviour
for your own ``Trainer`` subclass, e.g. ``class MyTrainer(BalancedLossMixin, Seq2SeqTrainer)``)
that takes two more keyword arguments: ``balancer``, a weighting, and ``loss_fn``, a function
``(outputs, inputs) -> {name: loss}`` of the model's outputs and the batch. Then:

- ``compute_loss`` runs the model, calls ``loss_fn`` and returns the weighted total. In
  training it calls ``balancer.step`` on the micro-batch that ends an optimiser step and
  ``balancer.combine`` on the others (``gradient_accumulation_steps``), so the weights move
  once per optimiser step; in evaluation it only combines. Each loss is a mean over its
  micro-batch: the Trainer divides the total by the accumulation steps, as for its own loss.
- Every checkpoint (``checkpoint-N/``) and every ``save_model`` directory gets
  ``balancer.pt``, the balancer's state dict, written by the process that saves the model.
  ``train(resume_from_checkpoint=...)`` (a path or ``True``) loads it back with
  ``torch.load(weights_only=True)`` before training resumes, so the weights continue
  bit-identically; a checkpoint without it is an error rather than a silent restart.
- Each training log line (every ``logging_steps``) also carries
  ``{f"{log_prefix}weights/{name}": w, f"{log_prefix}relative_loss/{name}": r}``, read back
  once on that step, for every ``report_to`` integration (TensorBoard, W&B, MLflow, ...).

Under DDP (``torchrun``, ``accelerate launch``) every process builds its own balancer, and
``step`` averages the detached losses across the ranks before the update, so the weights are
identical everywhere.

Needs ``transformers`` and ``accelerate`` (``pip install
"adaptive-normalization-loss[transformers]"``); importing this module without ``transformers``
raises one ``ModuleNotFoundError`` that says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from anl.inputs import Losses
from anl.integrations._optional import missing_extra
from anl.integrations.logging import balancer_metrics
from anl.weighting import LossWeighting

try:
    import transformers
    from transformers.trainer_utils import get_last_checkpoint
except ModuleNotFoundError as error:  # pragma: no cover - exercised in a subprocess
    raise missing_extra(
        __name__, error, module="transformers", package="transformers", extra="transformers"
    ) from None

__all__ = ["BALANCER_FILE", "BalancedLossMixin", "BalancedTrainer", "load_balancer_state"]

#: The balancer's file in a checkpoint or ``save_model`` directory.
BALANCER_FILE = "balancer.pt"

LossFn = Callable[[Any, Mapping[str, Any]], Losses]


def load_balancer_state(balancer: LossWeighting, directory: str | os.PathLike[str]) -> None:
    """Restore ``balancer`` from ``directory/balancer.pt`` (``weights_only=True``).

    Raises ``FileNotFoundError`` naming the file when the directory has none.
    """
    path = os.path.join(os.fspath(directory), BALANCER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Checkpoint '{os.fspath(directory)}' has no {BALANCER_FILE}, so the balancer's "
            "weights cannot resume (was it saved by a BalancedTrainer?). To start the balancer "
            "afresh from this checkpoint, load the model from it and train without "
            "`resume_from_checkpoint`."
        )
    balancer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class BalancedLossMixin:
    """``compute_loss``, ``save_model``, ``train`` and ``log`` of a ``Trainer`` with a balancer.

    Put it before the ``Trainer`` class: ``class MyTrainer(BalancedLossMixin, Trainer)``.

    Args:
        balancer: the weighting (its names are the keys ``loss_fn`` returns).
        loss_fn: ``(outputs, inputs) -> {name: loss}``: the model's outputs (what
            ``model(**inputs)`` returns) and the batch, to 0-dim loss tensors (a ``None`` or
            missing loss is absent at this step, as for ``balancer.step``).
        model_inputs: the keys of the batch that go to the model (default: all of them);
            the others (targets of the extra losses, teacher outputs, ...) reach ``loss_fn``
            only. Pass ``TrainingArguments(remove_unused_columns=False)`` with it: by default
            the Trainer drops the batch keys that the model's ``forward`` does not take
            before the batch reaches ``compute_loss``.
        log_prefix: put before the logged keys.
        *args: the ``Trainer``'s positional arguments.
        **kwargs: the ``Trainer``'s keyword arguments (``compute_loss_func`` is refused:
            ``loss_fn`` computes the loss).
    """

    balancer: LossWeighting
    loss_fn: LossFn

    def __init__(
        self,
        *args: Any,
        balancer: LossWeighting,
        loss_fn: LossFn,
        model_inputs: Collection[str] | None = None,
        log_prefix: str = "",
        **kwargs: Any,
    ) -> None:
        if not isinstance(balancer, LossWeighting):
            raise TypeError(
                "Parameter `balancer` should be an anl weighting (an AdaptiveLossBalancer, "
                f"ConstantWeights, ...). Found `balancer = {type(balancer).__name__}`."
            )
        if not callable(loss_fn):
            raise TypeError(
                f"Parameter `loss_fn` should be callable. Found `loss_fn = {loss_fn!r}`."
            )
        if model_inputs is not None and (
            isinstance(model_inputs, str) or not all(isinstance(k, str) for k in model_inputs)
        ):
            raise TypeError(
                "Parameter `model_inputs` should be a collection of batch keys. "
                f"Found `model_inputs = {model_inputs!r}`."
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "Parameter `compute_loss_func` cannot be combined with `loss_fn`: the balanced "
                "total is the loss."
            )
        super().__init__(*args, **kwargs)
        self.balancer = balancer
        self.loss_fn = loss_fn
        self.model_inputs = None if model_inputs is None else frozenset(model_inputs)
        self.log_prefix = str(log_prefix)
        # The total is a per-micro-batch mean: let the Trainer divide it by the accumulation
        # steps (the first attribute decides in transformers 5, the second before it).
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """``model(**inputs)`` (the ``model_inputs`` keys only, when given), then the
        weighted total of ``loss_fn(outputs, inputs)``."""
        if self.model_inputs is None:
            outputs = model(**inputs)
        else:
            outputs = model(**{k: v for k, v in inputs.items() if k in self.model_inputs})
        losses = self.loss_fn(outputs, inputs)
        training = model.training and torch.is_grad_enabled()
        if training and self.accelerator.sync_gradients:  # the micro-batch that steps
            total = self.balancer.step(losses)
        else:
            total = self.balancer.combine(losses)
        if not isinstance(total, Tensor):
            raise TypeError(
                "Parameter `loss_fn` should return tensors (the model's losses, with their "
                f"graphs). Found no tensor among them (total {total!r})."
            )
        return (total, outputs) if return_outputs else total

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model, and ``balancer.pt`` beside it (written by the saving process only)."""
        directory = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(directory, exist_ok=True)
            torch.save(self.balancer.state_dict(), os.path.join(directory, BALANCER_FILE))
        super().save_model(output_dir, _internal_call)

    def train(
        self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        """``Trainer.train``, with the balancer restored first when resuming."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:  # the Trainer's own error
                return super().train(True, *args, **kwargs)
        if resume_from_checkpoint:
            load_balancer_state(self.balancer, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's logs, with the weights and relative losses on training log lines."""
        if "loss" in logs:
            logs = {**logs, **balancer_metrics(self.balancer, self.log_prefix)}
        super().log(logs, *args, **kwargs)


class BalancedTrainer(BalancedLossMixin, transformers.Trainer):
    """A ``transformers.Trainer`` whose loss is ``balancer``'s weighted total of ``loss_fn``'s losses.

    See :class:`BalancedLossMixin` for the two extra arguments and this module for what is
    saved, restored and logged.

    Example:
        ``BalancedTrainer(model=model, args=TrainingArguments(...), train_dataset=data,
        balancer=AdaptiveLossBalancer(["ce", "kd"]), loss_fn=losses).train()``, with
        ``def losses(outputs, inputs): return {"ce": ..., "kd": ...}``; see
        ``docs/integrations.md`` for a complete script.
    """
