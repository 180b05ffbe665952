"""amf.progress: a log line every interval off a terminal, a bar with rate and time left on one."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_ENSEMBLE, ROOT
from make_fixtures import synthetic_crops
from PIL import Image

from amf import progress, writing


def ticking(step: float) -> Iterator[float]:
    """A clock that moves `step` seconds at every reading."""
    now = 0.0
    while True:
        yield now
        now += step


def read_all(leader: int) -> str:
    """What was written to a pseudo-terminal whose other end is closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: nothing left, the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks).decode()


def test_off_a_terminal_a_log_line_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    batches = [[0, 1]] * 5  # 10 crops; the clock moves 5 s per batch
    clock = ticking(5.0)
    stream = io.StringIO()  # not a terminal
    with caplog.at_level(logging.INFO, logger="amf.progress"):
        passed = list(progress.tracked(batches, 10, stream=stream, interval=10.0, clock=clock.__next__))
    assert passed == batches
    assert stream.getvalue() == ""
    assert caplog.messages == [
        "classifying 10 crops",
        "4/10 crops (40%), 0.4 crops/s, 15 s left",
        "8/10 crops (80%), 0.4 crops/s, 5 s left",
        "classified 10 crops in 30 s (0.3 crops/s)",
    ]


def test_a_run_shorter_than_the_interval_logs_only_start_and_end(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="amf.progress"):
        list(progress.tracked([[0] * 3] * 4, 12, stream=io.StringIO(), clock=ticking(1.0).__next__))
    assert caplog.messages == ["classifying 12 crops", "classified 12 crops in 5 s (2.4 crops/s)"]


@pytest.mark.parametrize("columns", [100, 0])  # 0: a terminal that does not say its width
def test_on_a_terminal_a_bar_with_rate_and_time_left(caplog: pytest.LogCaptureFixture, columns: int) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    with os.fdopen(follower, "w") as terminal, caplog.at_level(logging.INFO, logger="amf.progress"):
        assert terminal.isatty() and os.get_terminal_size(terminal.fileno()).columns == columns
        passed = list(progress.tracked([[0] * 4] * 3, 12, stream=terminal))
    assert passed == [[0] * 4] * 3
    shown = read_all(leader)
    assert "\r" in shown  # redrawn in place
    assert "classifying: 100%" in shown and "12/12" in shown
    assert "crop/s" in shown and "<00:00" in shown  # the rate and the time left
    assert caplog.messages == []  # the bar instead of log lines, not as well
    if columns:
        assert max(len(line) for line in shown.split("\r")) <= columns


def test_inference_on_a_terminal_shows_the_bar(tmp_path: Path) -> None:
    """`python inference.py` on a folder, its stderr a terminal: the bar, and the run's result."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, crop in enumerate(synthetic_crops(5, np.random.default_rng(4))):
        Image.fromarray(crop).save(folder / f"{i}.png")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    command = [sys.executable, "inference.py", "--input", str(folder), "--output", str(tmp_path / "out")]
    command += ["--model", str(FIXTURE_ENSEMBLE), "--batch-size", "2"]
    with ThreadPoolExecutor(1) as pool:  # read while it runs: a full terminal would block it
        shown = pool.submit(read_all, leader)
        result = subprocess.run(command, cwd=ROOT, stderr=follower, stdout=subprocess.DEVNULL, timeout=300)
        os.close(follower)
        text = shown.result(timeout=60)
    assert result.returncode == 0, text
    assert "classifying: 100%" in text and "5/5" in text and "crop/s" in text
    assert "amf.progress" not in text  # a bar, not log lines
    assert (tmp_path / "out" / writing.REPORT_NAME).is_file()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (45, "45 s"), (125, "2 min 05 s"), (11_220, "3 h 07 min")]
)
def test_duration(seconds: float, text: str) -> None:
    assert progress.duration(seconds) == text
