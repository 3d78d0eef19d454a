"""Every lesson guide has an equation map, and every function and test it names exists."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.md"))
SECTIONS = ["## You will be able to", "## Before you start", "## Equation map", "## Exercises", "## Read more",
            "## For instructors"]


def _equation_rows(text):
    part = text.split("## Equation map", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in part.splitlines() if line.startswith("|")]
    return rows[2:]  # skip the header and the |---| line


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_guide_has_all_sections_and_links_its_notebook(guide):
    text = guide.read_text()
    for section in SECTIONS:
        assert section in text, f"{guide.name} lacks the section {section!r}"
    nb = f"../notebooks/{guide.stem}.ipynb"
    assert nb in text, f"{guide.name} must link its notebook {nb}"
    assert (ROOT / "notebooks" / f"{guide.stem}.ipynb").exists()


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_equation_map_names_existing_functions_and_tests(guide):
    rows = _equation_rows(guide.read_text())
    assert rows, f"{guide.name} has an empty equation map"
    for row in rows:
        funcs = re.findall(r"`(tinydiff(?:\.\w+)+)`", row)
        tests = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", row)
        assert funcs, f"{guide.name}: row without a tinydiff function: {row}"
        assert tests, f"{guide.name}: row without a test: {row}"
        for name in funcs:
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):  # import the longest module prefix, then getattr the rest
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                    break
                except ModuleNotFoundError:
                    continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"{guide.name}: {name} does not exist"
                obj = getattr(obj, attr)
        for path, test in tests:
            src = (ROOT / path)
            assert src.exists(), f"{guide.name}: {path} does not exist"
            assert re.search(rf"^\s*def {test}\(", src.read_text(), re.M), f"{guide.name}: {path}::{test} does not exist"


def _table_rows(text):
    """Yield (header, row) for every row of every Markdown table in ``text``."""
    header = None
    for line in text.splitlines():
        if line.startswith("|"):
            header = header or line
            yield header, line
        else:
            header = None


@pytest.mark.parametrize("doc", [ROOT / "README.md", *GUIDES], ids=lambda p: p.name)
def test_markdown_tables_have_a_constant_number_of_columns(doc):
    """An unescaped | inside a cell (e.g. p(z|x)) splits it and breaks the table on GitHub: write \\| or \\mid."""
    def cells(line):
        return len(re.findall(r"(?<!\\)\|", line))

    for header, row in _table_rows(doc.read_text()):
        assert cells(row) == cells(header), f"{doc.name}: this row has a stray '|': {row[:120]}"
