"""Robustness evaluation, W-Robust accuracy and the paper's result tables.

For a model :math:`f`, test points :math:`(x_i, y_i)_{i=1}^n` and an attack :math:`A`:

.. math::

    \\mathrm{Clean} = \\frac1n \\sum_i [f(x_i) = y_i], \\qquad
    \\mathrm{Robust} = \\frac1n \\sum_i [f(x_i) = y_i]\\,[f(A(x_i)) = y_i],

    \\text{W-Robust} = \\pi_{nat}\\,\\mathrm{Clean} + \\pi_{adv}\\,\\mathrm{Robust},
    \\qquad \\pi_{nat} = \\pi_{adv} = 0.5 \\quad \\text{(paper Eq. 12).}

A point counts as robust only if it is classified correctly on the adversarial input *and*
on the clean one (AutoAttack/RobustBench's convention, so Robust <= Clean always). The
TRADES/RSLAD scripts count correctness on the adversarial input alone; that count is kept as
``adv_correct`` (the two differ only when an attack turns a wrong prediction into a right
one, which is rare).

:func:`evaluate` runs the attacks of :mod:`~anl.integrations.mtard.attacks` over a test split;
:func:`results_table` lays results out like the paper's Tables 2-5; :func:`write_results`
saves JSON and Markdown; :func:`register_cli` adds ``anl-mtard evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .attacks import ATTACK_NAMES, DEFAULT_EPS, make_attack, model_mode
from .config import in_memory_format, resolve_memory_format
from .parallel import distributed_session, resolve_device

__all__ = [
    "DEFAULT_ATTACKS",
    "evaluate",
    "indexed_batches",
    "register_cli",
    "result_rows",
    "results_table",
    "w_robust",
    "write_results",
]

DEFAULT_ATTACKS = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square")
"""White-box attacks of Table 2 plus Square (Table 4); transfer attacks need a surrogate."""

DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST"}
ATTACK_TITLES = {
    "fgsm": "FGSM",
    "pgd_sat": "PGD_SAT",
    "pgd_trades": "PGD_TRADES",
    "cw_inf": "CW_inf",
    "square": "Square",
    "transfer_pgd": "Transfer PGD_TRADES",
    "transfer_cw": "Transfer CW_inf",
    "autoattack": "AutoAttack",
}


def w_robust(clean: float, robust: float, weight: float = 0.5) -> float:
    """Weighted robust accuracy (paper Eq. 12): ``weight * clean + (1 - weight) * robust``."""
    return weight * clean + (1.0 - weight) * robust


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def indexed_batches(
    data: Any, indices: Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Yield ``(x, y, ids)`` for the samples of ``data`` at ``indices``, in order.

    ``data`` is an :class:`~anl.integrations.mtard.data.ImageData` or a pair ``(x, y)`` of
    tensors; ``x`` and ``y`` come on ``device`` (``x`` float in [0, 1]), ``ids`` (the
    dataset indices of the batch, which key the per-point attack randomness) on the CPU.
    :func:`evaluate` and the reproduction's transfer-attack stage iterate with it.
    """
    if indices.numel() == 0:  # an empty shard (more ranks than points) has no batch
        return
    if isinstance(data, tuple | list):
        images, labels = data
        for start in range(0, indices.numel(), batch_size):
            ids = indices[start : start + batch_size]
            yield images[ids].to(device).float(), labels[ids].to(device), ids
        return
    from .data import BatchLoader

    loader = BatchLoader(data.subset(indices), batch_size, device=device)
    for start, (x, y) in zip(range(0, indices.numel(), batch_size), loader, strict=True):
        yield x, y, indices[start : start + batch_size]


def _check_data(data: Any) -> tuple[int, str | None, float | None]:
    """Return ``(n, dataset name or None, default eps or None)`` after validating ``data``."""
    if isinstance(data, tuple | list):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise ValueError(
                "Parameter `data` should be an ImageData or a pair of tensors (x, y). "
                f"Found a {type(data).__name__} of length {len(data)}."
            )
        x, y = data
        if x.dim() != 4 or not x.is_floating_point() or y.shape != (x.shape[0],):
            raise ValueError(
                "Parameter `data` should be (x float (N, C, H, W) in [0, 1], y int64 (N,)). "
                f"Found `x.shape = {tuple(x.shape)}`, `y.shape = {tuple(y.shape)}`."
            )
        return int(x.shape[0]), None, None
    info = getattr(data, "info", None)
    if info is None or not hasattr(data, "subset"):
        raise ValueError(
            "Parameter `data` should be an ImageData or a pair of tensors (x, y). "
            f"Found `data` of type {type(data).__name__}."
        )
    return len(data), info.name, float(info.default_eps)


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"Parameter `{name}` should be an integer >= {minimum}. Found `{name} = {value!r}`."
        )


