r"""First-stage autoencoders of latent diffusion (lesson 08): compress an image by a factor ``f`` per side.

An encoder :math:`\mathcal E` maps :math:`x\in\mathbb R^{C\times H\times W}` to
:math:`z\in\mathbb R^{c\times H/f\times W/f}` and a decoder :math:`\mathcal D` maps it back. The diffusion
model then works on :math:`z`, which has far fewer entries than :math:`x`. Two ways to keep the latent
space tame, as in the LDM paper:

- **KL**: the encoder outputs a diagonal Gaussian :math:`q(z\mid x) = \mathcal N(\mu, \mathrm{diag}\,\sigma^2)`
  and a small weight on :math:`\mathrm{KL}(q(z\mid x)\,\|\,\mathcal N(0, I))` keeps it near a standard normal
  (the VAE of lesson 01, with a weak prior term);
- **VQ**: the encoder output is snapped to the nearest codebook vector (lesson 07, ``tinydiff.vq``).

Both losses are per-element means, so ``fit(ae, lambda m, x: m.loss(x), images, ...)`` trains them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as V
from .attention import group_norm
from .embeddings import _count, _input

__all__ = ["Encoder", "Decoder", "KLAutoencoder", "VQAutoencoder", "kl_to_standard_normal"]


def _levels(f: int) -> int:
    if isinstance(f, bool) or not isinstance(f, int) or f < 1 or f & (f - 1):
        raise ValueError(f"the downsampling factor f must be a power of two (1, 2, 4, 8, ...); got {f!r}")
    return int(math.log2(f))


class _Block(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), group_norm(cout), nn.SiLU())


class Encoder(nn.Module):
    """Convolutions with ``log2 f`` stride-2 downsamplings: ``(B, C, H, W) -> (B, out_channels, H/f, W/f)``."""

    def __init__(self, in_channels: int, out_channels: int, f: int = 4, base_channels: int = 32):
        super().__init__()
        n = _levels(f)
        in_channels, out_channels = _count("in_channels", in_channels), _count("out_channels", out_channels)
        base_channels = _count("base_channels", base_channels)
        self.in_channels = in_channels
        chans = [base_channels * min(2**i, 4) for i in range(n + 1)]
        layers = [_Block(in_channels, chans[0])]
        for i in range(n):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.SiLU(), _Block(chans[i + 1], chans[i + 1])]
        layers.append(nn.Conv2d(chans[-1], out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(_input("x", x, self, ndim=4, channels=self.in_channels, want=f"(B, {self.in_channels}, H, W)"))


class Decoder(nn.Module):
    """The mirror image: ``log2 f`` nearest-neighbour upsamplings, ``(B, c, h, w) -> (B, C, f h, f w)``."""

    def __init__(self, in_channels: int, out_channels: int, f: int = 4, base_channels: int = 32):
        super().__init__()
        n = _levels(f)
        in_channels, out_channels = _count("in_channels", in_channels), _count("out_channels", out_channels)
        base_channels = _count("base_channels", base_channels)
        self.in_channels = in_channels
        chans = [base_channels * min(2**i, 4) for i in range(n + 1)][::-1]
        layers = [_Block(in_channels, chans[0])]
        for i in range(n):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _Block(chans[i], chans[i + 1])]
        layers.append(nn.Conv2d(chans[-1], out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(_input("z", z, self, ndim=4, channels=self.in_channels, want=f"(B, {self.in_channels}, h, w)"))


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu,\sigma^2)\,\|\,\mathcal N(0,1)) = \tfrac12(\mu^2 + \sigma^2 - 1 - \log\sigma^2)`,
    elementwise (same shape as ``mean``)."""
    mean, logvar = V.tensor("mean", mean, min_batch=0), V.tensor("logvar", logvar, min_batch=0)
    if mean.shape != logvar.shape:
        raise ValueError(f"mean and logvar must have the same shape; got {tuple(mean.shape)} and {tuple(logvar.shape)}")
    return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar)


