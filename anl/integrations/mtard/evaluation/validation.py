"""Validation during training: the W-Robust accuracy that selects the checkpoint.

The paper keeps the checkpoint with the best W-Robust accuracy (Eq. 12), measured on the test
set by the official code; the training loop measures it on a validation split carved from the
training set instead (:func:`validate`), so the test set is never seen during training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..attacks.gradient import pgd
from ..checks import fail
from ..data.loader import BatchLoader
from ..runtime.execution import model_mode
from .counting import count_correct, w_robust

VAL_ATTACKS = ("pgd_sat", "pgd_cw")
"""Attacks available for validation: PGD with step ``eps / 4`` and a uniform random start, on
the cross-entropy (``pgd_sat``, the SAT protocol of Madry et al.) or on the CW margin
(``pgd_cw``)."""


def validate(
    model: nn.Module,
    loader: BatchLoader,
    *,
    eps: float,
    steps: int,
    attack: str = "pgd_sat",
    step_size: float | None = None,
) -> dict[str, float]:
    """Clean, robust and W-Robust accuracy (paper Eq. 12) of ``model`` on ``loader``.

    The robust accuracy is under PGD (:data:`VAL_ATTACKS`): ``steps`` steps of ``step_size``
    (default ``eps / 4``) from a uniform random start in the eps-ball, drawn per image from its
    position in the validation set (``pgd(sample_seeds=...)``). So validation uses no global
    random state (it neither depends on nor disturbs training) and gives the same numbers
    whatever the batch size or the number of ranks. Here "robust" counts the points correct
    on the adversarial input (the ``adv_correct`` of :func:`evaluate`, the TRADES/RSLAD
    scripts' count), as the checkpoint selection always has. ``loader`` must not shuffle;
    under ``torch.distributed`` it must be built with ``pad_to_even=False`` (exact shards) and
    the counts are summed over ranks. The model's modes are restored. Returns
    ``{"clean", "robust", "wrobust", "n"}`` with accuracies in [0, 1].
    """
    if attack not in VAL_ATTACKS:
        fail("attack", attack, f"one of {list(VAL_ATTACKS)}")
    if getattr(loader, "shuffle", False):
        fail("loader", loader, "a loader with `shuffle=False`")
    step_size = eps / 4 if step_size is None else step_size
    rank, world_size = getattr(loader, "rank", 0), getattr(loader, "world_size", 1)
    device = next(model.parameters()).device

    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        position = 0  # position of the batch's first image in this rank's shard
        for x, y in loader:
            yield x, y, rank + world_size * torch.arange(position, position + len(y))
            position += len(y)

    def pgd_attack(x: Tensor, y: Tensor, ids: Tensor) -> Tensor:
        return pgd(
            model,
            x,
            y,
            eps=eps,
            step_size=step_size,
            steps=steps,
            loss="ce" if attack == "pgd_sat" else "cw",
            random_start="uniform",
            model_mode="eval",
            sample_seeds=ids,
        )

    with model_mode(model, "eval"):
        counts = count_correct(
            model, batches(), {attack: pgd_attack}, device=device, world_size=world_size
        )
    n = counts.n
    clean, robust = (counts.clean / n, counts.attacks[attack].adv / n) if n else (math.nan,) * 2
    return {"clean": clean, "robust": robust, "wrobust": w_robust(clean, robust), "n": n}
