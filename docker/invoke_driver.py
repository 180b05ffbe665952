"""Drive an invoke-mode server as grand-challenge does: sagemaker-shim 0.8.3's steps, without S3.

./test.sh runs this inside the container (`podman exec`, as root like the shim), next to the
image's own entry point: with `--network none` only loopback exists there. The real shim cannot
run here (docs/invoke.md): it needs Python 3.12 and S3 for its start-up record, every input and
every output. So these are its steps, taken from `sagemaker_shim/models.py` (Apache-2.0), with a
read-only folder of cases standing in for S3:

- health: `GET /health`, each call limited to --health-call-timeout s; a refused connection or a
  status other than 200 waits that long before the next call; a redirect fails; at most
  --start-timeout s in all;
- per task: empty /input and /output (clean_path), make /input a link to a new folder
  <linked parent>/<pk>-input, copy the case's files through the link ("download"),
  `POST /invoke` (no body) limited to --task-timeout s; 201 succeeds, any other status fails the
  task; after a 201 copy /output's files into --collect/<case>/ ("upload"); empty both again.

For each case it writes --collect/<case>.status (the HTTP status, or the error) and prints one
line; it judges nothing: ./test.sh checks the statuses and the collected outputs.

Usage: python invoke_driver.py --cases DIR --collect DIR [options] CASE...
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import time
from pathlib import Path


def clean_path(path: Path) -> None:
    """The shim's clean_path: remove everything in `path` (links unlinked, never followed out)."""
    if not path.exists():
        return
    for entry in path.iterdir():
        full_path = entry.resolve()
        if entry.is_symlink():
            entry.unlink()
            continue
        if full_path.is_file():
            full_path.chmod(0o700)
            full_path.unlink()
        elif full_path.is_dir():
            full_path.chmod(0o700)
            clean_path(full_path)
            full_path.rmdir()


def reset_io(input_path: Path, output_path: Path, linked_input: Path) -> None:
    """The shim's reset_io and reset_linked_input: both emptied, /input a link to a new folder."""
    clean_path(input_path)
    clean_path(output_path)
    if input_path.is_symlink():
        input_path.unlink()
    elif input_path.is_dir():
        input_path.rmdir()
    if linked_input.exists():
        linked_input.rmdir()
    linked_input.mkdir(parents=True)
    linked_input.chmod(0o755)
    input_path.symlink_to(linked_input, target_is_directory=True)


def request(port: int, method: str, path: str, timeout: float) -> int:
    """One HTTP call to the server on loopback; its status (redirects are not followed)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_for_health(port: int, call_timeout: float, start_timeout: float) -> float:
    """The shim's health_check; the seconds until the first 200."""
    start = time.monotonic()
    for _ in range(max(1, int(start_timeout / call_timeout))):
        try:
            status = request(port, "GET", "/health", call_timeout)
        except TimeoutError:
            continue
        except ConnectionError:
            time.sleep(call_timeout)
            continue
        if status == 200:
            return time.monotonic() - start
        if 300 <= status < 400:
            raise SystemExit(f"health answered a redirect ({status}): the platform fails the job")
        time.sleep(call_timeout)
    raise SystemExit(f"no 200 from /health within {start_timeout:.0f} s")


def run_task(args: argparse.Namespace, pk: str, case: str) -> str:
    """One task; its outcome for the status file: the HTTP status, or what went wrong."""
    linked_input = args.linked_parent / f"{pk}-input"
    reset_io(args.input, args.output, linked_input)
    try:
        source = args.cases / case
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            target = args.input / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
        try:
            status = request(args.port, "POST", "/invoke", args.task_timeout)
        except TimeoutError:
            return "time limit exceeded"
        except ConnectionError as error:
            return f"could not connect to the invoke endpoint ({error})"
        if status == 201:
            collected = args.collect / case
            for file in (p for p in args.output.rglob("*") if p.is_file() or p.is_symlink()):
                target = collected / file.relative_to(args.output)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)
        return str(status)
    finally:
        reset_io(args.input, args.output, linked_input)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases_to_run", nargs="+", metavar="CASE", help="folders under --cases, in order")
    parser.add_argument("--cases", type=Path, required=True, help="one folder per case (read only)")
    parser.add_argument("--collect", type=Path, required=True, help="where outputs and statuses go")
    parser.add_argument("--port", type=int, default=4743)
    parser.add_argument("--input", type=Path, default=Path("/input"))
    parser.add_argument("--output", type=Path, default=Path("/output"))
    parser.add_argument("--linked-parent", type=Path, default=Path("/opt/ml/input/data"))
    parser.add_argument("--health-call-timeout", type=float, default=10.0)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--task-timeout", type=float, default=600.0)
    args = parser.parse_args()
    seconds = wait_for_health(args.port, args.health_call_timeout, args.start_timeout)
    print(f"health: 200 after {seconds:.1f} s of polling", flush=True)
    for number, case in enumerate(args.cases_to_run, start=1):
        start = time.monotonic()
        outcome = run_task(args, f"{os.getpid()}-{number}", case)
        (args.collect / f"{case}.status").write_text(outcome + "\n")
        print(f"{case}: {outcome} in {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
