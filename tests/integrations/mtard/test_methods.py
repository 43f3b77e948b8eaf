"""Tests of the training methods (anl.integrations.mtard.methods).

Each method is run once on a fixed tiny batch (1 x 6 x 6 images, 3 classes) with a tiny
conv + BatchNorm student and recording teachers. The test then rebuilds, from a copy of the
student taken before the step, what the official code does: which inputs the student saw in
train mode and in which order (BatchNorm's running statistics must equal those of exactly
these forwards), the attack configuration (replayed with an explicit ``pgd`` call and the same
seed), what each teacher saw and in which mode, and the loss values by plain formulas.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from anl import AdaptiveLossBalancer, ConstantWeights
from anl.integrations.mtard.attacks.gradient import pgd
from anl.integrations.mtard.methods.context import MethodContext, check_hyper
from anl.integrations.mtard.methods.losses import kl_sum
from anl.integrations.mtard.methods.registry import (
    ABLATION,
    BASELINES,
    METHOD_ORDER,
    METHODS,
    MethodSpec,
    build_weighting,
)

EPS, STEP, STEPS, SEED = 0.1, 0.03, 3, 1234
B, C = 4, 3


class TinyNet(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU -> linear: 1 x 6 x 6 images, 3 classes."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 4 * 4, C)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class Recorder(nn.Module):
    """A teacher that records each input, its mode and whether autograd was on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple[Tensor, bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.detach().clone(), self.training, torch.is_grad_enabled()))
        return self.net(x)


def batch() -> tuple[Tensor, Tensor]:
    """Random images with saturated pixels: a black top row and a white bottom row, where a
    random start that is not clamped to [0, 1] (MTARD's, TRADES', ARD's) leaves the box."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(B, 1, 6, 6, generator=gen)
    x[:, :, 0, :] = 0.0
    x[:, :, -1, :] = 1.0
    return x, torch.tensor([0, 1, 2, 1])


def make_ctx(hyper: dict[str, Any] | None = None, seed: int = SEED) -> MethodContext:
    student = TinyNet(1)
    clean, adv = Recorder(TinyNet(2)), Recorder(TinyNet(3))
    clean.train()  # the methods must switch the teachers to eval themselves
    adv.train()
    student.eval()  # ... and leave the student in train mode
    return MethodContext(
        student=student,
        clean_teacher=clean,
        adv_teacher=adv,
        eps=EPS,
        step_size=STEP,
        attack_steps=STEPS,
        num_classes=C,
        hyper=hyper or {},
        generator=torch.Generator().manual_seed(seed),
    )


class Run:
    """One method step with everything recorded."""

    def __init__(self, method: str, hyper: dict[str, Any] | None = None) -> None:
        self.x, self.y = batch()
        self.ctx = make_ctx(hyper)
        self.before = copy.deepcopy(self.ctx.student)  # parameters and BN state before the step
        self.forwards: list[tuple[Tensor, bool, bool]] = []
        self.ctx.student.register_forward_hook(
            lambda m, inp, out: self.forwards.append(
                (inp[0].detach().clone(), m.training, torch.is_grad_enabled())
            )
        )
        self.losses = METHODS[method].loss_fn(self.ctx, self.x, self.y)

    @property
    def train_forwards(self) -> list[tuple[Tensor, bool]]:
        return [(x, grad) for x, training, grad in self.forwards if training]

    @property
    def eval_forwards(self) -> list[Tensor]:
        return [x for x, training, _ in self.forwards if not training]

    def replay_attack(self, target: Tensor, **config: Any) -> Tensor:
        """The attack the method should have run, on a copy of the pre-step student."""
        return pgd(
            copy.deepcopy(self.before),
            self.x,
            target,
            eps=EPS,
            step_size=STEP,
            steps=STEPS,
            generator=torch.Generator().manual_seed(SEED),
            **config,
        )

    def train_logits(self, inp: Tensor) -> Tensor:
        """Pre-step student in train mode (outputs do not depend on running statistics)."""
        return copy.deepcopy(self.before).train()(inp)


# --- plain formulas, written independently of losses.py -------------------------------------


def softmax(z: Tensor) -> Tensor:
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def log_softmax(z: Tensor) -> Tensor:
    return z - torch.logsumexp(z, dim=1, keepdim=True)


def plain_kl_official(s: Tensor, t: Tensor, factor: float = 1.0) -> Tensor:
    p = softmax(t)
    return factor * (p * (torch.log(p + 1e-5) - log_softmax(s))).sum() / p.numel()


def plain_ce(s: Tensor, y: Tensor) -> Tensor:
    return -log_softmax(s)[torch.arange(len(y)), y].mean()


def plain_kl_ard(s: Tensor, t: Tensor, temp: float) -> Tensor:
    p = softmax(t / temp)
    return temp**2 * (p * (torch.log(p) - log_softmax(s / temp))).sum() / p.numel()


def plain_kl_trades(s_adv: Tensor, s_clean: Tensor) -> Tensor:
    p = softmax(s_clean)
    return (p * (torch.log(p) - log_softmax(s_adv))).sum() / s_adv.shape[0]


def assert_same(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def assert_bn_equals_forwards(run: Run, inputs: list[Tensor]) -> None:
    """The student's BN state equals that of the pre-step student after exactly ``inputs``."""
    model = copy.deepcopy(run.before).train()
    with torch.no_grad():
        for inp in inputs:
            model(inp)
    bn, ref = run.ctx.student.bn, model.bn
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == len(inputs)
    assert_same(bn.running_mean, ref.running_mean)
    assert_same(bn.running_var, ref.running_var)


