"""The three sizes of the book: ``quick`` (tests, CI), ``standard`` (a laptop CPU) and ``full`` (a GPU).

Chosen by one environment variable, ``TINYDIFF_PROFILE=quick|standard|full``. Without it the
profile is ``full`` on CUDA and ``standard`` otherwise. A notebook states its sizes once::

    cfg = td.profiles.choose(
        quick=dict(steps=200, n=512),
        standard=dict(steps=3000, n=4096),
        full=dict(steps=20000, n=65536),
    )
    cfg.steps  # the value for the active profile

so the choice of device and size is made here, never by an ``if`` inside a notebook.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

__all__ = ["PROFILES", "current", "choose", "autocast_dtype"]

PROFILES = ("quick", "standard", "full")


def current() -> str:
    """The active profile name, read from ``$TINYDIFF_PROFILE`` (default: full on CUDA, else standard)."""
    name = os.environ.get("TINYDIFF_PROFILE", "").strip().lower()
    if not name:
        return "full" if torch.cuda.is_available() else "standard"
    if name not in PROFILES:
        raise ValueError(
            f"TINYDIFF_PROFILE must be one of {', '.join(PROFILES)}; got {name!r}. "
            "Unset it to get the default for this machine."
        )
    return name


def choose(*, quick: dict, standard: dict, full: dict | None = None, profile: str | None = None):
    """Return the settings of the active profile as an attribute namespace.

    ``full`` defaults to ``standard`` when omitted. Every profile must define the same keys, so a
    notebook cannot silently depend on a setting that only one profile has.
    """
    for arg, settings in (("quick", quick), ("standard", standard), ("full", full)):
        if not isinstance(settings, dict) and not (arg == "full" and settings is None):
            raise TypeError(f"{arg} must be a dict of settings like dict(steps=200, n=512); got "
                            f"{type(settings).__name__} {settings!r:.60}")
    table = {"quick": quick, "standard": standard, "full": standard if full is None else full}
    keys = set(quick)
    for name, settings in table.items():
        if set(settings) != keys:
            diff = sorted(keys.symmetric_difference(settings))
            raise ValueError(f"profile {name!r} must define the same settings as 'quick'; differs in {diff}")
    name = profile or current()
    if name not in table:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    return SimpleNamespace(profile=name, **table[name])


def autocast_dtype(device=None) -> torch.dtype | None:
    """The mixed-precision dtype for training on ``device`` (default: CUDA if available, else the CPU).

    ``torch.bfloat16`` where the GPU computes in it natively (compute capability 8.0 and newer: A100, L4, H100,
    RTX 30xx+); ``torch.float16`` on older CUDA GPUs such as Colab's T4, which only emulate bf16 (slowly) --
    fp16 has a narrow exponent range, so train with a ``torch.amp.GradScaler`` then; ``None`` (no autocast) on
    the CPU and other devices.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(f"device must be a torch.device or a name like 'cuda' or 'cpu'; got "
                         f"{type(device).__name__} {device!r:.60}") from None
    if device.type != "cuda":
        return None
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation (and reports native support only)
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16
