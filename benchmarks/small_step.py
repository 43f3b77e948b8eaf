"""What does a weighting cost on a *small* training step? Each rule against a plain sum.

Two small steps where the weighting is a visible share of the time (one CPU thread):

- ``pinn``: a physics-informed-network-sized step: an MLP 2-50-50-1 (tanh) on 512 points,
  three losses (interior fit, boundary fit, a smoothness penalty), SGD (about 0.5 ms);
- ``multitask8``: a shared trunk (32-64, ReLU) with 8 one-output heads on 256 points, 8 MSE
  losses, SGD.

For each, the whole step (zero_grad, forward, losses, combine, backward, SGD at learning rate
0, :data:`LEARNING_RATE`) is timed with the losses combined by a plain fixed-weight sum
``sum_i c_i L_i`` (the reference) and by every weighting class, interleaved in one run (each
repeat rotates the order); the ratio to the plain sum is the cost. Uncertainty weighting and
IMTL-L learn a parameter, whose forward and backward the plain sum does not have: uncertainty
weighting written inline, as its authors' code does (``inline uncertainty weighting``, and
``..., float64 s`` with the float64 parameter the library keeps), is their reference, and its
ratio to the plain sum is the method's own cost, not the library's.
The plain sum is timed twice, on two copies of the model: the ratio of the second to the first
is this run's noise floor.

A second table times the weighting call alone on two 0-dim losses with a graph against the
official MTARD code's inline update (``.item()`` both losses, Eq. 7-9 on Python floats, then
``w_adv * L_adv + w_nat * L_nat``).

Targets (issue #21): ANL and ``ConstantWeights`` <= 1.05x the plain sum on ``pinn``, the
call alone within 2x of the inline update; the other rules are timed the same way.

Run: ``python -m benchmarks.small_step [--repeats 15] [--inner 200]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from anl import (
    IMTLL,
    AdaptiveLossBalancer,
    ConstantWeights,
    DynamicWeightAverage,
    GeometricLossStrategy,
    LossWeighting,
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

NAME = "small_step"
#: SGD's learning rate: 0, so that every candidate computes on the same parameters at every
#: step. The optimiser still runs its whole update (``p -= 0 * grad``); with a positive rate
#: each weighting would train its copy of the model somewhere else, and the steps would time
#: different numbers (a trajectory into denormals or saturated units costs more per step)
#: rather than the weighting.
LEARNING_RATE = 0.0
STEP_TARGET = 1.05
CALL_TARGET = 2.0

Losses = Callable[[], list[torch.Tensor]]
Combine = Callable[[list[torch.Tensor]], torch.Tensor]


def pinn(seed: int) -> tuple[nn.Module, Losses]:
    """The PINN-like workload: a 2-50-50-1 tanh MLP and its three losses on 512 points."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 50), nn.Tanh(), nn.Linear(50, 1)
    )
    interior = torch.rand(448, 2, generator=generator)
    target = torch.sin(3 * interior[:, :1]) * torch.cos(2 * interior[:, 1:])
    boundary = torch.rand(64, 2, generator=generator).round()

    def losses() -> list[torch.Tensor]:
        u = model(torch.cat([interior, boundary]))
        u_in, u_bd = u[:448], u[448:]
        return [(u_in - target).pow(2).mean(), u_bd.pow(2).mean(), 1e-3 * u_in.pow(2).mean()]

    return model, losses


def multitask8(seed: int) -> tuple[nn.Module, Losses]:
    """The multi-task workload: a 32-64 ReLU trunk, 8 linear heads, 8 MSE losses on 256 points."""
    generator = torch.Generator().manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
    heads = nn.Linear(64, 8)  # 8 one-output heads in one matrix
    model = nn.Sequential(trunk, heads)
    x = torch.randn(256, 32, generator=generator)
    y = torch.randn(256, 8, generator=generator)

    def losses() -> list[torch.Tensor]:
        out = model(x)
        return [(out[:, k] - y[:, k]).pow(2).mean() for k in range(8)]

    return model, losses


WORKLOADS = {"pinn": pinn, "multitask8": multitask8}


def weightings(n: int) -> dict[str, Callable[[], LossWeighting]]:
    """Every weighting class with one call per step, built for ``n`` losses with its defaults
    (FAMO is left out: its second call needs the losses re-evaluated after the optimiser
    step, a forward pass the plain sum does not make; benchmarks/balancer_overhead.py times
    its calls)."""
    return {
        "ConstantWeights": lambda: ConstantWeights(n, weights=[1.0 / n] * n),
        "AdaptiveLossBalancer": lambda: AdaptiveLossBalancer(n),
        "DynamicWeightAverage": lambda: DynamicWeightAverage(n),
        "RandomLossWeighting": lambda: RandomLossWeighting(n),
        "GeometricLossStrategy": lambda: GeometricLossStrategy(n),
        "SoftAdapt": lambda: SoftAdapt(n),
        "ReLoBRaLo": lambda: ReLoBRaLo(n),
        "UncertaintyWeighting": lambda: UncertaintyWeighting(n),
        "IMTLL": lambda: IMTLL(n),
    }


