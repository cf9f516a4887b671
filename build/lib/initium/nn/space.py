"""An architecture space for the graph hypernetwork: one configurable classifier ``net`` and the
named distributions of its configurations that the GHN trains and is evaluated on.

``Net`` covers what GHN-2 (Knyazev et al., NeurIPS 2021, its DARTS-style space) and the issue ask
the GHN to generalise over: depth, width, kernel size (1/3/5/7), residual connections,
normalisation (BatchNorm, LayerNorm, GroupNorm or none), pooling (max, average or none), a
convolutional or an MLP stem, and a linear classifier head. Its spec string is what
``--arch`` takes: ``net(depth=3,width=24,kernel=5,skip=true,norm=bn,pool=max,stem=conv)``.

:func:`sample_space` draws spec strings from a named space (deterministic for a seed, no spec
twice); :func:`split_space` splits one space into disjoint training and held-out lists:

- ``small``: the training distribution: depth 1-4, width 8-32, kernel 3/5, skip or not, any
  normalisation or none, max/avg/no pooling, conv stem (MLP stem one time in five). No 1x1
  kernels: a ``Net`` has one kernel size for all its convolutions, so ``kernel=1`` makes a
  bag-of-pixels model (each pixel transformed alone, then pooled): such nets reach only 25-37%
  validation accuracy on digits after 40 epochs of Adam (4 specs measured), so they measured the
  space, not the GHN (an earlier space with kernel 1/3/5 held out 18 of 50 such specs, all at
  chance under the GHN);
- ``ood``: out of distribution: wider (48-96), deeper (6-10), kernel 3/5/7, no normalisation.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["NORMS", "POOLS", "SPACES", "STEMS", "Net", "sample_space", "split_space"]

NORMS: tuple[str, ...] = ("bn", "ln", "gn", "none")
POOLS: tuple[str, ...] = ("max", "avg", "none")
STEMS: tuple[str, ...] = ("conv", "mlp")
KERNELS: tuple[int, ...] = (1, 3, 5, 7)


def _norm(kind: str, width: int, dims: int) -> nn.Module | None:
    """The normalisation layer after a conv (``dims`` 1 or 2) or linear (``dims`` 0) layer.

    ``ln`` on feature maps is a LayerNorm over ``(C, H, W)`` written as ``GroupNorm(1, C)`` (the
    same function, Wu & He 2018, section 3.1, with per-channel affine parameters as the GHN expects
    of a norm layer); on vectors it is ``nn.LayerNorm``. ``gn`` uses ``gcd(width, 4)`` groups."""
    if kind == "none":
        return None
    if kind == "bn":
        return (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d)[dims](width)
    if kind == "ln":
        return nn.LayerNorm(width) if dims == 0 else nn.GroupNorm(1, width)
    return nn.GroupNorm(math.gcd(width, 4), width)


class _Block(nn.Module):
    """``act(norm(layer(x)))``, plus ``x`` when ``skip`` (a residual block, He et al. 2016)."""

    def __init__(self, layer: nn.Module, norm: nn.Module | None, skip: bool) -> None:
        super().__init__()
        self.layer = layer
        self.norm = norm if norm is not None else nn.Identity()
        self.act = nn.ReLU()
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm(self.layer(x)))
        return x + out if self.skip else out


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):  # `skip=true` in a spec is a bare word
        return value.lower() == "true"
    raise ValueError(f"net {name} must be true or false, got {value!r}")


class Net(nn.Module):
    """A classifier of the GHN's architecture space.

    Conv stem (``stem="conv"``), on ``(C, H, W)`` images or ``(C, L)`` signals::

        stem:   conv(C -> width, kernel, 'same') [norm] ReLU, then a 2x pool
        blocks: depth x [conv(width -> width, kernel, 'same') [norm] ReLU (+ input if skip)],
                a 2x pool after every second block while the map is at least 4 wide
        head:   global average pool, linear(width -> out_features)

    MLP stem (``stem="mlp"``): flatten, ``linear(in -> width) [norm] ReLU``, ``depth`` blocks
    ``linear(width -> width) [norm] ReLU (+ input if skip)``, ``linear(width -> out_features)``
    (``kernel`` and ``pool`` do not apply). ``pool="none"`` keeps the full resolution up to the
    global pool. Layers carry a bias only without normalisation (a norm's shift replaces it).
    Init: PyTorch's defaults (the space's "default init" baseline).
    """

    default_lr = 0.01  # SGD with momentum 0.9, as classify trains the other classifiers

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_features: int,
        depth: int = 2,
        width: int = 16,
        kernel: int = 3,
        skip: bool = False,
        norm: Literal["bn", "ln", "gn", "none"] = "bn",
        pool: Literal["max", "avg", "none"] = "max",
        stem: Literal["conv", "mlp"] = "conv",
    ) -> None:
        super().__init__()
        shape = tuple(in_shape)
        if not shape or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in shape):
            raise ValueError(f"net in_shape must be the shape of one input such as (1, 8, 8), got {in_shape!r}")
        for name, value, least, most in (("depth", depth, 0, 64), ("width", width, 1, 4096),
                                         ("out_features", out_features, 2, None)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < least or (most and value > most):
                bound = f">= {least}" if most is None else f"from {least} to {most}"
                raise ValueError(f"net {name} must be an int {bound}, got {value!r}")
        if kernel not in KERNELS or isinstance(kernel, bool):
            raise ValueError(f"net kernel must be one of {KERNELS}, got {kernel!r}")
        skip = _bool(skip, "skip")
        for name, value, choices in (("norm", norm, NORMS), ("pool", pool, POOLS), ("stem", stem, STEMS)):
            if value not in choices:
                raise ValueError(f"net {name} must be one of {', '.join(choices)}, got {value!r}")
        if stem == "conv" and len(shape) not in (2, 3):
            raise ValueError(f"net with stem=conv takes (C, L) signals or (C, H, W) images, got in_shape={shape}")
        self.out_features = out_features
        self.config: dict[str, Any] = dict(
            in_shape=list(shape), out_features=out_features, depth=depth, width=width, kernel=kernel, skip=skip,
            norm=norm, pool=pool, stem=stem,
        )  # fmt: skip
        bias = norm == "none"
        layers: list[nn.Module] = []
        if stem == "mlp":
            layers += [
                nn.Flatten(),
                _Block(nn.Linear(math.prod(shape), width, bias=bias), _norm(norm, width, 0), False),
            ]
            layers += [_Block(nn.Linear(width, width, bias=bias), _norm(norm, width, 0), skip) for _ in range(depth)]
            self.features = nn.Sequential(*layers)
            self.pool: nn.Module = nn.Identity()
        else:
            dims = len(shape) - 1
            conv: Callable[..., nn.Module] = nn.Conv1d if dims == 1 else nn.Conv2d
            downsample: Callable[[], nn.Module] | None = None
            if pool != "none":
                table = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d,
                         ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d}  # fmt: skip
                downsample = lambda: table[(pool, dims)](2)  # noqa: E731
            size = min(shape[1:])

            def same(cin: int) -> nn.Module:
                return conv(cin, width, kernel, padding=kernel // 2, bias=bias)

            layers.append(_Block(same(shape[0]), _norm(norm, width, dims), False))
            if downsample is not None and size >= 2:
                layers.append(downsample())
                size //= 2
            for i in range(depth):
                layers.append(_Block(same(width), _norm(norm, width, dims), skip))
                if downsample is not None and i % 2 == 1 and size >= 4:
                    layers.append(downsample())
                    size //= 2
            self.features = nn.Sequential(*layers)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


# --- the named spaces ------------------------------------------------------------------------------


def _spec(cfg: dict[str, Any]) -> str:
    """A ``net(...)`` spec string, options in a fixed order; an MLP stem names no kernel or pool."""
    keys = ("depth", "width", "kernel", "skip", "norm", "pool", "stem")
    if cfg["stem"] == "mlp":
        keys = ("depth", "width", "skip", "norm", "stem")
    text = ",".join(f"{k}={str(cfg[k]).lower() if isinstance(cfg[k], bool) else cfg[k]}" for k in keys)
    return f"net({text})"


def _small(rng: random.Random) -> str:
    return _spec({
        "depth": rng.randint(1, 4), "width": rng.randint(8, 32), "kernel": rng.choice((3, 5)),
        "skip": rng.random() < 0.5, "norm": rng.choice(NORMS), "pool": rng.choice(POOLS),
        "stem": "mlp" if rng.random() < 0.2 else "conv",
    })  # fmt: skip


def _ood(rng: random.Random) -> str:
    return _spec({
        "depth": rng.randint(6, 10), "width": rng.randint(48, 96), "kernel": rng.choice((3, 5, 7)),
        "skip": rng.random() < 0.5, "norm": "none", "pool": rng.choice(POOLS), "stem": "conv",
    })  # fmt: skip


SPACES: dict[str, Callable[[random.Random], str]] = {"small": _small, "ood": _ood}
"""Named spaces: a function drawing one spec from a ``random.Random``."""


def _check_space(name: str) -> Callable[[random.Random], str]:
    if name not in SPACES:
        from .._registry import UnknownNameError, closest

        raise UnknownNameError(
            f"unknown architecture space {name!r}; closest: {', '.join(closest(name, list(SPACES)))}"
            f" (all: {', '.join(SPACES)})"
        )
    return SPACES[name]


def sample_space(name: str, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct ``net(...)`` spec strings from the space ``name``, the same for the same
    ``seed`` (Python's ``random.Random(seed)``, independent of every global RNG)."""
    draw = _check_space(name)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    rng = random.Random(f"{name}/{seed}")
    out: list[str] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < count:
        spec = draw(rng)
        tries += 1
        if spec not in seen:
            seen.add(spec)
            out.append(spec)
        elif tries > 100 * (count + 10):
            raise ValueError(f"space {name!r} has fewer than {count} distinct architectures; ask for fewer")
    return out


SPLIT_SEED = 0
"""The fixed seed of :func:`split_space`: every GHN trained on a space holds out the same specs."""


def split_space(name: str = "small", train: int = 2000, held_out: int = 200) -> tuple[list[str], list[str]]:
    """The space ``name`` split into ``train`` training and ``held_out`` held-out specs, disjoint:
    one draw of ``train + held_out`` distinct specs (:func:`sample_space`, seed :data:`SPLIT_SEED`),
    the held-out ones first. Asking for more training specs keeps the held-out list the same."""
    for arg, value in (("train", train), ("held_out", held_out)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"split_space {arg} must be an int >= 0, got {value!r}")
    specs = sample_space(name, held_out + train, SPLIT_SEED)
    return specs[held_out:], specs[:held_out]
