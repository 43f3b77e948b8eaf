"""The robustness of a model on a test split under the paper's attacks (Sec. 4.1)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.registry import (
    ATTACK_NAMES,
    ATTACKS,
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    Attack,
    make_attack,
)
from ..checks import check_int, fail
from ..runtime.execution import in_memory_format, model_mode, resolve_memory_format
from ..runtime.optional import progress_bar
from .counting import AttackFn, check_data, count_correct, indexed_batches, shard_indices, w_robust
from .transfer import crafted_rows, transfer_problems


def evaluate(
    model: nn.Module,
    data: Any,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    *,
    eps: float | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    surrogate: nn.Module | None = None,
    transfer_examples: Mapping[str, Mapping[str, Any]] | None = None,
    n_examples: int | None = None,
    square_queries: int = 5000,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    attack_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    memory_format: str = "auto",
    attack_n_examples: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Clean accuracy, and robust and W-Robust accuracy under each attack (paper Sec. 4.1).

    Args:
        model: the classifier, taking [0, 1] inputs; moved to ``device`` and evaluated in
            eval mode (its modes are restored afterwards).
        data: an :class:`~.data.registry.ImageData` (e.g. the test split) or a pair ``(x, y)``
            of tensors, ``x`` float in [0, 1].
        attacks: names from :data:`~.attacks.registry.ATTACKS`, run with the protocol of
            :func:`~.attacks.registry.protocol` at ``eps``.
        eps: L-infinity budget; default: the dataset's ``default_eps`` (0.1 on Fashion-MNIST,
            8/255 on CIFAR), or 8/255 for tensor data.
        surrogate: the model transfer attacks are crafted on (the adversarial teacher in the
            paper); required by ``transfer_pgd`` / ``transfer_cw`` unless they are given in
            ``transfer_examples``.
        transfer_examples: transfer attacks crafted beforehand (:func:`craft_transfer`, or
            :func:`merge_transfer` of its shards): their examples are scored instead of
            crafted, and their entries record the given ``settings``. Each evaluated point
            needs an example, within ``eps`` of it and in [0, 1]
            (:func:`~.transfer.transfer_problems`); otherwise a ``ValueError`` says which.
        n_examples: evaluate the first ``n_examples`` points only (all by default).
        square_queries: the Square Attack's query budget.
        rank, world_size: evaluate the exact shard ``indices[rank::world_size]``. When
            ``torch.distributed`` is initialised the counts are summed over ranks with
            ``all_reduce``, otherwise the result holds this shard's counts.
        seed: seeds every attack's randomness. The random start of each point is a function
            of ``(seed, dataset index)``, so results do not depend on ``batch_size`` or on the
            sharding (AutoAttack excepted: it seeds per call, as the official package does).
        attack_overrides: per-attack setting overrides, e.g. ``{"pgd_sat": {"steps": 50}}``.
        memory_format: the layout the model and the surrogate are evaluated in: ``"auto"``
            (channels-last on CPU, where it makes PGD-20 and CW-inf on the Fashion-MNIST CNN
            1.4-1.6x faster, ``python -m benchmarks.attack_throughput``; contiguous elsewhere),
            ``"channels_last"`` or ``"contiguous"``. A model in another layout is evaluated
            through a converted copy (:func:`~.runtime.execution.in_memory_format`) and keeps
            its own. The layout changes results by float rounding only.
        attack_n_examples: attacks run on the first points only, e.g. ``{"square": 1000}``
            for a query attack whose cost is queries x points. Such an attack's entry holds
            its own ``n_examples`` and ``clean`` (on those points), and its W-Robust uses
            that clean accuracy; the numbers equal an evaluation with ``n_examples`` set to
            the limit (the attack randomness is keyed by the dataset index).

    Returns:
        ``{"dataset", "eps", "seed", "n_examples", "clean": {"correct", "accuracy"},
        "attacks": {name: {"correct", "adv_correct", "robust", "w_robust", "settings"}},
        "shard": {"rank", "world_size", "reduced"}}`` (an attack of ``attack_n_examples``
        adds ``"n_examples"`` and ``"clean"`` to its entry); accuracies are fractions in
        [0, 1], ``w_robust`` is Eq. 12 with weights 0.5.
    """
    n_total, dataset, default_eps = check_data(data)
    eps = (default_eps if default_eps is not None else DEFAULT_EPS) if eps is None else eps
    check_int("batch_size", batch_size, minimum=1)
    check_int("square_queries", square_queries, minimum=1)
    indices = shard_indices(n_total, n_examples, rank, world_size)
    names = list(attacks)
    unknown = [name for name in names if name not in ATTACK_NAMES]
    if unknown or len(set(names)) != len(names):
        fail("attacks", names, f"distinct names from {ATTACK_NAMES}")
    limits = dict(attack_n_examples or {})
    if not set(limits) <= set(names):
        fail("attack_n_examples", limits, f"a dict naming attacks of `attacks` ({names})")
    for name, limit in limits.items():
        check_int(f"attack_n_examples['{name}']", limit, minimum=1)
    crafted = {name: v for name, v in (transfer_examples or {}).items() if name in names}
    if any(not ATTACKS[name].transfer for name in crafted):
        fail("transfer_examples", sorted(crafted), "keyed by transfer attacks")
    for name, entry in crafted.items():
        problems = transfer_problems(entry, data, eps=eps, indices=indices)
        if problems:
            raise ValueError(
                f"Parameter `transfer_examples` should hold, for `{name}`, an example of every "
                f"evaluated point within eps = {eps:.4g} of it and in [0, 1]. Found that "
                + "; ".join(problems)
                + "."
            )
    overrides = {name: dict(v) for name, v in (attack_overrides or {}).items()}
    if "square" in names:
        overrides.setdefault("square", {}).setdefault("n_queries", square_queries)
    device = torch.device(device)
    layout = resolve_memory_format(memory_format, device)
    model = in_memory_format(model.to(device), layout)
    if surrogate is not None:
        surrogate = in_memory_format(surrogate.to(device), layout)
    settings: dict[str, dict[str, Any]] = {}
    runs: dict[str, AttackFn] = {}
    for name in names:
        if name in crafted:
            settings[name] = dict(crafted[name]["settings"])
            runs[name] = crafted_rows(crafted[name])
            continue
        attack = make_attack(
            name,
            eps=eps,
            seed=seed,
            surrogate=surrogate if ATTACKS[name].transfer else None,
            progress=False,
            **overrides.get(name, {}),
        )
        settings[name] = attack.settings
        runs[name] = _bound(attack, model)

    batches = indexed_batches(data, indices, batch_size, device)
    total = math.ceil(indices.numel() / batch_size)
    with model_mode(model, "eval"):
        bar = progress_bar(batches, desc="evaluate", enabled=progress and rank == 0, total=total)
        counts = count_correct(
            model, bar, runs, device=device, limits=limits, world_size=world_size
        )
    clean = counts.clean / counts.n if counts.n else float("nan")
    results: dict[str, Any] = {
        "dataset": dataset,
        "eps": float(eps),
        "seed": seed,
        "n_examples": counts.n,
        "clean": {"correct": counts.clean, "accuracy": clean},
        "attacks": {},
        "shard": {"rank": rank, "world_size": world_size, "reduced": counts.reduced},
    }
    for name in names:
        attack_counts = counts.attacks[name]
        subset_clean, robust = attack_counts.accuracies()
        entry: dict[str, Any] = {
            "correct": attack_counts.robust,
            "adv_correct": attack_counts.adv,
            "robust": robust,
            "w_robust": w_robust(subset_clean, robust),
            "settings": settings[name],
        }
        if name in limits:
            entry["n_examples"] = attack_counts.n
            entry["clean"] = {"correct": attack_counts.clean, "accuracy": subset_clean}
        results["attacks"][name] = entry
    return results


def _bound(attack: Attack, model: nn.Module) -> AttackFn:
    """``attack`` on ``model`` with the dataset indices as per-point seeds."""

    def run(x: Tensor, y: Tensor, ids: Tensor) -> Tensor:
        return attack(model, x, y, seeds=ids)

    return run
