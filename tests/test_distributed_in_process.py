"""anl.distributed in one process: ranks as threads meeting in a simulated ``all_reduce``.

The two-process gloo tests (``test_distributed_balancer.py``, ``rules/test_*_distributed.py``)
check the real thing; these check the same arithmetic in a few milliseconds and, being
in-process, are the ones a mutation tool sees (it cannot follow spawned ranks). The simulated
collective combines the ranks' tensors with the reduction it is asked for (a MAX where a SUM
belongs gives a different answer), checks the group and, for the ``"nccl"`` backend, that the
tensor sits on a CUDA device, as NCCL requires. The ranks' losses are not proportional (ANL is
scale-free, so proportional losses would hide a sum, a max or a dropped reduction).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

import anl.distributed as anl_dist
from anl import FAMO, AdaptiveLossBalancer, ConstantWeights
from anl.distributed import (
    device_mean_across_ranks,
    host_mean_across_ranks,
    is_distributed,
    mean_across_ranks,
    sum_across_ranks,
)

GROUP = object()  # a process group handle, passed through to every collective

_REDUCE = {
    dist.ReduceOp.SUM: lambda s: s.sum(0),
    dist.ReduceOp.PRODUCT: lambda s: s.prod(0),
    dist.ReduceOp.MAX: lambda s: s.amax(0),
    dist.ReduceOp.MIN: lambda s: s.amin(0),
}


class FakeWorld:
    """The part of ``torch.distributed`` that anl.distributed uses, for ``size`` thread-ranks."""

    ReduceOp = dist.ReduceOp

    def __init__(
        self,
        size: int,
        *,
        backend: str = "gloo",
        available: bool = True,
        initialized: bool = True,
        group: object | None = None,
        world_size: int | None = None,
    ) -> None:
        self.size, self.backend, self.group = size, backend, group
        # The default group's size; a subgroup (``group``) of the ``size`` thread-ranks may
        # sit in a larger world.
        self.world_size = size if world_size is None else world_size
        self.available, self.initialized = available, initialized
        self.calls = 0
        self._rank = threading.local()
        self._barrier = threading.Barrier(size)
        self._slots: list[torch.Tensor | None] = [None] * size

    def _check_group(self, group: object | None) -> None:
        assert group is self.group, f"collective on group {group!r}, expected {self.group!r}"

    # -- the torch.distributed API -------------------------------------------------------------
    def is_available(self) -> bool:
        return self.available

    def is_initialized(self) -> bool:
        assert self.available, "is_initialized() called while torch.distributed is unavailable"
        return self.initialized

    def get_world_size(self, group: object | None = None) -> int:
        assert self.initialized, "get_world_size() called before init_process_group()"
        if group is None:
            return self.world_size
        self._check_group(group)
        return self.size

    def get_backend(self, group: object | None = None) -> str:
        self._check_group(group)
        return self.backend

    def all_reduce(self, tensor: torch.Tensor, op: Any = dist.ReduceOp.SUM, group=None) -> None:
        self._check_group(group)
        if self.backend == "nccl":
            assert tensor.device.type == "cuda", "NCCL reduces CUDA tensors only"
        rank = getattr(self._rank, "value", 0)
        self._slots[rank] = tensor.detach().clone()
        self._barrier.wait()
        result = _REDUCE[op](torch.stack([s.as_subclass(torch.Tensor) for s in self._slots]))
        self._barrier.wait()
        if rank == 0:
            self.calls += 1
        tensor.copy_(result)

    # -- running ranks -------------------------------------------------------------------------
    def run(self, fn: Callable[[int], Any]) -> list[Any]:
        """``fn(rank)`` on every rank, each in its own thread; the results in rank order."""
        results: list[Any] = [None] * self.size
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            self._rank.value = rank
            try:
                results[rank] = fn(rank)
            except BaseException as error:  # re-raised in the test's thread
                errors.append(error)
                self._barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        if errors:
            raise errors[0]
        return results


@pytest.fixture
def world(monkeypatch):
    """``world(size, **kw)`` installs a FakeWorld as anl.distributed's torch.distributed."""

    def install(size: int, **kw: Any) -> FakeWorld:
        fake = FakeWorld(size, **kw)
        monkeypatch.setattr(anl_dist, "dist", fake)
        return fake

    return install


