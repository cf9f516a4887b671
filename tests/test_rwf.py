"""Random weight factorization: invariants of the parametrization, bake, round trip, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import initium
from initium.methods.rwf import RowScale
from initium.nn import MLP, Siren
from initium.tasks import grid


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"siren": Siren(2, 3, hidden=64), "mlp": MLP(2, 1, hidden=64, layers=3)}


@pytest.mark.parametrize("name", ["siren", "mlp"])
def test_function_unchanged_at_init(name):
    model = _models()[name]
    x = grid(32, 32)
    before = model(x).detach()
    initium.rwf(model, mean=1.0, std=0.1, seed=0)
    assert (model(x) - before).abs().max() <= 1e-6


def test_weights_are_row_scaled_with_the_drawn_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 4096), nn.Tanh(), nn.Linear(4096, 1))
    w = model[0].weight.detach().clone()
    initium.rwf(model, mean=1.0, std=0.1, seed=3)
    s = model[0].parametrizations.weight.original0
    v = model[0].parametrizations.weight.original1
    assert s.shape == (4096,) and v.shape == w.shape
    assert s.mean().item() == pytest.approx(1.0, abs=0.01) and s.std().item() == pytest.approx(0.1, abs=0.01)
    torch.testing.assert_close(v * torch.exp(s)[:, None], w, rtol=1e-6, atol=1e-7)
    # every row of V is the row of W divided by its own scale: the ratio is constant along the row
    ratio = w / v
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5, atol=0)
    # the two layers draw different scales (seed + layer index)
    s2 = model[2].parametrizations.weight.original0
    assert s2.item() != s[0].item()


def test_gradients_reach_s_and_v():
    model = initium.rwf(_models()["mlp"])
    loss = model(grid(8, 8)).pow(2).mean()
    loss.backward()
    for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
        s, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
        assert s.grad is not None and v.grad is not None
        assert s.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    names = {n for n, _ in model.named_parameters()}
    assert "net.0.parametrizations.weight.original0" in names and "net.0.weight" not in names


def test_gradient_of_s_is_the_row_sum_of_w_times_its_gradient():
    """d L / d s_i = sum_j (dL/dW_ij) W_ij: the chain rule through W = exp(s) V."""
    torch.manual_seed(1)
    layer = nn.Linear(5, 7)
    x = torch.randn(11, 5)
    plain = nn.Linear(5, 7)
    plain.load_state_dict(layer.state_dict())
    plain(x).pow(2).sum().backward()
    initium.rwf(layer, seed=0)
    layer(x).pow(2).sum().backward()
    s_grad = layer.parametrizations.weight.original0.grad
    torch.testing.assert_close(s_grad, (plain.weight.grad * plain.weight.detach()).sum(1), rtol=1e-4, atol=1e-5)


def test_remove_rwf_bakes_the_trained_weights():
    model = initium.rwf(_models()["siren"], seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = grid(16, 16)
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    trained = model(x).detach()
    initium.remove_rwf(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert {n.split(".")[-1] for n, _ in model.named_parameters()} == {"weight", "bias"}
    torch.testing.assert_close(model(x), trained, rtol=0, atol=1e-6)


def test_state_dict_round_trips_with_and_without_rwf():
    x = grid(16, 16)
    a = initium.rwf(_models()["mlp"], seed=2)
    with torch.no_grad():  # move s away from its draw, so a fresh draw could not match by chance
        a.net[0].parametrizations.weight.original0.add_(0.3)
    b = initium.rwf(MLP(2, 1, hidden=64, layers=3), seed=9)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    plain = MLP(2, 1, hidden=64, layers=3)
    plain.load_state_dict(initium.remove_rwf(a).state_dict())
    torch.testing.assert_close(plain(x), a(x), rtol=0, atol=0)


def test_conv2d_is_factorised_per_output_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3))
    x = torch.randn(2, 3, 12, 12)
    before = model(x).detach()
    initium.rwf(model, seed=0)
    assert model[0].parametrizations.weight.original0.shape == (8,)
    assert (model(x) - before).abs().max() <= 1e-6
    model(x).sum().backward()
    assert model[2].parametrizations.weight.original0.grad is not None


def test_layer_selection_and_output_switch():
    model = initium.rwf(_models()["mlp"], output_layer=False)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [parametrize.is_parametrized(m) for m in linear] == [True, True, True, False]
    model = initium.rwf(_models()["mlp"], layers=["net.2"])
    assert [parametrize.is_parametrized(m) for m in model.modules() if isinstance(m, nn.Linear)] == [
        False, True, False, False,
    ]  # fmt: skip


def test_std_zero_gives_every_row_exp_mean():
    model = initium.rwf(nn.Linear(3, 5), mean=0.5, std=0.0)
    torch.testing.assert_close(model.parametrizations.weight.original0, torch.full((5,), 0.5))


def test_rwf_then_noise_pretraining_trains_the_factors():
    torch.manual_seed(0)
    model = Siren(2, 1, hidden=32)
    x = grid(16, 16)
    initium.create("rwf+noise(steps=5)")(model, x)
    s = model.net[0].parametrizations.weight.original0
    drawn = RowScale(1.0, 0.1, 0).right_inverse(torch.ones(32, 2))[0]
    assert not torch.equal(s.detach(), drawn)  # noise pretraining moved s


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: initium.rwf(nn.Linear(2, 2), std=-0.1), "std must be"),
        (lambda: initium.rwf(nn.Linear(2, 2), std=math.nan), "std must be"),
        (lambda: initium.rwf(nn.Sequential(nn.Tanh(), nn.BatchNorm1d(3))), "Tanh"),
        (lambda: initium.rwf(initium.rwf(nn.Linear(2, 2))), "already factorised"),
        (lambda: initium.remove_rwf(nn.Linear(2, 2)), "no factorised weight"),
        (lambda: initium.rwf(nn.Sequential(nn.Linear(2, 2)), layers=["1"]), "not Linear/Conv"),
        (lambda: initium.create("rwf(std=-1.0)").validate(nn.Linear(2, 2)), "std must be"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_no_supported_layer_lists_the_layer_types():
    with pytest.raises(ValueError, match="BatchNorm1d, Tanh"):
        initium.rwf(nn.Sequential(nn.Tanh(), nn.BatchNorm1d(3)))


@pytest.mark.parametrize(
    ("mean", "std", "dtype", "allowed"),
    [
        (100.0, 0.1, torch.float32, r"\[-87.34, 87.34\]"),  # exp(100) overflows float32: the forward gave NaN
        (-100.0, 0.1, torch.float32, r"\[-87.34, 87.34\]"),  # exp(-s) overflows: V = W / exp(s) is inf
        (0.0, 50.0, torch.float32, r"\[-87.34, 87.34\]"),  # the mean is fine, the spread is not
        (10.0, 0.1, torch.float16, r"\[-9.704, 9.704\]"),  # the bounds follow the weights' dtype
    ],
)
def test_scales_whose_exp_overflows_the_dtype_are_refused_before_any_layer_changes(mean, std, dtype, allowed):
    model = Siren(2, 1, hidden=8).to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"mean={mean!r}, std={std!r}.*{allowed}"):
        initium.rwf(model, mean=mean, std=std)
    with pytest.raises(ValueError, match=allowed):
        initium.create(f"rwf(mean={mean},std={std})").validate(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scales_just_inside_the_bounds_keep_the_function():
    coords = grid(8, 8)
    for mean in (85.0, -85.0):
        torch.manual_seed(0)
        model = Siren(2, 1, hidden=8)
        expected = model(coords)
        initium.rwf(model, mean=mean, std=0.1 / 6)
        assert torch.allclose(model(coords), expected, atol=1e-5)