def evaluate(
    model: nn.Module,
    data: Any,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    *,
    eps: float | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    surrogate: nn.Module | None = None,
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
        data: an :class:`~anl.integrations.mtard.data.ImageData` (e.g. the test split) or a
            pair ``(x, y)`` of tensors, ``x`` float in [0, 1].
        attacks: names from :data:`~anl.integrations.mtard.attacks.ATTACKS`, run with the
            protocol of :func:`~anl.integrations.mtard.attacks.protocol` at ``eps``.
        eps: L-infinity budget; default: the dataset's ``default_eps`` (0.1 on Fashion-MNIST,
            8/255 on CIFAR), or 8/255 for tensor data.
        surrogate: the model transfer attacks are crafted on (the adversarial teacher in the
            paper); required by ``transfer_pgd`` / ``transfer_cw``.
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
            through a converted copy (:func:`~anl.integrations.mtard.config.in_memory_format`)
            and keeps its own. The layout changes results by float rounding only.
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
    n_total, dataset, default_eps = _check_data(data)
    eps = (default_eps if default_eps is not None else DEFAULT_EPS) if eps is None else eps
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("world_size", world_size)
    _check_positive_int("square_queries", square_queries)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(
            f"Parameter `rank` should be an integer in [0, {world_size - 1}]. Found `rank = {rank!r}`."
        )
    if n_examples is not None:
        _check_positive_int("n_examples", n_examples)
    names = list(attacks)
    unknown = [name for name in names if name not in ATTACK_NAMES]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"Parameter `attacks` should list distinct names from {ATTACK_NAMES}. "
            f"Found `attacks = {names}`."
        )
    limits = dict(attack_n_examples or {})
    if not set(limits) <= set(names):
        raise ValueError(
            f"Parameter `attack_n_examples` should name attacks of `attacks` ({names}). "
            f"Found `attack_n_examples = {limits}`."
        )
    for name, limit in limits.items():
        _check_positive_int(f"attack_n_examples['{name}']", limit)
    overrides = {name: dict(v) for name, v in (attack_overrides or {}).items()}
    if "square" in names:
        overrides.setdefault("square", {}).setdefault("n_queries", square_queries)
    device = torch.device(device)
    layout = resolve_memory_format(memory_format, device)
    model = in_memory_format(model.to(device), layout)
    if surrogate is not None:
        surrogate = in_memory_format(surrogate.to(device), layout)
    built = {
        name: make_attack(
            name,
            eps=eps,
            seed=seed,
            surrogate=surrogate if name.startswith("transfer_") else None,
            progress=False,
            **overrides.get(name, {}),
        )
        for name in names
    }

    n = n_total if n_examples is None else min(n_examples, n_total)
    indices = torch.arange(n)[rank::world_size]
    # counts: [shard size, clean correct, then per attack: robust correct, adv correct, points
    # attacked, clean correct among them]
    counts = torch.zeros(2 + 4 * len(names), dtype=torch.int64, device=device)
    from tqdm.auto import tqdm

    with model_mode(model, "eval"):
        n_batches = math.ceil(indices.numel() / batch_size)
        bar = tqdm(
            indexed_batches(data, indices, batch_size, device),
            total=n_batches,
            desc="evaluate",
            disable=not progress or rank != 0,
        )
        for x, y, ids in bar:
            with torch.no_grad():
                clean_ok = model(x).argmax(dim=1) == y
            counts[0] += y.shape[0]
            counts[1] += clean_ok.sum()
            for k, name in enumerate(names):
                xs, ys, seeds, ok = x, y, ids, clean_ok
                if name in limits:
                    keep = ids < limits[name]  # ids live on the CPU: no device sync
                    if not keep.any():
                        continue
                    if not keep.all():
                        on_device = keep.to(device)
                        xs, ys, seeds, ok = x[on_device], y[on_device], ids[keep], ok[on_device]
                x_adv = built[name](model, xs, ys, seeds=seeds)
                with torch.no_grad():
                    adv_ok = model(x_adv).argmax(dim=1) == ys
                counts[2 + 4 * k] += (adv_ok & ok).sum()
                counts[3 + 4 * k] += adv_ok.sum()
                counts[4 + 4 * k] += ys.shape[0]
                counts[5 + 4 * k] += ok.sum()

    reduced = False
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl" and counts.device.type != "cuda":
            on_gpu = counts.to(torch.device("cuda", torch.cuda.current_device()))
            torch.distributed.all_reduce(on_gpu, op=torch.distributed.ReduceOp.SUM)
            counts = on_gpu.cpu()
        else:
            torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM)
        reduced = True
    values = counts.tolist()
    evaluated = values[0]
    clean = values[1] / evaluated if evaluated else float("nan")
    results: dict[str, Any] = {
        "dataset": dataset,
        "eps": float(eps),
        "seed": seed,
        "n_examples": evaluated,
        "clean": {"correct": values[1], "accuracy": clean},
        "attacks": {},
        "shard": {"rank": rank, "world_size": world_size, "reduced": reduced},
    }
    for k, name in enumerate(names):
        robust_correct, adv_correct, attacked, attacked_clean = values[2 + 4 * k : 6 + 4 * k]
        robust = robust_correct / attacked if attacked else float("nan")
        subset_clean = attacked_clean / attacked if attacked else float("nan")
        entry: dict[str, Any] = {
            "correct": robust_correct,
            "adv_correct": adv_correct,
            "robust": robust,
            "w_robust": w_robust(subset_clean, robust),
            "settings": built[name].settings,
        }
        if name in limits:
            entry["n_examples"] = attacked
            entry["clean"] = {"correct": attacked_clean, "accuracy": subset_clean}
        results["attacks"][name] = entry
    return results


