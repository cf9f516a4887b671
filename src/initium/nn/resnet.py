"""A CIFAR-style residual network (He, Zhang, Ren & Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, section 4.2): the model zoo's family with real 3x3 convolutions.

``depth = 6n + 2`` weighted layers: a 3x3 stem convolution, three stages of ``n`` basic blocks
(two 3x3 convolutions each) with ``width``, ``2 width`` and ``4 width`` channels, the feature map
halved (stride 2) at the first block of stages 2 and 3, global average pooling and a linear head.
``ResNet(20, 16)`` is the paper's ResNet-20 (0.27 M parameters on 3x32x32 inputs). Where a block
changes the shape, its shortcut is a 1x1 convolution with BatchNorm (the paper's option B; its
CIFAR nets use zero-padding, option A, which has no weights for a weight generator to learn).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet", "build_resnet"]


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
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

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
