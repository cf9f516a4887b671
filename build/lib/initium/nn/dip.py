"""The deep-image-prior skip network (Ulyanov, Vedaldi, Lempitsky, CVPR 2018, arXiv 1711.10925).

An encoder-decoder that maps a fixed random latent ``z`` (``in_channels`` channels, the image's
size) to an image. Fitted to a single degraded image, its structure alone is the prior: it fits
natural-image content long before it fits noise, so stopping early restores the image.
"""

from __future__ import annotations

import torch
from torch import nn

from .siren import check_sizes

__all__ = ["DIPNet"]


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    # Reflection padding as in the DIP code: zero padding leaves dark borders in the restoration.
    # The weights keep PyTorch's default init, which is what the DIP authors used.
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, padding_mode="reflect")


def _block(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Conv -> BatchNorm -> LeakyReLU(0.2), the unit every branch of the skip net is made of."""
    return [_conv(c_in, c_out, kernel, stride), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]


class _Level(nn.Module):
    """One scale: ``merge(BN(cat(skip(x), up(inner(down(x))))))``; ``inner`` is the next, coarser level."""

    def __init__(self, c_in: int, channels: int, skip: int, inner: nn.Module | None, inner_out: int) -> None:
        super().__init__()
        self.skip = nn.Sequential(*_block(c_in, skip, 1)) if skip else None
        # Downsampling by a strided 3x3 conv (the paper's "stride" mode), then a 3x3 conv.
        self.down = nn.Sequential(*_block(c_in, channels, 3, stride=2), *_block(channels, channels, 3))
        self.inner = inner
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        merged = skip + (inner_out if inner is not None else channels)
        self.bn = nn.BatchNorm2d(merged)
        self.merge = nn.Sequential(*_block(merged, channels, 3), *_block(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.down(x)
        if self.inner is not None:
            deep = self.inner(deep)
        deep = self.up(deep)
        y = deep if self.skip is None else torch.cat([self.skip(x), deep], dim=1)
        return self.merge(self.bn(y))


class DIPNet(nn.Module):
    """The DIP "skip" encoder-decoder: ``levels`` scales of ``channels`` feature maps, each with a
    ``skip_channels``-wide 1x1 skip connection; strided-conv downsampling, bilinear upsampling,
    BatchNorm, LeakyReLU(0.2), reflection padding, a 1x1 head and a sigmoid (outputs in (0, 1)).

    The defaults are the paper's denoising / super-resolution net (Ulyanov et al. 2018,
    supplementary: 5 levels of 128 channels, skips of 4, a 32-channel latent). ``dip(channels=16,
    levels=3)`` is a small net for CPU tests. The input is ``(B, in_channels, H, W)`` with ``H`` and
    ``W`` divisible by ``2**levels`` (:attr:`side_multiple`) and at least ``2**levels x 2``
    (:attr:`min_side`: 64 for the paper's 5 levels); the output is ``(B, out_channels, H, W)``.
    """

    default_lr = 0.01  # Ulyanov et al. 2018: Adam, lr 0.01, for every restoration task

    def __init__(
        self,
        in_channels: int = 32,
        out_channels: int = 3,
        channels: int = 128,
        levels: int = 5,
        skip_channels: int = 4,
    ) -> None:
        super().__init__()
        check_sizes(in_channels=in_channels, out_channels=out_channels, channels=channels, levels=levels)
        if not isinstance(skip_channels, int) or isinstance(skip_channels, bool) or skip_channels < 0:
            raise ValueError(f"skip_channels must be an int >= 0 (0: no skip connections), got {skip_channels!r}")
        self.in_channels, self.out_channels, self.levels = in_channels, out_channels, levels
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, channels=channels, levels=levels,
            skip_channels=skip_channels,
        )  # fmt: skip
        inner: nn.Module | None = None
        for depth in reversed(range(levels)):  # build from the coarsest scale outwards
            inner = _Level(in_channels if depth == 0 else channels, channels, skip_channels, inner, channels)
        assert inner is not None
        self.body = inner
        self.head = nn.Sequential(_conv(channels, out_channels, 1), nn.Sigmoid())

    @property
    def side_multiple(self) -> int:
        """What the input's height and width must be multiples of: each level halves them."""
        return 2**self.levels

    @property
    def min_side(self) -> int:
        """The smallest height and width it takes, ``2**levels x 2``: the coarsest level sees the
        input ``2**levels`` times smaller and needs at least 2 x 2 pixels there (its 3x3 convs pad
        by reflection, which needs a pixel beside the border one, and in training its BatchNorm,
        with one latent in the batch, needs more than one value per channel)."""
        return 2 * 2**self.levels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"DIPNet(in_channels={self.in_channels}) takes a latent of shape (B, {self.in_channels}, H, W),"
                f" got {tuple(z.shape)}"
            )
        f = 2**self.levels
        if z.shape[2] % f or z.shape[3] % f:
            raise ValueError(
                f"DIPNet with {self.levels} levels needs H and W divisible by 2**{self.levels} = {f},"
                f" got {tuple(z.shape[2:])}; use another image size or fewer levels"
            )
        if min(z.shape[2:]) < self.min_side:
            raise ValueError(
                f"DIPNet with {self.levels} levels takes H and W of at least 2**{self.levels} x 2 ="
                f" {self.min_side} (its coarsest level must be at least 2x2), got {tuple(z.shape[2:])};"
                " use a larger image or fewer levels"
            )
        return self.head(self.body(z))
