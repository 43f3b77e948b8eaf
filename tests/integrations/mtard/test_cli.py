"""The ``anl-mtard`` command's answers to mistakes, its exit statuses and its ``--help``.

Every mistake is one line on stderr naming the argument or file, with exit status 2 for a
usage error (a wrong value, profile, kind of path) and 1 for a runtime failure (a missing or
corrupt file found while running, a device that is not there); ``--debug`` adds the traceback.
The probes are those of issue #17; each runs in-process and stops before any training.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anl.integrations.mtard import cli
from anl.integrations.mtard.attacks.registry import ATTACK_NAMES
from anl.integrations.mtard.cli import train as train_cli
from anl.integrations.mtard.data.registry import DATASETS
from anl.integrations.mtard.methods.balancers import BALANCER_NAMES
from anl.integrations.mtard.methods.registry import METHOD_ORDER
from anl.integrations.mtard.models import model_names
from anl.integrations.mtard.pipeline.profile import profile_names
from anl.integrations.mtard.pipeline.sensitivity import GRIDS
from anl.integrations.mtard.pipeline.tasks import run_state
from anl.integrations.mtard.runtime.files import read_json_object
from anl.integrations.mtard.training.config import TrainConfig

TRAIN = ["train", "--method", "sat", "--dataset", "fashion_mnist", "--student", "small_cnn",
         "--epochs", "1", "--device", "cpu", "--no-tensorboard", "--no-progress"]  # fmt: skip
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``anl-mtard argv`` in this process: ``(exit status, stderr)``."""
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # argparse's own errors
        status = int(exit.code or 0)
    return status, capsys.readouterr().err


