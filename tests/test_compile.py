"""torch.compile and CUDA graphs: the balancer's device path is one traceable, capturable graph.

On the CPU (always run): ``torch._dynamo.explain`` finds no graph break in a training step
that calls ``step``, and a compiled step gives the eager weights. On a GPU (skipped
without one; ``benchmarks/gpu_checks.py`` runs the same on a lent machine): the whole
training step, ``balancer.step`` included, is captured by ``torch.cuda.graph`` and by
``torch.compile(mode="reduce-overhead")``, replays give the eager weights, and the kernels
one ``step`` launches are counted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo

from anl import (
    FAMO,
    IMTLL,
    AdaptiveLossBalancer,
    ConstantWeights,
    DynamicWeightAverage,
    GeometricLossStrategy,
    RandomLossWeighting,
    ReLoBRaLo,
    SoftAdapt,
    UncertaintyWeighting,
)

pytestmark = pytest.mark.compile

NAMES = ["a", "b", "c"]
RULES = {
    "anl": lambda: AdaptiveLossBalancer(NAMES, beta=2.0, weight_lr=0.3),
    "constant": lambda: ConstantWeights(NAMES, weights=[0.2, 0.3, 0.5]),
}
EVERY_CLASS = {
    **RULES,
    "dwa": lambda: DynamicWeightAverage(NAMES),
    "rlw": lambda: RandomLossWeighting(NAMES),
    "gls": lambda: GeometricLossStrategy(NAMES),
    "softadapt": lambda: SoftAdapt(NAMES),
    "relobralo": lambda: ReLoBRaLo(NAMES),
    "uw": lambda: UncertaintyWeighting(NAMES),
    "imtl_l": lambda: IMTLL(NAMES),
    "famo": lambda: FAMO(NAMES),
}


def _losses(model, x, absent=False):
    out = model(x)
    return {  # positive (FAMO and GLS take logarithms)
        "a": out[:, 0].pow(2).mean() + 0.1,
        "b": (out[:, 1] - 1).abs().mean() + 0.1,
        "c": None if absent else out.pow(2).sum(1).sqrt().mean() + 0.1,
    }


def _training_step(model, weighting, x, absent=False):
    return weighting.step(_losses(model, x, absent))


@pytest.mark.parametrize("rule", sorted(EVERY_CLASS))
@pytest.mark.parametrize("absent", [False, True])
def test_no_graph_break_inside_the_balancer(rule, absent):
    torch.manual_seed(0)
    model, weighting = torch.nn.Linear(4, 3), EVERY_CLASS[rule]()
    weighting.step([1.0, 2.0, 3.0])  # a host step first: the state changes form under compile
    if isinstance(weighting, FAMO):
        weighting.update([0.9, 1.9, 2.9])  # as in training: each step followed by its update
    explanation = dynamo.explain(lambda x: _training_step(model, weighting, x, absent))(
        torch.randn(8, 4)
    )
    reasons = [b.reason for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("absent", [False, True])
def test_no_graph_break_in_famo_update(absent):
    """FAMO's second call, on the losses after the optimiser step, traces as one graph too."""
    torch.manual_seed(0)
    model, famo = torch.nn.Linear(4, 3), FAMO(NAMES)
    famo.step([1.0, 2.0, 3.0])
    famo.update([0.9, 1.9, 2.9])
    x = torch.randn(8, 4)
    famo.step({k: v.detach() for k, v in _losses(model, x, absent).items() if v is not None})

    def update(x):
        return famo.update({k: v for k, v in _losses(model, x, absent).items() if v is not None})

    explanation = dynamo.explain(update)(x)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_compiled_step_gives_the_eager_weights(rule):
    torch.manual_seed(0)
    data = [torch.randn(8, 4) for _ in range(6)]
    results = []
    for compiled in (False, True):
        torch.manual_seed(1)
        model, weighting = torch.nn.Linear(4, 3), RULES[rule]()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

        def step(x, model=model, weighting=weighting):
            return _training_step(model, weighting, x)

        run = torch.compile(step, backend="eager", fullgraph=True) if compiled else step
        for x in data:
            optimizer.zero_grad()
            run(x).backward()
            optimizer.step()
        results.append((weighting.weights.clone(), weighting.history()["weights"]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        torch.as_tensor(results[1][1]), torch.as_tensor(results[0][1]), rtol=1e-12, atol=1e-15
    )


# ----------------------------------------------------------------------------- GPU only
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_setup(seed=0):
    torch.manual_seed(seed)
    device = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3))
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    weighting = AdaptiveLossBalancer(["a", "b", "c"], history_size=0)
    x = torch.randn(256, 16, device=device)

    def step():
        optimizer.zero_grad(set_to_none=False)
        total = _training_step(model, weighting, x)
        total.backward()
        optimizer.step()
        return total

    return model, weighting, step


@cuda
def test_cuda_graph_replays_the_whole_step_with_the_eager_weights():
    _, eager_weighting, eager_step = _gpu_setup()
    _, weighting, step = _gpu_setup()
    warmup, replays = 3, 20
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(replays):
        graph.replay()
    for _ in range(warmup + 1 + replays):
        eager_step()
    torch.cuda.synchronize()
    torch.testing.assert_close(weighting.weights, eager_weighting.weights, rtol=1e-6, atol=1e-9)
    assert int(weighting.num_steps) == warmup + 1 + replays  # counters live on the device


@cuda
def test_reduce_overhead_compile_gives_the_eager_weights():
    _, eager_weighting, eager_step = _gpu_setup()
    _, weighting, step = _gpu_setup()
    compiled = torch.compile(step, mode="reduce-overhead")
    for _ in range(12):
        compiled()
        eager_step()
    torch.cuda.synchronize()
    torch.testing.assert_close(weighting.weights, eager_weighting.weights, rtol=1e-6, atol=1e-9)


@cuda
def test_kernel_launches_per_step_are_counted():
    from torch.profiler import ProfilerActivity, profile

    weighting = AdaptiveLossBalancer(["a", "b", "c"], history_size=0)
    losses = [torch.rand((), device="cuda", requires_grad=True) for _ in range(3)]
    for _ in range(3):
        weighting.step(losses)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        weighting.step(losses)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    print(f"kernels launched by one step (N = 3): {len(kernels)}")
    assert 0 < len(kernels) < 80


@cuda
@pytest.mark.parametrize("history_size", [3, None])
def test_history_on_cuda_reads_back_what_the_cpu_records(history_size):
    """The history of device steps on CUDA (in the ring, or in the unbounded list) reads back
    to the host as the same rows as on the CPU, also after a host step moves the rows out of
    the ring: the ring is allocated on the losses' device and copied to the host to be read."""
    rows = [(2.0, 3.0), (1.0, 2.5), (0.5, 2.0), (0.25, 1.0)]
    histories = []
    for device in ("cpu", "cuda"):
        weighting = AdaptiveLossBalancer(2, weight_lr=0.3, history_size=history_size)
        weighting.supports_host = False
        for row in rows:
            weighting.step([torch.tensor(v, dtype=torch.float64, device=device) for v in row])
        histories.append(weighting.history())
        weighting.supports_host = True
        weighting.step([0.125, 1.0])  # a host step after device rows
        histories.append(weighting.history())
    for cpu, gpu in ((histories[0], histories[2]), (histories[1], histories[3])):
        np.testing.assert_array_equal(gpu["step"], cpu["step"])
        np.testing.assert_array_equal(gpu["applied"], cpu["applied"])
        for key in ("losses", "relative_losses", "weights"):
            assert gpu[key].dtype == np.float64
            np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-12, atol=0)
