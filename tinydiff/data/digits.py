"""Digits, offline: scikit-learn's bundled 8x8 digits everywhere; MNIST / Fashion-MNIST through torchvision where
the network allows."""

from __future__ import annotations

import torch

__all__ = ["load_digits", "load_mnist"]


def load_digits(size: int = 8, *, return_labels: bool = True):
    """scikit-learn's bundled 8×8 digits (1,797 real images, no download), scaled to ``[-1, 1]``.

    Returns ``(x, y)``: ``x`` float32 ``(1797, 1, size, size)``, ``y`` LongTensor ``(1797,)``.
    ``size=16`` upsamples bilinearly (convenient for UNets with two downsamplings).
    """
    from sklearn.datasets import load_digits as _sk_digits

    from .. import validation as V

    size = V.integer("size", size)
    if size not in (8, 16, 32):
        raise ValueError(f"size must be 8, 16 or 32; got {size}")
    if not isinstance(return_labels, bool):
        raise ValueError(f"return_labels must be True or False; got {V.describe(return_labels)}")
    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # pixel values 0..16 -> [-1, 1]
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    return (x, y) if return_labels else x


def load_mnist(root: str = "~/.cache/tinydiff", *, train: bool = True, fashion: bool = False):
    """MNIST (or Fashion-MNIST) in ``[-1, 1]`` via torchvision, where it is installed and the network allows.

    Returns ``(x, y)`` with ``x`` float32 ``(N, 1, 28, 28)``. Offline, or without torchvision, raises a
    ``RuntimeError`` saying what to do instead (``load_digits`` always works).
    """
    try:
        from torchvision import datasets
    except Exception as exc:  # ImportError, or a torchvision that does not match torch
        raise RuntimeError(
            "MNIST needs torchvision, which is not importable here "
            f"({type(exc).__name__}: {exc}). Use tinydiff.data.load_digits() instead (offline, no extra install), "
            "or install a torchvision that matches your torch (on Colab it is preinstalled)."
        ) from None
    import os

    cls = datasets.FashionMNIST if fashion else datasets.MNIST
    try:
        ds = cls(os.path.expanduser(root), train=train, download=True)
    except Exception as exc:
        raise RuntimeError(
            f"could not load {'Fashion-' if fashion else ''}MNIST ({type(exc).__name__}: {exc}). "
            "It is downloaded on first use, which needs the network; offline, use tinydiff.data.load_digits()."
        ) from None
    x = ds.data.float().unsqueeze(1) / 127.5 - 1.0
    return x, ds.targets.long()
