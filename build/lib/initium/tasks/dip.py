"""Deep-image-prior restoration tasks (Ulyanov, Vedaldi, Lempitsky, CVPR 2018, arXiv 1711.10925).

A :class:`~initium.nn.DIPNet` maps a fixed random latent ``z`` to an image and is fitted to one
degraded image ``x0`` through the degradation operator ``A``:

    theta* = argmin_theta || A(f_theta(z + jitter)) - x0 ||^2,   restoration = f_theta*(z),

with no clean data anywhere. Natural-image structure is fitted before noise, so the PSNR
against the clean image rises to a peak and then falls as the net starts fitting the
degradation: the records keep the whole curve, the peak, its step and the drop after it.

- ``dip-denoise``: ``A`` is the identity, ``x0`` the clean image plus Gaussian noise (clipped to
  [0, 1], as in the DIP code).
- ``dip-sr``: ``A`` downsamples by ``factor`` (antialiased bicubic, close to the paper's Lanczos-2
  kernel); ``x0 = A(clean)``.
- ``dip-inpaint``: ``A`` keeps the known pixels of a mask (random pixels or a central block);
  the loss is the mean squared error over the known pixels only.

As in the DIP code, the prediction evaluated is an exponential moving average of the outputs,
``avg_k = ema * avg_{k-1} + (1 - ema) * f_theta_k(z + jitter_k)`` (``ema = 0`` evaluates the raw
output), and the latent gets fresh Gaussian jitter of std ``reg_noise_std`` at every step.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..memory import MemoryEstimate
from ..metrics import PSNR_CEILING, psnr, psnr_from_mse, ssim
from ..nn import ARCHS
from ..records import MetricSpec
from ._base import TASKS, Task
from .data import check_finite, load_image
from .image_fit import image_memory, square

__all__ = ["DIPSR", "DIPConfig", "DIPDenoise", "DIPDenoiseConfig", "DIPInpaint", "DIPInpaintConfig", "DIPSRConfig"]

LATENT_SCALE = 0.1  # DIP code: z ~ U(0, 1/10), fixed for the whole fit


@dataclass(frozen=True)
class DIPConfig:
    """Shared options. ``image``, ``size``, ``scale``, ``gray``: as for ``image-fit`` (``size`` must
    be divisible by ``2**levels`` of the net: 32 for the paper's). ``latent_channels``: channels of
    ``z``. ``ema``: decay of the moving average of outputs (0: off). ``reg_noise_std``: std of the
    input jitter (0: off). ``data_seed``: seeds ``z`` and the degradation, which every init and
    seed of a sweep share, so that runs differ by their init only."""

    image: str = "astronaut"
    size: int = 256
    scale: Literal["resize", "crop"] = "resize"
    gray: bool = False
    latent_channels: int = 32
    ema: float = 0.99
    reg_noise_std: float = 1 / 30
    data_seed: int = 0


@dataclass(frozen=True)
class DIPDenoiseConfig(DIPConfig):
    """``sigma``: std of the added Gaussian noise on the 0-255 scale (the paper's sigma = 25)."""

    sigma: float = 25.0


@dataclass(frozen=True)
class DIPSRConfig(DIPConfig):
    """``factor``: the super-resolution factor; ``size`` is the high-resolution side and must be
    divisible by it. Jitter 0.03 is the DIP code's value for x4."""

    factor: int = 4
    reg_noise_std: float = 0.03


@dataclass(frozen=True)
class DIPInpaintConfig(DIPConfig):
    """``mask``: ``"random"`` (each pixel unknown with probability ``ratio``), ``"block"`` (a
    central square covering ``ratio`` of the image) or the path of a ``size`` x ``size`` image
    whose bright pixels are the known ones. Jitter 0.03 as in the DIP code."""

    mask: str = "random"
    ratio: float = 0.5
    reg_noise_std: float = 0.03


class _DIPTask(Task):
    """What the three restorations share: data, latent, net, EMA + jitter, metrics, run summary."""

    # BatchNorm running statistics, per-step latent jitter and an output average per model
    batchable: ClassVar[bool] = False
    metric: ClassVar[MetricSpec] = MetricSpec(
        "psnr", unit="dB", checkpoints=(100, 500, 1000, 2000),
        summary_fields=(("peak_psnr", ".2f"), ("peak_step", ".0f")),  # summarize_run()'s fields
        ceiling=PSNR_CEILING,
        caption="PSNR of the restoration (the averaged output) against the clean image, which the net never"
        " sees: it rises to a peak, then falls as the net goes on to fit the degradation.",
    )  # fmt: skip
    default_arch: ClassVar[str] = "dip"
    snapshot_steps: ClassVar[tuple[int, ...]] = (100, 500, 1000)

    config: DIPConfig

    def __init__(self, config: DIPConfig) -> None:
        c = config
        if not isinstance(c.size, int) or isinstance(c.size, bool) or c.size < 7:  # SSIM's 7x7 window
            raise ValueError(f"size must be an int >= 7 (SSIM uses a 7x7 window), got {c.size!r}")
        if not isinstance(c.latent_channels, int) or c.latent_channels < 1:
            raise ValueError(f"latent_channels must be an int >= 1, got {c.latent_channels!r}")
        if not 0 <= c.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0 turns the moving average off), got {c.ema!r}")
        if not (c.reg_noise_std >= 0 and math.isfinite(c.reg_noise_std)):
            raise ValueError(f"reg_noise_std must be a finite number >= 0 (0: no jitter), got {c.reg_noise_std!r}")
        self.config = config
        self.clean: torch.Tensor | None = None  # (1, C, H, W)
        self.degraded: torch.Tensor | None = None  # the degraded input shown at the clean image's size
        self.input_psnr: float = math.nan
        # The moving average belongs to one training run: keyed by the model, so that the runner's
        # next run (a new model) starts a fresh average and a finished model's entry goes with it.
        self._avg: weakref.WeakKeyDictionary[nn.Module, torch.Tensor] = weakref.WeakKeyDictionary()

    # -- data -----------------------------------------------------------------------------------
    def setup(self, device: torch.device) -> None:
        c = self.config
        img = square(load_image(c.image, gray=c.gray), c.size, c.scale)
        check_finite(img, f"image {c.image!r}")
        self.clean = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1)[None].to(device)
        gen = torch.Generator().manual_seed(c.data_seed)
        h, w = self.clean.shape[-2:]
        self.inputs = (torch.rand((1, c.latent_channels, h, w), generator=gen) * LATENT_SCALE).to(device)
        self.target, self.degraded = self.degrade(self.clean, gen)
        self.input_psnr = psnr(self.degraded.clamp(0, 1), self.clean)

    def degrade(self, clean: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target the net is fitted to through the operator, degraded image at full size)``."""
        raise NotImplementedError

    def operator(self, out: torch.Tensor) -> torch.Tensor:
        """The degradation ``A`` applied to the net's output (identity by default)."""
        return out

    # -- model and loss -------------------------------------------------------------------------
    def build_model(self, arch: str, arch_kwargs: dict[str, Any]) -> nn.Module:
        assert self.clean is not None, "call setup() first"
        fixed = {"in_channels": self.config.latent_channels, "out_channels": self.clean.shape[1]}
        return ARCHS.build(arch, arch_kwargs, fixed=fixed)

    def estimate_memory(self, arch: str, arch_kwargs: dict[str, Any]) -> MemoryEstimate:
        """Checks the image size against the net's first (:meth:`check_side`: known before the
        image is loaded), then estimates: the image, the latent, the clean, degraded and target
        images and the outputs' moving average, and one training step of the net at full size
        (:func:`~initium.tasks.image_fit.image_memory`). Three channels unless ``gray``."""
        c = self.config
        channels = 1 if c.gray else 3
        model = ARCHS.build(arch, arch_kwargs, fixed={"in_channels": c.latent_channels, "out_channels": channels})
        self.check_side(model, arch, arch_kwargs)
        n2 = c.size * c.size
        parts = {"latent": n2 * c.latent_channels * 4, "images (clean, degraded, target, average)": 16 * n2 * channels}
        return image_memory(c, channels, parts, model, (1, c.latent_channels, c.size, c.size), arch)

    def check_side(self, model: nn.Module, arch: str, arch_kwargs: dict[str, Any]) -> None:
        """Raise if ``--size`` is not a side the net trains on: a multiple of its
        ``side_multiple`` and at least its ``min_side`` (:class:`~initium.nn.DIPNet`: ``2**levels``
        and ``2**levels x 2``), naming ``--size`` and ``levels``, with the sizes and depths that
        would do. A net without these attributes is left to :meth:`check_model`."""
        n = self.config.size
        multiple, smallest = getattr(model, "side_multiple", None), getattr(model, "min_side", None)
        if not isinstance(multiple, int) or not isinstance(smallest, int) or (n >= smallest and n % multiple == 0):
            return
        levels = getattr(model, "levels", None)
        spec = arch + (f"({','.join(f'{k}={v}' for k, v in arch_kwargs.items())})" if arch_kwargs else "")
        if n < smallest:
            problem = (
                f"--size {n} is too small for --arch {spec!r} with levels={levels}: it takes sides of at least"
                f" 2**levels x 2 = {smallest} (its coarsest level must be at least 2x2 pixels, for its BatchNorm"
                " and reflection padding)"
            )
        else:
            problem = (
                f"--size {n} is not a multiple of 2**levels = {multiple}, which --arch {spec!r} with levels={levels}"
                " needs (each level halves the image)"
            )
        up = max(smallest, -(-n // multiple) * multiple)
        down = n // multiple * multiple
        sizes = f"{down} or {up}" if down >= smallest else f"{up}"
        fix = f"use --size {sizes}"
        if isinstance(levels, int):
            # the deepest net that trains on this size: side a multiple of 2**L and at least 2**L x 2
            fits = [k for k in range(levels - 1, 0, -1) if n % 2**k == 0 and n >= 2 * 2**k]
            if fits:
                fewer = {**arch_kwargs, "levels": fits[0]}
                fix += f", or fewer levels: --arch '{arch}({','.join(f'{k}={v}' for k, v in fewer.items())})'"
        raise ValueError(f"{problem}; {fix}")

    def check_model(self, model: nn.Module, arch: str) -> None:
        assert self.clean is not None, "call setup() first"
        self.check_side(model, *self.parse_arch(arch))
        with torch.no_grad():
            shape = tuple(model(self.inputs).shape)
        if shape != tuple(self.clean.shape):
            raise ValueError(f"--arch {arch!r} outputs shape {shape}, but the image is {tuple(self.clean.shape)}")

    def forward_loss(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DIP step: jitter the latent, fit ``A(f(z + jitter))`` to the degraded image, and
        return the moving average of the outputs as the prediction to evaluate."""
        c = self.config
        z = inputs + c.reg_noise_std * torch.randn_like(inputs) if c.reg_noise_std > 0 else inputs
        out = model(z)
        loss = self.loss(self.operator(out), target)
        new = out.detach()
        prev = self._avg.get(model)
        avg = new if c.ema == 0 or prev is None else prev * c.ema + new * (1 - c.ema)
        self._avg[model] = avg
        return loss, avg

    # -- metrics --------------------------------------------------------------------------------
    def evaluate(self, pred: torch.Tensor) -> dict[str, float]:
        """``psnr`` and ``ssim`` against the clean image (the restoration), and ``fit_psnr``, the
        PSNR of ``A(pred)`` against the degraded input (how far the net has fitted what it sees)."""
        assert self.clean is not None
        img, ref = pred[0].permute(1, 2, 0), self.clean[0].permute(1, 2, 0)
        fit = float(psnr_from_mse(self.loss(self.operator(pred), self.target)))
        return {"psnr": psnr(img, ref), "ssim": ssim(img, ref), "fit_psnr": fit}

    def summarize_run(self, curve: dict[str, list[Any]]) -> dict[str, Any]:
        """``input_psnr`` (the degraded input against the clean image: the bar to beat),
        ``peak_psnr`` and ``peak_step`` (the best evaluated PSNR and its step) and ``psnr_drop``
        (peak minus last: how far the net has gone on to fit the degradation)."""
        points = [(v, s) for s, v in zip(curve.get("step", []), curve.get("psnr", []), strict=False) if v is not None]
        bar = self.input_psnr if math.isfinite(self.input_psnr) else None  # sigma = 0: no noise, no bar
        out: dict[str, Any] = {"input_psnr": bar, "peak_psnr": None, "peak_step": None, "psnr_drop": None}
        if points:
            peak, step = max(points, key=lambda p: (p[0], -p[1]))  # the earliest step among equal peaks
            out.update(peak_psnr=peak, peak_step=step, psnr_drop=peak - points[-1][0])
        return out

    def snapshot(self, pred: torch.Tensor) -> torch.Tensor:
        return (pred[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu()

    def reference(self) -> torch.Tensor:
        """The clean picture, uint8 (H, W, C)."""
        assert self.clean is not None
        return self.snapshot(self.clean)


@TASKS.register("dip-denoise", DIPDenoiseConfig)
class DIPDenoise(_DIPTask):
    """Deep-image-prior denoising of Gaussian noise (sigma on the 0-255 scale)."""

    name = "dip-denoise"

    def __init__(self, config: DIPDenoiseConfig = DIPDenoiseConfig()) -> None:
        if not (config.sigma >= 0 and math.isfinite(config.sigma)):
            raise ValueError(f"sigma must be a finite noise std >= 0 on the 0-255 scale (25), got {config.sigma!r}")
        super().__init__(config)

    def degrade(self, clean: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.config.sigma / 255  # type: ignore[attr-defined]
        noisy = (clean + sigma * torch.randn(clean.shape, generator=gen).to(clean.device)).clamp(0, 1)
        return noisy, noisy


@TASKS.register("dip-sr", DIPSRConfig)
class DIPSR(_DIPTask):
    """Deep-image-prior super-resolution: the output, downsampled, is fitted to the low-res image."""

    name = "dip-sr"

    def __init__(self, config: DIPSRConfig = DIPSRConfig()) -> None:
        f = config.factor
        if not isinstance(f, int) or isinstance(f, bool) or f < 2:
            raise ValueError(f"factor must be an int >= 2, got {f!r}")
        if isinstance(config.size, int) and config.size % f:
            raise ValueError(
                f"factor={f} does not divide size={config.size}; pick a size that is a multiple of {f}"
                f" (e.g. {config.size - config.size % f or f})"
            )
        super().__init__(config)

    def operator(self, out: torch.Tensor) -> torch.Tensor:
        """Antialiased bicubic downsampling by ``factor`` (the low-pass filter matters: plain
        subsampling would alias and let the net fit every ``factor``-th pixel only)."""
        h, w = out.shape[-2:]
        f = self.config.factor  # type: ignore[attr-defined]
        return F.interpolate(out, size=(h // f, w // f), mode="bicubic", antialias=True, align_corners=False)

    def degrade(self, clean: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.operator(clean)
        # The bar to beat: the low-resolution image upsampled by plain bicubic interpolation.
        up = F.interpolate(low, size=clean.shape[-2:], mode="bicubic", align_corners=False)
        return low, up


@TASKS.register("dip-inpaint", DIPInpaintConfig)
class DIPInpaint(_DIPTask):
    """Deep-image-prior inpainting: the loss sees the known pixels only; PSNR is over all pixels.

    ``mask`` (Python API only) overrides the config's: an ``(size, size)`` array or tensor, 1 (or
    True) where the pixel is known.
    """

    name = "dip-inpaint"

    def __init__(
        self, config: DIPInpaintConfig = DIPInpaintConfig(), mask: np.ndarray | torch.Tensor | None = None
    ) -> None:
        if not 0 <= config.ratio < 1:
            raise ValueError(f"ratio (the fraction of unknown pixels) must be in [0, 1), got {config.ratio!r}")
        super().__init__(config)
        self.mask: torch.Tensor | None = None  # (1, 1, H, W), 1 = known
        self._given: torch.Tensor | None = None
        if mask is not None:
            self._given = self._check_mask(torch.as_tensor(np.asarray(mask)), "mask")
        elif config.mask not in ("random", "block"):
            img = torch.from_numpy(load_image(config.mask, gray=True))
            self._given = self._check_mask(img, f"mask {config.mask!r}")

    def _check_mask(self, mask: torch.Tensor, what: str) -> torch.Tensor:
        size = self.config.size
        m = mask.squeeze(-1) if mask.ndim == 3 and mask.shape[-1] == 1 else mask
        if tuple(m.shape) != (size, size):
            raise ValueError(
                f"{what} has shape {tuple(mask.shape)}, but the image is {size}x{size} after cropping/resizing;"
                f" give a ({size}, {size}) mask (1 = known pixel) or use mask=random / mask=block"
            )
        m = m.float()
        if not torch.isfinite(m).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        known = m > 0.5
        if not known.any():
            raise ValueError(f"{what} marks no pixel as known (1 = known); nothing to fit")
        return known.float()[None, None]

    def _make_mask(self, gen: torch.Generator) -> torch.Tensor:
        c = self.config
        size, ratio = c.size, c.ratio  # type: ignore[attr-defined]
        if c.mask == "random":  # type: ignore[attr-defined]
            return (torch.rand((1, 1, size, size), generator=gen) >= ratio).float()
        side = round(size * math.sqrt(ratio))
        top = (size - side) // 2
        mask = torch.ones((1, 1, size, size))
        mask[..., top : top + side, top : top + side] = 0
        return mask

    def degrade(self, clean: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self._given if self._given is not None else self._make_mask(gen)
        self.mask = mask.to(clean.device)
        known = clean * self.mask  # unknown pixels are 0 (black), as the DIP code shows them
        return known, known

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the known pixels: ``sum(m (pred - target)^2) / (C sum(m))``."""
        assert self.mask is not None
        return torch.sum(self.mask * (pred - target) ** 2) / (pred.shape[1] * self.mask.sum())

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self._given is not None:  # two different masks must not count as the same run
            out["mask_sha256"] = hashlib.sha256(self._given.numpy().tobytes()).hexdigest()
        return out
