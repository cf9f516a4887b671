"""Corrupted test sets in the style of CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural
Network Robustness to Common Corruptions and Perturbations", ICLR 2019), for small images
``(N, C, H, W)`` and 1-D signals ``(N, C, L)`` (MNIST-1D).

Each corruption has five severities (1 mildest, 5 strongest; 0 is the clean input), deterministic
in a seed, and every severity of one corruption uses the same random draws, so a stronger severity
is a larger distortion of the same kind, never a different one. Levels are in units of the data's
range ``hi - lo`` (the training inputs' min and max) and of the signal's size, so the same table
serves 8x8 digits, 40-sample signals and a user's images:

- ``gaussian_noise``: ``x + s * (hi - lo) * e``, ``e ~ N(0, 1)``, ``s`` = 0.08 ... 0.38;
- ``shot_noise``: Poisson noise of photon counts, ``lo + (hi - lo) * Poisson(lam * u) / lam``
  with ``u = (x - lo) / (hi - lo)`` clipped to ``[0, 1]``, ``lam`` = 60 ... 3 (CIFAR-10-C's);
- ``gaussian_blur``: a Gaussian filter of std ``f * size`` along each spatial axis (``f`` = 0.05
  ... 0.18; zero padding outside);
- ``contrast``: ``m + c (x - m)`` with ``m`` the sample's mean, ``c`` = 0.4 ... 0.05 (CIFAR-10-C's);
- ``translate``: every sample shifted by ``f * size`` (``f`` = 0.03 ... 0.15) along one axis (random
  per sample for images), random sign, bilinear, zeros shifted in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "corrupted_sets"]

SEVERITIES = 5
_LEVELS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60.0, 25.0, 12.0, 5.0, 3.0),
    "gaussian_blur": (0.05, 0.08, 0.11, 0.14, 0.18),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "translate": (0.03, 0.06, 0.09, 0.12, 0.15),
}
CORRUPTIONS: tuple[str, ...] = tuple(_LEVELS)


def _blur(x: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """Separable Gaussian filter of std ``sigmas[d]`` (in samples) along each spatial axis ``d``."""
    out = x
    spatial = x.ndim - 2
    for d, sigma in enumerate(sigmas):
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        kernel = torch.exp(-(t**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        channels = out.shape[1]
        shape = [1] * spatial
        shape[d] = len(t)
        weight = kernel.reshape(1, 1, *shape).repeat(channels, 1, *[1] * spatial)
        pad = [0] * spatial
        pad[d] = radius
        conv = F.conv2d if spatial == 2 else F.conv1d
        out = conv(out, weight, padding=tuple(pad), groups=channels)
    return out


def _translate(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    img = x if x.ndim == 4 else x[:, :, None]
    # the draws come first and are the same at every severity: only the distance grows
    axis = torch.randint(0, 2, (n,), generator=gen) if x.ndim == 4 else torch.zeros(n, dtype=torch.long)
    sign = torch.randint(0, 2, (n,), generator=gen).to(x.dtype) * 2 - 1
    theta = torch.eye(2, 3, dtype=x.dtype).repeat(n, 1, 1)
    theta[torch.arange(n), axis, 2] = sign * 2 * fraction  # normalised coordinates span 2
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out if x.ndim == 4 else out[:, :, 0]


def corrupt(
    x: torch.Tensor, name: str, severity: int, *, seed: int = 0, lo: float | None = None, hi: float | None = None
) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` or ``(N, C, L)`` (float, raw input units) under corruption ``name``
    (:data:`CORRUPTIONS`) at ``severity`` 0-5 (0: ``x`` unchanged), deterministic in ``seed``.
    ``lo``/``hi``: the data's range (default: ``x``'s min and max); see the module doc for each
    formula. The result is on the CPU, float32."""
    if name not in _LEVELS:
        raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    if not isinstance(severity, int) or isinstance(severity, bool) or not 0 <= severity <= SEVERITIES:
        raise ValueError(f"corruption severity must be an int from 0 to {SEVERITIES}, got {severity!r}")
    if x.ndim not in (3, 4):
        raise ValueError(f"corrupt takes (N, C, H, W) images or (N, C, L) signals, got shape {tuple(x.shape)}")
    x = x.detach().cpu().float()
    if severity == 0:
        return x.clone()
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    span = max(hi - lo, 1e-12)
    level = _LEVELS[name][severity - 1]
    gen = torch.Generator().manual_seed(seed)
    if name == "gaussian_noise":
        return x + level * span * torch.randn(x.shape, generator=gen)
    if name == "shot_noise":
        u = ((x - lo) / span).clamp(0, 1)
        return lo + span * torch.poisson(u * level, generator=gen) / level
    if name == "gaussian_blur":
        return _blur(x, tuple(level * s for s in x.shape[2:]))
    if name == "contrast":
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        return mean + level * (x - mean)
    return _translate(x, level, gen)


def corrupted_sets(
    x: torch.Tensor, *, seed: int = 0, lo: float | None = None, hi: float | None = None
) -> dict[str, dict[int, torch.Tensor]]:
    """Every corruption at every severity 1-5: ``{name: {severity: corrupted x}}``."""
    return {
        name: {s: corrupt(x, name, s, seed=seed, lo=lo, hi=hi) for s in range(1, SEVERITIES + 1)}
        for name in CORRUPTIONS
    }
