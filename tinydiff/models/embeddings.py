r"""Embeddings shared by the networks: the sinusoidal timestep embedding and the time(+label) embedding MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import validation as V

__all__ = ["timestep_embedding"]


def _count(name, value, low=1):
    """A size argument of a constructor: an int >= ``low`` (bool, float and str refused, naming the argument)."""
    return V.integer(name, value, low=low)


def _optional_count(name, value, low=1):
    return None if value is None else V.integer(name, value, low=low)


def _time_scale(value):
    return V.number("time_scale", value, low=0.0, strict_low=True)


def _input(name, x, module, *, ndim, channels=None, where=1, want=None):
    """Check a network input: a real tensor of rank ``ndim`` (numpy converted, integers promoted, bool and complex
    refused, at least one sample) whose dimension ``where`` is ``channels``; cast to the network's dtype (so a
    float16 or float64 batch runs through a float32 network). Metadata only: no host sync."""
    x = V.tensor(name, x, ndim=ndim)
    if channels is not None and x.shape[where] != channels:
        raise ValueError(f"{name} must have shape {want}; got {V.describe(x)}")
    weight = next(module.parameters(), None)
    if weight is not None and x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    return x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    r"""Sinusoidal embedding of (possibly fractional) timesteps ``t`` ``(B,)`` -> ``(B, dim)``:
    :math:`[\cos(t\,\omega_i), \sin(t\,\omega_i)]` with :math:`\omega_i = P^{-i/(dim/2)}`, :math:`i = 0..dim/2-1`
    (the Transformer's position encoding, applied to the noise level)."""
    dim = V.integer("dim", dim, low=2)
    if dim % 2:
        raise ValueError(f"dim (the embedding dimension) must be even; got {dim}")
    max_period = V.number("max_period", max_period, low=1.0, strict_low=True)
    t = _timesteps(t)
    if t.ndim > 1:
        raise ValueError(f"t must be a number or a 1-d tensor (B,) of timesteps; got {V.describe(t)}")
    t = t.to(torch.float32).reshape(-1)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def _timesteps(t, device=None):
    """``t`` as a real tensor (a number, a tensor or a numpy array); bool, complex, None and strings refused."""
    if isinstance(t, (bool, str)) or t is None or isinstance(t, complex):
        raise TypeError(f"t must be timesteps: a number or a tensor of shape (B,); got {V.describe(t)}")
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"t must be timesteps: a number or a tensor of shape (B,); got {V.describe(t)}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"t must hold real timesteps; got {V.describe(t)}")
    return t if device is None else t.to(device)


class _TimeLabelEmbedding(nn.Module):
    """Time embedding MLP plus an optional class embedding with a null label (index ``num_classes``)."""

    def __init__(self, freq_dim: int, emb_dim: int, num_classes: int | None, time_scale: float):
        super().__init__()
        self.freq_dim, self.time_scale, self.num_classes = freq_dim, time_scale, num_classes
        self.mlp = nn.Sequential(nn.Linear(freq_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

    def forward(self, t, y, batch: int, device):
        t = _timesteps(t, device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},) to match the batch; got {tuple(t.shape)}")
        freqs = timestep_embedding(t.float() * self.time_scale, self.freq_dim)
        emb = self.mlp(freqs.to(self.mlp[0].weight.dtype))  # follow the model's dtype (e.g. after .double())
        if self.label is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)  # the null label
            if isinstance(y, (bool, str, float)) or not isinstance(y, (int, torch.Tensor)) and not hasattr(y, "__len__"):
                raise TypeError(f"y must be class indices (B,); got {V.describe(y)}")
            y = torch.as_tensor(y, device=device)
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise ValueError(f"y must hold integer class indices; got {V.describe(y)}")
            y = y.long().expand(batch) if y.ndim == 0 else y.long()
            if y.shape != (batch,) or (y < 0).any() or (y > self.num_classes).any():
                raise ValueError(
                    f"y must be ({batch},) class indices in 0..{self.num_classes - 1}, "
                    f"or {self.num_classes} for 'no label'; got {tuple(y.shape)}"
                )
            emb = emb + self.label(y)
        elif y is not None:
            raise ValueError("this model was built without num_classes, so it cannot take a label y")
        return emb


