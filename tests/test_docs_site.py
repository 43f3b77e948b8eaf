"""The documentation site builds with ``mkdocs build --strict``, offline, and documents the API.

The build runs with every socket connection refused, so a theme or plugin that fetches
anything (web fonts, social cards, remote inventories) fails it. Then every public name of
``anl`` and of ``anl.integrations.mtard`` (each public module's ``__all__``, or its public
functions and classes when it has none) must have an entry in the site's ``objects.inv``,
and every page of ``docs/`` must be in the navigation (mkdocs.yml makes that a warning,
``--strict`` an error). Needs the ``docs`` (or ``dev``) extra; CI installs ``.[all,dev]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import anl

ROOT = Path(__file__).resolve().parents[1]

# mkdocs' command line with every outgoing connection refused (the build must be offline).
_OFFLINE_MKDOCS = """
import socket, sys

def _refuse(*args, **kwargs):
    raise OSError(f"the docs build tried to reach the network: {args!r}")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse

from mkdocs.__main__ import cli

sys.argv = ["mkdocs", *sys.argv[1:]]
cli()
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_MKDOCS, "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert "WARNING" not in output, output
    return out


def _inventory(site: Path) -> set[str]:
    """The object names of a Sphinx-format ``objects.inv`` (what mkdocstrings writes)."""
    data = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four plain-text header lines, then zlib
        header_end = data.index(b"\n", header_end) + 1
    lines = zlib.decompress(data[header_end:]).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line}


def _public_modules(package) -> list:
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            modules.append(importlib.import_module(info.name))
    return modules


def _public_names(module) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def test_site_builds_offline_with_every_page(site):
    assert (site / "index.html").is_file()
    assert (site / "search" / "search_index.json").is_file()
    pages = {
        p.relative_to(ROOT / "docs").with_suffix("").as_posix()
        for p in (ROOT / "docs").rglob("*.md")
    }
    for page in pages:
        folder = page[: -len("README")] if page.endswith("README") else page
        folder = folder[: -len("index")] if folder.endswith("index") else folder
        assert (site / folder / "index.html").is_file(), page


def test_site_references_no_remote_assets(site):
    remote = re.compile(r"""<(?:link|script|img)[^>]+(?:href|src)=["'](?:https?:)?//""")
    for page in site.rglob("*.html"):
        hits = remote.findall(page.read_text(encoding="utf-8"))
        assert not hits, f"{page.relative_to(site)} loads remote assets: {hits}"


def test_api_reference_documents_every_public_name(site):
    """Under its own module's path, or under a package that re-exports it (``anl.X``)."""
    documented = _inventory(site)
    missing = []
    for module in _public_modules(anl):
        packages = [
            module.__name__.rsplit(".", k)[0] for k in range(module.__name__.count(".") + 1)
        ]
        for name in _public_names(module):
            obj = getattr(module, name)
            paths = [
                f"{package}.{name}"
                for package in packages
                if getattr(importlib.import_module(package), name, None) is obj
            ]
            defined_in = getattr(obj, "__module__", None)
            if isinstance(defined_in, str) and defined_in.startswith("anl"):
                paths.append(f"{defined_in}.{name}")  # a lazily re-exported name
            if not documented.intersection(paths):
                missing.append(paths[0])
    assert not missing, (
        f"{len(missing)} public names have no entry in the API reference (docs/api/*.md): "
        + ", ".join(missing)
    )


def test_docstrings_render_as_markdown(site):
    """reST roles, math and ``Example:`` sections come out as code (docs/griffe_rest.py)."""
    core = (site / "api" / "core" / "index.html").read_text(encoding="utf-8")
    mtard = (site / "api" / "mtard" / "index.html").read_text(encoding="utf-8")
    for html in (core, mtard):
        assert ":math:`" not in html and ":func:`" not in html and ".. math::" not in html
        assert "&gt;&gt;&gt;" in html  # the examples are code, not nested block quotes
        assert "<blockquote>\n<blockquote>" not in html
    # The balancer's ``.. math::`` block (Eq. 6-9) is a code block.
    blocks = re.findall(r"<pre>.*?</pre>", core, flags=re.S)
    assert any("(Eq. 7)" in block and "tilde" in block for block in blocks)
    assert "<table>" in mtard


# ------------------------------------------------------------ docs/griffe_rest.py, unit by unit
def _rewrite():
    spec = importlib.util.spec_from_file_location("griffe_rest", ROOT / "docs" / "griffe_rest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rewrite


def test_rewrite_roles_become_code_spans():
    rewrite = _rewrite()
    text = ":func:`~anl.integrations.mtard.attacks.pgd`, :class:`anl.ConstantWeights`, "
    text += ":meth:`step`, :math:`\\tilde L_i(t)`, :func:`the loop <anl.integrations.mtard.train>`"
    assert rewrite(text) == ("`pgd`, `anl.ConstantWeights`, `step`, `\\tilde L_i(t)`, `the loop`")


def test_rewrite_math_example_and_doctest_blocks():
    rewrite = _rewrite()
    text = "Intro.\n\n.. math::\n\n    a = b \\\\\n    c = d\n\nMore.\n\n>>> 1 + 1\n2\n\nExample:\n    >>> 2\n    2"
    assert rewrite(text) == (
        "Intro.\n\n```tex\na = b \\\\\nc = d\n```\n\nMore.\n\n```pycon\n>>> 1 + 1\n2\n```\n\n"
        "Examples:\n    >>> 2\n    2"
    )
    assert rewrite(".. math:: x = 1\n    + 2") == "```tex\nx = 1\n+ 2\n```"


def test_rewrite_simple_table_and_literal_block():
    rewrite = _rewrite()
    table = "====  =====\nname  what\n====  =====\na     one\n      more\nb     x|y\n====  =====\n"
    assert rewrite(table) == ("| name | what |\n|---|---|\n| a | one more |\n| b | x\\|y |")
    literal = "Run this::\n\n    f(x)\n    g(x)\n\nThen."
    assert rewrite(literal) == "Run this:\n\n```\nf(x)\ng(x)\n```\n\nThen."


def test_rewrite_splits_an_entry_for_several_parameters():
    rewrite = _rewrite()
    text = "Args:\n    x: the input.\n    mean, std: normalisation;\n        per channel.\n\nReturns:\n    y."
    assert rewrite(text) == (
        "Args:\n    x: the input.\n    mean: normalisation;\n        per channel.\n"
        "    std: normalisation;\n        per channel.\n\nReturns:\n    y."
    )
    # Outside an Args section such a line is left alone.
    assert rewrite("mean, std: normalisation.") == "mean, std: normalisation."
