"""The one layer of input checks. Every public function validates its arguments here, once, at the boundary;
inner loops then run on checked, precomputed values and never check again.

Every error is a :class:`ValueError` (or :class:`TypeError` for a wrong kind of object) whose message names the
argument, says what was given and what is wanted::

    validation.integer("n_steps", n, low=1, high=T)       # -> int
    validation.number("eta", eta, low=0)                   # -> float, finite unless allow_inf
    validation.choice("spacing", spacing, SPACINGS)        # -> str
    validation.tensor("x", x, ndim=2, floating=True)       # -> torch.Tensor (numpy accepted and converted)
    validation.output("eps_fn", out, like=x)               # the value a user callable returned

NaN policy (one rule for the whole package): inputs that are documented to be data (``x``, ``x0``, ``x_T``) must be
finite where a NaN would propagate silently into a result (checked with ``finite=True``); the outputs of user
callables are checked for shape, dtype and finiteness by :func:`output` at the first call of a sampler.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch

__all__ = ["integer", "number", "choice", "reals", "broadcasts", "tensor", "output", "shape", "describe", "timesteps",
           "schedule", "sde", "generator", "callback"]


def describe(value) -> str:
    """A short description of ``value`` for an error message (the type, and the shape/dtype of an array)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a numpy array ({value.dtype}) of shape {value.shape}"
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int in ``low..high`` (inclusive). bool and float are refused (``2.0`` is not a count)."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, float):
        raise ValueError(f"{name} must be an int; got {describe(value)}")
    if isinstance(value, torch.Tensor) and (value.ndim != 0 or value.is_floating_point() or value.dtype == torch.bool):
        raise ValueError(f"{name} must be an int; got {describe(value)}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int; got {describe(value)}") from None
    _bound("integer", "low", low, int)
    _bound("integer", "high", high, int)
    _range(name, value, low, high)
    return value


def number(name: str, value, *, low: float | None = None, high: float | None = None, strict_low: bool = False,
           allow_inf: bool = False) -> float:
    """``value`` as a finite Python float in ``[low, high]`` (``(low, high]`` with ``strict_low``)."""
    _bound("number", "low", low, numbers.Real)
    _bound("number", "high", high, numbers.Real)
    if isinstance(value, (bool, np.bool_)) or isinstance(value, complex):
        raise ValueError(f"{name} must be a real number; got {describe(value)}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be a real number; got {describe(value)}")
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {describe(value)}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number; got {value}")
    if low is not None and (value <= low if strict_low else value < low):
        raise ValueError(f"{name} must be {'>' if strict_low else '>='} {low}; got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value:g}")
    return value


def choice(name: str, value, options) -> str:
    """``value`` if it is one of ``options`` (strings), else a ValueError listing them."""
    if isinstance(options, (str, bytes)) or not hasattr(options, "__iter__") or not hasattr(options, "__contains__"):
        raise TypeError(f"validation.choice: options must be a tuple of the allowed strings; got {describe(options)}")
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {describe(value)}")
    return value


def reals(name: str, value) -> torch.Tensor:
    """``value`` (a number, a sequence of numbers, a numpy array or a tensor) as a float64 tensor, detached, on its
    device. A wrong kind of object (None, a string, something torch cannot convert) is a TypeError and complex numbers
    a ValueError, each naming ``name``."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a number, an array or a tensor of real numbers; got {describe(value)}")
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, an array or a tensor of real numbers; got {describe(value)}") \
            from None
    if t.is_complex():
        raise ValueError(f"{name} must be real; got {describe(value)}")
    return t.detach().to(torch.float64)


def broadcasts(name: str, value: torch.Tensor, like: torch.Tensor, like_name: str = "x") -> torch.Tensor:
    """``value`` unchanged if it broadcasts against ``like`` to ``like``'s own shape, else a ValueError naming both."""
    try:
        ok = torch.broadcast_shapes(value.shape, like.shape) == like.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must broadcast against {like_name} {tuple(like.shape)}; got shape {tuple(value.shape)}")
    return value


