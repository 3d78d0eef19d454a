"""Exercise checker: run a student's function against the reference on random cases and say why it fails.

    def my_q_sample(x0, t, eps, sched):
        raise NotImplementedError  # your code here

    td.exercises.check(my_q_sample, td.ddpm.q_sample, cases,
                       mistakes={"forgot the square root on 1 - alpha_bar": buggy_version})

A function that still raises ``NotImplementedError`` counts as "not attempted yet": the checker prints
that and returns ``None`` without failing the notebook.

Fairness rules (tests/test_exercises.py checks each):

- the reference runs *first*, and every function (reference, student, each known mistake) gets its own
  clone of the inputs, so an answer that works in place is judged on its own output;
- a ``None`` return, NaN or infinite values, a wrong shape and a wrong kind of dtype (an integer or
  boolean result for a float answer) each get their own hint; a float32 answer to a float64 reference (or
  the reverse) is judged on its values;
- every "wrong" verdict says the largest error, where it is, and the two values there;
- an error in the student's code is reported at the student's own line (not deep inside torch);
- a known-mistake function that itself raises is reported ("could not test the hint"), not swallowed.

Solutions for instructors live in ``solutions/`` at the top of the repository (one file per notebook).
"""

from __future__ import annotations

import copy
import linecache
import traceback

import torch

from tinydiff import validation

__all__ = ["check", "compare"]


def _clone(x):
    """A deep copy of one argument: tensors cloned, containers rebuilt, other objects (schedules, models) shared."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, tuple):
        return tuple(_clone(v) for v in x)
    if isinstance(x, list):
        return [_clone(v) for v in x]
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if isinstance(x, (int, float, complex, bool, str, type(None))):
        return x
    if isinstance(x, torch.nn.Module) or callable(x):
        return x  # a model or a function: shared (copying a network is costly and changes nothing)
    try:
        return copy.deepcopy(x)
    except Exception:  # an object that cannot be copied is shared
        return x


def _fmt_index(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")" if len(idx) else "()"


def compare(got, want, *, atol: float = 1e-5, rtol: float = 1e-4, where: str = "") -> str | None:
    """``None`` when ``got`` matches ``want`` (``|got - want| <= atol + rtol |want|`` everywhere, same shape, same
    kind of dtype, finite wherever ``want`` is), else a one-line reason: the hint a student needs first."""
    atol = validation.number("atol", atol, low=0)
    rtol = validation.number("rtol", rtol, low=0)
    if got is None and want is not None:
        return "your function returned None: did you forget the `return` statement?"
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"expected a tuple of {len(want)} values{where}, got a {type(got).__name__}"
        if len(got) != len(want):
            return f"expected {len(want)} values{where}, got {len(got)}"
        for j, (u, v) in enumerate(zip(got, want)):
            msg = compare(u, v, atol=atol, rtol=rtol, where=f" (output {j + 1} of {len(want)})")
            if msg:
                return msg
        return None
    try:
        a, b = torch.as_tensor(got), torch.as_tensor(want)
    except (TypeError, RuntimeError, ValueError):
        return f"expected a tensor or a number{where}, got a {type(got).__name__}"
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)}{where} but expected {tuple(b.shape)} (check broadcasting and reductions)"
    if b.is_floating_point() and not (a.is_floating_point() or a.is_complex()):
        return (f"dtype {a.dtype}{where} but expected a floating-point tensor ({b.dtype}): an integer or boolean "
                f"result has lost the values (divide with /, not //; cast with .float())")
    a, b = a.detach().cpu().double() if not a.is_complex() else a, b.detach().cpu().double()
    bad_a = ~torch.isfinite(a) & torch.isfinite(b)
    if bad_a.any():
        idx = _fmt_index(torch.nonzero(bad_a)[0].tolist())
        return (f"your output has {int(bad_a.sum())} NaN/inf value(s){where}, the first at index {idx}: a division by "
                f"zero, a log or sqrt of a negative number, or an overflow?")
    finite = torch.isfinite(b)
    odd = ~finite & ~((a == b) | (torch.isnan(a) & torch.isnan(b)))  # where the answer is inf or NaN, match it
    if odd.any():
        idx = _fmt_index(torch.nonzero(odd)[0].tolist())
        return (f"expected {b[odd][0].item()} at index {idx}{where}, yours is {a[odd][0].item():.6g} "
                f"({int(odd.sum())} such value(s))")
    err = (a - b).abs()
    tol = atol + rtol * b.abs()
    over = (err > tol) & finite
    if not bool(over.any()):
        return None
    score = torch.where(finite, err - tol, torch.zeros_like(err))
    flat = int(score.flatten().argmax())
    idx = tuple(torch.unravel_index(torch.tensor(flat), a.shape)) if a.ndim else ()
    at = f" at index {_fmt_index(idx)}" if a.ndim else ""
    ga, gb = a.flatten()[flat].item(), b.flatten()[flat].item()
    return (f"largest error {err.flatten()[flat].item():.3g}{where}{at} (yours {ga:.6g}, expected {gb:.6g}); "
            f"{int(over.sum())} of {over.numel()} values are off (tolerance {atol:g} + {rtol:g} x |expected|)")


def _student_line(exc, fn) -> str:
    """The innermost traceback frame inside the student's own source file, else the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    home = getattr(getattr(fn, "__code__", None), "co_filename", None)
    mine = [f for f in frames if f.filename == home] or frames[-1:]
    f = mine[-1]
    line = f.line or linecache.getline(f.filename, f.lineno).strip()
    return f"line {f.lineno}: {line}"


