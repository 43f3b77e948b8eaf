"""Our optimised MTARD step computes what the official-style reference step computes.

The benchmark ``step_vs_reference`` times our training path (input-gradient-only attack, frozen
BatchNorm-folded teachers, sync-free balancer) against :class:`benchmarks.reference_mtard.ReferenceMTARD`
(full-backward attack, plain ``no_grad`` teachers, ``.item()`` ANL). A speed-up only counts if
both do the same work: same seed -> identical adversarial examples, the same losses and
weights, and the same parameters after the optimiser step.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from anl.integrations.mtard.methods import steps
from benchmarks.reference_mtard import ReferenceMTARD, official_kl
from benchmarks.workloads import build_workload

SEED = 7


@pytest.fixture(scope="module", params=["contiguous", "channels_last"])
def workload(request):
    # Small CNNs, a small batch and 3 attack steps keep this test well under a second.
    # "channels_last" is the training loop's default on CPU (TrainConfig.memory_format="auto").
    # The attack runs on the student itself, not on its BatchNorm-folded view (the loop's
    # default, TrainConfig.fold_attack_bn): folding changes the rounding, hence possibly a
    # gradient sign, and these tests demand bit-identical adversarial examples.
    # test_benchmarked_pair_agrees_up_to_rounding covers the default.
    return build_workload(
        "fmnist",
        batch_size=16,
        attack_steps=3,
        seed=3,
        memory_format=request.param,
        fold_attack_bn=False,
    )


def _ours_capturing_x_adv(w, student):
    """Our step, with the student's first train-mode input (the adversarial batch) recorded."""
    captured: list[torch.Tensor] = []

    def hook(module, inputs):
        if module.training and not captured:
            captured.append(inputs[0].detach().clone())

    handle = student.register_forward_pre_hook(hook)
    return w.our_step(student=student), captured, handle


def _pair(w):
    """The same initial student for both steps, in our layout (the layout changes rounding,
    hence possibly a gradient sign: both sides use the same one so that they can be equal)."""
    return w.our_student(), w.our_student()


def test_attack_gives_identical_adversarial_examples(workload):
    w = workload
    student, student_ref = _pair(w)
    reference = ReferenceMTARD(
        student_ref,
        w.clean_teacher,
        w.adv_teacher,
        torch.optim.SGD(student.parameters(), lr=0.1),
        eps=w.eps,
        step_size=w.step_size,
        steps=w.attack_steps,
    )
    torch.manual_seed(SEED)
    ours = steps.mtard_attack(w.context(student), w.x_ours, w.y)
    torch.manual_seed(SEED)
    theirs = reference.attack(w.x, w.y)
    assert torch.equal(ours, theirs)
    # The attack moved the batch, stayed in the eps-ball and in [0, 1].
    assert (ours - w.x).abs().max() > 0.5 * w.eps
    assert (ours - w.x).abs().max() <= w.eps + 1e-6
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0


def test_attack_leaves_no_parameter_gradients_unlike_the_reference(workload):
    w = workload
    ours, theirs = _pair(w)
    steps.mtard_attack(w.context(ours), w.x_ours, w.y)
    assert all(p.grad is None for p in ours.parameters())
    reference = ReferenceMTARD(
        theirs,
        w.clean_teacher,
        w.adv_teacher,
        torch.optim.SGD(theirs.parameters(), lr=0.1),
        eps=w.eps,
        step_size=w.step_size,
        steps=w.attack_steps,
    )
    # The reference's full backward fills .grad (then zero_grad clears it): seen via a hook.
    seen = []
    first = next(theirs.parameters())
    first.register_hook(lambda g: seen.append(g))
    reference.attack(w.x, w.y)
    assert len(seen) == w.attack_steps


