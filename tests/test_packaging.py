"""The distribution as it would be uploaded: built, checked, and installed with core deps only.

One sdist and one wheel are built per run with ``python -m build`` (the wheel from the sdist,
so a file the sdist lacks breaks the wheel too), then:

- ``twine check --strict`` passes on both;
- the metadata is what the index accepts: a free name, PEP 639 licence fields, only real
  trove classifiers (checked against the ``trove-classifiers`` package), no licence
  classifier next to the licence expression, the Python versions of ``Requires-Python``;
- the dependencies: core is torch + numpy; the extras are those of the README and the docs;
- the sdist is a complete source tree (tests, benchmarks, docs, licence), the wheel only
  ``anl`` with its data (``py.typed``, the profiles);
- the wheel installs into a fresh virtual environment without system site packages, with
  the CPU torch wheel and numpy only, and ``anl`` works there.

These need the ``dev`` extra (build, twine, trove-classifiers) and reach the package index
(build isolation, numpy for the fresh environment); CI installs ``.[all,dev]``.
"""

from __future__ import annotations

import email.parser
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import trove_classifiers
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = "adaptive-normalization-loss"
# The torch that pip takes from this machine's disk (the CPU build); the README pins the same.
TORCH_PIN = "torch==2.13.0"
USER_EXTRAS = {"testing", "mtard", "autoattack", "tensorboard"}
# The framework integrations: one extra per framework, not in `all`, all in `dev` (CI).
FRAMEWORK_EXTRAS = {
    "lightning": {"pytorch-lightning"},
    "transformers": {"transformers", "accelerate"},
    "accelerate": {"accelerate"},
}
DEV_TOOLS = {"pytest", "ruff", "build", "twine", "trove-classifiers", "mutmut"}
DOCS_TOOLS = {"mkdocs", "mkdocs-material", "mkdocstrings-python"}

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path = ROOT, timeout: float = 900) -> str:
    """Runs a command; on failure the assertion shows its whole output."""
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_environment(),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path | str]:
    out = tmp_path_factory.mktemp("dist")
    log = _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel, "log": log}


@pytest.fixture(scope="module")
def metadata(dist):
    with zipfile.ZipFile(dist["wheel"]) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(whl.read(name).decode())


@pytest.fixture(scope="module")
def requirements(metadata) -> dict[str | None, set[str]]:
    """``{extra or None: {canonical package names}}`` from the wheel's Requires-Dist."""
    by_extra: dict[str | None, set[str]] = {None: set()}
    for extra in metadata.get_all("Provides-Extra") or []:
        by_extra[extra] = {
            canonicalize_name(r.name)
            for r in map(Requirement, metadata.get_all("Requires-Dist") or [])
            if r.marker is not None and r.marker.evaluate({"extra": extra})
        }
    by_extra[None] = {
        canonicalize_name(r.name)
        for r in map(Requirement, metadata.get_all("Requires-Dist") or [])
        if r.marker is None
    }
    return by_extra


# ------------------------------------------------------------------------------ the build
def test_build_is_clean(dist, metadata):
    log = dist["log"]
    # e.g. "Package 'anl.integrations.mtard.configs' is absent from the `packages` configuration"
    assert "absent from the `packages`" not in log, log
    assert "SetuptoolsDeprecationWarning" not in log, log
    assert dist["sdist"].name == f"adaptive_normalization_loss-{metadata['Version']}.tar.gz"


