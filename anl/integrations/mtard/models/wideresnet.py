"""Wide ResNets: MTARD's adversarial teachers and its CIFAR-100 clean teacher.

Two families, each with the parameter names of the code its checkpoints come from, so that
those state dicts load strictly:

* :class:`WideResNet` — TRADES (yaodongyu/TRADES ``models/wideresnet.py``, also RobustBench's
  ``wide_resnet.py``). :func:`wrn34_10` is the CIFAR-10 adversarial teacher, TRADES'
  WRN-34-10 (RobustBench ``Zhang2019Theoretically``: 84.92% clean, 53.08% AutoAttack).
  Pre-activation blocks ``bn1, relu1, conv1, bn2, relu2, conv2`` and a 1x1 ``convShortcut``
  where the width changes; ``conv1``, ``block1..block3`` (each ``.layer.N``), ``bn1``, ``fc``.
  No input normalisation. TRADES' constructor also builds ``sub_block1``, a copy of
  ``block1`` that ``forward`` never uses; its weights are in TRADES' ``model_cifar_wrn.pt``
  and in RobustBench's ``Zhang2019Theoretically.pt``. It is therefore built by default
  (``sub_block1=True``) so that those files load strictly; it receives no gradient. Pass
  ``sub_block1=False`` for a model to train (e.g. under DDP, which rejects unused parameters).
* :class:`DMWideResNet` — the WideResNet of Gowal et al. (DeepMind), as ported to PyTorch by
  DeepMind and RobustBench (``dm_wide_resnet.py``). :func:`wrn70_16` is the CIFAR-100
  adversarial teacher (RobustBench ``Gowal2020Uncovering``, no extra data: 60.86% clean,
  30.03% AutoAttack) and :func:`wrn22_6` the CIFAR-100 clean teacher (76.65% in the paper),
  both with Swish activations as in MTARD's ``cifar100_models/wideresnet.py``. Names:
  ``init_conv``, ``layer.G.block.B.{batchnorm_0, conv_0, batchnorm_1, conv_1, shortcut}``,
  ``batchnorm``, ``logits``. The first convolution of a block pads ``SAME``-style: (1, 1, 1, 1)
  at stride 1, (0, 1, 0, 1) at stride 2, as TensorFlow does.

  The model normalises its input, and the statistics must be those the checkpoint was
  trained with. The official MTARD code builds its CIFAR-100 WRNs with the *CIFAR-10*
  mean/std, so the authors' WRN-22-6 clean teacher needs ``dataset="cifar10"`` (the
  ``paper-cifar100`` profile passes it); RobustBench's ``Gowal2020Uncovering`` WRN-70-16 was
  trained with the CIFAR-100 statistics (``dataset="cifar100"``). With ``dataset=None`` the
  statistics follow ``num_classes`` (100 -> CIFAR-100, 10 -> CIFAR-10), for models trained
  here.

The final pooling is adaptive: identical to upstream's ``avg_pool2d(out, 8)`` on 32x32 inputs.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .normalization import NormalizedModel, Stats, dataset_stats

# --------------------------------------------------------------------------------------------
# TRADES WideResNet
# --------------------------------------------------------------------------------------------


class TradesBlock(nn.Module):
    """Pre-activation wide block of TRADES (names ``bn1 relu1 conv1 bn2 relu2 conv2 convShortcut``).

    When the width changes, the pre-activation ``relu1(bn1(x))`` feeds both the residual branch
    and the 1x1 ``convShortcut``; otherwise the raw ``x`` is added back.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        # TRADES' parameter name, kept for checkpoint compatibility.
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.equal_in_out:
            out = self.relu1(self.bn1(x))
            shortcut = x
        else:
            x = self.relu1(self.bn1(x))
            out = x
            shortcut = self.convShortcut(x)
        out = self.relu2(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A stage of ``num_layers`` :class:`TradesBlock` (``.layer.0 .. .layer.{n-1}``)."""

    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                TradesBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(num_layers)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _check_wrn_depth(depth: int) -> int:
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            "Parameter `depth` should be 6 n + 4 with n >= 1 (10, 16, 22, 28, 34, ..., 70). "
            f"Found `depth = {depth!r}`."
        )
    return (depth - 4) // 6


def _check_width(width: int, name: str) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(
            f"Parameter `{name}` should be a positive int. Found `{name} = {width!r}`."
        )


class WideResNet(NormalizedModel):
    """TRADES WideResNet-``depth``-``widen_factor``.

    Initialisation as TRADES: convolutions ``N(0, 2 / (k^2 out_channels))``, BatchNorm weight
    1 and bias 0, linear bias 0.

    Args:
        depth: ``6 n + 4`` (34 for WRN-34-10), ``n`` blocks per stage.
        widen_factor: Width multiplier (10 for WRN-34-10).
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        sub_block1: Build TRADES' unused ``sub_block1`` (see the module docstring).
        drop_rate: Dropout inside the blocks (0 in TRADES).
        mean, std: Optional input normalisation; ``None`` (TRADES: none).
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        sub_block1: bool = True,
        drop_rate: float = 0.0,
        mean: Stats = None,
        std: Stats = None,
    ) -> None:
        super().__init__()
        n = _check_wrn_depth(depth)
        _check_width(widen_factor, "widen_factor")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._init_normalization(mean, std, in_channels)
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wrn34_10(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 34,
    widen_factor: int = 10,
    sub_block1: bool = True,
    drop_rate: float = 0.0,
    mean: Stats = None,
    std: Stats = None,
) -> WideResNet:
    """TRADES WRN-34-10 (MTARD's CIFAR-10 adversarial teacher), ~46 M parameters.

    ``depth``/``widen_factor`` build a smaller model of the same structure (tests).
    """
    return WideResNet(
        depth,
        widen_factor,
        num_classes=num_classes,
        in_channels=in_channels,
        sub_block1=sub_block1,
        drop_rate=drop_rate,
        mean=mean,
        std=std,
    )