def check(student_fn, reference_fn, cases, *, mistakes: dict | None = None, name: str | None = None,
          atol: float = 1e-5, rtol: float = 1e-4) -> bool | None:
    """Compare ``student_fn(*case)`` with ``reference_fn(*case)`` for every argument tuple in ``cases``.

    ``cases`` is a list of argument tuples, or a callable ``cases(i)`` returning the i-th tuple (5 cases).
    ``mistakes`` maps a hint to a known-wrong function; when the student's output matches one of them,
    the hint is printed. Returns True (all match), False (a mismatch or an error) or None (not attempted).
    Each function runs on its own clone of the inputs, the reference first.
    """
    if not callable(reference_fn):
        raise TypeError(f"reference_fn must be a callable; got {validation.describe(reference_fn)}")
    if not callable(student_fn):
        raise TypeError(f"student_fn must be a callable; got {validation.describe(student_fn)}")
    atol = validation.number("atol", atol, low=0)
    rtol = validation.number("rtol", rtol, low=0)
    name = name or getattr(student_fn, "__name__", "your function")
    try:
        case_list = [cases(i) for i in range(5)] if callable(cases) else list(cases)
    except TypeError:
        if callable(cases):
            raise
        raise TypeError(f"cases must be a list of argument tuples or a callable cases(i); got "
                        f"{validation.describe(cases)}") from None
    for i, args in enumerate(case_list):
        args = args if isinstance(args, tuple) else (args,)
        want = reference_fn(*_clone(args))
        try:
            got = student_fn(*_clone(args))
        except NotImplementedError:
            print(f"[not attempted] {name}: still raises NotImplementedError. Fill it in and run this cell again.")
            return None
        except Exception as exc:  # the student's code failed: show where, not a crash
            print(f"[error] {name} raised {type(exc).__name__}: {exc} ({_student_line(exc, student_fn)})")
            return False
        reason = compare(got, want, atol=atol, rtol=rtol)
        if reason is None:
            continue
        print(f"[wrong] {name}: case {i + 1} of {len(case_list)}: {reason}")
        for hint, wrong in (mistakes or {}).items():
            try:
                matches = compare(got, wrong(*_clone(args)), atol=atol, rtol=rtol) is None
            except Exception as exc:
                print(f"        (could not test the hint {hint!r}: its mistake function raised "
                      f"{type(exc).__name__}: {exc})")
                continue
            if matches:
                print(f"        hint: {hint}")
                break
        return False
    print(f"[correct] {name}: matches the reference on all {len(case_list)} random cases.")
    return True
