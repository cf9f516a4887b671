"""Task ``image-fit``: regress an image from its pixel coordinates (an implicit neural
representation), full-batch Adam, PSNR/SSIM/frequency-band errors at checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from skimage.transform import resize
from torch import nn

from ..memory import MemoryEstimate, step_bytes
from ..metrics import BANDS, PSNR_CEILING, band_errors, psnr_from_mse, ssim
from ..nn import ARCHS
from ..records import MetricSpec, PlotSpec
from ._base import TASKS, Task, grid
from .data import check_finite, load_image

__all__ = ["ImageFit", "ImageFitConfig", "image_memory", "square"]


@dataclass(frozen=True)
class ImageFitConfig:
    """``image``: a bundled scikit-image sample or a file. ``size``: side in pixels after a
    centre square crop; ``scale="resize"`` resamples the square to ``size``, ``"crop"`` takes the
    central ``size`` x ``size`` pixels at full resolution."""

    image: str = "camera"
    size: int = 256
    scale: Literal["resize", "crop"] = "resize"
    gray: bool = False


def square(img: np.ndarray, size: int, scale: str) -> np.ndarray:
    """Centre-crop to a square, then resize (anti-aliased) or crop to ``size``."""
    h, w = img.shape[:2]
    side = size if scale == "crop" else min(h, w)
    if side > min(h, w):
        raise ValueError(f"size={size} is larger than the image ({h}x{w}); use a smaller --size or scale=resize")
    top, left = (h - side) // 2, (w - side) // 2
    img = img[top : top + side, left : left + side]
    if side != size:
        img = resize(img, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)
    return img


def image_memory(
    config: Any, channels: int, parts: dict[str, int], model: nn.Module, shape: tuple[int, ...], arch: str
) -> MemoryEstimate:
    """A :class:`~initium.memory.MemoryEstimate` for a task that trains on one ``config.size``
    square image (``image-fit``, the DIP tasks): the image as :func:`square` makes it, in the RAM
    (resizing: scikit-image's float64 result and its float32 copy, 12 bytes a value; cropping: one
    float32 copy), the task's own ``parts`` on the device, and one training step of ``model`` at
    an input of ``shape`` (:func:`initium.memory.step_bytes`)."""
    n = config.size
    image = "image (resizing)" if config.scale == "resize" else "image (cropping)"
    out = {image: n * n * channels * (12 if config.scale == "resize" else 4), **parts}
    if (step := step_bytes(model, shape)) is not None:
        out[f"one training step of {arch}"] = step
    return MemoryEstimate("--size", n, out, host=frozenset({image}))


_BANDS_TEXT = ", ".join(
    f"{name} [{lo:.3g}, {hi:.3g})" if hi != float("inf") else f"{name} from {lo:.3g} on (the corners included)"
    for name, (lo, hi) in BANDS.items()
)


@TASKS.register("image-fit", ImageFitConfig)
class ImageFit(Task):
    """Fit an image with a coordinate network: ``f(x, y) -> RGB``, coordinates in [-1, 1]."""

    name = "image-fit"
    metric = MetricSpec(
        "psnr", unit="dB", thresholds=(25.0, 30.0), checkpoints=(100, 300, 1000),
        cap=55.0,  # plots: past ~55 dB a small net has memorised the pixels to float precision
        ceiling=PSNR_CEILING,
        caption="PSNR of the fitted picture at every training pixel, 10 log10(1 / MSE) for values in [0, 1];"
        " past 60 dB the fit is finer than the picture's own 8-bit levels.",
        plots=(  # where the high frequencies arrive: evaluate()'s band_low, band_mid, band_high
            PlotSpec("curves", "band_", name="bands", title="{} frequencies", ylabel="relative error in band",
                     log=True, panels=tuple(BANDS),
                     caption="Where the fit's error lies in frequency: the relative error of its 2-D Fourier"
                     " transform in three rings of spatial frequency, ||F(fit) - F(target)|| / ||F(target)|| over"
                     " the ring, against the step (log axis, lower is better). Rings in cycles per pixel (0.5 is"
                     f" the finest a pixel grid holds): {_BANDS_TEXT}. Networks learn low frequencies first; an"
                     " init that brings the high ones early shows the high ring's error falling early."),
        ),
    )  # fmt: skip
    snapshot_steps = (25, 100, 300)

    def __init__(self, config: ImageFitConfig = ImageFitConfig()) -> None:
        if not isinstance(config.size, int) or config.size < 7:  # SSIM's 7x7 window
            raise ValueError(f"size must be an int >= 7 (SSIM uses a 7x7 window), got {config.size!r}")
        self.config = config
        self.image: torch.Tensor | None = None

    def setup(self, device: torch.device) -> None:
        img = square(load_image(self.config.image, gray=self.config.gray), self.config.size, self.config.scale)
        check_finite(img, f"image {self.config.image!r}")
        self.image = torch.from_numpy(np.ascontiguousarray(img)).float().to(device)
        h, w, c = self.image.shape
        self.inputs = grid(h, w, device=device)
        self.target = self.image.reshape(h * w, c)

    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        return ARCHS.build(arch, arch_kwargs, fixed={"in_features": 2, "out_features": self.target.shape[1]})

    def estimate_memory(self, arch: str, arch_kwargs: dict[str, Any]) -> MemoryEstimate:
        """The image, the coordinate grid (2 floats a pixel), the target and one full-batch
        training step at every pixel (:func:`image_memory`). Three channels unless ``gray``: the
        image's own are not known before it is loaded."""
        n, c = self.config.size, 1 if self.config.gray else 3
        model = ARCHS.build(arch, arch_kwargs, fixed={"in_features": 2, "out_features": c})
        parts = {"coordinate grid": n * n * 2 * 4, "target": n * n * c * 4}
        return image_memory(self.config, c, parts, model, (n * n, 2), arch)

    def step_metric(self, loss_history: torch.Tensor) -> torch.Tensor | None:
        return psnr_from_mse(loss_history)  # the loss is the MSE over every pixel: PSNR exactly

    def _as_image(self, pred: torch.Tensor) -> torch.Tensor:
        assert self.image is not None
        return pred.reshape(self.image.shape)

    def evaluate(self, pred: torch.Tensor) -> dict[str, float]:
        assert self.image is not None
        img = self._as_image(pred)
        out = {"psnr": float(psnr_from_mse(torch.mean((img - self.image) ** 2))), "ssim": ssim(img, self.image)}
        out.update({f"band_{k}": v for k, v in band_errors(img, self.image).items()})
        return out

    def snapshot(self, pred: torch.Tensor) -> torch.Tensor:
        return (self._as_image(pred).clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def reference(self) -> torch.Tensor:
        """The target picture, uint8 (H, W, C)."""
        assert self.image is not None
        return self.snapshot(self.target)