def assert_teacher_calls(teacher: nn.Module, expected_inputs: list[Tensor]) -> None:
    assert isinstance(teacher, Recorder)
    assert len(teacher.calls) == len(expected_inputs)
    for (inp, training, grad_enabled), expected in zip(teacher.calls, expected_inputs, strict=True):
        assert not training
        assert not grad_enabled
        assert torch.equal(inp, expected)
    # A teacher in train mode would have updated its BatchNorm statistics.
    assert int(teacher.net.bn.num_batches_tracked) == 0


def assert_gradients_reach_student_only(run: Run) -> None:
    total = sum(run.losses.values())
    total.backward()
    assert all(p.grad is not None for p in run.ctx.student.parameters())
    assert sum(float(p.grad.abs().sum()) for p in run.ctx.student.parameters()) > 0
    for teacher in (run.ctx.clean_teacher, run.ctx.adv_teacher):
        assert all(p.grad is None for p in teacher.parameters())


def assert_common(run: Run, method: str) -> None:
    spec = METHODS[method]
    assert tuple(run.losses) == spec.loss_names
    assert all(v.ndim == 0 and torch.isfinite(v) for v in run.losses.values())
    assert run.ctx.student.training
    assert_gradients_reach_student_only(run)


# --- one test per method ------------------------------------------------------------------------


def test_natural() -> None:
    run = Run("natural")
    assert [torch.equal(x, run.x) for x, _ in run.train_forwards] == [True]
    assert run.eval_forwards == []
    assert_bn_equals_forwards(run, [run.x])
    assert_same(run.losses["ce"], plain_ce(run.train_logits(run.x), run.y))
    assert_teacher_calls(run.ctx.clean_teacher, [])
    assert_teacher_calls(run.ctx.adv_teacher, [])
    assert_common(run, "natural")


def test_sat() -> None:
    run = Run("sat")
    x_adv = run.replay_attack(
        run.y, loss="ce", random_start="uniform", clamp_start=True, model_mode="eval"
    )
    # Attack: STEPS eval forwards, no BN update; then one train forward on x_adv.
    assert len(run.eval_forwards) == STEPS
    assert len(run.train_forwards) == 1
    assert torch.equal(run.train_forwards[0][0], x_adv)
    assert_bn_equals_forwards(run, [x_adv])
    assert (x_adv - run.x).abs().max() <= EPS + 1e-6
    assert_same(run.losses["adv_ce"], plain_ce(run.train_logits(x_adv), run.y))
    assert_common(run, "sat")


