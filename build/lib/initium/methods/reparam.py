"""The baselines of the RWF paper: weight normalisation and adaptive activations.

Both, like RWF, leave the function at step 0 unchanged and only change how training moves it, so
``--methods default,rwf,wn,aa`` compares the parametrizations at one and the same init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrizations

from ..nn.adaptive import AdaptiveActivation
from ..nn.siren import Sine
from ._base import METHODS, Method
from .rwf import select_layers

__all__ = ["ACTIVATIONS", "AdaptiveActivations", "AdaptiveActivationsConfig", "WeightNorm", "WeightNormConfig"]

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softplus, nn.ELU, Sine,
)  # fmt: skip
"""Activation modules that ``aa`` wraps."""


@dataclass(frozen=True)
class WeightNormConfig:
    output_layer: bool = True


@METHODS.register("wn", WeightNormConfig)
class WeightNorm(Method):
    """Weight normalisation (Salimans & Kingma 2016): ``w = g v / ||v||`` per output row, with
    PyTorch's own ``torch.nn.utils.parametrizations.weight_norm`` on every Linear/ConvNd."""

    name = "wn"

    def __init__(self, config: WeightNormConfig = WeightNormConfig()) -> None:
        self.config = config

    def _layers(self, model: nn.Module) -> list[nn.Module]:
        return [m for _, m in select_layers(model, None, self.config.output_layer, who="wn")]

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        self._layers(model)

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        for module in self._layers(model):
            parametrizations.weight_norm(module, "weight", dim=0)
        return model


@dataclass(frozen=True)
class AdaptiveActivationsConfig:
    scale: float = 10.0


@METHODS.register("aa", AdaptiveActivationsConfig)
class AdaptiveActivations(Method):
    """Wrap every activation module in :class:`~initium.nn.adaptive.AdaptiveActivation`: one
    trainable slope per layer, ``act(n a x)``, ``a = 1/n`` at step 0 (Jagtap et al. 2020)."""

    name = "aa"

    def __init__(self, config: AdaptiveActivationsConfig = AdaptiveActivationsConfig()) -> None:
        self.config = config

    @staticmethod
    def _slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
        """(parent, attribute) of every activation module not yet wrapped."""
        return [
            (parent, name)
            for parent in model.modules()
            if not isinstance(parent, AdaptiveActivation)
            for name, child in parent.named_children()
            if isinstance(child, ACTIVATIONS)
        ]

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        if not self.config.scale > 0:
            raise ValueError(f"aa: scale must be > 0, got {self.config.scale!r}")
        if not self._slots(model):
            kinds = ", ".join(a.__name__ for a in ACTIVATIONS)
            raise ValueError(
                f"aa: {type(model).__name__} has no activation module to adapt (looked for {kinds});"
                " activations called as functions cannot be wrapped"
            )

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        self.validate(model, inputs)
        param = next(model.parameters(), None)
        for parent, name in self._slots(model):
            wrapped = AdaptiveActivation(getattr(parent, name), self.config.scale)
            setattr(parent, name, wrapped.to(param.device) if param is not None else wrapped)
        return model
