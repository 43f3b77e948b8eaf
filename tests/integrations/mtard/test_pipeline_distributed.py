"""``anl-mtard reproduce`` under ``torchrun``: two Gloo processes on real Fashion-MNIST images.

One ``mp.spawn`` of two workers runs the command line of a tiny smoke profile (natural and
MTARD students, both teachers trained here, the smoke profile's seven attacks on an odd number
of test points), launched as ``torchrun`` would launch it: ``RANK``, ``WORLD_SIZE`` and
``MASTER_ADDR``/``MASTER_PORT`` in the environment, no process group, so ``reproduce`` creates
the group itself. Each worker records every file it opens for writing (``open``, ``os.replace``),
what it prints, what ``reproduce`` returns, and the weights each of its training runs ends with
(``Trainer.finish`` is wrapped). The tests compare the ranks with each other, with the files,
and with a single-process evaluation of the same checkpoints.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import io
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anl.integrations.mtard.cli import reproduce as reproduce_cli
from anl.integrations.mtard.pipeline import tasks
from anl.integrations.mtard.pipeline.profile import Profile
from anl.integrations.mtard.pipeline.reproduce import reproduce
from anl.integrations.mtard.runtime.files import json_finite, safe_load
from anl.integrations.mtard.training.trainer import Trainer

WORLD_SIZE = 2
N_EVAL = 101  # odd: shards of 51 and 50 points
METHODS = ["natural", "mtard"]
RUNS = [
    "teachers/clean",
    "teachers/adv",
    "runs/small_cnn/natural/seed0",
    "runs/small_cnn/mtard/seed0",
]
TRANSFER = ("transfer_pgd", "transfer_cw")


def tiny_profile() -> dict:
    profile = Profile.load("smoke").to_dict()
    profile["name"] = "test-ddp"
    profile["download"] = False
    profile["methods"] = list(METHODS)
    profile["train"].update(  # the global batch of 32: 16 images per rank
        batch_size=32, train_subset=96, val_size=33, val_batch_size=32, attack_steps=1
    )
    for spec in profile["teachers"].values():
        spec["train"]["train_subset"] = 96
    profile["evaluation"].update(n_examples=N_EVAL, batch_size=32, square_queries=5)
    profile["evaluation"]["attack_overrides"] = {
        a: {"steps": 1} for a in ("pgd_sat", "pgd_trades", "cw_inf", *TRANSFER)
    }
    Profile(profile)  # valid
    return profile


def _worker(rank: int, tmp: str, port: int, profile_path: str) -> None:
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    out = tmp_path / "out"
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    writes: list[str] = []
    states: dict[str, dict[str, torch.Tensor]] = {}
    returned: list[dict] = []
    real_open, real_io_open, real_replace = builtins.open, io.open, os.replace
    real_finish, real_reproduce = Trainer.finish, reproduce_cli.reproduce

    def recording_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike) and set(mode) & set("wax+"):
            writes.append(os.path.abspath(file))
        return real_open(file, mode, *args, **kwargs)

    def recording_replace(src, dst, *args, **kwargs):
        writes.append(os.path.abspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    def finish(self, finished, last_row):
        name = self.run_dir.relative_to(out).as_posix()
        states[name] = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        return real_finish(self, finished, last_row)

    def recording_reproduce(*args, **kwargs):
        returned.append(real_reproduce(*args, **kwargs))
        return returned[-1]

    builtins.open = io.open = recording_open
    os.replace = recording_replace
    Trainer.finish = finish
    reproduce_cli.reproduce = recording_reproduce
    stdout = io.StringIO()
    try:
        parser = argparse.ArgumentParser()
        reproduce_cli.add_reproduce_command(parser.add_subparsers(dest="command"))
        args = parser.parse_args(
            ["reproduce", "--profile", profile_path, "--out", str(out), "--no-progress"]
        )
        with contextlib.redirect_stdout(stdout):
            code = args.func(args)
    finally:
        builtins.open, io.open, os.replace = real_open, real_io_open, real_replace
        Trainer.finish, reproduce_cli.reproduce = real_finish, real_reproduce
    report = {
        "code": code,
        "left_group": not dist.is_initialized(),
        "stdout": stdout.getvalue(),
        "writes": [w for w in writes if Path(w).is_relative_to(out.resolve())],
        "results": json.dumps(json_finite(returned[0])),
        "states": states,
    }
    torch.save(report, tmp_path / f"report_rank{rank}.pt")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run the two workers once; return their directory (``out`` is the results)."""
    tmp_path = tmp_path_factory.mktemp("reproduce_ddp")
    profile_path = tmp_path / "profile.json"
    profile_path.write_text(json.dumps(tiny_profile()))
    mp.spawn(
        _worker, args=(str(tmp_path), _free_port(), str(profile_path)), nprocs=WORLD_SIZE, join=True
    )
    return tmp_path


def report(tmp_path: Path, rank: int) -> dict:
    return torch.load(tmp_path / f"report_rank{rank}.pt", weights_only=True)


