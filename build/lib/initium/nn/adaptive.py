"""Layer-wise adaptive activations (Jagtap, Kawaguchi & Karniadakis, J. Comput. Phys. 2020,
arXiv 1906.01170; the layer-wise form of Proc. R. Soc. A 2020, arXiv 1909.12228)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AdaptiveActivation"]


class AdaptiveActivation(nn.Module):
    """``act(n * a * x)`` with one trainable slope ``a`` per layer and a fixed scale factor ``n``.

    ``a`` starts at ``1 / n``, so the wrapped activation computes exactly what it did before; the
    scale ``n >= 1`` multiplies the slope's gradient by ``n`` and so speeds up its adaptation (the
    paper uses ``n = 10``).
    """

    def __init__(self, activation: nn.Module, scale: float = 10.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.activation = activation
        self.scale = float(scale)
        self.slope = nn.Parameter(torch.tensor(1.0 / self.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation((self.scale * self.slope) * x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
