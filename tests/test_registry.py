from __future__ import annotations

import pytest
import torch

import initium
from initium._registry import SpecError, UnknownNameError, parse_spec
from initium.methods import Compose, Method
from initium.nn import MLPSliceVAE, Siren


def _untrained_vae(folder) -> str:
    """A weight VAE (untrained) for linear rows of 16, as a zoo of 16-wide MLPs would give: the
    ``vae`` method needs a path, and the property below holds for any VAE."""
    layer = {
        "name": "net.1", "kind": "linear", "shape": [16, 16], "slice_shape": [16], "position": 1, "depth": 0.5,
        "vae": "mlp", "latent": 8, "hidden": 32, "scale": 0.25, "train_slices": 0, "val_slices": 0,
        "train_loss": [], "val_loss": [],
    }  # fmt: skip
    torch.manual_seed(0)
    meta = {"format": initium.vae.FORMAT, "version": 1, "zoo": {}, "training": {}, "layers": [layer]}
    initium.vae.WeightVAE(meta, [MLPSliceVAE((16,))]).save(folder)
    return str(folder)


def _tiny_zoo(folder) -> str:
    """A model zoo of two 64-16-16-10 MLPs (1 epoch on digits): rows of 16, as Siren(hidden=16)'s
    hidden layer; ``zoo-stats`` needs a zoo."""
    from initium.zoo import build

    build(folder, "classifier-mlp(hidden=(16,16))", count=2, epochs=1, device="cpu")
    return str(folder)


def _untrained_ghn(folder) -> str:
    """A graph hypernetwork (untrained, small) for 2-class heads, as Siren(2, 2)'s last layer: the
    ``ghn`` method needs one (the bundled GHN is trained on another branch's schedule)."""
    torch.manual_seed(0)
    return str(
        initium.ghn.save(initium.ghn.GHN(initium.ghn.GHNConfig(num_classes=2, block=16, decoder=(16, 32))), folder)
    )


# what a method needs besides the common options (an artifact to load)
NEEDS = {
    "ghn": lambda tmp: {"path": _untrained_ghn(tmp / "ghn")},
    "vae": lambda tmp: {"path": _untrained_vae(tmp / "vae")},
    "zoo-stats": lambda tmp: {"path": _tiny_zoo(tmp / "zoo")},
}


def test_parse_spec_nested_and_composed():
    parts = parse_spec("noise(steps=300, noise=spectral(alpha=1), target_range=(0, 2))+xavier(gain=2.0)+default")
    assert parts == [
        ("noise", {"steps": 300, "noise": "spectral(alpha=1)", "target_range": (0, 2)}),
        ("xavier", {"gain": 2.0}),
        ("default", {}),
    ]


@pytest.mark.parametrize("spec", ["noise(steps=300", "noise)(", "(steps=1)", "noise(300)", "", "noise(steps=3,x)"])
def test_malformed_specs_raise(spec):
    with pytest.raises(SpecError):
        initium.create(spec)


def test_unknown_method_names_closest():
    with pytest.raises(UnknownNameError, match="closest: noise"):
        initium.create("nosie")


def test_unknown_option_lists_options():
    with pytest.raises(SpecError, match=r"'stpes'.*closest: steps"):
        initium.create("noise(stpes=3)")


def test_duplicate_options_and_wrong_tuple_lengths():
    with pytest.raises(SpecError, match="twice"):
        initium.create("noise(steps=3,steps=4)")
    with pytest.raises(SpecError, match="tuple of 2"):
        initium.create("noise(target_range=(0,1,2))")


def test_option_types_are_checked_and_widened():
    with pytest.raises(SpecError, match=r"option 'steps': 1.5 fits none of int \| None"):  # None: the model's budget
        initium.create("noise(steps=1.5)")
    assert initium.create("noise(lr=1)").config.lr == 1.0  # int widened to float
    assert initium.create("noise(target_range=[0,2])").config.target_range == (0.0, 2.0)


def test_defaults_fill_only_unset_fields():
    assert initium.create("noise", seed=5).config.seed == 5
    assert initium.create("noise(seed=2)", seed=5).config.seed == 2
    composed = initium.create("xavier+noise", seed=7)
    assert [m.config.seed for m in composed.methods] == [7, 7]
    assert initium.create("default", seed=3).name == "default"  # seed is shared: a method without one ignores it
    assert initium.create("rwf+noise", steps=7).methods[1].config.steps == 7  # one part taking it is enough


@pytest.mark.parametrize(
    ("spec", "options", "match"),
    [
        ("noise", {"bogus": 1}, r"method 'noise' has no option 'bogus'"),
        ("noise", {"step": 300}, r"no option 'step'.*closest: steps"),
        ("rwf+noise", {"stpes": 3}, r"no part of 'rwf\+noise' has an option 'stpes'.*closest: steps"),
        ("default", {"steps": 3}, r"method 'default' has no option 'steps'; it takes none"),
    ],
)
def test_keyword_options_no_part_takes_are_rejected(spec, options, match):
    """Keywords are checked as strictly as options inside the spec (which always were)."""
    with pytest.raises(SpecError, match=match):
        initium.create(spec, **options)


def test_fill_goes_where_the_field_exists_and_catches_misspellings():
    assert initium.create("default", fill={"steps": 5, "cache": False}).name == "default"
    assert initium.create("noise", fill={"steps": 5}).config.steps == 5
    assert initium.create("noise(steps=2)", fill={"steps": 5}).config.steps == 2
    with pytest.raises(SpecError, match=r"no method has an option 'stepz'.*closest: steps"):
        initium.create("default", fill={"stepz": 5})
    with pytest.raises(SpecError, match="given both"):
        initium.create("noise", steps=3, fill={"steps": 5})


def test_compose_applies_left_to_right():
    order = []

    class Tag(Method):
        def __init__(self, tag):
            self.name = tag

        def __call__(self, model, inputs=None):
            order.append(self.name)
            return model

    model = torch.nn.Linear(2, 2)
    assert Compose([Tag("a"), Tag("b"), Tag("c")])(model) is model
    assert order == ["a", "b", "c"]


def test_builtin_methods_are_registered():
    assert {"default", "xavier", "kaiming", "noise"} <= set(initium.list_methods())


@pytest.mark.parametrize("name", initium.list_methods())
def test_every_method_is_deterministic_and_in_place(name, tmp_path):
    """Each registered method returns the same module, gives finite outputs and draws its
    randomness from its own seed, not from the global RNG."""
    coords = initium.tasks.grid(8, 8)
    needs = NEEDS[name](tmp_path) if name in NEEDS else {}

    def apply(global_seed):
        torch.manual_seed(0)
        model = Siren(2, 2, hidden=16, layers=2)  # two outputs: fa-noise's random labels need two classes
        before = {k: v.clone() for k, v in model.state_dict().items()}
        torch.manual_seed(global_seed)  # must not matter
        method = initium.create(name, fill={"seed": 1, "steps": 5, "cache": False} | needs)
        assert method(model, coords) is model
        return before, model.state_dict()

    before, after = apply(100)
    _, again = apply(200)
    assert all(torch.equal(after[k], again[k]) for k in after)
    assert all(torch.isfinite(v).all() for v in after.values())
    # a reparametrisation (rwf, wn, aa) changes the parameters even where it keeps the function
    changed = set(before) != set(after) or any(not torch.equal(before[k], after[k]) for k in after)
    assert changed == initium.create(name, **needs).changes_weights
