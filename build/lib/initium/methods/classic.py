"""Baselines: the architecture's own init, Xavier/Glorot and Kaiming/He."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ._base import METHODS, Method

__all__ = ["Default", "Kaiming", "Xavier", "weight_layers"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear`` / ``nn.ConvNd`` in ``model`` with its qualified name."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _WEIGHTED)]


def _generator(seed: int, like: torch.Tensor) -> torch.Generator:
    return torch.Generator(device=like.device).manual_seed(seed)


@dataclass(frozen=True)
class DefaultConfig:
    pass


@METHODS.register("default", DefaultConfig)
class Default(Method):
    """Keep the architecture's own init (SIREN's, Glorot for the Fourier/PE MLPs, ...)."""

    name = "default"
    changes_weights = False

    def __init__(self, config: DefaultConfig = DefaultConfig()) -> None:
        self.config = config

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        return model


@dataclass(frozen=True)
class XavierConfig:
    gain: float = 1.0
    distribution: Literal["uniform", "normal"] = "uniform"
    seed: int = 0


@dataclass(frozen=True)
class KaimingConfig:
    nonlinearity: str = "relu"
    mode: Literal["fan_in", "fan_out"] = "fan_in"
    distribution: Literal["uniform", "normal"] = "uniform"
    seed: int = 0


class _Classic(Method):
    """Re-draw every Linear/Conv weight with ``torch.nn.init``; biases are zeroed."""

    def __init__(self, config: XavierConfig | KaimingConfig) -> None:
        self.config = config

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        if not weight_layers(model):
            raise ValueError(f"{self.name}: model has no nn.Linear or nn.ConvNd layer to initialise")

    @torch.no_grad()
    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        self.validate(model, inputs)
        layers = [layer for _, layer in weight_layers(model)]
        gen = _generator(self.config.seed, layers[0].weight)  # one stream, layers in model order
        for layer in layers:
            self._init(layer.weight, gen)
            if layer.bias is not None:
                layer.bias.zero_()
        return model


@METHODS.register("xavier", XavierConfig)
class Xavier(_Classic):
    """Glorot & Bengio 2010: ``Var(W) = gain^2 * 2 / (fan_in + fan_out)``."""

    name = "xavier"

    def _init(self, weight: torch.Tensor, gen: torch.Generator) -> None:
        fn = {"uniform": nn.init.xavier_uniform_, "normal": nn.init.xavier_normal_}[self.config.distribution]
        fn(weight, gain=self.config.gain, generator=gen)


@METHODS.register("kaiming", KaimingConfig)
class Kaiming(_Classic):
    """He et al. 2015: ``Var(W) = gain(nonlinearity)^2 / fan``."""

    name = "kaiming"

    def _init(self, weight: torch.Tensor, gen: torch.Generator) -> None:
        fn = {"uniform": nn.init.kaiming_uniform_, "normal": nn.init.kaiming_normal_}[self.config.distribution]
        fn(weight, mode=self.config.mode, nonlinearity=self.config.nonlinearity, generator=gen)