def test_trades() -> None:
    run = Run("trades", {"beta": 6.0})
    # The attack target is the student's eval-mode clean prediction; its start is not clamped.
    clean_target = copy.deepcopy(run.before).eval()(run.x).detach()
    x_adv = run.replay_attack(
        clean_target, loss=kl_sum, random_start="normal", clamp_start=False, model_mode="eval"
    )
    # eval: the clean target + STEPS attack steps; train: x (graph), x_adv (graph), x (no grad).
    assert len(run.eval_forwards) == STEPS + 1
    assert torch.equal(run.eval_forwards[0], run.x)
    train = run.train_forwards
    assert [torch.equal(x, e) for (x, _), e in zip(train, [run.x, x_adv, run.x], strict=True)] == [
        True
    ] * 3
    assert [grad for _, grad in train] == [True, True, False]
    assert_bn_equals_forwards(run, [run.x, x_adv, run.x])

    s_nat, s_adv = run.train_logits(run.x), run.train_logits(x_adv)
    assert_same(run.losses["natural"], plain_ce(s_nat, run.y))
    assert_same(run.losses["robust"], plain_kl_trades(s_adv, s_nat))
    # The clean branch is not detached: the robust loss's gradient is the one through both.
    params = list(run.ctx.student.parameters())
    got = torch.autograd.grad(run.losses["robust"], params, retain_graph=True)
    ref_model = copy.deepcopy(run.before).train()
    both = torch.autograd.grad(
        plain_kl_trades(ref_model(x_adv), ref_model(run.x)), list(ref_model.parameters())
    )
    detached = torch.autograd.grad(
        plain_kl_trades(ref_model(x_adv), ref_model(run.x).detach()),
        list(ref_model.parameters()),
    )
    for g, ref in zip(got, both, strict=True):
        assert_same(g, ref)
    assert any(not torch.allclose(g, d, atol=1e-7) for g, d in zip(got, detached, strict=True))
    assert_teacher_calls(run.ctx.clean_teacher, [])
    assert_teacher_calls(run.ctx.adv_teacher, [])
    assert_common(run, "trades")


def test_ard() -> None:
    run = Run("ard", {"temperature": 5.0, "alpha": 0.95})
    x_adv = run.replay_attack(
        run.y, loss="ce", random_start="uniform", clamp_start=False, model_mode="train"
    )
    # Official ARD: the attack runs in train mode, so it updates BN statistics too.
    assert run.eval_forwards == []
    train = [x for x, _ in run.train_forwards]
    assert len(train) == STEPS + 2
    assert torch.equal(train[-2], x_adv) and torch.equal(train[-1], run.x)
    assert_bn_equals_forwards(run, train)
    # The adversarial teacher sees the clean batch only.
    assert_teacher_calls(run.ctx.adv_teacher, [run.x])
    assert_teacher_calls(run.ctx.clean_teacher, [])
    teacher_logits = run.ctx.adv_teacher.net(run.x)
    assert_same(run.losses["kd"], plain_kl_ard(run.train_logits(x_adv), teacher_logits, 5.0))
    assert_same(run.losses["ce"], plain_ce(run.train_logits(run.x), run.y))
    assert_common(run, "ard")


def test_ard_default_temperature_is_30() -> None:
    run = Run("ard")
    x_adv = [x for x, _ in run.train_forwards][-2]
    teacher_logits = run.ctx.adv_teacher.net(run.x).double()
    expected = plain_kl_ard(run.train_logits(x_adv).double(), teacher_logits, 30.0)
    # At T = 30, p and q nearly agree: float32 cancellation leaves ~1e-4 relative error.
    torch.testing.assert_close(run.losses["kd"].double(), expected, rtol=1e-3, atol=0.0)


