"""Invoke mode (`python -m amf serve`) against the reference approach's cold exec run.

In invoke mode grand-challenge starts the process once and POSTs /invoke per stack, so a stack
costs one warm invocation; in exec mode it costs a whole process. Measured here:

- start-up: from starting `python -m amf serve` (the shipped model/, the default back end) to
  the first `GET /health` 200, in fresh processes (the goal: within 3 s);
- per invocation: the client's wall time of `POST /invoke` on one 16-crop stack, after one
  untimed warm-up invocation, in one long-lived server;
- the reference's cold run: bench/reference.py on the same stack as a whole process
  (bench_cold.py's command), alternated with the invocations, so that a busy spell of the
  machine falls on both (the goal: an invocation within 0.05 of it).

Usage: python bench/bench_invoke.py [--stack DIR] [--rounds 5] [--starts 3] [--workdir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_cold import reference_command
from bench_inference import ROOT, STACK, emit, heading, run_child

HEALTH_GOAL_S = 3.0
INVOCATION_GOAL = 0.05  # of the reference's cold run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(port: int, method: str, path: str) -> int:
    """One request to the server; its status, or 0 when nothing listens yet."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status
    except ConnectionRefusedError:
        return 0
    finally:
        connection.close()


def start_server(workdir: Path) -> tuple[subprocess.Popen, int, float]:
    """A fresh server reading the link workdir/input; (process, port, seconds to /health 200)."""
    port = free_port()
    command = [sys.executable, "-m", "amf", "serve", "--input", str(workdir / "input")]
    command += ["--output", str(workdir / "output"), "--host", "127.0.0.1", "--port", str(port)]
    with open(workdir / "server.log", "a") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stderr=log)
    while (status := call(port, "GET", "/health")) != 200:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}): see {workdir / 'server.log'}")
        if status == 0:
            time.sleep(0.01)
    return process, port, time.perf_counter() - start


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def invocation_seconds(port: int) -> float:
    start = time.perf_counter()
    status = call(port, "POST", "/invoke")
    if status != 201:
        raise RuntimeError(f"POST /invoke answered {status}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", type=Path, default=STACK)
    parser.add_argument(
        "--rounds", type=int, default=5, help="reference cold runs and invocations, alternated"
    )
    parser.add_argument("--starts", type=int, default=3, help="fresh servers timed to /health 200")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/amf-bench-invoke"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "output").mkdir(exist_ok=True)
    (args.workdir / "input").unlink(missing_ok=True)
    (args.workdir / "input").symlink_to(args.stack.resolve(), target_is_directory=True)
    load_before = os.getloadavg()[0]
    health = []
    for _ in range(args.starts):
        process, _, seconds = start_server(args.workdir)
        health.append(seconds)
        stop(process)
    reference_run = reference_command(args.stack, args.workdir)
    process, port, _ = start_server(args.workdir)
    try:
        invocation_seconds(port)  # warm-up
        reference, invocations = [], []
        for round_ in range(args.rounds):
            first_reference = round_ % 2 == 0
            if first_reference:
                reference.append(run_child(reference_run, args.workdir)[0])
            invocations.append(invocation_seconds(port))
            if not first_reference:
                reference.append(run_child(reference_run, args.workdir)[0])
    finally:
        stop(process)
    cold, warm, ready = (statistics.median(values) for values in (reference, invocations, health))
    lines = [
        *heading(f"Invoke mode, one stack ({args.stack}), {args.rounds} alternated rounds"),
        f"Load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| measured | median s | all s | goal | met |",
        "|---|---|---|---|---|",
        f"| reference: cold exec run (bench/reference.py) | {cold:.2f} | {_all(reference)} | | |",
        f"| ours: `POST /invoke`, warm (model/, default back end) | {warm:.3f} | {_all(invocations)} | "
        f"<= {INVOCATION_GOAL} x reference = {INVOCATION_GOAL * cold:.2f} s: **{warm / cold:.3f} x** | "
        f"{_met(warm <= INVOCATION_GOAL * cold)} |",
        f"| ours: process start -> `GET /health` 200 | {ready:.2f} | {_all(health)} | "
        f"<= {HEALTH_GOAL_S:.0f} s | {_met(ready <= HEALTH_GOAL_S)} |",
    ]
    emit(lines, args.out)


def _met(met: bool) -> str:
    return "yes" if met else "**no**"


def _all(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    main()
