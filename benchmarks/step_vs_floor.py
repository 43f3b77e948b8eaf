"""Is an MTARD step at its compute floor? One step vs the passes it cannot avoid, each timed alone.

The floor of one MTARD step (paper Algorithm 1, official code) is the sum of

- ``attack_steps`` x one attack pass: a student forward in eval mode plus the gradient of the
  summed cross-entropy with respect to the *input only* (on the student's BatchNorm-folded
  view when the workload folds, as the training loop does by default: in eval mode BatchNorm
  is an affine map that the convolutions absorb, so its passes are not part of the floor);
- the two teacher forwards (clean teacher on ``x``, adversarial teacher on ``x_adv``), no graph;
- the student's two training forwards (``x_adv`` then ``x``, train mode), the two KL losses and
  one backward pass to the parameters;
- one optimiser step (SGD with momentum and weight decay).

Each piece is timed alone on the same batch, interleaved with the whole step, and the ratio
``step / floor`` is reported (target: <= 1.10 on CPU). The remainder is what the step spends
outside those passes: sign steps and projections of the attack, the balancer, mode switches,
Python overhead.

Run: ``python -m benchmarks.step_vs_floor [--workload fmnist|cifar_resnet18] [--repeats N]``.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
import torch.nn.functional as F

from anl.integrations.mtard.methods.losses import kl_official
from anl.integrations.mtard.models.folding import FoldedEvalView
from benchmarks.timing import (
    base_parser,
    parse_args,
    print_machine,
    print_table,
    ratio,
    time_interleaved,
    write_results,
)
from benchmarks.workloads import (
    Workload,
    add_workload_arguments,
    make_optimizer,
    workloads_from_args,
)

NAME = "step_vs_floor"


def floor_passes(w: Workload) -> dict[str, Any]:
    """Zero-argument callables for each unavoidable pass, on a private copy of the student."""
    student = w.our_student()
    optimizer = make_optimizer(student)
    x, y = w.x_ours, w.y
    with torch.no_grad():
        x_adv = (x + w.eps * torch.randn_like(x).sign()).clamp(0, 1)
        t_nat = w.prepared_clean(x)
        t_adv = w.prepared_adv(x_adv)

    attacked = FoldedEvalView(student)(x) if w.fold_attack_bn else student

    def attack_pass() -> None:
        attacked.eval()
        with torch.enable_grad():
            xa = x_adv.detach().requires_grad_(True)
            loss = F.cross_entropy(attacked(xa), y, reduction="sum")
            torch.autograd.grad(loss, [xa])

    def teacher_forwards() -> None:
        with torch.no_grad():
            w.prepared_clean(x)
            w.prepared_adv(x_adv)

    def training_passes() -> None:
        student.train()
        loss = kl_official(student(x_adv), t_adv) + kl_official(student(x), t_nat)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    training_passes()  # gradients exist for the optimiser step

    def optimizer_step() -> None:
        optimizer.step()

    return {
        "attack_pass": attack_pass,
        "teacher_forwards": teacher_forwards,
        "training_passes": training_passes,
        "optimizer_step": optimizer_step,
    }


def measure(w: Workload, *, repeats: int, warmup: int) -> dict[str, Any]:
    """Time the whole step and each floor pass (interleaved); return the breakdown and ratio."""
    candidates = {"step": w.our_step(), **floor_passes(w)}
    timings = time_interleaved(candidates, repeats=repeats, warmup=warmup, device=w.x.device)
    counts = {
        "attack_pass": w.attack_steps,
        "teacher_forwards": 1,
        "training_passes": 1,
        "optimizer_step": 1,
    }
    floor = sum(timings[k].median * n for k, n in counts.items())
    # Paired per repeat, so that load shared by a repeat cancels.
    paired = [
        timings["step"].samples[r] / sum(timings[k].samples[r] * n for k, n in counts.items())
        for r in range(repeats)
    ]
    step = timings["step"].median
    rows = [
        {
            "pass": k,
            "count": n,
            "median_ms": 1e3 * timings[k].median,
            "x count ms": 1e3 * timings[k].median * n,
            "share of step": timings[k].median * n / step,
        }
        for k, n in counts.items()
    ]
    rows.append(
        {
            "pass": "floor (sum)",
            "count": "",
            "median_ms": "",
            "x count ms": 1e3 * floor,
            "share of step": floor / step,
        }
    )
    rows.append(
        {
            "pass": "MTARD step",
            "count": 1,
            "median_ms": 1e3 * step,
            "x count ms": 1e3 * step,
            "share of step": 1.0,
        }
    )
    return {
        "workload": w.info,
        "timings": {k: t.to_dict() for k, t in timings.items()},
        "counts": counts,
        "floor_s": floor,
        "step_s": step,
        "step_over_floor": step / floor,
        "step_over_floor_median_of_ratios": statistics.median(paired),
        "step_over_attack_pass": ratio(timings["step"], timings["attack_pass"]),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(NAME, __doc__.splitlines()[0])
    add_workload_arguments(parser, default=["fmnist", "cifar_resnet18"])
    args = parse_args(parser, argv)
    print_machine()
    results = {}
    for name, w in workloads_from_args(args):
        result = measure(w, repeats=args.repeats, warmup=args.warmup)
        info = w.info
        print_table(
            f"{NAME}: {name} ({info['student']} student, teachers {info['clean_teacher']} / "
            f"{info['adv_teacher']}, input {info['input']}, {info['attack_steps']} attack steps, "
            f"median of {args.repeats} interleaved repeats)",
            result["rows"],
        )
        print(
            f"step / floor = {result['step_over_floor']:.3f} (median of paired ratios "
            f"{result['step_over_floor_median_of_ratios']:.3f}; target <= 1.10)\n",
            flush=True,
        )
        results[name] = result
    write_results(args.out, NAME, {"results": results}, args)
    return results


if __name__ == "__main__":
    main()
