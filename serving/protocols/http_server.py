"""RESTful pipeline API on http_port: uvicorn (httptools) + starlette on one event loop, a thin adapter.

uvicorn was chosen over aiohttp by measurement (a 40 KB JSON POST, keep-alive, this machine): equal at
one client (~0.22 ms), 9,300 against 6,800 requests/s at four. uvicorn lacks three bounds a public port
needs, added by `GuardedProtocol`: open connections, time for a request's head and body to arrive, and
the head's size. The data plane is blocking (the DAG waits on its ops' pools), so requests run on a
bounded thread pool; connections cost no thread.
"""

import asyncio
import functools
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving import metrics
from serving.config import LimitsConfig
from serving.context import TIMEOUT_HEADER, RequestContext, timeout_header_ms
from serving.dataplane import DataPlane, PipelineResponse
from serving.errors import AuthError, InputError, PayloadTooLargeError, ServiceNotFoundError, http_status_of
from serving.protocols import openapi
from serving.protocols.health import PROBES
from serving.protocols.http_common import DEEP_JSON, MAX_HEAD_BYTES, error_response
from serving.protocols.oip import OipRest, OipService, RestReply, error_reply
from serving.protocols.pipeline_codec import request_from_json, response_to_json
from serving.protocols.sockets import bound_socket
from serving.security import HTTP_HINT, SecurityConfig, token_check

log = logging.getLogger("serving.http")
DENIED = AuthError(HTTP_HINT)
# uvicorn notices should_exit within 0.1 s and sleeps 0.1 s before its graceful wait: keep the whole stop in the drain.
SHUTDOWN_SLACK_S = 0.25
OPERATIONS = ("/health", "/ready", "/metadata", "/metrics", openapi.PATH)
GUARDED = ("/metadata", openapi.PATH)  # they show the model: with a token configured, only to its holders
ANY_METHOD = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]  # on /v2 OipRest answers 405 itself (HEAD: GET's)


