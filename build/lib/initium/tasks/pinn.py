"""Task ``pinn-advection``: a physics-informed network for the 1-D advection equation
``u_t + c u_x = 0`` on ``x in [0, 2 pi)``, ``t in [0, 1]``, periodic in ``x``,
``u(x, 0) = sin(x)``; exact solution ``sin(x - c t)`` (Krishnapriyan et al. 2021's failure mode,
the RWF paper's PINN benchmark)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..metrics import relative_l2
from ..nn import ARCHS
from ..records import MetricSpec
from ._base import TASKS, Task

__all__ = ["Advection", "AdvectionConfig"]


@dataclass(frozen=True)
class AdvectionConfig:
    """``c``: the wave speed; ``collocation``: residual points, ``boundary``: points on the
    initial line and on each periodic edge (drawn once, with the data ``seed``); the error is
    measured on a ``grid_x`` x ``grid_t`` grid."""

    c: float = 10.0
    collocation: int = 4096
    boundary: int = 256
    grid_x: int = 256
    grid_t: int = 101
    seed: int = 0


def _to_unit(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Physical ``(x, t)`` -> network inputs in ``[-1, 1]^2``."""
    return torch.stack([x / math.pi - 1.0, 2.0 * t - 1.0], dim=-1)


@TASKS.register("pinn-advection", AdvectionConfig)
class Advection(Task):
    """Solve the advection equation ``u_t + c u_x = 0`` (periodic, ``u(x, 0) = sin x``) with a plain PINN.

    Loss = mean residual^2 + mean initial-condition error^2 + mean periodic-edge mismatch^2
    (all weights 1, the plain PINN); metric = relative L2 error against ``sin(x - c t)``."""

    batchable = False  # its residual takes autograd derivatives inside the step, which vmap cannot batch
    name = "pinn-advection"
    metric = MetricSpec(
        "rel_l2", higher_is_better=False, log_scale=True, format=".3g", thresholds=(0.1, 0.05),
        checkpoints=(1000, 3000),
    )  # fmt: skip
    default_arch = "mlp"
    lr_decay = (0.9, 2000)  # Adam 1e-3 decayed 0.9 every 2000 steps, as in jaxpi's configs

    def __init__(self, config: AdvectionConfig = AdvectionConfig()) -> None:
        if not math.isfinite(config.c):
            raise ValueError(f"c must be finite, got {config.c!r}")
        for name in ("collocation", "boundary", "grid_x", "grid_t"):
            if getattr(config, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(config, name)!r}")
        self.config = config

    def setup(self, device: torch.device) -> None:
        c = self.config
        gen = torch.Generator().manual_seed(c.seed)
        xc, tc = torch.rand(c.collocation, generator=gen) * 2 * math.pi, torch.rand(c.collocation, generator=gen)
        x0 = torch.rand(c.boundary, generator=gen) * 2 * math.pi
        tb = torch.rand(c.boundary, generator=gen)
        # one batch: residual points, initial line, left edge, right edge
        edges = [_to_unit(torch.zeros_like(tb), tb), _to_unit(torch.full_like(tb, 2 * math.pi), tb)]
        pts = torch.cat([_to_unit(xc, tc), _to_unit(x0, torch.zeros_like(x0)), *edges])
        self.inputs = pts.to(device)
        self.target = torch.zeros(len(pts), 1, device=device)  # the residual's target; unused otherwise
        self.u0 = torch.sin(x0)[:, None].to(device)
        xs = torch.linspace(0, 2 * math.pi, c.grid_x + 1)[:-1]
        ts = torch.linspace(0, 1, c.grid_t)
        tt, xx = torch.meshgrid(ts, xs, indexing="ij")
        self.eval_inputs = _to_unit(xx.reshape(-1), tt.reshape(-1)).to(device)
        self.exact = torch.sin(xx - c.c * tt).reshape(-1, 1).to(device)

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return ARCHS.build(arch, arch_kwargs, fixed={"in_features": 2, "out_features": 1})

    def forward_loss(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, b = self.config.collocation, self.config.boundary
        with torch.enable_grad():  # the final, no_grad evaluation step needs input derivatives too
            pts = inputs.detach().requires_grad_(True)
            u = model(pts)
            du = torch.autograd.grad(u[:n].sum(), pts, create_graph=torch.is_grad_enabled())[0][:n]
        # chain rule from the unit inputs: d/dx = (1/pi) d/dx', d/dt = 2 d/dt'
        residual = 2.0 * du[:, 1] + self.config.c / math.pi * du[:, 0]
        initial = u[n : n + b] - self.u0
        periodic = u[n + b : n + 2 * b] - u[n + 2 * b :]
        loss = residual.pow(2).mean() + initial.pow(2).mean() + periodic.pow(2).mean()
        return loss, u

    def evaluate_model(self, model: nn.Module) -> dict[str, float]:
        return {"rel_l2": relative_l2(model(self.eval_inputs), self.exact)}
