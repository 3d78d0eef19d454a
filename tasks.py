#!/usr/bin/env python3
"""The one entry point of the book. Needs nothing but Python 3.10+.

    python3 tasks.py test      # set up .venv if needed, then unit tests + every notebook (quick profile)
    python3 tasks.py book      # set up .venv if needed, then run every notebook end to end into build/
    python3 tasks.py lab       # open the notebooks in JupyterLab
    python3 tasks.py execute [NN ...]   # authors: rebuild notebooks/*.ipynb from their .py twins, executed
    python3 tasks.py sync [NN ...]      # authors: copy Markdown-only edits of the .py into the .ipynb

Set-up creates ``.venv`` with the CPU build of torch (``TINYDIFF_TORCH`` overrides the pin) and
``pip install -e .[dev]``; it is redone only when pyproject.toml changes. Inside an already active
virtual environment (or with ``TINYDIFF_NO_VENV=1``, e.g. on Colab) the current interpreter is used.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = os.environ.get("TINYDIFF_TORCH", "torch==2.13.0")


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def ensure_env() -> str:
    """Return the interpreter to use, creating and filling .venv first when needed."""
    if os.environ.get("TINYDIFF_NO_VENV") == "1" or sys.prefix != sys.base_prefix:
        py, prefix = sys.executable, Path(sys.prefix)
    else:
        py, prefix = str(_venv_python()), VENV
        if not Path(py).exists():
            print(f"creating the virtual environment {VENV} ...", flush=True)
            _run([sys.executable, "-m", "venv", VENV])
    stamp = prefix / ".tinydiff-installed"  # records which pyproject.toml was installed into this environment
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode() + str(ROOT).encode()).hexdigest()
    ready = stamp.exists() and stamp.read_text().strip() == want
    if ready:  # a stamp is not proof: the packages must import from this checkout
        probe = "import pytest, nbval, tinydiff, sys; sys.exit(not tinydiff.__file__.startswith(sys.argv[1]))"
        ready = subprocess.run([py, "-c", probe, str(ROOT)], capture_output=True).returncode == 0
    if not ready:
        t0 = time.time()
        has_torch = subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0
        if not has_torch:
            _run([py, "-m", "pip", "install", "-q", TORCH])
        _run([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"])
        try:
            stamp.write_text(want)
        except OSError:
            pass
        print(f"environment ready in {time.time() - t0:.0f} s", flush=True)
    return py


def cmd_test(args) -> int:
    py = ensure_env()
    env = dict(os.environ, TINYDIFF_PROFILE="quick", TINYDIFF_PROGRESS="0", MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    workers = ["-n", str(min(2, os.cpu_count() or 1)), "--dist", "loadfile"]
    t0 = time.time()
    rc = subprocess.run([py, "-m", "pytest", *workers, "-q", *args], cwd=ROOT, env=env).returncode
    print(f"tasks.py test: {time.time() - t0:.0f} s", flush=True)
    return rc


def _notebooks(selected):
    nbs = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if selected:
        nbs = [p for p in nbs if any(p.name.startswith(s) for s in selected)]
    return nbs


def _execute(py: str, src: Path, dst: Path, profile: str | None) -> float:
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
    if profile:
        env["TINYDIFF_PROFILE"] = profile
    code = (
        "import sys, nbformat; from nbclient import NotebookClient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "from nbconvert.preprocessors import CoalesceStreamsPreprocessor\n"
        "NotebookClient(nb, timeout=1800, kernel_name='python3', resources={'metadata': {'path': sys.argv[3]}}).execute()\n"
        "nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})  # keep only the last state of progress bars\n"
        "nbformat.write(nb, sys.argv[2])\n"
    )
    t0 = time.time()
    print(f"executing {src.name} ({env.get('TINYDIFF_PROFILE', 'default')} profile) -> {dst}", flush=True)
    subprocess.run([py, "-c", code, str(src), str(dst), str(ROOT / "notebooks")], env=env, check=True)
    return time.time() - t0


def cmd_book(args) -> int:
    py = ensure_env()
    out = ROOT / "build"
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    (out / "html").mkdir(parents=True, exist_ok=True)
    times = {}
    for nb in _notebooks(args):
        dst = out / "notebooks" / nb.name
        times[nb.name] = _execute(py, nb, dst, os.environ.get("TINYDIFF_PROFILE"))
        _run([py, "-m", "jupyter", "nbconvert", "--to", "html", "--log-level", "WARN", dst, "--output-dir", out / "html"])
    for name, sec in times.items():
        print(f"{name:32s} {sec:6.1f} s")
    print(f"executed notebooks in {out / 'notebooks'}, HTML in {out / 'html'}")
    return 0


def cmd_execute(args) -> int:
    """Authors: regenerate each notebooks/NN_*.ipynb from its jupytext twin NN_*.py and execute it in place
    (standard profile unless TINYDIFF_PROFILE says otherwise), so the committed outputs are fresh."""
    py = ensure_env()
    profile = os.environ.get("TINYDIFF_PROFILE", "standard")
    srcs = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    if args:
        srcs = [p for p in srcs if any(p.name.startswith(s) for s in args)]
    for src in srcs:
        nb = src.with_suffix(".ipynb")
        _run([py, "-m", "jupytext", "--quiet", "--to", "ipynb", "--update-metadata",
              '{"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}',
              "-o", nb, src])
        sec = _execute(py, nb, nb, profile)
        print(f"{nb.name}: executed in {sec:.1f} s ({profile})", flush=True)
    return 0


def cmd_sync(args) -> int:
    """Authors: copy text edits of notebooks/NN_*.py into the .ipynb, keeping the stored outputs
    (jupytext --update). Changed code needs `execute` instead, so that its outputs are fresh."""
    py = ensure_env()
    srcs = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    for src in [p for p in srcs if not args or any(p.name.startswith(s) for s in args)]:
        _run([py, "-m", "jupytext", "--quiet", "--update", "--to", "ipynb", "-o", src.with_suffix(".ipynb"), src])
    return 0


def cmd_lab(args) -> int:
    py = ensure_env()
    if subprocess.run([py, "-c", "import jupyterlab"], capture_output=True).returncode != 0:
        _run([py, "-m", "pip", "install", "-q", "jupyterlab"])
    return subprocess.run([py, "-m", "jupyter", "lab", str(ROOT / "notebooks"), *args]).returncode


COMMANDS = {"test": cmd_test, "book": cmd_book, "lab": cmd_lab, "execute": cmd_execute, "sync": cmd_sync}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
