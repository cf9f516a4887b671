"""The task interface the runner drives. Tasks never import a method; the runner joins them."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from .._registry import Registry

__all__ = ["TASKS", "Task", "grid"]


def grid(*sizes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Coordinates of a regular grid in ``[-1, 1]^d``: ``grid(H, W)`` is ``(H*W, 2)``, rows in
    'ij' (row-major) order, so ``target.reshape(H*W, C)`` lines up with it."""
    if not sizes or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
        raise ValueError(f"grid takes positive int sizes, e.g. grid(256, 256); got {sizes!r}")
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


class Task:
    """A problem to train on: data, a model builder, the loss and the metrics.

    Subclasses set ``name`` and the class attributes below, take their config dataclass in
    ``__init__`` (validating it) and implement :meth:`setup`, :meth:`build_model`,
    :meth:`evaluate`.
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = "psnr"  # the headline metric, computed every step from the loss
    unit: ClassVar[str] = ""
    metric_cap: ClassVar[float | None] = None  # the report's plots cap their axis here
    thresholds: ClassVar[tuple[float, ...]] = ()  # "steps to reach" columns of the summary
    checkpoints: ClassVar[tuple[int, ...]] = ()  # "metric at step" columns of the summary
    snapshot_steps: ClassVar[tuple[int, ...]] = ()  # steps whose predictions the report shows

    config: Any
    inputs: torch.Tensor
    target: torch.Tensor

    def setup(self, device: torch.device) -> None:
        """Load or generate the data onto ``device`` (errors on bad data are raised here)."""
        raise NotImplementedError

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def default_lr(self, model: nn.Module) -> float:
        return float(getattr(model, "default_lr", 1e-4))

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean((pred - target) ** 2)

    def step_metric(self, loss_history: torch.Tensor) -> torch.Tensor:
        """The headline metric after every step, from the loss history."""
        return loss_history

    def evaluate(self, pred: torch.Tensor) -> dict[str, float]:
        """Metrics of a prediction at an evaluation step."""
        raise NotImplementedError

    def snapshot(self, pred: torch.Tensor) -> torch.Tensor | None:
        """A uint8 (H, W, C) picture of a prediction for the report, or ``None``."""
        return None

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}


TASKS: Registry[Task] = Registry("task")
