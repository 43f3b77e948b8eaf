"""Mutation testing of anl: run mutmut on the modules in scope, then score them.

    python tests/mutation/run.py                      # every module in scope (hours on 2 cores)
    python tests/mutation/run.py anl.distributed      # some modules (or groups: core, mtard)
    python tests/mutation/run.py --changed            # the modules changed since origin/main
    python tests/mutation/run.py --report             # score the last runs, run nothing
    python tests/mutation/run.py --rerun-survivors    # re-test the survivors (after new tests)

mutmut's settings (the files in scope, the tests it runs) are in pyproject.toml
``[tool.mutmut]``; its working copy is ``mutants/`` (not committed). A mutant that survives
is either *equivalent* (no test can tell it from the original: the reason is recorded in
``tests/mutation/equivalent.py``) or a gap in the tests. The report gives, per module,
``killed / total / equivalent / CPU only`` and the score
``killed / (total - equivalent - CPU only)`` (a *CPU only* mutant is one only a CUDA device
tells apart: its reason starts with "CPU only:"), and lists the survivors that no reason covers; it exits with 1 when one is left or a score is under the
threshold (95 %). See docs/testing.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 95.0
GROUPS = {
    "core": "anl.[!.]*[!.]",  # anl's own modules (fnmatch: no dot after "anl.")
    "rules": "anl.rules.*",
    "testing": "anl.testing.*",
    "mtard": "anl.integrations.mtard.*",
}
# A reason starting so marks a mutant that only a CUDA device tells apart (a `device=`
# argument dropped, a copy to the host removed): equivalent on the CPU this is measured on,
# not in general; counted apart from the equivalent ones, and named so in the report.
CPU_ONLY = "CPU only:"
KILLED = {1, 3, 24, -24, 36, 152, 255}  # a failing test, or a timeout (an endless loop)
SURVIVED = {0}
NO_TESTS = {5, 33}


def modules_in_scope() -> dict[str, Path]:
    """``{module: path}`` of the files pyproject.toml's ``only_mutate`` selects."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    paths = sorted(
        path.relative_to(ROOT)
        for path in (ROOT / "anl").rglob("*.py")
        if any(fnmatch.fnmatch(str(path.relative_to(ROOT)), p) for p in config["only_mutate"])
        and path.name != "__init__.py"
    )
    return {str(p.with_suffix("")).replace(os.sep, "."): p for p in paths}


def select(names: list[str], scope: dict[str, Path]) -> list[str]:
    chosen: list[str] = []
    for name in names:
        pattern = GROUPS.get(name, name)
        found = [
            m
            for m in scope
            if m == name or (fnmatch.fnmatch(m, pattern) and (name != "core" or m.count(".") == 1))
        ]
        if not found:
            sys.exit(f"{name!r} is not a module in scope: {sorted(scope)}")
        chosen += [m for m in found if m not in chosen]
    return chosen


