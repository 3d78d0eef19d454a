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

from . import validation as V
from .models.attention import group_norm
from .models.embeddings import _input
from .models.unet import ResBlock

__all__ = [
    "VQOutput", "VectorQuantizer", "EMAVectorQuantizer", "VQVAE",
    "squared_distances", "nearest_code", "straight_through", "straight_through_probe",
    "codebook_loss", "commitment_loss", "vq_loss", "ema_codebook_step",
    "code_usage", "perplexity", "dead_codes", "restart_dead_codes",
    "Compression", "index_bits", "raw_bits", "compression", "vqvae_loss", "make_vqvae_loss",
    "CodePrior", "PositionPrior",
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
    z, codebook = _check_vectors(z, codebook)
    dtype = torch.promote_types(z.dtype, codebook.dtype)
    z, codebook = z.to(dtype), codebook.to(dtype)
    return (z * z).sum(1, keepdim=True) - 2 * z @ codebook.t() + (codebook * codebook).sum(1)[None, :]


def nearest_code(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    r""":math:`k_i = \arg\min_j \lVert z_i - e_j\rVert_2` for vectors ``z`` ``(N, dim)`` -> LongTensor ``(N,)``.

    Distances are computed in float32 (or wider) whatever the input dtype, with autocast switched off: in bf16 the
    argmin picks wrong codes."""
    z, codebook = _check_vectors(z, codebook)
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
    z_e, z_q = _pair("z_e", z_e, "z_q", z_q)
    return z_e + (z_q - z_e).detach()


def straight_through_probe(fn, z_e: torch.Tensor, z_q: torch.Tensor, w: torch.Tensor):
    r"""Run ``out = fn(z_e, z_q)`` and return ``(out, dL/dz_e)`` for :math:`L = \sum w \odot out`.

    Checks a straight-through implementation: the right one returns ``(z_q, w)``; returning ``z_q`` itself gives
    no gradient (reported as zeros), returning ``z_e`` the wrong value."""
    if not callable(fn):
        raise TypeError(f"fn must be a callable fn(z_e, z_q); got {V.describe(fn)}")
    z_e, z_q = _pair("z_e", z_e, "z_q", z_q)
    w = V.tensor("w", w)
    if w.shape != z_e.shape:
        raise ValueError(f"w must have the shape of z_e {tuple(z_e.shape)}; got {V.describe(w)}")
    z_e = z_e.detach().clone().requires_grad_(True)
    out = V.output("fn", fn(z_e, z_q.detach()), like=z_e, finite=False)
    if not out.requires_grad:
        return out.detach(), torch.zeros_like(z_e)
    (grad,) = torch.autograd.grad((w * out).sum(), z_e, allow_unused=True)
    return out.detach(), torch.zeros_like(z_e) if grad is None else grad


# ----------------------------------------------------------------------------------------- the losses
def codebook_loss(z_e: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    r"""The codebook term :math:`\lVert\mathrm{sg}(z_e) - e\rVert^2` (mean over entries):
    moves codes, not the encoder."""
    z_e, e = _pair("z_e", z_e, "e", e)
    return F.mse_loss(e, z_e.detach())


def commitment_loss(z_e: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    r"""The commitment term :math:`\lVert z_e - \mathrm{sg}(e)\rVert^2` (mean over entries):
    moves the encoder, not codes."""
    z_e, e = _pair("z_e", z_e, "e", e)
    return F.mse_loss(z_e, e.detach())


def vq_loss(z_e: torch.Tensor, e: torch.Tensor, beta: float = 0.25, *, placement: str = "paper") -> torch.Tensor:
    r"""The VQ loss with :math:`\beta` on the commitment term (``placement="paper"``, van den Oord et al. eq. 3):
    :math:`\lVert\mathrm{sg}(z_e) - e\rVert^2 + \beta\lVert z_e - \mathrm{sg}(e)\rVert^2`.

    ``placement="swapped"`` puts :math:`\beta` on the codebook term instead,
    :math:`\beta\lVert\mathrm{sg}(z_e) - e\rVert^2 + \lVert z_e - \mathrm{sg}(e)\rVert^2` (diffusers' ``legacy=True``
    default, kept there for old checkpoints). Both have the same *value*; their gradients differ (lesson 07, §3).
    ``e`` are the selected codes :math:`e_k` (not straight-through), same shape as ``z_e``.
    """
    beta = V.number("beta", beta, low=0.0)
    placement = V.choice("placement", placement, ("paper", "swapped"))
    if placement == "paper":
        return codebook_loss(z_e, e) + beta * commitment_loss(z_e, e)
    if placement == "swapped":
        return beta * codebook_loss(z_e, e) + commitment_loss(z_e, e)
    raise ValueError(f"placement must be 'paper' (beta on the commitment term) or 'swapped'; got {placement!r}")


# ---------------------------------------------------------------------------------------- codebook health
def code_usage(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Histogram of code indices (any shape): LongTensor ``(num_codes,)`` with the count of each code."""
    num_codes = V.integer("num_codes", num_codes, low=1)
    indices = V.tensor("indices", indices, floating=False, min_batch=0)
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
    counts = V.tensor("counts", counts, floating=False, finite=True)
    if counts.dtype == torch.bool or counts.ndim != 1 or (counts < 0).any():
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
    counts = V.tensor("counts", counts, ndim=1, floating=False)
    threshold = V.number("threshold", threshold)
    return torch.nonzero(counts < threshold).flatten()


# ------------------------------------------------------------------------------------- the quantisers
def _check_vectors(z, codebook):
    z, codebook = V.tensor("z", z, ndim=2), V.tensor("codebook", codebook, ndim=2)
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"need vectors z (N, dim) and a codebook (K, dim) with the same dim; got {tuple(z.shape)} and "
            f"{tuple(codebook.shape)}"
        )
    return z, codebook


def _pair(name_a, a, name_b, b):
    """Two real tensors of one shape (numpy converted, ints promoted, bool/complex/empty refused)."""
    a, b = V.tensor(name_a, a), V.tensor(name_b, b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def _check_sizes(num_codes, dim, beta):
    V.integer("num_codes", num_codes, low=1)  # the codebook size K
    V.integer("dim", dim, low=1)  # the length of each code vector
    V.number("beta", beta, low=0.0)  # the commitment weight, e.g. 0.25


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
        z_e = V.tensor("z_e", z_e)
        if z_e.ndim != 4 or z_e.shape[1] != self.dim:
            raise ValueError(
                f"z_e must have shape (B, dim, H, W) with dim = {self.dim} channels (this quantiser's code length); "
                f"got {tuple(z_e.shape)}. Make the encoder output {self.dim} channels, or build the quantiser with "
                f"dim={z_e.shape[1] if z_e.ndim == 4 else '...'}."
            )
        return z_e.permute(0, 2, 3, 1).reshape(-1, self.dim)

    def quantize(self, indices: torch.Tensor) -> torch.Tensor:
        """Look up the codes of an index map ``(B, H, W)``: returns :math:`z_q` ``(B, dim, H, W)``."""
        indices = V.tensor("indices", indices, floating=False).to(self.codebook.device)
        if indices.ndim != 3:
            raise ValueError(f"indices must be an index map of shape (B, H, W); got {tuple(indices.shape)}")
        code_usage(indices, self.num_codes)  # validates dtype and range
        return self.codebook[indices.long()].permute(0, 3, 1, 2).contiguous()

    def _loss(self, z_e, e):
        return vq_loss(z_e, e, self.beta)

    def _update(self, flat, idx):
        """Hook for the EMA quantiser; the plain quantiser learns its codes by gradient descent."""

    def forward(self, z_e: torch.Tensor) -> VQOutput:
        z_e = V.tensor("z_e", z_e)
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
        which, vectors = self._check_reset(which, vectors)
        self.codebook[which] = vectors.to(self.codebook)

    def _check_reset(self, which, vectors):
        which = V.tensor("which", which, ndim=1, floating=False, min_batch=0)
        if which.is_floating_point() or which.dtype == torch.bool:
            raise ValueError(f"which must hold integer code indices; got {V.describe(which)}")
        if which.numel() and (int(which.min()) < 0 or int(which.max()) >= self.num_codes):
            raise ValueError(f"which must hold code indices in 0..{self.num_codes - 1}; got values from "
                             f"{int(which.min())} to {int(which.max())}")
        vectors = V.tensor("vectors", vectors, ndim=2, min_batch=0)
        if vectors.shape != (which.shape[0], self.dim):
            raise ValueError(f"vectors must have shape (len(which), dim) = ({which.shape[0]}, {self.dim}); got "
                             f"{V.describe(vectors)}")
        return which.long().to(self.codebook.device), vectors

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
    cluster_size = V.tensor("cluster_size", cluster_size, ndim=1)
    K = cluster_size.shape[0]
    z = V.tensor("z", z, ndim=2)
    embed_sum = V.tensor("embed_sum", embed_sum, ndim=2).to(z.dtype)
    if embed_sum.shape != (K, z.shape[1]):
        raise ValueError(f"embed_sum must have shape (K, dim) = ({K}, {z.shape[1]}); got {V.describe(embed_sum)}")
    indices = V.tensor("indices", indices, ndim=1, floating=False, batch=z.shape[0])
    if indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(f"indices must hold integer code indices; got {V.describe(indices)}")
    code_usage(indices, K)  # range check
    decay = V.number("decay", decay, low=0.0, high=1.0)
    eps = V.number("eps", eps, low=0.0)
    onehot = F.one_hot(indices.long(), K).to(z.dtype)  # (N, K)
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
        decay = V.number("decay", decay, low=0.0, strict_low=True)
        if not decay < 1.0:
            raise ValueError(f"decay must lie strictly between 0 and 1 (e.g. 0.99); got {decay}")
        eps = V.number("eps", eps, low=0.0)  # the Laplace smoothing of the counts, e.g. 1e-5
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
        which, vectors = self._check_reset(which, vectors)
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
    if not isinstance(quantizer, VectorQuantizer):
        raise TypeError(f"quantizer must be a tinydiff.vq.VectorQuantizer; got {V.describe(quantizer)}")
    generator = V.generator("generator", generator)
    threshold = V.number("threshold", threshold)
    z_e_batch = V.tensor("z_e_batch", z_e_batch)
    if z_e_batch.ndim != 4 or z_e_batch.shape[1] != quantizer.dim:
        raise ValueError(f"z_e_batch must have shape (B, {quantizer.dim}, H, W); got {V.describe(z_e_batch)}")
    flat = quantizer._flatten(z_e_batch).detach().float()
    if counts is None:
        counts = code_usage(nearest_code(flat, quantizer.codebook), quantizer.num_codes)
    counts = V.tensor("counts", counts, floating=False)
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
    h, w = _hw("latent_hw", latent_hw)
    num_codes = V.number("num_codes", num_codes, low=1.0)
    return float(h * w * math.log2(num_codes))


def raw_bits(image_shape, bits_per_value: int = 8) -> float:
    """Bits of a raw image ``(C, H, W)`` at ``bits_per_value`` bits per pixel value (8 for ordinary images)."""
    C, H, W = _chw(image_shape)
    bits_per_value = V.integer("bits_per_value", bits_per_value, low=1)
    return float(C * H * W * bits_per_value)


def compression(image_shape, f: int, num_codes: int, bits_per_value: int = 8) -> Compression:
    """Bits per image of a VQ index map with downsampling factor ``f`` vs the raw image ``(C, H, W)``."""
    C, H, W = _chw(image_shape)
    f = V.integer("f", f, low=1)
    if H % f or W % f:
        raise ValueError(f"H and W ({H}, {W}) must be divisible by the downsampling factor f = {f}")
    return Compression(index_bits((H // f, W // f), num_codes), raw_bits(image_shape, bits_per_value))


def _dims(name, value, n: int, what: str) -> tuple[int, ...]:
    """``value`` as a shape of ``n`` positive sizes, or a ValueError naming ``name`` and saying it must be ``what``."""
    shape = V.shape(name, value)
    if len(shape) != n:
        raise ValueError(f"{name} must be {what}; got {V.describe(value)}")
    return shape


def _hw(name, value):
    return _dims(name, value, 2, "(h, w)")


def _chw(value):
    return _dims("image_shape", value, 3, "(C, H, W)")


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
        in_channels, hidden = V.integer("in_channels", in_channels, low=1), V.integer("hidden", hidden, low=1)
        levels = V.integer("levels", levels, low=0)  # the number of stride-2 downsamplings
        dim, num_codes = V.integer("dim", dim, low=1), V.integer("num_codes", num_codes, low=1)
        decay = V.number("decay", decay, low=0.0, strict_low=True, high=1.0)  # used by the EMA quantiser only
        if not isinstance(ema, bool):
            raise ValueError(f"ema must be True or False; got {V.describe(ema)}")
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
        H, W = _hw("image_hw", image_hw)
        return H // self.f, W // self.f

    def z_e(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output :math:`z_e(x)` ``(B, dim, H/f, W/f)``, before quantisation."""
        x = _input("x", x, self, ndim=4, channels=self.in_channels, want=f"(B, {self.in_channels}, H, W)")
        if x.shape[-1] % self.f or x.shape[-2] % self.f:
            raise ValueError(f"H and W must be divisible by f = {self.f}; got {tuple(x.shape[-2:])}")
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> VQOutput:
        return self.quantizer(self.z_e(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        dim = self.quantizer.dim
        return self.decoder(_input("z_q", z_q, self, ndim=4, channels=dim, want=f"(B, {dim}, h, w)"))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantizer.quantize(indices))

    def forward(self, x: torch.Tensor):
        vq = self.encode(x)
        return self.decode(vq.z_q), vq


def vqvae_loss(model: VQVAE, batch) -> torch.Tensor:
    r"""The VQ-VAE objective :math:`\lVert x - D(z_q)\rVert^2` (mean) + the quantiser's loss, for ``td.train.fit``.
    ``batch`` is images ``x`` or a tuple whose first entry is ``x``."""
    x = _vqvae_batch(model, batch)
    x_hat, vq = model(x)
    return F.mse_loss(x_hat.float(), x.float()) + vq.loss


def _vqvae_batch(model, batch):
    if not isinstance(model, VQVAE):
        raise TypeError(f"model must be a tinydiff.vq.VQVAE; got {V.describe(model)}")
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    x = V.tensor("batch", x)
    if x.ndim != 4 or x.shape[1] != model.in_channels:
        raise ValueError(f"batch must be images (B, {model.in_channels}, H, W) or a tuple starting with them; got "
                         f"{V.describe(x)}")
    return x


def make_vqvae_loss(restart_every: int | None = None, *, threshold: int = 1, seed: int = 0):
    """A ``loss_fn(model, batch)`` for ``td.train.fit``: :func:`vqvae_loss`, plus, every ``restart_every`` calls,
    :func:`restart_dead_codes` with the code usage counted over those calls (``None``: never restart).

    The returned function has attributes ``restarts`` (a list of how many codes each restart moved) and
    ``usage`` (the counts of the current window)."""
    if restart_every is not None:
        restart_every = V.integer("restart_every", restart_every, low=1)
    threshold = V.number("threshold", threshold)
    gen = torch.Generator().manual_seed(V.integer("seed", seed))

    def loss_fn(model, batch):
        x = _vqvae_batch(model, batch)
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


# ------------------------------------------------------------------------------ a prior over the index maps
def _grid_shape(value):
    return _dims("shape", value, 2, "the (h, w) of the index map, e.g. (4, 4)")


class _GridPrior(nn.Module):
    r"""What every prior over ``(h, w)`` index maps of ``num_codes`` codes shares. A subclass gives the conditionals
    :math:`\log p(k_i = \cdot \mid k_{<i})` in raster order (``_log_conditionals``, on flattened ``(B, h*w)`` codes,
    unchecked); this class validates inputs and derives ``log_prob``, ``loss`` and ``sample`` from them, with
    :math:`\log p(k) = \sum_i \log p(k_i \mid k_{<i})`."""

    def __init__(self, num_codes: int, shape):
        super().__init__()
        self.num_codes = V.integer("num_codes", num_codes, low=1)
        self.shape = _grid_shape(shape)
        self.length = self.shape[0] * self.shape[1]

    def _device(self):
        t = next(iter(self.parameters()), None)
        t = next(iter(self.buffers()), None) if t is None else t
        return torch.device("cpu") if t is None else t.device

    def _codes(self, indices):
        """``indices`` ``(B, h, w)`` of integer codes in ``0..K-1`` -> ``(B, h*w)`` long on this prior's device."""
        indices = V.tensor("indices", indices, floating=False)
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integer code indices (a long tensor from VQVAE.encode(x).indices); "
                             f"got {V.describe(indices)}")
        if indices.ndim != 3 or tuple(indices.shape[1:]) != self.shape:
            raise ValueError(f"indices must be index maps of shape (B, {self.shape[0]}, {self.shape[1]}) (this prior's "
                             f"grid); got {V.describe(indices)}")
        if indices.device.type != "meta" and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"indices must lie in 0..{self.num_codes - 1} (num_codes = {self.num_codes}); got values "
                             f"from {int(indices.min())} to {int(indices.max())}")
        return indices.reshape(indices.shape[0], -1).long().to(self._device())

    def _log_conditionals(self, k: torch.Tensor) -> torch.Tensor:  # (B, N) long -> (B, N, K) log-probabilities
        raise NotImplementedError

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        r"""The conditionals :math:`\log p(k_i = j \mid k_{<i})` of every position ``i`` (raster order) and code ``j``:
        ``indices`` ``(B, h, w)`` -> ``(B, h, w, K)`` log-probabilities (float32). The entry at ``i`` depends on
        the codes before ``i`` only."""
        k = self._codes(indices)
        return self._log_conditionals(k).float().reshape(k.shape[0], *self.shape, self.num_codes)

    def log_prob(self, indices: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(k) = \sum_{i=1}^{hw} \log p(k_i \mid k_{<i})` in nats, one per map: ``(B, h, w)`` -> ``(B,)``."""
        k = self._codes(indices)
        logp = self._log_conditionals(k).float()
        return logp.gather(-1, k[..., None])[..., 0].sum(1)

    def loss(self, indices: torch.Tensor) -> torch.Tensor:
        r"""The mean negative log-likelihood per code, :math:`-\frac{1}{B\,hw}\sum_b \log p(k^{(b)})` in nats (divide by
        :math:`\ln 2` for bits per code): the training loss, a scalar. Use it with ``td.train.fit`` as
        ``lambda prior, k: prior.loss(k)``."""
        return -self.log_prob(indices).mean() / self.length

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, temperature: float = 1.0,
               device=None, u: torch.Tensor | None = None) -> torch.Tensor:
        r"""Draw ``n`` index maps ``(n, h, w)`` (long) by ancestral sampling in raster order: for ``i = 1..hw``,
        :math:`k_i \sim p(\cdot \mid k_{<i})^{1/\tau}` (renormalised; ``temperature`` :math:`\tau`, 1 = the model).

        Runs on the prior's device (``device`` must be it, if given). The uniforms of the inverse-CDF draws come from
        ``generator`` on the CPU and are moved, so a seed gives the same maps on every device (up to float rounding).
        ``u`` ``(n, h, w)``: the uniforms in :math:`[0, 1)` to use instead of drawing them (the inverse CDF picks
        :math:`k_i = \min\{j : F_i(j) > u_i\}`, :math:`F_i` the cumulative conditional). No host syncs inside the loop."""
        n = V.integer("n", n, low=1)
        generator = V.generator("generator", generator)
        temperature = V.number("temperature", temperature, low=0.0, strict_low=True)
        here = self._device()
        if device is not None:
            try:
                want = torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda'; got {V.describe(device)}") \
                    from None
            if want.type != here.type or (want.index is not None and here.index is not None and want != here):
                raise ValueError(f"device must be the prior's device ({here}) or None: sampling runs where the model "
                                 f"is; got {want}. Move the prior with .to({str(want)!r}) first.")
        if u is None:
            u = torch.rand(n, self.length, generator=generator, dtype=torch.float64)
        else:
            u = V.tensor("u", u)
            if tuple(u.shape) != (n, *self.shape):
                raise ValueError(f"u must have shape (n, h, w) = ({n}, {self.shape[0]}, {self.shape[1]}); got "
                                 f"{V.describe(u)}")
            if u.device.type != "meta" and not bool(((u >= 0) & (u < 1)).all()):
                raise ValueError(f"u must hold uniforms in [0, 1); got values from {u.min().item():g} to "
                                 f"{u.max().item():g}")
            u = u.reshape(n, -1).double()
        u = u.to(here)
        k = torch.zeros(n, self.length, dtype=torch.long, device=here)
        was_training = self.training
        self.eval()
        try:
            for i in range(self.length):
                logits = self._log_conditionals(k)[:, i].double() / temperature
                cdf = torch.softmax(logits, -1).cumsum(-1)
                k[:, i] = (cdf < u[:, i:i + 1] * cdf[:, -1:]).sum(-1)  # inverse CDF: k_i = min{j: F(j) > u}
        finally:
            self.train(was_training)
        return k.reshape(n, *self.shape)

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, shape={self.shape}"


class PositionPrior(_GridPrior):
    r"""The per-position independent prior :math:`p(k) = \prod_i p_i(k_i)`: each position has its own distribution
    over the codes and ignores the others. Built uniform, :math:`p_i(j) = 1/K` (the prior of the VQ-VAE paper's
    training, :math:`\log K` nats per code); :meth:`fit_counts` sets :math:`p_i` to the smoothed frequencies of a set
    of index maps. The baseline a learned autoregressive prior (:class:`CodePrior`) has to beat."""

    def __init__(self, num_codes: int, shape):
        super().__init__(num_codes, shape)
        self.register_buffer("logits", torch.zeros(self.length, self.num_codes))

    @torch.no_grad()
    def fit_counts(self, indices: torch.Tensor, alpha: float = 0.5) -> PositionPrior:
        r"""Set :math:`p_i(j) = (n_{ij} + \alpha) / (n + K\alpha)` from the counts :math:`n_{ij}` of code ``j`` at
        position ``i`` in ``indices`` ``(n, h, w)`` (add-:math:`\alpha` smoothing, so an unseen code keeps a
        finite log-probability). Returns the prior itself."""
        alpha = V.number("alpha", alpha, low=0.0, strict_low=True)
        k = self._codes(indices)
        counts = F.one_hot(k, self.num_codes).sum(0).double()  # (N, K)
        probs = (counts + alpha) / (k.shape[0] + self.num_codes * alpha)
        self.logits.copy_(probs.log().to(self.logits))
        return self

    def _log_conditionals(self, k):
        return torch.log_softmax(self.logits, -1).expand(k.shape[0], -1, -1)


class _CausalBlock(nn.Module):
    """Pre-norm transformer block with causal self-attention: x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(B, N, D)), self.dropout, self.training)
        return x + self.mlp(self.norm2(x))


class CodePrior(_GridPrior):
    r"""A learned autoregressive prior over VQ-VAE index maps (van den Oord et al. 2017, §3.2: the prior is fitted
    to the codes after the VQ-VAE is trained, then sampled and decoded to generate).

    The map ``(h, w)`` is read in raster order :math:`k_1, \dots, k_{hw}` and factorised exactly as

    .. math::  p(k) = \prod_{i=1}^{hw} p(k_i \mid k_{<i}),

    each conditional given by a small causal transformer (the paper uses a PixelCNN; a transformer is the choice
    of later work): position ``i`` sees a start token and the codes :math:`k_{<i}`, shifted by one, through causal
    self-attention, so its output cannot depend on :math:`k_{\ge i}`. ``dim`` (width, divisible by ``heads``),
    ``layers``, ``heads``, ``dropout`` size it.

    - ``prior(indices)`` -> ``(B, h, w, K)`` log-conditionals; ``log_prob(indices)`` -> ``(B,)`` nats;
    - ``loss(indices)`` -> mean NLL per code in nats (train with ``td.train.fit(prior, lambda m, k: m.loss(k), codes)``);
    - ``sample(n, generator=..., temperature=...)`` -> ``(n, h, w)`` long, decoded by ``VQVAE.decode_indices``.
    """

    def __init__(self, num_codes: int, shape, *, dim: int = 64, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__(num_codes, shape)
        dim, layers = V.integer("dim", dim, low=1), V.integer("layers", layers, low=1)
        heads = V.integer("heads", heads, low=1)
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads; got dim={dim}, heads={heads}")
        dropout = V.number("dropout", dropout, low=0.0, high=1.0)
        if dropout >= 1.0:
            raise ValueError(f"dropout must lie in [0, 1); got {dropout}")
        self.dim, self.layers, self.heads, self.dropout = dim, layers, heads, dropout
        self.embed = nn.Embedding(self.num_codes + 1, dim)  # code j at index j; the start token at index K
        self.pos = nn.Parameter(torch.zeros(self.length, dim))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(_CausalBlock(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.num_codes)

    def _log_conditionals(self, k):
        start = torch.full_like(k[:, :1], self.num_codes)
        h = self.embed(torch.cat([start, k[:, :-1]], 1)) + self.pos  # position i sees (start, k_1, ..., k_{i-1})
        h = F.dropout(h, self.dropout, self.training)
        for block in self.blocks:
            h = block(h)
        return torch.log_softmax(self.head(self.norm(h)).float(), -1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dim={self.dim}, layers={self.layers}, heads={self.heads}"
