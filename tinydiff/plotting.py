"""Plotting helpers: image grids, 2-D scatters and densities, vector fields, trajectories, and a
denoising animation with a static fallback. Every function draws on ``ax`` if given and returns it."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import validation as V

__all__ = ["image_grid", "show_images", "scatter2d", "density2d", "vector_field", "trajectories2d", "animate_frames"]


def _ax(ax):
    if ax is not None:
        from matplotlib.axes import Axes

        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes or None; got {V.describe(ax)}")
    return ax


def _lim(lim, optional: bool = False):
    if lim is None and optional:
        return None
    return V.number("lim", lim, low=0, strict_low=True)


def _points_tensor(name: str, x) -> torch.Tensor:
    return V.reals(name, x).float().cpu()


def _fn_output(name: str, out, numel: int, cols: int | None = None) -> torch.Tensor:
    if out is None:
        raise TypeError(f"{name} returned None: did it forget to `return` its values?")
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor; it returned {V.describe(out)}")
    want = (numel,) if cols is None else (numel, cols)
    if (cols is None and out.numel() != numel) or (cols is not None and tuple(out.shape) != want):
        raise ValueError(f"{name} must return shape {want} for the {numel} grid points; it returned {V.describe(out)}")
    return out


def image_grid(x: torch.Tensor, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """Tile images ``(B, C, H, W)`` in ``[-1, 1]`` into one ``(rows*H, nrow*W, C)`` array in ``[0, 1]``."""
    x = _points_tensor("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be images of shape (B, C, H, W); got {tuple(x.shape)}")
    nrow = V.integer("nrow", nrow, low=1)
    pad = V.integer("pad", pad, low=0)
    B, C, H, W = x.shape
    x = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    nrow = max(1, min(nrow, B))
    rows = (B + nrow - 1) // nrow
    grid = np.ones((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), dtype=np.float32)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i]
    return grid


def show_images(x: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, pad: int = 1):
    """Show a grid of images in ``[-1, 1]`` (grey for one channel, RGB for three)."""
    _ax(ax)
    x = _points_tensor("x", x)
    grid = image_grid(x, nrow, pad)
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, 0.6 * grid.shape[1] / (x.shape[-1] + pad) + 1),) * 2)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def scatter2d(x: torch.Tensor, ax=None, title: str | None = None, lim: float | None = 3.5, s: float = 2,
              alpha: float = 0.5, **kwargs):
    """Scatter 2-D points ``(N, 2)`` with equal axes."""
    x = _points_tensor("x", x)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"x must be 2-D points of shape (N, 2); got {tuple(x.shape)}")
    _ax(ax)
    lim = _lim(lim, optional=True)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, **kwargs)
    return _square(ax, lim, title)


def _square(ax, lim, title):
    """Equal axes on ``[-lim, lim]^2`` (unless ``lim`` is None) and an optional title."""
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def _grid(lim, n):
    u = torch.linspace(-lim, lim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(u, u, indexing="xy")
    return gx, gy, torch.stack([gx.flatten(), gy.flatten()], 1)


def density2d(log_prob_fn, ax=None, lim: float = 3.5, n: int = 150, title: str | None = None, cmap="viridis", *,
              colorbar: bool = False, vmin=None, vmax=None, label: str | None = None):
    """Image of the density ``exp(log_prob_fn(points))`` on ``[-lim, lim]^2``. ``colorbar=True`` adds a colour bar
    (titled ``label``); ``vmin``/``vmax`` fix the colour scale (e.g. 0 and 1 for probabilities shared by panels)."""
    if not callable(log_prob_fn):
        raise TypeError(f"log_prob_fn must be a callable log_prob_fn(points (M, 2)) -> (M,); got "
                        f"{V.describe(log_prob_fn)}")
    _ax(ax)
    lim, n = _lim(lim), V.integer("n", n, low=2)
    vmin = None if vmin is None else V.number("vmin", vmin)
    vmax = None if vmax is None else V.number("vmax", vmax)
    gx, gy, pts = _grid(lim, n)
    with torch.no_grad():
        p = _fn_output("log_prob_fn", log_prob_fn(pts), n * n).exp().reshape(n, n).cpu().numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    im = ax.imshow(p, origin="lower", extent=(-lim, lim, -lim, lim), cmap=cmap, vmin=vmin, vmax=vmax)
    if colorbar:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if label:
            cb.set_label(label)
    if title:
        ax.set_title(title)
    return ax


def vector_field(field_fn, ax=None, lim: float = 3.5, n: int = 20, title: str | None = None, normalize: bool = True,
                 **kwargs):
    """Quiver plot of a 2-D vector field (e.g. a score) ``field_fn(points (M, 2)) -> (M, 2)``."""
    if not callable(field_fn):
        raise TypeError(f"field_fn must be a callable field_fn(points (M, 2)) -> (M, 2); got {V.describe(field_fn)}")
    _ax(ax)
    lim, n = _lim(lim), V.integer("n", n, low=2)
    gx, gy, pts = _grid(lim, n)
    with torch.no_grad():
        v = _fn_output("field_fn", field_fn(pts.float()), n * n, 2).detach().double().cpu()
    if normalize:
        v = v / (v.norm(dim=1, keepdim=True) + 1e-12) * v.norm(dim=1, keepdim=True).clamp(max=1.0 * lim / n * 2)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.quiver(gx.numpy(), gy.numpy(), v[:, 0].reshape(n, n).numpy(), v[:, 1].reshape(n, n).numpy(),
              angles="xy", scale_units="xy", scale=1, **kwargs)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def trajectories2d(traj, ax=None, n_show: int = 20, lim: float | None = 3.5, title: str | None = None):
    """Draw the paths of ``n_show`` particles from a list of ``(N, 2)`` states (first state marked ○, last ●)."""
    try:
        if traj is None or isinstance(traj, (str, bytes)):
            raise TypeError
        items = list(traj)
    except TypeError:
        raise TypeError(f"traj must be a sequence of (N, 2) states; got {V.describe(traj)}") from None
    states = [_points_tensor("traj", p) for p in items]
    if not states or any(p.ndim != 2 or p.shape[1] < 2 or p.shape != states[0].shape for p in states):
        raise ValueError(f"traj must be a non-empty sequence of states of one shape (N, 2); got "
                         f"{[tuple(p.shape) for p in states[:4]]}")
    n_show = V.integer("n_show", n_show, low=1)
    _ax(ax)
    lim = _lim(lim, optional=True)
    path = torch.stack(states)  # (steps, N, 2)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    for i in range(min(n_show, path.shape[1])):
        ax.plot(path[:, i, 0], path[:, i, 1], lw=0.7, alpha=0.7)
    ax.scatter(path[0, :n_show, 0], path[0, :n_show, 1], s=12, facecolors="none", edgecolors="k")
    ax.scatter(path[-1, :n_show, 0], path[-1, :n_show, 1], s=12, c="k")
    return _square(ax, lim, title)


def animate_frames(frames, draw, *, n_static: int = 6, animate: bool | None = None, interval: int = 120,
                   figsize=(4, 4), labels=None, ncols: int = 6):
    """Show a sequence of frames (e.g. a denoising trajectory): ``draw(frame, ax)`` draws one.

    With ``animate=True`` (or ``TINYDIFF_ANIMATE=1``) returns an HTML/JS animation for a live notebook.
    Otherwise (the default, and what the executed notebooks store) a static strip of ``n_static``
    evenly spaced frames, ``ncols`` per row so that it stays readable at notebook width, which renders
    everywhere, GitHub included. ``labels`` (one per frame, e.g. ``[f"t = {t}" for t in traj.ts]``) title the
    panels; without them a panel is titled by its position in the sequence.
    """
    frames = list(frames)
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(frames):
            raise ValueError(f"labels must have one entry per frame ({len(frames)}); got {len(labels)}")
    name = (lambda i: labels[i]) if labels is not None else (lambda i: f"frame {i + 1}/{len(frames)}")
    if animate is None:
        animate = os.environ.get("TINYDIFF_ANIMATE", "0") == "1"
    if animate:
        from IPython.display import HTML
        from matplotlib import animation

        fig, ax = plt.subplots(figsize=figsize)

        def update(i):
            ax.clear()
            draw(frames[i], ax)
            ax.set_title(name(i))

        anim = animation.FuncAnimation(fig, update, frames=len(frames), interval=interval)
        plt.close(fig)
        return HTML(anim.to_jshtml())
    idx = np.linspace(0, len(frames) - 1, min(n_static, len(frames))).round().astype(int)
    cols = max(1, min(ncols, len(idx)))
    rows = -(-len(idx) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(idx):]:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        draw(frames[i], ax)
        ax.set_title(name(i), fontsize=9)
    fig.tight_layout()
    return fig
