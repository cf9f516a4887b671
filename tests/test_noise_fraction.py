"""``noise(fraction=...)``: pretraining on a share of the inputs (a coarser grid, a subset, a crop)."""

from __future__ import annotations

import math

import pytest
import torch

import initium
from initium.cache import InitCache
from initium.methods.noise import NoiseConfig, NoisePretrain, default_budget, pretrain_inputs
from initium.metrics import psnr_from_mse
from initium.nn import DIPNet, Siren
from initium.runner import steps_to
from initium.tasks import grid
from initium.tasks.image_fit import ImageFit, ImageFitConfig
from initium.train import fit


@pytest.mark.parametrize(
    ("sizes", "fraction", "expected"),
    [((96, 96), 1 / 4, (48, 48)), ((96, 96), 1 / 9, (32, 32)), ((96, 96), 1 / 16, (24, 24)),
     ((40, 60), 1 / 4, (20, 30)), ((12, 12, 12), 1 / 8, (6, 6, 6)), ((30,), 0.5, (15,))],
)  # fmt: skip
def test_a_grid_fraction_is_the_regular_grid_of_the_same_extent(sizes, fraction, expected):
    """Per axis ``round(n * fraction**(1/d))`` evenly spaced points from the first coordinate to the
    last: exactly ``grid(*expected)``, in the same 'ij' row order."""
    coords = grid(*sizes)
    sub = pretrain_inputs(Siren(len(sizes), 1, hidden=8), coords, fraction)
    assert torch.allclose(sub, grid(*expected), atol=1e-6)
    assert torch.equal(sub.min(0).values, coords.min(0).values) and torch.equal(sub.max(0).values, coords.max(0).values)


def test_a_grid_fraction_is_a_strided_subset_where_the_stride_divides():
    """97 x 97 -> 49 x 49 keeps every other point: the sub-grid is made of the inputs' own points."""
    coords = grid(97, 97)
    sub = pretrain_inputs(Siren(2, 1, hidden=8), coords, (49 / 97) ** 2)
    assert torch.allclose(sub, coords.reshape(97, 97, 2)[::2, ::2].reshape(-1, 2), atol=1e-6)
    assert pretrain_inputs(Siren(2, 1, hidden=8), coords, 1.0) is coords


