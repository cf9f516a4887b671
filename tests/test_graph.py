"""initium.graph: the computational graph of a network (GHN-2's graph), read by torch.fx or by the
autograd walk, and `initium graph show`."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from initium import graph
from initium.cli import main
from initium.graph import GraphError, build

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # digits' input shape


def ops(g: graph.Graph) -> list[str]:
    return [n.op for n in g.nodes]


def same_graph(a: graph.Graph, b: graph.Graph) -> bool:
    """Same ops in the same order, same edges, same parameters (names of structural nodes may differ)."""
    return ops(a) == ops(b) and a.edges == b.edges and [n.params for n in a.nodes] == [n.params for n in b.nodes]


def arch(spec: str, shape: tuple[int, ...] | None = None) -> tuple[nn.Module, torch.Tensor]:
    return graph.arch_example(spec, shape)


class Residual(nn.Module):
    """relu(bn(conv2(relu(conv1(x)))) + x), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.bn = (
            nn.Conv2d(1, 1, 3, padding=1),
            nn.Conv2d(1, 1, 3, padding=1),
            nn.BatchNorm2d(1),
        )
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.relu(y + x).flatten(1))


class Concat(nn.Module):
    """Two 3x3 branches on the input, concatenated on channels, a 1x1 conv, global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.merge = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.merge(torch.cat([self.a(x), self.b(x)], dim=1))).flatten(1)


class Branchy(Residual):
    """Residual, but with data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return super().forward(x)


