"""Fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from datahelpers import make_color_dataset


@pytest.fixture
def color_dataset(tmp_path: Path) -> Path:
    """A 32x32 colour-mask dataset: 6 train, 2 val, 2 test images."""
    return make_color_dataset(tmp_path / "ds", {"train": 6, "val": 2, "test": 2})
