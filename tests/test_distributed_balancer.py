"""Two gloo processes: the weightings average detached losses so both ranks hold the same
weights, equal to one process's on the cross-rank mean; ``distributed=False`` keeps each
rank's own. The ranks' losses are *not* proportional (ANL is scale-free, so proportional
losses would hide a sum, a max or a dropped reduction)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anl import AdaptiveLossBalancer, ConstantWeights

RANK0 = [[2.0, 1.0, 4.0], [1.5, 0.9, 3.0], [1.0, 0.95, 2.0], [0.7, 0.5, 2.5]]
RANK1 = [[1.0, 3.0, 4.0], [0.4, 2.5, 3.5], [0.9, 1.0, 1.0], [0.2, 2.0, 3.0]]
# Rank 1 does not compute loss 2 at step 1: the mean of loss 2 there is rank 0's value.
ABSENT = (1, 1, 2)


def _losses(rank, step, path, absent):
    row = (RANK0 if rank == 0 else RANK1)[step]
    values = [torch.tensor(v, dtype=torch.float64) for v in row]
    if absent and (rank, step) == ABSENT[:2]:
        values[ABSENT[2]] = None
    return values


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        for path in ("host", "device"):
            for distributed in (True, False):
                for absent in (False, True):
                    balancer = AdaptiveLossBalancer(
                        3, beta=2.0, weight_lr=0.3, distributed=distributed
                    )
                    balancer.supports_host = path == "host"
                    for step in range(len(RANK0)):
                        balancer.step(_losses(rank, step, path, absent))
                    name = f"{out_dir}/rank{rank}_{path}_{distributed}_{absent}.pt"
                    torch.save(balancer.weights, name)
        constant = ConstantWeights(3, weights=[1.0, 2.0, 3.0])
        constant.step([torch.tensor(v) for v in (RANK0 if rank == 0 else RANK1)[0]])
        torch.save(constant.initial_losses, f"{out_dir}/rank{rank}_constant.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return lambda name: torch.load(out / name, weights_only=True)


def _single(trajectory):
    balancer = AdaptiveLossBalancer(3, beta=2.0, weight_lr=0.3)
    for row in trajectory:
        balancer.step(row)
    return balancer.weights.numpy()


@pytest.mark.parametrize("path", ["host", "device"])
def test_ranks_hold_identical_weights_equal_to_the_global_mean(results, path):
    rank0, rank1 = results(f"rank0_{path}_True_False.pt"), results(f"rank1_{path}_True_False.pt")
    assert torch.equal(rank0, rank1)
    mean = [
        [(a + b) / 2 for a, b in zip(r0, r1, strict=True)]
        for r0, r1 in zip(RANK0, RANK1, strict=True)
    ]
    np.testing.assert_allclose(rank0.numpy(), _single(mean), rtol=1e-12)
    # Not the sum, nor either rank alone: those give different weights here.
    total = [
        [a + b for a, b in zip(r0, r1, strict=True)] for r0, r1 in zip(RANK0, RANK1, strict=True)
    ]
    assert not np.allclose(_single(total), _single(RANK0))
    assert not np.allclose(rank0.numpy(), _single(RANK0), rtol=1e-6)
    assert not np.allclose(rank0.numpy(), _single(RANK1), rtol=1e-6)


@pytest.mark.parametrize("path", ["host", "device"])
def test_the_opt_out_keeps_each_ranks_own_weights(results, path):
    own0, own1 = results(f"rank0_{path}_False_False.pt"), results(f"rank1_{path}_False_False.pt")
    np.testing.assert_allclose(own0.numpy(), _single(RANK0), rtol=1e-12)
    np.testing.assert_allclose(own1.numpy(), _single(RANK1), rtol=1e-12)


@pytest.mark.parametrize("path", ["host", "device"])
def test_a_loss_absent_on_one_rank_is_averaged_over_the_ranks_that_have_it(results, path):
    rank0, rank1 = results(f"rank0_{path}_True_True.pt"), results(f"rank1_{path}_True_True.pt")
    assert torch.equal(rank0, rank1)
    mean = [
        [(a + b) / 2 for a, b in zip(r0, r1, strict=True)]
        for r0, r1 in zip(RANK0, RANK1, strict=True)
    ]
    step, loss = ABSENT[1], ABSENT[2]
    mean[step][loss] = RANK0[step][loss]
    np.testing.assert_allclose(rank0.numpy(), _single(mean), rtol=1e-12)


def test_constant_weights_average_their_reference_too(results):
    mean = [(a + b) / 2 for a, b in zip(RANK0[0], RANK1[0], strict=True)]
    np.testing.assert_allclose(results("rank0_constant.pt").numpy(), mean, rtol=1e-6)
    assert torch.equal(results("rank0_constant.pt"), results("rank1_constant.pt"))
