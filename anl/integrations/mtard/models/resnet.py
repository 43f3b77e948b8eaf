"""CIFAR ResNets: the ResNet-18 student and the ResNet-56 clean teacher of MTARD.

* :class:`ResNet` / :func:`resnet18` — the CIFAR variant of ResNet-18 used as the student by
  RSLAD and MTARD (their ``models/resnet.py``, itself kuangliu/pytorch-cifar): a 3x3 stem
  convolution with stride 1 and no max-pooling, four stages of two :class:`BasicBlock` with
  64, 128, 256, 512 channels, global average pooling and a linear layer ``linear``.
  11,173,962 parameters for 10 classes. No input normalisation by default: the MTARD/RSLAD
  CIFAR-10 students see ``[0, 1]`` inputs directly.
* :class:`CifarResNet` / :func:`resnet56` — the ResNet-56 of chenyaofo/pytorch-cifar-models
  (``pytorch_cifar_models/resnet.py``), the clean CIFAR-10 teacher named in the paper (93.18%
  clean accuracy in the paper's Table 1). 16-channel stem, three stages of nine
  :class:`CifarBasicBlock` with 16, 32, 64 channels, a ``conv1x1 + BatchNorm`` ``downsample``
  where the shape changes, and ``fc``. About 0.86 M parameters. chenyaofo trained on inputs
  standardised with mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010); the model
  applies that normalisation itself, so it takes ``[0, 1]`` inputs.

Parameter names match the upstream code, so upstream state dicts load strictly. The final
pooling is adaptive (identical to the upstream ``avg_pool2d(out, 4)`` on 32x32 inputs, and also
valid on 28x28 inputs).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .normalization import CHENYAOFO_CIFAR10_STD, CIFAR10_MEAN, NormalizedModel, Stats


class BasicBlock(nn.Module):
    """Residual block of kuangliu's CIFAR ResNet: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x))``.

    ``shortcut`` is the identity (an empty ``nn.Sequential``) or ``conv1x1 + BatchNorm`` when the
    stride or the width changes.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(NormalizedModel):
    """kuangliu/RSLAD CIFAR ResNet (``conv1, bn1, layer1..layer4, linear``).

    Args:
        num_blocks: Blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        mean, std: Optional input normalisation (see :class:`NormalizedModel`).
    """

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Stats = None,
        std: Stats = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._init_normalization(mean, std, in_channels)
        self._in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)
        self.linear = nn.Linear(512 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self._in_planes, planes, s))
            self._in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(
    num_classes: int = 10, in_channels: int = 3, mean: Stats = None, std: Stats = None
) -> ResNet:
    """CIFAR ResNet-18 (RSLAD/MTARD student), no input normalisation unless asked for."""
    return ResNet(
        (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, mean=mean, std=std
    )


class CifarBasicBlock(nn.Module):
    """chenyaofo's block: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + downsample(x))``."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(NormalizedModel):
    """chenyaofo/pytorch-cifar-models ResNet (``conv1, bn1, layer1..layer3, fc``).

    Depth ``6 n + 2`` with ``n`` blocks per stage (``n = 9`` for ResNet-56). Initialisation as
    upstream: Kaiming-normal (fan-out) convolutions, BatchNorm weight 1 and bias 0.

    Args:
        depth: 20, 32, 44, 56, ... (``(depth - 2) % 6 == 0``).
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        mean, std: Input normalisation; ``None`` for none.
    """

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Stats = CIFAR10_MEAN,
        std: Stats = CHENYAOFO_CIFAR10_STD,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"Parameter `depth` should be 6 n + 2 with n >= 1 (20, 32, 44, 56, ...). "
                f"Found `depth = {depth!r}`."
            )
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._init_normalization(mean, std, in_channels)
        self.inplanes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64 * CifarBasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [CifarBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [CifarBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.avgpool(out).flatten(1))


def resnet56(
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Stats = CIFAR10_MEAN,
    std: Stats = CHENYAOFO_CIFAR10_STD,
    depth: int = 56,
) -> CifarResNet:
    """chenyaofo ResNet-56 (MTARD's clean CIFAR-10 teacher), normalising with chenyaofo's stats.

    Pass ``mean``/``std`` for a checkpoint trained with other statistics, ``None`` for none.
    """
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