# --------------------------------------------------------------------------------------------
# DeepMind / RobustBench WideResNet
# --------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, type[nn.Module]] = {"swish": nn.SiLU, "relu": nn.ReLU}


class DMBlock(nn.Module):
    """Pre-activation block of Gowal et al. (``batchnorm_0 conv_0 batchnorm_1 conv_1 shortcut``).

    ``relu_0``/``relu_1`` hold the activation (Swish ``x * sigmoid(x)`` for the MTARD teachers,
    despite the upstream names).
    """

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"Parameter `stride` should be 1 or 2. Found `stride = {stride!r}`.")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
            if self.has_shortcut
            else None
        )
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu_0(self.batchnorm_0(x))
        if self.has_shortcut:
            x = pre
        out = self.conv_0(F.pad(pre, self._pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return (self.shortcut(x) if self.has_shortcut else x) + out


class DMBlockGroup(nn.Module):
    """A stage of ``num_blocks`` :class:`DMBlock` (``.block.0 .. .block.{n-1}``)."""

    def __init__(
        self,
        num_blocks: int,
        in_planes: int,
        out_planes: int,
        stride: int,
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[
                DMBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    activation,
                )
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DMWideResNet(NormalizedModel):
    """WideResNet of Gowal et al. / RobustBench ``DMWideResNet``.

    Args:
        depth: ``6 n + 4`` (70 for WRN-70-16, 22 for WRN-22-6).
        width: Width multiplier (16, 6).
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        activation: ``"swish"`` (SiLU, the MTARD/Gowal teachers) or ``"relu"``.
        mean, std: Input normalisation (always applied; see :func:`wrn70_16` for defaults).
    """

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        activation: str = "swish",
        mean: Stats = (0.0, 0.0, 0.0),
        std: Stats = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        n = _check_wrn_depth(depth)
        _check_width(width, "width")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"Parameter `activation` should be one of {sorted(_ACTIVATIONS)}. "
                f"Found `activation = {activation!r}`."
            )
        act = _ACTIVATIONS[activation]
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._init_normalization(mean, std, in_channels)
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, channels[0], channels[1], 1, act),
            DMBlockGroup(n, channels[1], channels[2], 2, act),
            DMBlockGroup(n, channels[2], channels[3], 2, act),
        )
        self.batchnorm = nn.BatchNorm2d(channels[3])
        self.relu = act()
        self.logits = nn.Linear(channels[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(self.init_conv(self.normalize(x)))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _dm_wrn(
    depth: int,
    width: int,
    num_classes: int,
    in_channels: int,
    dataset: str | None,
    mean: Stats,
    std: Stats,
    activation: str,
) -> DMWideResNet:
    mean, std = dataset_stats(dataset, num_classes, mean, std)
    return DMWideResNet(
        depth,
        width,
        num_classes=num_classes,
        in_channels=in_channels,
        activation=activation,
        mean=mean,
        std=std,
    )


def wrn70_16(
    num_classes: int = 100,
    in_channels: int = 3,
    dataset: str | None = None,
    mean: Stats = None,
    std: Stats = None,
    depth: int = 70,
    width: int = 16,
    activation: str = "swish",
) -> DMWideResNet:
    """Gowal et al. WRN-70-16 with Swish (MTARD's CIFAR-100 adversarial teacher), ~267 M params.

    Normalisation: explicit ``mean``/``std``, else the statistics of ``dataset``
    (``"cifar100"`` | ``"cifar10"``), else those of the data set implied by ``num_classes``.
    ``depth``/``width`` build a smaller model of the same structure (tests).
    """
    return _dm_wrn(depth, width, num_classes, in_channels, dataset, mean, std, activation)


def wrn22_6(
    num_classes: int = 100,
    in_channels: int = 3,
    dataset: str | None = None,
    mean: Stats = None,
    std: Stats = None,
    depth: int = 22,
    width: int = 6,
    activation: str = "swish",
) -> DMWideResNet:
    """WRN-22-6 with Swish (MTARD's CIFAR-100 clean teacher); normalisation as :func:`wrn70_16`."""
    return _dm_wrn(depth, width, num_classes, in_channels, dataset, mean, std, activation)


__all__ = [
    "DMBlock",
    "DMBlockGroup",
    "DMWideResNet",
    "NetworkBlock",
    "TradesBlock",
    "WideResNet",
    "wrn22_6",
    "wrn34_10",
    "wrn70_16",
]
