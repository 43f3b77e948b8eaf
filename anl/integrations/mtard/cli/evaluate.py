"""``anl-mtard evaluate``: a checkpoint under the paper's attacks
(:func:`~anl.integrations.mtard.evaluation.robustness.evaluate`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..attacks.registry import ATTACK_NAMES, DEFAULT_ATTACKS, TRANSFER_ATTACKS
from ..checks import ArgumentError
from ..data.registry import DATASETS, dataset_key, load_dataset
from ..evaluation.robustness import evaluate
from ..models import MODELS, model_names
from ..models.checkpoint import load_model, load_teacher
from ..runtime.execution import MEMORY_FORMATS
from ..runtime.files import safe_load
from ..runtime.process import (
    Ranks,
    distributed_session,
    node_main_first,
    process_device,
)
from ..tables import result_rows, results_table, write_results
from ..training.checkpoints import run_paths
from .arguments import (
    add_debug_flag,
    attack_limit,
    directory_argument,
    epsilon,
    integer,
    names_text,
)


def add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
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
    parser.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="a model checkpoint written by anl-mtard, e.g. RUN_DIR/checkpoints/best.pt or "
        "RUN_DIR/final.pt",
    )
    parser.add_argument(
        "--attacks",
        nargs="+",
        choices=ATTACK_NAMES,
        default=None,
        metavar="ATTACK",
        help=f"attacks to run: {names_text(ATTACK_NAMES)} (default: "
        f"{' '.join(DEFAULT_ATTACKS)}, and {' '.join(TRANSFER_ATTACKS)} with --surrogate)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help=f"dataset: {names_text(sorted(DATASETS), import_path=True)} (default: the one "
        "the checkpoint records)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="dataset folder (default: $ANL_DATA_DIR or ~/.cache/anl/data)",
    )
    parser.add_argument(
        "--eps",
        type=epsilon,
        default=None,
        help="L-inf budget in (0, 1], e.g. 8/255 (default: the dataset's, 8/255 on CIFAR and "
        "0.1 on Fashion-MNIST)",
    )
    parser.add_argument(
        "--n-examples",
        type=integer(1),
        default=None,
        metavar="N",
        help="evaluate the first N test points only (default: all)",
    )
    parser.add_argument(
        "--batch-size",
        type=integer(1),
        default=256,
        metavar="N",
        help="evaluation batch size (default: 256)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda, cuda:N or auto; cuda is cuda:LOCAL_RANK under torchrun (default: cpu)",
    )
    parser.add_argument(
        "--surrogate",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="the checkpoint that transfer_* attacks are crafted on (the adversarial teacher)",
    )
    parser.add_argument(
        "--surrogate-arch",
        default=None,
        metavar="ARCH",
        help="architecture of a surrogate in a foreign format (RobustBench/TRADES): "
        f"{names_text(model_names(), import_path=True)}; omit for checkpoints written by "
        "anl-mtard",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory (default: the checkpoint's directory)",
    )
    parser.add_argument(
        "--name", default=None, help="defense label and file stem (default: the checkpoint's)"
    )
    parser.add_argument(
        "--square-queries",
        type=integer(1),
        default=5000,
        metavar="N",
        help="queries of the Square attack (default: 5000)",
    )
    parser.add_argument(
        "--attack-n-examples",
        nargs="+",
        type=attack_limit,
        default=[],
        metavar="ATTACK=N",
        help="run these attacks on the first N points only (e.g. square=1000)",
    )
    parser.add_argument(
        "--seed",
        type=integer(0),
        default=0,
        metavar="N",
        help="seed of the random attacks (default: 0)",
    )
    parser.add_argument(
        "--memory-format",
        default="auto",
        choices=list(MEMORY_FORMATS),
        metavar="FORMAT",
        help=f"layout of the evaluated networks: {names_text(MEMORY_FORMATS)} (default: auto, "
        "channels_last on CPU and contiguous on GPUs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    parser.set_defaults(func=run_evaluate_command, prog=parser.prog)


def checkpoint_argument(path: Path, flag: str) -> Path:
    """A checkpoint to read: a usage error for a directory; a missing file that a run
    directory's ``checkpoints/`` holds is a ``FileNotFoundError`` that says so (any other
    missing file is the loader's ``FileNotFoundError``)."""
    if path.is_dir():
        hint = run_paths(path)["best"]
        raise ArgumentError(
            f"argument {flag}: expected a checkpoint file, found the directory '{path}'"
            + (f" (did you mean '{hint}'?)" if hint.exists() else "")
        )
    hint = path.parent / "checkpoints" / path.name
    if not path.exists() and hint.exists():
        raise FileNotFoundError(
            f"Checkpoint file '{path}' does not exist (did you mean '{hint}'?)."
        )
    return path


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The entries of a checkpoint other than its weights (``dataset``, ``method``, ...)."""
    checkpoint = safe_load(path)
    if not isinstance(checkpoint, dict):
        return {}
    return {k: v for k, v in checkpoint.items() if k != "state_dict"}


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Run ``anl-mtard evaluate``; under ``torchrun`` each rank attacks its shard and rank 0
    writes."""
    directory_argument(args.out, "--out")
    directory_argument(args.data_dir, "--data-dir")
    checkpoint_argument(args.checkpoint, "CHECKPOINT")
    if args.surrogate is not None:
        checkpoint_argument(args.surrogate, "--surrogate")
    if args.dataset is not None:
        args.dataset = dataset_key(args.dataset, parameter="--dataset")
    if args.surrogate_arch is not None:
        MODELS.resolve(args.surrogate_arch, parameter="--surrogate-arch")
    with distributed_session(args.device) as ranks:
        return evaluate_checkpoint(args, ranks)


def evaluate_checkpoint(args: argparse.Namespace, ranks: Ranks) -> int:
    """``anl-mtard evaluate`` in a (possibly distributed) session."""
    device = process_device(args.device, ranks)  # one device per process: cuda:LOCAL_RANK
    metadata = checkpoint_metadata(args.checkpoint)
    dataset = args.dataset or metadata.get("dataset")
    if not isinstance(dataset, str):
        raise ArgumentError(
            f"argument --dataset: needed, as the checkpoint '{args.checkpoint}' does not record "
            "its dataset"
        )
    info = DATASETS.resolve(dataset, parameter="dataset")
    model = load_model(args.checkpoint, map_location=device)
    surrogate = None
    if args.surrogate is not None and args.surrogate_arch is None:
        surrogate = load_model(args.surrogate, map_location=device)
    elif args.surrogate is not None:
        surrogate = load_teacher(
            args.surrogate,
            arch=args.surrogate_arch,
            num_classes=info.num_classes,
            in_channels=info.channels,
            map_location=device,
        )
    attacks = args.attacks
    if attacks is None:
        attacks = [*DEFAULT_ATTACKS, *(TRANSFER_ATTACKS if surrogate is not None else ())]
    progress = not args.no_progress and ranks.main
    data = node_main_first(
        lambda: load_dataset(dataset, "test", data_dir=args.data_dir, progress=progress), ranks
    )
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
        rank=ranks.rank,
        world_size=ranks.world_size,
        memory_format=args.memory_format,
    )
    if not ranks.main:
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
    stem = f"eval_{name}_{dataset}".replace(":", ".")  # an import path: no ':' in file names
    json_path, md_path = write_results(results, out, stem, defense=defense)
    print(results_table(result_rows(results, defense)))
    print(f"\nwrote {json_path} and {md_path}")
    return 0
