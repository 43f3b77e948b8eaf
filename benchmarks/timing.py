"""The small timing toolkit every benchmark shares: interleaved repeats, medians, ratios, records.

Measurement rules (the same in every benchmark):

- ``torch.set_num_threads`` is left at torch's default (all cores); the count is recorded.
- Every candidate is warmed up first (``warmup`` calls, not timed), then the candidates are
  timed **interleaved**: repeat ``r`` times candidate A, then B, then C, ... so that a burst of
  background load hits all of them alike. Each repeat times ``inner`` back-to-back calls and
  divides by ``inner``.
- A speed figure is always a *ratio* to a reference timed in the same run:
  ``median(candidate) / median(reference)``; the median of the per-repeat ratios is reported too
  (it cancels load that changes between repeats).
- On a GPU the device is synchronised before reading the clock (``torch.cuda.synchronize``).
- Other processes sharing the CPU slow a multi-threaded run far more than their share, so by
  default each round of repeats waits (up to ``--wait-timeout`` seconds) until at least
  ``--wait-idle`` (90%) of the CPU is idle; the idle fractions seen are kept in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RESULTS_DIR",
    "Timing",
    "base_parser",
    "fit_line",
    "idle_fraction",
    "machine_info",
    "parse_args",
    "print_machine",
    "print_table",
    "ratio",
    "time_interleaved",
    "wait_for_idle",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Default folder of the JSON results (ignored by git: ``benchmarks/.gitignore``)."""


@dataclass
class Timing:
    """Seconds per call of one candidate, one sample per repeat."""

    name: str
    samples: list[float] = field(default_factory=list)
    idle: list[float | None] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (max(self.samples) - min(self.samples)) / self.median

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "spread": self.spread,
            "samples_s": list(self.samples),
            "idle_before_round": list(self.idle),
        }


def _synchronize(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies of all CPUs from ``/proc/stat``; None where it does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    values = [float(v) for v in fields[:8]]
    return values[3] + values[4], sum(values)


def idle_fraction(window: float = 0.5) -> float | None:
    """The fraction of CPU time no process used over the next ``window`` seconds."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window)
    second = _cpu_times()
    total = second[1] - first[1]
    return (second[0] - first[0]) / total if total > 0 else None


# Set by ``--wait-idle`` (see :func:`parse_args`): the idle fraction to wait for before each
# round of repeats, and the longest wait.
WAIT_IDLE: dict[str, float] = {"threshold": 0.0, "timeout": 0.0}


def wait_for_idle(threshold: float, timeout: float, window: float = 0.5) -> float | None:
    """Wait (at most ``timeout`` s) until the machine is at least ``threshold`` idle.

    Other processes sharing the CPU slow a multi-threaded run down far more than their share
    (threads wait for each other at every parallel region). Returns the last idle fraction
    seen (None where ``/proc/stat`` is missing).
    """
    deadline = time.monotonic() + timeout
    while True:
        idle = idle_fraction(window)
        if idle is None or idle >= threshold or time.monotonic() >= deadline:
            return idle
        time.sleep(window)


def time_interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    inner: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, Timing]:
    """Time each callable of ``candidates`` (seconds per call), interleaving the repeats.

    Args:
        candidates: name -> zero-argument callable; repeat ``r`` runs them in this order
            rotated by ``r`` (the first one first, then the second one first, ...), so that no
            candidate always runs right after a switch from another one.
        repeats: timed repeats per candidate (the median is taken over them).
        warmup: untimed calls of each candidate before the first repeat.
        inner: calls per repeat (for calls too short to time one at a time).
        device: synchronise this CUDA device around each timed block (no-op on CPU).

    With ``--wait-idle`` (:data:`WAIT_IDLE`), each round of repeats starts once the machine is
    idle enough; the idle fractions seen are kept in :attr:`Timing.idle`.
    """
    if repeats < 1 or warmup < 0 or inner < 1:
        raise ValueError(
            "Parameters `repeats` and `inner` should be >= 1 and `warmup` >= 0. "
            f"Found `repeats = {repeats}`, `warmup = {warmup}`, `inner = {inner}`."
        )
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    _synchronize(device)
    timings = {name: Timing(name) for name in candidates}
    names = list(candidates)
    for r in range(repeats):
        if WAIT_IDLE["threshold"] > 0:
            idle = wait_for_idle(WAIT_IDLE["threshold"], WAIT_IDLE["timeout"])
            for timing in timings.values():
                timing.idle.append(idle)
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            fn = candidates[name]
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            _synchronize(device)
            timings[name].samples.append((time.perf_counter() - start) / inner)
    return timings


def ratio(numerator: Timing, denominator: Timing) -> dict[str, float]:
    """``numerator / denominator``: the ratio of the medians and the median of paired ratios."""
    paired = [a / b for a, b in zip(numerator.samples, denominator.samples, strict=True)]
    return {
        "ratio_of_medians": numerator.median / denominator.median,
        "median_of_ratios": statistics.median(paired),
    }


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line ``y = slope * x + intercept`` and its coefficient of determination R^2."""
    n = len(xs)
    if n < 2 or len(ys) != n:
        raise ValueError(
            f"Parameters `xs` and `ys` should hold the same number (>= 2) of values. "
            f"Found {len(xs)} and {len(ys)}."
        )
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2}


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where and when the figures were measured."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    idle = idle_fraction(0.5)
    info["idle_fraction"] = None if idle is None else round(idle, 3)
    return info


def base_parser(name: str, description: str, *, in_process: bool = True) -> argparse.ArgumentParser:
    """The flags every benchmark takes: ``--repeats``, ``--out``, ``--device``, ``--seed``, the
    idle wait; and, for benchmarks that time calls in this process (``in_process``),
    ``--warmup`` and ``--threads``. A benchmark that times whole subprocesses, which set their
    own threads, passes ``in_process=False`` so that it offers no flag it would ignore."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median taken)")
    if in_process:
        parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / f"{name}.json",
        help="JSON output file",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.9,
        metavar="FRACTION",
        help="before each round of repeats, wait (at most --wait-timeout s) until this fraction "
        "of the CPU is idle; 0 disables",
    )
    parser.add_argument("--wait-timeout", type=float, default=120.0)
    if in_process:
        parser.add_argument(
            "--threads",
            type=int,
            default=None,
            help="torch.set_num_threads (default: leave torch's default, all cores)",
        )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the flags and apply ``--threads`` (only when given)."""
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            parser.error(f"--threads should be >= 1, found {args.threads}")
        torch.set_num_threads(args.threads)
    WAIT_IDLE["threshold"] = max(0.0, min(1.0, args.wait_idle))
    WAIT_IDLE["timeout"] = max(0.0, args.wait_timeout)
    return args


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def print_table(title: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """Print ``rows`` (dicts sharing their keys) as an aligned plain-text table; return it."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    print(flush=True)
    return text


def write_results(path: Path, name: str, payload: Mapping[str, Any], args: Any) -> None:
    """Write ``payload`` with the machine record and the command's arguments as JSON."""
    record = {
        "benchmark": name,
        "machine": machine_info(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **payload,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    print(f"results written to {path}", flush=True)


def print_machine() -> dict[str, Any]:
    """Print the machine record at the top of a benchmark's output; return it."""
    info = machine_info()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), {info['platform']}, {info['date']}, "
        f"load {info.get('load_average_1m')}, idle {info.get('idle_fraction')}",
        flush=True,
    )
    return info
