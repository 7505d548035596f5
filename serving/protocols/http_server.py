"""RESTful pipeline API on http_port, in the serving process: `POST /{name}/{method}` with JSON."""

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving import metrics
from serving.dataplane import DataPlane, PipelineResponse
from serving.errors import InputError, ServiceNotFoundError
from serving.protocols.pipeline_codec import request_from_json, response_to_json

log = logging.getLogger("serving.http")


class PipelineHTTPServer(ThreadingHTTPServer):
    """A threading HTTP/1.1 server that knows its data plane and body limit."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: socketserver's default of 5 resets bursts of new connections

    def __init__(self, address: tuple[str, int], dataplane: DataPlane, max_body_bytes: int) -> None:
        super().__init__(address, PipelineHandler)
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes


class PipelineHandler(BaseHTTPRequestHandler):
    """Decode, run, encode; errors are HTTP 200 with err_no, except a body that is not JSON (400)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without this, keep-alive waits ~40 ms
    server: PipelineHTTPServer

    def do_POST(self) -> None:
        """One pipeline request."""
        body = self._read_body()
        if body is None:
            return
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._send(HTTPStatus.BAD_REQUEST, PipelineResponse.from_error(InputError(f"body is not JSON: {exc}")))
            return
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        try:
            if len(parts) != 2:
                raise ServiceNotFoundError(f"path {self.path!r} is not /{{name}}/{{method}}; this server answers "
                                           f"POST /{self.server.dataplane.service_name}/prediction")
            request = request_from_json(payload, parts[0], parts[1], self.client_address[0])
        except (InputError, ServiceNotFoundError) as exc:
            self._send(HTTPStatus.OK, PipelineResponse.from_error(exc))
            return
        self._send(HTTPStatus.OK, self.server.dataplane.infer(request, "http"))

    def do_GET(self) -> None:
        """Operations endpoints: /health (live), /ready (503 until the models are warm), /metadata, /metrics."""
        dataplane = self.server.dataplane
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/metrics":
            self._send_raw(HTTPStatus.OK, metrics.render().encode(), "text/plain; version=0.0.4")
        elif path in ("/health", "/ready", "/metadata"):
            ready = dataplane.ready or path == "/health"
            body = dataplane.metadata if path == "/metadata" else {"status": "ok" if ready else "loading"}
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._send_raw(status, json.dumps(body).encode(), "application/json")
        else:
            message = {"error": f"no GET {path}; try /health, /ready, /metadata, /metrics or POST /{{name}}/prediction"}
            self._send_raw(HTTPStatus.NOT_FOUND, json.dumps(message).encode(), "application/json")

    def _read_body(self) -> bytes | None:
        """The body, or None after answering a missing or oversized Content-Length (and closing)."""
        length = self.headers.get("Content-Length")
        limit = self.server.max_body_bytes
        problem = None
        if length is None or not length.strip().isdigit():
            problem = "a Content-Length header is required"
        elif int(length) > limit:
            problem = f"body of {int(length)} bytes exceeds limits.max_body_bytes ({limit})"
        if problem is not None:
            self.close_connection = True
            self._send(HTTPStatus.OK, PipelineResponse.from_error(InputError(problem)))
            return None
        return self.rfile.read(int(length))

    def _send(self, status: HTTPStatus, response: PipelineResponse) -> None:
        self._send_raw(status, json.dumps(response_to_json(response)).encode("utf-8"), "application/json")

    def _send_raw(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Access logging goes through `logging` at debug level, not straight to stderr."""
        log.debug("%s %s", self.client_address[0], format % args)


def start_http_server(dataplane: DataPlane, port: int, max_body_bytes: int) -> tuple[PipelineHTTPServer, int]:
    """Serve in a background thread on `port` (0 = any free port); returns the server and the bound port."""
    server = PipelineHTTPServer(("0.0.0.0", port), dataplane, max_body_bytes)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server, server.server_address[1]
