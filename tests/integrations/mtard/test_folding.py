"""BatchNorm folding: the teachers' in-place fold and the student's eval-mode view.

A folded network must compute the same function as the original in eval mode (up to float
rounding), leave the original untouched, and follow the original's weights and running
statistics as they change during training.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from anl.integrations.mtard.attacks.gradient import pgd
from anl.integrations.mtard.methods import steps
from anl.integrations.mtard.models import build_model
from anl.integrations.mtard.models.folding import (
    FoldedEvalView,
    conv_bn_pairs,
    fold_batchnorm,
    fused_conv_bn,
)
from benchmarks.workloads import build_workload

ARCHS = {  # name -> input shape
    "small_cnn": (6, 1, 28, 28),
    "resnet18": (3, 3, 32, 32),
    "mobilenetv2": (3, 3, 32, 32),
}


def _student(arch: str, memory_format=torch.contiguous_format) -> nn.Module:
    """A student whose BatchNorm layers have non-trivial statistics and affine parameters."""
    torch.manual_seed(0)
    shape = ARCHS[arch]
    model = build_model(arch, num_classes=10, in_channels=shape[1])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.to(memory_format=memory_format).train()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_view_computes_the_eval_mode_function_and_leaves_the_model_alone(arch, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    student = _student(arch, fmt)
    x = torch.rand(ARCHS[arch]).contiguous(memory_format=fmt)
    before = _snapshot(student)
    view = FoldedEvalView(student)
    folded = view(x)
    # Every BatchNorm of these students follows a conv that feeds nothing else.
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in student.modules())
    assert len(view.pairs) == n_bn > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert list(folded.parameters()) == [] or all(not p.requires_grad for p in folded.parameters())
    got = folded(x)
    assert student.training  # the view never changed the model's mode
    expected = copy.deepcopy(student).eval()(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    after = _snapshot(student)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no statistics updated
    # The fused weights keep the conv's layout (a channels-last conv stays channels-last).
    conv_name, bn_name = view.pairs[0]
    conv = student.get_submodule(conv_name)
    weight, _ = fused_conv_bn(conv, student.get_submodule(bn_name))
    assert weight.stride() == conv.weight.stride()


def test_view_follows_the_training_model():
    student = _student("small_cnn")
    x = torch.rand(ARCHS["small_cnn"])
    view = FoldedEvalView(student)
    stale = view(x)
    # One SGD step and a train-mode forward: new weights and new running statistics.
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    student.train()
    student(x).logsumexp(dim=1).sum().backward()
    optimizer.step()
    expected = copy.deepcopy(student).eval()(x)
    torch.testing.assert_close(view(x)(x), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(stale(x), expected, rtol=1e-4, atol=1e-5)


def test_attack_on_the_view_matches_the_model_up_to_rounding_and_leaves_no_gradients():
    student = _student("small_cnn")
    x = torch.rand(ARCHS["small_cnn"])
    y = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(2))
    xr = x.clone().requires_grad_(True)
    g_model = torch.autograd.grad(
        nn.functional.cross_entropy(copy.deepcopy(student).eval()(xr), y, reduction="sum"), xr
    )[0]
    xr = x.clone().requires_grad_(True)
    g_view = torch.autograd.grad(
        nn.functional.cross_entropy(FoldedEvalView(student)(x)(xr), y, reduction="sum"), xr
    )[0]
    torch.testing.assert_close(g_view, g_model, rtol=1e-3, atol=1e-6)
    kwargs = dict(eps=0.1, step_size=0.025, steps=5, random_start=None, model_mode="eval")
    view_adv = pgd(FoldedEvalView(student)(x), x, y, **kwargs)
    model_adv = pgd(student, x, y, **kwargs)
    assert all(p.grad is None for p in student.parameters())
    # Sign steps: only entries whose gradient is within rounding of zero may differ.
    assert (view_adv != model_adv).float().mean() < 0.01


def test_view_is_eval_only_and_keeps_unfoldable_layers():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
            self.b3 = nn.BatchNorm2d(4, track_running_stats=False)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            y = self.c2(x)
            x = self.b2(y) + y  # c2's output has two users: b2 stays
            return self.fc(self.b3(x).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Branchy()
    x = torch.rand(4, 1, 8, 8)
    assert conv_bn_pairs(model, x) == [("c1", "b1")]
    assert model.training  # conv_bn_pairs restored the mode
    folded = FoldedEvalView(model)(x)
    torch.testing.assert_close(folded(x), copy.deepcopy(model).eval()(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="eval-mode function only"):
        folded.train()
    with pytest.raises(ValueError, match=r"an nn\.Module"):
        FoldedEvalView("resnet18")
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model, x)


def test_sync_batchnorm_is_folded_in_eval_mode():
    student = nn.SyncBatchNorm.convert_sync_batchnorm(_student("small_cnn"))
    x = torch.rand(ARCHS["small_cnn"])
    view = FoldedEvalView(student)
    folded = view(x)
    assert len(view.pairs) == 2
    torch.testing.assert_close(folded(x), copy.deepcopy(student).eval()(x), rtol=1e-4, atol=1e-5)


def test_mtard_step_with_the_folded_attack_matches_the_unfolded_one():
    """The default (folded) training attack and the plain one: the same losses up to
    rounding, the same adversarial batch except where a gradient sign is within rounding."""
    w = build_workload("fmnist", batch_size=16, attack_steps=5, seed=3)
    results = {}
    for fold in (True, False):
        student = w.our_student()
        ctx = w.context(student)
        ctx.eval_attack_model = FoldedEvalView(student) if fold else None
        torch.manual_seed(11)
        x_adv = steps.mtard_attack(ctx, w.x_ours, w.y)
        torch.manual_seed(11)
        losses = steps.mtard(ctx, w.x_ours, w.y)
        results[fold] = (x_adv, losses)
    (adv_f, loss_f), (adv_u, loss_u) = results[True], results[False]
    assert (adv_f != adv_u).float().mean() < 0.01
    for name in loss_u:
        torch.testing.assert_close(loss_f[name], loss_u[name], rtol=1e-3, atol=1e-6)