def test_rslad() -> None:
    run = Run("rslad")
    teacher_logits = run.ctx.adv_teacher.net.eval()(run.x).detach()
    x_adv = run.replay_attack(
        teacher_logits, loss=kl_sum, random_start="normal", clamp_start=False, model_mode="eval"
    )
    assert len(run.eval_forwards) == STEPS
    train = [x for x, _ in run.train_forwards]
    assert len(train) == 2 and torch.equal(train[0], x_adv) and torch.equal(train[1], run.x)
    assert_bn_equals_forwards(run, [x_adv, run.x])
    assert_teacher_calls(run.ctx.adv_teacher, [run.x])  # robust soft labels of clean inputs
    assert_teacher_calls(run.ctx.clean_teacher, [])
    assert_same(run.losses["adv"], plain_kl_official(run.train_logits(x_adv), teacher_logits))
    assert_same(run.losses["nat"], plain_kl_official(run.train_logits(run.x), teacher_logits))
    assert_common(run, "rslad")


@pytest.mark.parametrize("method", ["mtard", "baseline_mt"])
def test_mtard_step(method: str) -> None:
    run = Run(method)
    x_adv = run.replay_attack(
        run.y, loss="ce", random_start="normal", clamp_start=False, model_mode="eval"
    )
    # (2) attack in eval mode: no BN update; (4) train forwards on x_adv, then x.
    assert len(run.eval_forwards) == STEPS
    assert run.forwards[STEPS - 1][1] is False  # the attack comes first
    train = [x for x, _ in run.train_forwards]
    assert len(train) == 2 and torch.equal(train[0], x_adv) and torch.equal(train[1], run.x)
    assert_bn_equals_forwards(run, [x_adv, run.x])
    # (1) clean teacher on x, (3) adversarial teacher on x_adv; eval mode, no grad.
    assert_teacher_calls(run.ctx.clean_teacher, [run.x])
    assert_teacher_calls(run.ctx.adv_teacher, [x_adv])
    t_nat = run.ctx.clean_teacher.net.eval()(run.x)
    t_adv = run.ctx.adv_teacher.net.eval()(x_adv)
    assert_same(run.losses["adv"], plain_kl_official(run.train_logits(x_adv), t_adv))
    assert_same(run.losses["nat"], plain_kl_official(run.train_logits(run.x), t_nat))
    assert_common(run, method)


@pytest.mark.parametrize("method", ["mtard", "baseline_mt", "baseline", "rslad"])
def test_kl_factor_scales_every_official_kl(method: str) -> None:
    one, ten = Run(method), Run(method, {"kl_factor": 10.0})
    for name in METHODS[method].loss_names:
        assert_same(ten.losses[name], 10 * one.losses[name])


def test_ard_temperature_reaches_the_distillation_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """T = 30 by default (the official CIFAR-10 code), the hyperparameter otherwise."""
    from anl.integrations.mtard.methods import steps

    seen: list[float] = []
    original = steps.kl_ard

    def spy(s: Tensor, t: Tensor, temperature: float) -> Tensor:
        seen.append(temperature)
        return original(s, t, temperature)

    monkeypatch.setattr(steps, "kl_ard", spy)
    Run("ard")
    Run("ard", {"temperature": 5.0})
    assert seen == [30.0, 5.0]


def _mode_recorder(into: list[bool]):
    """A forward hook appending the module's ``training`` flag to ``into``."""
    return lambda module, inputs, output: into.append(module.training)


@pytest.mark.parametrize(
    "method", ["sat", "trades", "ard", "rslad", "baseline", "baseline_mt", "mtard"]
)
def test_the_attack_runs_in_the_official_mode_whatever_mode_the_student_is_in(method: str) -> None:
    """A training loop leaves the student in train mode between steps: the eval-mode attacks
    must still attack in eval mode (no BatchNorm update), ARD's in train mode."""
    x, y = batch()
    for start_in_train_mode in (True, False):
        ctx = make_ctx()
        ctx.student.train(start_in_train_mode)
        modes: list[bool] = []
        ctx.student.register_forward_hook(_mode_recorder(modes))
        METHODS[method].loss_fn(ctx, x, y)
        attack = modes[1 : STEPS + 1] if method == "trades" else modes[:STEPS]
        assert attack == [method == "ard"] * STEPS, (method, start_in_train_mode)
        assert ctx.student.training


