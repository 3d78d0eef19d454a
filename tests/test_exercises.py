"""tinydiff.exercises.check is fair: the reference runs first on its own clone, each failure mode has its own
hint, every verdict says how far off and where, and nothing is swallowed. Then every exercise of notebooks
00-08: its checker accepts the instructors' solution (solutions/NN_*.py), rejects each listed mistake with that
mistake's hint, and says "not attempted" for the stub."""

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
import torch

import tinydiff as td
from tinydiff import exercises

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, **kwargs):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        verdict = exercises.check(*args, **kwargs)
    return verdict, out.getvalue()


def _ref(x, y):
    return 2 * x + y


def _cases(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)


# ------------------------------------------------------------------------------------------- the checker
def test_accepts_the_reference_and_a_float32_answer_to_a_float64_reference():
    assert _run(_ref, _ref, _cases)[0] is True
    assert _run(lambda x, y: (2 * x + y).float(), lambda x, y: _ref(x.double(), y.double()), _cases)[0] is True


def test_an_in_place_answer_is_judged_on_its_own_output():
    def in_place(x, y):
        x.mul_(2).add_(y)  # overwrites its input: the reference has already run on its own clone
        return x

    assert _run(in_place, _ref, _cases)[0] is True

    def ref_in_place(x, y):  # and a reference that works in place does not spoil the student's inputs
        return x.mul_(2).add_(y)

    assert _run(_ref, ref_in_place, _cases)[0] is True


def test_none_return_has_its_own_hint():
    def forgot_return(x, y):
        2 * x + y

    verdict, out = _run(forgot_return, _ref, _cases)
    assert verdict is False and "return" in out and "None" in out


def test_nan_shape_and_dtype_each_have_their_own_hint():
    def nan(x, y):
        z = 2 * x + y
        z[1, 2] = float("nan")
        return z

    verdict, out = _run(nan, _ref, _cases)
    assert verdict is False and "NaN" in out and "(1, 2)" in out
    verdict, out = _run(lambda x, y: (2 * x + y).sum(0), _ref, _cases)
    assert verdict is False and "shape (4,)" in out and "(3, 4)" in out
    verdict, out = _run(lambda x, y: (2 * x + y).long(), _ref, _cases)
    assert verdict is False and "dtype torch.int64" in out


def test_a_wrong_answer_gets_the_largest_error_and_where():
    def off_at_one_place(x, y):
        z = 2 * x + y
        z[2, 3] += 0.5
        return z

    verdict, out = _run(off_at_one_place, _ref, _cases)
    assert verdict is False and "largest error 0.5" in out and "index (2, 3)" in out and "1 of 12" in out


def test_hints_fire_and_a_raising_mistake_is_reported_not_swallowed():
    def raises(x, y):
        raise RuntimeError("broken mistake")

    mistakes = {"this mistake raises": raises, "you forgot the factor 2": lambda x, y: x + y}
    verdict, out = _run(lambda x, y: x + y, _ref, _cases, mistakes=mistakes)
    assert verdict is False and "could not test the hint 'this mistake raises'" in out and "broken mistake" in out
    assert "hint: you forgot the factor 2" in out


def test_an_error_points_at_the_students_line_and_a_stub_is_not_attempted():
    def crashes(x, y):
        return x @ y  # (3, 4) @ (3, 4): a shape error raised inside torch

    verdict, out = _run(crashes, _ref, _cases)
    assert verdict is False and "return x @ y" in out

    def stub(x, y):
        raise NotImplementedError

    assert _run(stub, _ref, _cases)[0] is None


def test_tuples_and_numbers_are_compared_elementwise():
    ref = lambda x, y: (x.sum(), y.mean())  # noqa: E731
    assert _run(lambda x, y: (x.sum(), y.mean()), ref, _cases)[0] is True
    verdict, out = _run(lambda x, y: (x.sum(), y.sum()), ref, _cases)
    assert verdict is False and "output 2 of 2" in out
    verdict, out = _run(lambda x, y: x.sum(), ref, _cases)
    assert verdict is False and "tuple of 2" in out


