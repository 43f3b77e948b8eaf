"""``runtime``: atomic files, optional dependencies, and the process helpers of a lone process."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys

import pytest
import torch

from anl.integrations.mtard.runtime.execution import model_mode, torch_threads
from anl.integrations.mtard.runtime.files import (
    atomic_file,
    atomic_save,
    atomic_write_text,
    json_finite,
    safe_load,
)
from anl.integrations.mtard.runtime.optional import NoBar, progress_bar, require
from anl.integrations.mtard.runtime.process import (
    Ranks,
    agree,
    command_line,
    current_ranks,
    node_main_first,
    process_device,
)


def test_atomic_file_replaces_whole_files_or_leaves_the_old_one(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_text(path, "old\r\n±")
    assert path.read_bytes() == "old\r\n±".encode()  # newlines as given, UTF-8
    os.chmod(path, 0o640)
    with pytest.raises(RuntimeError), atomic_file(path) as handle:
        handle.write(b"partial")
        raise RuntimeError("killed")
    assert path.read_bytes() == "old\r\n±".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary left
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640
    atomic_save({"x": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(safe_load(tmp_path / "t.pt")["x"], torch.arange(3))


def test_json_finite_makes_strict_json():
    value = {"a": [1.0, math.nan, {"b": math.inf}], 3: (2, -math.inf)}
    assert json_finite(value) == {"a": [1.0, None, {"b": None}], "3": [2, None]}
    json.dumps(json_finite(value), allow_nan=False)


def test_a_missing_optional_dependency_names_its_extra(monkeypatch):
    for module, extra in (
        ("tqdm", "mtard"),
        ("matplotlib", "mtard"),
        ("pyautoattack", "autoattack"),
        ("torch.utils.tensorboard", "tensorboard"),
    ):
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(ImportError, match=rf'pip install "anl\[{extra}\]"') as info:
            require(module, "Something")
        assert "\n" not in str(info.value)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"Progress bars .* pip install \"anl\[mtard\]\""):
        progress_bar(range(3), desc="x", enabled=True)
    bar = progress_bar(range(3), desc="x", enabled=False)  # no tqdm needed when off
    assert isinstance(bar, NoBar) and list(bar) == [0, 1, 2]
    with bar:
        bar.update(1), bar.set_postfix(a=1), bar.set_postfix_str("b"), bar.close()


def test_a_lone_process_is_rank_0_of_1():
    ranks = current_ranks()
    assert ranks == Ranks() and ranks.main and not ranks.enabled
    assert ranks.gather_objects({"a": 1}) == [{"a": 1}]
    assert node_main_first(lambda: 42, ranks) == 42
    agree("anything", "a value", ranks)  # one process always agrees
    assert process_device("cpu", ranks) == torch.device("cpu")


def test_model_mode_and_torch_threads_restore_what_they_change():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[1].eval()  # mixed modes survive
    with model_mode(model, "train"):
        assert model.training and model[1].training
    assert model.training and not model[1].training
    with pytest.raises(ValueError, match="model_mode"), model_mode(model, "test"):
        pass
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"), torch_threads(0):
        pass


def test_the_command_needs_only_torch_and_numpy():
    """``--help``, ``--version`` and every subcommand's help work with tqdm, matplotlib,
    pyautoattack and tensorboard missing (blocked here in a fresh interpreter)."""
    script = (
        "import sys\n"
        "for name in ('tqdm', 'matplotlib', 'pyautoattack', 'tensorboard', 'hypothesis'):\n"
        "    sys.modules[name] = None\n"
        "import anl.integrations.mtard\n"
        "from anl.integrations.mtard.cli import main\n"
        "for argv in (['train', '--help'], ['evaluate', '--help'], ['reproduce', '--help'],"
        " ['plot', '--help'], ['sensitivity', '--help'], ['--help'], ['--version']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, (argv, exit.code)\n"
        "loaded = [m for m in ('tqdm', 'matplotlib', 'pyautoattack') if sys.modules.get(m)]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "anl-mtard" in result.stdout and "anl 0." in result.stdout
    module = subprocess.run(
        [sys.executable, "-m", "anl.integrations.mtard", "--version"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert module.returncode == 0 and module.stdout.startswith("anl "), module.stderr


@pytest.mark.parametrize(
    ("argv0", "shown"),
    [
        ("/usr/bin/anl-mtard", "anl-mtard"),
        ("/src/anl/integrations/mtard/__main__.py", "anl-mtard"),  # python -m anl...mtard
        ("/src/anl/integrations/mtard/cli/__main__.py", "anl-mtard"),  # python -m ...mtard.cli
        ("my_script.py", "my_script.py"),
    ],
)
def test_command_line_names_the_command_a_user_types(monkeypatch, argv0, shown):
    monkeypatch.setattr("sys.argv", [argv0, "sensitivity", "runs/a b", "--grid", "balancers"])
    assert command_line() == f"{shown} sensitivity 'runs/a b' --grid balancers"
