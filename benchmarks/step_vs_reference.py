"""How much faster is our MTARD step than the official code's? Throughput ratio, same run.

Candidates, timed interleaved on the same models, batch and machine:

- ``ours``: the training code path (:mod:`benchmarks.workloads`): ``METHODS["mtard"]``, the
  input-gradient-only attack :func:`~anl.integrations.mtard.attacks.gradient.pgd`, frozen and
  BatchNorm-folded teachers (``loop.prepare_teacher``), the sync-free
  :class:`anl.AdaptiveLossBalancer`, no ``.item()``;
- ``reference``: :class:`benchmarks.reference_mtard.ReferenceMTARD`, the official code's step
  (attack with ``loss.backward()`` accumulating parameter gradients, plain ``no_grad`` teachers,
  ANL on ``.item()`` values, ``.item()`` logging).

Both compute the same thing (``tests/test_benchmark_reference.py``). Reported: images per
second of each and the speed-up ``reference time / our time`` (target >= 1.5 on CPU).

Workloads (``--workload``): ``cifar_resnet18`` (ResNet-18 student, CIFAR-shaped input, batch 32
on CPU to keep the run short) and ``fmnist`` (``small_cnn`` student, ``large_cnn`` teachers,
batch 128).

Run: ``python -m benchmarks.step_vs_reference [--workload ...] [--repeats N]``.
"""

from __future__ import annotations

from typing import Any

from benchmarks.timing import (
    base_parser,
    parse_args,
    print_machine,
    print_table,
    ratio,
    time_interleaved,
    write_results,
)
from benchmarks.workloads import Workload, add_workload_arguments, workloads_from_args

NAME = "step_vs_reference"
TARGET = 1.5


def measure(w: Workload, *, repeats: int, warmup: int) -> dict[str, Any]:
    """Time ``ours`` and ``reference`` interleaved; speed-up = reference time / our time."""
    timings = time_interleaved(
        {"ours": w.our_step(), "reference": w.reference_step()},
        repeats=repeats,
        warmup=warmup,
        device=w.x.device,
    )
    batch = w.info["batch_size"]
    speedup = ratio(timings["reference"], timings["ours"])
    row = {
        "workload": w.name,
        "student": w.info["student"],
        "batch": batch,
        "ours_ms": 1e3 * timings["ours"].median,
        "reference_ms": 1e3 * timings["reference"].median,
        "ours_img/s": batch / timings["ours"].median,
        "reference_img/s": batch / timings["reference"].median,
        "speed-up": speedup["ratio_of_medians"],
        "speed-up (paired)": speedup["median_of_ratios"],
    }
    return {
        "workload": w.info,
        "timings": {k: t.to_dict() for k, t in timings.items()},
        "speedup": speedup,
        "row": row,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(NAME, __doc__.splitlines()[0])
    parser.set_defaults(repeats=3)
    add_workload_arguments(parser, default=["cifar_resnet18", "fmnist"])
    args = parse_args(parser, argv)
    print_machine()
    results = {}
    for name, w in workloads_from_args(args):
        results[name] = measure(w, repeats=args.repeats, warmup=args.warmup)
        print(
            f"{name}: student {w.info['student']}, teachers {w.info['clean_teacher']} (clean) / "
            f"{w.info['adv_teacher']} (adversarial), input {w.info['input']}, "
            f"{w.info['attack_steps']} attack steps",
            flush=True,
        )
    print_table(
        f"{NAME}: our MTARD step vs the official-style step (median of {args.repeats} "
        f"interleaved repeats; target speed-up >= {TARGET})",
        [r["row"] for r in results.values()],
    )
    write_results(args.out, NAME, {"target": TARGET, "results": results}, args)
    return results


if __name__ == "__main__":
    main()