def assert_one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("anl-mtard"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture()
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a file, a half-written JSON file and a bad profile."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() appends the working directory
    (tmp_path / "afile").write_text("x")
    (tmp_path / "half.json").write_text('{"name": "x", "dataset": "cif')
    (tmp_path / "badval.json").write_text('{"name": "x", "dataset": "mnist"}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    return tmp_path


# --------------------------------------------------------------------------------------------
# Usage errors: exit status 2
# --------------------------------------------------------------------------------------------
USAGE = {
    "train --out a file": ([*TRAIN, "--out", "afile"], ["--out", "'afile'"]),
    "train --eps 1/0": ([*TRAIN, "--eps", "1/0", "--out", "r"], ["--eps", "'1/0'"]),
    "train --eps abc": ([*TRAIN, "--eps", "abc", "--out", "r"], ["--eps", "'abc'"]),
    "train --eps 2": ([*TRAIN, "--eps", "2", "--out", "r"], ["eps", "(0, 1]", "2.0"]),
    "train --eps 5": ([*TRAIN, "--eps", "5", "--out", "r"], ["eps", "(0, 1]"]),
    "train --step-size 2": ([*TRAIN, "--step-size", "2", "--out", "r"], ["step_size"]),
    "train --method bogus": ([*TRAIN, "--method", "bogus", "--out", "r"], ["--method", "bogus"]),
    "train --student bogus": ([*TRAIN, "--student", "bogus", "--out", "r"], ["student"]),
    "train --dataset bogus": ([*TRAIN, "--dataset", "bogus", "--out", "r"], ["dataset"]),
    "train --augment bogus": ([*TRAIN, "--augment", "x", "--out", "r"], ["--augment"]),
    "train --epochs 0": ([*TRAIN, "--epochs", "0", "--out", "r"], ["epochs", ">= 1"]),
    "train --batch-size 0": ([*TRAIN, "--batch-size", "0", "--out", "r"], ["batch_size"]),
    "train --hyper bad": ([*TRAIN, "--hyper", "{x", "--out", "r"], ["--hyper", "JSON"]),
    "train --stop-after-epochs 0": (
        [*TRAIN, "--stop-after-epochs", "0", "--out", "r"],
        ["--stop-after-epochs"],
    ),
    "train --config missing": ([*TRAIN, "--config", "no.json", "--out", "r"], ["--config"]),
    "train --config half": ([*TRAIN, "--config", "half.json", "--out", "r"], ["half.json"]),
    "train --config list": ([*TRAIN, "--config", "list.json", "--out", "r"], ["list.json"]),
    "train --config unknown key": ([*TRAIN, "--config", "badval.json", "--out", "r"], ["name"]),
    "train --data-dir a file": ([*TRAIN, "--data-dir", "afile", "--out", "r"], ["--data-dir"]),
    "train --resume nothing": (["train", "--resume", "--out", "r"], ["--resume", "'r'"]),
    "train no --out": (TRAIN, ["--out"]),
    "train --student bad import": (
        [*TRAIN, "--student", "no_such_module_xyz:net", "--out", "r"],
        ["student", "no_such_module_xyz", "ModuleNotFoundError"],
    ),
    "evaluate --eps -1": (["evaluate", "c.pt", "--eps", "-1"], ["--eps", "'-1'"]),
    "evaluate --eps 2": (["evaluate", "c.pt", "--eps", "2"], ["--eps", "(0, 1]"]),
    "evaluate --n-examples 0": (["evaluate", "c.pt", "--n-examples", "0"], ["--n-examples"]),
    "evaluate --batch-size 0": (["evaluate", "c.pt", "--batch-size", "0"], ["--batch-size"]),
    "evaluate --square-queries 0": (["evaluate", "c.pt", "--square-queries", "0"], ["square"]),
    "evaluate --seed -1": (["evaluate", "c.pt", "--seed", "-1"], ["--seed"]),
    "evaluate --attacks bogus": (["evaluate", "c.pt", "--attacks", "bogus"], ["--attacks"]),
    "evaluate --dataset bogus": (["evaluate", "c.pt", "--dataset", "bogus"], ["--dataset"]),
    "evaluate --out a file": (["evaluate", "c.pt", "--out", "afile"], ["--out", "'afile'"]),
    "evaluate a directory": (["evaluate", "."], ["CHECKPOINT", "directory"]),
    "evaluate --surrogate-arch bogus": (
        ["evaluate", "c.pt", "--surrogate-arch", "bogus"],
        ["--surrogate-arch"],
    ),
    "reproduce --jobs 0": (["reproduce", "--jobs", "0"], ["--jobs", "'0'"]),
    "reproduce --seeds 0": (["reproduce", "--seeds", "0"], ["--seeds"]),
    "reproduce --seed-list -1": (["reproduce", "--seed-list", "-1"], ["--seed-list"]),
    "reproduce --epochs -1": (["reproduce", "--epochs", "-1"], ["--epochs", "'-1'"]),
    "reproduce --threads 0": (["reproduce", "--threads", "0"], ["--threads"]),
    "reproduce --n-eval 0": (["reproduce", "--n-eval", "0"], ["--n-eval"]),
    "reproduce --train-subset 0": (["reproduce", "--train-subset", "0"], ["--train-subset"]),
    "reproduce --methods bogus": (["reproduce", "--methods", "bogus"], ["--methods"]),
    "reproduce --students bogus": (["reproduce", "--students", "bogus"], ["student", "bogus"]),
    "reproduce --profile bogus": (["reproduce", "--profile", "bogus"], ["profile", "smoke"]),
    "reproduce --profile half": (["reproduce", "--profile", "half.json"], ["half.json"]),
    "reproduce --profile badval": (["reproduce", "--profile", "badval.json"], ["profile["]),
    "reproduce --profile a dir": (["reproduce", "--profile", "."], ["profile", "JSON"]),
    "reproduce --out a file": (["reproduce", "--profile", "smoke", "--out", "afile"], ["--out"]),
    "reproduce --data-dir a file": (["reproduce", "--data-dir", "afile"], ["--data-dir"]),
    "plot a file": (["plot", "afile"], ["DIR", "'afile'"]),
    "sensitivity a file": (["sensitivity", "afile"], ["RESULTS_DIR", "'afile'"]),
    "sensitivity --jobs 0": (["sensitivity", ".", "--jobs", "0"], ["--jobs"]),
    "sensitivity --grid bogus": (["sensitivity", ".", "--grid", "x"], ["--grid"]),
    "sensitivity not a results dir": (["sensitivity", "."], ["results_dir", "config.json"]),
    "plot an empty dir": (["plot", "."], ["DIR", "run directory", "results directory"]),
    "diagnose a file": (["diagnose", "afile"], ["DIR", "'afile'"]),
    "diagnose not a results dir": (["diagnose", "."], ["DIR", "results directory"]),
    "compare not a results dir": (
        ["compare", ".", ".", "--out", "x.md"],
        ["DIR_A", "results directory"],
    ),
    "compare --attack bogus": (
        ["compare", ".", ".", "--out", "x.md", "--attack", "x"],
        ["--attack"],
    ),
    "compare without --out": (["compare", ".", "."], ["--out"]),
    "unknown command": (["bogus"], ["COMMAND"]),
}


@pytest.mark.parametrize("case", list(USAGE))
def test_a_usage_error_is_one_line_and_exit_status_2(case, files, capsys):
    argv, fragments = USAGE[case]
    status, err = run(argv, capsys)
    assert status == cli.EXIT_USAGE, err
    assert_one_line(err, *fragments)
    assert not (files / "r").exists()  # nothing was started


def test_a_run_directory_is_not_overwritten_without_resume(files, capsys):
    (files / "r" / "checkpoints").mkdir(parents=True)
    (files / "r" / "checkpoints" / "last.pt").write_bytes(b"")
    status, err = run([*TRAIN, "--out", "r"], capsys)
    assert status == 2
    assert_one_line(err, "--out", "already holds a run", "--resume")


def test_a_results_directory_is_not_overwritten_without_resume(files, capsys):
    (files / "res").mkdir()
    (files / "res" / "config.json").write_text("{}")
    status, err = run(["reproduce", "--profile", "smoke", "--out", "res"], capsys)
    assert status == 2
    assert_one_line(err, "--out", "already holds a reproduction", "--resume")


# --------------------------------------------------------------------------------------------
# Runtime failures: exit status 1
# --------------------------------------------------------------------------------------------
def test_a_missing_or_corrupt_checkpoint_is_exit_status_1(files, capsys):
    status, err = run(["evaluate", "missing.pt", "--no-progress"], capsys)
    assert status == cli.EXIT_FAILURE
    assert_one_line(err, "'missing.pt'", "does not exist")
    status, err = run(["evaluate", "junk.pt", "--dataset", "fashion_mnist"], capsys)
    assert status == 1
    assert_one_line(err, "'junk.pt'", "not a valid checkpoint")


def test_a_checkpoint_outside_checkpoints_is_found_for_the_user(files, capsys):
    """README's old `evaluate runs/mtard/best.pt`: the file is under checkpoints/."""
    (files / "run" / "checkpoints").mkdir(parents=True)
    (files / "run" / "checkpoints" / "best.pt").write_bytes(b"")
    status, err = run(["evaluate", "run/best.pt"], capsys)
    assert status == 1
    assert_one_line(err, "'run/best.pt'", "did you mean 'run/checkpoints/best.pt'")
    status, err = run(["evaluate", "run"], capsys)
    assert status == 2
    assert_one_line(err, "directory 'run'", "did you mean 'run/checkpoints/best.pt'")


def test_a_half_written_config_under_resume_names_the_file(files, capsys):
    (files / "r").mkdir()
    (files / "r" / "config.json").write_text('{\n  "adv_teacher": null,\n  "adv')
    status, err = run(["train", "--resume", "--out", "r"], capsys)
    assert status == 1
    assert_one_line(err, "r/config.json", "not valid JSON", "line 3")


@NO_CUDA
@pytest.mark.parametrize(
    "argv",
    [
        [*TRAIN, "--device", "cuda", "--out", "r"],
        ["evaluate", "c.pt", "--device", "cuda"],
        ["reproduce", "--profile", "smoke", "--device", "cuda", "--out", "r"],
    ],
    ids=["train", "evaluate", "reproduce"],
)
def test_a_device_that_is_not_there_is_exit_status_1(argv, files, capsys):
    status, err = run(argv, capsys)
    assert status == 1
    assert_one_line(err, "Device 'cuda:0' is not available")
    assert not (files / "r").exists()  # found before anything is written


def test_a_truncated_metrics_json_names_the_file(tmp_path):
    """Under `reproduce --resume`, a run's metrics.json cut short by a crash (issue #17)."""
    config = TrainConfig(method="sat", dataset="fashion_mnist", student="small_cnn", epochs=1)
    config.save(tmp_path / "config.json")
    (tmp_path / "final.pt").write_bytes(b"")
    (tmp_path / "metrics.json").write_text('{"finished": tr')
    with pytest.raises(ValueError, match=r"metrics\.json' is not valid JSON"):
        run_state(tmp_path, config)
    (tmp_path / "metrics.json").write_text("[true]")
    with pytest.raises(ValueError, match=r"metrics\.json' should hold a JSON object"):
        run_state(tmp_path, config)
    (tmp_path / "metrics.json").write_text('{"finished": true}')
    assert run_state(tmp_path, config) == "done"
    with pytest.raises(FileNotFoundError):
        read_json_object(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------
# The error path itself
# --------------------------------------------------------------------------------------------
def _args(func) -> argparse.Namespace:
    return argparse.Namespace(func=func, prog="anl-mtard test", debug=False)


def _raise(exc: BaseException):
    def func(args):
        raise exc

    return func


def test_debug_prints_the_traceback_and_keeps_the_status(files, capsys):
    status, err = run(["--debug", "evaluate", "missing.pt"], capsys)
    assert status == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("anl-mtard evaluate: error:")
    status, err = run(["reproduce", "--profile", "bogus", "--debug"], capsys)
    assert status == 2 and "Traceback" in err and "ArgumentError" in err


def test_interrupts_and_unexpected_failures(capsys):
    assert cli.run_command(_args(_raise(KeyboardInterrupt()))) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "anl-mtard test: interrupted\n"
    assert cli.run_command(_args(_raise(AttributeError("no x")))) == 1
    err = capsys.readouterr().err
    assert_one_line(err, "AttributeError: no x", "--debug")
    assert cli.run_command(_args(_raise(ValueError("line one\n  line two")))) == 1
    assert capsys.readouterr().err == "anl-mtard test: error: line one line two\n"
    assert cli.run_command(_args(lambda args: 0)) == 0


def test_the_installed_command_exits_with_these_statuses(tmp_path):
    """The real process: `python -m anl.integrations.mtard`, as the console script runs."""

    def command(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "anl.integrations.mtard", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            check=False,
        )

    usage = command("reproduce", "--jobs", "0")
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1, usage.stderr
    failure = command("evaluate", "missing.pt")
    assert failure.returncode == 1 and failure.stderr.count("\n") == 1, failure.stderr


# --------------------------------------------------------------------------------------------
# --help
# --------------------------------------------------------------------------------------------
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    for add_command in cli.SUBCOMMANDS:
        add_command(subparsers)
    return dict(subparsers.choices)


def test_every_option_has_help_with_its_default_at_most_once():
    parsers = _subparsers()
    assert sorted(parsers) == [
        "compare",
        "diagnose",
        "evaluate",
        "plot",
        "reproduce",
        "sensitivity",
        "train",
    ]
    for name, parser in {"anl-mtard": cli.build_parser(), **parsers}.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{flag} has no help"
            assert action.help.count("(default:") <= 1, f"{flag}: {action.help}"
            assert "default: None" not in action.help, f"{flag}: {action.help}"


def test_help_lists_the_valid_choices():
    def help_text(name: str) -> str:
        return " ".join(_subparsers()[name].format_help().split())

    train, evaluate, reproduce = help_text("train"), help_text("evaluate"), help_text("reproduce")
    for method in METHOD_ORDER:
        assert method in train and method in reproduce
    for model in model_names():
        assert model in train and model in reproduce and model in evaluate
    for dataset in DATASETS:
        assert dataset in train and dataset in evaluate
    for attack in ATTACK_NAMES:
        assert attack in evaluate
    for profile in profile_names():
        assert profile in reproduce
    for balancer in BALANCER_NAMES:
        assert balancer in train
    sensitivity = help_text("sensitivity")
    for grid in GRIDS:
        assert grid in sensitivity
    for text in (train, evaluate, reproduce):
        assert "package.module:attribute" in text
    assert "run directory" in help_text("plot") and "results directory" in help_text("plot")


def test_train_flags_keep_their_values(tmp_path):
    """`--augment none` means no augmentation (not None, the dataset default); fractions parse."""
    parser = cli.build_parser()
    args = parser.parse_args(
        [*TRAIN, "--out", "r", "--augment", "none", "--eps", "8/255", "--val-seed", "none"]
    )
    config = train_cli.train_config(args, tmp_path / "r")
    assert config.augment == "none" and config.eps == 8 / 255 and config.val_seed is None