class JSONResponse(Response):
    """JSON with the standard library's separators, byte for byte what the earlier server sent."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        """json.dumps with its defaults."""
        return json.dumps(content).encode("utf-8")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one port allows each client: connections in all, seconds and bytes for a request to arrive."""

    max_connections: int
    client_timeout_s: float
    max_head_bytes: int = MAX_HEAD_BYTES


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a cap on open connections and a deadline for each request to arrive.

    The deadline runs from a connection's first byte of a request (or its opening) to the request's last
    body byte; past it the client gets 408 (or, if it sent nothing, a close). Errors are JSON, and an
    aborted request costs no log line.
    """

    limits: ConnectionLimits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse beyond max_connections at once; otherwise start the arrival clock."""
        super().connection_made(transport)
        self._phase = "idle"  # idle -> head -> body -> answering -> idle (keep-alive)
        self._head_bytes = 0
        self._arrival: asyncio.TimerHandle | None = None
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, f"{len(self.connections) - 1} connections are open, the limit "
                              f"(limits.max_connections); retry later")
            return
        self._arrival = self.loop.call_later(self.limits.client_timeout_s, self._arrival_expired)

    def _stop_clock(self) -> None:
        if self._arrival is not None:
            self._arrival.cancel()
            self._arrival = None

    def _arrival_expired(self) -> None:
        self._arrival = None
        if self._phase in ("head", "body"):
            self._refuse(408, f"the request did not arrive within limits.client_timeout_ms "
                              f"({self.limits.client_timeout_s * 1000:.0f} ms)")
        elif self._phase == "idle":
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        if self.cycle is not None:
            self.cycle.disconnected = True  # the application must not answer on this connection any more
        self.transport.write(error_response(status, message))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Count the head's bytes until its end, so an endless header is refused at max_head_bytes."""
        counting = self._phase in ("idle", "head")
        super().data_received(data)
        if counting:
            self._head_bytes += len(data)
            if self._phase in ("idle", "head") and self._head_bytes > self.limits.max_head_bytes:
                self._refuse(431, f"request line and headers exceed {self.limits.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        """A new request on this connection: its arrival clock starts (unless it runs since the connection opened)."""
        super().on_message_begin()
        self._phase = "head"
        if self._arrival is None:
            self._arrival = self.loop.call_later(self.limits.client_timeout_s, self._arrival_expired)

    def on_headers_complete(self) -> None:
        """The head is in; the clock keeps running until the body is."""
        super().on_headers_complete()
        self._phase = "body"

    def on_message_complete(self) -> None:
        """The whole request arrived: stop the clock."""
        super().on_message_complete()
        self._phase = "answering"
        self._stop_clock()

    def on_response_complete(self) -> None:
        """Between requests uvicorn's keep-alive timeout applies; the next request restarts the clock."""
        super().on_response_complete()
        self._phase, self._head_bytes = "idle", 0

    def send_400_response(self, msg: str) -> None:
        """A request line or header that does not parse: JSON 400, close."""
        self._refuse(400, f"not a valid HTTP/1.1 request: {msg}")

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock with the connection."""
        self._stop_clock()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """On stop, a request still arriving is not waited for: it could never be answered within the drain."""
        if self._phase in ("head", "body"):
            self.transport.close()
            return
        super().shutdown()


class PipelineApp:
    """The routes: POST /{name}/{method} onto the data plane, the Open Inference Protocol's /v2, operations."""

    def __init__(self, dataplane: DataPlane, oip: OipService, max_body_bytes: int, max_inflight: int,
                 security: SecurityConfig) -> None:
        self.dataplane = dataplane
        self.rest = OipRest(oip)
        self.max_body_bytes = max_body_bytes
        self.auth = token_check(security)
        self.pool = ThreadPoolExecutor(max_inflight + 1, thread_name_prefix="http")  # one more, to refuse with 503
        routes = [Route(path, self.operations, methods=["GET"]) for path in OPERATIONS]
        routes += [Route(path, self.oip, methods=ANY_METHOD) for path in ("/v2", "/v2/{rest:path}")]
        routes.append(Route("/{name}/{method}", self.predict, methods=["POST"]))
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: self.http_error})

    async def predict(self, request: Request) -> Response:
        """Body (bounded, chunked or not), token, JSON, then the data plane on the pool."""
        try:
            body = await self._body(request)
        except PayloadTooLargeError as exc:
            return self._answer(PipelineResponse.from_error(exc), http_status_of(exc), close=True)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it; uvicorn drops it without a log line
        if not self._authorized(request):
            return self._answer(PipelineResponse.from_error(DENIED), http_status_of(DENIED))
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._answer(PipelineResponse.from_error(InputError(f"body is not JSON: {exc}")), status=400)
        except RecursionError:
            return self._answer(PipelineResponse.from_error(InputError(DEEP_JSON)), status=400)
        client = request.client.host if request.client else ""
        try:
            decoded = request_from_json(payload, request.path_params["name"], request.path_params["method"], client)
            ctx = RequestContext.arrived("http", client, decoded.logid,
                                         timeout_header_ms(request.headers.get(TIMEOUT_HEADER)))
        except (InputError, ServiceNotFoundError) as exc:
            return self._answer(PipelineResponse.from_error(exc))
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self.pool, self.dataplane.infer, decoded, ctx)
        return self._answer(answer.response, http_status_of(answer.error))

    async def oip(self, request: Request) -> Response:
        """OIP's /v2 paths, answered by OipRest: inference on the pool, metadata and health here."""
        try:
            body = await self._body(request)
        except PayloadTooLargeError as exc:
            return self._reply(error_reply(exc), {"Connection": "close"})
        except ClientDisconnect:
            return Response(status_code=400)
        # As sent, for OipRest to decode once, as on the model server's port (request.url.path is decoded, and
        # drops tabs and newlines, as urlsplit does)
        path = request.scope["raw_path"].decode("latin-1")
        call = functools.partial(self.rest.call, request.method, path, request.headers, body,
                                 request.client.host if request.client else "", self._authorized(request))
        if self.rest.blocks(request.method, path):
            return self._reply(await asyncio.get_running_loop().run_in_executor(self.pool, call))
        return self._reply(call())

    @staticmethod
    def _reply(reply: RestReply, headers: dict[str, str] | None = None) -> Response:
        return Response(reply.body, reply.status, {**reply.headers, **(headers or {})}, reply.content_type)

    async def _body(self, request: Request) -> bytes:
        """The body within max_body_bytes: a declared length is checked before reading, chunked ones as they come."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLargeError(f"body of {int(declared)} bytes exceeds limits.max_body_bytes "
                                       f"({self.max_body_bytes})")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLargeError(f"body exceeds limits.max_body_bytes ({self.max_body_bytes})")
            chunks.append(chunk)
        return b"".join(chunks)

    async def operations(self, request: Request) -> Response:
        """/health (live), /ready (503 until the models are warm and some model server of each remote op
        answers), /metadata (token), /metrics, /openapi.json."""
        path = request.url.path
        if path in GUARDED and not self._authorized(request):
            return self._answer(PipelineResponse.from_error(DENIED), http_status_of(DENIED))
        if path == "/metrics":
            return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
        if path == openapi.PATH:
            return JSONResponse(openapi.document(openapi.PIPELINE, self.rest.service, self.auth is not None,
                                                 self.dataplane.endpoint.service_name))
        if path == "/ready" and self.dataplane.ready:
            # asks remote model servers (at most once a second): on the probes' pool, never on the event loop
            waiting = await asyncio.get_running_loop().run_in_executor(PROBES, self.dataplane.waiting_for)
            if waiting:
                return JSONResponse({"status": "waiting", "not_ready": waiting}, status_code=503)
        ready = self.dataplane.ready or path == "/health"
        body = self.dataplane.metadata if path == "/metadata" else {"status": "ok" if ready else "loading"}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """404 and 405 (with Allow) as JSON in the Response shape; under /v2, the protocol's own answer.

        The router misses some /v2 requests (a method outside ANY_METHOD; a path with a newline, %0A, which its
        patterns' `.` does not match): OipRest answers them, as it does on the model server's port.
        """
        assert isinstance(exc, HTTPException)
        if self.rest.owns(request.scope["path"].rstrip("/")):
            return await self.oip(request)
        hint = (f"this server answers POST /{self.dataplane.endpoint.service_name}/prediction and GET "
                f"{', '.join(OPERATIONS)}")
        error = ServiceNotFoundError(f"no {request.method} {request.url.path}: {exc.detail}; {hint}")
        content = response_to_json(PipelineResponse.from_error(error))
        return JSONResponse(content, status_code=exc.status_code, headers=exc.headers)

    def _authorized(self, request: Request) -> bool:
        return self.auth is None or self.auth.accepts_headers(request.headers)

    @staticmethod
    def _answer(response: PipelineResponse, status: int = 200, close: bool = False) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
        if close:
            headers["Connection"] = "close"
        return JSONResponse(response_to_json(response), status_code=status, headers=headers)


class HttpFrontEnd:
    """uvicorn serving the app on a socket of its own, in a thread with its own event loop."""

    def __init__(self, app: PipelineApp, sock: socket.socket, limits: LimitsConfig, security: SecurityConfig) -> None:
        protocol = type("PipelineProtocol", (GuardedProtocol,), {"limits": ConnectionLimits(
            limits.max_connections, limits.client_timeout_ms / 1000)})
        tls = {"ssl_certfile": security.tls_cert_file, "ssl_keyfile": security.tls_key_file} \
            if security.tls_cert_file else {}
        config = uvicorn.Config(app.app, http=protocol, loop="asyncio", lifespan="off", access_log=False,
                                log_config=None, server_header=False, date_header=False,
                                timeout_keep_alive=max(1, round(limits.keepalive_timeout_ms / 1000)),
                                timeout_graceful_shutdown=max(0.1, limits.drain_timeout_ms / 1000 - SHUTDOWN_SLACK_S),
                                **tls)
        self.app, self.sock = app, sock
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve([sock])), name="http",
                                       daemon=True)

    def start(self) -> "HttpFrontEnd":
        """Serve in the background; returns once the port accepts."""
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.01)
        return self

    def shutdown(self) -> None:
        """Stop accepting; uvicorn closes idle connections and lets running requests finish."""
        self.server.should_exit = True

    def server_close(self) -> None:
        """Wait for the loop to finish (bounded by the graceful-shutdown timeout), then free the pool."""
        self.thread.join()
        self.app.pool.shutdown(wait=False, cancel_futures=True)


def start_http_server(dataplane: DataPlane, oip: OipService, port: int, limits: LimitsConfig,
                      reuse_port: bool = False, security: SecurityConfig | None = None) -> tuple[HttpFrontEnd, int]:
    """Serve in a background thread on `port` (0 = any free port); returns the front end and the bound port."""
    security = security or SecurityConfig()
    sock = bound_socket(port, reuse_port)
    app = PipelineApp(dataplane, oip, limits.max_body_bytes, limits.max_inflight, security)
    front_end = HttpFrontEnd(app, sock, limits, security).start()
    return front_end, sock.getsockname()[1]
