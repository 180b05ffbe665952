"""grand-challenge's invoke mode: the ensemble loaded once, then one job per `POST /invoke`.

The platform starts the image's entry point once and calls it over HTTP on port 4743
(docs/invoke.md): `GET /health` must answer 200 when the process is ready, and each
`POST /invoke` must classify the current `/input` into `/output` and answer 201; any other
status fails that task only. Each job is `amf.predict.run_job`, the exec mode's own code path:
the same checks, the same all-or-nothing output, the same one-line error, logged here and
answered with 422 (bad input) or 500 (anything else) while the process serves the next task.

Only the standard library serves HTTP (docs/invoke.md says why): one thread, one request at a
time, as the platform sends them. The socket listens before the ensemble loads, so a health call
that arrives during the load waits in the kernel's queue and is answered the moment the model is
ready, instead of being refused (the platform's client then waits 10 s before it asks again).
SIGTERM ends the process within one batch of work: between requests at once, during a job
after the forward pass in flight, with that job's outputs removed.
"""

from __future__ import annotations

import json
import logging
import socketserver
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from amf import predict, writing
from amf.errors import AmfError, InputError

PORT = 4743
HOST = "0.0.0.0"
# A client that connects and sends nothing would hold the one serving thread: dropped after this.
REQUEST_TIMEOUT_S = 10

log = logging.getLogger(__name__)


class InvokeServer(HTTPServer):
    """The HTTP server and what every request needs: the ensemble and the job's folders."""

    def __init__(self, address: tuple[str, int], input_path: Path, output_dir: Path, batch_size: int) -> None:
        super().__init__(address, _Handler)
        self.input_path = input_path
        self.output_dir = output_dir
        self.batch_size = batch_size
        self.ensemble: predict.LoadedEnsemble | None = None

    def server_bind(self) -> None:
        """HTTPServer's bind without its `socket.getfqdn(host)`: a name lookup (reverse DNS for an
        interface address) that nothing here needs, from a process that sends no packet."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A client that hung up before its answer (a health call that timed out while the ensemble
        loaded): one log line instead of socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        log.warning("answering %s failed: %s: %s", client_address[0], type(error).__name__, error)

    def invoke(self) -> tuple[HTTPStatus, dict[str, object]]:
        """One job on the current input: (status, JSON body) for the platform."""
        assert self.ensemble is not None, "serve() loads the ensemble before it serves"
        start = time.perf_counter()
        try:
            count = predict.run_job(
                self.ensemble, self.input_path, self.output_dir, batch_size=self.batch_size
            )
        except AmfError as error:
            log.error("%s", error)  # the exec mode's one line
            status = (
                HTTPStatus.UNPROCESSABLE_ENTITY
                if isinstance(error, InputError)
                else HTTPStatus.INTERNAL_SERVER_ERROR
            )
            return status, {"error": str(error)}
        except Exception as error:  # a bug: its traceback in the log, this task failed, the next one served
            log.exception("invocation failed: %s", type(error).__name__)
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"}
        return HTTPStatus.CREATED, {"crops": count, "seconds": round(time.perf_counter() - start, 3)}


class _Handler(BaseHTTPRequestHandler):
    server: InvokeServer
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/health":
            self._answer(HTTPStatus.OK, {"status": "ready"})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}"})

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/invoke":
            self._answer(*self.server.invoke())
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}"})

    def _answer(self, status: HTTPStatus, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
        log.info("%s %s", self.address_string(), format % args)


def serve(
    input_path: Path,
    output_dir: Path,
    model_dir: Path,
    *,
    batch_size: int = predict.BATCH_SIZE,
    backend: str | None = None,
    host: str = HOST,
    port: int = PORT,
) -> None:
    """Listen, load the ensemble once, then answer `/health` and `/invoke` until SIGTERM.

    A bad ensemble ends the process with its one-line AmfError before anything is served.
    """
    writing.exit_on_terminate()
    with InvokeServer((host, port), Path(input_path), Path(output_dir), batch_size) as server:
        start = time.perf_counter()
        server.ensemble = predict.load_ensemble(Path(model_dir), backend)
        log.info(
            "ensemble %r from %s loaded in %.2f s; serving %s -> %s on %s:%d",
            server.ensemble.manifest.name,
            model_dir,
            time.perf_counter() - start,
            input_path,
            output_dir,
            host,
            server.server_address[1],
        )
        try:
            server.serve_forever()
        except SystemExit:
            log.info("terminated: shutting down")
            raise
