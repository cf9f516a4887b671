from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initium
from initium import fa
from initium.metrics import angle, effective_dimensionality
from initium.nn import FAConv1d, FAConv2d, FALinear


def _mlp(seed: int = 0, widths: tuple[int, ...] = (64, 100, 10)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


@pytest.mark.parametrize("mode", fa.MODES)
def test_forward_equals_the_plain_layers(mode):
    torch.manual_seed(0)
    lin, conv = nn.Linear(7, 5), nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x, img = torch.randn(6, 7), torch.randn(2, 3, 9, 9)
    fa_lin = fa.convert(copy.deepcopy(lin), mode, output_dim=5)
    assert isinstance(fa_lin, FALinear)
    torch.testing.assert_close(fa_lin(x), lin(x), rtol=0, atol=0)
    if mode != "dfa":  # a DFA model's output must be (batch, output_dim): see test_dfa_conv_runs
        fa_conv = fa.convert(copy.deepcopy(conv), mode)
        assert isinstance(fa_conv, FAConv2d)
        torch.testing.assert_close(fa_conv(img), conv(img), rtol=0, atol=0)


def test_linear_input_gradient_goes_through_B_and_the_update_is_the_outer_product():
    torch.manual_seed(0)
    ref = nn.Linear(6, 4)
    layer = fa.convert(copy.deepcopy(ref), "fa", seed=3)
    x = torch.randn(5, 6, requires_grad=True)
    g = torch.randn(5, 4)
    layer(x).backward(g)
    B = layer.feedback
    assert B.shape == ref.weight.shape
    torch.testing.assert_close(x.grad, g @ B)
    assert not torch.allclose(x.grad, g @ ref.weight.detach(), atol=1e-3)  # not backprop's W^T route
    torch.testing.assert_close(layer.weight.grad, g.T @ x.detach())  # dW = delta^T x, as backprop
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


def test_conv_input_gradient_goes_through_B_and_weight_gradient_is_backprops():
    torch.manual_seed(0)
    ref = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    layer = fa.convert(copy.deepcopy(ref), "fa", seed=1)
    x = torch.randn(2, 2, 7, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    g = torch.randn(2, 3, 4, 4)
    layer(x).backward(g)
    ref(x_ref).backward(g)
    expected = torch.nn.grad.conv2d_input(x.shape, layer.feedback, g, stride=2, padding=1)
    torch.testing.assert_close(x.grad, expected)
    assert not torch.allclose(x.grad, x_ref.grad, atol=1e-3)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


def test_conv1d_is_converted_and_routes_through_B():
    torch.manual_seed(0)
    layer = fa.convert(nn.Conv1d(2, 3, 5, padding=2), "fa")
    assert isinstance(layer, FAConv1d)
    x = torch.randn(4, 2, 11, requires_grad=True)
    g = torch.randn(4, 3, 11)
    layer(x).backward(g)
    torch.testing.assert_close(x.grad, torch.nn.grad.conv1d_input(x.shape, layer.feedback, g, padding=2))


def test_bp_mode_is_backprop_exactly():
    ref = _mlp()
    model = fa.convert(copy.deepcopy(ref), "bp")
    x, y = torch.randn(8, 64), torch.randint(10, (8,))
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("mode", ["fa", "frsf", "dfa"])
def test_feedback_is_a_buffer_and_does_not_change_in_training(mode):
    model = fa.convert(_mlp(), mode, output_dim=10, seed=0)
    names = {n for n, _ in model.named_parameters()}
    assert not any("feedback" in n for n in names)
    before = {n: b.clone() for n, b in model.named_buffers()}
    weights = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(16, 64)), torch.randint(10, (16,))).backward()
        opt.step()
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    assert all(not torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))


