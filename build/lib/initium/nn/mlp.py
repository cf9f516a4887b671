"""Plain coordinate MLPs and DeepONet, the networks of the PINN and operator-learning tasks."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .siren import Sine, check_sizes

__all__ = ["ACTIVATION_TYPES", "MLP", "DeepONet", "mlp_stack"]

ACTIVATION_TYPES: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sine": Sine}


def mlp_stack(widths: list[int], activation: str, *, last_activation: bool = False) -> nn.Sequential:
    """Linear layers through ``widths`` with ``activation`` between them, Glorot-normal weights and
    zero biases (Glorot & Bengio 2010: ``Var(W) = 2 / (fan_in + fan_out)``), the init of the jaxpi
    and DeepONet reference code."""
    if activation not in ACTIVATION_TYPES:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_TYPES)}, got {activation!r}")
    mods: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
        mods.append(linear)
        if i < len(widths) - 2 or last_activation:
            mods.append(ACTIVATION_TYPES[activation]())
    return nn.Sequential(*mods)


class MLP(nn.Module):
    """A plain MLP: ``layers`` hidden layers of width ``hidden`` with ``activation`` (tanh by default,
    as in PINNs) and a linear output layer; Glorot-normal init."""

    default_lr = 1e-3

    def __init__(
        self, in_features: int, out_features: int, hidden: int = 256, layers: int = 4, activation: str = "tanh"
    ) -> None:
        super().__init__()
        check_sizes(in_features=in_features, out_features=out_features, hidden=hidden, layers=layers)
        self.in_features, self.out_features = in_features, out_features
        self.config = dict(
            in_features=in_features, out_features=out_features, hidden=hidden, layers=layers, activation=activation
        )
        self.net = mlp_stack([in_features] + [hidden] * layers + [out_features], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DeepONet(nn.Module):
    """DeepONet (Lu et al., Nature Machine Intelligence 2021): ``G(u)(y) = sum_k b_k(u) t_k(y) + b0``.

    The input packs one query per row: the input function at the ``in_features - coords`` sensors,
    then the ``coords`` query coordinates, so the operator trains with the same full-batch loop as
    any coordinate network. The branch net maps the sensor values to ``basis`` coefficients, the
    trunk net (activated last layer) maps ``y`` to ``basis`` functions. With ``out_features > 1``
    each output has its own ``basis`` coefficients and functions (the split branch/trunk of Lu et
    al. 2022).
    """

    default_lr = 1e-3

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        hidden: int = 128,
        layers: int = 3,
        basis: int = 128,
        coords: int = 1,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        check_sizes(out_features=out_features, hidden=hidden, layers=layers, basis=basis, coords=coords)
        if not isinstance(in_features, int) or in_features <= coords:
            raise ValueError(f"in_features must be sensors + coords > coords={coords}, got {in_features!r}")
        self.in_features, self.out_features, self.coords = in_features, out_features, coords
        self.config = dict(in_features=in_features, out_features=out_features, hidden=hidden, layers=layers,
                           basis=basis, coords=coords, activation=activation)  # fmt: skip
        sensors = in_features - coords
        self.branch = mlp_stack([sensors] + [hidden] * layers + [basis * out_features], activation)
        self.trunk = mlp_stack([coords] + [hidden] * layers + [basis * out_features], activation, last_activation=True)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, y = x[:, : -self.coords], x[:, -self.coords :]
        prod = (self.branch(u) * self.trunk(y)).reshape(len(x), self.out_features, -1)
        return prod.sum(-1) + self.bias
