"""The Colab setup cell (the first code cell of every notebook), run offline against a fake ``google.colab``.

The cell cannot import a helper (on Colab nothing of the repository is there before it runs), so its logic lives in
the cell itself and these tests execute exactly that source: in a bare interpreter where tinydiff does not import
(a venv over the base Python, pip's index switched off), with a local wheel, a wheel URL, and a source that fails.
"""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jupytext
import pytest
import tomllib

import tinydiff as td

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
NOT_FOR_COLAB = {"ipykernel", "pytest", "pytest-xdist", "ruff", "nbval", "jupytext", "jupyterlab", "scikit-image",
                 "nbclient", "nbconvert", "nbformat"}


def _setup_cell(src: Path) -> str:
    return next(c.source for c in jupytext.read(src).cells if c.cell_type == "code")


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


CELL = _setup_cell(ROOT / "notebooks" / "00_tour.py")


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_every_notebook_starts_with_the_same_setup_cell(src):
    assert _setup_cell(src) == CELL, f"{src.name}: copy the first code cell of notebooks/00_tour.py (the setup cell)"


def test_the_cell_badges_and_pyproject_name_one_source():
    url = _project()["urls"]["Source"]
    assert f'"git+{url}"' in CELL, "the setup cell must install from pyproject.toml's [project.urls] Source"
    owner_repo = re.match(r"https://github\.com/([^/]+/[^/]+)$", url).group(1)
    for src in SOURCES:
        text = src.read_text()
        badges = re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/notebooks/([\w.]+)", text)
        assert badges, f"{src.name} has no Colab badge"
        for repo, name in badges:
            assert repo == owner_repo, f"{src.name}: badge points at {repo}, pyproject.toml says {owner_repo}"
            assert name == src.with_suffix(".ipynb").name, f"{src.name}: badge opens {name}"


def test_the_colab_extra_is_lean():
    """Colab has torch, numpy, matplotlib, ipykernel and ipywidgets: the cell adds diffusers and nothing for authors."""
    colab = {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in _project()["optional-dependencies"]["colab"]}
    assert colab == {"diffusers"}
    base = {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in _project()["dependencies"]}
    assert not (colab | base) & NOT_FOR_COLAB
    assert "ipywidgets" not in base, "ipywidgets stays optional (Colab ships its own; gamma_browser falls back)"
    assert "[colab]" in CELL and "[dev]" not in CELL


def _fake_wheel(folder: Path, version="0.0.1") -> Path:
    """A minimal wheel named tinydiff (with an empty colab extra), so that pip installs it offline in a second."""
    wheel = folder / f"tinydiff-{version}-py3-none-any.whl"
    info = f"tinydiff-{version}.dist-info"
    files = {
        "tinydiff/__init__.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: tinydiff\nVersion: {version}\nProvides-Extra: colab\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test_colab\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A venv over the base interpreter (its pip, no tinydiff), plus a fake google.colab package to put on the path."""
    root = tmp_path_factory.mktemp("colab")
    venv = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", "--system-site-packages", venv], check=True)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if subprocess.run([py, "-c", "import pip"], capture_output=True).returncode != 0:  # a base Python without pip
        subprocess.run([sys._base_executable, "-m", "venv", "--clear", venv], check=True)
    if subprocess.run([py, "-c", "import tinydiff"], capture_output=True, cwd=root).returncode == 0:
        pytest.skip("tinydiff imports in the base interpreter: cannot test a first install here")
    fake = root / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text("")
    return py, fake, root


def _run_cell(py, fake, *, source=None, colab=True, target=None):
    """Run the setup cell then `import tinydiff` in ``py``; pip installs into ``target`` (kept off the shared venv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "TINYDIFF_SOURCE"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONPATH=str(fake))
    if target is not None:  # an existing folder already on the path, like Colab's site-packages
        target.mkdir(exist_ok=True)
        env.update(PIP_TARGET=str(target), PYTHONPATH=f"{fake}{os.pathsep}{target}")
    if source is not None:
        env["TINYDIFF_SOURCE"] = str(source)
    code = ("import google.colab\n" if colab else "") + CELL + "\nimport tinydiff\nprint('tinydiff', tinydiff.__version__)\n"
    return subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=fake)


def test_the_cell_installs_from_a_local_wheel_then_skips(bare_python, tmp_path):
    py, fake, root = bare_python
    wheel = _fake_wheel(tmp_path)
    first = _run_cell(py, fake, source=wheel, target=tmp_path / "site")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "installing tinydiff[colab] @ file://" in first.stdout and "tinydiff 0.0.1" in first.stdout
    again = _run_cell(py, fake, source=tmp_path / "nowhere.whl", target=tmp_path / "site")  # must not reach pip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "installing" not in again.stdout and "tinydiff 0.0.1" in again.stdout


def test_the_cell_installs_from_a_wheel_url(bare_python, tmp_path):
    py, fake, root = bare_python
    wheel = _fake_wheel(tmp_path, version="0.0.2")
    done = _run_cell(py, fake, source=wheel.as_uri(), target=tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tinydiff 0.0.2" in done.stdout


def test_a_failing_source_prints_what_to_do_instead(bare_python, tmp_path):
    py, fake, root = bare_python
    done = _run_cell(py, fake, source="git+https://example.invalid/nobody/tinydiff")
    assert done.returncode != 0
    assert "Could not install tinydiff[colab] @ git+https://example.invalid/nobody/tinydiff" in done.stderr
    assert "TINYDIFF_SOURCE" in done.stderr and "python3 tasks.py lab" in done.stderr
    assert "Traceback" not in done.stderr and "CalledProcessError" not in done.stderr, done.stderr
    assert len(done.stdout.splitlines()) <= 10, "pip's error is cut to its last lines"


def test_off_colab_the_cell_does_nothing(bare_python):
    py, fake, root = bare_python
    done = _run_cell(py, fake, source="/nowhere/tinydiff.whl", colab=False)
    assert "installing" not in done.stdout and "Could not install" not in done.stderr
    assert "No module named 'tinydiff'" in done.stderr  # it did not try: the import after it fails as expected


def test_where_tinydiff_imports_the_cell_does_nothing(tmp_path):
    fake = tmp_path / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=f"{fake}{os.pathsep}{ROOT}", TINYDIFF_SOURCE="/nowhere/tinydiff.whl")
    done = subprocess.run([sys.executable, "-c", "import google.colab\n" + CELL], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


@pytest.mark.parametrize("native, want", [(True, "bfloat16"), (False, "float16")])
def test_autocast_dtype_is_bf16_only_where_native(monkeypatch, native, want):
    import torch

    seen = {}

    def is_bf16_supported(including_emulation=True):
        seen["including_emulation"] = including_emulation
        return native or including_emulation  # a T4: emulated bf16 only

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert td.profiles.autocast_dtype("cuda") == getattr(torch, want)
    assert seen["including_emulation"] is False
    assert td.profiles.autocast_dtype("cpu") is None