# --------------------------------------------------------------------------------------------
# Tables and files
# --------------------------------------------------------------------------------------------

_ROW_KEYS = ("dataset", "defense", "attack", "clean", "robust", "w_robust")
_METRICS = ("clean", "robust", "w_robust")


def result_rows(results: Mapping[str, Any], defense: str) -> list[dict[str, Any]]:
    """Rows for :func:`results_table` from one :func:`evaluate` result."""
    dataset = results.get("dataset") or "data"
    return [
        {
            "dataset": dataset,
            "defense": defense,
            "attack": name,
            "clean": entry.get("clean", results["clean"])["accuracy"],  # the attacked points
            "robust": entry["robust"],
            "w_robust": entry["w_robust"],
        }
        for name, entry in results["attacks"].items()
    ]


def _percent(row: Mapping[str, Any], key: str) -> str:
    value = 100.0 * float(row[key])
    std = row.get(f"{key}_std")
    if std is None:
        return f"{value:.2f}"
    return f"{value:.2f} ± {100.0 * float(std):.2f}"


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table laid out like the paper's Tables 2-5.

    Rows are grouped by attack, then defense (both in order of first appearance; the attack
    is named on the first row of its group only); each dataset gets the columns Clean /
    Robust / W-Robust, in percent with two decimals. Each entry is a mapping with
    ``dataset, defense, attack, clean, robust, w_robust`` (fractions in [0, 1]) and optional
    ``clean_std, robust_std, w_robust_std`` (shown as ``mean ± std``). Missing combinations
    are shown as ``–``.

    Example:
        >>> print(results_table([{"dataset": "cifar10", "defense": "MTARD", "attack": "fgsm",
        ...                       "clean": 0.8736, "robust": 0.612, "w_robust": 0.7428}]))
        | Attack | Defense | CIFAR-10 Clean (%) | CIFAR-10 Robust (%) | CIFAR-10 W-Robust (%) |
        |---|---|---:|---:|---:|
        | FGSM | MTARD | 87.36 | 61.20 | 74.28 |
    """
    datasets: list[str] = []
    attacks: list[str] = []
    defenses: dict[str, list[str]] = {}
    cells: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for i, row in enumerate(rows):
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise ValueError(
                f"Parameter `rows` should hold entries with keys {list(_ROW_KEYS)}. "
                f"Found row {i} without {missing}."
            )
        for key in _METRICS:
            value = float(row[key])
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"Parameter `rows` should hold accuracies as fractions in [0, 1]. "
                    f"Found `rows[{i}][{key!r}] = {row[key]!r}`."
                )
        key3 = (str(row["attack"]), str(row["defense"]), str(row["dataset"]))
        if key3 in cells:
            raise ValueError(
                "Parameter `rows` should hold one entry per (attack, defense, dataset). "
                f"Found a duplicate for {key3}."
            )
        cells[key3] = row
        attack, defense, dataset = key3
        if dataset not in datasets:
            datasets.append(dataset)
        if attack not in attacks:
            attacks.append(attack)
            defenses[attack] = []
        if defense not in defenses[attack]:
            defenses[attack].append(defense)

    header = ["Attack", "Defense"]
    for dataset in datasets:
        title = DATASET_TITLES.get(dataset, dataset)
        header += [f"{title} Clean (%)", f"{title} Robust (%)", f"{title} W-Robust (%)"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * (3 * len(datasets)),
    ]
    for attack in attacks:
        for j, defense in enumerate(defenses[attack]):
            line = [ATTACK_TITLES.get(attack, attack) if j == 0 else "", defense]
            for dataset in datasets:
                row = cells.get((attack, defense, dataset))
                line += ["–"] * 3 if row is None else [_percent(row, m) for m in _METRICS]
            lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, fsync it, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(
    results: Mapping[str, Any], out_dir: str | Path, name: str, *, defense: str | None = None
) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` (the full result) and ``<name>.md`` (the table).

    ``defense`` labels the table rows (default: ``results["defense"]`` if present, else
    ``name``). Both files are written atomically. Returns their paths.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"Parameter `name` should be a plain file stem. Found `name = {name!r}`.")
    out_dir = Path(out_dir)
    label = defense or results.get("defense") or name
    table = results_table(result_rows(results, label))
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    _atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    eps = results.get("eps")
    caption = f"{label}: {results.get('n_examples')} test points"
    if eps is not None:
        caption += f", L-inf eps = {eps:.4g}"
    _atomic_write_text(md_path, f"{caption}\n\n{table}\n")
    return json_path, md_path


# --------------------------------------------------------------------------------------------
# Command line: anl-mtard evaluate
# --------------------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """Add ``evaluate``: ``anl-mtard evaluate CHECKPOINT [--attacks ...] [--dataset ...] ...``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint under the paper's attacks",
        description=(
            "Load a model checkpoint, evaluate it on the test split under the paper's attacks "
            "(clean, robust and W-Robust accuracy, Eq. 12), print the Markdown table and write "
            "JSON + Markdown."
        ),
    )
    parser.add_argument("checkpoint", type=Path, help="model checkpoint written by anl-mtard")
    parser.add_argument(
        "--attacks",
        nargs="+",
        choices=ATTACK_NAMES,
        default=None,
        help=f"attacks to run (default: {' '.join(DEFAULT_ATTACKS)}, + transfer_* with "
        "--surrogate)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="dataset name (cifar10, cifar100, fashion_mnist); default: the checkpoint's",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset directory")
    parser.add_argument("--eps", type=float, default=None, help="L-inf budget (default: dataset's)")
    parser.add_argument("--n-examples", type=int, default=None, help="first N test points only")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--surrogate", type=Path, default=None, help="surrogate for transfer_*")
    parser.add_argument(
        "--surrogate-arch",
        default=None,
        help="architecture of a surrogate in a foreign format (RobustBench/TRADES); "
        "omit for checkpoints written by anl-mtard",
    )
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: next to it)")
    parser.add_argument("--name", default=None, help="defense label and file stem")
    parser.add_argument("--square-queries", type=int, default=5000)
    parser.add_argument(
        "--attack-n-examples",
        nargs="+",
        type=_attack_limit,
        default=[],
        metavar="ATTACK=N",
        help="run these attacks on the first N points only (e.g. square=1000)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory-format",
        default="auto",
        choices=["auto", "channels_last", "contiguous"],
        help="layout of the evaluated networks (auto: channels_last on CPU, contiguous on GPUs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_run_cli)


def _attack_limit(text: str) -> tuple[str, int]:
    """``"square=1000"`` -> ``("square", 1000)`` for ``--attack-n-examples``."""
    name, _, count = text.partition("=")
    if name not in ATTACK_NAMES or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"expected ATTACK=N with ATTACK in {ATTACK_NAMES} and N >= 1, got {text!r}"
        )
    return name, int(count)


