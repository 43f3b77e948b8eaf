"""Small CNNs for Fashion-MNIST, the CPU-scale stand-in for CIFAR.

Not from the paper: MTARD is evaluated on CIFAR only. These two networks play the paper's
roles at a size a 2-core CPU trains in minutes (see ``mtard-reference.md``, "Fashion-MNIST"):

* :func:`small_cnn` — the student: two ``conv3x3 + BatchNorm + ReLU + maxpool`` layers
  (16, 32 channels) and a two-layer head (128 hidden units); about 0.21 M parameters.
  BatchNorm makes train/eval mode matter, as for the paper's ResNet-18 student (the MTARD
  attack runs the student in eval mode).
* :func:`large_cnn` — the teachers (clean and adversarial): three ``conv3x3 + BatchNorm +
  ReLU`` layers (16, 64, 128 channels, max-pooling after the first two) and a two-layer head
  (256 hidden units); about 1.7 M parameters, most of them in the head, so it stays cheap:
  the layers at full 28x28 resolution are memory-bound on a CPU, hence only 16 channels
  there (32 would cost about 1.5x the time for the same parameter count).

Both take ``[0, 1]`` inputs with ``in_channels = 1`` by default, work on 28x28 images (the
feature map reaches the head at 7x7) and on other sizes such as 32x32 (an adaptive average
pooling brings it to 7x7). No input normalisation by default.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .normalization import NormalizedModel, Stats


class ConvNet(NormalizedModel):
    """``features`` (conv3x3-BN-ReLU, optional 2x2 max-pool each) -> 7x7 -> ``head`` (MLP).

    Args:
        channels: Output channels of each convolution.
        pool: Whether a 2x2 max-pooling follows each convolution (same length as ``channels``).
        hidden: Width of the hidden layer of the head.
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        mean, std: Optional input normalisation (see :class:`NormalizedModel`).
    """

    def __init__(
        self,
        channels: Sequence[int],
        pool: Sequence[bool],
        hidden: int,
        num_classes: int = 10,
        in_channels: int = 1,
        mean: Stats = None,
        std: Stats = None,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        pool = tuple(pool)
        if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(
                "Parameter `channels` should be a non-empty sequence of positive ints. "
                f"Found `channels = {channels!r}`."
            )
        if len(pool) != len(channels):
            raise ValueError(
                f"Parameter `pool` should have one entry per convolution ({len(channels)}). "
                f"Found `pool = {pool!r}`."
            )
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(
                f"Parameter `hidden` should be a positive int. Found `hidden = {hidden!r}`."
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self._init_normalization(mean, std, in_channels)
        layers: list[nn.Module] = []
        previous = in_channels
        for width, pooled in zip(channels, pool, strict=True):
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if pooled:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(previous * 49, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        # Identity on 28x28 inputs (7x7 maps); averages larger maps down to 7x7.
        return self.head(self.pool(self.features(self.normalize(x))))


def small_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    channels: Sequence[int] = (16, 32),
    hidden: int = 128,
    mean: Stats = None,
    std: Stats = None,
) -> ConvNet:
    """Fashion-MNIST student: two conv layers with BatchNorm, ~0.21 M parameters."""
    return ConvNet(
        channels,
        [True] * len(tuple(channels)),
        hidden,
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )


def large_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    channels: Sequence[int] = (16, 64, 128),
    hidden: int = 256,
    mean: Stats = None,
    std: Stats = None,
) -> ConvNet:
    """Fashion-MNIST teacher: three conv layers with BatchNorm, ~1.7 M parameters.

    Max-pooling follows every convolution but the last.
    """
    n = len(tuple(channels))
    return ConvNet(
        channels,
        [i < min(n - 1, 2) for i in range(n)],
        hidden,
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
    )
