"""Shared pytest setup: make ``models`` (repository root) and ``helpers`` (this folder) importable."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _run_in_scratch_cwd(tmp_path_factory, monkeypatch):
    """Run every test in an empty scratch directory, so that nothing a test (or the code
    under test) writes relative to the cwd lands in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
