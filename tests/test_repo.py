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
    import subprocess
    import sys
    import zipfile

    import shutil

    src = tmp_path / "src"  # a clean copy: an egg-info left by `pip install -e` would list the files for setuptools
    shutil.copytree(ROOT / "tinydiff", src / "tinydiff", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tinydiff-*.whl")
    inside = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    here = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tinydiff").rglob("*.py")}
    assert here - inside == set(), f"missing from the wheel: {sorted(here - inside)}"