class HandAttention(nn.Module):
    """Attention written out (matrix products of batched data, which autograd runs as views around
    bmm), a functional linear on the model's own parameters of 3-D data, two reshapes, a mean."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.w, self.b = nn.Parameter(torch.randn(8, 8)), nn.Parameter(torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        h = torch.nn.functional.linear(torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1) @ v, self.w, self.b)
        return self.head(h.reshape(h.shape[0], -1, 4).reshape(h.shape[0], -1, 8).mean(1))


def chain(k: int) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(3, 3) for _ in range(k)])


# ---------------------------------------------------------------------------------------------
# known nets, counted by hand


def test_classifier_cnn_graph_counted_by_hand():
    # input, conv, relu, conv, relu, avg pool, flatten, linear, output: 9 nodes in a chain, 8 edges
    g = build(*arch("classifier-cnn"))
    assert ops(g) == ["input", "conv", "act", "conv", "act", "avg_pool", "flatten", "linear", "output"]
    assert g.edges == tuple((i, i + 1) for i in range(8))
    assert g.method == "fx" and g.unsupported == ()
    assert g.nodes[1].name == "net.0" and g.nodes[1].params == (("net.0.weight", (16, 1, 3, 3)), ("net.0.bias", (16,)))
    assert g.nodes[7].params == (("net.6.weight", (10, 512)), ("net.6.bias", (10,)))


def test_classifier_mlp_graph_counted_by_hand():
    # input, flatten, (linear, relu) x 2, linear, output: 8 nodes, 7 edges
    g = build(*arch("classifier-mlp"))
    assert ops(g) == ["input", "flatten", "linear", "act", "linear", "act", "linear", "output"]
    assert len(g.edges) == 7


def test_resnet_graph_counted_by_hand():
    # resnet depth 8 = 1 block per stage. input 1 + stem (conv, bn, relu) 3 + block 0 (conv1, bn1, relu, conv2, bn2,
    # sum, relu) 7 + blocks 1 and 2 (the same plus a shortcut conv and bn) 9 + 9 + pool, flatten, head 3 + output 1
    # = 33 nodes; every node but the input has one predecessor except the 3 sums with 2: 32 + 3 = 35 edges.
    g = build(*arch("resnet(depth=8,width=8)"))
    assert len(g.nodes) == 33 and len(g.edges) == 35
    count = {op: ops(g).count(op) for op in set(ops(g))}
    assert count == {
        "input": 1, "conv": 9, "bn": 9, "act": 7, "sum": 3, "global_pool": 1, "flatten": 1, "linear": 1, "output": 1
    }  # fmt: skip
    preds = g.predecessors()
    sums = [i for i, n in enumerate(g.nodes) if n.op == "sum"]
    assert all(len(preds[i]) == 2 for i in sums)
    # block 0's shortcut is the identity: its sum reads the stem's relu and the block's bn2
    first = sums[0]
    assert sorted(g.nodes[j].name for j in preds[first]) == ["stages.0.0.bn2", "stem.2"]
    # the classifier is the last linear node, right before the output
    assert g.nodes[-2].op == "linear" and g.nodes[-2].name == "head" and preds[-1] == [len(g.nodes) - 2]


def test_residual_sum_has_two_incoming_edges():
    # input, conv1, relu, conv2, bn, sum, relu, flatten, head, output: 10 nodes; 8 chain edges + input -> sum = 10
    g = build(Residual(), X)
    assert ops(g) == ["input", "conv", "act", "conv", "bn", "sum", "act", "flatten", "linear", "output"]
    assert g.predecessors()[5] == [0, 4]
    assert len(g.edges) == 10


def test_concat_node():
    # input, conv a, conv b, cat, merge conv, global pool, flatten, output: 8 nodes; edges: input -> a, input -> b,
    # a -> cat, b -> cat, cat -> merge, merge -> pool, pool -> flatten, flatten -> output = 8
    g = build(Concat(), X)
    assert ops(g) == ["input", "conv", "conv", "concat", "conv", "global_pool", "flatten", "output"]
    assert [n.name for n in g.nodes[1:3]] == ["a", "b"]  # same level: a's parameters come first
    assert g.predecessors()[3] == [1, 2] and len(g.edges) == 8


def test_distances_and_virtual_edges_on_a_chain():
    g = build(chain(8), torch.randn(2, 3))  # input, 8 linears, output: a chain of 10 nodes
    n, cutoff = 10, 4
    d = g.distances(cutoff=cutoff)
    assert d.dtype == torch.int64 and d.shape == (n, n)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    expected = torch.where((j - i >= 1) & (j - i <= cutoff), j - i, 0)
    assert torch.equal(d, expected)
    assert sorted(g.virtual_edges(cutoff)) == [
        (a, b, b - a) for a in range(n) for b in range(n) if 2 <= b - a <= cutoff
    ]
    assert g.distances(cutoff=50).max() == n - 1
    with pytest.raises(ValueError, match="cutoff"):
        g.distances(cutoff=0)


def test_distances_take_the_shortest_path():
    g = build(Residual(), X)  # input -> sum is one edge, the long way round is 5
    assert g.distances()[0, 5] == 1 and g.distances()[1, 5] == 4 and g.distances()[5, 0] == 0


def test_levels_are_longest_path_depths():
    g = build(Residual(), X)
    assert g.levels() == [[0], [1], [2], [3], [4], [5], [6], [7], [8], [9]]  # the sum waits for the long branch
    g = build(*arch("resnet(depth=8,width=8)"))
    levels = g.levels()
    where = {i: lv for lv, members in enumerate(levels) for i in members}
    assert all(where[s] < where[d] for s, d in g.edges)
    assert all(where[d] == max(where[s] for s, _ in g.edges if _ == d) + 1 for _, d in g.edges)
    assert levels[0] == [0] and levels[-1] == [len(g.nodes) - 1]
    # a strided block's conv1 and shortcut conv read the same node: one level
    assert [g.nodes[i].name for i in levels[11]] == ["stages.1.0.conv1", "stages.1.0.shortcut.0"]


SPECS = [
    ("classifier-cnn", None), ("classifier-mlp", None), ("resnet(depth=8,width=8)", None),
    ("classifier-cnn(channels=(4,))", (1, 40)), ("siren(hidden=16,layers=2)", None),
    ("fourier(hidden=16,layers=2,features=8)", None), ("pe(hidden=16,layers=2,frequencies=3)", None),
    ("mlp(hidden=16,layers=2)", None), ("deeponet(hidden=8,layers=2,basis=4)", (5,)),
    ("dip(channels=8,levels=2)", None),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "shape"), SPECS)
def test_every_parameter_of_every_arch_in_exactly_one_node(spec, shape):
    model, x = arch(spec, shape)
    g = build(model, x)  # strict: every arch of initium.nn is representable
    names = [name for _, name, _ in g.parameters()]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(set(names)) == len(names)
    shapes = dict(model.named_parameters())
    assert all(tuple(shapes[name].shape) == shape for _, name, shape in g.parameters())
    assert all(node.op in graph.OPS for node in g.nodes) and g.unsupported == ()
    assert all(s < d for s, d in g.edges) and len(set(g.edges)) == len(g.edges)


@pytest.mark.parametrize(
    "make",
    [
        lambda: arch("classifier-cnn"), lambda: arch("classifier-mlp"), lambda: arch("resnet(depth=8,width=8)"),
        lambda: arch("resnet(depth=14,width=4)", (3, 8, 8)), lambda: (Residual(), X), lambda: (Concat(), X),
        lambda: arch("siren(hidden=16,layers=2)"), lambda: arch("fourier(hidden=16,layers=2,features=8)"),
        lambda: arch("pe(hidden=16,layers=2,frequencies=3)"), lambda: arch("classifier-mlp", (64,)),
        lambda: (HandAttention(), torch.randn(2, 5, 8)),
    ],
    ids=[
        "cnn", "mlp", "resnet8", "resnet14", "residual", "concat", "siren", "fourier", "pe", "mlp-flat-input",
        "hand-attention",
    ],
)  # fmt: skip
def test_fx_and_autograd_give_the_same_graph(make):
    model, x = make()
    a, b = build(model, x, method="fx"), build(model, x, method="autograd")
    assert (a.method, b.method) == ("fx", "autograd")
    assert same_graph(a, b)
    # modules keep their qualified names either way
    assert [n.name for n in a.nodes if n.params] == [n.name for n in b.nodes if n.params]


def test_hand_written_attention():
    # input; q, k, v; q @ k^T (mul); softmax; @ v (mul); F.linear (linear, w and b); 2 reshapes; mean; head; output
    g = build(HandAttention(), torch.randn(2, 5, 8))  # (the autograd walk gives the same: see above)
    assert ops(g) == [
        "input", "linear", "linear", "linear", "mul", "act", "mul", "linear", "flatten", "flatten", "global_pool",
        "linear", "output",
    ]  # fmt: skip
    assert g.predecessors()[4] == [1, 2] and g.predecessors()[6] == [3, 5]
    assert g.nodes[7].params == (("w", (8, 8)), ("b", (8,)))


@pytest.mark.parametrize(
    ("net", "x"), [(Branchy(), X), *[arch(s) for s in ("deeponet(hidden=8,layers=2)", "dip(channels=8,levels=2)")]]
)
def test_untraceable_nets_fall_back_to_the_autograd_walk(net, x):
    g = build(net, x)
    assert g.method == "autograd" and g.unsupported == ()
    with pytest.raises(GraphError, match=r"cannot trace.*method='autograd'"):
        build(net, x, method="fx")


def test_control_flow_fallback_reads_the_branch_taken():
    g = build(Branchy(), X.abs())  # x.sum() > 0: x = -x, a contracted op; the rest is Residual's graph
    assert same_graph(g, build(Residual(), X))


class WithEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x).mean(1))


class WithGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.GRU(4, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class LayerScale(nn.Module):
    """A parameter multiplied into the data: no op of the vocabulary holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.scale, self.head = nn.Linear(4, 4), LayerScale(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scale(self.body(x)))


