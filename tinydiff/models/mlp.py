r"""Small MLPs for low-dimensional (2-D toy) data: a denoiser and a noise-conditional classifier."""

from __future__ import annotations

import torch
from torch import nn

from .. import validation as V
from .embeddings import _count, _input, _optional_count, _time_scale, _TimeLabelEmbedding

__all__ = ["MLPDenoiser", "MLPClassifier"]


class MLPDenoiser(nn.Module):
    """A residual MLP ``(x, t[, y]) -> prediction`` for low-dimensional data ``(B, dim)``.

    ``time_scale`` multiplies ``t`` before embedding: use 1 for integer steps 0..T and e.g. 1000 for
    continuous time in [0, 1]. ``num_classes`` adds a label embedding (with a null label for CFG).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 num_classes: int | None = None, time_scale: float = 1.0):
        super().__init__()
        dim, hidden, depth = _count("dim", dim), _count("hidden", hidden), _count("depth", depth, low=0)
        time_dim, num_classes = _count("time_dim", time_dim, low=2), _optional_count("num_classes", num_classes)
        if time_dim % 2:
            raise ValueError(f"time_dim (the sinusoidal embedding size) must be even; got {time_dim}")
        time_scale = _time_scale(time_scale)
        self.dim = dim
        self.embed = _TimeLabelEmbedding(time_dim, hidden, num_classes, time_scale)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        x = _input("x", x, self, ndim=2, channels=self.dim, want=f"(B, {self.dim})")
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
        num_classes = V.integer("num_classes", num_classes, low=2)
        self.body = MLPDenoiser(dim, hidden, depth, time_dim, time_scale=time_scale)
        self.body.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.body(x, t)


