"""2-D toy data sets (moons, swiss roll, checkerboard, eight Gaussians), made in code."""

from __future__ import annotations

import math

import torch

from .. import validation as V
from .mixture import GaussianMixture

__all__ = ["toy_2d", "TOY_2D"]


def _moons(n, g):
    n1 = n // 2
    a = torch.rand(n1, generator=g) * math.pi
    b = torch.rand(n - n1, generator=g) * math.pi
    upper = torch.stack([a.cos(), a.sin()], 1)
    lower = torch.stack([1 - b.cos(), 0.5 - b.sin()], 1)
    x = torch.cat([upper, lower]) + 0.05 * torch.randn(n, 2, generator=g)
    return (x - torch.tensor([0.5, 0.25])) * 1.6


def _swiss_roll(n, g):
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([u * u.cos(), u * u.sin()], 1) / 5.0
    return x + 0.05 * torch.randn(n, 2, generator=g)


def _checkerboard(n, g):
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + (torch.floor(x1) % 2)
    return torch.stack([x1, x2], 1)


def _eight_gaussians(n, g):
    return GaussianMixture.ring(8, radius=2.0, std=0.15).sample(n, g)


TOY_2D = {"moons": _moons, "swiss_roll": _swiss_roll, "checkerboard": _checkerboard, "eight_gaussians": _eight_gaussians}


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points ``(n, 2)`` float32 of a 2-D toy set: one of ``moons``, ``swiss_roll``, ``checkerboard``,
    ``eight_gaussians``; roughly centred with unit scale."""
    name = V.choice("name", name, sorted(TOY_2D))
    n = V.integer("n", n, low=1)
    generator = V.generator("generator", generator)
    return TOY_2D[name](n, generator).float()


# ------------------------------------------------------------------------------------ digits
