"""Data-parallel training and evaluation with two Gloo processes on real Fashion-MNIST images.

One ``mp.spawn`` of two workers runs everything (process start-up dominates the cost); the test
functions then compare what the ranks saved with each other and with single-process runs:

* run ``a``: MTARD with the BatchNorm student, launched as ``torchrun`` would (``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment, no process group):
  :func:`~anl.integrations.mtard.training.trainer.train` creates the group and destroys it at the end;
* run ``b``: the same run stopped after one epoch and resumed (the remaining runs share a
  ``file://`` process group created by the worker);
* run ``c``: a BatchNorm-free student, compared with one process holding the same global batch;
* runs ``uncertainty`` and ``famo``: MTARD balanced by a rule with parameters and by FAMO;
* a sharded :func:`~anl.integrations.mtard.evaluation.robustness.evaluate` of a fixed model on an odd number of test images;
* the configuration errors that only exist with several ranks.

Each worker dumps its own student, balancer and optimizer at the end of every run
(``Trainer.finish`` is wrapped), since rank 1 writes no files.
"""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from anl.integrations.mtard import models
from anl.integrations.mtard.data.registry import load_dataset
from anl.integrations.mtard.evaluation.robustness import evaluate
from anl.integrations.mtard.methods import steps
from anl.integrations.mtard.models.checkpoint import load_model, save_model_checkpoint
from anl.integrations.mtard.runtime.files import safe_load
from anl.integrations.mtard.training.config import TrainConfig
from anl.integrations.mtard.training.trainer import Trainer, train

FASHION = Path("/usr/share/datasets/fashion-mnist")
WORLD_SIZE = 2
N_TRAIN, N_VAL, N_EVAL = 128, 33, 101  # 128 = 4 global batches of 32; odd val and test sets
EVAL_ATTACKS = ("fgsm", "pgd_sat")
EVAL_OVERRIDES = {"pgd_sat": {"steps": 2}}


def tiny_mlp(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A student without BatchNorm, so that one process and two compute the same forward."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * 28 * 28, 32), nn.ReLU(), nn.Linear(32, num_classes)
    )