def tensor(name: str, value, *, ndim: int | tuple[int, ...] | None = None, floating: bool = True, finite: bool = False,
           batch: int | None = None, min_batch: int = 1) -> torch.Tensor:
    """``value`` as a tensor: numpy arrays are converted; complex is refused; with ``floating`` an integer tensor is
    promoted to the default float dtype (never truncated) and bool is refused. ``ndim`` may be one int or a tuple of
    allowed ranks; ``batch`` fixes the first dimension; ``finite`` refuses NaN and inf."""
    if ndim is not None and not (isinstance(ndim, int) and not isinstance(ndim, bool)) and not (
            isinstance(ndim, tuple) and ndim and all(isinstance(a, int) and not isinstance(a, bool) for a in ndim)):
        raise TypeError(f"validation.tensor: ndim must be None, an int or a tuple of ints; got {describe(ndim)}")
    if isinstance(min_batch, bool) or not isinstance(min_batch, int) or min_batch < 0:
        raise TypeError(f"validation.tensor: min_batch must be an int >= 0; got {describe(min_batch)}")
    _bound("tensor", "batch", batch, int)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        hint = " (did a function forget to `return`?)" if value is None else ""
        raise TypeError(f"{name} must be a torch.Tensor; got {describe(value)}{hint}")
    if value.is_complex():
        raise ValueError(f"{name} must be real; got {describe(value)}")
    if floating and not value.is_floating_point():
        if value.dtype == torch.bool:
            raise ValueError(f"{name} must hold numbers, not booleans; got {describe(value)}")
        value = value.to(torch.get_default_dtype())
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            want = _ranks(allowed)
            raise ValueError(f"{name} must have {want} dimensions; got {describe(value)}")
    if value.ndim and value.shape[0] < min_batch:
        raise ValueError(f"{name} must hold at least {min_batch} sample(s) along its first (batch) dimension; "
                         f"got {describe(value)}")
    if batch is not None and (value.ndim == 0 or value.shape[0] != batch):
        raise ValueError(f"{name} must have batch size {batch} (its first dimension); got {describe(value)}")
    if finite and value.is_floating_point() and value.device.type != "meta" and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite; it holds NaN or inf ({describe(value)})")
    return value


def shape(name: str, value) -> tuple[int, ...]:
    """A sample shape like ``(B, D)`` or ``(B, C, H, W)``: a sequence of positive ints (numpy ints and
    ``torch.Size`` accepted)."""
    try:
        out = tuple(operator.index(n) for n in value)
    except TypeError:
        out = None
    if not out or min(out) < 1 or any(isinstance(n, bool) for n in value):
        raise ValueError(f"{name} must be a tuple of positive ints like (B, D) or (B, C, H, W); got {describe(value)}")
    return out


def output(fn_name: str, out, *, like: torch.Tensor, finite: bool = True) -> torch.Tensor:
    """Check what a user callable returned: a floating tensor of ``like``'s shape, dtype and device (finite unless
    told otherwise).

    Samplers call this on the first evaluation only, so the check costs nothing per step. The finiteness test is
    the one device->host sync a sampler makes on a GPU; it is skipped on torch's ``meta`` device (which has no
    values), so a sampler run on ``meta`` proves the loop makes no other."""
    if not isinstance(like, torch.Tensor):
        raise TypeError(f"validation.output: like must be the tensor {fn_name} was called on; got {describe(like)}")
    if out is None:
        raise TypeError(f"{fn_name} returned None: did it forget to `return` its prediction?")
    if isinstance(out, np.ndarray):
        raise TypeError(f"{fn_name} returned a numpy array; it must return a torch.Tensor of shape {tuple(like.shape)} "
                        "(use torch.from_numpy, or compute with torch)")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{fn_name} must return a torch.Tensor of shape {tuple(like.shape)}; it returned {describe(out)}")
    if tuple(out.shape) != tuple(like.shape):
        raise ValueError(f"{fn_name} returned shape {tuple(out.shape)}; it must return the shape of its input x, "
                         f"{tuple(like.shape)}")
    if not out.is_floating_point():
        raise ValueError(f"{fn_name} must return a floating tensor; it returned {describe(out)}")
    if out.dtype != like.dtype:
        raise ValueError(f"{fn_name} returned dtype {out.dtype} for input x of dtype {like.dtype}; it must return the "
                         f"dtype of x (cast inside the function, or pass x_T of the dtype you want)")
    if out.device != like.device:
        raise ValueError(f"{fn_name} returned a tensor on {out.device} for input x on {like.device}; it must return "
                         f"its prediction on the device of x")
    if finite and out.device.type != "meta" and not bool(torch.isfinite(out).all()):
        raise ValueError(f"{fn_name} returned NaN or inf for finite input (at the first sampler step)")
    return out


