"""Task ``ct``: sparse-view computed tomography of the Shepp-Logan phantom with a coordinate
network trained through a differentiable Radon transform (the RWF paper's CT experiment)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize
from torch import nn

from ..memory import MemoryEstimate, step_bytes
from ..metrics import PSNR_CEILING, psnr, ssim
from ..nn import ARCHS
from ..records import MetricSpec
from ._base import TASKS, Task, grid

__all__ = ["CT", "CTConfig", "disk_mask", "radon"]


@dataclass(frozen=True)
class CTConfig:
    """``size``: the phantom's side in pixels; ``angles``: projections evenly spread over 180
    degrees (few angles: sparse views)."""

    size: int = 64
    angles: int = 16


def disk_mask(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(size, size)`` float mask of the inscribed disk: the scanned field of view."""
    xy = grid(size, size, device=device).reshape(size, size, 2)
    return (xy.pow(2).sum(-1) <= 1.0).float()


def radon(image: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Differentiable parallel-beam Radon transform of a square ``(H, W)`` image zero outside the
    inscribed disk: for each angle, rotate the image (bilinear ``grid_sample``) and sum its columns.
    Returns ``(len(angles), W)``: ``skimage.transform.radon(image, angles, circle=True).T`` to float
    rounding for odd sizes (for even ones skimage turns about pixel ``n // 2``, this about the
    image centre, half a pixel away)."""
    h, w = image.shape
    theta = -torch.deg2rad(angles_deg.to(image))  # skimage's counter-clockwise angle convention
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    affine = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    sample_at = F.affine_grid(affine, [len(theta), 1, h, w], align_corners=True)
    rotated = F.grid_sample(image.expand(len(theta), 1, h, w), sample_at, align_corners=True, padding_mode="zeros")
    return rotated.sum(dim=2).squeeze(1)


@TASKS.register("ct", CTConfig)
class CT(Task):
    """Reconstruct the Shepp-Logan phantom from ``angles`` parallel projections (sparse-view CT).

    The phantom ``mu(x, y)`` is fitted from its projections: the network's image
    (masked to the field of view) is projected with :func:`radon` and fitted to the measured
    sinogram; the metric is the PSNR of the image against the phantom."""

    name = "ct"
    metric = MetricSpec(
        "psnr", unit="dB", thresholds=(20.0, 25.0), checkpoints=(500, 1000), ceiling=PSNR_CEILING,
        caption="PSNR of the network's image against the phantom (not against the sinogram it is fitted to).",
    )  # fmt: skip
    default_arch = "fourier"
    snapshot_steps = (100, 500)

    def __init__(self, config: CTConfig = CTConfig()) -> None:
        if not isinstance(config.size, int) or config.size < 16:
            raise ValueError(f"size must be an int >= 16, got {config.size!r}")
        if not isinstance(config.angles, int) or config.angles < 1:
            raise ValueError(f"angles must be an int >= 1, got {config.angles!r}")
        self.config = config

    def setup(self, device: torch.device) -> None:
        from skimage.data import shepp_logan_phantom

        n = self.config.size
        phantom = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True, preserve_range=True).astype(np.float32)
        self.mask = disk_mask(n, device)
        self.phantom = torch.from_numpy(phantom).to(device) * self.mask
        self.angles = torch.arange(self.config.angles, device=device) * (180.0 / self.config.angles)
        self.inputs = grid(n, n, device=device)
        # per-pixel units: a ray's sum divided by the side, so the loss scale does not grow with it
        self.target = radon(self.phantom, self.angles) / n

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return ARCHS.build(arch, arch_kwargs, fixed={"in_features": 2, "out_features": 1})

    def estimate_memory(self, arch: str, arch_kwargs: dict[str, Any]) -> MemoryEstimate:
        """The phantom resized (float64 and a float32 copy, in the RAM), the coordinate grid, the
        phantom and mask on the device, one training step of the net at every pixel, and the
        Radon transform's ``angles`` rotated copies of the image with their sampling grids (3
        floats a pixel each, twice for the backward pass)."""
        n, angles = self.config.size, self.config.angles
        model = ARCHS.build(arch, arch_kwargs, fixed={"in_features": 2, "out_features": 1})
        parts = {
            "phantom (resizing)": n * n * 12, "coordinate grid": n * n * 2 * 4, "phantom and mask": n * n * 2 * 4,
            "projections (radon)": 2 * angles * n * n * 3 * 4,
        }  # fmt: skip
        if (step := step_bytes(model, (n * n, 2))) is not None:
            parts[f"one training step of {arch}"] = step
        return MemoryEstimate("--size", n, parts, host=frozenset({"phantom (resizing)"}))

    def image(self, pred: torch.Tensor) -> torch.Tensor:
        n = self.config.size
        return pred.reshape(n, n) * self.mask

    def check_model(self, model: nn.Module, arch: str) -> None:
        """One value per pixel: the target is the sinogram, not the image, so its shape says nothing."""
        with torch.no_grad():
            shape = tuple(model(self.inputs).shape)
        if shape != (len(self.inputs), 1):
            raise ValueError(f"--arch {arch!r} outputs shape {shape}, but the task needs {(len(self.inputs), 1)}")

    def forward_loss(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = model(inputs)
        sino = radon(self.image(pred), self.angles) / self.config.size
        return torch.mean((sino - target) ** 2), pred

    def evaluate(self, pred: torch.Tensor) -> dict[str, float]:
        img = self.image(pred)
        return {"psnr": psnr(img, self.phantom), "ssim": ssim(img[..., None], self.phantom[..., None])}

    def snapshot(self, pred: torch.Tensor) -> torch.Tensor:
        return (self.image(pred).clamp(0, 1) * 255).round().to(torch.uint8)[..., None].cpu()

    def reference(self) -> torch.Tensor:
        return self.snapshot(self.phantom.reshape(-1, 1))
