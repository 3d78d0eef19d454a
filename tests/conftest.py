"""Every test starts from the same random state, whatever ran before it on this worker (pytest-xdist hands
files to workers in a varying order), so a test that draws random numbers is deterministic."""

import pytest

import tinydiff as td


@pytest.fixture(autouse=True)
def _seed_everything():
    td.seed_everything(0)
