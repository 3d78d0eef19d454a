"""Exercise checker: run a student's function against the reference on random cases and say why it fails.

    def my_q_sample(x0, t, eps, sched):
        raise NotImplementedError  # your code here

    td.exercises.check(my_q_sample, td.ddpm.q_sample, cases,
                       mistakes={"forgot the square root on 1 - alpha_bar": buggy_version})

A function that still raises ``NotImplementedError`` counts as "not attempted yet": the checker prints
that and returns ``None`` without failing the notebook.
"""

from __future__ import annotations

import traceback

import torch

__all__ = ["check"]


def _close(a, b, atol, rtol) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(u, v, atol, rtol) for u, v in zip(a, b))
    try:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol)
    except (TypeError, RuntimeError, ValueError):
        return False


def check(student_fn, reference_fn, cases, *, mistakes: dict | None = None, name: str | None = None,
          atol: float = 1e-5, rtol: float = 1e-4) -> bool | None:
    """Compare ``student_fn(*case)`` with ``reference_fn(*case)`` for every argument tuple in ``cases``.

    ``cases`` is a list of argument tuples, or a callable ``cases(i)`` returning the i-th tuple (5 cases).
    ``mistakes`` maps a hint to a known-wrong function; when the student's output matches one of them,
    the hint is printed. Returns True (all match), False (a mismatch or an error) or None (not attempted).
    """
    name = name or getattr(student_fn, "__name__", "your function")
    case_list = [cases(i) for i in range(5)] if callable(cases) else list(cases)
    for i, args in enumerate(case_list):
        args = args if isinstance(args, tuple) else (args,)
        try:
            got = student_fn(*args)
        except NotImplementedError:
            print(f"[not attempted] {name}: still raises NotImplementedError. Fill it in and run this cell again.")
            return None
        except Exception as exc:  # the student's code failed: show where, not a crash
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"[error] {name} raised {type(exc).__name__}: {exc} (line {tb.lineno}: {tb.line})")
            return False
        want = reference_fn(*args)
        if not _close(got, want, atol, rtol):
            print(f"[wrong] {name}: case {i + 1} of {len(case_list)} differs from the reference.")
            shape_got = getattr(got, "shape", None)
            shape_want = getattr(want, "shape", None)
            if shape_got is not None and shape_want is not None and tuple(shape_got) != tuple(shape_want):
                print(f"        shape {tuple(shape_got)} but expected {tuple(shape_want)}")
            for hint, wrong in (mistakes or {}).items():
                try:
                    if _close(got, wrong(*args), atol, rtol):
                        print(f"        hint: {hint}")
                        break
                except Exception:
                    pass
            return False
    print(f"[correct] {name}: matches the reference on all {len(case_list)} random cases.")
    return True
