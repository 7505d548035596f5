"""RESTful pipeline API on http_port, in the serving process: `POST /{name}/{method}` with JSON."""

import json
import logging
import socket
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving import metrics
from serving.dataplane import DataPlane, PipelineResponse
from serving.errors import AuthError, InputError, PayloadTooLargeError, ServiceNotFoundError
from serving.protocols.pipeline_codec import request_from_json, response_to_json
from serving.security import HANDSHAKE_TIMEOUT_S, HTTP_HINT, SecurityConfig, server_ssl_context, token_check

log = logging.getLogger("serving.http")
TIMEOUT_HEADER = "X-Request-Timeout-Ms"


class PipelineHTTPServer(ThreadingHTTPServer):
    """A threading HTTP/1.1 server that knows its data plane and body limit."""

    daemon_threads = True
    request_queue_size = 128  # listen backlog: socketserver's default of 5 resets bursts of new connections

    def __init__(self, address: tuple[str, int], dataplane: DataPlane, max_body_bytes: int,
                 reuse_port: bool = False, security: SecurityConfig | None = None) -> None:
        self.allow_reuse_port = reuse_port  # worker processes share the port (build_dag_each_worker)
        super().__init__(address, PipelineHandler)
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self.ssl_context = server_ssl_context(security or SecurityConfig())
        self.auth = token_check(security or SecurityConfig())

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Wrap for TLS without handshaking: the handshake runs in the connection's thread, never in accept."""
        connection, address = super().get_request()
        if self.ssl_context is not None:
            connection = self.ssl_context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address


class PipelineHandler(BaseHTTPRequestHandler):
    """Decode, run, encode; errors are HTTP 200 with err_no, except a body that is not JSON (400)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: without this, keep-alive waits ~40 ms
    server: PipelineHTTPServer

    def handle(self) -> None:
        """Finish the TLS handshake here, in this connection's thread, within HANDSHAKE_TIMEOUT_S; then serve."""
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                self.connection.do_handshake()
            except OSError as exc:  # ssl.SSLError and timeouts are OSErrors: a plaintext or stalled client
                log.info("TLS handshake with %s failed: %s", self.client_address[0], exc)
                return
            self.connection.settimeout(None)
        super().handle()

    def do_POST(self) -> None:
        """One pipeline request; the token is checked after the (bounded) body is read, so keep-alive stays in step."""
        body = self._read_body()
        if body is None or not self._authorized():
            return
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._send(PipelineResponse.from_error(InputError(f"body is not JSON: {exc}")), HTTPStatus.BAD_REQUEST)
            return
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        try:
            if len(parts) != 2:
                raise ServiceNotFoundError(f"path {self.path!r} is not /{{name}}/{{method}}; this server answers "
                                           f"POST /{self.server.dataplane.service_name}/prediction")
            request = request_from_json(payload, parts[0], parts[1], self.client_address[0])
            request.timeout_ms = self._client_timeout_ms()
        except (InputError, ServiceNotFoundError) as exc:
            self._send(PipelineResponse.from_error(exc))
            return
        self._send(self.server.dataplane.infer(request, "http"))

    def _client_timeout_ms(self) -> float:
        """The caller's own deadline from the X-Request-Timeout-Ms header (0: none)."""
        value = self.headers.get(TIMEOUT_HEADER)
        if value is None:
            return 0.0
        try:
            timeout_ms = float(value)
        except ValueError:
            timeout_ms = -1.0
        if not 0 < timeout_ms < float("inf"):
            raise InputError(f"header {TIMEOUT_HEADER}: {value!r} is not a positive number of milliseconds")
        return timeout_ms

    def do_GET(self) -> None:
        """Operations endpoints: /health (live), /ready (503 until the models are warm), /metadata, /metrics."""
        dataplane = self.server.dataplane
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/metadata" and not self._authorized():  # probes and scrapers need no token; metadata does
            return
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
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            self._send(PipelineResponse.from_error(InputError("a Content-Length header is required")),
                       HTTPStatus.LENGTH_REQUIRED)
            return None
        if int(length) > limit:
            self.close_connection = True
            error = PayloadTooLargeError(f"body of {int(length)} bytes exceeds limits.max_body_bytes ({limit})")
            self._send(PipelineResponse.from_error(error))
            return None
        return self.rfile.read(int(length))

    def _authorized(self) -> bool:
        """True when no token is configured or the request carries it; else answers 401."""
        if self.server.auth is None or self.server.auth.accepts_headers(self.headers):
            return True
        log.info("%s %s: rejected, no valid token", self.client_address[0], self.path)
        error = AuthError(HTTP_HINT)
        self._send(PipelineResponse.from_error(error))
        return False

    def _send(self, response: PipelineResponse, status: HTTPStatus | None = None) -> None:
        """The JSON response, under the status the error table gives it unless the caller names one."""
        status = status or HTTPStatus(response.http_status)
        self._send_raw(status, json.dumps(response_to_json(response)).encode("utf-8"), "application/json")

    def _send_raw(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Access logging goes through `logging` at debug level, not straight to stderr."""
        log.debug("%s %s", self.client_address[0], format % args)


def start_http_server(dataplane: DataPlane, port: int, max_body_bytes: int, reuse_port: bool = False,
                      security: SecurityConfig | None = None) -> tuple[PipelineHTTPServer, int]:
    """Serve in a background thread on `port` (0 = any free port); returns the server and the bound port."""
    server = PipelineHTTPServer(("0.0.0.0", port), dataplane, max_body_bytes, reuse_port, security)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server, server.server_address[1]