def test_sign_symmetric_modes():
    torch.manual_seed(0)
    lin = nn.Linear(20, 10)
    usf = fa.convert(copy.deepcopy(lin), "usf")
    std = 1 / math.sqrt(3 * 20)  # of PyTorch's default U(-1/sqrt(20), 1/sqrt(20))
    torch.testing.assert_close(usf.feedback_weight(), torch.sign(lin.weight.detach()) * std)
    frsf = fa.convert(copy.deepcopy(lin), "frsf")
    b = frsf.feedback_weight()
    assert torch.equal(torch.sign(b), torch.sign(lin.weight.detach()))
    assert torch.equal(b.abs(), frsf.feedback)  # |B| is the fixed magnitude
    brsf = fa.convert(copy.deepcopy(lin), "brsf")
    x = torch.randn(3, 20)
    mags = []
    for _ in range(2):
        brsf(x).sum().backward()
        mags.append(brsf.feedback.clone())
    assert not torch.equal(mags[0], mags[1])  # redrawn every training batch
    assert torch.equal(torch.sign(brsf.feedback_weight()), torch.sign(brsf.weight.detach()))
    brsf.eval()
    brsf(x)
    assert torch.equal(brsf.feedback, mags[1])  # not in eval mode
    # sign concordance: the W-B angle is well below 90 degrees from the start
    assert fa.alignment(usf)[""] < 45 and fa.alignment(frsf)[""] < 60


def test_dfa_sends_the_output_error_to_every_layer():
    ref = _mlp(widths=(12, 9, 7, 5))
    model = fa.convert(copy.deepcopy(ref), "dfa", output_dim=5, seed=0)
    hidden = model[2]
    assert hidden.feedback.shape == (5, 9)
    seen = {}
    model[2].register_full_backward_hook(lambda m, gin, gout: seen.update(gin=gin[0]))
    x, y = torch.randn(4, 12), torch.randint(5, (4,))
    out = model(x)
    out.retain_grad()
    F.cross_entropy(out, y).backward()
    torch.testing.assert_close(seen["gin"], out.grad @ hidden.feedback)  # e @ B, straight from the output
    # a backward that does not start at the model's output has no output error to send
    with pytest.raises(RuntimeError, match="dfa"):
        model[2](torch.randn(4, 9, requires_grad=True)).sum().backward()
    # copies (task adaptation) keep working with their own hooks
    twin = copy.deepcopy(model)
    F.cross_entropy(twin(x), y).backward()
    assert all(p.grad is not None for p in twin.parameters())


def test_dfa_conv_runs_and_keeps_shapes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    model = fa.convert(model, "dfa", output_dim=3)
    x = torch.randn(2, 1, 6, 6)
    F.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    assert model[0].feedback.shape == (3, 1, 3, 3) and model[0].weight.grad.shape == (4, 1, 3, 3)


def test_nested_conversion_converts_every_layer_and_keeps_the_weights():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU())
    model = nn.Sequential(inner, nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(2 * 16, 8), nn.ReLU())))
    model.add_module("head", nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    weight_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    out = fa.convert(model, "fa", seed=0)
    assert out is model
    converted = dict(model.named_modules())
    for name, module in ref.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            new = converted[name]
            assert isinstance(new, FALinear | FAConv2d), name
            assert torch.equal(new.weight, module.weight) and torch.equal(new.bias, module.bias)
    # the same Parameter objects: an optimizer built before the conversion still trains them
    assert {id(m.weight) for _, m in fa.feedback_layers(model)} == weight_ids
    s = fa.summary(model)
    assert [row[0] for row in s.converted] == ["0.0", "1.1.0", "head"]
    assert s.kept == (("0.1", "BatchNorm2d"),) and "1.1.0: Linear -> FALinear" in str(s)
    x = torch.randn(2, 1, 4, 4)
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x))


