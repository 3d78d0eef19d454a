"""Small helpers shared by every lesson: the device choice, seeding, and input checks.

There is exactly one place that decides where tensors live (:func:`device`), so no notebook or
module ever hard-codes ``.cuda()``.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = [
    "device",
    "seed_everything",
    "expand_to",
    "as_timesteps",
    "check_same_shape",
    "progress",
    "start_noise",
    "noise_like",
    "device_of",
    "Trajectory",
]


def device() -> torch.device:
    """The device every lesson uses: ``$TINYDIFF_DEVICE`` if set, else CUDA, else Apple MPS, else CPU."""
    name = os.environ.get("TINYDIFF_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a fresh CPU ``torch.Generator`` seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def expand_to(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient ``(B,)`` (or a scalar) so it broadcasts against ``x`` ``(B, ...)``.

    The coefficient is cast to ``x``'s dtype and device: schedules are stored in float64 and cast here,
    where they are used.
    """
    coef = torch.as_tensor(coef)
    coef = coef.to(device=x.device, dtype=x.dtype if x.is_floating_point() else coef.dtype)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"a per-sample coefficient must have shape (B,) with B = {x.shape[0]} (the batch of x), "
            f"got shape {tuple(coef.shape)}"
        )
    return coef.reshape(-1, *([1] * (x.ndim - 1)))


def as_timesteps(t, batch: int, T: int, *, low: int = 0, name: str = "t") -> torch.Tensor:
    """Validate integer timesteps and return them as a LongTensor of shape ``(batch,)``.

    ``t`` may be a Python int (broadcast to the batch) or an integer tensor of shape ``(batch,)``.
    Raises ``ValueError`` with a readable message if a value lies outside ``[low, T]``.
    """
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(
            f"{name} must hold integer timesteps in {low}..{T}; got dtype {t.dtype}. "
            f"Use torch.full((B,), t, dtype=torch.long) or torch.randint(...)."
        )
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch},) to match the batch, got {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < low or int(t.max()) > T):
        raise ValueError(
            f"{name} must lie in {low}..{T} (this schedule has T = {T}); got values from "
            f"{int(t.min())} to {int(t.max())}"
        )
    return t.long()


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the culprits if the given tensors do not all have one shape."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k}: {s}" for k, s in shapes.items())
        raise ValueError(f"shape mismatch: these tensors must have the same shape, got {desc}")


def progress(iterable=None, *, total=None, desc=None, disable=False, **kwargs):
    """A text progress bar (tqdm) that renders both in a terminal and in a saved notebook.

    Set ``TINYDIFF_PROGRESS=0`` to silence every bar (the test suite does).
    """
    from tqdm.std import tqdm

    if os.environ.get("TINYDIFF_PROGRESS", "1") == "0":
        disable = True
    return tqdm(iterable, total=total, desc=desc, disable=disable, mininterval=1.0, ncols=90, **kwargs)


def start_noise(shape, *, generator: torch.Generator | None = None, device=None, x_T: torch.Tensor | None = None):
    r"""The starting point of a sampler, :math:`x_T\sim\mathcal N(0, I)` of ``shape``, drawn on the CPU from
    ``generator`` and moved to ``device`` (so a seed gives the same samples on every machine); or ``x_T`` itself,
    checked against ``shape`` and moved to ``device``."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if x_T is None:
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device)
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)} was requested")
    return x_T.to(device)


def noise_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape and dtype, drawn on the CPU from ``generator``, moved to ``x``'s device."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def device_of(fn, x_T: torch.Tensor | None = None) -> torch.device:
    """Where a sampler runs: the device of ``x_T`` if given, else of the denoiser ``fn``, else :func:`device`.

    The denoiser's device is found on an ``nn.Module`` (its first parameter or buffer), on a bound method of one
    (``model.forward``), on a ``functools.partial``, on an attribute ``fn.device``, or on an ``nn.Module`` or
    ``Denoiser`` captured by a closure (``lambda x, t: model(x, t)``), looked up one level deep.
    """
    if x_T is not None:
        return x_T.device
    found = _device_of(fn)
    if found is None:
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                found = _device_of(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
            if found is not None:
                break
    return found if found is not None else device()


def _device_of(obj):
    import functools

    from torch import nn

    if isinstance(obj, functools.partial):
        obj = obj.func
    obj = getattr(obj, "__self__", obj)  # a bound method -> its object
    if isinstance(obj, nn.Module):
        for t in obj.parameters():
            return t.device
        for t in obj.buffers():
            return t.device
        return None
    dev = getattr(obj, "device", None)
    if isinstance(dev, (torch.device, str)) and not isinstance(obj, torch.Tensor):
        return torch.device(dev)
    return None


class Trajectory:
    """A ready-made sampler ``callback`` that keeps every state: ``traj = Trajectory(); sample(..., callback=traj)``.

    Every sampler calls ``callback(i, t, x)`` with ``i = 0`` for the start point and ``i = 1..n_steps`` after each
    step (``t`` the time reached). The states are kept on their device (no host copy in the loop); ``traj.xs`` is the
    list, ``traj.ts`` the times, ``traj.stack()`` one CPU tensor ``(n_steps + 1, *shape)``. ``every=k`` keeps only
    the states with ``i % k == 0`` (the final state is the sampler's return value).
    """

    def __init__(self, every: int = 1):
        self.every = max(1, int(every))
        self.xs: list[torch.Tensor] = []
        self.ts: list = []

    def __call__(self, i: int, t, x: torch.Tensor) -> None:
        if i % self.every == 0:
            self.xs.append(x.detach().clone())
            self.ts.append(t)

    def stack(self) -> torch.Tensor:
        return torch.stack([x.cpu() for x in self.xs])

    def __len__(self) -> int:
        return len(self.xs)
