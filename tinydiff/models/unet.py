r"""The small UNet of the image lessons (ResBlocks, optional self/cross-attention, time and label conditioning).

Models are separate from algorithms: every sampler and loss takes a callable, and a model is just one
callable that can be plugged in (``model(x, t)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import validation as V
from .attention import SpatialTransformer, group_norm
from .embeddings import _count, _input, _optional_count, _time_scale, _TimeLabelEmbedding

__all__ = ["UNet", "ResBlock"]


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the (time[, label]) embedding, → GroupNorm → SiLU → dropout → conv, plus a skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        cin, cout, emb_dim = _count("cin", cin), _count("cout", cout), _count("emb_dim", emb_dim)
        dropout = _dropout(dropout)
        self.cin, self.emb_dim = cin, emb_dim
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.drop = group_norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        dtype = self.conv1.weight.dtype
        if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == self.cin and x.dtype == dtype):
            x = _input("x", x, self, ndim=4, channels=self.cin, want=f"(B, {self.cin}, H, W)")
        if not (isinstance(emb, torch.Tensor) and emb.shape == (x.shape[0], self.emb_dim) and emb.dtype == dtype):
            emb = V.tensor("emb", emb, ndim=2, batch=x.shape[0]).to(dtype)
            if emb.shape[1] != self.emb_dim:
                raise ValueError(f"emb must have shape (B, {self.emb_dim}); got {V.describe(emb)}")
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


def _dropout(p):
    p = V.number("dropout", p, low=0.0)
    if p >= 1.0:
        raise ValueError(f"dropout must lie in [0, 1); got {p}")
    return p


def _ints(name, value, *, low, high=None, nonempty=False):
    """A tuple of ints in ``low..high`` such as ``channel_mults=(1, 2)`` or ``attn_levels=(1,)``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a tuple of ints like (1, 2); got {V.describe(value)}")
    out = tuple(V.integer(name, v, low=low, high=high) for v in value)
    if nonempty and not out:
        raise ValueError(f"{name} must hold at least one level; got ()")
    return out


def _context(context, mask, batch, dim):
    """Check cross-attention tokens ``(B, M, dim)`` and their mask ``(B, M)`` (metadata only)."""
    context = V.tensor("context", context, ndim=3, batch=batch)
    if context.shape[-1] != dim:
        raise ValueError(f"context must have shape (B, M, {dim}); got {V.describe(context)}")
    if mask is not None:
        mask = V.tensor("context_mask", mask, ndim=2, floating=False, batch=batch)
        if mask.shape != context.shape[:2] or mask.is_floating_point():
            raise ValueError(f"context_mask must be a bool (B, M) = {tuple(context.shape[:2])} tensor; got "
                             f"{V.describe(mask)}")
    return context


class UNet(nn.Module):
    """A small UNet ``(x, t[, y][, context]) -> prediction`` for images ``(B, C, H, W)``.

    Args:
        in_channels, out_channels: image channels (``out_channels`` defaults to ``in_channels``).
        base_channels: channels at full resolution; level ``i`` has ``base_channels * channel_mults[i]``.
        num_res_blocks: ResBlocks per level.
        attn_levels: levels (0 = full resolution) that get a :class:`SpatialTransformer` after each ResBlock;
            the middle block always gets one when ``attn_levels`` is non-empty.
        num_classes: adds a label embedding to the time embedding (label ``num_classes`` = "no label").
        context_dim: makes the attention blocks cross-attend to ``context`` ``(B, M, context_dim)`` (lesson 08).
        time_scale: ``t`` is multiplied by it before embedding (1 for steps 0..T, 1000 for t in [0, 1]).
    H and W must be divisible by ``2 ** (len(channel_mults) - 1)``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, base_channels: int = 32,
                 channel_mults=(1, 2), num_res_blocks: int = 1, attn_levels=(), num_classes: int | None = None,
                 context_dim: int | None = None, heads: int = 4, dropout: float = 0.0, time_scale: float = 1.0):
        super().__init__()
        in_channels, base_channels = _count("in_channels", in_channels), _count("base_channels", base_channels)
        out_channels = _optional_count("out_channels", out_channels)
        channel_mults = _ints("channel_mults", channel_mults, low=1, nonempty=True)
        num_res_blocks, heads = _count("num_res_blocks", num_res_blocks), _count("heads", heads)
        attn_levels = _ints("attn_levels", attn_levels, low=0, high=len(channel_mults) - 1)
        num_classes, context_dim = _optional_count("num_classes", num_classes), _optional_count("context_dim", context_dim)
        dropout, time_scale = _dropout(dropout), _time_scale(time_scale)
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.levels = len(channel_mults)
        self.context_dim = context_dim
        emb_dim = 4 * base_channels
        self.embed = _TimeLabelEmbedding(base_channels, emb_dim, num_classes, time_scale)
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def attn(ch):
            return SpatialTransformer(ch, context_dim, heads)

        chans = [base_channels]
        ch = base_channels
        self.down = nn.ModuleList()
        for i, m in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                layer = nn.ModuleList([ResBlock(ch, base_channels * m, emb_dim, dropout)])
                ch = base_channels * m
                if i in attn_levels:
                    layer.append(attn(ch))
                self.down.append(layer)
                chans.append(ch)
            if i < self.levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                chans.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout)] + ([attn(ch)] if attn_levels else [])
                                 + [ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                layer = nn.ModuleList([ResBlock(ch + chans.pop(), base_channels * m, emb_dim, dropout)])
                ch = base_channels * m
                if i in attn_levels:
                    layer.append(attn(ch))
                self.up.append(layer)
            if i > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, self.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _run_layer(self, layer, h, emb, context, mask):
        for mod in layer:
            if isinstance(mod, ResBlock):
                h = mod(h, emb)
            elif isinstance(mod, SpatialTransformer):
                h = mod(h, context, mask)
            else:
                h = mod(h)
        return h

    def forward(self, x: torch.Tensor, t, y=None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = _input("x", x, self, ndim=4, channels=self.in_channels, want=f"(B, {self.in_channels}, H, W)")
        f = 2 ** (self.levels - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"H and W must be divisible by {f} for this {self.levels}-level UNet; got {tuple(x.shape[-2:])}")
        if self.context_dim is not None and context is None:
            raise ValueError("this UNet was built with context_dim, so it needs context=(B, M, context_dim)")
        if self.context_dim is None and (context is not None or context_mask is not None):
            raise ValueError("this UNet was built without context_dim, so it cannot take context= (it would be "
                             "ignored): build it with context_dim=... to cross-attend to a context")
        if context is not None:
            context = _context(context, context_mask, x.shape[0], self.context_dim)
        emb = self.embed(t, y, x.shape[0], x.device)
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = self._run_layer(layer, h, emb, context, context_mask)
            skips.append(h)
        h = self._run_layer(self.mid, h, emb, context, context_mask)
        for layer in self.up:
            if isinstance(layer[0], ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run_layer(layer, h, emb, context, context_mask)
        return self.out(h)


