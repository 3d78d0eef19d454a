r"""Networks: the sinusoidal timestep embedding, an MLP denoiser for 2-D data, a small UNet for images,
and a small (optionally noise-conditional) image classifier.

Models are separate from algorithms: every sampler and loss takes a callable, and a model is just one
callable that can be plugged in (``model(x, t)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer, group_norm

__all__ = ["timestep_embedding", "MLPDenoiser", "MLPClassifier", "UNet", "ResBlock", "Classifier"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    r"""Sinusoidal embedding of (possibly fractional) timesteps ``t`` ``(B,)`` -> ``(B, dim)``:
    :math:`[\cos(t\,\omega_i), \sin(t\,\omega_i)]` with :math:`\omega_i = P^{-i/(dim/2)}`, :math:`i = 0..dim/2-1`
    (the Transformer's position encoding, applied to the noise level)."""
    if dim % 2:
        raise ValueError(f"the embedding dimension must be even; got {dim}")
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class _TimeLabelEmbedding(nn.Module):
    """Time embedding MLP plus an optional class embedding with a null label (index ``num_classes``)."""

    def __init__(self, freq_dim: int, emb_dim: int, num_classes: int | None, time_scale: float):
        super().__init__()
        self.freq_dim, self.time_scale, self.num_classes = freq_dim, time_scale, num_classes
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

    def forward(self, t, y, batch: int, device):
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) to match the batch; got {tuple(t.shape)}")
        freqs = timestep_embedding(t.float() * self.time_scale, self.freq_dim)
        emb = self.mlp(freqs.to(self.mlp[0].weight.dtype))  # follow the model's dtype (e.g. after .double())
        if self.label is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)  # the null label
            y = torch.as_tensor(y, device=device).long()
            if y.shape != (batch,) or (y < 0).any() or (y > self.num_classes).any():
                raise ValueError(
                    f"y must be ({batch},) class indices in 0..{self.num_classes - 1}, "
                    f"or {self.num_classes} for 'no label'; got {tuple(y.shape)}"
                )
            emb = emb + self.label(y)
        elif y is not None:
            raise ValueError("this model was built without num_classes, so it cannot take a label y")
        return emb


class MLPDenoiser(nn.Module):
    """A residual MLP ``(x, t[, y]) -> prediction`` for low-dimensional data ``(B, dim)``.

    ``time_scale`` multiplies ``t`` before embedding: use 1 for integer steps 0..T and e.g. 1000 for
    continuous time in [0, 1]. ``num_classes`` adds a label embedding (with a null label for CFG).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 num_classes: int | None = None, time_scale: float = 1.0):
        super().__init__()
        self.dim = dim
        self.embed = _TimeLabelEmbedding(time_dim, hidden, num_classes, time_scale)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}); got {tuple(x.shape)}")
        emb = self.embed(t, y, x.shape[0], x.device)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


class MLPClassifier(nn.Module):
    r"""A small noise-conditional classifier :math:`p_\phi(y\mid x_t, t)` for low-dimensional data ``(B, dim)``:
    the residual MLP of :class:`MLPDenoiser` with a classification head, returning logits ``(B, num_classes)``.
    (The image counterpart is :class:`Classifier` with ``time_conditional=True``.)"""

    def __init__(self, dim: int = 2, num_classes: int = 2, hidden: int = 128, depth: int = 2, time_dim: int = 32,
                 time_scale: float = 1.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2; got {num_classes}")
        self.body = MLPDenoiser(dim, hidden, depth, time_dim, time_scale=time_scale)
        self.body.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.body(x, t)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the (time[, label]) embedding, → GroupNorm → SiLU → dropout → conv, plus a skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.drop = group_norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


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
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        f = 2 ** (self.levels - 1)
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"H and W must be divisible by {f} for this {self.levels}-level UNet; got {tuple(x.shape[-2:])}")
        if self.context_dim is not None and context is None:
            raise ValueError("this UNet was built with context_dim, so it needs context=(B, M, context_dim)")
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


class Classifier(nn.Module):
    """A small convolutional classifier for images; with ``time_conditional=True`` it also takes ``t`` and
    models :math:`p_\\phi(y\\mid x_t, t)` on noised images (classifier guidance, lesson 06).

    ``features(x[, t])`` returns the pooled penultimate features (for feature-space distances, lesson 03).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, base_channels: int = 32,
                 time_conditional: bool = False, time_scale: float = 1.0):
        super().__init__()
        self.in_channels, self.time_conditional = in_channels, time_conditional
        c = base_channels
        self.embed = _TimeLabelEmbedding(c, 2 * c, None, time_scale) if time_conditional else None
        self.conv1 = nn.Conv2d(in_channels, c, 3, padding=1)
        self.block1 = ResBlock(c, c, 2 * c)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.block2 = ResBlock(2 * c, 2 * c, 2 * c)
        self.norm = group_norm(2 * c)
        self.head = nn.Linear(2 * c, num_classes)
        self._c = c

    def features(self, x: torch.Tensor, t=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        if self.time_conditional:
            if t is None:
                raise ValueError("this classifier is noise-conditional: pass the timestep t")
            emb = self.embed(t, None, x.shape[0], x.device)
        else:
            emb = x.new_zeros(x.shape[0], 2 * self._c)
        h = self.block1(self.conv1(x), emb)
        h = self.block2(self.down(h), emb)
        return F.silu(self.norm(h)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        return self.head(self.features(x, t))