def test_feedback_is_drawn_from_its_own_stream():
    """B must not equal W even when the model was built after torch.manual_seed(seed) and B is
    drawn for the same seed (same distribution: it would be W itself, backprop in disguise)."""
    torch.manual_seed(0)
    model = fa.convert(nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 5)), "fa", seed=0)
    assert min(fa.alignment(model).values()) > 70
    plain = _mlp()
    state = torch.get_rng_state()
    again = fa.convert(plain, "fa", seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # conversion leaves the global RNG alone
    other = fa.convert(_mlp(), "fa", seed=5)
    assert all(torch.equal(a.feedback, b.feedback) for (_, a), (_, b) in zip(
        fa.feedback_layers(again), fa.feedback_layers(other), strict=True))  # fmt: skip


def test_state_dict_round_trip():
    a = fa.convert(_mlp(), "fa", seed=1)
    b = fa.convert(_mlp(seed=9), "fa", seed=2)
    b.load_state_dict(a.state_dict())
    assert "0.feedback" in a.state_dict()
    x = torch.randn(3, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    a(x).sum().backward()
    b(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_measurements():
    model = fa.convert(_mlp(), "fa", seed=0)
    x, y = torch.randn(32, 64), torch.randint(10, (32,))
    m = fa.measure(model, x, y)
    assert set(m) == {"0", "2"}
    assert m["2"]["update_angle"] == pytest.approx(0.0, abs=1e-3)  # the last layer gets the true error
    assert 60 < m["0"]["update_angle"] < 120  # a random B: the hidden update is about orthogonal
    assert all(70 < row["wb_angle"] < 110 for row in m.values())
    assert all(0.5 < row["norm_ratio"] < 2 for row in m.values())  # B drawn like W
    assert 1 < m["0"]["eff_dim"] <= 64
    bp = fa.measure(fa.convert(_mlp(), "bp"), x, y)
    assert all(row["wb_angle"] == 0 and row["update_angle"] == pytest.approx(0, abs=1e-3) for row in bp.values())
    assert set(fa.measure(_mlp())["0"]) == {"eff_dim"}  # plain layers: effective dimensionality only


def test_angle_and_effective_dimensionality():
    a = torch.tensor([1.0, 2.0, 0.0])
    assert angle(a, a) == pytest.approx(0, abs=1e-4) and angle(a, -a) == pytest.approx(180)
    assert angle(a, torch.tensor([-2.0, 1.0, 5.0])) == pytest.approx(90)
    assert math.isnan(angle(a, torch.zeros(3)))
    assert effective_dimensionality(torch.eye(6)) == pytest.approx(6)
    assert effective_dimensionality(torch.outer(torch.randn(5), torch.randn(7))) == pytest.approx(1)
    assert effective_dimensionality(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2)


def test_noise_pretraining_aligns_the_last_layer():
    """The paper's mechanism on a 64-100-10 FA MLP: memorising a fixed noise set with random labels
    aligns W with B; fresh noise every batch leaves it near 90 degrees."""
    curves = {}
    for noise_set in (512, None):
        model = fa.convert(_mlp(), "fa", seed=0)
        track: list[tuple[int, dict[str, float]]] = []
        out = fa.noise_pretrain(
            model, (64,), 10, steps=500, noise_set=noise_set, seed=0, track_every=250,
            on_track=lambda step, angles, track=track: track.append((step, angles)),
        )  # fmt: skip
        assert out is model
        curves[noise_set] = track
    fixed, fresh = curves[512], curves[None]
    assert [s for s, _ in fixed] == [0, 250, 500]
    assert fixed[0][1]["2"] > 80
    assert fixed[-1][1]["2"] < 60  # well below 90
    assert fresh[-1][1]["2"] > 80


def test_noise_pretraining_is_deterministic_and_uses_its_seed():
    def run(seed):
        model = fa.convert(_mlp(), "fa", seed=0)
        fa.noise_pretrain(model, (64,), 10, steps=20, seed=seed)
        return model[2].weight.detach().clone()

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_fa_noise_method_records_the_alignment_curve():
    model = fa.convert(_mlp(), "fa", seed=0)
    method = initium.create("fa-noise(steps=300,noise_set=256,track_every=100)")
    assert method(model, torch.randn(10, 64)) is model
    curve = method.info["wb_angle"]
    assert curve["step"] == [0, 100, 200, 300] and len(curve["2"]) == 4
    assert curve["2"][-1] < curve["2"][0] - 20


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fa.convert(_mlp(), "feedback"), "bp, fa, dfa, usf, brsf, frsf"),
        (lambda: fa.convert(_mlp(), "dfa"), "output_dim"),
        (lambda: fa.convert(nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4)), "fa"), "LSTM at '1'"),
        (lambda: fa.convert(nn.Sequential(nn.Sequential(nn.Conv3d(1, 1, 1))), "fa"), "Conv3d at '0.0'"),
        (lambda: fa.convert(nn.Conv2d(1, 1, 3, padding="same"), "fa"), "padding"),
        (lambda: fa.convert(nn.ReLU(), "fa"), "no nn.Linear"),
        (lambda: fa.noise_pretrain(_mlp(), (64,), 1, steps=1), "num_classes"),
        (lambda: fa.noise_pretrain(_mlp(), (64,), 7, steps=1), "num_classes=7"),
        (lambda: fa.noise_pretrain(_mlp(), (63,), 10, steps=1), r"\(63,\)"),
        (lambda: fa.noise_pretrain(_mlp(), (64,), 10, steps=1, noise_set=0), "noise_set"),
        (lambda: fa.noise_pretrain(_mlp(), (64,), 10, steps=1, lr=-1.0), "lr"),
        (lambda: fa.summary(_mlp()), "not converted"),
        (lambda: initium.create("fa-noise")(_mlp(), None), "training inputs"),
        (lambda: FALinear(3, 2, mode="dfa"), "output_dim"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unsupported_layers_can_be_left_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4))
    fa.convert(model, "fa", strict=False)
    assert isinstance(model[0], FALinear) and isinstance(model[1], nn.LSTM)


