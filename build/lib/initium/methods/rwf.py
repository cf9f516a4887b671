"""Random weight factorization (Wang, Wang, Seidman & Perdikaris 2022, arXiv 2210.01274).

Every weight row is written as a scale times a direction, ``W = diag(exp(s)) V``, with
``s ~ N(mean, std)`` drawn once and ``V = W / exp(s)`` so that the network computes the same
function at step 0. Training then moves ``s`` and ``V``: a gradient step on ``V`` moves ``W`` by
``exp(s)`` times as much, and ``s`` itself adapts, so each neuron gets its own self-adaptive
learning rate (the paper's section 3). ``exp`` keeps the scale positive; ``mean=1, std=0.1`` is the
authors' default (jaxpi's ``weight_fact``), which makes every row's step size about ``e`` times
the plain layer's.

Built on :func:`torch.nn.utils.parametrize.register_parametrization` with a ``right_inverse``, as
PyTorch's own ``weight_norm`` is: it works on any ``nn.Linear`` / ``nn.ConvNd`` of any model, the
parameters are ``<layer>.parametrizations.weight.original0`` (``s``) and ``...original1`` (``V``),
and ``state_dict`` round-trips. :func:`remove_rwf` bakes ``W`` back into a plain parameter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._base import METHODS, Method
from .classic import weight_layers

__all__ = ["RWF", "SPREAD", "RWFConfig", "RowScale", "remove_rwf", "rwf", "scale_bounds", "select_layers"]


class RowScale(nn.Module):
    """The parametrization ``(s, V) -> diag(exp(s)) V``, one scale per output row (neuron/channel).

    ``right_inverse(W)`` draws ``s ~ N(mean, std)`` from its own seeded generator and returns
    ``(s, W / exp(s))``; PyTorch calls it when the parametrization is registered.
    """

    init_only_settings = True  # mean, std, seed act in right_inverse only: runs that differ in them stack

    def __init__(self, mean: float, std: float, seed: int) -> None:
        super().__init__()
        self.mean, self.std, self.seed = float(mean), float(std), int(seed)

    def forward(self, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.exp(s).view(-1, *([1] * (v.ndim - 1))) * v

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device=weight.device).manual_seed(self.seed)
        s = torch.randn(weight.shape[0], generator=gen, device=weight.device, dtype=weight.dtype)
        s = s * self.std + self.mean
        # V in double precision so that exp(s) * V rounds back to W (within one float32 ulp)
        scale = torch.exp(s.double()).view(-1, *([1] * (weight.ndim - 1)))
        return s, (weight.double() / scale).to(weight.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}, seed={self.seed}"


def _has_rwf(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, RowScale) for p in module.parametrizations["weight"]
    )


def select_layers(
    model: nn.Module, layers: Sequence[str] | None, output_layer: bool, *, who: str = "rwf"
) -> list[tuple[str, nn.Module]]:
    """The ``nn.Linear`` / ``nn.ConvNd`` layers a reparametrisation applies to: those named in
    ``layers``, else all (the last one only with ``output_layer``); ``who`` names the caller in errors."""
    found = weight_layers(model)
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules() if m is not model and not list(m.children())})
        raise ValueError(
            f"{who}: {type(model).__name__} has no nn.Linear or nn.Conv1d/2d/3d layer to reparametrise;"
            f" its layers are: {', '.join(kinds) or 'none'}"
        )
    if layers is not None:
        names = dict(found)
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"{who}: layers={unknown} are not Linear/Conv layers of the model; use {list(names)}")
        return [(n, names[n]) for n in layers]
    return found if output_layer else found[:-1]


SPREAD = 6.0
"""How many standard deviations of ``s`` the scale check covers: a row draws ``|s - mean| > 6 std``
with probability 2e-9, so no layer of any realistic width does."""


def scale_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """The log-scales ``s`` whose ``exp(s)`` and ``exp(-s)`` are both finite, normal numbers of
    ``dtype``: the scale is ``exp(s)`` and ``V`` carries ``W`` times ``exp(-s)``, so past either end
    one of them overflows (``inf * 0 = nan`` in the forward) or loses its precision to subnormals."""
    info = torch.finfo(dtype)
    edge = min(math.log(info.max), -math.log(info.tiny))
    return -edge, edge


def _check_scales(mean: float, std: float, dtypes: Sequence[torch.dtype] = ()) -> None:
    """Refuse ``mean``/``std`` before any layer is touched (``dtypes``: the chosen weights')."""
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"rwf: std must be a finite number >= 0, got {std!r}")
    if not math.isfinite(mean):
        raise ValueError(f"rwf: mean must be finite, got {mean!r}")
    lo_s, hi_s = mean - SPREAD * std, mean + SPREAD * std
    for dtype in dict.fromkeys(d for d in dtypes if d.is_floating_point):
        lo, hi = scale_bounds(dtype)
        if lo_s < lo or hi_s > hi:
            raise ValueError(
                f"rwf: mean={mean!r}, std={std!r} puts the log-scales s in [{lo_s:.4g}, {hi_s:.4g}]"
                f" (mean ± {SPREAD:g} std), but exp(s) and exp(-s) are finite normal {dtype} numbers only"
                f" for s in [{lo:.4g}, {hi:.4g}]; choose mean and std with mean ± {SPREAD:g}*std inside it"
                " (the paper's mean=1.0, std=0.1 is)"
            )


