r"""A small, optionally noise-conditional, image classifier (guidance, lesson 06; the judge of sample quality)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import group_norm
from .embeddings import _count, _input, _time_scale, _TimeLabelEmbedding
from .unet import ResBlock

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """A small convolutional classifier for images; with ``time_conditional=True`` it also takes ``t`` and
    models :math:`p_\\phi(y\\mid x_t, t)` on noised images (classifier guidance, lesson 06).

    ``features(x[, t])`` returns the pooled penultimate features (for feature-space distances, lesson 03).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, base_channels: int = 32,
                 time_conditional: bool = False, time_scale: float = 1.0):
        super().__init__()
        in_channels, num_classes = _count("in_channels", in_channels), _count("num_classes", num_classes)
        base_channels, time_scale = _count("base_channels", base_channels), _time_scale(time_scale)
        if not isinstance(time_conditional, bool):
            raise ValueError(f"time_conditional must be True or False; got {time_conditional!r}")
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
        x = _input("x", x, self, ndim=4, channels=self.in_channels, want=f"(B, {self.in_channels}, H, W)")
        if self.time_conditional:
            if t is None:
                raise ValueError("this classifier is noise-conditional: pass the timestep t")
            emb = self.embed(t, None, x.shape[0], x.device)
        elif t is not None:
            raise ValueError("this classifier was built with time_conditional=False, so it cannot take t (it would be "
                             "ignored): build it with time_conditional=True for noised images")
        else:
            emb = x.new_zeros(x.shape[0], 2 * self._c)
        h = self.block1(self.conv1(x), emb)
        h = self.block2(self.down(h), emb)
        return F.silu(self.norm(h)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        return self.head(self.features(x, t))
