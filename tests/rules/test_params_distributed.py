"""Two gloo processes, one spawn for the three rules with parameters or a second call.

- Uncertainty weighting inside the DDP-wrapped model, and IMTL-L outside it with its
  gradients all-reduced by hand: the ranks keep identical ``s`` and models (and without
  either, they drift apart: the test can fail).
- FAMO: both calls average the losses, so the logits are identical on the ranks and equal
  to one process's fed the cross-rank means; its total's gradient, averaged, is FAMO's on
  the global batch (not the mean of each rank's FAMO gradient).
The ranks' data differ, and not proportionally.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from anl import FAMO, IMTLL, UncertaintyWeighting
from anl.testing import oracles

try:
    from . import _params_helpers as helpers
except ImportError:
    import _params_helpers as helpers

STEPS = 4
F64 = torch.float64
COEFFICIENTS = [[1.0, 4.0], [3.0, 0.5]]  # rank k's losses c_k * x in the FAMO gradient check


def _losses(out):
    return [out[:, 0].pow(2).mean(), (out[:, 1] - 1).abs().mean()]


def _learned(rank, world_size, data, path, mode):
    """Train a Linear body with a learned-scale weighting; ``mode`` says how s is synced."""
    torch.manual_seed(0)
    if mode == "inside":
        model = helpers.Net(UncertaintyWeighting(2))
        model.weighting.supports_host = path == "host"
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
        for t in range(STEPS):
            optimizer.zero_grad()
            ddp(data[t]).backward()
            optimizer.step()
        return model.weighting.log_vars, model.body.weight
    body = DistributedDataParallel(torch.nn.Linear(2, 2, dtype=F64))
    weighting = IMTLL(2)
    weighting.supports_host = path == "host"
    optimizer = torch.optim.SGD([*body.parameters(), *weighting.parameters()], lr=0.05)
    for t in range(STEPS):
        optimizer.zero_grad()
        weighting.step(_losses(body(data[t]))).backward()
        if mode == "all_reduce":
            for parameter in weighting.parameters():
                dist.all_reduce(parameter.grad)
                parameter.grad /= world_size
        optimizer.step()
    return weighting.log_scales, body.module.weight


def _famo(data, path):
    torch.manual_seed(0)
    body = DistributedDataParallel(torch.nn.Linear(2, 2, dtype=F64))
    famo = FAMO(2, weight_lr=0.1, gamma=0.01)
    famo.supports_host = path == "host"
    optimizer = torch.optim.SGD(body.parameters(), lr=0.05)
    before, after = [], []
    for t in range(STEPS):
        losses = _losses(body(data[t]))
        before.append([v.item() for v in losses])
        optimizer.zero_grad()
        famo.step(losses).backward()
        optimizer.step()
        with torch.no_grad():
            losses = _losses(body(data[t]))
        after.append([v.item() for v in losses])
        famo.update(losses)
    return {
        "logits": famo.logits,
        "weights": famo.weights,
        "body": body.module.weight.detach().clone(),
        "before": torch.tensor(before, dtype=F64),
        "after": torch.tensor(after, dtype=F64),
    }


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        generator = torch.Generator().manual_seed(10 + rank)
        data = torch.randn(STEPS, 6, 2, dtype=F64, generator=generator) * (1 + 2 * rank)
        results = {}
        for path in ("host", "device"):
            for mode in ("inside", "all_reduce", "neither"):
                s, weight = _learned(rank, world_size, data, path, mode)
                results[f"{mode}_{path}"] = (s.detach().clone(), weight.detach().clone())
            results[f"famo_{path}"] = _famo(data, path)
        x = torch.ones(2, dtype=F64, requires_grad=True)
        famo = FAMO(2)
        c = COEFFICIENTS[rank]
        total = famo.step([c[0] * x[0], c[1] * x[1]])
        total.backward()
        dist.all_reduce(x.grad)
        results["gradient"] = (x.grad / world_size, total.detach())
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_params")
    mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{k}.pt", weights_only=True) for k in range(2)]


@pytest.mark.parametrize("path", ["host", "device"])
@pytest.mark.parametrize("mode", ["inside", "all_reduce"])
def test_learned_scales_stay_identical_when_their_gradients_are_averaged(ranks, path, mode):
    (s0, w0), (s1, w1) = ranks[0][f"{mode}_{path}"], ranks[1][f"{mode}_{path}"]
    assert torch.equal(s0, s1) and torch.equal(w0, w1)
    assert not torch.equal(s0, torch.zeros(2, dtype=F64))  # s did train


@pytest.mark.parametrize("path", ["host", "device"])
def test_without_averaging_the_ranks_drift_apart(ranks, path):
    """What the documentation warns about: DDP of the model alone does not cover s."""
    (s0, w0), (s1, w1) = ranks[0][f"neither_{path}"], ranks[1][f"neither_{path}"]
    assert not torch.equal(s0, s1)
    assert torch.equal(w0, w1)  # the model itself is still synced by DDP


@pytest.mark.parametrize("path", ["host", "device"])
def test_famo_logits_are_identical_and_those_of_the_cross_rank_means(ranks, path):
    r0, r1 = ranks[0][f"famo_{path}"], ranks[1][f"famo_{path}"]
    for key in ("logits", "weights", "body"):
        assert torch.equal(r0[key], r1[key]), key
    assert not torch.equal(r0["before"], r1["before"])
    single = FAMO(2, weight_lr=0.1, gamma=0.01)
    for before, after in zip(
        (r0["before"] + r1["before"]) / 2, (r0["after"] + r1["after"]) / 2, strict=True
    ):
        single.step(before.tolist())
        single.update(after.tolist())
    np.testing.assert_allclose(r0["logits"], single.logits, rtol=1e-12, atol=1e-15)
    alone = FAMO(2, weight_lr=0.1, gamma=0.01)
    for before, after in zip(r0["before"], r0["after"], strict=True):
        alone.step(before.tolist())
        alone.update(after.tolist())
    assert not np.allclose(r0["logits"], alone.logits, rtol=1e-6)


def test_famo_total_has_the_global_batch_gradient(ranks):
    """Rank k's losses are c_k * x: the averaged gradient is w(mean L) * mean c, FAMO's on the
    global batch, and both ranks report the global objective's value."""
    (grad0, total0), (grad1, total1) = ranks[0]["gradient"], ranks[1]["gradient"]
    assert torch.equal(grad0, grad1) and torch.equal(total0, total1)
    mean_c = np.mean(COEFFICIENTS, axis=0)
    want = oracles.reference_famo([mean_c], [None])
    np.testing.assert_allclose(grad0, want["gradient_weights"][0] * mean_c, rtol=1e-12)
    np.testing.assert_allclose(total0, want["totals"][0], rtol=1e-12)
    # Each rank's own FAMO gradient, averaged, would differ: the check is not vacuous.
    per_rank = [
        oracles.reference_famo([c], [None])["gradient_weights"][0] * c for c in COEFFICIENTS
    ]
    assert not np.allclose(np.mean(per_rank, axis=0), grad0, rtol=1e-3)
