"""Coordinate MLPs with an input encoding: random Fourier features (Tancik et al., NeurIPS 2020,
arXiv 2006.10739) and NeRF's positional encoding (Mildenhall et al., ECCV 2020)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from .siren import check_sizes

__all__ = ["PEMLP", "FourierFeatures", "FourierMLP", "PositionalEncoding"]


class FourierFeatures(nn.Module):
    """``gamma(v) = [cos(2 pi B u), sin(2 pi B u)]``, ``u = (v + 1) / 2``, with a fixed
    ``B ~ N(0, sigma^2)`` of shape ``(features, in_features)`` (Tancik et al. 2020, "Gaussian"
    mapping).

    Tancik et al. feed coordinates in ``[0, 1]``; initium's grids span ``[-1, 1]``. Mapping ``v``
    back to ``u`` keeps ``sigma`` meaning what it means in the paper (``2 pi B u = pi B v + pi B 1``:
    half the frequency on ``v``, plus a fixed phase).
    """

    def __init__(self, in_features: int, features: int = 256, sigma: float = 10.0) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        # A buffer, not a parameter: the paper keeps B fixed, and optimisers must not see it.
        self.register_buffer("B", torch.randn(features, in_features) * sigma)
        self.out_features = 2 * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = math.pi * (x + 1) @ self.B.T
        return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)

    def extra_repr(self) -> str:
        return f"features={self.B.shape[0]}, sigma={self.sigma}"


class PositionalEncoding(nn.Module):
    """``gamma(p) = (p, sin(2^k pi p), cos(2^k pi p))`` for ``k = 0 .. frequencies-1`` (NeRF)."""

    def __init__(self, in_features: int, frequencies: int = 10) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(frequencies)) * math.pi)
        self.out_features = in_features * (1 + 2 * frequencies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = (x[..., None] * self.freqs).flatten(-2)
        return torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=-1)

    def extra_repr(self) -> str:
        return f"frequencies={self.freqs.numel()}"


def _relu_mlp(in_features: int, out_features: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` ReLU layers and a linear head, Glorot-initialised with zero biases: the
    default of the stax/Keras Dense layers both papers trained with."""
    widths = [in_features] + [hidden] * layers
    mods: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        mods += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    mods.append(nn.Linear(hidden, out_features))
    for m in mods:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*mods)


class EncodedMLP(nn.Module):
    """An input encoding followed by a ReLU MLP: the shared body of :class:`FourierMLP` and
    :class:`PEMLP`."""

    default_lr = 1e-3  # Tancik et al. 2020: Adam 1e-3, for Fourier features and their PE baseline

    def __init__(
        self, encoding: nn.Module, in_features: int, out_features: int, hidden: int, layers: int, **options: Any
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.config = dict(in_features=in_features, out_features=out_features, hidden=hidden, layers=layers, **options)
        self.encoding = encoding
        self.net = _relu_mlp(encoding.out_features, out_features, hidden, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoding(x))


class FourierMLP(EncodedMLP):
    """Random Fourier features followed by a ReLU MLP (Tancik et al. 2020)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 256,
        layers: int = 4,
        features: int = 256,
        sigma: float = 10.0,
    ) -> None:
        check_sizes(in_features=in_features, out_features=out_features, hidden=hidden, layers=layers, features=features)
        encoding = FourierFeatures(in_features, features, sigma)
        super().__init__(encoding, in_features, out_features, hidden, layers, features=features, sigma=sigma)


class PEMLP(EncodedMLP):
    """NeRF's positional encoding followed by a ReLU MLP."""

    def __init__(
        self, in_features: int, out_features: int, hidden: int = 256, layers: int = 4, frequencies: int = 10
    ) -> None:
        check_sizes(
            in_features=in_features, out_features=out_features, hidden=hidden, layers=layers, frequencies=frequencies
        )
        encoding = PositionalEncoding(in_features, frequencies)
        super().__init__(encoding, in_features, out_features, hidden, layers, frequencies=frequencies)
