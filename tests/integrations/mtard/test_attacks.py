"""Tests of anl.integrations.mtard.attacks: closed forms, invariants, references, AutoAttack."""

from __future__ import annotations

import importlib.util
import math
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from anl.integrations.mtard.attacks.autoattack import autoattack
from anl.integrations.mtard.attacks.gradient import cw_inf, cw_margin_loss, fgsm, pgd, transfer
from anl.integrations.mtard.attacks.registry import (
    ATTACK_NAMES,
    ATTACKS,
    BLACK_BOX,
    DEFAULT_ATTACKS,
    TEACHERS_TABLE_ATTACKS,
    WHITE_BOX,
    Attack,
    attack_title,
    make_attack,
    protocol,
)
from anl.integrations.mtard.attacks.square import square, square_fraction

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def linear_model(in_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes))


def small_cnn(channels: int = 2, num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, num_classes),
    )


def mlp(channels: int = 2, num_classes: int = 10, seed: int = 0, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * 64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def batch(n: int = 16, shape: tuple[int, ...] = (2, 8, 8), classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def assert_in_box_and_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) <= eps + 1e-6


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def attack_fns(eps: float, steps: int):
    """Every attack as ``fn(model, x, y)`` with small budgets."""
    step = eps / 4 if steps else 0.0
    return {
        "fgsm": lambda m, x, y: fgsm(m, x, y, eps=eps),
        "pgd_uniform": lambda m, x, y: pgd(m, x, y, eps=eps, step_size=step, steps=steps),
        "pgd_normal_noclamp": lambda m, x, y: pgd(
            m, x, y, eps=eps, step_size=step, steps=steps, random_start="normal",
            start_std=0.3, clamp_start=False,
        ),
        "pgd_train_mode": lambda m, x, y: pgd(
            m, x, y, eps=eps, step_size=step, steps=steps, model_mode="train"
        ),
        "cw_inf": lambda m, x, y: cw_inf(m, x, y, eps=eps, step_size=step, steps=steps),
        "square": lambda m, x, y: square(m, x, y, eps=eps, n_queries=max(steps, 1) * 3),
        "pgd_sat": lambda m, x, y: ATTACKS["pgd_sat"](eps=eps, steps=steps)(m, x, y),
        "pgd_trades": lambda m, x, y: ATTACKS["pgd_trades"](eps=eps, steps=steps)(m, x, y),
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# Closed form on a linear model
# --------------------------------------------------------------------------------------------


def _two_class_linear(d: int = 12, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """f(x) = W x + b with |w_1 - w_0| >= 0.1 in every coordinate (no zero gradient sign)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    with torch.no_grad():
        diff = (torch.rand(d) * 0.9 + 0.1) * torch.where(torch.rand(d) < 0.5, -1.0, 1.0)
        model[1].weight[0] = torch.randn(d)
        model[1].weight[1] = model[1].weight[0] + diff
    return model, diff


@pytest.mark.parametrize("name", ["fgsm", "pgd_ce", "pgd_cw", "cw_inf", "pgd_sat", "pgd_trades"])
@pytest.mark.parametrize("near_bounds", [False, True])
def test_linear_model_reaches_closed_form_optimum(name: str, near_bounds: bool) -> None:
    # For 2 classes, both CE and the CW margin increase along w_other - w_y, so the optimal
    # L-inf perturbation is eps * sign(w_other - w_y), clipped by the box [0, 1].
    model, diff = _two_class_linear()
    g = torch.Generator().manual_seed(1)
    n, eps = 20, 0.05
    if near_bounds:
        x = torch.where(torch.rand(n, 12, generator=g) < 0.5, 0.01, 0.98).reshape(n, 3, 4)
    else:
        x = (0.3 + 0.4 * torch.rand(n, 12, generator=g)).reshape(n, 3, 4)
    y = torch.randint(0, 2, (n,), generator=g)
    direction = torch.where(y[:, None] == 0, diff, -diff).sign().reshape(n, 3, 4)
    expected = (x + eps * direction).clamp(0, 1)
    fns = {
        "fgsm": lambda: fgsm(model, x, y, eps=eps),
        "pgd_ce": lambda: pgd(model, x, y, eps=eps, step_size=eps / 4, steps=10),
        "pgd_cw": lambda: pgd(
            model, x, y, eps=eps, step_size=eps / 4, steps=10, loss="cw", random_start=None
        ),
        "cw_inf": lambda: cw_inf(model, x, y, eps=eps, step_size=eps / 4, steps=10),
        "pgd_sat": lambda: ATTACKS["pgd_sat"](eps=eps)(model, x, y),
        "pgd_trades": lambda: ATTACKS["pgd_trades"](eps=eps, step_size=eps / 4)(model, x, y),
    }
    x_adv = fns[name]()
    assert torch.equal(x_adv, expected)


def test_cw_margin_loss_matches_official_formula() -> None:
    logits = torch.tensor([[3.0, 1.0, -2.0], [0.0, 5.0, 4.9], [1.0, 2.0, 100.0]])
    y = torch.tensor([0, 1, 0])
    # official: -clamp(real - other + confidence, min=0), summed
    real = torch.tensor([3.0, 5.0, 1.0])
    other = torch.tensor([1.0, 4.9, 100.0])
    expected = -torch.clamp(real - other + 50.0, min=0).sum()
    assert torch.allclose(cw_margin_loss(logits, y), expected)
    assert float(cw_margin_loss(logits, y, confidence=0.0)) == pytest.approx(-(2.0 + 0.1))


# --------------------------------------------------------------------------------------------
# Invariants: box, ball, gradients, modes
# --------------------------------------------------------------------------------------------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    conv=st.booleans(),
    eps=st.floats(0.0, 0.5),
    steps=st.integers(0, 4),
    n=st.integers(1, 6),
)
def test_property_every_attack_stays_in_box_and_ball(seed, conv, eps, steps, n) -> None:
    model = small_cnn(seed=seed) if conv else mlp(seed=seed)
    model.train()
    model[-1].eval()  # a mixed-mode model: restored module by module
    modes = [m.training for m in model.modules()]
    x, y = batch(n, seed=seed)
    for name, fn in attack_fns(eps, steps).items():
        x_adv = fn(model, x, y)
        assert_in_box_and_ball(x_adv, x, eps)
        assert [m.training for m in model.modules()] == modes, name
        assert all(p.grad is None for p in model.parameters()), name
        assert all(p.requires_grad for p in model.parameters()), name


def test_frozen_parameters_stay_frozen_and_no_grad_context_is_fine() -> None:
    """The attack differentiates with respect to the input only: frozen parameters and a
    surrounding ``no_grad`` change neither the result nor the parameters' flags."""
    model = small_cnn()
    x, y = batch(8)
    kw = {"eps": 0.1, "step_size": 0.03, "steps": 3}
    expected = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
    assert float((expected - x).abs().max()) > 0.05  # the attack moved the images
    model[0].weight.requires_grad_(False)
    with torch.no_grad():
        x_adv = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(x_adv, expected)
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert all(p.grad is None for p in model.parameters())


class _Boom(RuntimeError):
    pass


class _FailingModel(nn.Module):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.net = mlp()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise _Boom("forward failed")
        return self.net(x)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("which", ["pgd", "square", "fgsm"])
def test_mode_restored_after_exception(mode: str, which: str) -> None:
    model = _FailingModel(fail_at=2)
    model.train(mode != "train")  # start in the other mode
    model.net[1].train(mode == "train")  # and one submodule in yet another
    before = [m.training for m in model.modules()]
    x, y = batch(4)
    with pytest.raises(_Boom):
        if which == "pgd":
            pgd(model, x, y, eps=0.1, step_size=0.02, steps=5, model_mode=mode)
        elif which == "square":
            square(model, x, model.net(x).argmax(1), eps=0.1, n_queries=10, model_mode=mode)
        else:
            model.fail_at = 1
            fgsm(model, x, y, eps=0.1, model_mode=mode)
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())


def test_attack_runs_in_requested_mode() -> None:
    seen: list[bool] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            seen.append(self.training)
            return self.net(x)

    model = Spy().train()
    x, y = batch(4)
    pgd(model, x, y, eps=0.1, step_size=0.02, steps=2, model_mode="eval")
    assert seen == [False, False] and model.training
    seen.clear()
    model.eval()
    pgd(model, x, y, eps=0.1, step_size=0.02, steps=2, model_mode="train")
    assert seen == [True, True] and not model.training
    seen.clear()
    pgd(model, x, y, eps=0.1, step_size=0.02, steps=2, model_mode=None)
    assert seen == [False, False]


def test_pgd_loop_never_synchronises(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every host read-back forbidden the attacks still run, and give the same images."""
    model = small_cnn().eval()
    x, y = batch(8)
    kw = {"eps": 0.1, "step_size": 0.02, "steps": 3}

    def attacks() -> list[torch.Tensor]:
        out = [
            pgd(model, x, y, random_start=start, generator=torch.Generator().manual_seed(0), **kw)
            for start in ("uniform", "normal", None)
        ]
        out.append(pgd(model, x, y, sample_seeds=torch.arange(8), **kw))
        out.append(cw_inf(model, x, y, generator=torch.Generator().manual_seed(0), **kw))
        return out

    expected = attacks()

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device synchronisation inside the attack")

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "nonzero"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    got = attacks()
    monkeypatch.undo()
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
        assert float((a - x).abs().max()) > 0.0


def test_start_clamping_and_start_kinds() -> None:
    first: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            if not first:
                first.append(x.detach().clone())
            return self.net(x)

    model = Recorder()
    x = torch.zeros(4, 2, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    kw = {"eps": 0.1, "step_size": 0.0, "steps": 1, "random_start": "normal", "start_std": 0.01}
    pgd(model, x, y, clamp_start=False, **kw)
    assert float(first[0].min()) < 0.0  # MTARD's student attack: the start is not clipped
    first.clear()
    pgd(model, x, y, clamp_start=True, **kw)
    assert float(first[0].min()) >= 0.0
    # The uniform start lies in the ball; the normal one has the requested scale.
    first.clear()
    x = torch.full((64, 2, 8, 8), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    pgd(model, x, y, eps=0.1, step_size=0.0, steps=1, random_start="uniform")
    delta = first[0] - x
    assert float(delta.abs().max()) <= 0.1 and float(delta.std()) == pytest.approx(
        0.1 / 3**0.5, rel=0.05
    )
    first.clear()
    pgd(model, x, y, **kw)
    assert float((first[0] - x).std()) == pytest.approx(0.01, rel=0.05)


def _start(attack, x: torch.Tensor) -> torch.Tensor:
    """The random start of an attack with no step: x_adv - x (the ball and the box do not
    bind for these images and scales)."""
    return attack(x) - x


@pytest.mark.parametrize("seeded", [False, True], ids=["generator", "sample_seeds"])
def test_random_starts_have_the_requested_distribution(seeded: bool) -> None:
    """U(-eps, eps) for "uniform" (scale eps), start_std * N(0, 1) for "normal" (scale
    start_std), from the generator or from the per-image keyed draws alike."""
    model = mlp()
    x = torch.full((64, 2, 8, 8), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    eps, std = 0.1, 0.01

    def run(**kw):
        source = (
            {"sample_seeds": torch.arange(64)}
            if seeded
            else {"generator": torch.Generator().manual_seed(0)}
        )
        return _start(lambda xs: pgd(model, xs, y, step_size=0.0, steps=0, **kw, **source), x)

    uniform = run(eps=eps, random_start="uniform")
    assert float(uniform.abs().max()) <= eps and float(uniform.abs().max()) > 0.99 * eps
    assert float(uniform.mean()) == pytest.approx(0.0, abs=2e-3)
    assert float(uniform.std()) == pytest.approx(eps / 3**0.5, rel=0.03)
    normal = run(eps=eps, random_start="normal", start_std=std, clamp_start=False)
    assert float(normal.mean()) == pytest.approx(0.0, abs=4e-4)
    assert float(normal.std()) == pytest.approx(std, rel=0.03)
    # Normal, not uniform: 31.7 % beyond one standard deviation, 4.6 % beyond two.
    assert float((normal.abs() > std).float().mean()) == pytest.approx(0.317, abs=0.02)
    assert float((normal.abs() > 2 * std).float().mean()) == pytest.approx(0.046, abs=0.01)
    # start_std does not scale the uniform start, nor eps the normal one.
    assert torch.equal(run(eps=eps, random_start="uniform", start_std=0.5), uniform)
    assert torch.equal(
        run(eps=0.05, random_start="normal", start_std=std, clamp_start=False), normal
    )


def test_registry_attacks_start_from_their_protocols_distribution() -> None:
    """PGD_SAT, PGD_TRADES and CW_inf start from U(-eps, eps) drawn per image (keyed by the
    image's seed); a "normal" override starts from start_std * N(0, 1)."""
    model = mlp()
    x = torch.full((64, 2, 8, 8), 0.5)
    y = torch.zeros(64, dtype=torch.long)
    seeds = torch.arange(1000, 1064)
    for name in ("pgd_sat", "pgd_trades", "cw_inf"):
        start = _start(
            lambda xs, n=name: ATTACKS[n](eps=0.1, steps=0)(model, xs, y, seeds=seeds), x
        )
        assert float(start.abs().max()) <= 0.1, name
        assert float(start.std()) == pytest.approx(0.1 / 3**0.5, rel=0.03), name
    attack = make_attack("pgd_trades", eps=0.1, steps=0, random_start="normal", start_std=0.01)
    start = _start(lambda xs: attack(model, xs, y, seeds=seeds), x)
    assert float(start.std()) == pytest.approx(0.01, rel=0.03)
    assert float((start.abs() > 0.01).float().mean()) == pytest.approx(0.317, abs=0.02)


def test_validation_errors_name_the_parameter() -> None:
    model = mlp()
    x, y = batch(4)
    base = {"eps": 0.1, "step_size": 0.01, "steps": 2}
    cases = [
        ({**base, "eps": -0.1}, "`eps`"),
        ({**base, "step_size": float("nan")}, "`step_size`"),
        ({**base, "steps": 2.5}, "`steps`"),
        ({**base, "random_start": "gaussian"}, "`random_start`"),
        ({**base, "loss": "hinge"}, "`loss`"),
        ({**base, "model_mode": "test"}, "`model_mode`"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pgd(model, x, y, **kwargs)
    with pytest.raises(ValueError, match="`y`"):
        pgd(model, x, y[:3], **base)
    with pytest.raises(ValueError, match="`sample_seeds`"):
        pgd(model, x, y, sample_seeds=torch.arange(3), **base)
    with pytest.raises(ValueError, match="`sample_seeds`"):
        square(model, x, y, eps=0.1, sample_seeds=[0, 1])
    with pytest.raises(ValueError, match="`n_queries`"):
        square(model, x, y, eps=0.1, n_queries=0)
    with pytest.raises(ValueError, match="`p_init`"):
        square(model, x, y, eps=0.1, p_init=1.5)


def test_callable_loss_gets_target_as_is() -> None:
    # A TRADES-style attack: maximise KL(f(x_adv) || f(x)) with the clean probabilities as target.
    model = small_cnn().eval()
    x, _ = batch(8)
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)

    def kl(logits, target):
        return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum")

    x_adv = pgd(model, x, p_clean, eps=0.1, step_size=0.02, steps=5, loss=kl, random_start="normal")
    assert_in_box_and_ball(x_adv, x, 0.1)
    with torch.no_grad():
        assert float(kl(model(x_adv), p_clean)) > float(kl(model(x), p_clean)) + 1e-4


# --------------------------------------------------------------------------------------------
# Independent reference: PGD-20 as in the official TRADES/RSLAD evaluation code
# --------------------------------------------------------------------------------------------


def reference_pgd(model, X, y, epsilon, num_steps, step_size, generator):
    """A minimal re-implementation of the official `_pgd_whitebox` (uniform start, no clip)."""
    model.eval()
    X_pgd = X.clone() + torch.empty_like(X).uniform_(-epsilon, epsilon, generator=generator)
    for _ in range(num_steps):
        X_pgd.requires_grad_(True)
        with torch.enable_grad():
            loss = nn.CrossEntropyLoss(reduction="sum")(model(X_pgd), y)
        (grad,) = torch.autograd.grad(loss, [X_pgd])
        X_pgd = X_pgd.detach() + step_size * grad.sign()
        X_pgd = torch.max(torch.min(X_pgd, X + epsilon), X - epsilon)
        X_pgd = torch.clamp(X_pgd, 0.0, 1.0)
    return X_pgd.detach()


def test_pgd20_matches_independent_reference() -> None:
    model = small_cnn(seed=3).eval()
    x, y = batch(64, seed=3)
    with torch.no_grad():
        y = torch.where(torch.arange(64) % 3 == 0, y, model(x).argmax(1))  # mostly correct
    eps = 8 / 255
    ours = pgd(
        model, x, y, eps=eps, step_size=2 / 255, steps=20, clamp_start=False,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    ref = reference_pgd(model, x, y, eps, 20, 2 / 255, torch.Generator().manual_seed(7))
    assert torch.equal(ours, ref)
    assert accuracy(model, ours, y) == accuracy(model, ref, y) < accuracy(model, x, y)


# --------------------------------------------------------------------------------------------
# Square Attack
# --------------------------------------------------------------------------------------------


def test_square_schedule_follows_autoattack() -> None:
    p = 0.8
    # AutoAttack (5000 queries): halve after iterations 10, 50, 200, 500, 1000, 2000, 4000.
    expected = {0: p, 10: p, 11: p / 2, 50: p / 2, 51: p / 4, 201: p / 8, 501: p / 16}
    expected |= {1001: p / 32, 2001: p / 64, 4000: p / 64, 4001: p / 128, 4999: p / 128}
    for it, value in expected.items():
        assert square_fraction(it, 5000, p) == value, it
    # Other budgets stretch the schedule: 1000 queries -> thresholds at 2, 10, 40, ...
    assert square_fraction(2, 1000, p) == p
    assert square_fraction(3, 1000, p) == p / 2
    assert square_fraction(999, 1000, p) == p / 128
    assert square_fraction(20000, 10000, p) == p / 512


def test_square_fools_non_robust_model_within_budget() -> None:
    model = mlp(hidden=16).eval()
    x, _ = batch(32)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # four points misclassified from the start
    calls = []

    def counting(inp):
        calls.append(inp.shape[0])
        return model(inp)

    counted = nn.Module()
    counted.forward = counting  # type: ignore[method-assign]
    n_queries = 150
    x_adv, queries = square(model, x, y, eps=0.15, n_queries=n_queries, return_queries=True)
    assert_in_box_and_ball(x_adv, x, 0.15)
    assert accuracy(model, x_adv, y) < 0.5 * accuracy(model, x, y)
    assert int(queries.max()) <= n_queries and int(queries[4:].min()) >= 1
    assert torch.equal(queries[:4], torch.zeros(4, dtype=torch.long))
    assert torch.equal(x_adv[:4], x[:4])  # misclassified points are not queried
    # The model itself is called at most n_queries + 1 times (clean prediction + queries).
    square(counted, x, y, eps=0.15, n_queries=n_queries)
    assert len(calls) <= n_queries + 1
    assert sum(calls) == int(queries.sum()) + x.shape[0]


def test_square_is_seeded_and_batch_invariant() -> None:
    model = mlp(hidden=16).eval()
    x, _ = batch(12)
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = {"eps": 0.05, "n_queries": 40}
    a = square(model, x, y, seed=1, **kw)
    assert torch.equal(a, square(model, x, y, seed=1, **kw))
    assert not torch.equal(a, square(model, x, y, seed=2, **kw))
    full = square(model, x, y, seed=1, sample_seeds=torch.arange(12), **kw)
    odd = square(model, x[1::2], y[1::2], seed=1, sample_seeds=torch.arange(1, 12, 2), **kw)
    assert torch.equal(full[1::2], odd)


# --------------------------------------------------------------------------------------------
# Registry, transfer, protocol
# --------------------------------------------------------------------------------------------


def test_protocol_values_and_scaling() -> None:
    cifar = protocol()
    assert cifar["pgd_sat"]["step_size"] == pytest.approx(2 / 255)
    assert cifar["pgd_sat"]["steps"] == 20 and cifar["pgd_sat"]["random_start"] == "uniform"
    assert cifar["pgd_trades"]["step_size"] == pytest.approx(0.003)
    # TRADES' _pgd_whitebox and MTARD's attack_pgd start from U(-eps, eps).
    assert cifar["pgd_trades"]["random_start"] == "uniform"
    assert "start_std" not in cifar["pgd_trades"]
    assert cifar["cw_inf"]["steps"] == 30 and cifar["cw_inf"]["confidence"] == 50.0
    assert cifar["cw_inf"]["step_size"] == pytest.approx(2 / 255)
    assert cifar["square"] == {"eps": 8 / 255, "n_queries": 5000, "p_init": 0.8}
    fmnist = protocol(0.1)
    assert fmnist["pgd_sat"]["step_size"] == pytest.approx(0.025)
    assert fmnist["pgd_trades"]["step_size"] == pytest.approx(0.003 * 0.1 * 255 / 8)
    assert all(fmnist[name]["eps"] == 0.1 for name in ATTACK_NAMES)
    assert set(ATTACKS) == set(ATTACK_NAMES) == set(cifar)


def test_one_registry_gives_every_group_title_and_table_order() -> None:
    """The groups, titles and default sets are read from the attack specs, in table order."""
    assert WHITE_BOX == ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack")
    assert BLACK_BOX == ("transfer_pgd", "transfer_cw", "square")
    assert ATTACK_NAMES == WHITE_BOX + BLACK_BOX
    assert TEACHERS_TABLE_ATTACKS == ("fgsm", "pgd_sat", "pgd_trades", "cw_inf")
    assert DEFAULT_ATTACKS == ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square")
    titles = {name: attack_title(name) for name in ATTACK_NAMES}
    assert titles["transfer_pgd"] == "Transfer PGD_TRADES" and titles["cw_inf"] == "CW_inf"
    assert attack_title("not_an_attack") == "not_an_attack"
    for name, spec in ATTACKS.items():
        assert spec.name == name and set(spec.settings(0.1)) <= spec.overridable, name
        assert spec.transfer == name.startswith("transfer_"), name


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="`name`"):
        make_attack("pgd_madry")
    with pytest.raises(ValueError, match="`overrides`"):
        make_attack("pgd_sat", n_queries=10)
    with pytest.raises(ValueError, match="`surrogate`"):
        make_attack("transfer_pgd")


def test_protocol_settings_are_the_official_ones_exactly() -> None:
    """Every setting of the white-box protocols, as the official evaluation code has it: the
    random start U(-eps, eps) is not clamped to the image box before the first step (the
    official code adds the noise and clamps after each step), TRADES' PGD takes 20 steps, and
    AutoAttack runs its standard version in batches of 500."""
    eps = 8 / 255
    cifar = protocol()
    start = {"random_start": "uniform", "clamp_start": False}
    assert cifar["pgd_sat"] == {
        "eps": eps,
        "steps": 20,
        "step_size": 2 / 255,
        "loss": "ce",
        **start,
    }
    assert cifar["pgd_trades"] == {
        "eps": eps,
        "steps": 20,
        "step_size": 0.003,
        "loss": "ce",
        **start,
    }
    cw = {"eps": eps, "steps": 30, "step_size": 2 / 255, "loss": "cw", "confidence": 50.0, **start}
    assert cifar["cw_inf"] == cw
    assert cifar["transfer_pgd"] == cifar["pgd_trades"] and cifar["transfer_cw"] == cw
    assert cifar["autoattack"] == {"eps": eps, "version": "standard", "batch_size": 500}


def test_registry_runs_autoattack_with_the_attack_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    from anl.integrations.mtard.attacks import registry

    seen: list[dict] = []

    def fake(model, x, y, **kwargs):
        seen.append(kwargs)
        return x

    monkeypatch.setattr(registry, "autoattack", fake)
    model = mlp().eval()
    x, y = batch(2)
    make_attack("autoattack", eps=0.05, seed=7)(model, x, y)
    assert seen == [{"seed": 7, "eps": 0.05, "version": "standard", "batch_size": 500}]


def test_protocol_refuses_a_negative_budget_by_name() -> None:
    with pytest.raises(ValueError, match=re.escape("Parameter `eps` should be")):
        protocol(-0.1)
    assert protocol(0.0)["fgsm"]["eps"] == 0.0


def test_registry_passes_model_batch_settings_seed_ids_and_progress_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FGSM and Square as the registry runs them: the model and batch, their protocol settings
    (with overrides), and for Square the attack seed, the per-image ids and the progress flag;
    the same images as the direct calls."""
    from anl.integrations.mtard.attacks import registry

    calls: dict[str, tuple] = {}

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] = (args, kwargs)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(registry, "square", spy("square", registry.square))
    monkeypatch.setattr(registry, "fgsm", spy("fgsm", registry.fgsm))
    model = mlp().eval()
    x, y = batch(4)
    seeds = torch.tensor([7, 3, 9, 1])
    out = make_attack("square", eps=0.05, seed=3, progress=True, n_queries=4)(
        model, x, y, seeds=seeds
    )
    args, kwargs = calls["square"]
    assert args[0] is model and args[1] is x and args[2] is y
    assert kwargs.pop("seed") == 3 and kwargs.pop("progress") is True
    assert torch.equal(kwargs.pop("sample_seeds"), seeds)
    assert kwargs == {"eps": 0.05, "n_queries": 4, "p_init": 0.8}
    direct = square(model, x, y, eps=0.05, n_queries=4, p_init=0.8, seed=3, sample_seeds=seeds)
    assert torch.equal(out, direct)
    out = make_attack("fgsm", eps=0.05)(model, x, y)
    args, kwargs = calls["fgsm"]
    assert args[0] is model and args[1] is x and args[2] is y and kwargs == {"eps": 0.05}
    assert torch.equal(out, fgsm(model, x, y, eps=0.05))


def test_a_transfer_attack_needs_a_surrogate_other_than_its_target() -> None:
    """An Attack built without make_attack still refuses to run without a surrogate, and a
    transfer attack on its own surrogate (a white-box attack) is refused."""
    model = mlp().eval()
    x, y = batch(4)
    message = "Parameter `surrogate` should be a model for attack 'transfer_pgd'. Found `surrogate = None`."
    with pytest.raises(ValueError, match=re.escape(message)):
        Attack("transfer_pgd", protocol(0.05)["transfer_pgd"])(model, x, y)
    with pytest.raises(ValueError, match="`surrogate` should be a different model from `target`"):
        make_attack("transfer_pgd", eps=0.05, surrogate=model, steps=1)(model, x, y)


def test_registry_attacks_are_batch_invariant_with_seeds() -> None:
    model = small_cnn().eval()
    x, y = batch(10)
    for name in ("pgd_sat", "pgd_trades", "cw_inf"):
        attack = ATTACKS[name](eps=0.05, steps=3, seed=4)
        full = attack(model, x, y, seeds=torch.arange(100, 110))
        part = attack(model, x[3:7], y[3:7], seeds=torch.arange(103, 107))
        assert torch.equal(full[3:7], part), name
        other = ATTACKS[name](eps=0.05, steps=3, seed=5)(model, x, y, seeds=torch.arange(100, 110))
        assert not torch.equal(full, other), name


def test_transfer_crafts_on_surrogate_without_querying_target() -> None:
    surrogate = small_cnn(seed=1).eval()
    x, y = batch(8)

    class Untouchable(nn.Module):
        def forward(self, x):
            raise AssertionError("a transfer attack must not query the target")

    target = Untouchable()
    attack = make_attack("transfer_pgd", eps=0.05, surrogate=surrogate, steps=5)
    x_adv = attack(target, x, y)
    direct = make_attack("pgd_trades", eps=0.05, steps=5)(surrogate, x, y)
    assert torch.equal(x_adv, direct)
    crafted = transfer(surrogate, target, x, y, lambda m, a, b: fgsm(m, a, b, eps=0.05))
    assert torch.equal(crafted, fgsm(surrogate, x, y, eps=0.05))
    with pytest.raises(ValueError, match="`surrogate`"):
        transfer(surrogate, surrogate, x, y, lambda m, a, b: a)


# --------------------------------------------------------------------------------------------
# AutoAttack (pyautoattack)
# --------------------------------------------------------------------------------------------


needs_pyautoattack = pytest.mark.skipif(
    importlib.util.find_spec("pyautoattack") is None,
    reason='needs pyautoattack (pip install "adaptive-normalization-loss[autoattack]")',
)


def _aa_setup():
    model = mlp(hidden=24, seed=5).eval()
    x, _ = batch(32, seed=5)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@needs_pyautoattack
def test_autoattack_custom_is_at_least_as_strong_as_pgd() -> None:
    model, x, y = _aa_setup()
    eps = 0.02
    pgd_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=20)
    aa_adv = autoattack(
        model, x, y, eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], batch_size=32
    )
    assert_in_box_and_ball(aa_adv, x, eps)
    pgd_acc, aa_acc = accuracy(model, pgd_adv, y), accuracy(model, aa_adv, y)
    assert 0.0 < pgd_acc < 1.0  # the budget leaves something to attack
    assert aa_acc <= pgd_acc
    assert all(p.grad is None for p in model.parameters())


@needs_pyautoattack
def test_autoattack_standard_on_a_tiny_model() -> None:
    # At this budget PGD-20 leaves 2 of 16 points; AutoAttack breaks all before Square runs.
    model, x, y = _aa_setup()
    x, y = x[:16], y[:16]
    eps = 0.08
    aa_adv = autoattack(model, x, y, eps=eps, version="standard")
    pgd_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=20)
    assert_in_box_and_ball(aa_adv, x, eps)
    assert accuracy(model, aa_adv, y) <= accuracy(model, pgd_adv, y)


@needs_pyautoattack
def test_autoattack_with_few_classes_and_registry() -> None:
    # 3 classes: targeted attacks use the 2 other classes instead of crashing on 9 targets.
    model = mlp(num_classes=3, hidden=8).eval()
    x, _ = batch(8, classes=3)
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = make_attack(
        "autoattack", eps=0.05, version="custom", attacks=["apgd-ce", "fab-t"], batch_size=8
    )
    assert_in_box_and_ball(attack(model, x, y), x, 0.05)
    with pytest.raises(ValueError, match="`attacks`"):
        autoattack(model, x, y, eps=0.05, version="custom", attacks=["apgd-t"])
    with pytest.raises(ValueError, match="`attacks`"):
        autoattack(model, x, y, eps=0.05, version="custom")
    with pytest.warns(UserWarning, match="APGD-T"):
        x_adv = autoattack(model, x, y, eps=0.3, version="standard")
    assert accuracy(model, x_adv, y) == 0.0


def test_autoattack_missing_package_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    model = mlp()
    x, y = batch(2)
    with pytest.raises(ImportError, match=r'pip install "anl\[autoattack\]"'):
        autoattack(model, x, y, eps=0.1)
