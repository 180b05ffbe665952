"""test/compare_output.py: the contract and reference checks test.sh applies to container output."""

from __future__ import annotations

import json
from pathlib import Path

import compare_output as co
import pytest
from conftest import FIXTURE_ENSEMBLE, ROOT, SAMPLE_INPUT

EXPECTED = ROOT / "test" / "expected_output.json"


def write(tmp_path: Path, records: object, name: str = "out.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_expected_output_meets_contract_and_a_changed_copy_fails(tmp_path: Path) -> None:
    """The committed expected output fits the sample input and the shipped threshold; a copy
    with one confidence moved by more than the tolerance is caught."""
    assert co.main([str(EXPECTED), "--input", str(SAMPLE_INPUT), "--model", str(ROOT / "model")]) == 0
    records = json.loads(EXPECTED.read_text())
    records[0]["confidence"] -= 1e-3
    assert co.main([str(write(tmp_path, records)), "--expected", str(EXPECTED)]) == 1


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"class": "atypical", "confidence": 1}, "not a float"),
        ({"class": "atypical", "confidence": float("nan")}, "not a float"),
        ({"class": "normal", "confidence": 1.5}, "not a float"),
        ({"class": "mitosis", "confidence": 0.5}, "is not one of"),
        ({"class": "normal", "confidence": 0.5, "extra": 1}, "expected keys"),
    ],
)
def test_contract_rejects_malformed_records(record: dict, message: str) -> None:
    with pytest.raises(co.ContractError, match=message):
        co.check_contract([record])


def test_contract_checks_page_count_and_threshold() -> None:
    records = [{"class": "normal", "confidence": 0.7}]
    with pytest.raises(co.ContractError, match="1 predictions for 2 input pages"):
        co.check_contract(records, pages=2)
    with pytest.raises(co.ContractError, match="contradicts threshold 0.5"):
        co.check_contract(records, threshold=0.5)
    co.check_contract(records, pages=1, threshold=0.8)


def test_compare_uses_the_absolute_tolerance() -> None:
    reference = [{"class": "normal", "confidence": 0.1}]
    co.compare([{"class": "normal", "confidence": 0.10005}], reference, atol=1e-4)
    with pytest.raises(co.ContractError, match="tolerance"):
        co.compare([{"class": "normal", "confidence": 0.1002}], reference, atol=1e-4)
    with pytest.raises(co.ContractError, match="class atypical, expected normal"):
        co.compare([{"class": "atypical", "confidence": 0.1}], reference, atol=1e-4)


def test_differs_from_fails_on_equal_predictions() -> None:
    records = [{"class": "normal", "confidence": 0.1}]
    with pytest.raises(co.ContractError, match="equal the other"):
        co.check_differs(records, records, atol=1e-4)
    co.check_differs(records, [{"class": "normal", "confidence": 0.2}], atol=1e-4)


def test_main_reports_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, [{"class": "atypical", "confidence": 0.2}])
    assert co.main([str(path), "--model", str(FIXTURE_ENSEMBLE)]) == 1
    assert capsys.readouterr().out.strip() == "item 0: class atypical contradicts threshold 0.5"