def test_eval_mode_attacks_run_on_the_eval_attack_model() -> None:
    """``ctx.eval_attack_model(x)`` gives the module an eval-mode attack runs on (the folded
    view of the student in training); it is called with the clean batch, once per attack,
    and never for ARD's train-mode attack."""
    x, y = batch()
    for method in ("sat", "trades", "rslad", "baseline", "mtard", "ard"):
        reference = Run(method)  # the attack on the student itself
        ctx = make_ctx()
        calls: list[Tensor] = []
        stand_in_forwards: list[bool] = []
        stand_in = copy.deepcopy(ctx.student)
        stand_in.register_forward_hook(_mode_recorder(stand_in_forwards))

        def view(inp: Tensor, stand_in=stand_in, calls=calls) -> nn.Module:
            calls.append(inp.detach().clone())
            return stand_in

        ctx.eval_attack_model = view
        student_forwards: list[bool] = []
        ctx.student.register_forward_hook(_mode_recorder(student_forwards))
        losses = METHODS[method].loss_fn(ctx, x, y)
        if method == "ard":
            assert calls == [] and stand_in_forwards == []
            continue
        assert len(calls) == 1 and torch.equal(calls[0], x), method
        assert stand_in_forwards == [False] * STEPS, method  # the attack ran on the stand-in
        # The student itself ran in eval mode only for TRADES' clean target (not an attack).
        assert student_forwards.count(False) == (1 if method == "trades" else 0), method
        # The stand-in computes the student's function: the same losses.
        for name, value in losses.items():
            assert torch.equal(value, reference.losses[name]), (method, name)


@pytest.mark.parametrize(
    ("method", "names"),
    [
        ("rslad", ("adv", "nat")),
        ("baseline", ("adv",)),
        ("baseline_mt", ("adv", "nat")),
        ("ard", ("kd",)),
    ],
)
def test_every_distillation_method_takes_a_kl_factor(method, names) -> None:
    """The KL-scale control of the reports (issue #22): ``kl_factor`` scales exactly the KL
    terms, nothing else (ARD's CE is untouched)."""
    one, ten = Run(method), Run(method, {"kl_factor": 10.0})
    for name in names:
        assert_same(ten.losses[name], 10 * one.losses[name])
    if method == "ard":
        assert_same(ten.losses["ce"], one.losses["ce"])


def test_baseline() -> None:
    run = Run("baseline")
    x_adv = run.replay_attack(
        run.y, loss="ce", random_start="normal", clamp_start=False, model_mode="eval"
    )
    assert len(run.eval_forwards) == STEPS
    train = [x for x, _ in run.train_forwards]
    assert len(train) == 1 and torch.equal(train[0], x_adv)
    assert_bn_equals_forwards(run, [x_adv])
    assert_teacher_calls(run.ctx.adv_teacher, [x_adv])
    assert_teacher_calls(run.ctx.clean_teacher, [])
    t_adv = run.ctx.adv_teacher.net.eval()(x_adv)
    assert_same(run.losses["adv"], plain_kl_official(run.train_logits(x_adv), t_adv))
    assert_common(run, "baseline")


def test_ablation_steps_share_mtard_attack_and_adv_loss() -> None:
    """Baseline, Baseline+MT and MTARD all attack the student alike and distil the adversarial
    teacher on x' alike (paper Sec. 4.3): each is checked against the plain formula, not
    against the others (two of them share a helper, so comparing them would prove nothing)."""
    expected = None
    for method in ("baseline", "baseline_mt", "mtard"):
        run = Run(method)
        x_adv = run.replay_attack(
            run.y, loss="ce", random_start="normal", clamp_start=False, model_mode="eval"
        )
        t_adv = run.ctx.adv_teacher.net.eval()(x_adv)
        value = plain_kl_official(run.train_logits(x_adv), t_adv)
        assert_same(run.losses["adv"], value)
        expected = value if expected is None else expected
        assert_same(value, expected)  # the same attack and teacher for the three
    assert set(Run("baseline").losses) == {"adv"}


