"""The graph hypernetwork's core (initium.ghn): decoding to any shape, fan-in normalisation, the
batched (levels) and per-node message passing agreeing, determinism of plain and noise GHNs,
files, filling a model (unpredicted parameters, BatchNorm statistics) and the method. Untrained
GHNs (a fixed torch seed): none of this depends on training."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import initium
from initium import ghn
from initium.graph import Graph, Node, build
from initium.records import load_results
from initium.runner import RunConfig, run

# --- hand-made graphs --------------------------------------------------------------------------------


def chain(*specs: tuple[str, str, tuple[tuple[str, tuple[int, ...]], ...]], skip: bool = False) -> Graph:
    """input -> specs... -> output, in a chain (and a sum node joining the input of the second
    spec with the output of the third when ``skip``)."""
    nodes = [Node("input", "x", ())] + [Node(op, name, params) for op, name, params in specs]
    edges = [(i, i + 1) for i in range(len(nodes) - 1)]
    if skip:
        s = len(nodes)
        nodes.append(Node("sum", "add", ()))
        edges = [e for e in edges if e != (s - 1, s)] + [(1, s), (s - 1, s)]
        nodes.append(Node("output", "out", ()))
        edges.append((s, s + 1))
    else:
        nodes.append(Node("output", "out", ()))
        edges.append((len(nodes) - 2, len(nodes) - 1))
    return Graph(tuple(nodes), tuple(sorted(edges)), "fx", ())


def conv(name: str, o: int, i: int, *k: int, bias: bool = False) -> tuple[str, str, tuple]:
    params = ((f"{name}.weight", (o, i, *k)),) + (((f"{name}.bias", (o,)),) if bias else ())
    return ("conv", name, params)


def linear(name: str, o: int, i: int) -> tuple[str, str, tuple]:
    return ("linear", name, ((f"{name}.weight", (o, i)), (f"{name}.bias", (o,))))


def bn(name: str, c: int) -> tuple[str, str, tuple]:
    return ("bn", name, ((f"{name}.weight", (c,)), (f"{name}.bias", (c,))))


ACT = ("act", "relu", ())
SHAPES = [(8, 3, 3, 3), (7, 8, 1, 1), (13, 7, 5, 5), (9, 13, 7, 7), (130, 9, 3, 3), (70, 130, 3, 3), (5, 70, 9, 9)]


def many_shapes() -> Graph:
    """Every kind of shape the decoder must fill: convs 1x1 .. 9x9, odd channels, wider than the
    block, a 1-D convolution, a linear layer, norm and bias vectors, the classifier."""
    specs = [conv(f"c{j}", *s, bias=j % 2 == 0) for j, s in enumerate(SHAPES)]
    specs += [bn("bn", 5), ACT, ("conv", "c1d", (("c1d.weight", (6, 5, 3)),)), ("global_pool", "pool", ())]
    specs += [linear("hidden", 33, 6), ACT, linear("fc", 10, 33)]
    return chain(*specs)


def residual(width: int = 8, classes: int = 10) -> Graph:
    return chain(conv("a", width, 3, 3, 3), bn("a_bn", width), ACT, conv("b", width, width, 3, 3), ACT,
                 ("global_pool", "pool", ()), linear("fc", classes, width), skip=True)  # fmt: skip


@pytest.fixture(scope="module")
def net() -> ghn.GHN:
    torch.manual_seed(0)
    return ghn.GHN(ghn.GHNConfig(passes=2)).eval()


@pytest.fixture(scope="module")
def noisy() -> ghn.GHN:
    torch.manual_seed(1)
    return ghn.GHN(ghn.GHNConfig(noise_dim=8)).eval()


# --- decoder -----------------------------------------------------------------------------------------


def test_fit_block_crops_centred_and_tiles_channels() -> None:
    block = torch.arange(64 * 64 * 49, dtype=torch.float64).reshape(64, 64, 7, 7)
    for k, lo in ((1, 3), (3, 2), (5, 1), (7, 0)):
        out = ghn.fit_block(block, (5, 3, k, k))
        assert torch.equal(out, block[:5, :3, lo : lo + k, lo : lo + k])
    assert torch.equal(ghn.fit_block(block, (10, 33)), block[:10, :33, 3, 3])  # linear: the centre tap
    assert torch.equal(ghn.fit_block(block, (6, 5, 3)), block[:6, :5, 3, 2:5])  # 1-D conv: centre row
    wide = ghn.fit_block(block, (130, 70, 3, 3))  # tiled: channel c is channel c mod 64
    assert wide.shape == (130, 70, 3, 3)
    assert torch.equal(wide[64:128], wide[:64]) and torch.equal(wide[128:], wide[:2])
    assert torch.equal(wide[:, 64:], wide[:, :6])
    big = ghn.fit_block(block, (2, 2, 9, 9))  # 9 > 7: three copies, centre-cropped: the 7x7 sits in the middle
    assert torch.equal(big[:, :, 1:8, 1:8], block[:2, :2])
    assert torch.equal(big[:, :, 0, 1:8], block[:2, :2, 6]) and torch.equal(big[:, :, 8, 1:8], block[:2, :2, 0])


def test_predictions_have_exactly_the_shapes(net: ghn.GHN) -> None:
    g = many_shapes()
    with torch.no_grad():
        pred = net.predict([g])[0]
    assert {n: tuple(t.shape) for n, t in pred.items()} == {n: s for _, n, s in g.parameters()}
    assert all(torch.isfinite(t).all() for t in pred.values())
    assert (pred["bn.weight"] > 0).all() and (pred["bn.weight"] < 2).all()  # 2 sigmoid(p / 2)
    assert pred["fc.bias"].abs().max() <= net.config.bias_scale
    # channels past the block repeat the predicted ones
    assert torch.equal(pred["c4.weight"][64:128], pred["c4.weight"][:64])


def test_window_decoding_equals_slicing_the_full_block() -> None:
    """The decoder computes only the channels and window a parameter needs: the same numbers as
    decoding the whole (block, block, k, k) tensor and fitting it."""
    torch.manual_seed(2)
    dec = ghn.GHN(ghn.GHNConfig(block=16, decoder=(16, 32))).decoder
    with torch.no_grad():
        feats = dec.trunk(torch.randn(1, dec.config.hidden))[0]
        full = torch.einsum("oid,dhw->oihw", dec.weight, feats) + dec.weight_bias[:, :, None, None]
        for shape in [(8, 3, 3, 3), (7, 8, 1, 1), (13, 7, 5, 5), (30, 9, 4, 4), (5, 20, 9, 9), (33, 6), (6, 5, 3)]:
            torch.testing.assert_close(dec.block(feats, shape, False), ghn.fit_block(full, shape))


def test_weights_have_he_scale_across_shapes(net: ghn.GHN) -> None:
    """std of each predicted weight within 0.25x-4x of He's sqrt(2 / fan_in) (the classifier: of
    sqrt(1 / fan_in)), over fan-ins from 8 to 1170."""
    g = many_shapes()
    with torch.no_grad():
        pred = net.predict([g])[0]
    for _, name, shape in g.parameters():
        if len(shape) < 2:
            continue
        gain = 1.0 if name == "fc.weight" else 2.0
        ratio = float(pred[name].std()) / math.sqrt(gain / math.prod(shape[1:]))
        assert 0.25 < ratio < 4, (name, shape, ratio)


# --- message passing ---------------------------------------------------------------------------------


def test_levels_and_nodes_modes_agree(net: ghn.GHN, noisy: ghn.GHN) -> None:
    """The batched update per level (graphs joined) and GHN-2's per-node loop compute the same
    predictions, also for a noise GHN drawing from the same seed; and the same as one graph alone."""
    gs = [many_shapes(), residual(8), residual(24), chain(linear("h", 16, 64), ACT, linear("fc", 10, 16))]
    for model in (net, noisy):
        with torch.no_grad():
            a = model.predict(gs, generator=torch.Generator().manual_seed(5), mode="levels")
            b = model.predict(gs, generator=torch.Generator().manual_seed(5), mode="nodes")
        for pa, pb in zip(a, b, strict=True):
            assert pa.keys() == pb.keys()
            for k in pa:
                torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        states = net.encode(gs), net.encode(gs, mode="nodes")
        alone = net.predict([gs[1]])[0]
        joined = net.predict(gs)[1]
    for g, a, b in zip(gs, *states, strict=True):
        assert a.shape == (len(g.nodes), net.config.hidden)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for k in alone:
        torch.testing.assert_close(alone[k], joined[k], rtol=1e-4, atol=1e-5)


def test_messages_reach_every_node(net: ghn.GHN) -> None:
    """A node's prediction depends on the rest of the graph (forward and backward passes): the
    same first conv gets another weight when a later layer changes."""
    with torch.no_grad():
        a = net.predict([residual(8, 10)])[0]["a.weight"]
        b = net.predict([chain(conv("a", 8, 3, 3, 3), ACT, ("global_pool", "p", ()), linear("fc", 10, 8))])[0]
    assert not torch.allclose(a, b["a.weight"])


def test_predictions_are_differentiable(net: ghn.GHN) -> None:
    pred = net.predict([residual(8)])[0]
    loss = sum((t**2).sum() for t in pred.values())
    grads = torch.autograd.grad(loss, [net.embed.op.weight, net.gnn.gru.weight_hh, net.decoder.weight])
    assert all(g.abs().sum() > 0 for g in grads)


def test_plain_is_deterministic_noise_differs_per_seed(net: ghn.GHN, noisy: ghn.GHN) -> None:
    g = [residual(8)]

    def draw(model: ghn.GHN, seed: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return model.predict(g, generator=torch.Generator().manual_seed(seed))[0]

    p0, p1 = draw(net, 0), draw(net, 1)
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    n0, n0b, n1 = draw(noisy, 0), draw(noisy, 0), draw(noisy, 1)
    assert all(torch.equal(n0[k], n0b[k]) for k in n0)
    assert all(not torch.allclose(n0[k], n1[k]) for k in n0)


def test_num_classes_mismatch_is_refused(net: ghn.GHN) -> None:
    with pytest.raises(ghn.GHNError, match=r"fc\.weight.*5 outputs.*10-class"):
        net.predict([residual(8, classes=5)])


# --- files -------------------------------------------------------------------------------------------


def test_save_load_round_trip(noisy: ghn.GHN, tmp_path) -> None:
    folder = ghn.save(noisy, tmp_path / "g", meta={"command": "initium train ghn ..."})
    back = ghn.load(folder)
    assert back.config == noisy.config and back.meta == {"command": "initium train ghn ..."}
    g = [many_shapes()]
    with torch.no_grad():
        a = noisy.predict(g, generator=torch.Generator().manual_seed(3))[0]
        b = back.predict(g, generator=torch.Generator().manual_seed(3))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ghn.load(folder / ghn.CONFIG_FILE).config == noisy.config  # the JSON's path works too


def test_load_errors_name_the_file_and_the_fix(net: ghn.GHN, tmp_path, monkeypatch) -> None:
    with pytest.raises(ghn.GHNError, match=r"no such folder.*initium train ghn"):
        ghn.load(tmp_path / "missing")
    folder = ghn.save(net, tmp_path / "g")
    record = json.loads((folder / ghn.CONFIG_FILE).read_text())
    (folder / ghn.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ghn.GHNError, match=r"ghn.json is not valid JSON"):
        ghn.load(folder)
    weights = (folder / ghn.WEIGHTS_FILE).read_bytes()
    (folder / ghn.CONFIG_FILE).write_text(json.dumps(record))
    (folder / ghn.WEIGHTS_FILE).write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    with pytest.raises(ghn.GHNError, match=r"does not match the sha256"):
        ghn.load(folder)
    (folder / ghn.WEIGHTS_FILE).write_bytes(weights)
    (folder / ghn.CONFIG_FILE).write_text(json.dumps({**record, "config": {**record["config"], "hidden": 16}}))
    with pytest.raises(ghn.GHNError, match=r"wrong keys or shapes"):
        ghn.load(folder)
    (folder / ghn.CONFIG_FILE).write_text(json.dumps({**record, "config": {**record["config"], "width": 16}}))
    with pytest.raises(ghn.GHNError, match=r"unknown field.*width"):
        ghn.load(folder)
    (folder / ghn.WEIGHTS_FILE).unlink()
    with pytest.raises(ghn.GHNError, match=r"ghn.safetensors is missing"):
        ghn.load(folder)
    monkeypatch.setattr(ghn, "BUNDLED", tmp_path / "no-bundle")
    with pytest.raises(ghn.GHNError, match=r"no bundled GHN.*initium train ghn"):
        ghn.load()


# --- filling a model ---------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 5, padding=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class Scale(nn.Module):
    """A module with a parameter the graph does not know."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((c,), 3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[None, :, None, None]


