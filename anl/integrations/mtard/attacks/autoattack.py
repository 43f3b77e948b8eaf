"""AutoAttack, L-infinity (Croce & Hein, ICML 2020), through the optional ``pyautoattack``.

Not part of the paper's protocol; offered as the stronger white-box reference
(``pip install "anl[autoattack]"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..checks import check_int
from ..runtime.execution import ModelMode
from ..runtime.execution import model_mode as set_mode
from ..runtime.optional import require
from .gradient import check_inputs, check_nonnegative, project


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    version: Literal["standard", "plus", "rand", "custom"] = "standard",
    device: torch.device | str | None = None,
    batch_size: int = 500,
    attacks: Sequence[str] | None = None,
    seed: int = 0,
    square_queries: int | None = None,
    model_mode: ModelMode = "eval",
) -> Tensor:
    """AutoAttack, L-infinity (Croce & Hein, ICML 2020), through ``pyautoattack``.

    ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square (5000 queries) and keeps the
    worst case per point; ``"custom"`` runs ``attacks`` (e.g. ``["apgd-ce", "apgd-t"]``).
    ``device`` defaults to ``x.device`` (the package's own default is the CPU). With fewer
    than 10 classes the targeted attacks use every other class (``C - 1`` targets) instead
    of 9, which would index out of range; with fewer than 4 classes APGD-T (whose DLR loss
    needs 4 logits) is dropped from the preset versions with a warning and refused in
    ``"custom"``. ``square_queries`` overrides Square's budget. The package seeds torch's
    global generator (``seed``), as the official code does.
    """
    pyautoattack = require("pyautoattack", "AutoAttack (the `autoattack` attack)")
    check_inputs(x, y)
    check_nonnegative("eps", eps)
    check_int("batch_size", batch_size, minimum=1)
    if version == "custom" and not attacks:
        raise ValueError(
            'Parameter `attacks` should list the attacks to run with version="custom". '
            f"Found `attacks = {attacks!r}`."
        )
    if version != "custom" and attacks is not None:
        raise ValueError(
            'Parameter `attacks` should be None unless version="custom". '
            f"Found `attacks = {attacks!r}` with `version = {version!r}`."
        )
    device = x.device if device is None else torch.device(device)
    with set_mode(model, model_mode):
        with torch.no_grad():
            num_classes = model(x[:1].to(device)).shape[1]
        adversary = pyautoattack.AutoAttack(
            model,
            attacks=list(attacks) if attacks is not None else None,
            device=device,
            eps=eps,
            norm="Linf",
            seed=seed,
            version=version,
        )
        adversary.verbose = False
        if num_classes < 4 and "apgd-t" in adversary.attacks_to_run:
            # APGD-T's targeted DLR loss reads the 4th-largest logit.
            if version == "custom":
                raise ValueError(
                    "Parameter `attacks` should not include 'apgd-t' for a model with fewer "
                    f"than 4 classes. Found `attacks = {list(attacks or [])}` with "
                    f"{num_classes} classes."
                )
            warnings.warn(
                f"AutoAttack: APGD-T needs at least 4 classes; running {version!r} without "
                f"it on this {num_classes}-class model.",
                stacklevel=2,
            )
            adversary.attacks_to_run = [a for a in adversary.attacks_to_run if a != "apgd-t"]
        n_targets = min(9, num_classes - 1)
        adversary.apgd_targeted.n_target_classes = min(
            adversary.apgd_targeted.n_target_classes, n_targets
        )
        adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, n_targets)
        if square_queries is not None:
            check_int("square_queries", square_queries, minimum=1)
            adversary.square.n_queries = square_queries
        x_adv, _ = adversary.run_standard_evaluation(
            x.detach().to(device), y.to(device), batch_size=batch_size
        )
    return project(x_adv.to(x.device).detach(), x.detach(), eps)