def changed_modules(scope: dict[str, Path], base: str) -> list[str]:
    out = subprocess.run(
        ["git", "diff", "--name-only", base, "--", "anl"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return [m for m, p in scope.items() if str(p) in out]


def run_mutmut(patterns: list[str], children: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # mutmut puts mutants/ first; the checkout must not shadow it
    command = ["mutmut", "run", "--max-children", str(children), *patterns]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, env=env, check=False)


# ------------------------------------------------------------------------------ the report
def results(path: Path) -> dict[str, int | None]:
    meta = ROOT / "mutants" / f"{path}.meta"
    if not meta.exists():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def function_of(mutant: str) -> str:
    """``anl.m.x_f__mutmut_3`` -> ``anl.m.f``; ``anl.m.xǁCǁf__mutmut_3`` -> ``anl.m.C.f``."""
    module, _, name = mutant.rpartition(".")
    name = name.rsplit("__mutmut_", 1)[0]
    if name.startswith("xǁ"):
        name = name[2:].replace("ǁ", ".")
    elif name.startswith("x_"):
        name = name[2:]
    return f"{module}.{name}"


def diff_of(mutant: str, path: Path) -> tuple[list[str], list[str]]:
    """The original and the mutated lines of a mutant (stripped)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        diff = get_diff_for_mutant(mutant, path=path)
    finally:
        os.chdir(cwd)
    lines = diff.splitlines()[2:]
    before = [line[1:].strip() for line in lines if line.startswith("-")]
    after = [line[1:].strip() for line in lines if line.startswith("+")]
    return before, after


def reason_for(mutant: str, before: list[str], after: list[str]) -> str | None:
    sys.path.insert(0, str(Path(__file__).parent))
    import equivalent

    for pattern, reason in equivalent.GENERIC:
        if pattern(before, after):
            return reason
    specific = equivalent.EQUIVALENT.get(function_of(mutant), {})
    return specific.get(" / ".join(after)) or specific.get(" / ".join(before) + " -> ")


def report(modules: list[str], scope: dict[str, Path], markdown: Path | None) -> int:
    rows, unexplained, explained = [], [], []
    totals = Counter()
    for module in modules:
        codes = results(scope[module])
        if not codes:
            continue
        counts = Counter()
        for mutant, code in sorted(codes.items(), key=lambda kv: _natural(kv[0])):
            if code in KILLED:
                counts["killed"] += 1
                continue
            if code is None:
                counts["unchecked"] += 1
                continue
            before, after = diff_of(mutant, scope[module])
            why = reason_for(mutant, before, after)
            status = (
                "no tests" if code in NO_TESTS else "survived" if code in SURVIVED else str(code)
            )
            entry = (module, mutant, status, before, after, why)
            if why is None:
                counts["gap"] += 1
                unexplained.append(entry)
            elif why.startswith(CPU_ONLY):
                counts["cpu_only"] += 1
                explained.append(entry)
            else:
                counts["equivalent"] += 1
                explained.append(entry)
        counts["total"] = len(codes)
        totals.update(counts)
        rows.append((module, counts))
    print(
        f"\n{'module':48} {'killed':>7} {'total':>6} {'equiv':>6} {'cpu':>4} {'gaps':>5} "
        f"{'score':>7}"
    )
    failed = False
    for module, c in [*rows, ("all", totals)]:
        score = _score(c)
        failed |= module != "all" and (score < THRESHOLD or c["unchecked"] > 0)
        print(
            f"{module:48} {c['killed']:7} {c['total']:6} {c['equivalent']:6} {c['cpu_only']:4} "
            f"{c['gap']:5} "
            f"{score:6.1f}%" + (f"  ({c['unchecked']} not run)" if c["unchecked"] else "")
        )
    for _, mutant, status, before, after, _ in unexplained:
        print(f"\n{status.upper()}: {mutant}\n  - {' / '.join(before)}\n  + {' / '.join(after)}")
    if markdown is not None:
        markdown.write_text(_markdown(rows, totals, explained))
        print(f"\nwrote {markdown}")
    return 1 if failed or unexplained else 0


def _score(c: Counter) -> float:
    tested = c["total"] - c["equivalent"] - c["cpu_only"]
    return 100.0 * c["killed"] / tested if tested else 100.0


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def _markdown(rows, totals, explained) -> str:
    lines = [
        "| module | killed | total | equivalent | CPU only | score |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for module, c in [*rows, ("all", totals)]:
        name = "**all**" if module == "all" else f"`{module}`"
        lines.append(
            f"| {name} | {c['killed']} | {c['total']} | {c['equivalent']} | {c['cpu_only']} "
            f"| {_score(c):.1f} % |"
        )
    lines += ["", "| mutant | change | why it is equivalent |", "| --- | --- | --- |"]
    for _, mutant, _, before, after, why in explained:
        change = f"`{' / '.join(before)}` → `{' / '.join(after)}`".replace("|", "\\|")
        lines.append(f"| `{mutant}` | {change} | {why} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules or groups (core, mtard); all if none")
    parser.add_argument("--changed", nargs="?", const="origin/main", metavar="BASE")
    parser.add_argument("--report", action="store_true", help="score the last runs only")
    parser.add_argument("--rerun-survivors", action="store_true")
    parser.add_argument("--children", type=int, default=1, help="parallel mutants (default 1)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    args = parser.parse_args()

    scope = modules_in_scope()
    if args.changed:
        modules = changed_modules(scope, args.changed)
        if not modules:
            print(f"No module in scope changed since {args.changed}.")
            return 0
    else:
        modules = select(args.modules, scope) if args.modules else list(scope)
    if args.rerun_survivors:
        survivors = [
            mutant
            for module in modules
            for mutant, code in results(scope[module]).items()
            if code is not None and code not in KILLED
        ]
        if survivors:
            run_mutmut(survivors, args.children)
    elif not args.report:
        run_mutmut([f"{module}.*" for module in modules], args.children)
    return report(modules, scope, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