def test_both_ranks_finish_with_rank_0_results_and_only_rank_0_prints(two_ranks):
    out = two_ranks / "out"
    on_disk = json.loads((out / "results.json").read_text())
    for rank in range(WORLD_SIZE):
        info = report(two_ranks, rank)
        assert info["code"] == 0 and info["left_group"]
        assert json.loads(info["results"]) == on_disk  # every rank returns results.json
    assert on_disk["machine"]["processes"] == WORLD_SIZE
    assert on_disk["machine"]["backend"] == "gloo"
    assert f"{WORLD_SIZE} processes (torch.distributed, gloo" in (out / "summary.md").read_text()
    printed = report(two_ranks, 0)["stdout"]
    assert "| MTARD |" in printed and f"Results in {out}" in printed
    assert report(two_ranks, 1)["stdout"] == ""


def test_only_rank_0_writes_one_set_of_outputs(two_ranks):
    out = (two_ranks / "out").resolve()
    assert report(two_ranks, 1)["writes"] == []
    writes = report(two_ranks, 0)["writes"]
    once = ["config.json", "results.json", "summary.md", "white_box.md", "black_box.md"]
    once += ["ablation.md", "teachers.md", "figures/mtard_weights_small_cnn.png"]
    once += [f"eval/teacher_{r}.json" for r in ("clean", "adv")]
    once += [f"eval/small_cnn__{m}__seed0.json" for m in METHODS]
    once += [f"{run}/final.pt" for run in RUNS]
    for name in once:
        assert writes.count(str(out / name)) == 1, name
    # Complete, readable files, and no temporary file left behind.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp") or p.name.startswith(".")]
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
    assert set(json.loads((out / "stages.json").read_text())) >= {
        "data",
        "teacher/adv",
        "train/small_cnn/mtard/seed0",
        "evaluate/craft-transfer",
        "evaluate/small_cnn__mtard__seed0",
    }
    for run in RUNS:
        assert sorted(p.name for p in (out / run).glob("*.pt")) == ["final.pt"], run
        safe_load(out / run / "final.pt")


def test_ranks_trained_identical_teachers_and_students(two_ranks):
    out = two_ranks / "out"
    rank0, rank1 = (report(two_ranks, r)["states"] for r in range(WORLD_SIZE))
    assert sorted(rank0) == sorted(rank1) == sorted(RUNS)
    for run in RUNS:
        final = safe_load(out / run / "final.pt")["state_dict"]
        assert rank0[run].keys() == rank1[run].keys() == final.keys(), run
        for key, value in rank0[run].items():
            assert torch.equal(value, rank1[run][key]), (run, key)
            assert torch.equal(value, final[key]), (run, key)
    # The runs really trained (the students differ from each other and from the teachers).
    natural, mtard = rank0[RUNS[2]], rank0[RUNS[3]]
    assert any(not torch.equal(natural[k], mtard[k]) for k in natural)


def test_sharded_evaluation_equals_one_process_on_the_same_checkpoints(
    two_ranks, tmp_path, monkeypatch
):
    """Evaluate the same checkpoints again in this (single) process: a copy of the results
    directory without its evaluations, resumed, so that nothing is trained again."""
    out = two_ranks / "out"
    single = tmp_path / "single"
    shutil.copytree(out, single, ignore=shutil.ignore_patterns("eval", "figures"))
    profile = json.loads((single / "config.json").read_text())

    def forbidden(*args, **kwargs):
        raise AssertionError("a completed training run ran again")

    monkeypatch.setattr(tasks, "train", forbidden)
    assert not dist.is_initialized() and "RANK" not in os.environ
    results = reproduce(profile, single, resume=True, plots=False, progress=False)
    assert {row["stage"]: row["status"] for row in results["stages"]}[
        "evaluate/craft-transfer"
    ] == "ran"

    names = [f"teacher_{r}" for r in ("clean", "adv")]
    names += [f"small_cnn__{m}__seed0" for m in METHODS]
    for name in names:
        sharded = json.loads((out / "eval" / f"{name}.json").read_text())
        alone = json.loads((single / "eval" / f"{name}.json").read_text())
        assert sharded["shard"] == {"rank": 0, "world_size": WORLD_SIZE, "reduced": True}, name
        assert alone["shard"] == {"rank": 0, "world_size": 1, "reduced": False}, name
        assert sharded["n_examples"] == alone["n_examples"] == N_EVAL, name
        assert sharded["clean"] == alone["clean"], name
        assert list(sharded["attacks"]) == list(alone["attacks"]), name
        for attack, entry in alone["attacks"].items():
            for key in ("correct", "adv_correct", "robust", "w_robust"):
                assert sharded["attacks"][attack][key] == entry[key], (name, attack, key)
    # The transfer counts come from the examples crafted once (per shard, merged) and moved
    # off 0/N.
    mtard = json.loads((out / "eval" / "small_cnn__mtard__seed0.json").read_text())
    for attack in TRANSFER:
        assert mtard["attacks"][attack]["settings"]["crafted_once_on"] == "adversarial teacher"
    assert 0 < mtard["clean"]["correct"] < N_EVAL
    for table in ("white_box.md", "black_box.md", "ablation.md", "teachers.md"):
        assert (single / table).read_text() == (out / table).read_text(), table