def test_scattered_coordinates_give_a_seeded_random_subset():
    points = torch.rand(500, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = Siren(2, 1, hidden=8)
    sub = pretrain_inputs(model, points, 0.3, seed=4)
    assert sub.shape == (150, 2)
    rows = [int(torch.nonzero((points == row).all(1))[0]) for row in sub]
    assert len(set(rows)) == 150 and rows == sorted(rows)  # distinct input rows, in their order
    assert torch.equal(sub, pretrain_inputs(model, points, 0.3, seed=4))  # reproducible
    assert not torch.equal(sub, pretrain_inputs(model, points, 0.3, seed=5))  # and seeded


def test_a_latent_fraction_is_a_seeded_crop_of_that_share_of_the_area():
    net = DIPNet(4, 3, channels=8, levels=3)  # sides: multiples of 8, at least 16
    z = torch.rand(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    crop = pretrain_inputs(net, z, 1 / 4, seed=1)
    assert crop.shape == (1, 4, 32, 32)
    windows = z.unfold(2, 32, 1).unfold(3, 32, 1)  # every 32 x 32 window of z
    found = [(i, j) for i in range(33) for j in range(33) if torch.equal(windows[0, :, i, j], crop[0])]
    assert len(found) == 1
    assert torch.equal(crop, pretrain_inputs(net, z, 1 / 4, seed=1))
    others = {tuple(pretrain_inputs(net, z, 1 / 4, seed=s)[0, 0, 0, :3].tolist()) for s in range(6)}
    assert len(others) > 1  # the seed moves the crop
    assert pretrain_inputs(net, z, 1 / 9).shape == (1, 4, 24, 24)  # 64/3 = 21.3 -> nearest multiple of 8


class _Counting(torch.nn.Module):
    """A model that records how many input rows every forward call saw."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.model(x)


def test_pretraining_on_a_fraction_runs_on_the_sub_grid_only():
    """The whole grid (1024 points) is run once, by the probe that checks the model takes it;
    every pretraining step runs on the 16 x 16 sub-grid (256 points): 4x fewer forward points."""
    counted = {}
    for fraction in (1.0, 0.25):
        torch.manual_seed(0)
        model = _Counting(Siren(2, 1, hidden=16))
        initium.noise_pretrain(model, grid(32, 32), steps=20, fraction=fraction, cache=False)
        counted[fraction] = model.rows
    assert set(counted[1.0]) == {1024} and len(counted[1.0]) >= 21
    assert counted[0.25].count(1024) == 1 and set(counted[0.25]) == {1024, 256}
    assert len(counted[0.25]) == len(counted[1.0]) + 1  # the same steps, plus the sub-grid's probe
    assert sum(counted[0.25]) < 0.3 * sum(counted[1.0])


def test_the_cache_key_holds_the_inputs_pretraining_used(tmp_path):
    store = InitCache(tmp_path)
    torch.manual_seed(0)
    initial = Siren(2, 1, hidden=16).state_dict()

    def pretrain(coords, **kw):
        model = Siren(2, 1, hidden=16)
        model.load_state_dict(initial)
        method = NoisePretrain(NoiseConfig(steps=5, **kw), store=store)
        method(model, coords)
        return method.info["cache"], model

    assert pretrain(grid(32, 32), fraction=0.25)[0] == "miss"
    assert pretrain(grid(32, 32), fraction=0.25)[0] == "hit"
    assert pretrain(grid(32, 32), fraction=1.0)[0] == "miss"  # the whole grid is another init
    # SIREN's default budget is a quarter of the grid: the key holds the resolved fraction, not None
    assert default_budget(Siren(2, 1)).fraction == 0.25
    assert pretrain(grid(32, 32))[0] == "hit"
    (entry,) = [e for e in store.entries() if e.meta["config"]["fraction"] == 0.25]
    model = Siren(2, 1, hidden=16)
    model.load_state_dict(initial)
    record = dict(entry.meta["config"])
    assert entry.key == InitCache.key(model, grid(16, 16), record)  # keyed by the 16 x 16 grid it ran on


def test_composes_with_rwf():
    method = initium.create("rwf+noise(fraction=0.25,steps=3)", cache=False)
    assert method.methods[1].config.fraction == 0.25
    model = Siren(2, 1, hidden=8)
    before = [p.clone() for p in model.parameters()]
    method(model, grid(8, 8))
    assert any("parametrizations" in name for name, _ in model.named_parameters())  # rwf applied
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))


@pytest.mark.parametrize("fraction", [0, 0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_fractions_outside_zero_one_are_refused_naming_the_argument(fraction):
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
        initium.noise_pretrain(Siren(2, 1, hidden=8), grid(4, 4), steps=1, fraction=fraction)
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
        initium.create("noise", fraction=fraction)
    if math.isfinite(fraction):  # a spec string as the CLI passes it
        with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
            initium.create(f"rwf+noise(fraction={fraction})")


def test_fractions_that_leave_too_little_are_refused_before_any_work():
    model = Siren(2, 1, hidden=8)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"fraction=0.1 leaves a 1x1 grid .* at least 2 points per axis.*>= 0.25"):
        initium.noise_pretrain(model, grid(4, 4), steps=3, fraction=0.1, cache=False)
    with pytest.raises(ValueError, match="at least 2 points per axis"):
        initium.create("noise(fraction=0.1)").validate(model, grid(4, 4))
    net = DIPNet(4, 3, channels=8, levels=3)
    with pytest.raises(ValueError, match=r"crops the 64x64 latent to 8x8, smaller than the smallest input DIPNet"):
        initium.noise_pretrain(net, torch.rand(1, 4, 64, 64), steps=3, fraction=1 / 64, cache=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.slow
def test_a_quarter_of_the_grid_still_speeds_up_siren_on_a_real_image():
    """camera, centre square resized to 64 px (as ``image-fit`` and the budget study make it),
    SIREN 3x256, Adam 1e-4, seed 0; ``noise(fraction=0.25, steps=250)``: the noise fitted on the
    32 x 32 grid only. Measured when written: 35 dB at step 69 against 160 from the default init
    (30 dB: 36 against 59). Not on every image: on the full-resolution 64 px crop of camera
    (``camera64``), far more detailed, a quarter of the grid gained nothing (35 dB at step 67
    against 59, 40 dB at 131 against 119), while the whole grid does (test_noise_pretrain)."""
    task = ImageFit(ImageFitConfig(image="camera", size=64, scale="resize"))
    task.setup(torch.device("cpu"))
    curves = {}
    for fraction in (None, 0.25):
        torch.manual_seed(0)
        model = Siren(2, 1)
        if fraction is not None:
            initium.noise_pretrain(model, task.inputs, steps=250, fraction=fraction, seed=0, cache=False)
        curves[fraction] = psnr_from_mse(fit(model, task.inputs, task.target, steps=200, lr=1e-4)).tolist()
    plain, quarter = steps_to(curves[None], 35.0), steps_to(curves[0.25], 35.0)
    assert plain is not None and quarter is not None
    assert quarter <= 0.6 * plain