class _Autoencoder(nn.Module):
    def __init__(self, in_channels, latent_channels, f, base_channels):
        super().__init__()
        _levels(f)
        in_channels, latent_channels = _count("in_channels", in_channels), _count("latent_channels", latent_channels)
        base_channels = _count("base_channels", base_channels)
        self.in_channels, self.latent_channels, self.f = in_channels, latent_channels, f
        self.base_channels = base_channels

    def _check_x(self, x):
        x = _input("x", x, self, ndim=4, channels=self.in_channels, want=f"(B, {self.in_channels}, H, W)")
        if x.shape[-1] % self.f or x.shape[-2] % self.f:
            raise ValueError(f"H and W of x must be divisible by f={self.f}; got {tuple(x.shape[-2:])}")
        return x

    def _check_z(self, z):
        return _input("z", z, self, ndim=4, channels=self.latent_channels, want=f"(B, {self.latent_channels}, h, w)")

    def latent_shape(self, image_shape) -> tuple:
        """``(C, H, W) -> (c, H/f, W/f)``: the shape the diffusion model works on."""
        shape = V.shape("image_shape", image_shape)
        if len(shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W); got {image_shape!r}")
        C, H, W = shape
        return (self.latent_channels, H // self.f, W // self.f)

    def forward(self, x):
        """Reconstruction :math:`\\mathcal D(\\mathcal E(x))` (deterministic)."""
        return self.decode(self.encode(x))


class KLAutoencoder(_Autoencoder):
    r"""The KL-regularised autoencoder: :math:`q(z\mid x) = \mathcal N(\mu(x), \mathrm{diag}\,\sigma^2(x))`.

    ``encode(x)`` returns the mean :math:`\mu(x)` (what latent diffusion trains on, deterministic);
    ``encode(x, sample=True)`` draws :math:`z = \mu + \sigma\varepsilon`. ``loss(x)`` is
    ``mse(x, D(z)) + kl_weight * KL`` with both terms averaged per element.
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, f: int = 4, base_channels: int = 32,
                 kl_weight: float = 1e-4):
        super().__init__(in_channels, latent_channels, f, base_channels)
        kl_weight = V.number("kl_weight", kl_weight, low=0.0)
        self.kl_weight = kl_weight
        self.encoder = Encoder(in_channels, 2 * latent_channels, f, base_channels)
        self.decoder = Decoder(latent_channels, in_channels, f, base_channels)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, logvar)`` of :math:`q(z\\mid x)`, each ``(B, c, H/f, W/f)`` (logvar clamped to [-20, 10])."""
        x = self._check_x(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)

    def encode(self, x: torch.Tensor, *, sample: bool = False, generator=None) -> torch.Tensor:
        generator = V.generator("generator", generator)
        if not isinstance(sample, bool):
            raise ValueError(f"sample must be True or False; got {V.describe(sample)}")
        mean, logvar = self.moments(x)
        if not sample:
            return mean
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        return mean + (0.5 * logvar).exp() * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self._check_z(z))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_x(x)
        mean, logvar = self.moments(x)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        return F.mse_loss(self.decoder(z), x) + self.kl_weight * kl_to_standard_normal(mean, logvar).mean()


class VQAutoencoder(_Autoencoder):
    r"""The VQ-regularised autoencoder: the encoder output :math:`z_e` is snapped to the nearest of
    ``num_codes`` codebook vectors by :class:`tinydiff.vq.VectorQuantizer` (straight-through gradient).

    ``encode(x)`` returns :math:`z_e` *before* quantisation (what the LDM paper diffuses: the decoder
    quantises), ``decode(z)`` quantises and decodes. ``loss(x)`` is ``mse + (codebook + beta * commitment)``.
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, f: int = 4, base_channels: int = 32,
                 num_codes: int = 64, beta: float = 0.25):
        super().__init__(in_channels, latent_channels, f, base_channels)
        from ..vq import VectorQuantizer

        self.encoder = Encoder(in_channels, latent_channels, f, base_channels)
        self.quantizer = VectorQuantizer(num_codes, latent_channels, beta=beta)
        self.decoder = Decoder(latent_channels, in_channels, f, base_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._check_x(x))

    def quantize(self, z: torch.Tensor):
        """The quantiser's output (``z_q``, ``loss``, ``indices``, ``perplexity``) for latents ``z``."""
        return self.quantizer(self._check_z(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantize(z).z_q)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check_x(x)
        q = self.quantize(self.encode(x))
        return F.mse_loss(self.decoder(q.z_q), x) + q.loss