def make_config(teachers: tuple[str, str], **overrides) -> TrainConfig:
    values = dict(
        method="mtard",
        dataset="fashion_mnist",
        student="small_cnn",
        epochs=2,
        clean_teacher=teachers[0],
        adv_teacher=teachers[1],
        batch_size=32,  # the global batch: 16 images per rank
        val_size=N_VAL,
        val_attack_steps=2,
        attack_steps=2,
        weight_lr=0.2,  # large, so that the weights move visibly in 8 steps
        milestones=(0.5,),
        log_every=3,
        device="cpu",
        tensorboard=False,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def dumping_finish(out_dir: Path, rank: int):
    """A ``Trainer.finish`` that first saves this rank's student, balancer and optimizer."""
    original = Trainer.finish

    def finish(self, finished, last_row):
        state = {
            "model": self.student.state_dict(),
            "weighting": self.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        torch.save(state, out_dir / f"{self.run_dir.name}_e{self.global_step}_rank{rank}.pt")
        return original(self, finished, last_row)

    return finish


def _expect_error(fn) -> str:
    try:
        fn()
    except ValueError as error:
        return str(error)
    return "no error"


def _worker(rank: int, tmp: str, port: int, train_data, eval_data, teachers) -> None:
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    out = tmp_path / "out"
    models.MODELS["tiny_mlp"] = tiny_mlp
    Trainer.finish = dumping_finish(out, rank)
    report: dict[str, object] = {}

    # Run a, as under torchrun: train() joins the group from the environment and leaves it.
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    result = train(make_config(teachers), tmp_path / "a", progress=False, train_data=train_data)
    report["a_result"] = result
    report["a_left_group"] = not dist.is_initialized()

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        # Run b: killed after one epoch (stop_after_epochs), then resumed.
        train(
            make_config(teachers),
            tmp_path / "b",
            progress=False,
            stop_after_epochs=1,
            train_data=train_data,
        )
        train(None, tmp_path / "b", resume=True, progress=False, train_data=train_data)

        # Run c: no BatchNorm and a deterministic attack start (see the test below).
        steps.START_STD = 0.0
        train(
            make_config(teachers, student="tiny_mlp"),
            tmp_path / "c",
            progress=False,
            train_data=train_data,
        )
        steps.START_STD = 0.001

        # Runs uncertainty, famo: MTARD balanced by a rule with parameters (their gradients
        # averaged across ranks, as DDP averages the student's) and by FAMO (its second call).
        for balancer in ("uncertainty", "famo"):
            config = make_config(teachers, balancer=balancer)
            train(config, tmp_path / balancer, progress=False, train_data=train_data)

        # A sharded evaluation of a fixed model.
        model = load_model(teachers[1])
        report["eval"] = evaluate(
            model,
            eval_data,
            EVAL_ATTACKS,
            batch_size=16,
            progress=False,
            rank=rank,
            world_size=WORLD_SIZE,
            attack_overrides=EVAL_OVERRIDES,
        )

        # Errors that need several ranks.
        report["odd_batch"] = _expect_error(
            lambda: train(
                make_config(teachers, batch_size=33), tmp_path / "x", train_data=train_data
            )
        )
        report["sync_bn_cpu"] = _expect_error(
            lambda: train(
                make_config(teachers, sync_bn=True), tmp_path / "y", train_data=train_data
            )
        )
    finally:
        dist.destroy_process_group()
    torch.save(report, out / f"report_rank{rank}.pt")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion():
    test = load_dataset("fashion_mnist", "test", data_dir=FASHION, download=False, progress=False)
    n = N_TRAIN + N_VAL
    return test.subset(torch.arange(n)), test.subset(torch.arange(n, n + N_EVAL))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    paths = []
    for i, role in enumerate(("clean", "adv")):
        torch.manual_seed(10 + i)
        path = root / f"{role}.pt"
        model = models.build_model("small_cnn", num_classes=10, in_channels=1)
        save_model_checkpoint(path, model, arch="small_cnn", num_classes=10, in_channels=1)
        paths.append(str(path))
    return tuple(paths)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, fashion, teachers):
    """Run the two workers once; return the directory holding their runs and dumps."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    (tmp_path / "out").mkdir()
    train_data, eval_data = fashion
    mp.spawn(
        _worker,
        args=(str(tmp_path), _free_port(), train_data, eval_data, teachers),
        nprocs=WORLD_SIZE,
        join=True,
    )
    return tmp_path


def load_dumps(directory: Path, run: str, steps: int) -> list[dict]:
    return [
        torch.load(directory / f"{run}_e{steps}_rank{r}.pt", weights_only=True)
        for r in range(WORLD_SIZE)
    ]


def report(tmp_path: Path, rank: int) -> dict:
    return torch.load(tmp_path / "out" / f"report_rank{rank}.pt", weights_only=True)


def assert_states_equal(a: dict, b: dict) -> None:
    """Bit-identical students (parameters and buffers), balancers and optimizers."""
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    wa, wb = a["weighting"]["state"], b["weighting"]["state"]
    for key in ("weights", "initial_losses", "relative_losses", "history"):
        assert torch.equal(wa[key], wb[key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(
            state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"]
        )


STEPS = 2 * N_TRAIN // 32


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("run", "key"), [("uncertainty", "log_vars"), ("famo", "logits")])
def test_ranks_agree_on_a_learned_or_second_call_balancer(two_ranks, run, key):
    rank0, rank1 = load_dumps(two_ranks / "out", run, STEPS)
    assert_states_equal(rank0, rank1)
    learned = rank0["weighting"]["state"][key]
    assert torch.equal(learned, rank1["weighting"]["state"][key])
    assert bool((learned != 0).all())  # trained


def test_ranks_hold_bit_identical_students_and_balancer_weights(two_ranks):
    rank0, rank1 = load_dumps(two_ranks / "out", "a", STEPS)
    assert_states_equal(rank0, rank1)
    weights = rank0["weighting"]["state"]["history"][:, -3:-1]  # w_adv, w_nat per step
    assert len(weights) == STEPS
    assert not torch.allclose(weights[-1], torch.tensor([0.5, 0.5], dtype=weights.dtype))
    # BatchNorm buffers included: rank 0's were broadcast at the end of each epoch.
    assert any("running_mean" in key for key in rank0["model"])

    # Only rank 0 wrote: one log row per step, and final.pt is the common student.
    with (two_ranks / "a" / "logs" / "steps.csv").open() as f:
        assert len(list(csv.DictReader(f))) == STEPS
    final = safe_load(two_ranks / "a" / "final.pt")
    for key, value in rank0["model"].items():
        assert torch.equal(final["state_dict"][key], value), key


def test_train_creates_and_destroys_the_process_group_under_torchrun_variables(two_ranks):
    for rank in range(WORLD_SIZE):
        info = report(two_ranks, rank)
        assert info["a_left_group"]
        assert info["a_result"]["finished"] and info["a_result"]["num_steps"] == STEPS
    finals = [report(two_ranks, rank)["a_result"]["final"] for rank in range(WORLD_SIZE)]
    for final in finals:
        final.pop("time_s")
    assert finals[0] == finals[1]  # the same logged epoch row and validation on both ranks


def test_resumed_run_reaches_the_weights_of_the_uninterrupted_run(two_ranks):
    uninterrupted = load_dumps(two_ranks / "out", "a", STEPS)
    half = load_dumps(two_ranks / "out", "b", STEPS // 2)  # the run stopped after epoch 1
    resumed = load_dumps(two_ranks / "out", "b", STEPS)
    assert not torch.equal(half[0]["model"]["head.1.weight"], resumed[0]["model"]["head.1.weight"])
    for rank in range(WORLD_SIZE):
        assert_states_equal(uninterrupted[rank], resumed[rank])

    def rows(run: str) -> list[dict[str, str]]:
        with (two_ranks / run / "logs" / "epochs.csv").open() as f:
            return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)]

    assert rows("a") == rows("b")


def test_two_processes_match_one_process_with_the_same_global_batch(
    two_ranks, fashion, teachers, tmp_path, monkeypatch
):
    """What is compared, and why. With the global batch fixed, rank r's k-th batch holds the
    even (r = 0) or odd (r = 1) positions of the single process's k-th batch; DDP averages the
    gradients of the two half-batch means and the balancer averages their losses, so both
    equal the single process's. Two things would differ and are removed: BatchNorm's batch
    statistics (per rank under plain DDP) by a student without BatchNorm, and the attack's
    random start (drawn from each rank's own stream) by ``START_STD = 0``. What remains runs
    the real path: the attack goes through the DDP module, the sharded loader, the averaged
    balancer and the sharded validation. Float sums in another order leave rounding
    differences, hence the tolerances.
    """
    monkeypatch.setitem(models.MODELS, "tiny_mlp", tiny_mlp)
    monkeypatch.setattr(steps, "START_STD", 0.0)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(Trainer, "finish", dumping_finish(out, 0))
    train(
        make_config(teachers, student="tiny_mlp"),
        tmp_path / "c",
        progress=False,
        train_data=fashion[0],
    )
    single = torch.load(out / f"c_e{STEPS}_rank0.pt", weights_only=True)
    ranks = load_dumps(two_ranks / "out", "c", STEPS)
    assert_states_equal(ranks[0], ranks[1])

    # Per step: losses, relative losses and weights (the balancer's history rows).
    history = ranks[0]["weighting"]["state"]["history"].numpy()
    expected = single["weighting"]["state"]["history"].numpy()
    assert history.shape == expected.shape == (STEPS, 7)
    np.testing.assert_allclose(history, expected, rtol=1e-5, atol=1e-7)
    for key, value in single["model"].items():
        np.testing.assert_allclose(ranks[0]["model"][key], value, rtol=1e-4, atol=1e-6)

    def rows(directory: Path) -> np.ndarray:
        with (directory / "logs" / "steps.csv").open() as f:
            return np.array([[float(v) for v in r.values()] for r in csv.DictReader(f)])

    # The logged losses are the rank means, i.e. the global-batch losses.
    np.testing.assert_allclose(rows(two_ranks / "c"), rows(tmp_path / "c"), rtol=1e-5, atol=1e-7)


def test_sharded_evaluation_gives_the_single_process_counts(two_ranks, fashion, teachers):
    single = evaluate(
        load_model(teachers[1]),
        fashion[1],
        EVAL_ATTACKS,
        batch_size=16,
        progress=False,
        attack_overrides=EVAL_OVERRIDES,
    )
    assert single["n_examples"] == N_EVAL and single["clean"]["correct"] > 0
    for rank in range(WORLD_SIZE):
        sharded = report(two_ranks, rank)["eval"]
        assert sharded["shard"] == {"rank": rank, "world_size": WORLD_SIZE, "reduced": True}
        assert sharded["n_examples"] == N_EVAL
        assert sharded["clean"] == single["clean"]
        for name in EVAL_ATTACKS:
            for key in ("correct", "adv_correct", "robust", "w_robust"):
                assert sharded["attacks"][name][key] == single["attacks"][name][key], (name, key)


def test_configuration_errors_that_need_several_ranks(two_ranks):
    for rank in range(WORLD_SIZE):
        info = report(two_ranks, rank)
        assert "`batch_size` should be divisible by the world size 2" in info["odd_batch"]
        assert "`sync_bn` should be False on CPU devices" in info["sync_bn_cpu"]