# ------------------------------------------------------------------------- every exercise of the notebooks
def _cells(path: Path) -> list[str]:
    """The cells of a jupytext percent script, each starting with its `# %%` line."""
    return [c for c in re.split(r"^(?=# %%)", path.read_text(), flags=re.M) if c.startswith("# %%")]


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, student_fn, reference_fn, cases, **kwargs):
        self.calls.append((student_fn, reference_fn, cases, kwargs))
        return None


# the notebook-wide names an exercise may use besides torch, math and td (cheap constants of the setup cells)
PRELUDE = {
    "01": "F64 = torch.float64",
    "02": "lin = td.NoiseSchedule.linear(1000)",
    "03": "sched = td.NoiseSchedule.linear(T=1000)",
    "04": "sde = td.sde.VPSDE(beta_min=0.1, beta_max=20.0)",
    "06": "G = td.guidance\nsched = td.NoiseSchedule.linear(T=1000)",
}


def _exercise_groups(nb: Path) -> list[list[str]]:
    """The code cells of each exercise: a Markdown cell that names an exercise starts a group, and the code cells
    after it, up to the one that calls the checker, belong to it."""
    groups, current = [], None
    for c in _cells(nb):
        if c.startswith("# %% [markdown]"):
            if re.search(r"\*\*Exercise|### Exercise|^# \*\*\d+[a-z]?\.\*\*", c, flags=re.M):
                current = []
                groups.append(current)
            elif re.search(r"^# ## ", c, flags=re.M):
                current = None
        elif current is not None and c.strip():
            current.append(c)
            if "td.exercises.check(" in c:  # the exercise ends with its checker
                current = None
    return [g for g in groups if any("td.exercises.check(" in c for c in g)]


def _exercise_namespace(nb: Path):
    """Run each exercise's code cells in its own fresh namespace (torch, math, td and the PRELUDE constants only):
    an exercise that needs another exercise's helper, or a trained model, fails here. Returns the recorded
    checker calls, each with the namespace it was made in."""
    rec = _Recorder()
    real = td.exercises.check
    td.exercises.check = rec
    spaces = []
    try:
        for group in _exercise_groups(nb):
            ns = {"torch": torch, "math": math, "td": td}
            exec(PRELUDE.get(nb.name[:2], ""), ns)
            n0 = len(rec.calls)
            for c in group:
                exec(compile(c, f"<{nb.name} exercise cell>", "exec"), ns)
            spaces += [ns] * (len(rec.calls) - n0)
    finally:
        td.exercises.check = real
    return list(zip(rec.calls, spaces))


def _target(fn) -> str:
    """The name of the student's `my_*` function a checked callable stands for (itself, or the one it wraps)."""
    if fn.__name__.startswith("my_"):
        return fn.__name__
    names = [n for n in fn.__code__.co_names if n.startswith("my_")]
    assert len(names) == 1, f"cannot tell which my_* function {fn} checks"
    return names[0]


def _solutions(nb: Path) -> dict:
    path = ROOT / "solutions" / nb.name
    if not path.exists():
        return {}
    ns = {"torch": torch, "math": math, "td": td}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    return {k: v for k, v in ns.items() if k.startswith("my_") and callable(v)}


