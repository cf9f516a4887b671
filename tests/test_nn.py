from __future__ import annotations

import inspect
import math

import pytest
import torch

from initium.nn import ARCHS, PEMLP, FourierMLP, ResNet, Siren
from initium.tasks import grid


def _linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_siren_init_bounds_and_variance():
    torch.manual_seed(0)
    model = Siren(2, 3, hidden=256, layers=3, w0=30.0)
    first, *hidden = _linears(model)
    assert first.weight.abs().max() <= 1 / 2  # U(-1/n, 1/n), n = 2
    assert first.weight.var().item() == pytest.approx(0.5**2 / 3, rel=0.15)  # 512 draws
    for layer in hidden:  # the hidden layers and the linear head
        bound = math.sqrt(6 / 256) / 30
        w = layer.weight
        assert w.abs().max() <= bound
        if w.numel() >= 256 * 256:  # the 3-row head is too small for a tight variance estimate
            assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.03)  # variance of U(-b, b)


def test_siren_preactivations_have_unit_std():
    """SIREN's point (section 3.2): with its init, the weight part ``w0 * W x`` of every hidden
    sine's pre-activation has standard deviation ~1, whatever the depth. (The default biases,
    kept as in the authors' code, add ``w0^2 / (3n)`` of variance on top.)"""
    torch.manual_seed(0)
    model = Siren(2, 1, hidden=512, layers=5)
    x = grid(64, 64)
    stds = []
    for module in model.net:
        if isinstance(module, torch.nn.Linear):
            stds.append((30.0 * x @ module.weight.T).std().item())
        x = module(x)
    hidden = stds[1:-1]  # not the first layer (coordinates in) nor the linear head
    assert len(hidden) == 4
    assert all(s == pytest.approx(1.0, abs=0.05) for s in hidden)


def test_fourier_features_are_fixed_gaussian():
    torch.manual_seed(0)
    model = FourierMLP(2, 3, features=1024, sigma=10.0)
    B = model.encoding.B
    assert B.std().item() == pytest.approx(10.0, rel=0.05)
    assert "encoding.B" not in dict(model.named_parameters())  # never trained


def test_fourier_features_match_tancik_on_unit_coordinates():
    """On initium's [-1, 1] grid the mapping equals the paper's cos/sin(2 pi B u) at u = (v+1)/2."""
    enc = FourierMLP(2, 1, features=8, sigma=3.0).encoding
    v = torch.tensor([[-1.0, 0.5], [0.25, 1.0]])
    u = (v + 1) / 2
    proj = 2 * math.pi * u @ enc.B.T
    torch.testing.assert_close(enc(v), torch.cat([torch.cos(proj), torch.sin(proj)], -1), rtol=1e-5, atol=1e-5)


def test_positional_encoding_formula():
    model = PEMLP(2, 1, frequencies=3)
    p = torch.tensor([[0.25, -0.5]])
    enc = model.encoding(p)
    assert enc.shape == (1, 2 * (1 + 2 * 3))
    expected_sin = torch.tensor([math.sin(2**k * math.pi * v) for v in (0.25, -0.5) for k in range(3)])
    expected_cos = torch.tensor([math.cos(2**k * math.pi * v) for v in (0.25, -0.5) for k in range(3)])
    torch.testing.assert_close(enc[0, :2], p[0])  # the raw coordinates pass through
    torch.testing.assert_close(enc[0, 2:8], expected_sin.float())
    torch.testing.assert_close(enc[0, 8:14], expected_cos.float())


COORD_ARCHS = [a for a in ARCHS.names() if "in_features" in inspect.signature(ARCHS.entry(a).factory).parameters]


@pytest.mark.parametrize("arch", COORD_ARCHS)  # coordinate nets; image nets (dip) are tested in test_dip.py
def test_archs_map_coordinates_to_channels(arch):
    if "in_features" not in inspect.signature(ARCHS.entry(arch).factory).parameters:
        pytest.skip(f"{arch} is not a coordinate network (tested with its task)")
    model = ARCHS.build(arch, {"hidden": 32}, in_features=2, out_features=3)
    assert model(grid(5, 5)).shape == (25, 3)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (dict(hidden=0), "hidden must be a positive int, got 0"),
        (dict(layers=-1), "layers must be a positive int, got -1"),
        (dict(w0=0.0), r"w0 must be > 0, got 0\.0"),
        (dict(hidden=2.5), r"hidden must be a positive int, got 2\.5"),
    ],
)
def test_siren_rejects_bad_sizes(bad, match):
    with pytest.raises(ValueError, match=match):
        Siren(2, 1, **bad)


