r"""Vector quantisation and the VQ-VAE (lesson 07): discrete latents for latent diffusion.

An encoder maps an image to a grid of vectors :math:`z_e(x)` ``(B, dim, H, W)``; each vector is replaced by
its nearest entry of a learned codebook :math:`\{e_j\}_{j=1}^K` ``(K, dim)``:

.. math::  z_q(x) = e_k,\qquad k = \arg\min_j \lVert z_e(x) - e_j\rVert_2 .

The argmin has no useful gradient, so the decoder is fed the *straight-through* value
:math:`z_e + \mathrm{sg}(z_q - z_e)`: its value is :math:`z_q`, its gradient is that of :math:`z_e`. The codebook
and the encoder are tied together by the loss of van den Oord et al. (2017, eq. 3)

.. math::  \mathcal L = \lVert x - D(z_q)\rVert^2 + \lVert\mathrm{sg}(z_e) - e\rVert^2
           + \beta\,\lVert z_e - \mathrm{sg}(e)\rVert^2,\qquad \beta = 0.25,

(codebook term, then the commitment term with :math:`\beta`). The squared norms here are *means* over all
``B*H*W*dim`` entries, the normalisation of diffusers, Sonnet and taming-transformers. Instead of the codebook
term, :class:`EMAVectorQuantizer` moves the codes by exponential moving averages of the vectors assigned to them.

Shapes: the quantisers take ``(B, dim, H, W)`` (channels first, like every image tensor in tinydiff) and
nothing else; to quantise a set of vectors ``(N, dim)`` use :func:`nearest_code` directly.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .models.attention import group_norm
from .models.unet import ResBlock

__all__ = [
    "VQOutput", "VectorQuantizer", "EMAVectorQuantizer", "VQVAE",
    "squared_distances", "nearest_code", "straight_through", "straight_through_probe",
    "codebook_loss", "commitment_loss", "vq_loss", "ema_codebook_step",
    "code_usage", "perplexity", "dead_codes", "restart_dead_codes",
    "Compression", "index_bits", "raw_bits", "compression", "vqvae_loss", "make_vqvae_loss",
]


class VQOutput(NamedTuple):
    """What a quantiser returns.

    ``z_q``: the straight-through quantised tensor :math:`z_e + \\mathrm{sg}(z_q - z_e)`, shape of ``z_e``;
    ``loss``: the scalar VQ loss (codebook + β·commitment; β·commitment only for the EMA quantiser);
    ``indices``: ``(B, H, W)`` LongTensor of chosen codes; ``perplexity``: scalar :math:`\\exp H(p)` of their usage.
    """

    z_q: torch.Tensor
    loss: torch.Tensor
    indices: torch.Tensor
    perplexity: torch.Tensor


# ------------------------------------------------------------------------------- the quantisation map
def squared_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    r"""All squared distances
    :math:`\lVert z_i - e_j\rVert^2 = \lVert z_i\rVert^2 - 2 z_i^\top e_j + \lVert e_j\rVert^2`,
    ``z`` ``(N, dim)``, ``codebook`` ``(K, dim)`` -> ``(N, K)``."""
    _check_vectors(z, codebook)
    return (z * z).sum(1, keepdim=True) - 2 * z @ codebook.t() + (codebook * codebook).sum(1)[None, :]


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    r""":math:`k_i = \arg\min_j \lVert z_i - e_j\rVert_2` for vectors ``z`` ``(N, dim)`` -> LongTensor ``(N,)``.

    Distances are computed in float32 (or wider) whatever the input dtype, with autocast switched off: in bf16 the
    argmin picks wrong codes."""
    dtype = torch.promote_types(codebook.dtype, torch.float32)
    with torch.no_grad(), _full_precision(z):
        return squared_distances(z.detach().to(dtype), codebook.detach().to(dtype)).argmin(1)


def _full_precision(x: torch.Tensor):
    """A context that disables autocast (AMP) on ``x``'s device, so codebook arithmetic stays in float32."""
    if x.device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    r"""The straight-through estimator :math:`z_e + \mathrm{sg}(z_q - z_e)`: value :math:`z_q`,
    Jacobian with respect to :math:`z_e` the identity (the decoder's gradient is copied to the encoder)."""
    return z_e + (z_q - z_e).detach()