def test_fill_predicts_in_place_and_reestimates_batchnorm(net: ghn.GHN) -> None:
    torch.manual_seed(0)
    model, x = SmallCNN(), torch.randn(64, 1, 8, 8)
    seen: list[torch.Tensor] = []
    hook = model.bn.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    model.train()
    report = net(model, x[:2], bn_inputs=x)  # GHN.__call__ on a model = fill
    hook.remove()
    with torch.no_grad():
        expected = net.predict([build(model, x[:2])])[0]
    assert sorted(report.predicted) == sorted(n for n, _ in model.named_parameters()) and report.unpredicted == []
    for name, p in model.named_parameters():
        assert torch.equal(p, expected[name]), name
    bn_input = seen[-1]
    torch.testing.assert_close(model.bn.running_mean, bn_input.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.bn.running_var, bn_input.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert report.bn_updated == ["bn"] and model.training and model.bn.momentum == 0.1


def test_fill_lists_what_it_cannot_predict(net: ghn.GHN) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), Scale(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    report = ghn.fill(model, torch.randn(2, 1, 8, 8), net)
    assert report.unpredicted == ["1.gamma"]
    assert torch.equal(model[1].gamma, torch.full((4,), 3.0))  # kept, and said so
    assert set(report.predicted) == {"0.weight", "0.bias", "4.weight", "4.bias"}


def test_fill_refuses_another_number_of_classes_before_any_change(net: ghn.GHN) -> None:
    model = SmallCNN(classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ghn.GHNError, match=r"5 outputs"):
        ghn.fill(model, torch.randn(2, 1, 8, 8), net)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- the method --------------------------------------------------------------------------------------


def test_method_plain_and_noise(net: ghn.GHN, noisy: ghn.GHN, tmp_path) -> None:
    plain, noise = str(ghn.save(net, tmp_path / "plain")), str(ghn.save(noisy, tmp_path / "noise"))
    x = torch.randn(40, 1, 8, 8)

    def weights(spec: str, seed: int) -> torch.Tensor:
        torch.manual_seed(100 + seed)  # another default init each time: the GHN overwrites it
        model = SmallCNN()
        method = initium.create(spec, seed=seed)
        method.validate(model, x)
        method(model, x)
        assert method.info["unpredicted"] == []
        return model.conv2.weight.detach().clone()

    assert torch.equal(weights(f"ghn(path={plain})", 0), weights(f"ghn(path={plain})", 1))
    described = initium.create(f"ghn(path={plain})").describe()[0]
    assert (
        described["weights_sha256"]
        == json.loads((tmp_path / "plain" / ghn.CONFIG_FILE).read_text())["weights"]["sha256"]
    )
    assert torch.equal(weights(f"ghn(path={noise},noise=True)", 3), weights(f"ghn(path={noise},noise=True)", 3))
    assert not torch.allclose(weights(f"ghn(path={noise},noise=True)", 3), weights(f"ghn(path={noise},noise=True)", 4))
    with pytest.raises(ghn.GHNError, match=r"without noise"):
        initium.create(f"ghn(path={plain},noise=True)")
    with pytest.raises(ghn.GHNError, match=r"needs inputs"):
        initium.create(f"ghn(path={plain})")(SmallCNN(), None)
    with pytest.raises(ghn.GHNError, match=r"5 outputs"):
        initium.create(f"ghn(path={plain})").validate(SmallCNN(classes=5), x)


@pytest.mark.slow  # ~14 s on 2 shared cores: 4 classify runs of 1 epoch
def test_runner_gives_the_method_the_tasks_inputs(net: ghn.GHN, noisy: ghn.GHN, tmp_path) -> None:
    """``initium run classify --methods ghn(...)``: the runner passes the training inputs; the
    record says every parameter was predicted and which GHN (its weights' sha256) did it; a plain
    GHN's runs start from the same weights whatever the seed (the same test loss before training),
    a noise GHN's do not."""
    plain, noise = str(ghn.save(net, tmp_path / "plain")), str(ghn.save(noisy, tmp_path / "noise"))
    methods = (f"ghn(path={plain})", f"ghn(path={noise},noise=True)")
    cfg = RunConfig(task="classify", out=tmp_path / "o", arch="classifier-cnn", methods=methods,
                    seeds=(0, 1), task_options={"epochs": 1, "ood": False})  # fmt: skip
    run(cfg)
    records = load_results(tmp_path / "o")
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    assert all(r["method_info"]["unpredicted"] == [] and r["method_info"]["predicted"] == 6 for r in records)
    first = {(r["method"], r["seed"]): r["curve"]["test_loss"][0] for r in records}
    assert first[(methods[0], 0)] == first[(methods[0], 1)]
    assert first[(methods[1], 0)] != first[(methods[1], 1)]