# --- ResNet (He et al. 2016), the zoo's family --------------------------------------------------------


def _convs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize(("depth", "width", "shape"), [(8, 4, (1, 8, 8)), (20, 16, (3, 32, 32)), (14, 2, (3, 5, 7))])
def test_resnet_shapes_and_layers(depth, width, shape):
    model = ResNet(depth=depth, width=width, in_shape=shape, num_classes=10)
    assert model(torch.randn(3, *shape)).shape == (3, 10) and model.out_features == 10
    convs = _convs(model)
    # depth counts the weighted layers on the main path: the 3x3 convs and the head
    assert sum(c.kernel_size == (3, 3) for c in convs) + 1 == depth
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2  # shortcuts where stages 2 and 3 begin
    assert [len(stage) for stage in model.stages] == [(depth - 2) // 6] * 3
    x = model.stem(torch.randn(1, *shape))
    sizes = []
    for stage in model.stages:  # widths w, 2w, 4w; stride 2 at stages 2 and 3
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    h, w = shape[1:]
    half = lambda n: (n + 1) // 2  # noqa: E731 - stride 2, padding 1, kernel 3
    assert sizes == [(width, h, w), (2 * width, half(h), half(w)), (4 * width, half(half(h)), half(half(w)))]


def test_resnet20_is_the_papers_size():
    model = ResNet(20, 16, in_shape=(3, 32, 32), num_classes=10)
    n = sum(p.numel() for p in model.parameters())
    assert 0.27e6 < n < 0.28e6  # 0.27 M in He et al. (option A); the two 1x1 shortcuts add 2.7 k


def test_resnet50_is_the_papers_size_and_shapes():
    """resnet-bottleneck with blocks (3, 4, 6, 3) is ResNet-50: 25.56 M parameters with 1000 classes
    (torchvision's resnet50 has 25,557,032); a small one runs on digits-sized images."""
    model = ARCHS.build("resnet-bottleneck", {}, fixed={"in_shape": (3, 224, 224), "out_features": 1000})
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    small = ARCHS.build(
        "resnet-bottleneck", {"blocks": (1, 2), "width": 4}, fixed={"in_shape": (1, 8, 8), "out_features": 10}
    )
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert [len(s) for s in small.stages] == [1, 2] and small.stages[1][0].conv3.out_channels == 32
    assert ARCHS.build("resnet-bottleneck", small.config).config == small.config


def test_resnet_he_init_statistic():
    """Every conv weight ~ N(0, 2 / fan_out), fan_out = out_channels * 9: the 36 864 weights of a stage-3
    conv of ResNet-20 estimate the std to about 0.4%."""
    torch.manual_seed(0)
    model = ResNet(20, 16, in_shape=(3, 32, 32))
    w = model.stages[2][1].conv1.weight
    assert w.shape == (64, 64, 3, 3)
    assert w.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    assert abs(w.mean().item()) < 0.03 * w.std().item()  # 6 standard errors
    stem = model.stem[0].weight  # fan_out, not fan_in: 16 * 9, whatever the input channels
    assert stem.std().item() == pytest.approx(math.sqrt(2 / (16 * 9)), rel=0.25)
    bn = model.stages[0][0].bn1
    assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(depth=10), r"depth must be 6n\+2 .* got 10; nearest: 8"),
        (dict(depth=2), "depth must be an int >= 8"),
        (dict(depth=20.0), "depth must be an int"),
        (dict(width=0), "width must be an int >= 1"),
        (dict(num_classes=1), "num_classes must be an int >= 2"),
        (dict(in_shape=(1, 40)), r"resnet takes \(C, H, W\) images.*classifier-cnn"),
    ],
)
def test_resnet_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


def test_resnet_is_registered_and_its_config_rebuilds_it():
    model = ARCHS.build("resnet", {"depth": 8, "width": 4}, fixed={"in_shape": (1, 8, 8), "out_features": 10})
    assert isinstance(model, ResNet) and model.config == dict(in_shape=[1, 8, 8], out_features=10, depth=8, width=4)
    again = ARCHS.build("resnet", model.config)
    assert [(k, v.shape) for k, v in again.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]
    assert model.default_lr == ARCHS.build("classifier-cnn", {}, in_shape=(1, 8, 8), out_features=10).default_lr