def straight_through_probe(fn, z_e: torch.Tensor, z_q: torch.Tensor, w: torch.Tensor):
    r"""Run ``out = fn(z_e, z_q)`` and return ``(out, dL/dz_e)`` for :math:`L = \sum w \odot out`.

    Checks a straight-through implementation: the right one returns ``(z_q, w)``; returning ``z_q`` itself gives
    no gradient (reported as zeros), returning ``z_e`` the wrong value."""
    z_e = z_e.detach().clone().requires_grad_(True)
    out = fn(z_e, z_q.detach())
    if not out.requires_grad:
        return out.detach(), torch.zeros_like(z_e)
    (grad,) = torch.autograd.grad((w * out).sum(), z_e, allow_unused=True)
    return out.detach(), torch.zeros_like(z_e) if grad is None else grad


# ----------------------------------------------------------------------------------------- the losses
def codebook_loss(z_e: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    r"""The codebook term :math:`\lVert\mathrm{sg}(z_e) - e\rVert^2` (mean over entries):
    moves codes, not the encoder."""
    return F.mse_loss(e, z_e.detach())


def commitment_loss(z_e: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    r"""The commitment term :math:`\lVert z_e - \mathrm{sg}(e)\rVert^2` (mean over entries):
    moves the encoder, not codes."""
    return F.mse_loss(z_e, e.detach())


def vq_loss(z_e: torch.Tensor, e: torch.Tensor, beta: float = 0.25, *, placement: str = "paper") -> torch.Tensor:
    r"""The VQ loss with :math:`\beta` on the commitment term (``placement="paper"``, van den Oord et al. eq. 3):
    :math:`\lVert\mathrm{sg}(z_e) - e\rVert^2 + \beta\lVert z_e - \mathrm{sg}(e)\rVert^2`.

    ``placement="swapped"`` puts :math:`\beta` on the codebook term instead,
    :math:`\beta\lVert\mathrm{sg}(z_e) - e\rVert^2 + \lVert z_e - \mathrm{sg}(e)\rVert^2` (diffusers' ``legacy=True``
    default, kept there for old checkpoints). Both have the same *value*; their gradients differ (lesson 07, §3).
    ``e`` are the selected codes :math:`e_k` (not straight-through), same shape as ``z_e``.
    """
    if placement == "paper":
        return codebook_loss(z_e, e) + beta * commitment_loss(z_e, e)
    if placement == "swapped":
        return beta * codebook_loss(z_e, e) + commitment_loss(z_e, e)
    raise ValueError(f"placement must be 'paper' (beta on the commitment term) or 'swapped'; got {placement!r}")


# ---------------------------------------------------------------------------------------- codebook health
def code_usage(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Histogram of code indices (any shape): LongTensor ``(num_codes,)`` with the count of each code."""
    indices = torch.as_tensor(indices)
    if indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be integer code numbers; got dtype {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_codes):
        raise ValueError(
            f"indices must lie in 0..{num_codes - 1} (num_codes = {num_codes}); got values from "
            f"{int(indices.min())} to {int(indices.max())}"
        )
    return torch.bincount(indices.reshape(-1).long(), minlength=num_codes)


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    r"""Perplexity :math:`\exp H(p) = \exp(-\sum_k p_k\log p_k)`, :math:`p = \text{counts}/\sum\text{counts}`:
    the effective number of codes in use (1 if one code takes everything, ``K`` if all are used equally).

    ``counts`` ``(K,)`` from :func:`code_usage` (or any non-negative weights).
    Terms with :math:`p_k = 0` contribute 0."""
    counts = torch.as_tensor(counts)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(
            f"counts must be a 1-D tensor of non-negative code counts (from code_usage); got {tuple(counts.shape)}"
        )
    total = counts.sum()
    if total <= 0:
        raise ValueError("counts are all zero: there is no usage to measure")
    return _perplexity(counts)


def _perplexity(counts):
    p = counts.double() / counts.sum()
    return torch.exp(-torch.xlogy(p, p).sum()).float()


def dead_codes(counts: torch.Tensor, threshold: int = 1) -> torch.Tensor:
    """Indices of the codes used fewer than ``threshold`` times according to ``counts`` ``(K,)`` (dead codes)."""
    return torch.nonzero(torch.as_tensor(counts) < threshold).flatten()


# ------------------------------------------------------------------------------------- the quantisers
def _check_vectors(z, codebook):
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"need vectors z (N, dim) and a codebook (K, dim) with the same dim; got {tuple(z.shape)} and "
            f"{tuple(codebook.shape)}"
        )


def _check_sizes(num_codes, dim, beta):
    if int(num_codes) != num_codes or num_codes < 1:
        raise ValueError(f"num_codes (the codebook size K) must be an integer >= 1; got {num_codes}")
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim (the length of each code vector) must be an integer >= 1; got {dim}")
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta (the commitment weight) must be a finite number >= 0, e.g. 0.25; got {beta}")


class VectorQuantizer(nn.Module):
    r"""Nearest-neighbour quantiser with a learned codebook trained by the codebook loss (van den Oord et al. 2017).

    ``forward(z_e)`` takes ``(B, dim, H, W)`` and returns :class:`VQOutput` with
    ``loss`` :math:`= \lVert\mathrm{sg}(z_e) - e\rVert^2 + \beta\lVert z_e - \mathrm{sg}(e)\rVert^2`
    (means over entries).
    ``quantize(indices)`` looks codes up: ``(B, H, W)`` -> ``(B, dim, H, W)``. ``codebook`` is the ``(K, dim)`` table.
    Codes start uniform in :math:`[-1/K, 1/K]` (as in the reference implementations).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25):
        super().__init__()
        _check_sizes(num_codes, dim, beta)
        self.num_codes, self.dim, self.beta = int(num_codes), int(dim), float(beta)
        self.embedding = nn.Embedding(self.num_codes, self.dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / self.num_codes, 1.0 / self.num_codes)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook :math:`(e_1, \\dots, e_K)` as a ``(num_codes, dim)`` tensor."""
        return self.embedding.weight

    def _flatten(self, z_e):
        if z_e.ndim != 4 or z_e.shape[1] != self.dim:
            raise ValueError(
                f"z_e must have shape (B, dim, H, W) with dim = {self.dim} channels (this quantiser's code length); "
                f"got {tuple(z_e.shape)}. Make the encoder output {self.dim} channels, or build the quantiser with "
                f"dim={z_e.shape[1] if z_e.ndim == 4 else '...'}."
            )
        return z_e.permute(0, 2, 3, 1).reshape(-1, self.dim)

    def quantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Look up the codes of an index map ``(B, H, W)``: returns :math:`z_q` ``(B, dim, H, W)``."""
        indices = torch.as_tensor(indices, device=self.codebook.device)
        if indices.ndim != 3:
            raise ValueError(f"indices must be an index map of shape (B, H, W); got {tuple(indices.shape)}")
        code_usage(indices, self.num_codes)  # validates dtype and range
        return self.codebook[indices.long()].permute(0, 3, 1, 2).contiguous()

    def _loss(self, z_e, e):
        return vq_loss(z_e, e, self.beta)

    def _update(self, flat, idx):
        """Hook for the EMA quantiser; the plain quantiser learns its codes by gradient descent."""

    def forward(self, z_e: torch.Tensor) -> VQOutput:
        flat = self._flatten(z_e)
        idx = nearest_code(flat, self.codebook)
        B, _, H, W = z_e.shape
        e = self.codebook[idx].reshape(B, H, W, self.dim).permute(0, 3, 1, 2)
        dtype = torch.promote_types(z_e.dtype, torch.float32)
        with _full_precision(z_e):
            loss = self._loss(z_e.to(dtype), e.to(dtype))
            if self.training:
                self._update(flat.detach(), idx)
        z_q = straight_through(z_e, e.to(z_e.dtype))
        usage = torch.bincount(idx, minlength=self.num_codes)  # code_usage without its (syncing) input checks
        return VQOutput(z_q, loss, idx.reshape(B, H, W), _perplexity(usage))

    @torch.no_grad()
    def reset_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        """Overwrite the codes ``which`` ``(M,)`` with ``vectors`` ``(M, dim)`` (used by :func:`restart_dead_codes`)."""
        self.codebook[which] = vectors.to(self.codebook)

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}"


def ema_codebook_step(cluster_size: torch.Tensor, embed_sum: torch.Tensor, z: torch.Tensor, indices: torch.Tensor,
                      decay: float, eps: float):
    r"""One EMA codebook update (van den Oord et al. 2017, appendix A.1), with Laplace smoothing of the counts.

    With :math:`n_k` vectors :math:`z_{i}` assigned to code :math:`k` in this batch:

    .. math::
        N_k \leftarrow \gamma N_k + (1-\gamma) n_k,\qquad
        m_k \leftarrow \gamma m_k + (1-\gamma)\textstyle\sum_{i: k_i = k} z_i,\qquad
        \tilde N_k = \frac{N_k + \epsilon}{n + K\epsilon}\, n,\ n = \textstyle\sum_k N_k,\qquad
        e_k = m_k / \tilde N_k .

    Returns the new ``(cluster_size N, embed_sum m, codebook e)``; inputs are not modified. The smoothing keeps
    :math:`\tilde N_k > 0` (for :math:`\epsilon > 0`), so an unused code whose :math:`N_k` and :math:`m_k` decay to 0
    stays finite instead of becoming 0/0.
    """
    K = cluster_size.shape[0]
    onehot = F.one_hot(indices, K).to(z.dtype)  # (N, K)
    N = decay * cluster_size + (1 - decay) * onehot.sum(0)
    m = decay * embed_sum + (1 - decay) * onehot.t() @ z
    n = N.sum()
    N_smoothed = (N + eps) / (n + K * eps) * n
    return N, m, m / N_smoothed[:, None]


class EMAVectorQuantizer(VectorQuantizer):
    r"""Vector quantiser whose codebook follows exponential moving averages of the vectors assigned to each code
    (:func:`ema_codebook_step`, run in training mode on every forward pass, after the quantisation), instead of
    the codebook loss. ``loss`` is :math:`\beta\lVert z_e - \mathrm{sg}(e)\rVert^2` only.

    The codebook, the smoothed counts :math:`N_k` (``cluster_size``, starting at 1) and the sums :math:`m_k`
    (``embed_sum``, starting at the codes) are buffers, not parameters: no optimiser touches them.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5):
        super().__init__(num_codes, dim, beta)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie strictly between 0 and 1 (e.g. 0.99); got {decay}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(
                f"eps (the Laplace smoothing of the counts) must be a finite number >= 0, e.g. 1e-5; got {eps}"
            )
        self.decay, self.eps = float(decay), float(eps)
        init = self.embedding.weight.detach().clone()
        del self.embedding
        self.register_buffer("embed", init)
        self.register_buffer("cluster_size", torch.ones(self.num_codes))
        self.register_buffer("embed_sum", init.clone())

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook :math:`(e_1, \\dots, e_K)` as a ``(num_codes, dim)`` tensor (a buffer)."""
        return self.embed

    def _loss(self, z_e, e):
        return self.beta * commitment_loss(z_e, e)

    @torch.no_grad()
    def _update(self, flat, idx):
        N, m, e = ema_codebook_step(self.cluster_size, self.embed_sum, flat.to(self.embed.dtype), idx,
                                    self.decay, self.eps)
        self.cluster_size.copy_(N)
        self.embed_sum.copy_(m)
        self.embed.copy_(e)

    @torch.no_grad()
    def reset_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        """Overwrite codes and restart their averages as if each had been seen once at its new value."""
        vectors = vectors.to(self.embed)
        self.embed[which] = vectors
        self.embed_sum[which] = vectors
        self.cluster_size[which] = 1.0

    def extra_repr(self) -> str:
        return super().extra_repr() + f", decay={self.decay}, eps={self.eps}"


@torch.no_grad()
def restart_dead_codes(quantizer: VectorQuantizer, z_e_batch: torch.Tensor, counts: torch.Tensor | None = None,
                       *, threshold: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Re-initialise the dead codes of ``quantizer`` to randomly chosen encoder outputs.

    ``z_e_batch`` ``(B, dim, H, W)``: encoder outputs to draw from. ``counts`` ``(K,)``: code usage over some window
    of training (default: the usage on ``z_e_batch`` itself); codes with ``counts < threshold`` are dead. Each
    dead code is moved onto a *distinct* encoder vector of the batch (drawn without replacement among the distinct
    vectors; if there are fewer distinct vectors than dead codes, the rest stay put), so right after the restart
    every restarted code is the nearest code of at least the vector it was placed on. Returns the indices of the
    restarted codes.
    """
    flat = quantizer._flatten(z_e_batch).detach().float()
    if counts is None:
        counts = code_usage(nearest_code(flat, quantizer.codebook), quantizer.num_codes)
    counts = torch.as_tensor(counts)
    if counts.shape != (quantizer.num_codes,):
        raise ValueError(
            f"counts must have shape ({quantizer.num_codes},) (one count per code); got {tuple(counts.shape)}"
        )
    dead = dead_codes(counts, threshold).to(quantizer.codebook.device)
    if dead.numel() == 0:
        return dead
    candidates = torch.unique(flat, dim=0)
    order = torch.randperm(candidates.shape[0], generator=generator)[: dead.numel()].to(candidates.device)
    dead = dead[: order.numel()]
    quantizer.reset_codes(dead, candidates[order])
    return dead


# ------------------------------------------------------------------------------------------ compression
@dataclass(frozen=True)
class Compression:
    r"""Bits per image: ``latent_bits`` :math:`= h\,w\,\log_2 K` for the index map,
    ``raw_bits`` :math:`= C\,H\,W\cdot 8` for the pixels, and their ratio ``ratio = raw_bits / latent_bits``."""

    latent_bits: float
    raw_bits: float

    @property
    def ratio(self) -> float:
        return self.raw_bits / self.latent_bits


def index_bits(latent_hw, num_codes: int) -> float:
    r"""Bits to store one index map of size :math:`h\times w` with :math:`K` codes: :math:`h\,w\,\log_2 K`
    (an integer for :math:`K` a power of two; pass the perplexity for an entropy-coding estimate)."""
    h, w = latent_hw
    if num_codes < 1:
        raise ValueError(f"num_codes must be >= 1; got {num_codes}")
    return float(h * w * math.log2(num_codes))


def raw_bits(image_shape, bits_per_value: int = 8) -> float:
    """Bits of a raw image ``(C, H, W)`` at ``bits_per_value`` bits per pixel value (8 for ordinary images)."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W); got {tuple(image_shape)}")
    C, H, W = image_shape
    return float(C * H * W * bits_per_value)


def compression(image_shape, f: int, num_codes: int, bits_per_value: int = 8) -> Compression:
    """Bits per image of a VQ index map with downsampling factor ``f`` vs the raw image ``(C, H, W)``."""
    C, H, W = image_shape
    if H % f or W % f:
        raise ValueError(f"H and W ({H}, {W}) must be divisible by the downsampling factor f = {f}")
    return Compression(index_bits((H // f, W // f), num_codes), raw_bits(image_shape, bits_per_value))


# ------------------------------------------------------------------------------------------------ VQ-VAE
class _Block(nn.Module):
    """A :class:`tinydiff.models.ResBlock` without conditioning (a zero embedding, as in ``Classifier``)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.block = ResBlock(cin, cout, emb_dim=1)

    def forward(self, x):
        return self.block(x, x.new_zeros(x.shape[0], 1))


class VQVAE(nn.Module):
    r"""A small VQ-VAE: conv encoder :math:`E` -> quantiser -> conv decoder :math:`D`.

    The encoder has ``levels`` stride-2 convolutions, so the **downsampling factor** is :math:`f = 2^{levels}`:
    an image ``(C, H, W)`` becomes an index map ``(H/f, W/f)`` of codes in ``0..num_codes-1``.

    - ``z_e(x)`` -> encoder output ``(B, dim, H/f, W/f)``
    - ``encode(x)`` -> :class:`VQOutput` (quantised latents, VQ loss, index map, perplexity)
    - ``decode(z_q)`` -> image; ``decode_indices(indices)`` = ``decode(quantizer.quantize(indices))``
    - ``forward(x)`` -> ``(x_hat, VQOutput)``

    ``ema=True`` uses :class:`EMAVectorQuantizer` (``decay``) instead of the codebook loss.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 32, dim: int = 16, num_codes: int = 64, levels: int = 1,
                 beta: float = 0.25, ema: bool = False, decay: float = 0.99):
        super().__init__()
        if levels < 0:
            raise ValueError(f"levels (the number of stride-2 downsamplings) must be >= 0; got {levels}")
        self.in_channels, self.levels, self.f = in_channels, levels, 2 ** levels
        enc = [nn.Conv2d(in_channels, hidden, 3, padding=1), _Block(hidden, hidden)]
        for _ in range(levels):
            enc += [nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), _Block(hidden, hidden)]
        enc += [group_norm(hidden), nn.SiLU(), nn.Conv2d(hidden, dim, 1)]
        self.encoder = nn.Sequential(*enc)
        quantizer = EMAVectorQuantizer(num_codes, dim, beta, decay) if ema else VectorQuantizer(num_codes, dim, beta)
        self.quantizer = quantizer
        dec = [nn.Conv2d(dim, hidden, 3, padding=1), _Block(hidden, hidden)]
        for _ in range(levels):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(hidden, hidden, 3, padding=1),
                    _Block(hidden, hidden)]
        dec += [group_norm(hidden), nn.SiLU(), nn.Conv2d(hidden, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def latent_shape(self, image_hw) -> tuple[int, int]:
        """The index-map size ``(H/f, W/f)`` of an image of size ``(H, W)``."""
        H, W = image_hw
        return H // self.f, W // self.f

    def z_e(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output :math:`z_e(x)` ``(B, dim, H/f, W/f)``, before quantisation."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        if x.shape[-1] % self.f or x.shape[-2] % self.f:
            raise ValueError(f"H and W must be divisible by f = {self.f}; got {tuple(x.shape[-2:])}")
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> VQOutput:
        return self.quantizer(self.z_e(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_q)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantizer.quantize(indices))

    def forward(self, x: torch.Tensor):
        vq = self.encode(x)
        return self.decode(vq.z_q), vq


def vqvae_loss(model: VQVAE, batch) -> torch.Tensor:
    r"""The VQ-VAE objective :math:`\lVert x - D(z_q)\rVert^2` (mean) + the quantiser's loss, for ``td.train.fit``.
    ``batch`` is images ``x`` or a tuple whose first entry is ``x``."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    x_hat, vq = model(x)
    return F.mse_loss(x_hat.float(), x.float()) + vq.loss


def make_vqvae_loss(restart_every: int | None = None, *, threshold: int = 1, seed: int = 0):
    """A ``loss_fn(model, batch)`` for ``td.train.fit``: :func:`vqvae_loss`, plus, every ``restart_every`` calls,
    :func:`restart_dead_codes` with the code usage counted over those calls (``None``: never restart).

    The returned function has attributes ``restarts`` (a list of how many codes each restart moved) and
    ``usage`` (the counts of the current window)."""
    if restart_every is not None and restart_every < 1:
        raise ValueError(f"restart_every must be None or >= 1; got {restart_every}")
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(model, batch):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        z_e = model.z_e(x)
        vq = model.quantizer(z_e)
        loss = F.mse_loss(model.decode(vq.z_q).float(), x.float()) + vq.loss
        if restart_every is not None:
            counts = code_usage(vq.indices.detach().cpu(), model.quantizer.num_codes)
            loss_fn.usage = counts if loss_fn.usage is None else loss_fn.usage + counts
            loss_fn.calls += 1
            if loss_fn.calls % restart_every == 0:
                moved = restart_dead_codes(model.quantizer, z_e.detach(), loss_fn.usage, threshold=threshold,
                                           generator=gen)
                loss_fn.restarts.append(int(moved.numel()))
                loss_fn.usage = None
        return loss

    loss_fn.usage, loss_fn.calls, loss_fn.restarts = None, 0, []
    return loss_fn
