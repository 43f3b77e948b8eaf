"""What does the balancer cost? ``AdaptiveLossBalancer.step`` vs a bare weighted sum, per call.

Three candidates get the same two 0-dim losses (with an autograd graph, as in training):

- ``bare``: ``0.5 * l_adv + 0.5 * l_nat``, the cheapest way to combine them;
- ``anl``: ``AdaptiveLossBalancer(["adv", "nat"]).step({"adv": l_adv, "nat": l_nat})``
  (paper Eq. 6-11, the training loop's settings);
- ``constant``: ``ConstantWeights(["adv", "nat"], weights=[0.5, 0.5]).step(...)``.

Each is called ``--inner`` times per repeat. The extra cost of the balancer
(``anl - bare`` per call) is then set against one whole MTARD step of the ``fmnist`` workload,
timed in the same run (target: < 1% of a step).

Run: ``python -m benchmarks.balancer_overhead [--inner N] [--repeats N]``.
"""

from __future__ import annotations

from typing import Any

import torch

from anl import AdaptiveLossBalancer, ConstantWeights
from benchmarks.timing import (
    base_parser,
    parse_args,
    print_machine,
    print_table,
    ratio,
    time_interleaved,
    write_results,
)
from benchmarks.workloads import WORKLOADS, build_workload

NAME = "balancer_overhead"
TARGET = 0.01


def loss_candidates(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Zero-argument callables combining the same two losses three ways."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(64, generator=generator).to(device).requires_grad_(True)
    l_adv = (theta**2).mean()
    l_nat = theta.abs().mean()
    anl = AdaptiveLossBalancer(["adv", "nat"])  # the training loop's settings
    constant = ConstantWeights(["adv", "nat"], weights=[0.5, 0.5])

    def bare() -> torch.Tensor:
        return 0.5 * l_adv + 0.5 * l_nat

    def anl_step() -> torch.Tensor:
        return anl.step({"adv": l_adv, "nat": l_nat})

    def constant_step() -> torch.Tensor:
        return constant.step({"adv": l_adv, "nat": l_nat})

    return {"bare": bare, "anl": anl_step, "constant": constant_step}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(NAME, __doc__.splitlines()[0])
    parser.set_defaults(repeats=7)
    parser.add_argument("--inner", type=int, default=300, help="calls per timed repeat")
    parser.add_argument("--workload", default="fmnist", choices=sorted(WORKLOADS))
    parser.add_argument("--step-repeats", type=int, default=3, help="repeats of the MTARD step")
    args = parse_args(parser, argv)
    print_machine()

    calls = time_interleaved(
        loss_candidates(args.device),
        repeats=args.repeats,
        warmup=max(args.warmup, 1) * 10,
        inner=args.inner,
        device=args.device,
    )
    w = build_workload(args.workload, device=args.device, seed=args.seed)
    step = time_interleaved(
        {"step": w.our_step()}, repeats=args.step_repeats, warmup=args.warmup, device=args.device
    )["step"]

    extra = calls["anl"].median - calls["bare"].median
    rows = [
        {
            "candidate": name,
            "us_per_call": 1e6 * t.median,
            "x bare": ratio(t, calls["bare"])["ratio_of_medians"],
            "share of step": t.median / step.median,
        }
        for name, t in calls.items()
    ]
    rows.append(
        {
            "candidate": f"MTARD step ({args.workload})",
            "us_per_call": 1e6 * step.median,
            "x bare": step.median / calls["bare"].median,
            "share of step": 1.0,
        }
    )
    print_table(
        f"{NAME}: per call, median of {args.repeats} repeats x {args.inner} calls "
        f"(MTARD step: median of {args.step_repeats})",
        rows,
    )
    print(
        f"balancer overhead (anl - bare) = {1e6 * extra:.1f} us per step = "
        f"{100 * extra / step.median:.4f}% of an MTARD step (target < {100 * TARGET:.0f}%)\n",
        flush=True,
    )
    result = {
        "target": TARGET,
        "workload": w.info,
        "timings": {k: t.to_dict() for k, t in calls.items()},
        "step": step.to_dict(),
        "overhead_s": extra,
        "overhead_share_of_step": extra / step.median,
        "anl_share_of_step": calls["anl"].median / step.median,
        "anl_over_bare": ratio(calls["anl"], calls["bare"]),
        "rows": rows,
    }
    write_results(args.out, NAME, result, args)
    return result


if __name__ == "__main__":
    main()
