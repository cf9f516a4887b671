"""Metrics: PSNR, SSIM, relative error in radial frequency bands, relative L2 error, IoU, the
eigenvalues of the empirical neural tangent kernel; alignment angle and effective dimensionality
of weights (feedback alignment)."""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import nn
from torch.func import functional_call, jacrev, vmap

__all__ = [
    "BANDS", "PSNR_CEILING", "angle", "band_errors", "effective_dimensionality", "iou", "ntk_eigenvalues", "psnr",
    "psnr_from_mse", "relative_l2", "ssim",
]  # fmt: skip

# Radial frequency bands in cycles per pixel (Nyquist is 0.5): the thirds of [0, 0.5], the last
# band also taking the corners beyond 0.5 along the diagonal.
BANDS: dict[str, tuple[float, float]] = {"low": (0.0, 1 / 6), "mid": (1 / 6, 1 / 3), "high": (1 / 3, math.inf)}

PSNR_CEILING = 60.0
"""Where a PSNR (in dB, values in [0, 1]) of a picture stored in 8 bits stops meaning anything:
rounding to 1/255 alone leaves 58.9 dB (a uniform error of 1/12 of a level squared), and a float32
fit that memorises the pixels reads 100-140 dB of round-off. The PSNR tasks' :class:`MetricSpec`
carry it as their ``ceiling``: the tables show such a value as "> 60 dB"."""


def psnr_from_mse(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``10 log10(range^2 / mse)``, elementwise, on the tensor's device (no host sync)."""
    return 10 * torch.log10(data_range**2 / mse)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels."""
    return float(psnr_from_mse(torch.mean((pred.float() - target.float()) ** 2), data_range))


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """SSIM (Wang et al. 2004, scikit-image's implementation) of (H, W, C) images."""
    a = pred.detach().float().cpu().numpy().astype(np.float64)
    b = target.detach().float().cpu().numpy().astype(np.float64)
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=-1))


def band_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Relative error per radial frequency band of the 2-D FFT of (H, W, C) images:
    ``||F(pred) - F(target)||_band / ||F(target)||_band``.

    High frequencies arriving early show up as a falling ``high`` error early in training.
    """
    h, w = target.shape[:2]
    fp = torch.fft.fft2(pred.detach().float(), dim=(0, 1))
    ft = torch.fft.fft2(target.detach().float(), dim=(0, 1))
    fy = torch.fft.fftfreq(h, device=target.device)[:, None]
    fx = torch.fft.fftfreq(w, device=target.device)[None, :]
    radius = torch.sqrt(fy**2 + fx**2)
    err = (fp - ft).abs().pow(2).sum(-1)
    ref = ft.abs().pow(2).sum(-1)
    out = {}
    for name, (lo, hi) in BANDS.items():
        mask = (radius >= lo) & (radius < hi)
        out[name] = float(torch.sqrt(err[mask].sum() / ref[mask].sum().clamp_min(1e-20)))
    return out


def relative_l2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """``||pred - target||_2 / ||target||_2`` over all entries."""
    pred, target = pred.detach(), target.detach()
    return float(torch.linalg.vector_norm(pred - target) / torch.linalg.vector_norm(target).clamp_min(1e-30))


def iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Intersection over union of two boolean occupancy tensors (1 where both are empty)."""
    inter = (pred & target).sum()
    union = (pred | target).sum()
    return 1.0 if int(union) == 0 else float(inter / union)


def ntk_eigenvalues(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Eigenvalues, in descending order, of the empirical NTK ``K = J J^T`` of a scalar-output
    model at ``inputs`` (``J[i, p] = d f(x_i) / d theta_p`` over every trainable parameter).

    The Jacobian is taken in the parameters the optimiser sees, so a reparametrised model (RWF's
    ``s`` and ``V``) has the kernel of its own gradient flow (Jacot et al. 2018; Wang et al. 2022,
    figure 2). Cost: one Jacobian of ``len(inputs) x n_params`` entries.
    """
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}

    def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (x[None],))
        if out.numel() != 1:
            raise ValueError(f"ntk_eigenvalues needs a scalar-output model, got outputs of shape {tuple(out.shape)}")
        return out.reshape(())

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, inputs)
    j = torch.cat([v.reshape(len(inputs), -1) for v in jac.values()], dim=1).double()
    return torch.linalg.eigvalsh(j @ j.T).flip(0).clamp_min(0).float()


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle in degrees between two tensors taken as flat vectors:
    ``arccos(<a, b> / (|a| |b|))``; ``nan`` when either is zero.

    Between a forward weight ``W`` and a feedback matrix ``B`` of the same shape it is the
    alignment angle of feedback alignment (Lillicrap et al. 2016; Cheon et al. 2024): 90 degrees
    for an unrelated ``B``, 0 when the backward pass is backprop's.
    """
    if a.shape != b.shape:
        raise ValueError(f"angle needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.detach().double().flatten(), b.detach().double().flatten()
    denom = x.norm() * y.norm()
    if denom == 0:
        return math.nan
    return math.degrees(math.acos(float((x @ y / denom).clamp(-1.0, 1.0))))


def effective_dimensionality(weight: torch.Tensor) -> float:
    """Participation ratio of the singular values ``s_i`` of a weight (rows = output units):

        D_eff = (sum_i s_i^2)^2 / sum_i s_i^4,

    i.e. the participation ratio ``(sum l)^2 / sum l^2`` of the eigenvalues ``l_i = s_i^2`` of
    ``W W^T``. It is ``rank`` for a flat spectrum and 1 when one direction dominates; Cheon et al.
    2024 (NeurIPS, arXiv 2405.16731) report that random-noise pretraining lowers it. A convolution
    kernel is flattened to ``(out_channels, in_channels * k...)``.
    """
    w = weight.detach().double().reshape(weight.shape[0], -1)
    s2 = torch.linalg.svdvals(w) ** 2
    denom = float((s2**2).sum())
    return float(s2.sum() ** 2 / denom) if denom > 0 else math.nan
