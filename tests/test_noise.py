from __future__ import annotations

import numpy as np
import pytest
import torch

from initium._registry import UnknownNameError
from initium.noise import NOISES, grid_shape, sample_noise, spectral_noise
from initium.tasks import grid


def _radial_slope(field: np.ndarray) -> float:
    """Least-squares slope of log power vs log radial frequency (DC excluded)."""
    h, w = field.shape
    power = np.abs(np.fft.fft2(field)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    r = np.sqrt(fy**2 + fx**2)
    edges = np.linspace(1 / h, 0.5, 25)
    idx = np.digitize(r, edges)
    f = np.array([r[idx == i].mean() for i in range(1, len(edges))])
    p = np.array([power[idx == i].mean() for i in range(1, len(edges))])
    return float(np.polyfit(np.log(f), np.log(p), 1)[0])


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0, 3.0])
def test_spectral_noise_slope(alpha):
    gen = torch.Generator().manual_seed(0)
    field = spectral_noise((1, 128 * 128), (128, 128), alpha, gen)[0].numpy()
    assert abs(_radial_slope(field) - (-alpha)) < 0.2


def test_spectral_noise_on_coordinate_grid_keeps_the_spectrum():
    """For a coordinate net, rows follow the grid: reshaping back gives a 1/f^alpha image."""
    coords = grid(96, 96)
    shape = grid_shape(coords)
    noise = sample_noise(
        NOISES.build("spectral", {"alpha": 2.0}),
        (96 * 96, 2),
        generator=torch.Generator().manual_seed(1),
        spatial=shape,
    )
    for c in range(2):
        assert abs(_radial_slope(noise[:, c].reshape(96, 96).numpy()) + 2.0) < 0.2


def test_spectral_rows_follow_the_grid_on_a_non_square_grid():
    """Row i of a coordinate net's noise target is pixel i of the 'ij' grid: the (N, C) target is
    exactly the (C, H, W) fields, transposed to pixels-by-channels, not a transposed image."""
    coords = grid(12, 20)
    source = NOISES.build("spectral", {"alpha": 1.5})
    noise = sample_noise(source, (240, 2), generator=torch.Generator().manual_seed(5), spatial=grid_shape(coords))
    fields = spectral_noise((240, 2), (12, 20), 1.5, torch.Generator().manual_seed(5))
    expected = fields * (1 / np.sqrt(12)) + 0.5
    for c in range(2):
        torch.testing.assert_close(noise[:, c].reshape(12, 20), expected[c])


@pytest.mark.parametrize("kind", ["gaussian", "spectral"])
def test_noise_moments_match_target_range(kind):
    gen = torch.Generator().manual_seed(0)
    x = sample_noise(NOISES.build(kind), (128 * 128, 1), target_range=(0.0, 1.0), generator=gen, spatial=(128, 128))
    assert x.mean().item() == pytest.approx(0.5, abs=0.01)
    assert x.std().item() == pytest.approx(1 / np.sqrt(12), rel=0.02)


def test_uniform_noise_fills_range():
    x = sample_noise(
        NOISES.build("uniform"), (10000, 1), target_range=(-1.0, 3.0), generator=torch.Generator().manual_seed(0)
    )
    assert x.min() >= -1 and x.max() <= 3
    assert x.mean().item() == pytest.approx(1.0, abs=0.05)


def test_noise_is_seeded():
    src = NOISES.build("gaussian")
    draw = lambda s: sample_noise(src, (50, 3), generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_grid_shape_detects_grids_only():
    assert grid_shape(grid(5, 7)) == (5, 7)
    shuffled = grid(5, 7)[torch.randperm(35, generator=torch.Generator().manual_seed(0))]
    assert grid_shape(shuffled) is None
    assert grid_shape(torch.rand(35, 2)) is None


def test_bad_noise_arguments():
    with pytest.raises(UnknownNameError, match="gaussian"):
        NOISES.build("gausian")
    with pytest.raises(ValueError, match="spatial grid"):
        sample_noise(NOISES.build("spectral"), (10, 1), generator=torch.Generator())
    with pytest.raises(ValueError, match="std"):
        NOISES.build("gaussian", {"std": -1.0})
    with pytest.raises(ValueError, match="target_range"):
        sample_noise(NOISES.build("uniform"), (10, 1), target_range=(1.0, 0.0), generator=torch.Generator())
