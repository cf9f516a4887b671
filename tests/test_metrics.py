from __future__ import annotations

import math

import pytest
import torch

from initium.metrics import band_errors, psnr, psnr_from_mse, ssim


def test_psnr_of_a_known_error():
    target = torch.rand(16, 16, 1, generator=torch.Generator().manual_seed(0))
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-4)
    assert float(psnr_from_mse(torch.tensor(1e-3))) == pytest.approx(30.0)


def test_ssim_orders_degradations():
    img = torch.rand(32, 32, 1, generator=torch.Generator().manual_seed(0))
    noisy = img + 0.05 * torch.randn(32, 32, 1, generator=torch.Generator().manual_seed(1))
    noisier = img + 0.2 * torch.randn(32, 32, 1, generator=torch.Generator().manual_seed(1))
    assert ssim(img, img) == pytest.approx(1.0)
    assert 1.0 > ssim(noisy, img) > ssim(noisier, img)


def test_band_errors_separate_frequencies():
    """A low-pass copy of an image is right in the low band and wrong in the high band."""
    img = torch.rand(64, 64, 1, generator=torch.Generator().manual_seed(0))
    spec = torch.fft.fft2(img, dim=(0, 1))
    fy = torch.fft.fftfreq(64)[:, None, None]
    fx = torch.fft.fftfreq(64)[None, :, None]
    lowpass = torch.fft.ifft2(spec * (torch.sqrt(fy**2 + fx**2) < 1 / 6), dim=(0, 1)).real
    err = band_errors(lowpass, img)
    assert err["low"] < 1e-5
    assert err["high"] == pytest.approx(1.0, abs=1e-5)
    assert err["mid"] == pytest.approx(1.0, abs=1e-5)
    assert not math.isnan(err["mid"])
