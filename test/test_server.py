"""The invoke-mode server (`python -m amf serve`) as grand-challenge drives it: one process, the
input a symlink re-pointed before each `POST /invoke`, the output emptied after each."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURE_ENSEMBLE, ROOT, SAMPLE_INPUT
from test_hostile_inputs import DECODE_CASES, INPUT_CASES
from test_predict import assert_contract

from amf import manifest, writing
from amf.server import InvokeServer

START_TIMEOUT_S = 120  # the torch back end's imports on a loaded 2-core machine
SERVING = re.compile(r"serving .* on 127\.0\.0\.1:(\d+)$")


class Server:
    """`python -m amf serve` on a free loopback port, reading the link `input`, writing `output`."""

    def __init__(self, folder: Path, model: Path = FIXTURE_ENSEMBLE) -> None:
        self.input, self.output, self.log = folder / "input", folder / "output", folder / "server.log"
        self.output.mkdir(parents=True)
        command = [
            sys.executable,
            "-m",
            "amf",
            "serve",
            "--input",
            str(self.input),
            "--output",
            str(self.output),
        ]
        command += ["--model", str(model), "--host", "127.0.0.1", "--port", "0"]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stderr=log, text=True)
        self.port = self._wait_until_serving()

    def _wait_until_serving(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            if match := SERVING.search(self.log.read_text().strip().split("\n")[-1]):
                return int(match.group(1))
            time.sleep(0.05)
        raise AssertionError(f"server not serving (exit {self.process.poll()}):\n{self.log.read_text()}")

    def link(self, target: Path) -> None:
        """What the platform does before each task: /input becomes a link to the task's folder."""
        self.input.unlink(missing_ok=True)
        self.input.symlink_to(target)

    def request(self, method: str, path: str) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def invoke(self, target: Path, collected: Path) -> tuple[int, dict, list[str]]:
        """One task: link `target`, POST /invoke, then move what was written into `collected` (the
        platform uploads it) so the output is empty again; (status, body, names written)."""
        self.link(target)
        status, body = self.request("POST", "/invoke")
        collected.mkdir(exist_ok=True)
        written = sorted(path.rename(collected / path.name).name for path in self.output.iterdir())
        return status, body, written

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module, as the platform keeps one process for many tasks."""
    started = Server(tmp_path_factory.mktemp("serve"))
    yield started
    started.stop()


def test_health_answers_200_once_ready(server: Server) -> None:
    assert server.request("GET", "/health") == (200, {"status": "ready"})
    assert server.request("GET", "/nothing")[0] == 404


def test_invocation_classifies_the_linked_input(server: Server, tmp_path: Path) -> None:
    status, body, written = server.invoke(SAMPLE_INPUT, tmp_path)
    assert (status, body["crops"], written) == (201, 6, [writing.OUTPUT_NAME])
    assert_contract(tmp_path, 6, manifest.load(FIXTURE_ENSEMBLE).threshold.value)


@pytest.mark.parametrize("case", sorted(INPUT_CASES | DECODE_CASES))
def test_hostile_input_fails_that_task_only(server: Server, tmp_path: Path, case: str) -> None:
    """Each hostile case of test_hostile_inputs.py: a non-201 status, one ERROR line in the log,
    nothing written; the next valid task is served as usual."""
    build, _ = (INPUT_CASES | DECODE_CASES)[case]
    logged = len(server.log.read_text().splitlines())
    status, body, written = server.invoke(build(tmp_path), tmp_path / "hostile")
    new_lines = server.log.read_text().splitlines()[logged:]
    assert status == 422, body
    assert written == []
    errors = [line for line in new_lines if line.startswith("ERROR")]
    assert errors == [f"ERROR amf.server: {body['error']}"] and "\n" not in body["error"]
    assert not any("Traceback" in line for line in new_lines)
    assert server.invoke(SAMPLE_INPUT, tmp_path / "valid")[::2] == (201, [writing.OUTPUT_NAME])


def test_binding_looks_up_no_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """HTTPServer's bind asks socket.getfqdn for its host: a DNS query on a real interface."""
    monkeypatch.setattr(socket, "getfqdn", lambda *_: pytest.fail("socket.getfqdn called"))
    bound = InvokeServer(("127.0.0.1", 0), tmp_path / "in", tmp_path / "out", batch_size=16)
    try:
        assert bound.server_name == "127.0.0.1" and bound.server_port > 0
    finally:
        bound.server_close()


def test_sigterm_ends_the_process_within_5_s(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        assert server.request("GET", "/health")[0] == 200
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=5) == 128 + signal.SIGTERM
        assert time.monotonic() - start < 5
        assert "terminated: shutting down" in server.log.read_text()
    finally:
        server.stop()


def test_bad_ensemble_ends_the_process_with_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "amf", "serve", "--model", str(tmp_path / "none"), "--port", "0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("ERROR amf: ") and "Traceback" not in result.stderr
