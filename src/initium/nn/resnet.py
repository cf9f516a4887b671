"""A CIFAR-style residual network (He, Zhang, Ren & Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, section 4.2): the model zoo's family with real 3x3 convolutions.

``depth = 6n + 2`` weighted layers: a 3x3 stem convolution, three stages of ``n`` basic blocks
(two 3x3 convolutions each) with ``width``, ``2 width`` and ``4 width`` channels, the feature map
halved (stride 2) at the first block of stages 2 and 3, global average pooling and a linear head.
``ResNet(20, 16)`` is the paper's ResNet-20 (0.27 M parameters on 3x32x32 inputs). Where a block
changes the shape, its shortcut is a 1x1 convolution with BatchNorm (the paper's option B; its
CIFAR nets use zero-padding, option A, which has no weights for a weight generator to learn).

:class:`BottleneckResNet` is the paper's ImageNet family (section 3.3, table 1): a 7x7 stride-2 stem
and 3x3 max pooling, four stages of bottleneck blocks (1x1, 3x3, 1x1 convolutions, 4x expansion)
with 64, 128, 256, 512 inner channels; ``blocks=(3, 4, 6, 3)`` is ResNet-50 (25.6 M parameters
with 1000 classes, 23.5 M with 10), the size the graph hypernetwork's benchmark predicts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "BottleneckResNet", "ResNet", "build_bottleneck_resnet", "build_resnet"]


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """A block's skip path: the identity, or a strided 1x1 conv + BatchNorm where the shape changes."""
    if stride != 1 or cin != cout:
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Identity()


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # no bias: the BatchNorm after every convolution has its own shift
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; ``shortcut`` is the identity,
    or a strided 1x1 convolution + BatchNorm where the channels or the size change."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of ``depth = 6n + 2`` layers (He et al. 2016) on ``in_shape = (C, H, W)``
    images, ``num_classes`` logits out.

    Module names (stable: the weight VAE matches layers by them): ``stem.0`` (conv), ``stem.1``
    (BatchNorm), ``stages.{s}.{b}.conv1|bn1|conv2|bn2|shortcut`` for stage ``s`` in 0..2 and block
    ``b`` in 0..n-1, ``head`` (linear). Init (He et al. 2015, as torchvision's ResNets): every
    convolution ``N(0, 2 / fan_out)``, ``fan_out = out_channels * k * k``; BatchNorm scale 1, shift 0;
    the head keeps PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    ``config`` holds the keyword arguments of the registered arch ``resnet`` (``in_shape``,
    ``out_features``, ``depth``, ``width``), so ``initium.nn.ARCHS.build("resnet", model.config)``
    rebuilds it, as for the other classifiers.
    """

    # SGD with momentum 0.9 as classify trains every classifier. He et al. use 0.1 at batch 128 with
    # weight decay; classify's batch is 32 and has no decay, and 0.01 is the rate the other
    # classifier archs carry, so one lr compares them (measured on digits, 5 epochs: ResNet-20 width 16
    # 97% test accuracy, depth 8 width 4 96%).
    default_lr = 0.01

    def __init__(
        self, depth: int = 20, width: int = 16, in_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10
    ) -> None:
        super().__init__()
        for name, value, least in (("depth", depth, 8), ("width", width, 1), ("num_classes", num_classes, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"resnet {name} must be an int >= {least}, got {value!r}")
        if (depth - 2) % 6:
            n = max(1, round((depth - 2) / 6))
            raise ValueError(
                f"resnet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110 ...), got {depth}; nearest: {6 * n + 2}"
            )
        shape = tuple(in_shape)
        if len(shape) != 3 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
            raise ValueError(
                f"resnet takes (C, H, W) images, e.g. in_shape=(3, 32, 32), got {in_shape!r}"
                " (for 1-D signals such as mnist1d use classifier-cnn)"
            )
        blocks = (depth - 2) // 6
        self.depth, self.width, self.in_shape = depth, width, shape
        self.num_classes = self.out_features = num_classes
        self.config: dict[str, Any] = dict(in_shape=list(shape), out_features=num_classes, depth=depth, width=width)
        self.stem = nn.Sequential(_conv3x3(shape[0], width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for s in range(3):
            cout = width * 2**s
            stage = [BasicBlock(cin if b == 0 else cout, cout, 2 if (s > 0 and b == 0) else 1) for b in range(blocks)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. 2015 (fan_out, as torchvision): keeps the backward variance
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def build_resnet(in_shape: tuple[int, ...], out_features: int, depth: int = 20, width: int = 16) -> ResNet:
    """CIFAR-style ResNet (He et al. 2016): depth 6n+2, widths w/2w/4w, BatchNorm, He init."""
    return ResNet(depth=depth, width=width, in_shape=in_shape, num_classes=out_features)


class Bottleneck(nn.Module):
    """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``: 1x1 down to
    ``mid`` channels, 3x3 (with the stride, as torchvision's "ResNet v1.5"), 1x1 up to ``4 mid``;
    ``shortcut`` a strided 1x1 convolution + BatchNorm where the channels or the size change."""

    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        cout = mid * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = _conv3x3(mid, mid, stride), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """ImageNet-style ResNet of bottleneck blocks (He et al. 2016, table 1): ``blocks`` per stage
    (``(3, 4, 6, 3)``: ResNet-50, ``(3, 4, 23, 3)``: ResNet-101), inner widths ``width * 2**s``, on
    ``in_shape = (C, H, W)`` images (224 x 224 in the paper), ``num_classes`` logits.

    Module names: ``stem.0`` (7x7 conv), ``stem.1`` (BatchNorm), ``stages.{s}.{b}.conv1..3|bn1..3|
    shortcut``, ``head`` (linear). Init as :class:`ResNet` (He et al. 2015, fan-out, torchvision's).
    ``config`` holds the registered arch ``resnet-bottleneck``'s keyword arguments."""

    default_lr = 0.01

    def __init__(
        self,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        width: int = 64,
        in_shape: tuple[int, ...] = (3, 224, 224),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        blocks = tuple(blocks)
        if not blocks or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in blocks):
            raise ValueError(f"resnet-bottleneck blocks must be ints >= 1 per stage, e.g. (3, 4, 6, 3), got {blocks!r}")
        for name, value, least in (("width", width, 1), ("num_classes", num_classes, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"resnet-bottleneck {name} must be an int >= {least}, got {value!r}")
        shape = tuple(in_shape)
        if len(shape) != 3 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
            raise ValueError(f"resnet-bottleneck takes (C, H, W) images, e.g. in_shape=(3, 224, 224), got {in_shape!r}")
        self.blocks, self.width, self.in_shape = blocks, width, shape
        self.num_classes = self.out_features = num_classes
        self.config: dict[str, Any] = dict(
            in_shape=list(shape), out_features=num_classes, blocks=list(blocks), width=width
        )
        stem = nn.Conv2d(shape[0], width, 7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(stem, nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1))
        stages, cin = [], width
        for s, n in enumerate(blocks):
            mid = width * 2**s
            stage = [Bottleneck(cin if b == 0 else mid * 4, mid, 2 if (s > 0 and b == 0) else 1) for b in range(n)]
            stages.append(nn.Sequential(*stage))
            cin = mid * 4
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def build_bottleneck_resnet(
    in_shape: tuple[int, ...], out_features: int, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64
) -> BottleneckResNet:
    """ImageNet-style bottleneck ResNet (He et al. 2016): ``blocks=(3, 4, 6, 3)`` is ResNet-50."""
    return BottleneckResNet(blocks=blocks, width=width, in_shape=in_shape, num_classes=out_features)