# ------------------------------------------------------------------------------ is_distributed
def test_is_distributed_needs_an_initialised_group_of_two_or_more(world):
    assert not is_distributed()  # this process: no process group
    assert world(2).run(lambda rank: is_distributed()) == [True, True]
    assert world(3).run(lambda rank: is_distributed()) == [True] * 3
    assert not world(1).run(lambda rank: is_distributed())[0]
    assert not world(2, initialized=False).run(lambda rank: is_distributed())[0]
    assert not world(2, available=False, initialized=False).run(lambda rank: is_distributed())[0]


# ------------------------------------------------------------------------------ sum and mean
def test_sum_and_mean_across_ranks_reduce_a_copy(world):
    fake = world(3, group=GROUP, world_size=5)
    rows = [[1.0, -2.0, 4.0], [3.0, 5.0, -1.0], [0.5, 0.25, 2.0]]

    def rank_fn(rank):
        values = torch.tensor(rows[rank], dtype=torch.float64)
        total = sum_across_ranks(values, GROUP)
        mean = mean_across_ranks(values, GROUP)
        return values, total, mean

    results = fake.run(rank_fn)
    for rank, (values, total, mean) in enumerate(results):
        assert values.tolist() == rows[rank]  # the input is left alone
        assert total.tolist() == [4.5, 3.25, 5.0]
        np.testing.assert_allclose(mean.numpy(), [1.5, 3.25 / 3, 5.0 / 3], rtol=1e-15)
    assert fake.calls == 2


def test_alone_sum_is_a_copy_and_mean_is_the_values(world):
    values = torch.tensor([1.0, 2.0])
    total = sum_across_ranks(values)
    assert total.tolist() == [1.0, 2.0] and total is not values
    total.add_(1.0)
    assert values.tolist() == [1.0, 2.0]
    assert mean_across_ranks(values) is values
    fake = world(1)
    assert fake.run(lambda rank: sum_across_ranks(values).tolist())[0] == [1.0, 2.0]
    assert fake.calls == 0  # a world of one never communicates