def timesteps(name: str, value, T: int, *, low: int = 0, batch: int | None = None) -> torch.Tensor:
    """Integer timesteps in ``low..T``: a Python int or an integer tensor (0-d or 1-d), returned as a LongTensor
    (on the device it came from). With ``batch``, a scalar is expanded to ``(batch,)`` and a 1-d tensor must have
    that length. Floats and booleans are refused (``t = 0.5`` is no step of a discrete schedule)."""
    _bound("timesteps", "T", T, int, required=True)
    _bound("timesteps", "low", low, int, required=True)
    _bound("timesteps", "batch", batch, int)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if value is None or isinstance(value, (bool, np.bool_, float, complex)):
        raise ValueError(f"{name} must hold integer timesteps in {low}..{T}; got {describe(value)}")
    t = value if isinstance(value, torch.Tensor) else None
    if t is None:
        try:
            t = torch.tensor(operator.index(value))
        except TypeError:
            try:
                t = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"{name} must hold integer timesteps in {low}..{T}; got {describe(value)}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer timesteps in {low}..{T}; got dtype {t.dtype}. "
                         "Use torch.full((B,), t, dtype=torch.long) or torch.randint(...).")
    if t.ndim > 1:
        raise ValueError(f"{name} must be an int or a 1-d tensor of timesteps; got {describe(t)}")
    if batch is not None:
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape[0] != batch:
            raise ValueError(f"{name} must have shape ({batch},) to match the batch, got {tuple(t.shape)}")
    if t.numel() and t.device.type != "meta":
        lo, hi = int(t.min()), int(t.max())
        if lo < low or hi > T:
            raise ValueError(f"{name} must lie in {low}..{T} (this schedule has T = {T}); got values from {lo} to {hi}")
    return t.long()


def schedule(name: str, value):
    """A discrete noise schedule (:class:`tinydiff.NoiseSchedule` or anything with ``T`` and float64 tables
    ``alpha_bar``, ``alpha``, ``beta``)."""
    if not all(hasattr(value, k) for k in ("T", "alpha_bar", "alpha", "beta")):
        raise TypeError(f"{name} must be a noise schedule like td.NoiseSchedule.linear(1000); got {describe(value)}")
    return value


def sde(name: str, value):
    """A continuous-time SDE like :class:`tinydiff.sde.VPSDE` (with ``beta``, ``marginal`` and ``drift``)."""
    if not all(callable(getattr(value, k, None)) for k in ("beta", "marginal", "drift")):
        raise TypeError(f"{name} must be an SDE like td.sde.VPSDE(); got {describe(value)}")
    return value


def generator(name: str, value):
    """``None`` or a CPU :class:`torch.Generator` (every sampler draws its noise on the CPU and moves it)."""
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None; got {describe(value)}")
    if value.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU torch.Generator (noise is drawn on the CPU, then moved, so a seed gives "
                         f"the same samples on every device); got one on {value.device}")
    return value


def callback(name: str, value):
    """``None`` or a callable ``callback(i, t, x)``."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable callback(i, t, x) or None; got {describe(value)}")
    return value


def _bound(fn, name, value, kind, required=False):
    """Check an argument of this module's own functions (a bound, a rank): a programming error in the caller."""
    kind = numbers.Integral if kind is int else kind
    if (value is None and not required) or (isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
                                            and (kind is numbers.Integral or not math.isnan(value))):
        return
    want = "an int" if kind is numbers.Integral else "a real number"
    raise TypeError(f"validation.{fn}: {name} must be {want}{'' if required else ' or None'}; got {describe(value)}")


def _ranks(allowed):
    """``(2, 3, 4)`` -> ``'2 to 4'``, ``(2, 4)`` -> ``'2 or 4'``."""
    a = sorted(set(allowed))
    if len(a) > 2 and a == list(range(a[0], a[-1] + 1)):
        return f"{a[0]} to {a[-1]}"
    return " or ".join(str(n) for n in a)


def _range(name, value, low, high):
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must lie in {lo}..{hi}; got {value}")
