"""The RWF paper's baselines: weight normalisation and adaptive activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import initium
from initium.nn import MLP, Siren
from initium.nn.adaptive import AdaptiveActivation
from initium.tasks import grid


@pytest.mark.parametrize("spec", ["wn", "aa", "rwf", "rwf+aa", "wn(output_layer=False)", "aa(scale=5.0)"])
@pytest.mark.parametrize("arch", [Siren, MLP])
def test_parametrizations_keep_the_function_at_init(spec, arch):
    torch.manual_seed(0)
    model = arch(2, 1, hidden=32)
    x = grid(16, 16)
    before = model(x).detach()
    initium.create(spec)(model, x)
    assert (model(x) - before).abs().max() <= 1e-6
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in arch(2, 1, hidden=32).parameters())


def test_weight_norm_uses_pytorch_parametrization_on_every_layer():
    model = initium.create("wn")(MLP(2, 1, hidden=16, layers=2))
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(parametrize.is_parametrized(m, "weight") for m in linear)
    g = linear[0].parametrizations.weight.original0
    v = linear[0].parametrizations.weight.original1
    torch.testing.assert_close(g.squeeze(1), v.norm(dim=1))  # g = ||v|| at init


def test_adaptive_activation_slope_trains_and_scales():
    model = initium.create("aa(scale=10.0)")(MLP(1, 1, hidden=8, layers=2))
    wrapped = [m for m in model.modules() if isinstance(m, AdaptiveActivation)]
    assert len(wrapped) == 2 and all(isinstance(m.activation, nn.Tanh) for m in wrapped)
    assert wrapped[0].slope.item() == pytest.approx(0.1)
    x = torch.linspace(-1, 1, 16)[:, None]
    model(x).pow(2).mean().backward()
    assert wrapped[0].slope.grad is not None and wrapped[0].slope.grad.abs() > 0
    with torch.no_grad():
        wrapped[0].slope.fill_(0.2)  # n a = 2: the activation now sees twice its input
    z = torch.linspace(-2, 2, 9)
    torch.testing.assert_close(wrapped[0](z), torch.tanh(2 * z))


def test_aa_errors_without_activation_modules():
    with pytest.raises(ValueError, match="no activation module"):
        initium.create("aa").validate(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="scale must be > 0"):
        initium.create("aa(scale=0.0)").validate(MLP(1, 1))
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        initium.create("wn").validate(nn.Tanh())