def test_twine_check_strict_passes(dist):
    out = _run(sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"])
    assert out.count("PASSED") == 2, out


# ------------------------------------------------------------------------------ metadata
def test_name_is_not_the_unrelated_anl_and_import_package_is_anl(metadata, dist):
    assert metadata["Name"] == DIST_NAME
    assert canonicalize_name(metadata["Name"]) != "anl"
    with zipfile.ZipFile(dist["wheel"]) as whl:
        (top,) = [n for n in whl.namelist() if n.endswith(".dist-info/top_level.txt")]
        assert whl.read(top).decode().split() == ["anl"]


def test_licence_is_a_pep639_expression_with_its_file(metadata, dist):
    assert Version(metadata["Metadata-Version"]) >= Version("2.4")
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    # PEP 639: no licence classifier beside an expression (the index rejects the pair).
    assert not [c for c in metadata.get_all("Classifier") if c.startswith("License ::")]
    with zipfile.ZipFile(dist["wheel"]) as whl:
        licence = whl.read(f"{_dist_info(whl)}/licenses/LICENSE").decode()
    assert licence.startswith("MIT License") and "the anl developers" in licence


def test_classifiers_are_valid_trove_classifiers(metadata):
    classifiers = metadata.get_all("Classifier")
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert not unknown, f"not trove classifiers (the upload would be rejected): {unknown}"
    deprecated = [c for c in classifiers if c in trove_classifiers.deprecated_classifiers]
    assert not deprecated, deprecated
    assert "Typing :: Typed" in classifiers  # with anl/py.typed, checked below


def test_python_version_classifiers_match_requires_python(metadata):
    requires = SpecifierSet(metadata["Requires-Python"])
    versions = [
        m[1]
        for c in metadata.get_all("Classifier")
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    ]
    assert versions, "no Python version classifiers"
    assert all(requires.contains(f"{v}.0") for v in versions), (requires, versions)
    assert requires.contains(f"{sys.version_info.major}.{sys.version_info.minor}.0")


def test_metadata_has_a_rendered_readme_and_no_invented_urls(metadata):
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "<!-- test-command -->" in metadata.get_payload()
    # Only real addresses: the project has none yet (no homepage, repository or docs host).
    for url in metadata.get_all("Project-URL") or []:
        assert "example" not in url and "TODO" not in url, url


def test_core_dependencies_are_torch_and_numpy_only(requirements, metadata):
    assert requirements[None] == {"torch", "numpy"}
    torch_req = next(
        Requirement(r) for r in metadata.get_all("Requires-Dist") if r.startswith("torch")
    )
    # A lower bound only: the installed (CPU) torch satisfies it, pip pulls no CUDA build.
    assert torch_req.specifier.contains("2.13.0") and not torch_req.specifier.contains("2.0")


def test_extras(requirements, metadata):
    assert requirements["testing"] == {"hypothesis"}
    assert requirements["mtard"] == {"tqdm", "matplotlib"}
    assert requirements["autoattack"] == {"pyautoattack"}
    assert requirements["tensorboard"] == {"tensorboard"}
    assert requirements["docs"] == DOCS_TOOLS
    for extra, packages in FRAMEWORK_EXTRAS.items():
        assert requirements[extra] == packages, extra
        assert not packages & requirements["all"], extra
        assert packages <= requirements["dev"], extra
    # `all` runs everything a user can run, and brings no developer tools.
    for extra in USER_EXTRAS:
        assert requirements[extra] <= requirements["all"], extra
    assert not requirements["all"] & (DEV_TOOLS | DOCS_TOOLS)
    assert {"hypothesis"} | DEV_TOOLS | DOCS_TOOLS <= requirements["dev"]
    # A compatible range, not a pin.
    for req in map(Requirement, metadata.get_all("Requires-Dist")):
        if req.name in ("pyautoattack", "pytorch-lightning", "transformers", "accelerate"):
            assert not any(s.operator in ("==", "===") for s in req.specifier), req


def test_citation_file_matches_the_release(metadata):
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)$", citation, re.M)[1] == metadata["Version"]
    assert re.search(r"^license: (\S+)$", citation, re.M)[1] == metadata["License-Expression"]
    assert "Multi-Teacher Adversarial Distillation" in citation


# ------------------------------------------------------------------------------ contents
def test_sdist_is_a_complete_source_tree(dist):
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = {
        "LICENSE",
        "README.md",
        "CITATION.cff",
        "pyproject.toml",
        "mkdocs.yml",
        "docs/griffe_rest.py",
        "setup.cfg",
        "anl/py.typed",
        "tests/conftest.py",
        "docs/index.md",
        "benchmarks/__init__.py",
    }
    assert expected <= names, sorted(expected - names)
    for folder in ("tests/integrations/", "docs/api/", "docs/results/"):
        assert any(n.startswith(folder) for n in names), folder
    # Everything git tracks in these folders is there.
    tracked = subprocess.run(
        ["git", "ls-files", "anl", "tests", "benchmarks", "docs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if tracked.returncode == 0 and tracked.stdout:  # not when testing from an sdist
        missing = set(tracked.stdout.split()) - names
        assert not missing, sorted(missing)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_holds_anl_with_its_data_only(dist, metadata):
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"anl", f"adaptive_normalization_loss-{metadata['Version']}.dist-info"}, tops
    assert "anl/py.typed" in names
    profiles = {p.relative_to(ROOT).as_posix() for p in (ROOT / "anl").rglob("*.json")}
    assert profiles and profiles <= names, sorted(profiles - names)
    sources = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "anl").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= names, sorted(sources - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


# ------------------------------------------------------------------------------ install
def test_wheel_installs_with_core_dependencies_only(dist, metadata, tmp_path):
    """A fresh venv (no system site packages): the CPU torch, then the wheel (numpy)."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", TORCH_PIN)
    _run(python, "-m", "pip", "install", "--quiet", dist["wheel"])

    installed = _run(python, "-m", "pip", "list", "--format=freeze")
    names = {canonicalize_name(line.split("==")[0]) for line in installed.split()}
    assert DIST_NAME in names
    optional_packages = ("hypothesis", "tqdm", "matplotlib", "pyautoattack", "tensorboard")
    for optional in (*optional_packages, "pytorch-lightning", "transformers", "accelerate"):
        assert optional not in names, f"{optional} came with the core install:\n{installed}"

    check = (
        "import importlib.resources, anl, anl.distributed, torch\n"
        f"assert anl.__file__.startswith({str(venv)!r}), anl.__file__\n"
        "b = anl.AdaptiveLossBalancer(['a', 'b'])\n"
        "b.step([torch.tensor(2.0), torch.tensor(1.0)])\n"
        "assert b.weights.tolist() == [0.5, 0.5]\n"
        "assert importlib.resources.files('anl').joinpath('py.typed').is_file()\n"
        "print('ok', anl.__version__)\n"
    )
    assert _run(python, "-c", check, cwd=tmp_path).split() == ["ok", metadata["Version"]]

    cli = subprocess.run(
        [str(venv / "bin" / "anl-mtard"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=_environment(),
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "usage" in cli.stdout.lower()


# ------------------------------------------------------------------------------ helpers
def _environment() -> dict[str, str]:
    """This process's environment, without what would let a venv import this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _dist_info(whl: zipfile.ZipFile) -> str:
    (info,) = {n.split("/", 1)[0] for n in whl.namelist() if ".dist-info/" in n}
    return info
