"""MobileNetV2 with CIFAR strides, the second student of MTARD (paper Table 3).

The structure of RSLAD's/MTARD's ``models/mobilenetv2.py`` (kuangliu/pytorch-cifar): the stem
is a 3x3 convolution with stride 1 (ImageNet: 2), and the ``(t=6, c=24, n=2, s=1)`` stage has
stride 1 (ImageNet: 2), so a 32x32 input reaches the head at 4x4. Inverted residual blocks
``conv1`` (1x1 expand) -> ``conv2`` (3x3 depthwise) -> ``conv3`` (1x1 project), each with
BatchNorm, ReLU after the first two (not ReLU6, as upstream). As upstream, the residual
connection exists for every stride-1 block; where the width changes it goes through a
``conv1x1 + BatchNorm`` ``shortcut``. Head: ``conv2`` 320 -> 1280, ``bn2``, global average
pooling, ``linear``. 2,296,922 parameters for 10 classes. No input normalisation by default.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .normalization import NormalizedModel, Stats

#: (expansion t, output channels c, blocks n, stride s) per stage, CIFAR strides.
CIFAR_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """expand (1x1) + depthwise (3x3, ``stride``) + project (1x1), residual if stride 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(NormalizedModel):
    """CIFAR MobileNetV2 (``conv1, bn1, layers.N, conv2, bn2, linear``).

    Args:
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        mean, std: Optional input normalisation (see :class:`NormalizedModel`).
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, mean: Stats = None, std: Stats = None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._init_normalization(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks = []
        in_planes = 32
        for expansion, out_planes, num_blocks, stride in CIFAR_CFG:
            for s in [stride] + [1] * (num_blocks - 1):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, mean: Stats = None, std: Stats = None
) -> MobileNetV2:
    """CIFAR MobileNetV2 (RSLAD/MTARD student), no input normalisation unless asked for."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
