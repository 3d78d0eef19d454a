"""Each notebook is committed executed, and matches its jupytext twin (notebooks/NN_topic.py)."""

from pathlib import Path

import jupytext
import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_notebook_matches_its_py_twin(src):
    nb_path = src.with_suffix(".ipynb")
    assert nb_path.exists(), f"{nb_path.name} is missing: run `python3 tasks.py execute {src.name[:2]}`"
    want = _cells(jupytext.read(src))
    got = _cells(nbformat.read(nb_path, as_version=4))
    assert got == want, f"{nb_path.name} is out of date with {src.name}: run `python3 tasks.py execute {src.name[:2]}`"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), f"{nb_path.name} has unexecuted cells"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{nb_path.name} was committed with an error output"
    assert src_of(nb_path).exists(), f"{nb_path.name} has no jupytext twin {src_of(nb_path).name}"


def src_of(nb_path):
    return nb_path.with_suffix(".py")


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_colab_badge_and_setup_cell(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    text = "\n".join(c.source for c in nb.cells[:3])
    assert f"colab.research.google.com/github/tinydiff/tinydiff/blob/main/notebooks/{nb_path.name}" in text
    assert "google.colab" in text
