"""Two gloo processes: the balancer averages detached losses so both ranks hold the same weights."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anl import AdaptiveLossBalancer

# Per-rank loss values: rank k sees TRAJECTORY * (1 + k), so the cross-rank mean is 1.5 x.
TRAJECTORY = [[2.0, 1.0, 4.0], [1.5, 0.9, 3.0], [1.0, 0.95, 2.0], [0.7, 0.5, 2.5]]


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        for distributed in (True, False):
            balancer = AdaptiveLossBalancer(3, beta=2.0, weight_lr=0.3, distributed=distributed)
            for row in TRAJECTORY:
                balancer.step([torch.tensor(v * (1 + rank), dtype=torch.float64) for v in row])
            torch.save(balancer.weights, f"{out_dir}/rank{rank}_{distributed}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_hold_identical_weights_equal_to_the_global_mean(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    rank0, rank1 = load("rank0_True.pt"), load("rank1_True.pt")
    assert torch.equal(rank0, rank1)

    single = AdaptiveLossBalancer(3, beta=2.0, weight_lr=0.3)
    for row in TRAJECTORY:
        single.step([torch.tensor(v * 1.5, dtype=torch.float64) for v in row])
    np.testing.assert_allclose(rank0.numpy(), single.weights.numpy(), rtol=1e-12)

    # The opt-out keeps each rank's own weights (rank 1's losses are 2x rank 0's: the relative
    # losses and hence the weights coincide, which shows scale-freedom across ranks too).
    own0, own1 = load("rank0_False.pt"), load("rank1_False.pt")
    np.testing.assert_allclose(own0.numpy(), own1.numpy(), rtol=1e-12)