def rwf(
    model: nn.Module,
    *,
    mean: float = 1.0,
    std: float = 0.1,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    output_layer: bool = True,
) -> nn.Module:
    """Factorise the weights of ``model`` in place: ``W = diag(exp(s)) V``, ``s ~ N(mean, std)``.

    Args:
        model: any module; every ``nn.Linear`` / ``nn.ConvNd`` is factorised (``nn.ConvTranspose``
            is not: its rows are input channels).
        mean: the mean of the log-scales ``s`` (the paper's ``mu``). ``mean ± 6 std`` must lie in
            :func:`scale_bounds` of the weights' dtype (about ±87.3 for float32, ±9.70 for
            float16), else ``exp(s)`` or ``V`` overflows and the model computes NaN; such values
            are refused.
        std: the standard deviation of the log-scales (the paper's ``sigma``; ``std=0`` gives every
            row the scale ``exp(mean)``).
        seed: layer ``i`` (in module order) draws its ``s`` with seed ``seed + i``.
        layers: qualified names (``"net.0"``) to factorise instead of all.
        output_layer: factorise the last layer too (default, as the authors' jaxpi code does).

    Returns the model, which computes the same function as before (to float rounding).

    Example::

        model = initium.rwf(Siren(2, 3), mean=1.0, std=0.1, seed=0)
        ...  # train as usual: the optimiser sees s and V
        initium.remove_rwf(model)  # plain weights again
    """
    chosen = select_layers(model, layers, output_layer)
    _check_scales(mean, std, [m.weight.dtype for _, m in chosen])
    done = [name for name, m in chosen if _has_rwf(m)]
    if done:
        raise ValueError(f"rwf: layers {done} are already factorised; call initium.remove_rwf(model) first")
    order = {id(m): i for i, (_, m) in enumerate(weight_layers(model))}
    for _, module in chosen:
        parametrize.register_parametrization(module, "weight", RowScale(mean, std, seed + order[id(module)]))
    return model


def remove_rwf(model: nn.Module) -> nn.Module:
    """Bake every factorised weight back into a plain parameter ``W = diag(exp(s)) V`` (same
    outputs), in place; other parametrizations of the model are left alone."""
    factorised = [m for _, m in weight_layers(model) if _has_rwf(m)]
    if not factorised:
        raise ValueError("remove_rwf: the model has no factorised weight; initium.rwf(model) adds them")
    for module in factorised:
        if len(module.parametrizations["weight"]) > 1:
            raise ValueError(
                "remove_rwf: a layer's weight has RWF and another parametrization stacked;"
                " remove them with torch.nn.utils.parametrize.remove_parametrizations"
            )
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


@dataclass(frozen=True)
class RWFConfig:
    mean: float = 1.0
    std: float = 0.1
    seed: int = 0
    output_layer: bool = True


@METHODS.register("rwf", RWFConfig)
class RWF(Method):
    """Random weight factorization as an init method: ``create("rwf")``, ``create("rwf+noise")``."""

    name = "rwf"

    def __init__(self, config: RWFConfig = RWFConfig()) -> None:
        self.config = config

    def validate(self, model: nn.Module, inputs: torch.Tensor | None = None) -> None:
        chosen = select_layers(model, None, self.config.output_layer)
        _check_scales(self.config.mean, self.config.std, [m.weight.dtype for _, m in chosen])

    def __call__(self, model: nn.Module, inputs: torch.Tensor | None = None) -> nn.Module:
        c = self.config
        return rwf(model, mean=c.mean, std=c.std, seed=c.seed, output_layer=c.output_layer)
