"""Tests of the model registry: shapes, gradients, sizes, upstream parameter layouts.

Large models are built on the meta device (no memory, no compute) to check parameter counts and
key layouts at full size; forward/backward runs use reduced depth/width of the same classes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anl.integrations.mtard.models import MODELS, build_model, model_names
from anl.integrations.mtard.models.normalization import (
    CHENYAOFO_CIFAR10_STD,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
)
from anl.integrations.mtard.models.wideresnet import DMBlock

CONTRACT_NAMES = [
    "resnet18",
    "mobilenetv2",
    "resnet56",
    "wrn34_10",
    "wrn22_6",
    "wrn70_16",
    "small_cnn",
    "large_cnn",
]

# Same classes, fewer/narrower layers: fast forward/backward on CPU.
TINY = {
    "wrn34_10": {"depth": 10, "widen_factor": 1},
    "wrn22_6": {"depth": 10, "width": 1},
    "wrn70_16": {"depth": 10, "width": 1},
}


def tiny(name: str, **kwargs) -> nn.Module:
    return build_model(name, **{**TINY.get(name, {}), **kwargs})


def on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **kwargs)


def count(model: nn.Module, skip: str | None = None) -> int:
    return sum(
        p.numel() for n, p in model.named_parameters() if skip is None or not n.startswith(skip)
    )


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def bn_keys(prefix: str) -> list[str]:
    return [
        f"{prefix}.{s}"
        for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_holds_exactly_the_contract_names():
    assert model_names() == sorted(CONTRACT_NAMES)
    assert set(MODELS) == set(CONTRACT_NAMES)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        build_model("resnet19")
    assert "resnet19" in str(info.value) and "wrn70_16" in str(info.value)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.0, True, "10"])
def test_num_classes_validated(bad):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small_cnn", num_classes=bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, False])
def test_in_channels_validated(bad):
    with pytest.raises(ValueError, match="in_channels"):
        build_model("resnet18", in_channels=bad)


@pytest.mark.parametrize(
    ("name", "kwargs", "param"),
    [
        ("wrn34_10", {"depth": 33}, "depth"),
        ("wrn70_16", {"depth": 4}, "depth"),
        ("wrn70_16", {"width": 0}, "width"),
        ("resnet56", {"depth": 57}, "depth"),
        ("wrn22_6", {"activation": "gelu"}, "activation"),
        ("small_cnn", {"channels": ()}, "channels"),
    ],
)
def test_structure_options_validated(name, kwargs, param):
    with pytest.raises(ValueError, match=param):
        build_model(name, **kwargs)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        build_model("resnet18", widen_factor=2)


# --------------------------------------------------------------------------------------------
# Forward, gradients, modes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_forward_shape_and_gradients_flow(name):
    torch.manual_seed(0)
    model = tiny(name, num_classes=10)
    size = 28 if name.endswith("_cnn") else 16  # small inputs keep the big students fast
    x = torch.rand(3, model.in_channels, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        if pname.startswith("sub_block1."):
            assert p.grad is None, "TRADES' sub_block1 is not part of the forward pass"
        else:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["small_cnn", "large_cnn"])
@pytest.mark.parametrize("size", [28, 32])
def test_fashion_mnist_models_take_one_channel_28_and_32(name, size):
    model = build_model(name).eval()
    assert model.in_channels == 1
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, 10)


def test_fashion_mnist_models_accept_three_channels():
    model = build_model("small_cnn", in_channels=3).eval()
    assert model.features[0].weight.shape[1] == 3
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_small_cnn_batchnorm_makes_train_and_eval_differ():
    torch.manual_seed(0)
    model = build_model("small_cnn")
    x = torch.rand(16, 1, 28, 28)
    model.train()
    train_out = model(x)
    model.eval()
    eval_out = model(x)
    assert not torch.allclose(train_out, eval_out, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_cifar_strides_of_the_students():
    """ResNet-18: no stem downsampling (full size after layer1, 1/8 after layer4);
    MobileNetV2: stride-1 stem and second stage (1/8 before the head: 4x4 on CIFAR)."""
    sizes = {}

    def hook(name):
        return lambda module, inputs, output: sizes.__setitem__(name, tuple(output.shape[-2:]))

    resnet = build_model("resnet18").eval()
    resnet.layer1.register_forward_hook(hook("layer1"))
    resnet.layer4.register_forward_hook(hook("layer4"))
    mobilenet = build_model("mobilenetv2").eval()
    mobilenet.layers[2].register_forward_hook(hook("stage2"))
    mobilenet.conv2.register_forward_hook(hook("head"))
    with torch.no_grad():
        resnet(torch.rand(1, 3, 16, 16))
        mobilenet(torch.rand(1, 3, 16, 16))
    assert sizes == {"layer1": (16, 16), "layer4": (2, 2), "stage2": (16, 16), "head": (2, 2)}


# --------------------------------------------------------------------------------------------
# Sizes (meta device: nothing allocated)
# --------------------------------------------------------------------------------------------


def test_parameter_counts_match_the_upstream_models():
    assert count(on_meta("resnet18")) == 11_173_962
    assert count(on_meta("mobilenetv2")) == 2_296_922
    assert count(on_meta("resnet56")) == 855_770
    wrn = on_meta("wrn34_10")
    assert count(wrn, skip="sub_block1.") == 46_160_474  # TRADES' WRN-34-10, as reported
    assert 48_000_000 < count(wrn) < 48_500_000  # + the unused sub_block1 of TRADES' code
    assert count(on_meta("wrn34_10", sub_block1=False)) == 46_160_474
    assert 266_000_000 < count(on_meta("wrn70_16", num_classes=100)) < 268_000_000
    assert 9_000_000 < count(on_meta("wrn22_6", num_classes=100)) < 10_500_000
    assert 100_000 <= count(on_meta("small_cnn")) <= 300_000
    assert 1_000_000 <= count(on_meta("large_cnn")) <= 3_000_000


# --------------------------------------------------------------------------------------------
# Parameter layouts of the upstream code (keys written here from the upstream sources)
# --------------------------------------------------------------------------------------------


def trades_wrn_layout(depth: int = 34, k: int = 10, num_classes: int = 10) -> dict:
    """The state-dict layout of TRADES' ``WideResNet`` (with ``sub_block1``)."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    layout = {"conv1.weight": (16, 3, 3, 3)}
    groups = [("block1", 16, widths[1]), ("sub_block1", 16, widths[1])]
    groups += [("block2", widths[1], widths[2]), ("block3", widths[2], widths[3])]
    for group, cin, cout in groups:
        for i in range(n):
            p = f"{group}.layer.{i}"
            c = cin if i == 0 else cout
            for key in bn_keys(f"{p}.bn1"):
                layout[key] = (c,) if not key.endswith("tracked") else ()
            layout[f"{p}.conv1.weight"] = (cout, c, 3, 3)
            for key in bn_keys(f"{p}.bn2"):
                layout[key] = (cout,) if not key.endswith("tracked") else ()
            layout[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            if c != cout:
                layout[f"{p}.convShortcut.weight"] = (cout, c, 1, 1)
    for key in bn_keys("bn1"):
        layout[key] = (widths[3],) if not key.endswith("tracked") else ()
    layout["fc.weight"] = (num_classes, widths[3])
    layout["fc.bias"] = (num_classes,)
    return layout


def dm_wrn_layout(depth: int, width: int, num_classes: int) -> dict:
    """The state-dict layout of RobustBench's ``DMWideResNet`` (without its mean/std)."""
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    layout = {"init_conv.weight": (16, 3, 3, 3)}
    for g in range(3):
        for b in range(n):
            p = f"layer.{g}.block.{b}"
            cin = widths[g] if b == 0 else widths[g + 1]
            cout = widths[g + 1]
            for key in bn_keys(f"{p}.batchnorm_0"):
                layout[key] = (cin,) if not key.endswith("tracked") else ()
            layout[f"{p}.conv_0.weight"] = (cout, cin, 3, 3)
            for key in bn_keys(f"{p}.batchnorm_1"):
                layout[key] = (cout,) if not key.endswith("tracked") else ()
            layout[f"{p}.conv_1.weight"] = (cout, cout, 3, 3)
            if cin != cout:
                layout[f"{p}.shortcut.weight"] = (cout, cin, 1, 1)
    for key in bn_keys("batchnorm"):
        layout[key] = (widths[3],) if not key.endswith("tracked") else ()
    layout["logits.weight"] = (num_classes, widths[3])
    layout["logits.bias"] = (num_classes,)
    return layout


def test_wrn34_10_has_trades_robustbench_layout_at_full_size():
    layout = trades_wrn_layout(34, 10, 10)
    assert shapes(on_meta("wrn34_10")) == layout
    assert len(layout) == 252
    assert layout["block1.layer.0.convShortcut.weight"] == (160, 16, 1, 1)
    assert layout["block3.layer.4.conv2.weight"] == (640, 640, 3, 3)
    without = shapes(on_meta("wrn34_10", sub_block1=False))
    assert without == {k: v for k, v in layout.items() if not k.startswith("sub_block1.")}


def test_wrn70_16_has_robustbench_dm_layout_at_full_size():
    layout = dm_wrn_layout(70, 16, 100)
    got = shapes(on_meta("wrn70_16", num_classes=100))
    assert got == layout
    assert "mean" not in got and "std" not in got  # non-persistent, as in RobustBench
    assert got["layer.0.block.0.shortcut.weight"] == (256, 16, 1, 1)
    assert got["layer.2.block.10.conv_1.weight"] == (1024, 1024, 3, 3)
    assert "layer.2.block.1.shortcut.weight" not in got


def test_small_dm_and_trades_wrns_keep_the_same_layout():
    assert shapes(tiny("wrn70_16", num_classes=100)) == dm_wrn_layout(10, 1, 100)
    assert shapes(tiny("wrn22_6", num_classes=100)) == dm_wrn_layout(10, 1, 100)
    assert shapes(on_meta("wrn22_6", num_classes=100)) == dm_wrn_layout(22, 6, 100)
    assert shapes(tiny("wrn34_10")) == trades_wrn_layout(10, 1, 10)


def test_resnet56_has_chenyaofo_layout():
    got = shapes(on_meta("resnet56"))
    expected = {"conv1.weight": (16, 3, 3, 3), **{k: () for k in bn_keys("bn1")}}
    for stage, (cin, cout) in enumerate([(16, 16), (16, 32), (32, 64)], start=1):
        for i in range(9):
            p = f"layer{stage}.{i}"
            c = cin if i == 0 else cout
            expected[f"{p}.conv1.weight"] = (cout, c, 3, 3)
            expected[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            for bn in ("bn1", "bn2"):
                expected.update({k: () for k in bn_keys(f"{p}.{bn}")})
            if c != cout:
                expected[f"{p}.downsample.0.weight"] = (cout, c, 1, 1)
                expected.update({k: () for k in bn_keys(f"{p}.downsample.1")})
    expected["fc.weight"], expected["fc.bias"] = (10, 64), (10,)
    assert set(got) == set(expected)
    assert all(got[k] == v for k, v in expected.items() if v != ())
    assert "layer1.0.downsample.0.weight" not in got


def test_students_have_rslad_layout():
    resnet = shapes(on_meta("resnet18"))
    assert resnet["conv1.weight"] == (64, 3, 3, 3)
    assert resnet["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert "layer2.0.shortcut.1.running_var" in resnet
    assert not any(k.startswith("layer1.0.shortcut") for k in resnet)
    assert resnet["linear.weight"] == (10, 512)
    mobile = shapes(on_meta("mobilenetv2"))
    assert mobile["layers.0.shortcut.0.weight"] == (16, 32, 1, 1)
    assert mobile["layers.1.shortcut.0.weight"] == (24, 16, 1, 1)
    assert not any(k.startswith(("layers.2.shortcut", "layers.3.shortcut")) for k in mobile)
    assert mobile["layers.16.conv3.weight"] == (320, 960, 1, 1)
    assert mobile["conv2.weight"] == (1280, 320, 1, 1)
    assert mobile["linear.weight"] == (10, 1280)
    assert not any(k.startswith("layers.17") for k in mobile)


# --------------------------------------------------------------------------------------------
# Input normalisation
# --------------------------------------------------------------------------------------------


def stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (
        tuple(round(v, 4) for v in model.mean.flatten().tolist()),
        tuple(round(v, 4) for v in model.std.flatten().tolist()),
    )


def test_students_and_trades_teacher_do_not_normalise():
    for name in ("resnet18", "mobilenetv2", "wrn34_10", "small_cnn", "large_cnn"):
        model = on_meta(name)
        assert model.mean is None and model.normalization is None, name


def test_resnet56_normalises_with_chenyaofo_statistics_inside():
    torch.manual_seed(0)
    model = build_model("resnet56").eval()
    assert stats(model) == (CIFAR10_MEAN, CHENYAOFO_CIFAR10_STD)
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    plain = build_model("resnet56", mean=None, std=None).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 16, 16)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CHENYAOFO_CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - mean) / std))
        assert not torch.allclose(model(x), plain(x), atol=1e-3)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("wrn70_16", {"num_classes": 100}, (CIFAR100_MEAN, CIFAR100_STD)),
        ("wrn70_16", {"num_classes": 10}, (CIFAR10_MEAN, CIFAR10_STD)),
        ("wrn70_16", {"num_classes": 100, "dataset": "cifar10"}, (CIFAR10_MEAN, CIFAR10_STD)),
        ("wrn22_6", {"num_classes": 100}, (CIFAR100_MEAN, CIFAR100_STD)),
        ("wrn22_6", {"num_classes": 7, "dataset": "cifar100"}, (CIFAR100_MEAN, CIFAR100_STD)),
        (
            "wrn70_16",
            {"num_classes": 100, "mean": 0.5, "std": (0.25, 0.5, 1.0)},
            ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0)),
        ),
    ],
)
def test_dm_wrn_normalisation_follows_the_data_set(name, kwargs, expected):
    model = tiny(name, **kwargs)
    assert stats(model) == expected
    assert model.normalization == expected