def step_candidates(workload: str, seed: int) -> dict[str, Callable[[], Any]]:
    """Zero-argument training steps: the plain sum first, then one per weighting class, and
    the ten lines of uncertainty weighting a user would write inline (the reference for the
    two rules that learn a parameter, whose forward and backward the plain sum does not have).
    A weighting's own parameters are in the optimiser, as its documentation asks."""
    candidates: dict[str, Callable[[], Any]] = {}

    def make(combine_factory: Callable[[], Combine]):
        model, losses = WORKLOADS[workload](seed)
        combine = combine_factory()
        extra = (
            list(combine.__self__.parameters()) if isinstance(combine.__self__, nn.Module) else []
        )
        optimizer = torch.optim.SGD([*model.parameters(), *extra], lr=LEARNING_RATE)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            combine(losses()).backward()
            optimizer.step()

        return step

    n = len(WORKLOADS[workload](seed)[1]())
    candidates["plain sum"] = make(lambda: PlainSum(n).forward)
    # The same step again, on its own copy of the model: how far two identical steps differ
    # in this run (the noise floor any ratio below should be read against).
    candidates["plain sum, again"] = make(lambda: PlainSum(n).forward)
    candidates["inline uncertainty weighting"] = make(lambda: InlineUncertainty(n).forward)
    candidates["inline uncertainty weighting, float64 s"] = make(
        lambda: InlineUncertainty(n, torch.float64).forward
    )
    for name, build in weightings(n).items():
        candidates[name] = make(lambda build=build: build().step)
    return candidates


class PlainSum(nn.Module):
    """The reference: ``sum_i L_i / N`` with fixed weights, as a user writes it."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.fixed = [1.0 / n] * n

    def forward(self, values: list[torch.Tensor]) -> torch.Tensor:
        total = self.fixed[0] * values[0]
        for weight, value in zip(self.fixed[1:], values[1:], strict=True):
            total = total + weight * value
        return total


class InlineUncertainty(nn.Module):
    """Uncertainty weighting as its authors' code writes it (float32 log-variances ``s``):
    ``sum_i exp(-s_i) L_i + s_i``, the total of ``UncertaintyWeighting``'s default. With
    ``dtype=torch.float64``, ``s`` in float64 as the library keeps it: the losses are cast up
    and the total back to their dtype, the two casts the library's total makes too."""

    def __init__(self, n: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(n, dtype=dtype))

    def forward(self, values: list[torch.Tensor]) -> torch.Tensor:
        losses = torch.stack(values)
        s = self.log_vars
        if s.dtype == losses.dtype:
            return (torch.exp(-s) * losses).sum() + s.sum()
        total = (torch.exp(-s) * losses.to(s.dtype)).sum() + s.sum()
        return total.to(losses.dtype)


def call_candidates() -> dict[str, Callable[[], Any]]:
    """The weighting call alone (N = 2, 0-dim losses with a graph) and the inline update."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(64, generator=generator).requires_grad_(True)
    l_adv, l_nat = (theta**2).mean(), theta.abs().mean()
    inline_state: dict[str, Any] = {"w": [0.5, 0.5], "ref": None}

    def inline() -> torch.Tensor:
        # The official MTARD loop: read both losses, Eq. 7-9 on floats, weight the graphs.
        adv, nat = l_adv.item(), l_nat.item()
        if inline_state["ref"] is None:
            inline_state["ref"] = (adv, nat)
        rel_adv, rel_nat = adv / inline_state["ref"][0], nat / inline_state["ref"][1]
        r_adv = rel_adv / (rel_adv + rel_nat)
        w_adv = 0.025 * r_adv + 0.975 * inline_state["w"][0]
        inline_state["w"] = [w_adv, 1.0 - w_adv]
        return w_adv * l_adv + (1.0 - w_adv) * l_nat

    candidates: dict[str, Callable[[], Any]] = {"inline float update": inline}
    for name, build in weightings(2).items():
        weighting = build()
        candidates[name] = lambda w=weighting: w.step([l_adv, l_nat])
    return candidates


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(NAME, __doc__.splitlines()[0])
    parser.set_defaults(repeats=15, warmup=50, threads=1)
    parser.add_argument("--inner", type=int, default=200, help="calls per timed repeat")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    args = parse_args(parser, argv)
    print_machine()
    result: dict[str, Any] = {"step_target": STEP_TARGET, "call_target": CALL_TARGET, "steps": {}}
    for workload in args.workloads:
        timings = time_interleaved(
            step_candidates(workload, args.seed),
            repeats=args.repeats,
            warmup=args.warmup,
            inner=args.inner,
        )
        plain = timings["plain sum"]
        rows = [
            {
                "combine": name,
                "us_per_step": 1e6 * t.median,
                "x plain": ratio(t, plain)["ratio_of_medians"],
                "median paired ratio": ratio(t, plain)["median_of_ratios"],
            }
            for name, t in timings.items()
        ]
        print_table(
            f"{workload}: whole step, median of {args.repeats} repeats x {args.inner} steps "
            f"(target <= {STEP_TARGET}x the plain sum)",
            rows,
        )
        result["steps"][workload] = {
            "timings": {k: t.to_dict() for k, t in timings.items()},
            "rows": rows,
        }
    calls = time_interleaved(
        call_candidates(), repeats=args.repeats, warmup=args.warmup, inner=args.inner
    )
    inline = calls["inline float update"]
    call_rows = [
        {
            "call": name,
            "us_per_call": 1e6 * t.median,
            "x inline": ratio(t, inline)["ratio_of_medians"],
        }
        for name, t in calls.items()
    ]
    print_table(
        f"the call alone (N = 2), median of {args.repeats} repeats x {args.inner} calls "
        f"(target <= {CALL_TARGET}x the inline update)",
        call_rows,
    )
    result["calls"] = {"timings": {k: t.to_dict() for k, t in calls.items()}, "rows": call_rows}
    write_results(args.out, NAME, result, args)
    return result


if __name__ == "__main__":
    main()
