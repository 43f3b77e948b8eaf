"""GPU checks of the MTARD step: no host-device synchronisation, and CIFAR-10 epoch time.

Needs CUDA; without it the script prints a message saying so and exits with status 0 (no GPU
numbers are recorded). On a GPU it runs the paper's CIFAR-10 setting, ResNet-18 student,
ResNet-56 clean teacher, WRN-34-10 adversarial teacher, batch 128, PGD-10 (random weights and
images: the cost does not depend on them):

1. **Sync-free step**: after warm-up steps, one whole step (attack, teachers, training passes,
   balancer, optimiser, the loop's device-side log row) runs under
   ``torch.cuda.set_sync_debug_mode("error")``, which raises on any operation that
   synchronises the host with the device (``.item()``, ``.cpu()``, ``nonzero``, ...).
2. **Epoch time**: step time (median of repeats, interleaved) of our step in float32, under
   bf16 autocast, and with ``torch.compile(student)``, and of the official-style reference
   step (:mod:`benchmarks.reference_mtard`), extrapolated to one CIFAR-10 epoch (50,000 images
   = 391 steps of 128), with each variant's speed-up over the reference.

Run: ``python -m benchmarks.gpu_checks [--batch-size 128] [--repeats 5] [--no-compile]``.
"""

from __future__ import annotations

import math
import sys
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
from benchmarks.workloads import build_workload

NAME = "gpu_checks"
CIFAR10_TRAIN = 50_000


def sync_free_step(w: Any, warmup: int) -> dict[str, Any]:
    """Run one step under ``set_sync_debug_mode("error")``; report whether anything synced."""
    step = w.our_step()
    for _ in range(max(warmup, 2)):  # the balancer's first steps move its state to the device
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        ok, message = True, "no host-device synchronisation in a whole MTARD step"
    except RuntimeError as exc:
        ok, message = False, f"synchronisation found: {exc}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return {"sync_free": ok, "message": message}


def epoch_times(w: Any, args: Any) -> dict[str, Any]:
    candidates = {
        "reference": w.reference_step(),
        "ours_fp32": w.our_step(),
        "ours_bf16": w.our_step(autocast=torch.bfloat16),
    }
    compile_s = None
    if args.compile:
        compiled_step = w.our_step(student=torch.compile(w.our_student()))
        start = time.perf_counter()
        for _ in range(3):
            compiled_step()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        candidates["ours_fp32_compiled"] = compiled_step
    timings = time_interleaved(
        candidates, repeats=args.repeats, warmup=args.warmup, device=w.x.device
    )
    steps = math.ceil(CIFAR10_TRAIN / w.info["batch_size"])
    rows = []
    for name, t in timings.items():
        rows.append(
            {
                "variant": name,
                "step_ms": 1e3 * t.median,
                "epoch_s (extrapolated)": t.median * steps,
                "img/s": w.info["batch_size"] / t.median,
                "speed-up vs reference": ratio(timings["reference"], t)["ratio_of_medians"],
            }
        )
    return {
        "steps_per_epoch": steps,
        "compile_time_s": compile_s,
        "timings": {k: t.to_dict() for k, t in timings.items()},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(NAME, __doc__.splitlines()[0])
    parser.set_defaults(device="cuda", repeats=5, warmup=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--adv-teacher", default="wrn34_10")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parse_args(parser, argv)
    if not torch.cuda.is_available():
        print(
            "CUDA is not available on this machine: the GPU checks (sync-free step under "
            "torch.cuda.set_sync_debug_mode('error'), CIFAR-10 epoch time with ResNet-18 + "
            "WRN-34-10) did not run, and no GPU numbers were recorded.",
            flush=True,
        )
        return 0
    print_machine()
    torch.backends.cudnn.benchmark = True
    w = build_workload(
        "cifar_resnet18",
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        adv_teacher=args.adv_teacher,
    )
    sync = sync_free_step(w, args.warmup)
    print(f"sync check: {sync['message']}", flush=True)
    epochs = epoch_times(w, args)
    print_table(
        f"{NAME}: CIFAR-10 MTARD epoch ({epochs['steps_per_epoch']} steps of "
        f"{args.batch_size}; {w.info['student']} student, {w.info['clean_teacher']} / "
        f"{w.info['adv_teacher']} teachers; median of {args.repeats} interleaved repeats)",
        epochs["rows"],
    )
    if epochs["compile_time_s"] is not None:
        print(f"torch.compile warm-up (first 3 steps): {epochs['compile_time_s']:.1f} s")
    write_results(args.out, NAME, {"workload": w.info, "sync": sync, "epoch": epochs}, args)
    return 0 if sync["sync_free"] else 1


if __name__ == "__main__":
    sys.exit(main())
