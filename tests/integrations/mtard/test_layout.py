"""The layout of ``anl.integrations.mtard`` (``docs/architecture.md``), checked on the source.

- each package imports only from the packages below it (its layer) and from itself;
- no private name (``_x``) is imported from another module, by the package, the tests or the
  benchmarks;
- only package ``__init__`` files list names defined elsewhere in ``__all__``;
- library modules do not import :mod:`argparse` (the command line is the :mod:`~.cli` package's) nor an
  optional dependency at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[3]
PACKAGE = ROOT / "anl" / "integrations" / "mtard"
PREFIX = "anl.integrations.mtard"

#: Each part of the package and the layer it sits in: a part imports from lower layers only
#: (and from itself). Parts in one layer do not import each other.
LAYERS = {
    "checks": 0,
    "runtime": 1,
    "data": 2,
    "models": 3,
    "attacks": 4,
    "methods": 5,
    "evaluation": 6,
    "tables": 7,
    "plots": 7,
    "training": 8,
    "pipeline": 9,
    "cli": 10,
    "__main__": 11,
    "__init__": 11,
}
OPTIONAL = ("tqdm", "matplotlib", "pyautoattack", "tensorboard")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out.append((".".join([PREFIX, *parts]), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` of every import, resolved."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found += [(base, alias.name, node.lineno) for alias in node.names]
    return found


def _part(module: str) -> str:
    rest = module.removeprefix(PREFIX).lstrip(".")
    return rest.split(".")[0] if rest else "__init__"


MODULES = _modules()
NAMES = {name for name, _ in MODULES}


def test_each_package_imports_only_from_below():
    wrong = []
    for module, path in MODULES:
        part = _part(module)
        for target, name, line in _imports(module, path):
            full = f"{target}.{name}" if name and f"{target}.{name}" in NAMES else target
            if not full.startswith(PREFIX):
                continue
            other = _part(full)
            if other != part and LAYERS[other] >= LAYERS[part]:
                wrong.append(f"{module}:{line} ({part}) imports {full} ({other})")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_argparse_or_optional_dependency_is_imported():
    wrong = []
    for module, path in MODULES:
        for target, name, line in _imports(module, path):
            if target.startswith(PREFIX) and name is not None and name.startswith("_"):
                wrong.append(f"{module}:{line} imports {target}.{name}")
            if target == "argparse" and _part(module) != "cli":
                wrong.append(f"{module}:{line} imports argparse")
        for node in ast.parse(path.read_text()).body:  # optional packages: where used only
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names.append(getattr(node, "module", None) or "")
                if any(n.split(".")[0] in OPTIONAL for n in names):
                    wrong.append(f"{module}:{node.lineno} imports an optional package")
    assert not wrong, "\n".join(wrong)


def test_all_lists_only_names_the_module_defines():
    wrong = []
    for module, path in MODULES:
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        defined = {
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        }
        defined |= {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign | ast.AnnAssign)
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Name)
        }
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                listed = {e.value for e in node.value.elts}  # type: ignore[attr-defined]
                if not listed <= defined:
                    wrong.append(f"{module}: __all__ lists {sorted(listed - defined)}")
    assert not wrong, "\n".join(wrong)


def test_tests_and_benchmarks_import_public_names_from_their_modules():
    wrong = []
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]):
        for target, name, line in _imports(path.stem, path):
            if not target.startswith(PREFIX) or name is None:
                continue
            if name.startswith("_"):
                wrong.append(f"{path.name}:{line} imports {target}.{name}")
            elif f"{target}.{name}" not in NAMES and target not in NAMES:
                wrong.append(f"{path.name}:{line}: {target} is not a module")
    assert not wrong, "\n".join(wrong)
