"""Small classifiers for the ``classify`` task: an MLP and a CNN, both with PyTorch's default init
(``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, as in the FA literature's reference code) and ReLU."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

__all__ = ["ClassifierCNN", "ClassifierMLP"]


def _check_shape(in_shape: tuple[int, ...], out_features: int) -> tuple[int, ...]:
    shape = tuple(in_shape)
    if not shape or any(not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"in_shape must be the shape of one input such as (1, 8, 8), got {in_shape!r}")
    if not isinstance(out_features, int) or out_features < 2:
        raise ValueError(f"out_features (the number of classes) must be an int >= 2, got {out_features!r}")
    return shape


class ClassifierMLP(nn.Module):
    """Flatten, then ``hidden`` fully connected ReLU layers and a linear output (the logits).

    The default ``hidden=(256, 256)`` on 8x8 digits is the 64-256-256-10 net of the issue's probe.
    """

    default_lr = 0.01  # SGD with momentum 0.9, as in Cheon et al. 2024's FA experiments

    def __init__(self, in_shape: tuple[int, ...], out_features: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        shape = _check_shape(in_shape, out_features)
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must list at least one width >= 1, e.g. (256, 256); got {hidden!r}")
        self.in_features, self.out_features = math.prod(shape), out_features
        self.config = dict(in_shape=list(shape), out_features=out_features, hidden=list(hidden))
        widths = [self.in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ClassifierCNN(nn.Module):
    """Two 3-wide convolutions (``channels``, ReLU, 'same' zero padding), a 2x average pool, then a
    linear output. 2-D inputs ``(C, H, W)`` use ``Conv2d``, 1-D signals ``(C, L)`` use ``Conv1d``."""

    default_lr = 0.01

    def __init__(
        self, in_shape: tuple[int, ...], out_features: int, channels: tuple[int, ...] = (16, 32), kernel: int = 3
    ) -> None:
        super().__init__()
        shape = _check_shape(in_shape, out_features)
        if len(shape) not in (2, 3):
            raise ValueError(f"classifier-cnn takes (C, L) signals or (C, H, W) images, got in_shape={shape}")
        if not channels or any(not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"channels must list at least one width >= 1, e.g. (16, 32); got {channels!r}")
        if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd int >= 1 (symmetric 'same' padding), got {kernel!r}")
        dims = len(shape) - 1
        conv, pool = (nn.Conv1d, nn.AvgPool1d) if dims == 1 else (nn.Conv2d, nn.AvgPool2d)
        self.out_features = out_features
        self.config = dict(in_shape=list(shape), out_features=out_features, channels=list(channels), kernel=kernel)
        layers: list[nn.Module] = []
        widths = [shape[0], *channels]
        for a, b in itertools.pairwise(widths):
            layers += [conv(a, b, kernel, padding=kernel // 2), nn.ReLU()]
        layers += [pool(2), nn.Flatten()]
        flat = channels[-1] * math.prod(n // 2 for n in shape[1:])
        if flat < 1:
            raise ValueError(f"in_shape {shape} is too small for the 2x pooling")
        layers.append(nn.Linear(flat, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