class _HostTensor(torch.Tensor):
    """A CPU tensor that "moves" to CUDA as a :class:`_PretendCuda` (a CPU build has no CUDA)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            target = args[1] if len(args) > 1 else kwargs.get("device")
            if isinstance(target, torch.device) and target.type == "cuda":
                moved = args[0].as_subclass(torch.Tensor).clone().as_subclass(_PretendCuda)
                moved.index = target.index
                return moved
        return super().__torch_function__(func, types, args, kwargs)


class _PretendCuda(torch.Tensor):
    """Data on the host that reports a CUDA device; ``.to`` a CPU device gives a plain tensor."""

    index: int | None = None

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", self.index)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            target = args[1] if len(args) > 1 else kwargs.get("device")
            if isinstance(target, torch.device) and target.type == "cpu":
                return args[0].as_subclass(torch.Tensor).clone()
            raise AssertionError(f"unexpected move of a CUDA tensor: {args[1:]} {kwargs}")
        return super().__torch_function__(func, types, args, kwargs)


def test_nccl_reduces_host_values_on_the_current_cuda_device_and_returns_them_to_the_host(
    world, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    fake = world(2, backend="nccl", group=GROUP, world_size=4)
    rows = [[1.0, 2.0], [10.0, -4.0]]

    def rank_fn(rank):
        values = torch.tensor(rows[rank]).as_subclass(_HostTensor)
        return values, sum_across_ranks(values, GROUP)

    for rank, (values, total) in enumerate(fake.run(rank_fn)):
        assert type(total) is torch.Tensor and total.device.type == "cpu"
        assert total.tolist() == [11.0, -2.0]
        assert values.as_subclass(torch.Tensor).tolist() == rows[rank]
    # The gloo backend reduces host tensors where they are (a move to CUDA would fail here).
    fake = world(2, backend="gloo")
    totals = fake.run(lambda rank: sum_across_ranks(torch.tensor(rows[rank])))
    assert [t.tolist() for t in totals] == [[11.0, -2.0]] * 2


def test_host_mean_averages_each_loss_over_the_ranks_that_have_it(world):
    fake = world(3)
    values = [[1.0, 2.0, 7.0, 9.0], [3.0, 4.0, 8.0, 9.0], [5.0, 9.0, 6.0, 9.0]]
    present = [
        (True, True, False, False),
        (True, False, True, False),
        None,  # every loss given
    ]
    means, seen = zip(
        *fake.run(lambda r: host_mean_across_ranks(values[r], present[r])), strict=True
    )
    # Loss 0: all three ranks; loss 1: ranks 0, 2; loss 2: ranks 1, 2; loss 3: rank 2 only.
    for got in means:
        assert got == [3.0, 5.5, 7.0, 9.0]
    assert set(seen) == {None}  # some rank had every loss
    assert fake.calls == 1  # the sums and the counts in one collective

    fake = world(2)
    rows = [[2.0, 5.0, 1.0], [4.0, 3.0, 1.0]]
    masks = [(True, False, False), (True, True, False)]
    means, seen = zip(*fake.run(lambda r: host_mean_across_ranks(rows[r], masks[r])), strict=True)
    for got, flags in zip(means, seen, strict=True):
        assert got[:2] == [3.0, 3.0] and math.isnan(got[2])
        assert flags == (True, True, False)

    fake = world(2)
    means, seen = zip(*fake.run(lambda r: host_mean_across_ranks(rows[r], None)), strict=True)
    assert means == ([3.0, 4.0, 1.0], [3.0, 4.0, 1.0]) and seen == (None, None)


@pytest.mark.parametrize("masked", [False, True])
def test_device_mean_matches_the_host_mean(world, masked):
    rows = [[2.0, 5.0, 1.0, 0.5], [4.0, 3.0, 1.0, 7.0]]
    masks = [(True, False, False, True), (True, True, False, False)] if masked else [None] * 2

    def rank_fn(rank):
        values = torch.tensor(rows[rank], dtype=torch.float64)
        if masks[rank] is not None:  # absent entries hold garbage, never read
            values = torch.where(torch.tensor(masks[rank]), values, torch.tensor(1e300))
        mask = None if masks[rank] is None else torch.tensor(masks[rank])
        return device_mean_across_ranks(values, mask)

    fake = world(2)
    results = fake.run(rank_fn)
    assert fake.calls == 1
    expected_host = world(2).run(lambda r: host_mean_across_ranks(rows[r], masks[r]))
    for (means, seen), (host_means, host_seen) in zip(results, expected_host, strict=True):
        assert seen.dtype == torch.bool
        flags = host_seen if host_seen is not None else (True,) * 4
        assert seen.tolist() == list(flags)
        np.testing.assert_array_equal(means.numpy(), host_means)
    if masked:
        assert results[0][0].tolist()[:2] == [3.0, 3.0] and math.isnan(results[0][0][2])
        assert results[0][0][3].item() == 0.5


# ------------------------------------------------------------------------------ the weightings
RANK0 = [[2.0, 1.0, 4.0], [1.5, 0.9, 3.0], [1.0, 0.95, 2.0], [0.7, 0.5, 2.5]]
RANK1 = [[1.0, 3.0, 4.0], [0.4, 2.5, 3.5], [0.9, 1.0, 1.0], [0.2, 2.0, 3.0]]
ABSENT = (1, 1, 2)  # rank 1 does not compute loss 2 at step 1


def _rows(rank: int, absent: bool) -> list[list[float | None]]:
    rows = [list(row) for row in (RANK0 if rank == 0 else RANK1)]
    if absent and rank == ABSENT[0]:
        rows[ABSENT[1]][ABSENT[2]] = None
    return rows


def _single(trajectory) -> list[float]:
    balancer = AdaptiveLossBalancer(3, beta=2.0, weight_lr=0.3, distributed=False)
    for row in trajectory:
        balancer.step(row)
    return balancer.weights.tolist()


def _mean_rows(absent: bool) -> list[list[float]]:
    mean = [
        [(a + b) / 2 for a, b in zip(r0, r1, strict=True)]
        for r0, r1 in zip(RANK0, RANK1, strict=True)
    ]
    if absent:
        step, loss = ABSENT[1], ABSENT[2]
        mean[step][loss] = RANK0[step][loss]
    return mean


def _run_balancers(world, path: str, distributed: bool, absent: bool) -> list[list[float]]:
    def rank_fn(rank):
        balancer = AdaptiveLossBalancer(3, beta=2.0, weight_lr=0.3, distributed=distributed)
        balancer.supports_host = path == "host"
        for row in _rows(rank, absent):
            balancer.step(
                [None if v is None else torch.tensor(v, dtype=torch.float64) for v in row]
            )
        return balancer.weights.tolist()

    return world(2).run(rank_fn)


@pytest.mark.parametrize("path", ["host", "device"])
@pytest.mark.parametrize("absent", [False, True])
def test_ranks_hold_the_weights_of_the_cross_rank_mean(world, path, absent):
    rank0, rank1 = _run_balancers(world, path, True, absent)
    assert rank0 == rank1
    np.testing.assert_allclose(rank0, _single(_mean_rows(absent)), rtol=1e-12)
    # Not either rank's own weights (ANL is scale-free: the sum would give the mean's weights
    # unless a loss is absent on a rank, which the `absent` case and the reference of
    # ConstantWeights below tell apart).
    for other in (RANK0, RANK1):
        assert not np.allclose(rank0, _single(other), rtol=1e-6)


@pytest.mark.parametrize("path", ["host", "device"])
def test_distributed_false_keeps_each_ranks_own_weights(world, path):
    rank0, rank1 = _run_balancers(world, path, False, False)
    np.testing.assert_allclose(rank0, _single(RANK0), rtol=1e-12)
    np.testing.assert_allclose(rank1, _single(RANK1), rtol=1e-12)


@pytest.mark.parametrize("path", ["host", "device"])
def test_constant_weights_average_their_reference(world, path):
    def rank_fn(rank):
        weighting = ConstantWeights(3, weights=[1.0, 2.0, 3.0])
        weighting.supports_host = path == "host"
        weighting.step([torch.tensor(v, dtype=torch.float64) for v in (RANK0, RANK1)[rank][0]])
        return weighting.initial_losses.tolist()

    mean = [(a + b) / 2 for a, b in zip(RANK0[0], RANK1[0], strict=True)]
    assert world(2).run(rank_fn) == [mean, mean]


@pytest.mark.parametrize("path", ["host", "device"])
def test_constant_weights_with_distributed_false_keep_each_ranks_reference(world, path):
    def rank_fn(rank):
        weighting = ConstantWeights(3, weights=[1.0, 2.0, 3.0], distributed=False)
        weighting.supports_host = path == "host"
        weighting.step([torch.tensor(v, dtype=torch.float64) for v in (RANK0, RANK1)[rank][0]])
        return weighting.initial_losses.tolist()

    fake = world(2)
    assert fake.run(rank_fn) == [list(RANK0[0]), list(RANK1[0])]
    assert fake.calls == 0  # no collective at all


@pytest.mark.parametrize("path", ["host", "device"])
def test_famo_averages_the_losses_of_both_calls(world, path):
    def famo_logits(rank_rows_fn, distributed):
        def rank_fn(rank):
            famo = FAMO(2, distributed=distributed)
            famo.supports_host = path == "host"
            rows = rank_rows_fn(rank)
            for before, after in itertools.pairwise(rows):
                famo.step([torch.tensor(v, dtype=torch.float64) for v in before])
                famo.update([torch.tensor(v, dtype=torch.float64) for v in after])
            return famo.weights.tolist()

        return rank_fn

    data = [[[2.0, 1.0], [1.5, 0.9], [1.0, 0.7]], [[1.0, 3.0], [0.4, 2.5], [0.3, 2.0]]]
    mean = [
        [(a + b) / 2 for a, b in zip(r0, r1, strict=True)] for r0, r1 in zip(*data, strict=True)
    ]
    rank0, rank1 = world(2).run(famo_logits(lambda rank: data[rank], True))
    assert rank0 == rank1
    (alone,) = world(1).run(famo_logits(lambda rank: mean, True))
    np.testing.assert_allclose(rank0, alone, rtol=1e-12)
    own = world(2).run(famo_logits(lambda rank: data[rank], False))
    assert not np.allclose(own[0], own[1])
