r"""Attention for images (lessons 02 and 08): self-attention and cross-attention in a UNet.

Cross-attention lets image features ask questions of a text encoding:
:math:`\mathrm{Attn}(Q, K, V) = \mathrm{softmax}(QK^\top/\sqrt{d})\,V` with
:math:`Q = W_Q\,\varphi(x)` from the UNet features and :math:`K = W_K\,\tau_\theta(y)`,
:math:`V = W_V\,\tau_\theta(y)` from the conditioning tokens. The fused kernel
``torch.nn.functional.scaled_dot_product_attention`` does the work (flash / memory-efficient on a GPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as V
from .embeddings import _count, _input, _optional_count

__all__ = ["CrossAttention", "SpatialTransformer", "group_norm"]


def group_norm(channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= groups`` that divides ``channels``."""
    channels, groups = _count("channels", channels), _count("groups", groups)
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels)


class CrossAttention(nn.Module):
    """Multi-head attention of tokens ``x`` ``(B, N, query_dim)`` over ``context`` ``(B, M, context_dim)``.

    With ``context=None`` (or ``context_dim=None``) it is self-attention. Set ``store_attention = True`` to
    keep the attention weights of the last call in ``last_attention`` ``(B, heads, N, M)`` (computed
    explicitly, for plots; the default path uses the fused kernel and keeps nothing).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4, dim_head: int = 32):
        super().__init__()
        query_dim, context_dim = _count("query_dim", query_dim), _optional_count("context_dim", context_dim)
        heads, dim_head = _count("heads", heads), _count("dim_head", dim_head)
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.query_dim, self.context_dim = query_dim, context_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.store_attention = False
        self.last_attention: torch.Tensor | None = None

    def _split(self, z):
        B, L, _ = z.shape
        return z.view(B, L, self.heads, self.dim_head).transpose(1, 2)  # (B, heads, L, dim_head)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        """``mask`` ``(B, M)`` is True for context tokens that may be attended to (e.g. not padding)."""
        x = _input("x", x, self, ndim=3, channels=self.query_dim, where=2, want=f"(B, N, {self.query_dim})")
        if context is None:
            context = x  # self-attention: a mask then covers the N tokens of x
        else:
            want = self.context_dim or self.query_dim
            context = V.tensor("context", context, ndim=3, batch=x.shape[0])
            if context.shape[-1] != want:
                raise ValueError(f"context must have shape (B={x.shape[0]}, M, {want}); got {V.describe(context)}")
            context = context.to(x.dtype)
        if mask is not None:
            mask = V.tensor("mask", mask, ndim=2, floating=False, batch=x.shape[0])
            if mask.shape[1] != context.shape[1] or mask.is_floating_point():
                raise ValueError(f"mask must be a bool (B, M={context.shape[1]}) tensor (True = attend); got "
                                 f"{V.describe(mask)}")
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        if self.store_attention:
            logits = q @ k.transpose(-1, -2) / math.sqrt(self.dim_head)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            weights = logits.softmax(-1)
            self.last_attention = weights.detach()
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        B, _, N, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(B, N, self.heads * self.dim_head))


class SpatialTransformer(nn.Module):
    r"""A transformer block on a feature map: self-attention, then (optionally) cross-attention to a
    context, then an MLP, each pre-normed and residual.

    The output projection starts at zero, so at initialisation the block is exactly the identity and
    inserting it into a trained UNet changes nothing until it learns (lesson 08 checks this).
    """

    def __init__(self, channels: int, context_dim: int | None = None, heads: int = 4, dim_head: int | None = None):
        super().__init__()
        channels, heads = _count("channels", channels), _count("heads", heads)
        context_dim, dim_head = _optional_count("context_dim", context_dim), _optional_count("dim_head", dim_head)
        dim_head = dim_head or max(channels // heads, 8)
        self.channels = channels
        self.context_dim = context_dim
        self.norm = group_norm(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm1, self.attn1 = nn.LayerNorm(channels), CrossAttention(channels, None, heads, dim_head)
        if context_dim is not None:
            self.norm2, self.attn2 = nn.LayerNorm(channels), CrossAttention(channels, context_dim, heads, dim_head)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        if self.context_dim is not None and context is None:
            raise ValueError("this block cross-attends to a context: pass context=(B, M, context_dim) tokens")
        if self.context_dim is None and (context is not None or mask is not None):
            raise ValueError("this block was built without context_dim, so it cannot take context= (it would be "
                             "ignored)")
        x = _input("x", x, self, ndim=4, channels=self.channels, want=f"(B, {self.channels}, H, W)")
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = h + self.attn1(self.norm1(h))
        if self.context_dim is not None:
            h = h + self.attn2(self.norm2(h), context, mask)
        h = h + self.ff(self.norm3(h))
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))
