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
from anl.integrations.mtard.methods.context import MethodContext
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
    gen = torch.Generator().manual_seed(0)
    return torch.rand(B, 1, 6, 6, generator=gen), torch.tensor([0, 1, 2, 1])


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


def test_mtard_kl_factor_scales_both_losses() -> None:
    one, ten = Run("mtard"), Run("mtard", {"kl_factor": 10.0})
    for name in ("adv", "nat"):
        assert_same(ten.losses[name], 10 * one.losses[name])


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


def test_ablations_share_mtard_adv_loss() -> None:
    mt, base, base_mt = Run("mtard"), Run("baseline"), Run("baseline_mt")
    assert set(base.losses) == {"adv"}
    assert_same(base.losses["adv"], mt.losses["adv"])
    for name in ("adv", "nat"):
        assert torch.equal(base_mt.losses[name], mt.losses[name])


def test_generator_makes_the_step_deterministic() -> None:
    x, y = batch()
    a = METHODS["mtard"].loss_fn(make_ctx(seed=5), x, y)
    b = METHODS["mtard"].loss_fn(make_ctx(seed=5), x, y)
    c = METHODS["mtard"].loss_fn(make_ctx(seed=6), x, y)
    assert torch.equal(a["adv"], b["adv"]) and torch.equal(a["nat"], b["nat"])
    assert not torch.equal(a["adv"], c["adv"])


# --- training over several steps: the weights ---------------------------------------------------


def train_weights(method: str, steps: int = 4) -> list[Tensor]:
    ctx = make_ctx()
    spec = METHODS[method]
    weighting = build_weighting(spec)
    opt = torch.optim.SGD(ctx.student.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        x = torch.rand(B, 1, 6, 6, generator=gen)
        y = torch.randint(0, C, (B,), generator=gen)
        total = weighting.step(spec.loss_fn(ctx, x, y))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        history.append(torch.as_tensor(weighting.weights).clone())
    return history


def test_baseline_mt_weights_never_move_mtard_weights_do() -> None:
    constant = train_weights("baseline_mt")
    adaptive = train_weights("mtard")
    for w in constant:
        assert torch.equal(w.double(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(adaptive[0].double(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert any(abs(float(w[0]) - 0.5) > 1e-6 for w in adaptive[1:])
    for w in adaptive:
        assert float(w.sum()) == pytest.approx(1.0)


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
    default = build_weighting(METHODS["mtard"])
    assert default.weight_lr == pytest.approx(0.025)


def test_build_weighting_errors() -> None:
    with pytest.raises(ValueError, match="spec"):
        build_weighting("madry")
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
    with pytest.raises(ValueError, match=re.escape(f"`ctx.{role} = None`")):
        METHODS[method].loss_fn(ctx, x, y)


def test_invalid_hyper_in_loss_fn() -> None:
    x, y = batch()
    with pytest.raises(ValueError, match=re.escape("hyper['temperature']")):
        METHODS["ard"].loss_fn(make_ctx({"temperature": 0.0}), x, y)


@pytest.mark.parametrize(
    ("field", "value"),
    [("eps", -0.1), ("step_size", 0.0), ("attack_steps", -1), ("attack_steps", 2.0)],
)
def test_context_validation(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {
        "student": TinyNet(0),
        "clean_teacher": None,
        "adv_teacher": None,
        "eps": 0.1,
        "step_size": 0.01,
        "attack_steps": 2,
        "num_classes": 3,
    }
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        MethodContext(**kwargs)
