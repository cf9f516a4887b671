"""Method ``fa-noise``: random-noise pretraining under the model's own learning rule (Cheon, Lee &
Paik, NeurIPS 2024, arXiv 2405.16731); see :func:`initium.fa.noise_pretrain`.

The learning rule is the model's: convert it first (``initium.fa.convert``, or ``initium run
--rule fa``); on a backprop model the same pretraining runs under backprop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import fa
from ._base import METHODS, Method

__all__ = ["FANoise", "FANoiseConfig"]


@dataclass(frozen=True)
class FANoiseConfig:
    """Options of :func:`initium.fa.noise_pretrain`; ``num_classes=None`` takes the width of the
    model's output, ``track_every`` the interval of the alignment curve kept in the run's record.

    Defaults (3000 steps over a fixed set of 4096 samples): of the settings in BENCHMARKS.md, the
    one with which FA on digits learns as fast as backprop (1000 steps over 1024 samples align
    the last layer too, to about 42 degrees, but gain less)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    input_std: float = 1.0
    noise_set: int | None = 4096
    num_classes: int | None = None
    seed: int = 0
    track_every: int = 100


@METHODS.register("fa-noise", FANoiseConfig)
class FANoise(Method):
    """Random-noise pretraining: Gaussian inputs, random labels, the model's own learning rule."""

    name = "fa-noise"

    def __init__(self, config: FANoiseConfig = FANoiseConfig()) -> None:
        self.config = config

    def _shape_and_classes(self, model: nn.Module, inputs: torch.Tensor | None) -> tuple[tuple[int, ...], int]:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or len(inputs) < 1:
            raise ValueError(
                "fa-noise needs a batch of the training inputs (N, ...) to take the input shape from;"
                f" got {type(inputs).__name__}"
            )
        classes = self.config.num_classes
        if classes is None:
            with torch.no_grad():
                out = model(inputs[:2])
            classes = int(out.shape[-1]) if out.ndim == 2 else 0
        return tuple(inputs.shape[1:]), classes

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        c = self.config
        shape, classes = self._shape_and_classes(model, inputs)
        fa._check_pretrain_args(shape, classes, c.steps, c.batch_size, c.lr, c.momentum, c.input_std, c.noise_set)
        if not isinstance(c.track_every, int) or c.track_every < 0:
            raise ValueError(f"fa-noise option track_every must be an int >= 0, got {c.track_every!r}")

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        self.validate(model, inputs)
        c = self.config
        shape, classes = self._shape_and_classes(model, inputs)
        curve: dict[str, Any] = {"step": []}

        def track(step: int, angles: dict[str, float]) -> None:
            curve["step"].append(step)
            for name, value in angles.items():
                curve.setdefault(name, []).append(round(value, 3))

        fa.noise_pretrain(
            model, shape, classes, steps=c.steps, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
            input_std=c.input_std, noise_set=c.noise_set, seed=c.seed, track_every=c.track_every, on_track=track,
        )  # fmt: skip
        self.info = {"wb_angle": curve}
        return model
