"""The method interface: ``method(model, inputs) -> model``, configured by a frozen dataclass.

Methods register in ``METHODS`` by name; :func:`create` turns a spec such as
``"rwf+noise(steps=300)"`` into one callable that applies the parts left to right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .._registry import Registry, SpecError, closest
from ..records import DEFAULT_RULE, PlotSpec

__all__ = [
    "DEFAULT_RULE", "METHODS", "RULES", "SHARED_OPTIONS", "Compose", "LearningRule", "Method", "create", "list_methods",
]  # fmt: skip


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
# DEFAULT_RULE (records.py): the rule of a run that names none, backprop (registered by initium.methods.fa)


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


SHARED_OPTIONS: frozenset[str] = frozenset({"seed"})
"""Options that :func:`create` may be given for any spec, even one with no part that takes them.
``seed`` is the one: a sweep seeds every run's method (``create(spec, seed=seed)``, the runner),
and a method that draws nothing at random (``default``, ``wn``) has no seed to set."""


def create(spec: str, *, fill: Mapping[str, Any] | None = None, **options: Any) -> Method:
    """Build a method from a spec: ``create("noise(steps=300,noise=spectral)")``,
    ``create("rwf+noise", steps=500)``.

    ``options`` fill any config field the spec leaves unset, in every part that has that field; a
    field named in the spec wins. Each option must be a field of at least one part, so that a
    misspelt keyword (``create("noise", step=300)``) is an error naming the closest field, as it
    is inside the spec; the exception is :data:`SHARED_OPTIONS` (``seed``), which parts without
    such a field ignore.

    ``fill`` is for callers that build many different specs with one set of settings (a test of
    every method with ``fill={"steps": 5, "cache": False}``): each setting goes where a part has
    the field and is ignored elsewhere; a name that no registered method has is still an error.
    """
    parts = METHODS.parse(spec)
    offered = list(dict.fromkeys(key for name, _ in parts for key in METHODS.options(name)))
    for key in options:
        if key not in offered and key not in SHARED_OPTIONS:
            what = f"method {spec!r} has no" if len(parts) == 1 else f"no part of {spec!r} has an"
            hint = f"options: {', '.join(offered)} (closest: {', '.join(closest(key, offered))})" if offered else ""
            raise SpecError(f"create({spec!r}, {key}=...): {what} option {key!r}; {hint or 'it takes none'}")
    fill = dict(fill or {})
    known = sorted({key for name in METHODS.names() for key in METHODS.options(name)})
    for key in fill:
        if key not in known:
            hint = ", ".join(closest(key, known))
            raise SpecError(f"create(fill=...): no method has an option {key!r} (closest: {hint})")
    if both := sorted(fill.keys() & options.keys()):
        raise SpecError(f"create(): {', '.join(both)} given both as an option and in fill=; give it once")
    built = [METHODS.build(name, kwargs, **fill, **options) for name, kwargs in parts]
    return built[0] if len(built) == 1 else Compose(built)


def list_methods(pattern: str | None = None) -> list[str]:
    """The registered method names, sorted; ``pattern``: only those matching it, shell-style and
    case-insensitive (``list_methods("noise*")``, as timm's ``list_models("vit*")``). One line
    describing each: ``METHODS.entry(name).doc``, or ``initium list PATTERN``."""
    return METHODS.names(pattern)
