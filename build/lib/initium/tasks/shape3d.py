"""Task ``shape-3d``: occupancy of a 3-D shape generated in code (the RWF paper's shape
representation experiment, with an analytic shape instead of a downloaded mesh)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import iou
from ..nn import ARCHS
from ..records import MetricSpec
from ._base import TASKS, Task

__all__ = ["Shape3D", "Shape3DConfig", "occupancy"]


@dataclass(frozen=True)
class Shape3DConfig:
    """``points``: training points, ``test_points``: held-out points for the IoU, both uniform in
    ``[-1, 1]^3`` (half of the training points jittered around the surface, where the detail is);
    ``seed``: the data's own seed (the same shape and points for every run)."""

    points: int = 32768
    test_points: int = 65536
    surface_std: float = 0.02
    seed: int = 0


def occupancy(p: torch.Tensor) -> torch.Tensor:
    """Inside (True) the union of two ellipsoids, a torus and a thin rod; ``p`` is ``(N, 3)``."""
    x, y, z = p.unbind(-1)
    body = ((x + 0.25) / 0.5) ** 2 + (y / 0.35) ** 2 + (z / 0.3) ** 2 <= 1
    head = ((x - 0.45) / 0.2) ** 2 + ((y - 0.2) / 0.2) ** 2 + (z / 0.25) ** 2 <= 1
    ring = (torch.sqrt((x - 0.1) ** 2 + z**2) - 0.6) ** 2 + (y + 0.1) ** 2 <= 0.08**2
    rod = (x.abs() <= 0.9) & ((y - 0.5) ** 2 + (z - 0.3) ** 2 <= 0.04**2)
    return body | head | ring | rod


@TASKS.register("shape-3d", Shape3DConfig)
class Shape3D(Task):
    """Fit occupancy logits with binary cross-entropy; the metric is the IoU of ``logit > 0`` with
    the true occupancy at held-out points."""

    name = "shape-3d"
    metric = MetricSpec("iou", format=".3f", thresholds=(0.8, 0.9), checkpoints=(200, 500))
    default_arch = "fourier(sigma=3.0)"

    def __init__(self, config: Shape3DConfig = Shape3DConfig()) -> None:
        if config.points < 16 or config.test_points < 16:
            raise ValueError(f"points and test_points must be >= 16, got {config.points}, {config.test_points}")
        if not config.surface_std > 0:
            raise ValueError(f"surface_std must be > 0, got {config.surface_std!r}")
        self.config = config

    def setup(self, device: torch.device) -> None:
        c = self.config
        gen = torch.Generator().manual_seed(c.seed)
        uniform = torch.rand(c.points - c.points // 2, 3, generator=gen) * 2 - 1
        # near-surface points: uniform points whose small jitter flips their occupancy, then jittered again
        cand = torch.rand(8 * c.points, 3, generator=gen) * 2 - 1
        moved = cand + c.surface_std * torch.randn(cand.shape, generator=gen)
        near = cand[occupancy(cand) != occupancy(moved)]
        near = near[: c.points // 2]
        self.inputs = torch.cat([uniform, near]).to(device)
        self.target = occupancy(self.inputs).float()[:, None]
        self.test_inputs = (torch.rand(c.test_points, 3, generator=gen) * 2 - 1).to(device)
        self.test_occupancy = occupancy(self.test_inputs)

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return ARCHS.build(arch, arch_kwargs, fixed={"in_features": 3, "out_features": 1})

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(pred, target)

    def evaluate(self, pred: torch.Tensor) -> dict[str, float]:
        return {"train_iou": iou(pred[:, 0] > 0, self.target[:, 0] > 0.5)}

    def evaluate_model(self, model: nn.Module) -> dict[str, float]:
        return {"iou": iou(model(self.test_inputs)[:, 0] > 0, self.test_occupancy)}
