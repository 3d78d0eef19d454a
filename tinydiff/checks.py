"""Check cells: compare two sides of an identity on concrete numbers and print one deterministic line.

    td.check("q(x_t | x_0) in closed form = 1000 single steps", lhs, rhs, atol=1e-6)
    # prints: ✓ q(x_t | x_0) in closed form = 1000 single steps

On failure a :class:`CheckFailed` (an ``AssertionError``) says by how much the sides differ; arguments that are no
numbers at all (``None``, a string, a complex value) or a negative or NaN tolerance raise a ValueError / TypeError
naming the argument. The printed line contains no
numbers that depend on the profile, so nbval can compare it (``# NBVAL_CHECK_OUTPUT``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tinydiff import validation

__all__ = ["check", "check_less", "CheckFailed"]


class CheckFailed(AssertionError):
    """A check whose two sides disagree (or whose value is not below its bound)."""


def _values(name: str, value) -> torch.Tensor:
    """``value`` (a number, a sequence of numbers, a numpy array or a tensor) as a float64 CPU tensor."""
    return validation.reals(name, value).cpu()


def _scalar(name: str, value) -> float:
    """``value`` as a float (NaN and inf kept: a check on them fails as a check, not as bad input)."""
    if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, (str, bytes, complex)):
        raise TypeError(f"{name} must be a real number; got {validation.describe(value)}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a real number; got {validation.describe(value)}") from None


def check(name: str, actual, expected, *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Assert ``actual ≈ expected`` elementwise (``|a - e| <= atol + rtol |e|``) and print ``✓ name``."""
    atol = validation.number("atol", atol, low=0)
    rtol = validation.number("rtol", rtol, low=0)
    a, e = _values("actual", actual), _values("expected", expected)
    if a.shape != e.shape:
        raise CheckFailed(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(e.shape)}")
    err = (a - e).abs()
    tol = atol + rtol * e.abs()
    if not bool((err <= tol).all()) or not bool(torch.isfinite(a).all()):
        raise CheckFailed(f"{name}: FAILED, max abs error {err.max().item():.3g} (atol={atol}, rtol={rtol})")
    print(f"✓ {name}")


def check_less(name: str, value, bound) -> None:
    """Assert ``value < bound`` (e.g. a measured distance below a tolerance) and print ``✓ name``."""
    v, b = _scalar("value", value), _scalar("bound", bound)
    if math.isnan(b):
        raise ValueError("bound must be a number, not NaN")
    if not v < b:
        raise CheckFailed(f"{name}: FAILED, {v:.4g} is not below {b:.4g}")
    print(f"✓ {name}")
