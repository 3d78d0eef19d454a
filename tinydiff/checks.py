"""Check cells: compare two sides of an identity on concrete numbers and print one deterministic line.

    td.check("q(x_t | x_0) in closed form = 1000 single steps", lhs, rhs, atol=1e-6)
    # prints: ✓ q(x_t | x_0) in closed form = 1000 single steps

On failure an ``AssertionError`` says by how much the sides differ. The printed line contains no
numbers that depend on the profile, so nbval can compare it (``# NBVAL_CHECK_OUTPUT``).
"""

from __future__ import annotations

import torch

__all__ = ["check", "check_less"]


def check(name: str, actual, expected, *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Assert ``actual ≈ expected`` elementwise (``|a - e| <= atol + rtol |e|``) and print ``✓ name``."""
    a = torch.as_tensor(actual).detach().double().cpu()
    e = torch.as_tensor(expected).detach().double().cpu()
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(e.shape)}")
    err = (a - e).abs()
    tol = atol + rtol * e.abs()
    if not bool((err <= tol).all()) or not bool(torch.isfinite(a).all()):
        raise AssertionError(f"{name}: FAILED, max abs error {err.max().item():.3g} (atol={atol}, rtol={rtol})")
    print(f"✓ {name}")


def check_less(name: str, value, bound) -> None:
    """Assert ``value < bound`` (e.g. a measured distance below a tolerance) and print ``✓ name``."""
    v, b = float(value), float(bound)
    if not v < b:
        raise AssertionError(f"{name}: FAILED, {v:.4g} is not below {b:.4g}")
    print(f"✓ {name}")
