"""amf.writing: the contract's records, the CSV, and all-or-nothing output."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from amf import writing
from amf.errors import OutputError


def test_predictions_contract() -> None:
    records = writing.predictions(np.array([0.0, 0.25, 0.5, 1.0]), threshold=0.5)
    assert [r["class"] for r in records] == ["normal", "normal", "atypical", "atypical"]
    assert all(type(r["confidence"]) is float for r in records)
    assert '"confidence": 0.0' in json.dumps(records) and '"confidence": 1.0' in json.dumps(records)
    with pytest.raises(ValueError, match="finite values in"):
        writing.predictions(np.array([0.2, np.nan]), threshold=0.5)


def test_write_predictions_json_and_csv(tmp_path: Path) -> None:
    records = writing.predictions(np.array([0.123456789, 0.9]), threshold=0.5)
    writing.write_predictions(tmp_path / "out", records, ["a.png", "b/c.tif#1"])
    assert json.loads((tmp_path / "out" / writing.OUTPUT_NAME).read_text()) == records
    with open(tmp_path / "out" / writing.CSV_NAME) as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0] == {"file": "a.png", "p_atypical": "0.123456789", "class": "normal"}
    assert rows[1]["file"] == "b/c.tif#1" and rows[1]["class"] == "atypical"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [writing.OUTPUT_NAME, writing.CSV_NAME]


@pytest.mark.parametrize("name", ['=HYPERLINK("http://x")', "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_a_spreadsheet_would_run_are_quoted(name: str) -> None:
    assert writing.safe_cell(name) == "'" + name
    assert writing.safe_cell("plain=name.png") == "plain=name.png"


def test_undecodable_file_names_are_escaped() -> None:
    name = os.fsdecode(b"crop\xff.png")
    assert writing.safe_cell(name) == "crop\\xff.png"


def test_a_grand_challenge_run_removes_an_older_csv_and_report(tmp_path: Path) -> None:
    records = writing.predictions(np.array([0.1]), 0.5)
    writing.write_predictions(tmp_path, records, ["a.png"], iter(["<p>", "a.png</p>"]))
    assert (tmp_path / writing.REPORT_NAME).read_text() == "<p>a.png</p>"
    (tmp_path / f".{writing.OUTPUT_NAME}.abc.tmp").write_text("left by a killed run")
    (tmp_path / "notes.txt").write_text("the user's")
    writing.write_predictions(tmp_path, records, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [writing.OUTPUT_NAME, "notes.txt"]


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = writing.predictions(np.array([0.1]), 0.5)
    synced = []

    def full_disk(fd: int) -> None:  # the second file hits a full disk
        synced.append(fd)
        if len(synced) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing.os, "fsync", full_disk)
    with pytest.raises(OutputError, match=rf"{writing.CSV_NAME}: cannot write \(No space left on device\)"):
        writing.write_predictions(tmp_path, records, ["a.png"])
    assert list(tmp_path.iterdir()) == []


def test_a_report_failing_halfway_leaves_nothing(tmp_path: Path) -> None:
    """The report is written piece by piece, last: the JSON and CSV, complete by then, go too."""
    records = writing.predictions(np.array([0.1]), 0.5)

    def pieces():
        yield "<p>first card</p>"
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=rf"{writing.REPORT_NAME}: cannot write \(No space left"):
        writing.write_predictions(tmp_path, records, ["a.png"], pieces())
    assert list(tmp_path.iterdir()) == []


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputError, match=r"out: cannot write"):
        writing.write_predictions(tmp_path / "out", writing.predictions(np.array([0.1]), 0.5), None)


def test_rows_round_trip_with_the_columns_given(tmp_path: Path) -> None:
    path = writing.write_rows(tmp_path / "t.csv", iter([{"b": 1, "a": "x,y"}]), columns=["a", "b"])
    assert path.read_text().splitlines()[0] == "a,b"
    assert writing.read_rows(path) == [{"a": "x,y", "b": "1"}]
    assert writing.read_rows(writing.write_rows(tmp_path / "e.csv", [], columns=["a"])) == []


def test_write_with_keeps_the_old_file_and_no_temporary_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"ha")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        writing.write_with(path, half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"] and path.read_bytes() == b"old"
    writing.write_with(path, lambda tmp: tmp.write_bytes(b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"] and path.read_bytes() == b"new"


def test_sha256_of_a_file_is_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1_000_000)
    assert writing.sha256_of(path) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()
