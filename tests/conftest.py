"""Shared test settings: a non-interactive matplotlib backend and the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture
def book_data() -> Path:
    """The folder of real datasets (BOOK_DATA); skip the test when it is not available."""
    value = os.environ.get("BOOK_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("set BOOK_DATA to the folder with the datasets to run real-data tests")
    return Path(value)