def test_teachers_are_frozen_folded_and_exact(workload):
    w = workload
    for raw, prepared in ((w.clean_teacher, w.prepared_clean), (w.adv_teacher, w.prepared_adv)):
        assert not prepared.training
        assert all(not p.requires_grad for p in prepared.parameters())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
        with torch.no_grad():
            torch.testing.assert_close(prepared(w.x_ours), raw(w.x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_steps", [2])
def test_same_losses_weights_and_update(workload, num_steps):
    w = workload
    student_ours, student_ref = _pair(w)
    ours, captured, handle = _ours_capturing_x_adv(w, student_ours)
    reference = w.reference_step(student=student_ref)
    for step in range(num_steps):
        captured.clear()
        torch.manual_seed(SEED + step)
        out = ours()
        torch.manual_seed(SEED + step)
        ref = reference()
        assert torch.equal(captured[0], ref["x_adv"]), f"x_adv differs at step {step}"
        for name in ("adv", "nat", "total"):
            torch.testing.assert_close(out[name].detach(), ref[name], rtol=1e-5, atol=1e-7)
        weights = ours.weighting.weights
        torch.testing.assert_close(
            weights, torch.tensor([ref["w_adv"], ref["w_nat"]], dtype=weights.dtype)
        )
        for p, q in zip(student_ours.parameters(), student_ref.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for b, c in zip(student_ours.buffers(), student_ref.buffers(), strict=True):
            torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)
    handle.remove()
    # The step did change the parameters (the comparison is not between two untouched nets).
    moved = max(
        (p - q).abs().max()
        for p, q in zip(student_ours.parameters(), w.student.parameters(), strict=True)
    )
    assert moved > 1e-4


def test_official_kl_matches_the_project_kl():
    generator = torch.Generator().manual_seed(0)
    s = torch.randn(6, 10, generator=generator)
    t = torch.randn(6, 10, generator=generator)
    from anl.integrations.mtard.methods.losses import kl_official

    torch.testing.assert_close(official_kl(s, t), kl_official(s, t))


def test_reference_runs_on_a_network_without_batchnorm():
    # The reference is model-agnostic: any student and teachers mapping images to logits.
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    t = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    ref = ReferenceMTARD(
        student,
        t,
        t,
        torch.optim.SGD(student.parameters(), lr=0.1),
        eps=0.1,
        step_size=0.05,
        steps=2,
    )
    x = torch.rand(4, 1, 4, 4)
    out = ref.step(x, torch.tensor([0, 1, 2, 0]))
    assert out["w_adv"] == pytest.approx(0.5) and out["w_nat"] == pytest.approx(0.5)
    assert (out["x_adv"] - x).abs().max() <= 0.1 + 1e-6


def test_benchmarked_pair_agrees_up_to_rounding():
    # What step_vs_reference times: our step as the loop runs it on CPU (channels-last, the
    # attack on the BatchNorm-folded student) against the reference (contiguous, unfolded).
    # Same losses up to float rounding.
    w = build_workload("fmnist", batch_size=16, attack_steps=3, seed=5)
    student = w.our_student()
    ours, captured, handle = _ours_capturing_x_adv(w, student)
    reference = w.reference_step()
    torch.manual_seed(SEED)
    out = ours()
    torch.manual_seed(SEED)
    ref = reference()
    handle.remove()
    differ = (captured[0] != ref["x_adv"]).float().mean()
    assert differ < 1e-3
    for name in ("adv", "nat", "total"):
        torch.testing.assert_close(out[name].detach(), ref[name], rtol=1e-4, atol=1e-6)


class _HostReads(TorchFunctionMode):
    """Records the tensor operations that read a value back to the host (a device sync)."""

    SYNCING = frozenset(
        {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}
        | {"nonzero", "equal", "allclose", "is_nonzero"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCING:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_our_step_reads_nothing_back_the_reference_does():
    # On a GPU each of these reads is a host-device synchronisation (benchmarks/gpu_checks.py
    # checks the same with torch.cuda.set_sync_debug_mode("error")).
    w = build_workload("fmnist", batch_size=8, attack_steps=2, seed=1)
    ours, reference = w.our_step(), w.reference_step()
    # On a CPU the balancer reads the losses as floats (no sync there); take the path an
    # accelerator takes.
    ours.weighting.supports_host = False
    ours(), reference()  # first steps record L(0)
    with _HostReads() as spy:
        ours()
    assert spy.seen == []
    with _HostReads() as spy:
        reference()
    assert spy.seen.count("item") == 3  # two losses for ANL, the total for logging
