"""Shared test fixtures: paths to the committed fixtures and to the optional real data, and the
two artefacts built once per session (the exported fixture ensemble, a finished tiny
leave-one-domain-out run). Tests must not change those two; one that needs to takes a copy.
A changed one fails the session at teardown, naming the files. Tests using the export are
marked slow (SLOW_FIXTURES); the tiny run takes seconds and stays in the inner loop."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import amf  # noqa: E402, F401  (before any test imports onnxruntime: it switches ONNX Runtime's telemetry off)

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


# Session fixtures whose one-off cost (seconds on 2 CPU cores) puts every test that needs them
# in the `slow` set, so that `pytest -m "not slow"` never builds them.
SLOW_FIXTURES = {"exported_ensemble": "the ONNX export takes ~5-10 s"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _unchanged(folder: Path, before: dict[str, str], what: str) -> None:
    after = _snapshot(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test changed the shared {what} ({changed[:5]}); it must take a copy"


@pytest.fixture(scope="session")
def exported_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the fixture ensemble exported to ONNX by the CLI (dynamo), once per session.

    Read-only for the tests that share it: copy it (shutil.copytree) to change anything.
    """
    from amf.__main__ import main

    model_dir = Path(shutil.copytree(FIXTURE_ENSEMBLE, tmp_path_factory.mktemp("exported") / "ensemble"))
    argv = ["export-onnx", "--model", str(model_dir), "--crops", str(SAMPLE_INPUT), "--exporter", "dynamo"]
    assert main(argv) == 0
    before = _snapshot(model_dir)
    yield model_dir
    _unchanged(model_dir, before, "exported ensemble")


@pytest.fixture(scope="session")
def lodo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list]]:
    """A leave-one-domain-out plan (2 synthetic domains x 2 folds) and a finished run of it, once
    per session: (root, plan path, samples); the run is root/"run", the crops root/"crops".

    Read-only for the tests that share it: copy the run folder to change anything.
    """
    from synthetic_data import TINY, make_table

    from amf import plan, runs

    root = tmp_path_factory.mktemp("lodo")
    table, samples = make_table(root)
    the_plan = plan.make_plan(samples, table=table, domain_column="cancer_type", n_folds=2)
    plan_path = plan.save_plan(the_plan, root / "plan.json")
    runs.run_plan(plan_path, root / "run", TINY)
    before = _snapshot(root)
    yield root, plan_path, samples
    _unchanged(root, before, "leave-one-domain-out run")


@pytest.fixture(scope="session")
def lodo_run(lodo: tuple[Path, Path, list]) -> Path:
    """The finished run folder of `lodo` (read-only)."""
    return lodo[0] / "run"