UNSUPPORTED = [
    (WithEmbedding, torch.randint(0, 10, (2, 5)), "emb", "Embedding"),
    (WithGRU, torch.randn(2, 3, 4), "rnn", "GRU"),
    (Scaled, torch.randn(2, 4), "scale", "LayerScale"),
]


@pytest.mark.parametrize("method", ["fx", "autograd"])
@pytest.mark.parametrize(("cls", "x", "module", "kind"), UNSUPPORTED, ids=["embedding", "gru", "param-mul"])
def test_strict_error_names_the_module_and_the_fix(cls, x, module, kind, method):
    with pytest.raises(GraphError, match=rf"module '{module}' \({kind}\).*strict=False"):
        build(cls(), x, method=method)


@pytest.mark.parametrize("method", ["fx", "autograd"])
@pytest.mark.parametrize(("cls", "x", "module", "kind"), UNSUPPORTED, ids=["embedding", "gru", "param-mul"])
def test_lenient_graph_lists_the_module_and_leaves_its_parameters_out(cls, x, module, kind, method, caplog):
    model = cls()
    with caplog.at_level(logging.WARNING, logger="initium.graph"):
        g = build(model, x, strict=False, method=method)
    assert g.unsupported == (module,)
    assert module in caplog.text
    names = {name for _, name, _ in g.parameters()}
    assert names == {n for n, _ in model.named_parameters() if not n.startswith(module + ".")}
    assert g.nodes[-2].op == "linear" and g.nodes[-2].name == "head"
    assert all(s < d for s, d in g.edges)


