"""bench/gpu_check.py without CUDA: it records the environment, skips every GPU check with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import ROOT

GPU_CHECKS = ("torch-cuda-fp16", "l2-speed", "amp-train", "torchrun", "onnx-cuda")


def test_without_cuda_every_gpu_check_is_skipped_with_a_reason(tmp_path):
    out = tmp_path / "report.md"
    hidden = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, even on a GPU machine
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--out", str(out)],
        cwd=ROOT,
        env=hidden,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - started < 60  # nothing heavy runs without CUDA
    printed = done.stdout.splitlines()
    assert printed[0].startswith("PASS environment: torch ")
    for name in GPU_CHECKS:  # one line each, saying why
        assert [line for line in printed if line.startswith(f"SKIP {name}: no CUDA device")]
    report = out.read_text()
    assert "- Command: `python bench/gpu_check.py --out " in report
    table = [line for line in report.splitlines() if line.startswith("| ")][1:]  # below the header
    rows = {cells[0]: cells[1:] for cells in map(_cells, table)}
    assert list(rows) == ["environment", *GPU_CHECKS]
    assert rows["environment"][1] == "PASS"
    for name in GPU_CHECKS:
        what, status, measured, reason = rows[name]
        assert what and status == "SKIP" and not measured and reason.startswith("no CUDA device")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]
