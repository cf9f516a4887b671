"""The GHN's architecture space: the ``net`` arch and its named spaces (``initium.nn.space``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from initium._registry import SpecError, UnknownNameError
from initium.nn import ARCHS, Net, sample_space, split_space
from initium.tasks import TASKS
from initium.tasks.classify import ClassifyConfig


@pytest.fixture(scope="module")
def digits():
    task = TASKS.build("classify", ClassifyConfig(ood=False, corrupt=False, track=False).__dict__)
    task.setup(torch.device("cpu"))
    return task


def test_sample_space_is_deterministic_distinct_and_seeded():
    a, b = sample_space("small", 300, seed=1), sample_space("small", 300, seed=1)
    assert a == b and len(set(a)) == 300  # the same for one seed, no spec twice
    assert sample_space("small", 300, seed=2) != a
    assert sample_space("small", 50, seed=1) == a[:50]  # a prefix: asking for more keeps the first ones


def test_split_space_is_disjoint_and_stable():
    train, held = split_space("small", train=2000, held_out=200)
    assert len(train) == 2000 and len(held) == 200 and not set(train) & set(held)
    assert split_space("small", train=500, held_out=200)[1] == held  # the held-out list does not move
    assert split_space("small", train=500, held_out=200)[0] == train[:500]


def test_spaces_cover_what_they_promise():
    small = [ARCHS.config("net", ARCHS.parse(s)[0][1]) for s in sample_space("small", 400, 0)]
    assert {c["depth"] for c in small} == {1, 2, 3, 4} and min(c["width"] for c in small) >= 8
    assert max(c["width"] for c in small) <= 32 and {c.get("kernel") for c in small} == {3, 5, None}
    assert {c["norm"] for c in small} == {"bn", "ln", "gn", "none"} and {c["stem"] for c in small} == {"conv", "mlp"}
    assert {c["skip"] for c in small} == {True, False}  # the registry reads `true` / `false` as booleans
    ood = [ARCHS.config("net", ARCHS.parse(s)[0][1]) for s in sample_space("ood", 100, 0)]
    assert all(c["norm"] == "none" and c["depth"] >= 6 and c["width"] >= 48 for c in ood)
    assert {c["kernel"] for c in ood} == {3, 5, 7}


def test_every_sampled_spec_builds_and_classifies_a_digits_batch(digits):
    x = digits.inputs[:16]
    assert x.shape == (16, 1, 8, 8)  # what classify feeds
    specs = split_space("small", train=40, held_out=40)[0] + split_space()[1][:40] + sample_space("ood", 10, 0)
    for spec in specs:
        model = digits.build_model(*digits.parse_arch(spec))
        out = model(x)
        assert out.shape == (16, 10) and bool(torch.isfinite(out).all()), spec
        assert model.default_lr == 0.01
        rebuilt = ARCHS.build("net", model.config)  # config rebuilds it
        assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_parameter_count_of_a_known_spec(digits):
    spec = "net(depth=2,width=8,kernel=3,skip=true,norm=bn,pool=max,stem=conv)"
    model = digits.build_model(*digits.parse_arch(spec))
    # stem conv 1*8*3*3 (no bias: BN follows) + BN 2*8; two block convs 8*8*3*3 + BN 2*8 each;
    # head 8*10 + 10
    assert sum(p.numel() for p in model.parameters()) == 72 + 16 + 2 * (576 + 16) + 90 == 1362
    mlp = ARCHS.build("net", dict(depth=1, width=8, skip=False, norm="none", stem="mlp"),
                      fixed={"in_shape": (1, 8, 8), "out_features": 10})  # fmt: skip
    assert sum(p.numel() for p in mlp.parameters()) == (64 * 8 + 8) + (8 * 8 + 8) + (8 * 10 + 10)


def test_options_change_the_net():
    shape, kw = (1, 8, 8), dict(depth=2, width=12)

    def kinds(**options):
        return {type(m) for m in Net(shape, 10, **kw, **options).modules()}

    assert nn.BatchNorm2d in kinds(norm="bn") and nn.GroupNorm in kinds(norm="ln") | kinds(norm="gn")
    assert not kinds(norm="none") & {nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm}
    assert nn.MaxPool2d in kinds(pool="max") and nn.AvgPool2d in kinds(pool="avg")
    assert not kinds(pool="none") & {nn.MaxPool2d, nn.AvgPool2d}
    assert nn.Conv2d not in kinds(stem="mlp") and nn.LayerNorm in kinds(stem="mlp", norm="ln")
    assert Net(shape, 10, **kw, kernel=7).features[0].layer.weight.shape == (12, 1, 7, 7)
    # skip adds the block's input: with the block's weights zeroed the block is the identity
    net = Net(shape, 10, depth=1, width=4, skip=True, norm="none", pool="none")
    block = net.features[1]
    with torch.no_grad():
        block.layer.weight.zero_()
        block.layer.bias.zero_()
    h = torch.randn(2, 4, 8, 8)
    assert torch.equal(block(h), h)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"kernel": 4}, "kernel must be one of"), ({"norm": "batch"}, "norm.*one of"),
     ({"depth": -1}, "depth must be an int"), ({"skip": "maybe"}, "skip"), ({"stem": "vit"}, "stem.*one of")],
)  # fmt: skip
def test_bad_options_fail_with_the_option_named(options, message):
    with pytest.raises((ValueError, SpecError), match=message):
        ARCHS.build("net", options, fixed={"in_shape": (1, 8, 8), "out_features": 10})


def test_unknown_space_names_the_choices():
    with pytest.raises(UnknownNameError, match="small"):
        sample_space("smal", 3, 0)