class TinyViT(nn.Module):
    """Patches, a class token (concatenated: no op holds it), a position embedding (a bias), one
    nn.TransformerEncoderLayer (torch.fx cannot trace its fast-path checks), a LayerNorm and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch, self.cls = nn.Conv2d(1, 8, 4, 4), nn.Parameter(torch.zeros(1, 1, 8))
        self.pos = nn.Parameter(torch.zeros(1, 5, 8))
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.ln, self.head = nn.LayerNorm(8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.ln(self.enc(t)[:, 0]))


def test_transformer_layer_reads_through_the_autograd_walk():
    with pytest.raises(GraphError, match=r"the model itself \(TinyViT\): parameter 'cls' used by CatBackward"):
        build(TinyViT(), X)
    g = build(TinyViT(), X, strict=False)
    assert g.method == "autograd" and g.unsupported == ("cls",)
    # conv, flatten, + pos, attention, sum, ln, linear, relu, linear, sum, ln (the layer's), ln, head
    assert ops(g)[1:-1] == [
        "conv", "flatten", "bias", "attention", "sum", "ln", "linear", "act", "linear", "sum", "ln", "ln", "linear"
    ]  # fmt: skip
    assert g.nodes[4].name == "enc.self_attn" and [p for p, _ in g.nodes[4].params] == [
        "enc.self_attn.in_proj_weight", "enc.self_attn.out_proj.weight", "enc.self_attn.in_proj_bias",
        "enc.self_attn.out_proj.bias",  # weights first
    ]  # fmt: skip
    assert g.predecessors()[5] == [3, 4]  # the residual around attention


def test_unused_parameter_is_an_error_unless_lenient():
    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare, self.dead = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)  # spare: never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.dead(x)  # called, but its result is dropped
            return self.used(x)

    model = Spare()
    with pytest.raises(GraphError, match=r"spare\.weight.*do not contribute"):
        build(model, torch.randn(2, 3))
    for method in ("fx", "autograd"):
        g = build(model, torch.randn(2, 3), strict=False, method=method)
        assert g.unsupported == ("spare", "dead") and ops(g) == ["input", "linear", "output"]


def test_a_module_called_twice_holds_its_parameters_on_its_first_call():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.tanh(self.lin(x)))

    for method in ("fx", "autograd"):
        g = build(Twice(), torch.randn(2, 3), method=method)
        assert ops(g) == ["input", "linear", "act", "linear", "output"]
        assert [len(n.params) for n in g.nodes] == [0, 2, 0, 0, 0]


def test_functional_ops_on_parameters_map_to_their_ops():
    class Functional(nn.Module):  # F.linear on its own parameters, then + a bias parameter
        def __init__(self) -> None:
            super().__init__()
            # the bias registered first: the node still lists the weight first
            self.b, self.w, self.shift = (
                nn.Parameter(torch.zeros(4)),
                nn.Parameter(torch.randn(4, 3)),
                nn.Parameter(torch.zeros(4)),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.w, self.b).relu() + self.shift

    model, x = Functional(), torch.randn(2, 3)
    a, b = build(model, x, method="fx"), build(model, x, method="autograd")
    assert ops(a) == ["input", "linear", "act", "bias", "output"] and same_graph(a, b)
    assert a.nodes[1].params == (("w", (4, 3)), ("b", (4,))) and a.nodes[3].params == (("shift", (4,)),)
    assert [n.name for n in a.nodes] == ["input", "w", "relu", "shift", "output"]


def test_in_place_ops_on_the_input_and_several_outputs():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x.relu_()  # in place, on the input itself
            return self.a(x), self.b(x)

    # input, relu, linear a, linear b, output: relu reads the input, both heads the relu, the output both heads
    graphs = [build(TwoHeads(), torch.randn(2, 3), method=m) for m in ("fx", "autograd")]
    for g in graphs:
        assert ops(g) == ["input", "act", "linear", "linear", "output"]
        assert g.edges == ((0, 1), (1, 2), (1, 3), (2, 4), (3, 4))
    assert same_graph(*graphs)


@pytest.mark.parametrize("method", ["auto", "fx", "autograd"])
def test_model_failing_on_the_input_is_a_clear_error(method):
    with pytest.raises(GraphError, match=r"fails on the example input of shape \(2, 5\)") as info:
        build(nn.Sequential(nn.Linear(4, 2)), torch.randn(2, 5), method=method)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(GraphError, match="method must be one of"):
        build(nn.Linear(4, 2), torch.randn(2, 4), method="trace")


@pytest.mark.parametrize("method", ["fx", "autograd"])
def test_build_leaves_the_model_as_it_was(method):
    model, x = arch("resnet(depth=8,width=8)")
    model.train()
    model.head.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build(model, x * 3 + 1, method=method)
    assert all(m.training for m in model.modules())
    assert not model.head.weight.requires_grad and model.stem[0].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN running stats too


def test_graph_checks_its_invariants():
    node = graph.Node("linear", "l", (("l.weight", (2, 3)),))
    with pytest.raises(GraphError, match="src < dst"):
        graph.Graph((graph.Node("input", "input"), node, graph.Node("output", "output")), ((1, 0), (1, 2)), "fx")
    with pytest.raises(GraphError, match="unknown ops"):
        graph.Graph((graph.Node("input", "input"), graph.Node("lstm", "r"), graph.Node("output", "output")), (), "fx")


def test_cli_prints_the_graph(capsys, tmp_path):
    assert main(["graph", "show", "--arch", "classifier-cnn", "--cutoff", "3", "--plot", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert "graph of ClassifierCNN (fx): 9 nodes, 8 edges, 6 parameter tensors" in out
    assert "weight 32x16x3x3, bias 32" in out
    assert "9 levels; 13 virtual edges (2 <= distance <= 3)" in out  # a chain of 9: 7 pairs 2 apart, 6 pairs 3 apart
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_arch_is_one_clear_error(capsys):
    assert main(["graph", "show", "--arch", "resnt"]) == 2
    assert "unknown architecture 'resnt'; closest: resnet" in capsys.readouterr().err
