"""Noise sources for target-noise pretraining, shaped like a model's output.

- ``gaussian``: white ``N(mean, std^2)``; by default the mean and variance of a uniform fill of
  the target range, ``mean = (lo + hi) / 2``, ``std = (hi - lo) / sqrt(12)``.
- ``uniform``: white ``U(lo, hi)`` over the target range.
- ``spectral``: Gaussian noise whose power spectrum falls as ``1 / f^alpha`` over the spatial grid
  (Vyas et al., CVPR 2026, arXiv 2603.29034), rescaled to the same mean and std as ``gaussian``.
  ``alpha = 0`` is white; ``alpha = 2`` has the spectrum of natural images.

Every source draws from an explicit ``torch.Generator`` on the CPU, so a seed gives the same
target on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._registry import Registry

__all__ = ["NOISES", "NoiseSource", "grid_shape", "sample_noise", "spectral_noise"]

Range = tuple[float, float]


class NoiseSource:
    """A registered noise kind; ``needs_grid`` says whether it needs the output's spatial shape."""

    needs_grid = False

    def sample(
        self, shape: tuple[int, ...], target_range: Range, generator: torch.Generator, spatial: tuple[int, ...] | None
    ) -> torch.Tensor:
        raise NotImplementedError


def _moments(target_range: Range) -> tuple[float, float]:
    lo, hi = target_range
    return (lo + hi) / 2, (hi - lo) / math.sqrt(12)


NOISES: Registry[NoiseSource] = Registry("noise")


@dataclass(frozen=True)
class GaussianNoise(NoiseSource):
    """White Gaussian noise; mean/std default to the moments of ``U(target range)``."""

    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.std is not None and not self.std >= 0:
            raise ValueError(f"gaussian noise std must be >= 0, got {self.std}")

    def sample(
        self, shape: tuple[int, ...], target_range: Range, generator: torch.Generator, spatial: tuple[int, ...] | None
    ) -> torch.Tensor:
        mean, std = _moments(target_range)
        mean = mean if self.mean is None else self.mean
        std = std if self.std is None else self.std
        return torch.randn(shape, generator=generator) * std + mean


@dataclass(frozen=True)
class UniformNoise(NoiseSource):
    """White noise, uniform over the target range."""

    def sample(
        self, shape: tuple[int, ...], target_range: Range, generator: torch.Generator, spatial: tuple[int, ...] | None
    ) -> torch.Tensor:
        lo, hi = target_range
        return torch.rand(shape, generator=generator) * (hi - lo) + lo


@dataclass(frozen=True)
class SpectralNoise(NoiseSource):
    """Gaussian noise with power spectrum ``~ 1/f^alpha`` over the output's spatial grid."""

    alpha: float = 2.0
    needs_grid = True

    def sample(
        self, shape: tuple[int, ...], target_range: Range, generator: torch.Generator, spatial: tuple[int, ...] | None
    ) -> torch.Tensor:
        if spatial is None:
            raise ValueError(
                "spectral noise needs the output's spatial grid: pass coordinates on a regular grid"
                " (initium.tasks.grid) or a model whose output is (batch, channels, *spatial)"
            )
        mean, std = _moments(target_range)
        return _arrange(spectral_noise(shape, spatial, self.alpha, generator), shape, spatial) * std + mean


for _name, _cls in (("gaussian", GaussianNoise), ("uniform", UniformNoise), ("spectral", SpectralNoise)):
    NOISES.register(_name)(_cls)  # the dataclass is its own factory: kwargs -> fields


def spectral_noise(
    shape: tuple[int, ...], spatial: tuple[int, ...], alpha: float, generator: torch.Generator
) -> torch.Tensor:
    """Unit-variance, zero-mean noise fields of shape ``(channels, *spatial)`` with power
    ``|F(k)|^2 ~ |k|^-alpha``: white noise's spectrum times ``|k|^(-alpha/2)``, DC removed.

    ``channels`` is ``prod(shape) / prod(spatial)``: one independent field per output channel.
    """
    n_spatial = math.prod(spatial)
    channels = math.prod(shape) // n_spatial
    white = torch.randn((channels, *spatial), generator=generator, dtype=torch.float64)
    dims = tuple(range(1, len(spatial) + 1))
    spec = torch.fft.fftn(white, dim=dims)
    freqs = torch.meshgrid(*[torch.fft.fftfreq(n, dtype=torch.float64) for n in spatial], indexing="ij")
    radius = torch.sqrt(sum(f**2 for f in freqs))
    radius[(0,) * len(spatial)] = 1.0  # avoid 0^-alpha; the DC term is zeroed below
    gain = radius ** (-alpha / 2)
    gain[(0,) * len(spatial)] = 0.0
    field = torch.fft.ifftn(spec * gain, dim=dims).real
    field = field - field.mean(dim=dims, keepdim=True)
    field = field / field.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return field.float()


def _arrange(fields: torch.Tensor, shape: tuple[int, ...], spatial: tuple[int, ...]) -> torch.Tensor:
    """``(C, *spatial)`` fields -> the output layout: ``(N, C)`` for a coordinate net (N the
    flattened grid), ``(B, C', *spatial)`` for an image net."""
    if len(shape) == 2:  # coordinate network: rows follow the grid in 'ij' order
        return fields.reshape(fields.shape[0], -1).T.reshape(shape)
    return fields.reshape(shape)


def grid_shape(coords: torch.Tensor, atol: float = 1e-6) -> tuple[int, ...] | None:
    """The grid ``(n_1, ..., n_d)`` if ``coords`` (N, d) is a full 'ij' meshgrid, else ``None``."""
    if coords.ndim != 2:
        return None
    axes = [torch.unique(coords[:, d]) for d in range(coords.shape[1])]
    shape = tuple(len(a) for a in axes)
    if math.prod(shape) != coords.shape[0]:
        return None
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, coords.shape[1])
    return shape if torch.allclose(mesh.to(coords), coords, atol=atol) else None


def sample_noise(
    source: NoiseSource,
    shape: tuple[int, ...],
    *,
    target_range: Range = (0.0, 1.0),
    generator: torch.Generator,
    spatial: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Draw one noise target of ``shape`` from ``source`` (on the CPU, float32)."""
    lo, hi = target_range
    if not hi > lo:
        raise ValueError(f"target_range must be (low, high) with high > low, got {target_range}")
    if spatial is not None and math.prod(shape) % math.prod(spatial):
        raise ValueError(f"output shape {shape} is not a whole number of spatial grids {spatial}")
    return source.sample(tuple(shape), (float(lo), float(hi)), generator, spatial)