def _checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The entries of a checkpoint other than its weights (``dataset``, ``method``, ...)."""
    from .checkpoints import safe_load

    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        return {}
    return {k: v for k, v in checkpoint.items() if k != "state_dict"}


def _checkpoint_dataset(metadata: dict[str, Any], path: Path) -> str:
    dataset = metadata.get("dataset")
    if not isinstance(dataset, str):
        raise ValueError(
            f"Parameter `--dataset` should be given: the checkpoint {str(path)!r} does not "
            "record its dataset."
        )
    return dataset


def _run_cli(args: argparse.Namespace) -> int:
    """Run ``evaluate``; under ``torchrun`` each rank attacks its shard and rank 0 writes."""
    with distributed_session(args.device) as ddp:
        return _evaluate_cli(args, ddp)


def _evaluate_cli(args: argparse.Namespace, ddp: Any) -> int:
    from .checkpoints import load_model, load_teacher
    from .data import DATASETS, load_dataset

    device = args.device
    if ddp.enabled:  # one device per process: "cuda" means cuda:LOCAL_RANK
        device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", ddp.rank)))
        if device.type == "cuda":
            torch.cuda.set_device(device)
    metadata = _checkpoint_metadata(args.checkpoint)
    dataset = args.dataset or _checkpoint_dataset(metadata, args.checkpoint)
    if dataset not in DATASETS:
        raise ValueError(
            f"Parameter `--dataset` should be one of {sorted(DATASETS)}. Found {dataset!r}."
        )
    info = DATASETS[dataset]
    model = load_model(args.checkpoint, map_location=device)
    surrogate = None
    if args.surrogate is not None:
        if args.surrogate_arch is None:
            surrogate = load_model(args.surrogate, map_location=device)
        else:
            surrogate = load_teacher(
                args.surrogate,
                arch=args.surrogate_arch,
                num_classes=info.num_classes,
                in_channels=info.channels,
                map_location=device,
            )
    attacks = args.attacks
    if attacks is None:
        attacks = list(DEFAULT_ATTACKS)
        if surrogate is not None:
            attacks += ["transfer_pgd", "transfer_cw"]
    progress = not args.no_progress and ddp.main
    # One process per node downloads a missing dataset; the others wait, then read it.
    node_main = not ddp.enabled or int(os.environ.get("LOCAL_RANK", ddp.rank)) == 0
    if node_main:
        data = load_dataset(dataset, "test", data_dir=args.data_dir, progress=progress)
    ddp.barrier()
    if not node_main:
        data = load_dataset(dataset, "test", data_dir=args.data_dir, progress=False)
    results = evaluate(
        model,
        data,
        attacks,
        eps=args.eps,
        batch_size=args.batch_size,
        device=device,
        surrogate=surrogate,
        n_examples=args.n_examples,
        square_queries=args.square_queries,
        attack_n_examples=dict(args.attack_n_examples),
        progress=progress,
        seed=args.seed,
        rank=ddp.rank,
        world_size=ddp.world_size,
        memory_format=args.memory_format,
    )
    if not ddp.main:
        return 0
    name = args.name or args.checkpoint.stem
    # Label the rows with the training method the checkpoint records, else the file name.
    method = metadata.get("method")
    defense = args.name or (method if isinstance(method, str) else name)
    results["defense"] = defense
    results["checkpoint"] = str(args.checkpoint)
    if args.surrogate is not None:
        results["surrogate"] = str(args.surrogate)
    out = args.out if args.out is not None else args.checkpoint.parent
    json_path, md_path = write_results(results, out, f"eval_{name}_{dataset}", defense=defense)
    print(results_table(result_rows(results, defense)))
    print(f"\nwrote {json_path} and {md_path}")
    return 0
