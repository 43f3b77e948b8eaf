"""How does an MTARD step scale with the batch size and with the number of attack steps?

Two sweeps of our step (:mod:`benchmarks.workloads`), every configuration timed interleaved
with the others:

- attack steps ``K`` in ``--steps`` at a fixed batch: the step should cost
  ``T(K) = a + b K`` with ``b`` one attack pass (a forward and an input-gradient pass, plus the
  sign step and projection) and ``a`` the teachers, training passes and optimiser step. A
  least-squares fit gives ``b`` (slope), ``a`` (intercept) and R^2; ``b`` is compared with one
  attack pass timed alone in the same run (``slope / attack pass``, ideally close to 1) and ``a``
  with the rest of the floor (:mod:`benchmarks.step_vs_floor`).
- batch sizes ``B`` in ``--batch-sizes`` at ``K = 10``: a linear fit of ``T(B)`` and each size's
  time per image relative to the largest batch's (small batches pay fixed per-call costs).

Run: ``python -m benchmarks.scaling [--workload fmnist] [--steps ...] [--batch-sizes ...]``.
"""

from __future__ import annotations

from typing import Any

from benchmarks.step_vs_floor import floor_passes
from benchmarks.timing import (
    base_parser,
    fit_line,
    parse_args,
    print_machine,
    print_table,
    time_interleaved,
    write_results,
)
from benchmarks.workloads import WORKLOADS, build_workload

NAME = "scaling"


def steps_sweep(name: str, steps: list[int], *, batch: int | None, args: Any) -> dict[str, Any]:
    workloads = {
        k: build_workload(
            name, batch_size=batch, attack_steps=k, device=args.device, seed=args.seed
        )
        for k in steps
    }
    reference = workloads[steps[-1]]
    passes = floor_passes(reference)
    candidates = {f"K={k}": w.our_step() for k, w in workloads.items()}
    candidates.update(passes)
    timings = time_interleaved(
        candidates, repeats=args.repeats, warmup=args.warmup, device=args.device
    )
    times = [timings[f"K={k}"].median for k in steps]
    fit = fit_line([float(k) for k in steps], times)
    attack_pass = timings["attack_pass"].median
    rest = sum(timings[k].median for k in ("teacher_forwards", "training_passes", "optimizer_step"))
    rows = [
        {
            "attack steps": k,
            "step_ms": 1e3 * t,
            "fit_ms": 1e3 * (fit["intercept"] + fit["slope"] * k),
            "x K=0": t / times[0] if times[0] > 0 else float("nan"),
        }
        for k, t in zip(steps, times, strict=True)
    ]
    return {
        "workload": reference.info,
        "steps": steps,
        "step_s": times,
        "fit": fit,
        "attack_pass_s": attack_pass,
        "slope_over_attack_pass": fit["slope"] / attack_pass,
        "rest_of_floor_s": rest,
        "intercept_over_rest_of_floor": fit["intercept"] / rest,
        "timings": {k: t.to_dict() for k, t in timings.items()},
        "rows": rows,
    }


def batch_sweep(name: str, sizes: list[int], *, attack_steps: int, args: Any) -> dict[str, Any]:
    candidates = {
        f"B={b}": build_workload(
            name, batch_size=b, attack_steps=attack_steps, device=args.device, seed=args.seed
        ).our_step()
        for b in sizes
    }
    timings = time_interleaved(
        candidates, repeats=args.repeats, warmup=args.warmup, device=args.device
    )
    times = [timings[f"B={b}"].median for b in sizes]
    fit = fit_line([float(b) for b in sizes], times)
    per_image_ref = times[-1] / sizes[-1]
    rows = [
        {
            "batch": b,
            "step_ms": 1e3 * t,
            "fit_ms": 1e3 * (fit["intercept"] + fit["slope"] * b),
            "ms/image": 1e3 * t / b,
            f"per image x B={sizes[-1]}": (t / b) / per_image_ref,
            "img/s": b / t,
        }
        for b, t in zip(sizes, times, strict=True)
    ]
    return {
        "batch_sizes": sizes,
        "attack_steps": attack_steps,
        "step_s": times,
        "fit": fit,
        "timings": {k: t.to_dict() for k, t in timings.items()},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(NAME, __doc__.splitlines()[0])
    parser.set_defaults(repeats=3)
    parser.add_argument("--workload", default="fmnist", choices=sorted(WORKLOADS))
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 2, 5, 10, 20])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--batch-size", type=int, default=None, help="batch of the steps sweep")
    args = parse_args(parser, argv)
    steps, sizes = sorted(set(args.steps)), sorted(set(args.batch_sizes))
    if len(steps) < 2 or len(sizes) < 2:
        parser.error("--steps and --batch-sizes need at least two distinct values each")
    print_machine()

    by_steps = steps_sweep(args.workload, steps, batch=args.batch_size, args=args)
    fit = by_steps["fit"]
    print_table(
        f"{NAME}: {args.workload} step time vs attack steps, batch "
        f"{by_steps['workload']['batch_size']} (median of {args.repeats} interleaved repeats)",
        by_steps["rows"],
    )
    print(
        f"fit: T(K) = {1e3 * fit['intercept']:.2f} ms + {1e3 * fit['slope']:.2f} ms x K, "
        f"R^2 = {fit['r2']:.5f}; slope / attack pass alone "
        f"({1e3 * by_steps['attack_pass_s']:.2f} ms) = {by_steps['slope_over_attack_pass']:.3f}; "
        f"intercept / rest of the floor ({1e3 * by_steps['rest_of_floor_s']:.2f} ms) = "
        f"{by_steps['intercept_over_rest_of_floor']:.3f}\n",
        flush=True,
    )

    by_batch = batch_sweep(args.workload, sizes, attack_steps=10, args=args)
    fit = by_batch["fit"]
    print_table(
        f"{NAME}: {args.workload} step time vs batch size, 10 attack steps "
        f"(median of {args.repeats} interleaved repeats)",
        by_batch["rows"],
    )
    print(
        f"fit: T(B) = {1e3 * fit['intercept']:.2f} ms + {1e3 * fit['slope']:.3f} ms x B, "
        f"R^2 = {fit['r2']:.5f}\n",
        flush=True,
    )
    result = {"steps_sweep": by_steps, "batch_sweep": by_batch}
    write_results(args.out, NAME, result, args)
    return result


if __name__ == "__main__":
    main()
