"""How much wall time does ``anl-mtard reproduce --jobs N`` save on a whole pipeline?

Each configuration ``JxT`` (``J`` worker processes of ``T`` torch threads each;
``1xT`` is the sequential pipeline) runs the same profile end to end into a fresh temporary
directory, through :func:`~anl.integrations.mtard.pipeline.reproduce.reproduce` without figures or
progress bars. With ``--repeats R`` the configurations run ``R`` rounds, the order rotated
each round so that no configuration always runs first. Before each run the benchmark waits
for an idle CPU (``--wait-idle``), because one run here is minutes of both cores.

Reported per configuration:

- ``wall_s``: the median wall time of its runs, and ``x ref``: that time over the reference's
  (the first configuration of ``--configs``) median in the same invocation;
- ``busy``: the stages' summed wall time over ``wall time x J``, the share of the workers'
  time spent in stages (1 for a perfect schedule; the task graph's critical path, e.g. the
  adversarial teacher that every distillation waits for, keeps it lower);
- ``tables equal``: whether its tables (``white_box.md``, ``black_box.md``, ``ablation.md``,
  ``teachers.md``) are byte-identical to the reference's. They should be wherever ``T``
  matches the reference's threads (:func:`reproduce` promises it); a different thread count
  may change float rounding, so there it is reported, not demanded.

Run: ``python -m benchmarks.reproduce_jobs [--profile default] [--configs 1x1 2x1]``
(the ``if __name__ == "__main__"`` guard below is needed: the workers are spawned).
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from anl.integrations.mtard.pipeline.profile import Profile
from anl.integrations.mtard.pipeline.reproduce import reproduce
from benchmarks.timing import (
    WAIT_IDLE,
    base_parser,
    parse_args,
    print_machine,
    print_table,
    wait_for_idle,
    write_results,
)

NAME = "reproduce_jobs"
TABLES = ("white_box.md", "black_box.md", "ablation.md", "teachers.md")


def parse_config(text: str) -> tuple[int, int]:
    """``"2x1"`` -> ``(jobs=2, threads=1)``; a clear error for anything else."""
    match = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"a configuration is JOBSxTHREADS with both >= 1 (e.g. 2x1), found {text!r}"
        )
    return int(match.group(1)), int(match.group(2))


def run_once(profile: Profile, jobs: int, threads: int, out: Path) -> dict[str, Any]:
    """One end-to-end ``reproduce`` into ``out``: wall time, stage time, tables."""
    start = time.perf_counter()
    results = reproduce(
        profile,
        out,
        plots=False,
        progress=False,
        command=f"python -m benchmarks.{NAME} ({jobs}x{threads})",
        threads=threads,
        jobs=jobs,
    )
    wall = time.perf_counter() - start
    stage_s = sum(row["wall_s"] for row in results["stages"] if row["stage"] != "data")
    return {
        "wall_s": wall,
        "stage_s": stage_s,
        "busy": stage_s / (wall * jobs),
        "tables": {name: (out / name).read_text() for name in TABLES},
    }


def measure(
    profile: Profile, configs: list[tuple[int, int]], *, repeats: int, scratch: Path
) -> list[dict[str, Any]]:
    """Run every configuration ``repeats`` times, rotating the order each round."""
    samples: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configs}
    counter = itertools.count()
    for round_ in range(repeats):
        order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
        for jobs, threads in order:
            idle = None
            if WAIT_IDLE["threshold"] > 0:
                idle = wait_for_idle(WAIT_IDLE["threshold"], WAIT_IDLE["timeout"])
            run = run_once(profile, jobs, threads, scratch / f"run{next(counter)}")
            run["idle_before"] = idle
            samples[(jobs, threads)].append(run)
            print(f"  {jobs}x{threads}: {run['wall_s']:.1f} s (idle before: {idle})", flush=True)
    reference = samples[configs[0]]
    reference_wall = statistics.median(r["wall_s"] for r in reference)
    rows = []
    for (jobs, threads), runs in samples.items():
        wall = statistics.median(r["wall_s"] for r in runs)
        rows.append(
            {
                "config": f"{jobs}x{threads}",
                "jobs": jobs,
                "threads": threads,
                "wall_s": wall,
                "x ref": wall / reference_wall,
                "busy": statistics.median(r["busy"] for r in runs),
                "tables equal": all(r["tables"] == reference[0]["tables"] for r in runs),
                "_samples": [{k: v for k, v in r.items() if k != "tables"} for r in runs],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = base_parser(NAME, __doc__.splitlines()[0], in_process=False)
    parser.set_defaults(repeats=1, wait_timeout=600.0)
    parser.add_argument(
        "--profile", default="default", help="a packaged profile name or a JSON file path"
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        type=parse_config,
        default=[(1, 1), (2, 1)],
        metavar="JOBSxTHREADS",
        help="configurations to compare; the first is the reference (default: 1x1 2x1)",
    )
    args = parse_args(parser, argv)
    if len(set(args.configs)) != len(args.configs):
        parser.error(f"--configs repeats a configuration: {args.configs}")
    profile = Profile.load(args.profile).with_overrides(device=args.device)
    print_machine()
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as scratch:
        rows = measure(profile, args.configs, repeats=args.repeats, scratch=Path(scratch))
    print_table(
        f"{NAME}: profile {profile.name!r}, median of {args.repeats} run(s) per "
        f"configuration (JOBSxTHREADS; reference {rows[0]['config']})",
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
    )
    write_results(args.out, NAME, {"profile": profile.name, "rows": rows}, args)
    return rows


if __name__ == "__main__":
    main()
