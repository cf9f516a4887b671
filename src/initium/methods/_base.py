"""The method interface: ``method(model, inputs) -> model``, configured by a frozen dataclass.

Methods register in ``METHODS`` by name; :func:`create` turns a spec such as
``"rwf+noise(steps=300)"`` into one callable that applies the parts left to right.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from .._registry import Registry
from ..records import PlotSpec

__all__ = ["DEFAULT_RULE", "METHODS", "RULES", "Compose", "LearningRule", "Method", "create", "list_methods"]


class Method:
    """Base class: subclasses set ``name`` and ``config`` and implement ``__call__``."""

    name: str = ""
    config: Any = None
    changes_weights: ClassVar[bool] = True  # False only for a method that keeps the model as it is

    @property
    def info(self) -> dict[str, Any]:
        """What the last call did (e.g. ``{"cache": "hit"}``), for the results record."""
        return self.__dict__.get("_info", {})

    @info.setter
    def info(self, value: dict[str, Any]) -> None:
        self.__dict__["_info"] = value

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        raise NotImplementedError

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        """Raise now, before any training, if ``__call__`` would fail on these arguments."""

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready record of the method and its config (for results and cache keys)."""
        cfg = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}
        return [{"name": self.name, **cfg}]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


METHODS: Registry[Method] = Registry("method")


class LearningRule:
    """How a model learns: applied by the runner to each run's freshly built model, before its
    init method (``initium run --rule NAME``). A family registers its rules in :data:`RULES`
    (feedback alignment registers one per mode; ``bp``, plain backprop, is the default).

    Besides changing the model, a rule may measure it: ``measure`` returns flat JSON-ready values
    (``{"wb_angle/net.3": 41.2}``) that join the run's curve at every evaluation point, ``analyse``
    a JSON-ready dict for the record's ``analysis`` at the end; both on the task's probe batch
    (``Task.probe``), and ``plots`` declares how the report draws what ``measure`` adds."""

    name: str = ""
    plots: tuple[PlotSpec, ...] = ()

    def __call__(self, model: nn.Module, *, seed: int = 0) -> nn.Module:
        return model

    def measure(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {}

    def analyse(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


RULES: Registry[LearningRule] = Registry("learning rule")
DEFAULT_RULE = "bp"
"""The rule of a run that names none: backprop (registered by :mod:`initium.methods.fa`)."""


class Compose(Method):
    """Apply methods left to right: ``create("rwf+noise")``."""

    def __init__(self, methods: list[Method]) -> None:
        self.methods = list(methods)
        self.name = "+".join(m.name for m in self.methods)

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        for method in self.methods:
            model = method(model, inputs)
        return model

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        for method in self.methods:
            method.validate(model, inputs)

    def describe(self) -> list[dict[str, Any]]:
        return [d for m in self.methods for d in m.describe()]

    @property
    def info(self) -> dict[str, Any]:
        return {f"{i}:{m.name}": m.info for i, m in enumerate(self.methods) if m.info}

    def __repr__(self) -> str:
        return f"Compose({self.methods!r})"


def create(spec: str, **defaults: Any) -> Method:
    """Build a method from a spec: ``create("noise(steps=300,noise=spectral)")``,
    ``create("rwf+noise", steps=500)``.

    ``defaults`` fill any config field the spec leaves unset, in every part that has that field
    (the runner passes ``seed=`` this way); a field named in the spec wins.
    """
    parts = [METHODS.build(name, kwargs, **defaults) for name, kwargs in METHODS.parse(spec)]
    return parts[0] if len(parts) == 1 else Compose(parts)


def list_methods() -> list[str]:
    """The registered method names, sorted."""
    return METHODS.names()
