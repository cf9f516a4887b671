"""SIREN: sinusoidal representation networks (Sitzmann et al., NeurIPS 2020, arXiv 2006.09661)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

__all__ = ["Sine", "Siren", "siren_uniform_"]


class Sine(nn.Module):
    """``sin(w0 * x)``; ``w0`` scales the pre-activation so that the first layer spans many periods."""

    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


@torch.no_grad()
def siren_uniform_(
    weight: torch.Tensor, *, first: bool, w0: float = 30.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """SIREN's init, in place: ``U(-1/n, 1/n)`` for the first layer, else ``U(-c, c)``,
    ``c = sqrt(6/n) / w0``, with ``n`` the fan-in (Sitzmann et al. 2020, section 3.2).

    The hidden-layer bound keeps ``w0 * W x`` distributed like ``U(-sqrt(6/n), sqrt(6/n)) x``, so
    every sine layer sees pre-activations of standard deviation ~1 whatever its depth.
    """
    n = weight.shape[1]
    bound = 1.0 / n if first else math.sqrt(6.0 / n) / w0
    return weight.uniform_(-bound, bound, generator=generator)


class Siren(nn.Module):
    """SIREN (Sitzmann et al. 2020): ``layers`` sine layers of width ``hidden`` and a linear output layer.

    Biases keep PyTorch's default ``U(-1/sqrt(n), 1/sqrt(n))``, as in the authors' code.
    """

    default_lr = 1e-4  # Sitzmann et al. 2020: Adam 1e-4 for image fitting

    def __init__(
        self, in_features: int, out_features: int, hidden: int = 256, layers: int = 3, w0: float = 30.0
    ) -> None:
        super().__init__()
        check_sizes(in_features=in_features, out_features=out_features, hidden=hidden, layers=layers)
        if not w0 > 0:
            raise ValueError(f"w0 must be > 0, got {w0}")
        self.in_features, self.out_features = in_features, out_features
        self.config = dict(in_features=in_features, out_features=out_features, hidden=hidden, layers=layers, w0=w0)
        widths = [in_features] + [hidden] * layers
        mods: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            linear = nn.Linear(fan_in, fan_out)
            siren_uniform_(linear.weight, first=i == 0, w0=w0)
            mods += [linear, Sine(w0)]
        head = nn.Linear(hidden, out_features)
        siren_uniform_(head.weight, first=False, w0=w0)
        self.net = nn.Sequential(*mods, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_sizes(**sizes: int) -> None:
    """Raise a ValueError naming the first size that is not a positive int (the models' shared check)."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