@pytest.mark.parametrize("name", list(fa.MODES))
def test_every_mode_is_a_registered_object_that_layers_and_rules_go_through(name):
    from initium.methods import RULES
    from initium.nn.feedback import FeedbackMode, get_mode

    mode = fa.MODES[name]
    assert isinstance(mode, FeedbackMode) and mode.name == name and get_mode(name) is mode
    torch.manual_seed(0)
    layer = FALinear(6, 4, mode=mode, output_dim=3, generator=torch.Generator().manual_seed(0))
    assert layer.rule is mode and layer.mode == name
    torch.testing.assert_close(layer.feedback_weight(), mode.feedback_weight(layer))
    if not mode.output_error:  # the backward sends the error through exactly the mode's B
        x = torch.randn(5, 6, requires_grad=True)
        g = torch.randn(5, 4)
        layer.eval()  # brsf redraws |R| in training: eval keeps the B we compare with
        layer(x).backward(g)
        torch.testing.assert_close(x.grad, g @ mode.feedback_weight(layer))
    # the runner's learning rule of the same name: converts (or, for backprop, keeps) the model
    plain = _mlp()
    plain.out_features = 10  # what dfa reads the output size from
    model = RULES.build(name)(plain, seed=0)
    layers = fa.feedback_layers(model)
    if mode.backprop:
        assert layers == [] and all(type(m) is nn.Linear for m in model if isinstance(m, nn.Linear))
    else:
        assert len(layers) == 2 and all(m.rule is mode for _, m in layers)
    probe = torch.randn(16, 64), torch.randint(10, (16,))
    measured = RULES.build(name).measure(model, *probe)
    kinds = {k.split("/")[0] for k in measured}
    assert kinds == ({"eff_dim"} if mode.backprop else {"wb_angle", "update_angle", "norm_ratio", "eff_dim"})


def test_a_new_mode_needs_no_change_to_the_layers():
    from initium.nn.feedback import MODES, FeedbackMode, register_mode

    @register_mode
    class Zero(FeedbackMode):
        """B = 0: no error reaches the layers below."""

        name = "test-zero"
        stores = "none"

        def feedback_weight(self, layer):
            return torch.zeros_like(layer.weight)

    try:
        model = fa.convert(_mlp(), "test-zero", seed=0)
        x = torch.randn(8, 64, requires_grad=True)
        F.cross_entropy(model(x), torch.randint(10, (8,))).backward()
        assert torch.equal(x.grad, torch.zeros_like(x))  # the error stopped at the first B
        assert model[2].weight.grad.abs().sum() > 0  # the last layer still learns from the true error
        assert model[0].weight.grad.abs().sum() == 0  # the first gets nothing through B = 0
    finally:
        MODES.pop("test-zero")


def test_initium_fa_is_the_family_module():
    import importlib

    import initium.methods.fa

    assert initium.fa is initium.methods.fa and importlib.import_module("initium.fa") is initium.methods.fa
    assert initium.fa.FANoise is initium.methods.METHODS.entry("fa-noise").factory