NOTEBOOKS = [p for p in sorted((ROOT / "notebooks").glob("0[0-8]_*.py")) if "td.exercises.check(" in p.read_text()]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_checker_accepts_its_solution_and_rejects_its_mistakes(nb):
    calls = _exercise_namespace(nb)
    sols = _solutions(nb)
    assert calls, f"{nb.name}: no td.exercises.check call found in its exercise cells"
    for (student_fn, reference_fn, cases, kwargs), ns in calls:
        fname = _target(student_fn)
        mistakes = kwargs.get("mistakes") or {}
        opts = {k: v for k, v in kwargs.items() if k != "mistakes"}
        assert _run(student_fn, reference_fn, cases, mistakes=mistakes, **opts)[0] is None, f"{fname}: stub"
        assert fname in sols, f"solutions/{nb.name} has no {fname}"
        stub, ns[fname] = ns[fname], sols[fname]  # a wrapper lambda looks its my_* function up at call time
        try:
            solution = sols[fname] if student_fn is stub else student_fn
            verdict, out = _run(solution, reference_fn, cases, mistakes=mistakes, **opts)
        finally:
            ns[fname] = stub
        assert verdict is True, f"{nb.name}: the solution {fname} fails its checker:\n{out}"
        for hint, wrong in mistakes.items():
            verdict, out = _run(wrong, reference_fn, cases, mistakes=mistakes, **opts)
            assert verdict is False, f"{nb.name}: {fname} accepts the mistake {hint!r}"
            assert f"hint: {hint}" in out, f"{nb.name}: {fname}'s mistake {hint!r} does not get its own hint:\n{out}"
            assert "could not test" not in out, out


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_checker_call_is_seen_and_there_are_three_with_a_find_the_bug(nb):
    """The harness above runs every td.exercises.check call of the notebook (none hides outside an exercise), and
    each lesson has at least 3 checked exercises, one of them a "find the bug"."""
    calls = _exercise_namespace(nb)
    assert len(calls) == nb.read_text().count("td.exercises.check("), nb.name
    assert len(calls) >= 3, f"{nb.name}: {len(calls)} checked exercises"
    assert re.search(r"find the bug", nb.read_text(), flags=re.I), f"{nb.name}: no find-the-bug exercise"


def test_solutions_folder_covers_every_exercise():
    missing = []
    for nb in NOTEBOOKS:
        names = set(re.findall(r"^def (my_\w+)\(", nb.read_text(), flags=re.M))
        have = set(_solutions(nb))
        missing += [f"{nb.name}:{n}" for n in sorted(names - have)]
    assert not missing, missing


def test_notebook_08_scale_factor_accepts_the_population_std():
    """The review found the correct population std (ddof = 0, numpy's default) rejected with a wrong hint."""
    nb = ROOT / "notebooks" / "08_latent_diffusion.py"
    (student_fn, reference_fn, cases, kwargs), _ = next(c for c in _exercise_namespace(nb)
                                                         if _target(c[0][0]) == "my_scale_factor")
    alt = _solutions(nb)["my_scale_factor_population_std"]
    assert _run(alt, reference_fn, cases, **kwargs)[0] is True


def test_notebook_02_reverse_step_hints_fire_for_the_mistakes_a_student_writes():
    """02 Ex 3: each advertised hint fires for the wrong answer written out as a student would (the review found the
    prefactor hint matched only a rescaled *whole* step, which no student writes). No hint for "no noise at t = 1":
    tilde beta_1 = 0, so that cannot be tested, and the notebook does not promise it."""
    nb = ROOT / "notebooks" / "02_ddpm.py"
    (student_fn, reference_fn, cases, kwargs), _ = next(c for c in _exercise_namespace(nb)
                                                         if _target(c[0][0]) == "my_reverse_step")

    def by_hand(prefactor, eps_coef, sd):
        def answer(xt, eps, t, z, sched):
            col = (lambda v: v[t].to(xt.dtype).reshape(-1, 1))
            return col(prefactor(sched)) * (xt - col(eps_coef(sched)) * eps) + col(sd(sched)) * z
        return answer

    pre, coef, sd = (lambda s: 1 / s.alpha.sqrt()), (lambda s: s.beta / (1 - s.alpha_bar).sqrt()), \
        (lambda s: s.posterior_variance.sqrt())
    assert _run(by_hand(pre, coef, sd), reference_fn, cases, **kwargs)[0] is True
    natural = {
        "sigma_t is the square root of the variance": by_hand(pre, coef, lambda s: s.posterior_variance),
        "not beta_t": by_hand(pre, coef, lambda s: s.beta.sqrt()),
        "the prefactor is 1/sqrt(alpha_t)": by_hand(lambda s: 1 / s.alpha_bar.sqrt(), coef, sd),
        "the square root is missing": by_hand(pre, lambda s: s.beta / (1 - s.alpha_bar), sd),
        "add sigma_t z to the mean": by_hand(pre, coef, lambda s: 0 * s.beta),
    }
    for hint, answer in natural.items():
        verdict, out = _run(answer, reference_fn, cases, **kwargs)
        assert verdict is False and "hint: " in out and hint in out.split("hint: ")[1], (hint, out)
