"""What does the balancer cost? ``AdaptiveLossBalancer.step`` vs a bare weighted sum, per call.

The candidates get the same two 0-dim losses (with an autograd graph, as in training):

- ``bare``: ``0.5 * l_adv + 0.5 * l_nat``, the cheapest way to combine them;
- ``anl``: ``AdaptiveLossBalancer(["adv", "nat"]).step({"adv": l_adv, "nat": l_nat})``
  (paper Eq. 6-11, the training loop's settings);
- ``constant``: ``ConstantWeights(["adv", "nat"], weights=[0.5, 0.5]).step(...)``;
- every rule of :mod:`anl.rules` with its defaults (FAMO makes both of its calls).

Each is called ``--inner`` times per repeat. The extra cost of each class (``class - bare``
per call) is then set against one whole MTARD step of the ``fmnist`` workload, timed in the
same run (target: < 1% of a step for every class).

Run: ``python -m benchmarks.balancer_overhead [--inner N] [--repeats N]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from anl import (
    FAMO,
    IMTLL,
    AdaptiveLossBalancer,
    ConstantWeights,
    DynamicWeightAverage,
    GeometricLossStrategy,
    RandomLossWeighting,
    ReLoBRaLo,
    SoftAdapt,
    UncertaintyWeighting,
)
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


def weighting_factories() -> dict[str, Callable[[], Any]]:
    """Every weighting class for two losses, with the training loop's or its own defaults."""
    names = ["adv", "nat"]
    return {
        "anl": lambda: AdaptiveLossBalancer(names),  # the training loop's settings
        "constant": lambda: ConstantWeights(names, weights=[0.5, 0.5]),
        "dwa": lambda: DynamicWeightAverage(names),
        "rlw": lambda: RandomLossWeighting(names),
        "gls": lambda: GeometricLossStrategy(names),
        "softadapt": lambda: SoftAdapt(names),
        "relobralo": lambda: ReLoBRaLo(names),
        "uncertainty": lambda: UncertaintyWeighting(names),
        "imtl_l": lambda: IMTLL(names),
        "famo": lambda: FAMO(names),
    }


def loss_candidates(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Zero-argument callables combining the same two losses: a bare fixed sum, then every
    weighting class (FAMO's candidate makes both of its calls, ``step`` and ``update``)."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(64, generator=generator).to(device).requires_grad_(True)
    l_adv = (theta**2).mean()
    l_nat = theta.abs().mean()
    losses = {"adv": l_adv, "nat": l_nat}

    def bare() -> torch.Tensor:
        return 0.5 * l_adv + 0.5 * l_nat

    candidates: dict[str, Any] = {"bare": bare}
    for name, build in weighting_factories().items():
        weighting = build()
        if isinstance(weighting, torch.nn.Module):
            weighting.to(device)
        if name == "famo":

            def famo_step(w: Any = weighting) -> torch.Tensor:
                total = w.step(losses)
                w.update(losses)
                return total

            candidates[name] = famo_step
        else:
            candidates[name] = lambda w=weighting: w.step(losses)
    return candidates


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

    bare = calls["bare"].median
    overhead = {name: t.median - bare for name, t in calls.items() if name != "bare"}
    rows = [
        {
            "candidate": name,
            "us_per_call": 1e6 * t.median,
            "x bare": ratio(t, calls["bare"])["ratio_of_medians"],
            "overhead, share of step": (t.median - bare) / step.median,
        }
        for name, t in calls.items()
    ]
    rows.append(
        {
            "candidate": f"MTARD step ({args.workload})",
            "us_per_call": 1e6 * step.median,
            "x bare": step.median / bare,
            "overhead, share of step": float("nan"),
        }
    )
    print_table(
        f"{NAME}: per call, median of {args.repeats} repeats x {args.inner} calls "
        f"(MTARD step: median of {args.step_repeats})",
        rows,
    )
    worst = max(overhead, key=overhead.get)
    print(
        f"largest overhead ({worst} - bare) = {1e6 * overhead[worst]:.1f} us per step = "
        f"{100 * overhead[worst] / step.median:.4f}% of an MTARD step "
        f"(target < {100 * TARGET:.0f}% for every class)\n",
        flush=True,
    )
    result = {
        "target": TARGET,
        "workload": w.info,
        "timings": {k: t.to_dict() for k, t in calls.items()},
        "step": step.to_dict(),
        "overhead_s": overhead,
        "overhead_share_of_step": {k: v / step.median for k, v in overhead.items()},
        "anl_over_bare": ratio(calls["anl"], calls["bare"]),
        "rows": rows,
    }
    write_results(args.out, NAME, result, args)
    return result


if __name__ == "__main__":
    main()