def test_dm_wrn_needs_a_data_set_for_unusual_class_counts():
    with pytest.raises(ValueError, match="dataset"):
        tiny("wrn70_16", num_classes=7)
    with pytest.raises(ValueError, match="dataset"):
        tiny("wrn70_16", num_classes=10, dataset="imagenet")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"mean": (0.5, 0.5), "std": (0.2, 0.2, 0.2)}, "mean"),
        ({"mean": (0.5, 0.5, 0.5), "std": None}, "mean"),
        ({"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.0, 0.2)}, "std"),
        ({"mean": "abc", "std": (0.2, 0.2, 0.2)}, "mean"),
    ],
)
def test_normalisation_arguments_validated(kwargs, param):
    with pytest.raises(ValueError, match=param):
        build_model("resnet18", **kwargs)


def test_dm_wrns_use_swish():
    model = tiny("wrn22_6", num_classes=100)
    acts = [m for n, m in model.named_modules() if n.endswith(("relu_0", "relu_1", "relu"))]
    assert acts and all(isinstance(m, nn.SiLU) for m in acts)
    relu = tiny("wrn22_6", num_classes=100, activation="relu")
    assert isinstance(relu.relu, nn.ReLU)


def test_dm_block_pads_same_style_at_stride_two():
    """Gowal et al.'s blocks pad (0, 1, 0, 1) before a stride-2 convolution (TF 'SAME')."""
    torch.manual_seed(0)
    block = DMBlock(4, 8, 2, nn.ReLU).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        pre = F.relu(block.batchnorm_0(x))
        out = F.conv2d(F.pad(pre, (0, 1, 0, 1)), block.conv_0.weight, stride=2)
        out = F.conv2d(F.relu(block.batchnorm_1(out)), block.conv_1.weight, padding=1)
        expected = F.conv2d(pre, block.shortcut.weight, stride=2) + out
        symmetric = F.conv2d(pre, block.conv_0.weight, stride=2, padding=1)
        symmetric = F.conv2d(F.relu(block.batchnorm_1(symmetric)), block.conv_1.weight, padding=1)
        got = block(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, F.conv2d(pre, block.shortcut.weight, stride=2) + symmetric)
