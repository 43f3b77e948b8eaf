"""Two gloo processes, one spawn for the five rules of anl.rules: both ranks hold identical
weights, equal to one process's on the cross-rank mean losses, on the host and device paths,
with losses absent on one rank or on both. The ranks' losses are *not* proportional (DWA,
ReLoBRaLo and GLS's weights are scale-free, so proportional losses would hide a sum, a max or
a dropped reduction). The random rules draw the same numbers on both ranks with no broadcast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anl.rules import (
    DynamicWeightAverage,
    GeometricLossStrategy,
    RandomLossWeighting,
    ReLoBRaLo,
    SoftAdapt,
)

RANK0 = [
    [2.0, 1.0, 4.0],
    [1.5, 0.9, 3.0],
    [1.0, 0.95, 2.0],
    [0.7, 0.5, 2.5],
    [0.6, 0.7, 2.0],
    [0.5, 0.4, 1.0],
    [0.55, 0.3, 1.2],
    [0.4, 0.35, 0.9],
]
RANK1 = [
    [1.0, 3.0, 4.0],
    [0.4, 2.5, 3.5],
    [0.9, 1.0, 1.0],
    [0.2, 2.0, 3.0],
    [0.3, 1.5, 2.5],
    [0.35, 1.0, 2.0],
    [0.25, 1.1, 1.5],
    [0.3, 0.8, 1.0],
]
# (rank, step, loss) not computed: loss 2 on rank 1 at step 3 (the mean is rank 0's value),
# and loss 1 at step 5 on both ranks (absent from the mean).
ABSENT = [(1, 3, 2), (0, 5, 1), (1, 5, 1)]

RULES = {
    "dwa": lambda **kw: DynamicWeightAverage(3, window=2, temperature=1.0, **kw),
    "rlw": lambda **kw: RandomLossWeighting(3, seed=17, **kw),
    "gls": lambda **kw: GeometricLossStrategy(3, **kw),
    "softadapt": lambda **kw: SoftAdapt(3, beta=2.0, variant="loss_weighted", order=2, **kw),
    "relobralo": lambda **kw: ReLoBRaLo(3, alpha=0.8, expected_rho=0.5, temperature=0.5, **kw),
}


def _losses(rank, step, absent):
    row = (RANK0 if rank == 0 else RANK1)[step]
    values = [torch.tensor(v, dtype=torch.float64) for v in row]
    for r, s, i in ABSENT if absent else ():
        if (r, s) == (rank, step):
            values[i] = None
    return values


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        for name, factory in RULES.items():
            for path in ("host", "device"):
                for absent in (False, True):
                    rule = factory()
                    rule.supports_host = path == "host"
                    totals = [float(rule.step(_losses(rank, t, absent))) for t in range(8)]
                    result = {
                        "weights": torch.from_numpy(rule.history()["weights"]),
                        "totals": torch.tensor(totals, dtype=torch.float64),
                    }
                    torch.save(result, f"{out_dir}/{name}_{path}_{absent}_rank{rank}.pt")
        own = RULES["relobralo"](distributed=False)
        for t in range(8):
            own.step(_losses(rank, t, False))
        torch.save(own.weights, f"{out_dir}/own_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_rules")
    mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return lambda name: torch.load(out / name, weights_only=True)


def _mean_trajectory(absent):
    mean = []
    for step, (r0, r1) in enumerate(zip(RANK0, RANK1, strict=True)):
        row = []
        for i, (a, b) in enumerate(zip(r0, r1, strict=True)):
            here = [
                (rank, value)
                for rank, value in ((0, a), (1, b))
                if not (absent and (rank, step, i) in ABSENT)
            ]
            row.append(sum(v for _, v in here) / len(here) if here else math.nan)
        mean.append(row)
    return mean


def _single(name, trajectory):
    rule = RULES[name]()
    for row in trajectory:
        rule.step([None if math.isnan(v) else v for v in row])
    return rule.history()["weights"]


@pytest.mark.parametrize("absent", [False, True])
@pytest.mark.parametrize("path", ["host", "device"])
@pytest.mark.parametrize("name", list(RULES))
def test_ranks_agree_and_equal_one_process_on_the_mean(results, name, path, absent):
    rank0 = results(f"{name}_{path}_{absent}_rank0.pt")
    rank1 = results(f"{name}_{path}_{absent}_rank1.pt")
    assert torch.equal(rank0["weights"], rank1["weights"])
    expected = _single(name, _mean_trajectory(absent))
    np.testing.assert_allclose(rank0["weights"].numpy(), expected, rtol=1e-12, atol=1e-300)
    if name != "rlw":  # RLW ignores the losses
        assert not np.allclose(rank0["weights"].numpy(), _single(name, RANK0), rtol=1e-6)
        assert not np.allclose(rank0["weights"].numpy(), _single(name, RANK1), rtol=1e-6)


def test_gls_returns_each_ranks_own_geometric_mean(results):
    for rank, rows in ((0, RANK0), (1, RANK1)):
        totals = results(f"gls_device_False_rank{rank}.pt")["totals"].numpy()
        np.testing.assert_allclose(totals, [np.prod(r) ** (1 / 3) for r in rows], rtol=1e-12)


def test_the_opt_out_keeps_each_ranks_own_weights(results):
    for rank, rows in ((0, RANK0), (1, RANK1)):
        np.testing.assert_allclose(
            results(f"own_rank{rank}.pt").numpy(), _single("relobralo", rows)[-1], rtol=1e-12
        )
