"""The repository a newcomer meets: one dependency list, CI = the README's test command, every lesson listed."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
CONDA_TO_PIP = {"pytorch": "torch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_installs_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pip_deps = {_name(r): r for r in project["dependencies"] + extras["dev"] + extras["lab"]}
    assert {_name(r) for r in extras["colab"]} <= set(pip_deps), "the colab extra must be a part of what dev installs"
    conda = []
    text = (ROOT / "environment.yml").read_text()
    channels = text.split("\nchannels:\n", 1)[1].split("\ndependencies:\n", 1)[0].split()
    assert channels == ["-", "conda-forge"], f"conda-forge only (the pytorch channel is frozen at 2.5): {channels}"
    deps = text.split("\ndependencies:\n", 1)[1]
    for line in deps.splitlines():
        m = re.match(r"^  - ([A-Za-z][\w.\-]*.*)$", line)  # top-level conda dependencies (2-space indent)
        if m and not m.group(1).startswith(("python", "pip")):
            conda.append(m.group(1))
    conda_deps = {CONDA_TO_PIP.get(_name(r), _name(r)): r for r in conda}
    assert set(conda_deps) == set(pip_deps)
    for name, req in pip_deps.items():  # the same lower bounds too
        assert req.replace(name, "", 1) == conda_deps[name].split(" ", 1)[0].replace(_name(conda_deps[name]), "", 1)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "python3 tasks.py test" in readme and "python3 tasks.py book" in readme
    assert "python3 tasks.py test" in (ROOT / ".ci" / "run").read_text()


def test_readme_lists_every_notebook_and_guide():
    readme = (ROOT / "README.md").read_text()
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f"notebooks/{nb.name}" in readme, f"README does not list {nb.name}"
        assert f"lessons/{nb.stem}.md" in readme, f"README does not link lessons/{nb.stem}.md"
        assert (ROOT / "lessons" / f"{nb.stem}.md").exists(), f"lessons/{nb.stem}.md is missing"
    for link in re.findall(r"\]\((notebooks/[^)]+|lessons/[^)]+)\)", readme):
        assert (ROOT / link).exists(), f"README links {link}, which does not exist"


def test_the_wheel_contains_every_module_of_the_package(tmp_path):
    """pyproject.toml must find the subpackages (models/, data/): a wheel without them breaks the Colab install."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a clean copy: an egg-info left by `pip install -e` would list the files for setuptools
    shutil.copytree(ROOT / "tinydiff", src / "tinydiff", ignore=shutil.ignore_patterns("__pycache__", "*.tmp"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tinydiff-*.whl")
    inside = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    here = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tinydiff").rglob("*.py")}
    assert here - inside == set(), f"missing from the wheel: {sorted(here - inside)}"
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tinydiff" / "checkpoints").glob("*.pt")}
    assert shipped and shipped <= set(zipfile.ZipFile(wheel).namelist()), "the shipped checkpoints must be in the wheel"


def _tasks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_times_are_the_committed_notebooks_own():
    """The per-notebook table is generated from the notebooks' execution timestamps, so it cannot drift."""
    tasks = _tasks()
    readme = (ROOT / "README.md").read_text()
    assert tasks.readme_times_block(readme) == tasks.times_table(), (
        "README's times no longer match the executed notebooks: run `python3 tasks.py times` and commit README.md")


def test_notebook_seconds_reads_nbclient_timestamps(tmp_path):
    import json

    def cell(busy, idle):
        return {"cell_type": "code", "metadata": {"execution": {"iopub.status.busy": busy, "iopub.status.idle": idle}}}

    nb = {"cells": [{"cell_type": "markdown", "metadata": {}}, cell("2026-11-25T19:57:20.5Z", "2026-11-25T19:57:21Z"),
                    cell("2026-11-25T19:57:21Z", "2026-11-25T19:59:30.25Z")]}
    (tmp_path / "00_x.ipynb").write_text(json.dumps(nb))
    assert _tasks().notebook_seconds(tmp_path / "00_x.ipynb") == (129.75, "2026-11-25")


def test_lab_works_on_ignored_copies_and_keeps_the_students_edits(tmp_path, monkeypatch):
    tasks = _tasks()
    monkeypatch.setattr(tasks, "WORK", tmp_path / "work")
    made = tasks.working_copies()
    names = sorted(p.name for p in made)
    assert names == sorted(p.name for p in tasks._notebooks([])) and names
    assert (tmp_path / "work" / ".gitignore").read_text().splitlines()[-1] == "*", "work/ must ignore itself"
    mine = tmp_path / "work" / names[0]
    mine.write_text("my edits")
    assert tasks.working_copies() == [] and mine.read_text() == "my edits", "a second lab must not overwrite"
    again = tasks.working_copies([names[0][:2]], fresh=True)
    assert again == [mine] and mine.read_bytes() == (ROOT / "notebooks" / names[0]).read_bytes()
    (old,) = (tmp_path / "work" / "old").iterdir()
    assert old.read_text() == "my edits", "the replaced copy is kept in work/old/"


def test_readme_states_the_python_that_tasks_py_requires():
    readme = (ROOT / "README.md").read_text()
    tasks_src = (ROOT / "tasks.py").read_text()
    assert "Python 3.11 or newer" in readme and "sys.version_info < (3, 11)" in tasks_src
    assert "3.10+" not in readme and "3.10+" not in tasks_src


def test_citation_cff_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", cff, re.M) and re.search(r"^title: ", cff, re.M)
    assert f'version: {project["version"]}' in cff, "CITATION.cff's version must be pyproject.toml's"
    assert f'repository-code: "{project["urls"]["Source"]}"' in cff
    assert re.search(r"^authors:\n  - name: ", cff, re.M)
