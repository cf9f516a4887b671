"""Task ``regress-1d``: fit a 1-D signal made of several frequencies (the RWF paper's figure 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..metrics import ntk_eigenvalues
from ..nn import ARCHS
from ..records import MetricSpec, PlotSpec
from ._base import TASKS, Task, grid

__all__ = ["Regress1D", "Regress1DConfig", "signal_1d"]


@dataclass(frozen=True)
class Regress1DConfig:
    """``f(x) = sum_j sin(pi k_j x)`` on ``points`` evenly spaced ``x`` in [-1, 1]: component ``j``
    has ``k_j`` periods over the domain. ``ntk_points``: how many of the points (evenly picked) the
    end-of-training NTK is taken at; its cost grows with their square."""

    frequencies: tuple[float, ...] = (1.0, 4.0, 16.0)
    points: int = 256
    ntk_points: int = 128


def signal_1d(x: torch.Tensor, frequencies: tuple[float, ...]) -> torch.Tensor:
    """``sum_j sin(pi k_j x)``, shape ``(N, 1)`` for ``x`` of shape ``(N, 1)``."""
    return sum(torch.sin(math.pi * k * x) for k in frequencies)  # type: ignore[return-value]


@TASKS.register("regress-1d", Regress1DConfig)
class Regress1D(Task):
    """Regress ``f(x)`` with a coordinate network; the metric is the training MSE. At the end the
    empirical NTK's eigenvalues are stored: RWF's claim is a better-conditioned kernel."""

    name = "regress-1d"
    metric = MetricSpec(
        "mse", higher_is_better=False, log_scale=True, format=".3g", thresholds=(1e-2, 1e-3),
        checkpoints=(1000, 3000),
        # analyse()'s eigenvalues: a flatter spectrum is a better-conditioned kernel
        plots=(PlotSpec("spectrum", "ntk_eigenvalues", name="ntk", title="empirical NTK after training",
                        ylabel="eigenvalue", log=True,
                        caption="Eigenvalues of the empirical neural tangent kernel of the trained model on the"
                        " training points, largest first (log-log). A flatter spectrum is a better-conditioned"
                        " kernel: gradient descent fits every direction at a more even speed."),),
    )  # fmt: skip
    default_arch = "mlp(hidden=128,layers=3)"

    def __init__(self, config: Regress1DConfig = Regress1DConfig()) -> None:
        if not config.frequencies or any(not (math.isfinite(k) and k > 0) for k in config.frequencies):
            raise ValueError(f"frequencies must be positive numbers, got {config.frequencies!r}")
        if config.points < 8:
            raise ValueError(f"points must be >= 8, got {config.points!r}")
        if config.ntk_points < 1:
            raise ValueError(f"ntk_points must be >= 1, got {config.ntk_points!r}")
        nyquist = config.points / 2
        if max(config.frequencies) >= nyquist:
            raise ValueError(
                f"frequencies up to {max(config.frequencies):g} periods need more than {2 * max(config.frequencies):g}"
                f" points; raise points (now {config.points})"
            )
        self.config = config

    def setup(self, device: torch.device) -> None:
        self.inputs = grid(self.config.points, device=device)
        self.target = signal_1d(self.inputs, self.config.frequencies)

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return ARCHS.build(arch, arch_kwargs, fixed={"in_features": 1, "out_features": 1})

    def step_metric(self, loss_history: torch.Tensor) -> torch.Tensor | None:
        return loss_history  # the loss is the MSE at the training points

    def evaluate(self, pred: torch.Tensor) -> dict[str, float]:
        return {"mse": float(torch.mean((pred - self.target) ** 2))}

    def analyse(self, model: nn.Module) -> dict[str, Any]:
        n = min(self.config.ntk_points, self.config.points)
        idx = torch.linspace(0, self.config.points - 1, n).round().long()
        eig = ntk_eigenvalues(model, self.inputs[idx.to(self.inputs.device)])
        return {"ntk_eigenvalues": [float(v) for v in eig.cpu()]}
