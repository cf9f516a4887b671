"""Small VAEs over weight slices: the generative models of the weight-VAE init (:mod:`initium.vae`).

After Atanov et al., "The Deep Weight Prior" (ICLR 2019), as Harder et al. use it in "From
Pointwise to Powerhouse" (arXiv 2310.16695): one VAE per layer position of a model zoo, trained on
the layer's weight slices ``w`` (a ``k x k`` kernel slice of one (out, in) channel pair of a
convolution, or one row of a linear layer) by maximising the evidence lower bound

    log p(w) >= ELBO(w) = E_{q(z|w)} [ log N(w; mu_theta(z), diag sigma_theta(z)^2) ]
                          - KL( N(mu_phi(w), diag sigma_phi(w)^2) || N(0, I) ),

with one reparametrised sample ``z = mu_phi(w) + sigma_phi(w) * eps``, ``eps ~ N(0, I)``. A new
slice is decoded from a prior sample ``z ~ N(0, I)``: ``w = mu_theta(z) + sigma_theta(z) * eps'``.

:class:`ConvSliceVAE` is the paper's 3x3 model (a small convolutional encoder to a 1x1 latent map
and a transposed-convolution decoder, ELU, latent 8, hidden 32); :class:`MLPSliceVAE` takes any
slice flattened (linear rows, 1x1 or 5x5 kernels). ``SLICE_VAES`` maps their names to the classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import Registry

__all__ = ["SLICE_VAES", "ConvSliceVAE", "MLPSliceVAE", "SliceVAE", "slice_vae_for"]

MIN_STD = 1e-3
"""Floor of the decoder's and the encoder's standard deviations: keeps the Gaussian likelihood
bounded where a layer's slices collapse onto a few points (the VAE models standardised slices)."""
_LOG_2PI = math.log(2 * math.pi)


def _std(raw: torch.Tensor) -> torch.Tensor:
    # softplus (the DWP code's choice) keeps the std positive with a gradient everywhere
    return F.softplus(raw) + MIN_STD


class SliceVAE(nn.Module):
    """A VAE over slices of shape ``slice_shape``: :meth:`encode`, :meth:`decode`, :meth:`loss`
    (the negative ELBO of each slice, in nats) and :meth:`sample`. Subclasses build
    ``encoder(x) -> (N, 2 latent)`` and ``decoder(z) -> (N, 2, *slice_shape)`` (mean, raw std)."""

    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, slice_shape: tuple[int, ...], latent: int = 8, hidden: int = 32) -> None:
        super().__init__()
        for name, value in (("latent", latent), ("hidden", hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"slice VAE {name} must be an int >= 1, got {value!r}")
        shape = tuple(slice_shape)
        if not shape or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"slice_shape must be positive ints, got {slice_shape!r}")
        self.slice_shape, self.latent, self.hidden = shape, latent, hidden

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, *slice_shape)`` -> the posterior's mean and std, each ``(N, latent)``."""
        h = self.encoder(x).reshape(len(x), 2, self.latent)
        return h[:, 0], _std(h[:, 1])

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (N, latent)`` -> the likelihood's mean and std, each ``(N, *slice_shape)``."""
        h = self.decoder(z).reshape(len(z), 2, *self.slice_shape)
        return h[:, 0], _std(h[:, 1])

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``-ELBO(x)`` per slice, ``(N,)`` nats: the Gaussian negative log-likelihood of ``x``
        under the decoder at one posterior sample (its noise from ``generator``), plus the
        closed-form ``KL(q(z|x) || N(0, I)) = 1/2 sum (mu^2 + s^2 - 1 - log s^2)``."""
        mu, std = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        mean, sigma = self.decode(mu + std * eps)
        nll = (0.5 * ((x - mean) / sigma) ** 2 + torch.log(sigma) + 0.5 * _LOG_2PI).flatten(1).sum(1)
        kl = 0.5 * (mu**2 + std**2 - 1 - 2 * torch.log(std)).sum(1)
        return nll + kl

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *, noise: bool = True) -> torch.Tensor:
        """``n`` new slices ``(n, *slice_shape)``: decoded prior samples ``z ~ N(0, I)``, plus the
        decoder's own Gaussian noise (``noise=False``: its mean alone). Both draw from
        ``generator`` on the CPU, so a seed gives the same slices on every device."""
        device = next(self.parameters()).device
        z = torch.randn((n, self.latent), generator=generator).to(device)
        mean, sigma = self.decode(z)
        if not noise:
            return mean
        return mean + sigma * torch.randn(mean.shape, generator=generator).to(device)


class ConvSliceVAE(SliceVAE):
    """The Deep Weight Prior's VAE for 3x3 kernels (Atanov et al. 2019, appendix; their
    ``Encoder3x3`` / ``Decoder3x3``): encoder ``conv3x3(1, h) - conv3x3(h, h) - conv3x3 valid
    (h, 2h)`` to a 1x1 map, then 1x1 convolutions to the posterior's mean and std; decoder
    ``conv1x1(z, 2h) - convT3x3(2h, h)`` back to 3x3, ``conv1x1(h, h)``, then 1x1 convolutions to
    the likelihood's mean and std. ELU throughout."""

    def __init__(self, slice_shape: tuple[int, ...] = (3, 3), latent: int = 8, hidden: int = 32) -> None:
        super().__init__(slice_shape, latent, hidden)
        if self.slice_shape != (3, 3):
            raise ValueError(f"ConvSliceVAE models 3x3 slices, got {self.slice_shape}; use MLPSliceVAE")
        h = hidden
        self.encoder = nn.Sequential(
            nn.Unflatten(1, (1, 3)),  # (N, 3, 3) -> (N, 1, 3, 3)
            nn.Conv2d(1, h, 3, padding=1), nn.ELU(),
            nn.Conv2d(h, h, 3, padding=1), nn.ELU(),
            nn.Conv2d(h, 2 * h, 3), nn.ELU(),
            nn.Conv2d(2 * h, 2 * latent, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (latent, 1, 1)),
            nn.Conv2d(latent, 2 * h, 1), nn.ELU(),
            nn.ConvTranspose2d(2 * h, h, 3), nn.ELU(),
            nn.Conv2d(h, h, 1), nn.ELU(),
            nn.Conv2d(h, 2, 1),
        )  # fmt: skip


class MLPSliceVAE(SliceVAE):
    """A fully connected VAE for slices of any shape, flattened (the DWP code's ``EncoderFC`` /
    ``DecoderFC``, two hidden layers each): the linear layers' rows, 1x1 and other kernels."""

    def __init__(self, slice_shape: tuple[int, ...], latent: int = 8, hidden: int = 32) -> None:
        super().__init__(slice_shape, latent, hidden)
        d, h = math.prod(self.slice_shape), hidden
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(d, h), nn.ELU(), nn.Linear(h, h), nn.ELU(), nn.Linear(h, 2 * latent)
        )
        self.decoder = nn.Sequential(nn.Linear(latent, h), nn.ELU(), nn.Linear(h, h), nn.ELU(), nn.Linear(h, 2 * d))


SLICE_VAES: Registry[SliceVAE] = Registry("slice VAE")
SLICE_VAES.register("conv3x3")(ConvSliceVAE)
SLICE_VAES.register("mlp")(MLPSliceVAE)


def slice_vae_for(slice_shape: tuple[int, ...]) -> str:
    """The ``SLICE_VAES`` name for slices of this shape: the convolutional VAE for 3x3, else the MLP."""
    return "conv3x3" if tuple(slice_shape) == (3, 3) else "mlp"
