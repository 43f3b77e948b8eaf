"""Benchmarks of the ANL core and of the MTARD training step; one module per question.

Run any of them as ``python -m benchmarks.<name>``; each prints a table and writes JSON to
``--out`` (default ``benchmarks/results/<name>.json``, ignored by git). Every speed figure is a
ratio measured in the same run against a reference, over interleaved repeats (median); the
absolute timings are printed alongside for context only. See ``docs/benchmarks.md``.

=====================  ============================================================================
balancer_overhead      every weighting class's call vs a bare weighted sum; share of an MTARD step
small_step             each weighting class on a small (PINN-like, 8-task) step vs a plain sum
step_vs_floor          one MTARD step vs the sum of the passes it cannot avoid, each timed alone
step_vs_reference      our MTARD step vs a loop written as the official code (:mod:`.reference_mtard`)
step_options           BatchNorm folding, channels_last and ``torch.compile`` on or off
attack_throughput      images/s of PGD-20 and CW-inf, vs an official-style attack loop
scaling                step time vs batch size and vs attack steps (linear fits)
gpu_checks             sync-free step and CIFAR-10 epoch time on a GPU (prints a message without one)
=====================  ============================================================================
"""
