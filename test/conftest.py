"""Shared test fixtures: paths to the committed fixtures and to the optional real data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
FIXTURE_ENSEMBLE = ROOT / "test" / "fixtures" / "ensemble"
SAMPLE_INPUT = ROOT / "test" / "input"


@pytest.fixture
def fixture_ensemble() -> Path:
    """The committed random-weight test ensemble (tiny timm model, 3 folds)."""
    return FIXTURE_ENSEMBLE


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the calling test when it is absent."""
    return shared("data", *parts)


def shared(*parts: str) -> Path:
    """A path under ../shared, skipping the calling test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path
