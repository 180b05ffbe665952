"""Hostile manifests, options and output folders, run as the container runs them (`python inference.py`).

Every case must end with exit status 2, exactly one ERROR line naming the file and the problem,
no traceback, and nothing in the output folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import FIXTURE_ENSEMBLE, SAMPLE_INPUT
from hostile import assert_one_error_line, deep_json, run_cli


def manifest_with(tmp: Path, change: Callable[[dict], object]) -> Path:
    model = Path(shutil.copytree(FIXTURE_ENSEMBLE, tmp / "model"))
    data = json.loads((model / "manifest.json").read_text())
    change(data)
    (model / "manifest.json").write_text(json.dumps(data) if not isinstance(data, str) else data)
    return model


MANIFEST_CASES: dict[str, tuple[Callable[[dict], object], str]] = {
    "threshold true": (
        lambda d: d["threshold"].update(value=True),
        "threshold.value must be a finite number",
    ),
    "threshold string": (
        lambda d: d["threshold"].update(value="0.5"),
        "threshold.value must be a finite number",
    ),
    "threshold above 1": (lambda d: d["threshold"].update(value=1.5), r"threshold.value must be in \[0, 1\]"),
    "std infinite": (
        lambda d: d["input"].update(std=[float("inf")] * 3),
        "input.std must be a list of finite",
    ),
    "mean NaN": (lambda d: d["input"].update(mean=[float("nan")] * 3), "input.mean must be a list of finite"),
    "tta a list": (lambda d: d.update(tta=["dihedral"]), "tta must be a string"),
    "fold file a number": (
        lambda d: d["folds"][0].update(file=7),
        r"folds\[\]\.file must be a relative path",
    ),
    "fold file climbs out": (
        lambda d: d["folds"][0].update(file="../x"),
        r"folds\[\]\.file must be a relative",
    ),
    "fold sha256 junk": (lambda d: d["folds"][0].update(sha256="abc"), r"folds\[\]\.sha256 must be 64 hex"),
    "size enormous": (
        lambda d: d["input"].update(size=60000),
        r"input\.size must be in 16\.\.1024, got 60000",
    ),
    "size a float": (lambda d: d["input"].update(size=128.5), r"input\.size must be an integer"),
    "onnx file absolute": (
        lambda d: d.update(onnx={"fp32": {"file": "/etc/passwd"}}),
        "'file' is a relative path",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_bad_manifest_is_one_line(tmp_path: Path, case: str) -> None:
    change, message = MANIFEST_CASES[case]
    model = manifest_with(tmp_path, change)
    result = run_cli("--input", str(SAMPLE_INPUT), "--output", str(tmp_path / "out"), "--model", str(model))
    assert_one_error_line(result, rf"manifest\.json: .*{message}")
    assert not (tmp_path / "out").exists()


def test_manifest_nested_deep_or_not_an_object(tmp_path: Path) -> None:
    for text, message in [
        (deep_json(), r"not valid JSON \(RecursionError"),
        ("[1]", "expected a JSON object"),
    ]:
        model = Path(shutil.copytree(FIXTURE_ENSEMBLE, tmp_path / "model"))
        (model / "manifest.json").write_text(text)
        result = run_cli(
            "--input", str(SAMPLE_INPUT), "--output", str(tmp_path / "out"), "--model", str(model)
        )
        assert_one_error_line(result, rf"manifest\.json: {message}")
        shutil.rmtree(model)


@pytest.mark.parametrize("value", ["0", "-1", "x", "100000"])
def test_batch_size_out_of_range_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = run_cli("--input", str(SAMPLE_INPUT), "--output", str(tmp_path / "out"), "--batch-size", value)
    assert result.returncode == 2 and "argument --batch-size:" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["a file", "unwritable"])
def test_output_that_cannot_be_written(tmp_path: Path, where: str) -> None:
    if where == "a file":
        output = tmp_path / "out"
        output.write_text("not a folder")
    else:
        output = Path("/proc/amf-cannot-write-here")  # no one, root included, can make this
    result = run_cli("--input", str(SAMPLE_INPUT), "--output", str(output), "--model", str(FIXTURE_ENSEMBLE))
    assert_one_error_line(result, rf"{output.name}: cannot write")
