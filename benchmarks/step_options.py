"""Which speed options win on this machine? BatchNorm folding, channels_last, bf16, compile.

Our MTARD step (:mod:`benchmarks.workloads`) in several variants, timed interleaved against
the training loop's default on this device (``TrainConfig`` defaults: teachers frozen and
BatchNorm-folded by ``loop.prepare_teacher``, ``memory_format="auto"``, which is
channels-last on CPU, no autocast, eager mode). Each variant changes one thing:

- ``no_fold``: the teachers keep their BatchNorm layers (``fold_bn=False``);
- ``unfolded_attack``: the attack runs on the student itself instead of its
  BatchNorm-folded view (``fold_attack_bn=False``);
- ``contiguous`` / ``channels_last``: the other memory format than the default's;
- ``bf16``: the method under ``torch.autocast(dtype=torch.bfloat16)`` (``amp=True``);
- ``compile`` (``--compile``): the student wrapped by :func:`torch.compile` (default backend);
  its one-off compilation time is reported separately (the first steps, not timed).

A ratio ``variant / default`` below 1 means the variant is faster. A separate line compares one
pair of teacher forwards under :func:`torch.no_grad` (what the step uses: the logits enter
autograd later as constants) and :func:`torch.inference_mode` (which would be illegal there).

Run: ``python -m benchmarks.step_options [--workload ...] [--compile]``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.timing import (
    base_parser,
    parse_args,
    print_machine,
    print_table,
    ratio,
    time_interleaved,
    write_results,
)
from benchmarks.workloads import add_workload_arguments, build_workload

NAME = "step_options"


def _teacher_modes(w) -> dict[str, Any]:
    x = w.x_ours

    def no_grad() -> None:
        with torch.no_grad():
            w.prepared_clean(x)
            w.prepared_adv(x)

    def inference() -> None:
        with torch.inference_mode():
            w.prepared_clean(x)
            w.prepared_adv(x)

    return {"teachers_no_grad": no_grad, "teachers_inference_mode": inference}


def measure(name: str, args: Any) -> dict[str, Any]:
    common = {
        "batch_size": args.batch_size,
        "attack_steps": args.attack_steps,
        "device": args.device,
        "seed": args.seed,
    }
    default = build_workload(name, **common)
    other_format = "contiguous" if default.memory_format == torch.channels_last else "channels_last"
    variants = {
        "default": default.our_step(),
        "no_fold": build_workload(name, fold_bn=False, **common).our_step(),
        "unfolded_attack": build_workload(name, fold_attack_bn=False, **common).our_step(),
        other_format: build_workload(name, memory_format=other_format, **common).our_step(),
        "bf16": default.our_step(autocast=torch.bfloat16),
    }
    compile_s = None
    if args.compile:
        step = default.our_step(student=torch.compile(default.our_student()))
        start = time.perf_counter()
        try:
            for _ in range(3):  # train and eval graphs, then one settled step
                step()
            compile_s = time.perf_counter() - start
            variants["compile"] = step
        except Exception as exc:  # report, do not hide: the table says it failed
            compile_s = f"failed: {type(exc).__name__}: {exc}"[:300]
    variants.update(_teacher_modes(default))
    timings = time_interleaved(
        variants, repeats=args.repeats, warmup=args.warmup, device=args.device
    )
    rows = []
    for key in variants:
        if key.startswith("teachers_"):
            continue
        r = ratio(timings[key], timings["default"])
        rows.append(
            {
                "workload": name,
                "variant": key,
                "step_ms": 1e3 * timings[key].median,
                "x default": r["ratio_of_medians"],
                "x default (paired)": r["median_of_ratios"],
            }
        )
    r = ratio(timings["teachers_inference_mode"], timings["teachers_no_grad"])
    rows.append(
        {
            "workload": name,
            "variant": "teachers: inference_mode vs no_grad",
            "step_ms": 1e3 * timings["teachers_inference_mode"].median,
            "x default": r["ratio_of_medians"],
            "x default (paired)": r["median_of_ratios"],
        }
    )
    return {
        "workload": default.info,
        "timings": {k: t.to_dict() for k, t in timings.items()},
        "compile_time_s": compile_s,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(NAME, __doc__.splitlines()[0])
    parser.set_defaults(repeats=5)
    add_workload_arguments(parser, default=["fmnist"])
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile(student) (slow to build)"
    )
    args = parse_args(parser, argv)
    print_machine()
    results = {name: measure(name, args) for name in args.workload}
    rows = [row for r in results.values() for row in r["rows"]]
    print_table(
        f"{NAME}: variants of our MTARD step vs the loop's default on {args.device} "
        f"(median of {args.repeats} interleaved repeats; < 1 is faster)",
        rows,
    )
    for name, r in results.items():
        if r["compile_time_s"] is not None:
            value = r["compile_time_s"]
            text = f"{value:.1f} s" if isinstance(value, float) else value
            print(f"{name}: torch.compile warm-up (first 3 steps): {text}", flush=True)
    write_results(args.out, NAME, {"results": results}, args)
    return results


if __name__ == "__main__":
    main()
