r"""Embeddings shared by the networks: the sinusoidal timestep embedding and the time(+label) embedding MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["timestep_embedding"]


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


