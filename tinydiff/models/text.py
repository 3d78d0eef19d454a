r"""The text encoder :math:`\tau_\theta` of latent diffusion (lesson 08): token ids -> a sequence of vectors.

:math:`\tau_\theta(y)\in\mathbb R^{M\times d_\tau}` is what the UNet's cross-attention reads as keys and
values (:math:`K = W_K\,\tau_\theta(y)`, :math:`V = W_V\,\tau_\theta(y)`). Here it is tiny: token plus
position embeddings and a couple of (unmasked, bidirectional) transformer encoder layers, trained
jointly with the UNet through the diffusion loss, as in the LDM paper's eq. (3).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import validation as V
from .embeddings import _count

__all__ = ["TextEncoder"]


class TextEncoder(nn.Module):
    r"""``(ids (B, M), mask (B, M)) -> tokens (B, M, dim)``: :math:`\tau_\theta(y)`.

    Padding (``mask`` False) is ignored by every attention layer, and the output is zero at padded
    positions, so changing a padded token changes nothing downstream.
    """

    def __init__(self, vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4, max_len: int = 8):
        super().__init__()
        vocab_size, dim, layers = _count("vocab_size", vocab_size), _count("dim", dim), _count("layers", layers)
        heads, max_len = _count("heads", heads), _count("max_len", max_len)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.vocab_size, self.dim, self.max_len = vocab_size, dim, max_len
        self.token = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        ids = V.tensor("ids", ids, ndim=2, floating=False)
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.shape[1] == 0:
            raise ValueError(f"ids must be a LongTensor (B, M) of token ids; got {V.describe(ids)}")
        ids = ids.long()
        if ids.shape[1] > self.max_len:
            raise ValueError(f"at most max_len={self.max_len} tokens; got {ids.shape[1]}")
        if int(ids.max()) >= self.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1} (the tokenizer's vocabulary)")
        if mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        mask = V.tensor("mask", mask, floating=False)
        if mask.shape != ids.shape or mask.is_floating_point():
            raise ValueError(f"mask must be a bool tensor of the shape of ids {tuple(ids.shape)}; got {V.describe(mask)}")
        if not bool(mask.any(1).all()):
            raise ValueError("every caption needs at least one real token (mask all False); encode '' as [<bos>]")
        mask = mask.bool()
        h = self.token(ids) + self.pos[: ids.shape[1]]
        h = self.layers(h, src_key_padding_mask=~mask)
        return self.norm(h) * mask[..., None]
