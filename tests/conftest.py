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
