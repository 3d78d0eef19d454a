"""A notebook runs twice in one kernel (Run All, then Run All again): no cell depends on a state that only a fresh
kernel has (a consumed generator, a model trained in place, a changed global setting). Two notebooks with much state:
00 (training, sampling, checks) and 08 (autoencoders, latents, a conditional LDM), in the quick profile."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("stem", ["00_tour", "08_latent_diffusion"])
def test_notebook_runs_twice_in_one_kernel(stem, monkeypatch):
    monkeypatch.setenv("TINYDIFF_PROFILE", "quick")
    monkeypatch.setenv("TINYDIFF_PROGRESS", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / f"{stem}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(ROOT)}})
    with client.setup_kernel():
        for run in (1, 2):
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)  # raises CellExecutionError, naming the cell, on any error
            failed = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if "FAILED" in "".join(o.get("text", "")) and "caught" not in "".join(o.get("text", ""))]
            assert not failed, f"run {run}: a check cell failed: {failed[0]['text'][:300]}"