def test_generator_makes_the_step_deterministic() -> None:
    x, y = batch()
    a = METHODS["mtard"].loss_fn(make_ctx(seed=5), x, y)
    b = METHODS["mtard"].loss_fn(make_ctx(seed=5), x, y)
    c = METHODS["mtard"].loss_fn(make_ctx(seed=6), x, y)
    assert torch.equal(a["adv"], b["adv"]) and torch.equal(a["nat"], b["nat"])
    assert not torch.equal(a["adv"], c["adv"])


# --- training over several steps: the weights ---------------------------------------------------


def train(method: str, steps: int = 5) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """``steps`` training steps of ``method``: per step, the two losses (as the weighting saw
    them), the weights after the step and the total it returned."""
    ctx = make_ctx()
    spec = METHODS[method]
    weighting = build_weighting(spec)
    opt = torch.optim.SGD(ctx.student.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    losses, weights, totals = [], [], []
    for _ in range(steps):
        x = torch.rand(B, 1, 6, 6, generator=gen)
        y = torch.randint(0, C, (B,), generator=gen)
        named = spec.loss_fn(ctx, x, y)
        total = weighting.step(named)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append([float(named[name].detach()) for name in spec.loss_names])
        weights.append(weighting.weights.tolist())
        totals.append(float(total.detach()))
    return losses, weights, totals


def test_mtard_weights_follow_eq_10_11_by_hand_and_baseline_mt_weights_stay_put() -> None:
    """MTARD's weights are ANL's Eq. 10-11 with the paper's r_w = 0.025 and beta = 1, worked
    out here from the losses of each step: the loss whose relative value L(t)/L(0) is larger
    (the one that fell less) pulls the weights toward it. Baseline+MT keeps 0.5 / 0.5."""
    losses, weights, totals = train("mtard")
    (adv0, nat0), w_adv = losses[0], 0.5
    for (adv, nat), (got_adv, got_nat), total in zip(losses, weights, totals, strict=True):
        rel_adv, rel_nat = adv / adv0, nat / nat0
        r_adv = rel_adv / (rel_adv + rel_nat)  # Eq. 10 with beta = 1
        previous, w_adv = w_adv, 0.025 * r_adv + 0.975 * w_adv  # Eq. 11
        assert got_adv == pytest.approx(w_adv, abs=1e-15)
        assert got_nat == pytest.approx(1.0 - w_adv, abs=1e-15)
        # The direction: w_adv moves toward r_adv, so it rises iff adv's relative loss is the
        # larger one (while the weights are near 1/2, as here).
        assert (got_adv > previous) == (rel_adv > rel_nat) or rel_adv == rel_nat
        # The step's total weights the step's losses with the weights it just computed.
        assert total == pytest.approx(got_adv * adv + got_nat * nat, rel=1e-6)
    # In this run the adversarial loss falls less than the natural one: it gains weight.
    assert losses[-1][0] / adv0 > losses[-1][1] / nat0
    assert weights[-1][0] > 0.5 + 1e-4 > weights[-1][1] + 2e-4
    losses, weights, totals = train("baseline_mt")
    for (adv, nat), w, total in zip(losses, weights, totals, strict=True):
        assert w == [0.5, 0.5]
        assert total == pytest.approx(0.5 * adv + 0.5 * nat, rel=1e-6)


def test_anl_gives_more_weight_to_the_loss_that_fell_less() -> None:
    """The balancer MTARD builds, on losses chosen by hand: nat falls to 40 % of its first
    value, adv to 80 % (L~ = (0.8, 0.4), r = (2/3, 1/3)): w_adv = 0.025 * 2/3 + 0.975 * 0.5."""
    weighting = build_weighting("mtard")
    weighting.step({"adv": torch.tensor(2.0), "nat": torch.tensor(1.0)})
    assert weighting.weights.tolist() == [0.5, 0.5]
    total = weighting.step({"adv": torch.tensor(1.6), "nat": torch.tensor(0.4)})
    w_adv = 0.025 * 2 / 3 + 0.975 * 0.5
    assert weighting.weights.tolist() == pytest.approx([w_adv, 1 - w_adv], abs=1e-15)
    assert float(total) == pytest.approx(w_adv * 1.6 + (1 - w_adv) * 0.4, rel=1e-6)
    swapped = build_weighting("mtard")  # the mirror image: nat fell less, nat gains
    swapped.step({"adv": torch.tensor(2.0), "nat": torch.tensor(1.0)})
    swapped.step({"adv": torch.tensor(0.8), "nat": torch.tensor(0.8)})
    assert swapped.weights.tolist() == pytest.approx([1 - w_adv, w_adv], abs=1e-15)


# --- build_weighting and the specs ----------------------------------------------------------------


def test_method_registry() -> None:
    assert set(METHODS) == {
        "natural",
        "sat",
        "trades",
        "ard",
        "rslad",
        "baseline",
        "baseline_mt",
        "mtard",
    }
    for name, spec in METHODS.items():
        assert isinstance(spec, MethodSpec) and spec.name == name
        if spec.weighting != "anl":
            assert len(spec.weighting) == len(spec.loss_names)
    assert METHODS["mtard"].teachers == METHODS["baseline_mt"].teachers == ("clean", "adv")
    assert METHODS["baseline"].teachers == METHODS["rslad"].teachers == ("adv",)
    assert METHODS["ard"].teachers == ("adv",)
    assert (
        METHODS["sat"].teachers == METHODS["trades"].teachers == METHODS["natural"].teachers == ()
    )
    # The labels, groups and order the report reads from the specs.
    assert tuple(METHODS) == METHOD_ORDER and METHOD_ORDER[-1] == "mtard"
    assert BASELINES == ("sat", "trades", "ard", "rslad")
    assert ABLATION == ("baseline", "baseline_mt", "mtard")
    assert [METHODS[m].label for m in METHOD_ORDER] == [
        "Natural", "SAT", "TRADES", "ARD", "RSLAD", "Baseline", "Baseline+MT", "MTARD"
    ]  # fmt: skip
    assert [METHODS[m].ablation_label for m in ABLATION] == [
        "Baseline", "Baseline+MT", "Baseline+MT+ANL (MTARD)"
    ]  # fmt: skip
    assert METHODS["sat"].ablation_label is None


@pytest.mark.parametrize(
    ("method", "hyper", "weights"),
    [
        ("natural", None, (1.0,)),
        ("sat", None, (1.0,)),
        ("trades", None, (1.0, 6.0)),
        ("trades", {"beta": 3.0}, (1.0, 3.0)),
        ("ard", None, (1.0, 0.0)),
        ("ard", {"alpha": 0.95, "temperature": 5.0}, (0.95, 0.05)),
        ("rslad", None, (5 / 6, 1 / 6)),
        ("baseline", None, (1.0,)),
        ("baseline_mt", None, (0.5, 0.5)),
    ],
)
def test_build_weighting_constant(method: str, hyper: Any, weights: tuple[float, ...]) -> None:
    weighting = build_weighting(METHODS[method], hyper=hyper)
    assert isinstance(weighting, ConstantWeights)
    assert not isinstance(weighting, AdaptiveLossBalancer)
    assert weighting.names == METHODS[method].loss_names
    assert torch.allclose(
        torch.as_tensor(weighting.weights, dtype=torch.float64),
        torch.tensor(weights, dtype=torch.float64),
    )


def test_build_weighting_anl() -> None:
    weighting = build_weighting("mtard", weight_lr=0.1, beta=2.0, history_size=7)
    assert isinstance(weighting, AdaptiveLossBalancer)
    assert weighting.names == ("adv", "nat")
    assert weighting.weight_lr == pytest.approx(0.1)
    # beta = 2 on relative losses (2, 1): r = (4/5, 1/5); w = 0.1 r + 0.9 * 0.5.
    weighting.step([1.0, 1.0])
    weighting.step([2.0, 1.0])
    assert list(weighting.weights) == pytest.approx([0.1 * 0.8 + 0.45, 0.1 * 0.2 + 0.45])
    assert weighting.history_size == 7
    default = build_weighting(METHODS["mtard"])
    assert default.weight_lr == 0.025 and default.beta == 1.0  # the paper's r_w and beta
    assert build_weighting("trades", history_size=3, strict=True).history_size == 3
    assert build_weighting("trades", strict=True).strict


def test_build_weighting_errors() -> None:
    with pytest.raises(
        ValueError, match=re.escape("Parameter `spec` should be a MethodSpec or one of ['ard', ")
    ):
        build_weighting("madry")
    with pytest.raises(ValueError, match=re.escape("Found `spec = 'madry'`")):
        build_weighting("madry")
    with pytest.raises(ValueError, match=re.escape("hyper['kl_factor']")):
        build_weighting("mtard", hyper={"kl_factor": -1.0})  # ANL methods check theirs too
    with pytest.raises(ValueError, match=re.escape("['beta']")):
        build_weighting("ard", hyper={"beta": 1.0})
    with pytest.raises(ValueError, match=re.escape("hyper['alpha']")):
        build_weighting("ard", hyper={"alpha": 1.5})
    with pytest.raises(ValueError, match=re.escape("hyper['beta']")):
        build_weighting("trades", hyper={"beta": -1.0})
    with pytest.raises(ValueError, match="anl"):
        METHODS["mtard"].constant_weights()


def test_resolve_hyper() -> None:
    assert METHODS["trades"].resolve_hyper() == {"beta": 6.0}
    assert METHODS["mtard"].resolve_hyper({"kl_factor": 10}) == {"kl_factor": 10.0}
    with pytest.raises(ValueError, match=re.escape("hyper['kl_factor']")):
        METHODS["mtard"].resolve_hyper({"kl_factor": 0.0})
    with pytest.raises(ValueError, match="temperature"):
        METHODS["mtard"].resolve_hyper({"temperature": 5.0})


# --- argument errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "role"),
    [
        ("mtard", "clean_teacher"),
        ("mtard", "adv_teacher"),
        ("baseline_mt", "clean_teacher"),
        ("baseline", "adv_teacher"),
        ("rslad", "adv_teacher"),
        ("ard", "adv_teacher"),
    ],
)
def test_missing_teacher(method: str, role: str) -> None:
    ctx = make_ctx()
    setattr(ctx, role, None)
    x, y = batch()
    message = (
        f"`ctx.{role}` should be an nn.Module for method '{method}'. Found `ctx.{role} = None`"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        METHODS[method].loss_fn(ctx, x, y)


def test_invalid_hyper_in_loss_fn() -> None:
    x, y = batch()
    with pytest.raises(ValueError, match=re.escape("hyper['temperature']")):
        METHODS["ard"].loss_fn(make_ctx({"temperature": 0.0}), x, y)


CONTEXT = {
    "clean_teacher": None,
    "adv_teacher": None,
    "eps": 0.1,
    "step_size": 0.01,
    "attack_steps": 2,
    "num_classes": 3,
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eps", -0.1),
        ("eps", float("inf")),
        ("step_size", 0.0),
        ("step_size", float("nan")),
        ("attack_steps", -1),
        ("attack_steps", 2.0),
        ("attack_steps", True),
        ("num_classes", 1),
    ],
)
def test_context_validation(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"`{field}"):
        MethodContext(student=TinyNet(0), **{**CONTEXT, field: value})


@pytest.mark.parametrize(
    ("field", "value"), [("eps", 0.0), ("attack_steps", 0), ("num_classes", 2)]
)
def test_context_accepts_the_boundaries(field: str, value: Any) -> None:
    """No attack (eps = 0 or no step) and two classes are valid settings."""
    ctx = MethodContext(student=TinyNet(0), **{**CONTEXT, field: value})
    assert getattr(ctx, field) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kl_factor", "ten"),
        ("kl_factor", True),
        ("alpha", "half"),
        ("beta", None),
        ("temperature", object()),
    ],
)
def test_a_hyperparameter_that_is_not_a_number_is_a_value_error(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"hyper['{name}']")):
        check_hyper(name, value)
    assert check_hyper(name, "0.5") == 0.5  # a numeric string is a number
