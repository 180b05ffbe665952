"""Helpers of the hostile-input tests: run inference.py as the container does, check its one error line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from amf import stacks


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "inference.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    not_progress = [line for line in result.stderr.splitlines() if not line.startswith("INFO ")]
    assert result.returncode == 2, result.stderr
    assert not_progress == errors and len(errors) == 1, result.stderr  # no warning, no traceback
    assert re.search(message, errors[0]), (message, errors[0])


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def mha_file(path: Path, header: dict[str, str], data: bytes = b"") -> Path:
    """A MetaImage file written by hand: every header field is the test's to choose."""
    fields = {"ObjectType": "Image", "NDims": "2", "BinaryData": "True", "CompressedData": "False"}
    fields |= {"DimSize": "8 8", "ElementType": "MET_UCHAR"} | header
    fields["ElementDataFile"] = header.get("ElementDataFile", "LOCAL")
    text = "".join(f"{key} = {value}\n" for key, value in fields.items())
    path.write_bytes(text.encode() + data)
    return path


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The source of each page decoded from now on: every decoded page, from any reader, passes
    through `to_rgb_uint8` once."""
    sources: list[str] = []
    convert = stacks.to_rgb_uint8

    def counted(array: np.ndarray, *, source: str) -> np.ndarray:
        sources.append(source)
        return convert(array, source=source)

    monkeypatch.setattr(stacks, "to_rgb_uint8", counted)
    return sources
