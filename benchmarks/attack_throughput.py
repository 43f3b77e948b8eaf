"""How many images per second do the evaluation attacks process? PGD-20 and CW-inf.

For each student (``small_cnn`` on Fashion-MNIST shapes, ``resnet18`` on CIFAR shapes) and each
attack of the paper's protocol (:func:`~anl.integrations.mtard.attacks.registry.protocol`):

- ``pgd_sat``: 20 steps of ``eps / 4``, uniform start, cross-entropy (PGD-20);
- ``cw_inf``: 30 steps of ``eps / 4`` on the CW margin, confidence 50;

two candidates are timed interleaved on the same batch:

- ``ours``: :func:`~anl.integrations.mtard.attacks.gradient.pgd` (gradient w.r.t. the input only) on
  the model in the layout :func:`~anl.integrations.mtard.evaluation.robustness.evaluate` uses by
  default (``memory_format="auto"``: channels-last on CPU, contiguous on GPUs);
- ``ours_contiguous``: the same attack on the contiguous model (the layout's share of the
  gain);
- ``reference``: the loop of the TRADES/RSLAD evaluation scripts the paper uses
  (``_pgd_whitebox`` / ``_cw_whitebox``): ``loss.backward()`` on ``X_pgd`` with
  ``requires_grad=True``, a full backward that also fills every parameter's ``.grad``, on
  the contiguous model.

Reported: images per second of each, and the speed-up ``reference time / our time``.

Run: ``python -m benchmarks.attack_throughput [--repeats N]``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anl.integrations.mtard.attacks.gradient import pgd
from anl.integrations.mtard.attacks.registry import protocol
from anl.integrations.mtard.models import build_model
from anl.integrations.mtard.runtime.execution import in_memory_format, resolve_memory_format
from benchmarks.timing import (
    base_parser,
    parse_args,
    print_machine,
    print_table,
    ratio,
    time_interleaved,
    write_results,
)

NAME = "attack_throughput"

#: name -> (model, channels, size, eps, default batch)
MODELS = {
    "small_cnn": ("small_cnn", 1, 28, 0.1, 256),
    "resnet18": ("resnet18", 3, 32, 8 / 255, 16),
}
ATTACKS = ("pgd_sat", "cw_inf")


def _reference_cw(logits: Tensor, y: Tensor, confidence: float) -> Tensor:
    """``cwloss`` of the TRADES/RSLAD evaluation code."""
    onehot = F.one_hot(y, logits.shape[1]).float()
    real = (onehot * logits).sum(1)
    other = ((1.0 - onehot) * logits - onehot * 10000.0).max(1)[0]
    return -torch.clamp(real - other + confidence, min=0.0).sum()


def reference_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    loss: str,
    confidence: float = 50.0,
    **_: Any,
) -> Tensor:
    """The official evaluation loop: uniform start, ``loss.backward()`` each step (full
    backward: parameter gradients computed and accumulated), sign step, projection, clamp."""
    model.eval()
    x_pgd = (x.detach() + torch.empty_like(x).uniform_(-eps, eps)).requires_grad_(True)
    for _ in range(steps):
        model.zero_grad()
        with torch.enable_grad():
            logits = model(x_pgd)
            value = (
                F.cross_entropy(logits, y) if loss == "ce" else _reference_cw(logits, y, confidence)
            )
        value.backward()
        eta = step_size * x_pgd.grad.detach().sign()
        x_pgd = x_pgd.detach() + eta
        eta = torch.clamp(x_pgd - x, -eps, eps)
        x_pgd = torch.clamp(x + eta, 0.0, 1.0).requires_grad_(True)
    return x_pgd.detach()


def measure(
    model_name: str, *, batch: int | None, repeats: int, warmup: int, device: str, seed: int
) -> list[dict[str, Any]]:
    arch, channels, size, eps, default_batch = MODELS[model_name]
    batch = default_batch if batch is None else batch
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, in_channels=channels).to(device).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(batch, channels, size, size, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    ours = in_memory_format(model, resolve_memory_format("auto", device))
    settings = protocol(eps)
    rows = []
    for attack in ATTACKS:
        kw = settings[attack]
        timings = time_interleaved(
            {
                "ours": lambda kw=kw: pgd(ours, x, y, model_mode="eval", **kw),
                "ours_contiguous": lambda kw=kw: pgd(model, x, y, model_mode="eval", **kw),
                "reference": lambda kw=kw: reference_attack(model, x, y, **kw),
            },
            repeats=repeats,
            warmup=warmup,
            device=device,
        )
        speedup = ratio(timings["reference"], timings["ours"])
        contiguous = ratio(timings["reference"], timings["ours_contiguous"])
        rows.append(
            {
                "model": model_name,
                "attack": f"{attack} ({kw['steps']} steps)",
                "batch": batch,
                "ours_img/s": batch / timings["ours"].median,
                "reference_img/s": batch / timings["reference"].median,
                "speed-up": speedup["ratio_of_medians"],
                "speed-up (paired)": speedup["median_of_ratios"],
                "contiguous speed-up": contiguous["ratio_of_medians"],
                "_timings": {k: t.to_dict() for k, t in timings.items()},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = base_parser(NAME, __doc__.splitlines()[0])
    parser.set_defaults(repeats=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: per model")
    args = parse_args(parser, argv)
    print_machine()
    rows: list[dict[str, Any]] = []
    for name in args.models:
        rows += measure(
            name,
            batch=args.batch_size,
            repeats=args.repeats,
            warmup=args.warmup,
            device=args.device,
            seed=args.seed,
        )
    print_table(
        f"{NAME}: images/s, median of {args.repeats} interleaved repeats "
        "(eps 0.1 on 1x28x28, 8/255 on 3x32x32)",
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
    )
    write_results(args.out, NAME, {"rows": rows}, args)
    return rows


if __name__ == "__main__":
    main()
