"""Task ``deeponet-antiderivative``: learn the operator ``G(u)(y) = int_0^y u(s) ds`` from input
functions drawn from a Gaussian random field (Lu et al. 2021's first example; the RWF paper's
operator-learning benchmark)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..nn import ARCHS
from ..records import MetricSpec
from ._base import TASKS, Task

__all__ = ["Antiderivative", "AntiderivativeConfig", "gaussian_random_field"]


@dataclass(frozen=True)
class AntiderivativeConfig:
    """Functions ``u ~ GP(0, exp(-(x - x')^2 / (2 l^2)))`` on ``[0, 1]``, seen at ``sensors``
    evenly spaced points; ``functions`` for training with ``queries`` random ``y`` each, and
    ``test_functions`` held out, evaluated at every sensor location."""

    sensors: int = 100
    functions: int = 1000
    queries: int = 10
    test_functions: int = 200
    length_scale: float = 0.2
    seed: int = 0


def gaussian_random_field(n: int, x: torch.Tensor, length_scale: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` samples of a zero-mean GP with a squared-exponential kernel at points ``x`` (float64)."""
    cov = torch.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * length_scale**2))
    chol = torch.linalg.cholesky(cov + 1e-10 * torch.eye(len(x), dtype=x.dtype))
    return torch.randn(n, len(x), generator=gen, dtype=x.dtype) @ chol.T


def _antiderivative(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cumulative trapezoid from ``x[0]``, along the last axis."""
    steps = (u[:, 1:] + u[:, :-1]) / 2 * (x[1:] - x[:-1])
    return torch.cat([torch.zeros(len(u), 1, dtype=u.dtype), steps.cumsum(-1)], dim=-1)


@TASKS.register("deeponet-antiderivative", AntiderivativeConfig)
class Antiderivative(Task):
    """Learn the antiderivative operator ``G(u)(y) = int_0^y u`` with a DeepONet.

    Rows of the input pack ``[u(x_1..x_m), y]``; the target is ``G(u)(y)``. Metric: the mean
    over held-out functions of the relative L2 error of ``G(u)`` at the sensor locations."""

    name = "deeponet-antiderivative"
    metric = MetricSpec(
        "rel_l2", higher_is_better=False, log_scale=True, format=".3g", thresholds=(0.05, 0.02),
        checkpoints=(1000, 3000),
    )  # fmt: skip
    default_arch = "deeponet"
    lr_decay = (0.9, 1000)

    def __init__(self, config: AntiderivativeConfig = AntiderivativeConfig()) -> None:
        for name in ("sensors", "functions", "queries", "test_functions"):
            if getattr(config, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(config, name)!r}")
        if not config.length_scale > 0:
            raise ValueError(f"length_scale must be > 0, got {config.length_scale!r}")
        self.config = config

    def setup(self, device: torch.device) -> None:
        c = self.config
        gen = torch.Generator().manual_seed(c.seed)
        fine = 10  # the integral is taken on a 10x finer grid, then read at the sensors
        xf = torch.linspace(0, 1, fine * (c.sensors - 1) + 1, dtype=torch.float64)
        u = gaussian_random_field(c.functions + c.test_functions, xf, c.length_scale, gen)
        s = _antiderivative(u, xf)[:, ::fine]
        u, x = u[:, ::fine], xf[::fine]
        pick = torch.randint(0, c.sensors, (c.functions, c.queries), generator=gen)
        rows = torch.arange(c.functions)[:, None].expand(-1, c.queries)
        train = torch.cat([u[rows].reshape(-1, c.sensors), x[pick].reshape(-1, 1)], dim=1)
        self.inputs = train.float().to(device)
        self.target = s[rows, pick].reshape(-1, 1).float().to(device)
        nt = c.test_functions
        ut = u[c.functions :]
        self.test_inputs = (
            torch.cat([ut.repeat_interleave(c.sensors, 0), x.repeat(nt)[:, None]], dim=1).float().to(device)
        )
        self.test_target = s[c.functions :].float().to(device)

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return ARCHS.build(arch, arch_kwargs, fixed={"in_features": self.config.sensors + 1, "out_features": 1})

    def evaluate_model(self, model: nn.Module) -> dict[str, float]:
        pred = model(self.test_inputs).reshape(self.test_target.shape)
        err = torch.linalg.vector_norm(pred - self.test_target, dim=1)
        ref = torch.linalg.vector_norm(self.test_target, dim=1).clamp_min(1e-12)
        return {"rel_l2": float((err / ref).mean())}
