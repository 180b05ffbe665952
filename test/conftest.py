"""Shared test fixtures: paths to the committed fixtures and to the optional real data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURE_ENSEMBLE = ROOT / "test" / "fixtures" / "ensemble"
SAMPLE_INPUT = ROOT / "test" / "input"


@pytest.fixture
def fixture_ensemble() -> Path:
    """The committed random-weight test ensemble (tiny timm model, 3 folds)."""
    return FIXTURE_ENSEMBLE


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path
