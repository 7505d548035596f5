"""One asyncio port, as brpc serves it: baidu_std frames and HTTP/1.1 JSON, told apart by the first bytes."""

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from serving import metrics
from serving.context import TIMEOUT_HEADER, RequestContext, timeout_header_ms
from serving.errors import AuthError, BrpcCode, InputError, http_status_of, wire_status_of
from serving.proto.brpc_meta_pb2 import RpcMeta
from serving.protocols import baidu_std, openapi
from serving.protocols.baidu_std import Frame, FrameError
from serving.protocols.http_common import error_response
from serving.protocols.http_stream import CONTINUE, HttpError, HttpRequest, RequestReader, write_response
from serving.protocols.oip import OipRest
from serving.security import BRPC_HINT, HANDSHAKE_TIMEOUT_S, HTTP_HINT, SecurityConfig, server_ssl_context, token_check

log = logging.getLogger("serving.brpc")
DENIED = AuthError(HTTP_HINT)
HTTP_DENIED = json.dumps({"err_no": int(DENIED.code), "err_msg": DENIED.message}).encode()  # the 401 body
PROBES = ("/health", "/ready", "/metrics")
OVER_CAPACITY_WAIT_S = 1.0  # beyond max_connections, how long the first bytes may take to tell the protocol

# A method takes the decompressed payload, the attachment and the request's context; returns payload and attachment.
Method = Callable[[bytes, bytes, RequestContext], tuple[bytes, bytes]]
# An HTTP route takes the body and the request's context; returns (status, JSON body).
Route = Callable[[bytes, RequestContext], tuple[int, bytes]]



@dataclass
class RpcService:
    """A protobuf service by its fully qualified name; clients may also use the name without package."""

    full_name: str
    methods: dict[str, Method]

    @property
    def short_name(self) -> str:
        """`GeneralModelService` for `baidu.paddle_serving.predictor.general_model.GeneralModelService`."""
        return self.full_name.rsplit(".", 1)[-1]


@dataclass
class ServerLimits:
    """Bounds per connection and request."""

    max_body_bytes: int = baidu_std.DEFAULT_MAX_BODY
    idle_timeout_s: float = 60.0  # a connection with no request (or frame) arriving is closed after it
    max_connections: int = 10_000  # baidu_std and HTTP together
    client_timeout_s: float = 30.0  # for an HTTP request's head and body to arrive, from its first byte


class RpcError(Exception):
    """A request answered with a brpc error_code instead of a payload."""

    def __init__(self, code: BrpcCode, text: str) -> None:
        super().__init__(text)
        self.code = code


class BrpcServer:
    """Dispatches baidu_std requests (many in flight per connection) and HTTP requests to handlers.

    Handlers run on a pool of `workers` threads; give it one more than the data plane admits, so that a
    request over the limit is refused at once instead of queued.
    """

    def __init__(self, services: list[RpcService], routes: dict[str, Route], workers: int,
                 limits: ServerLimits | None = None, security: SecurityConfig | None = None,
                 rest: OipRest | None = None, describe: Callable[[], dict] | None = None,
                 metadata: Callable[[], dict] | None = None) -> None:
        self.services = {name: service for service in services for name in (service.full_name, service.short_name)}
        self.routes = routes
        self.rest = rest  # the Open Inference Protocol's /v2 paths, when served
        # what shows the model, so it takes the token when one is configured: the OpenAPI document, the metadata
        self.guarded = {path: page for path, page in ((openapi.PATH, describe), ("/metadata", metadata)) if page}
        self.pages = PROBES + tuple(self.guarded)  # what GET answers
        self.limits = limits or ServerLimits()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="brpc")
        self.server: asyncio.Server | None = None
        self.stopping = False
        self.connections: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.ssl_context = server_ssl_context(security or SecurityConfig())
        self.auth = token_check(security or SecurityConfig())

    async def start(self, host: str, port: int) -> int:
        """Listen (TLS when configured, handshakes bounded in time); returns the bound port (0 picks a free one)."""
        handshake_timeout = HANDSHAKE_TIMEOUT_S if self.ssl_context is not None else None
        self.server = await asyncio.start_server(self._on_connection, host, port, ssl=self.ssl_context,
                                                 ssl_handshake_timeout=handshake_timeout)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Answer new requests with ELOGOFF, close the listener and the connections, finish running handlers."""
        self.stopping = True
        if self.server is not None:
            self.server.close()
        while self.connections:  # connections the listener accepted just before it closed start after the first pass
            for task, writer in list(self.connections.items()):
                writer.transport.abort()  # reads end at once; a cancel alone can be lost inside wait_for (3.11)
                task.cancel()
            await asyncio.wait(list(self.connections), timeout=1.0)
        self.pool.shutdown(wait=True)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.connections[task] = writer
        try:
            if len(self.connections) > self.limits.max_connections:
                await self._refuse_connection(reader, writer)
                return
            first = await asyncio.wait_for(reader.readexactly(4), self.limits.idle_timeout_s)
            if first == baidu_std.MAGIC:
                await self._serve_baidu_std(reader, writer, first)
            else:
                await self._serve_http(reader, writer, first)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, asyncio.CancelledError):
            pass  # a peer that left or stalled, or the server stopping: nothing to answer, nothing to log
        except FrameError as exc:
            log.info("closing %s: %s", writer.get_extra_info("peername"), exc)
        finally:
            self.connections.pop(task, None)
            writer.close()

    async def _serve_baidu_std(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        """Read frames until the peer closes, stalls or breaks the framing; answer each in its own task.

        As in brpc, authentication is per connection: once a frame carried the token, later frames need not.
        """
        lock, tasks, authorized, client = asyncio.Lock(), set(), self.auth is None, _peer(writer)
        try:
            while True:
                frame = await asyncio.wait_for(baidu_std.read_frame(reader, self.limits.max_body_bytes, first),
                                               self.limits.idle_timeout_s)
                first = b""
                if frame is None:
                    break
                if not frame.meta.HasField("request"):
                    raise FrameError("a request frame without RpcMeta.request")
                authorized = authorized or self.auth.accepts(frame.meta.authentication_data)
                task = asyncio.create_task(self._answer(frame, writer, lock, authorized, client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _answer(self, frame: Frame, writer: asyncio.StreamWriter, lock: asyncio.Lock, authorized: bool,
                      client: str) -> None:
        meta = RpcMeta(correlation_id=frame.meta.correlation_id, compress_type=frame.meta.compress_type)
        payload, attachment = b"", b""
        try:
            payload, attachment = await self._call(frame, authorized, client)
            payload = baidu_std.compress(payload, frame.meta.compress_type)
        except RpcError as exc:
            meta.response.error_code, meta.response.error_text = int(exc.code), str(exc)
            meta.ClearField("compress_type")
        else:
            meta.response.error_code = 0
        async with lock:
            writer.write(baidu_std.encode_frame(meta, payload, attachment))
            await writer.drain()

    async def _call(self, frame: Frame, authorized: bool, client: str) -> tuple[bytes, bytes]:
        """Check the token, resolve service and method, decompress, run in the pool within the client's timeout_ms."""
        request = frame.meta.request
        if not authorized:
            raise RpcError(BrpcCode.ERPCAUTH, BRPC_HINT)
        if self.stopping:
            raise RpcError(BrpcCode.ELOGOFF, "server is stopping")
        service = self.services.get(request.service_name)
        if service is None:
            raise RpcError(BrpcCode.ENOSERVICE, f"no service {request.service_name!r}; this server has "
                           f"{sorted({s.full_name for s in self.services.values()})}")
        method = service.methods.get(request.method_name)
        if method is None:
            raise RpcError(BrpcCode.ENOMETHOD, f"{service.short_name} has no method {request.method_name!r}; "
                           f"it has {sorted(service.methods)}")
        ctx = RequestContext.arrived("brpc", client, request.log_id, request.timeout_ms)
        try:
            payload = baidu_std.decompress(frame.payload, frame.meta.compress_type, self.limits.max_body_bytes)
            running = asyncio.get_running_loop().run_in_executor(self.pool, method, payload, frame.attachment, ctx)
            timeout = request.timeout_ms / 1000 if request.timeout_ms > 0 else None
            return await asyncio.wait_for(running, timeout)  # on timeout a still-queued call is cancelled
        except asyncio.TimeoutError:
            raise RpcError(BrpcCode.ERPCTIMEDOUT, f"not answered within timeout_ms {request.timeout_ms}") from None
        except Exception as exc:
            code = wire_status_of(exc).brpc_code
            if code is None:
                log.exception("%s.%s failed", service.short_name, request.method_name)
                code = BrpcCode.EINTERNAL
            raise RpcError(code, str(exc) if code != BrpcCode.EINTERNAL
                           else f"internal error: {type(exc).__name__}: {exc}") from None

    async def _refuse_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Beyond max_connections: HTTP gets 503 JSON, baidu_std a close; the first bytes tell which, as usual."""
        try:
            first = await asyncio.wait_for(reader.readexactly(4), min(OVER_CAPACITY_WAIT_S,
                                                                      self.limits.client_timeout_s))
        except asyncio.TimeoutError:
            first = b""
        if first != baidu_std.MAGIC:
            writer.write(error_response(503, f"{len(self.connections) - 1} connections are open, the server's limit "
                                             f"(--max_connections); retry later"))
            await writer.drain()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        """HTTP/1.1 keep-alive: POST /{Service}/{method} with JSON, GET probes; each request bounded in size, time."""
        requests = RequestReader(reader, first, self.limits.max_body_bytes, self.limits.client_timeout_s)
        while True:
            try:
                request = await requests.head(self.limits.idle_timeout_s)
                if request is None:
                    return
                refusal = self._refusal(request)
                if refusal is None:
                    if request.expects_continue and not request.complete:
                        writer.write(CONTINUE)
                    await requests.body(request)
            except HttpError as exc:
                await write_response(writer, exc.status, exc.body(), close=True, headers=exc.headers)
                return
            requests.answered()
            if refusal is not None:  # a body still on its way is not read: the connection closes after the answer
                close = request.close or not request.complete
                await write_response(writer, refusal.status, refusal.body(), close, headers=refusal.headers,
                                     head_only=request.method == "HEAD")
            else:
                close = request.close
                await self._answer_http(request, writer)
            if close:
                return

    def _refusal(self, request: HttpRequest) -> HttpError | None:
        """What the head alone refuses: another HTTP version, another method (405 with Allow), an unknown path."""
        path = request.path.split("?", 1)[0].rstrip("/")
        if request.version not in ("1.0", "1.1"):
            return HttpError(400, f"HTTP/{request.version} is not served here; use HTTP/1.1")
        if self.rest is not None and self.rest.owns(path):
            return None  # OipRest answers every method and path under /v2 itself
        allowed = ("POST",) if path in self.routes else ("GET", "HEAD") if path in self.pages else None
        if allowed is None and request.method not in ("GET", "HEAD", "POST"):
            return HttpError(404, f"no {request.method} {path}; this port answers POST {sorted(self.routes)} "
                                  f"and GET {', '.join(self.pages)}")
        if allowed is not None and request.method not in allowed:
            return HttpError(405, f"no {request.method} {path}: use {' or '.join(allowed)}",
                             {"Allow": ", ".join(allowed)})
        return None

    async def _answer_http(self, request: HttpRequest, writer: asyncio.StreamWriter) -> None:
        """/v2 through OipRest (inference in the pool), GET (and HEAD) probes here, POST through `_route`."""
        path = request.path.split("?", 1)[0]
        if self.rest is not None and self.rest.owns(path.rstrip("/")):
            call = functools.partial(self.rest.call, request.method, path, request.headers, request.body,
                                     _peer(writer), self._http_authorized(request))
            reply = (await asyncio.get_running_loop().run_in_executor(self.pool, call)
                     if self.rest.blocks(request.method, path) else call())
            await write_response(writer, reply.status, reply.body, request.close, reply.content_type, reply.headers,
                                 head_only=request.method == "HEAD")
            return
        if request.method in ("GET", "HEAD"):
            status, body, kind = self._get(path.rstrip("/"), self._http_authorized(request))
            await write_response(writer, status, body, request.close, kind, _challenge(status),
                                 head_only=request.method == "HEAD")
            return
        status, body = await self._route(request, _peer(writer))
        await write_response(writer, status, body, request.close, headers=_challenge(status))

    def _get(self, path: str, authorized: bool) -> tuple[int, bytes, str]:
        """Probes and the scraper need no token: /health and /ready (the model is loaded before the port opens).

        The OpenAPI document and /metadata show the model, so they take the token when one is configured.
        """
        if path == "/metrics":
            return 200, metrics.render(), metrics.CONTENT_TYPE
        if path in ("/health", "/ready"):
            return 200, b'{"status": "ok"}', "application/json"
        if path in self.guarded:
            return (200, json.dumps(self.guarded[path]()).encode(), "application/json") if authorized else (
                http_status_of(DENIED), HTTP_DENIED, "application/json")
        return 404, HttpError(404, f"no GET {path}; try {', '.join(self.pages)}").body(), "application/json"

    async def _route(self, request: HttpRequest, client: str) -> tuple[int, bytes]:
        """Token, route, then the handler in the pool (the data plane admits or refuses it)."""
        route = self.routes.get(request.path.split("?", 1)[0].rstrip("/"))
        if not self._http_authorized(request):
            return http_status_of(DENIED), HTTP_DENIED
        if route is None:
            return 404, HttpError(404, f"no route {request.path}; try {sorted(self.routes)}").body()
        try:
            timeout_ms = timeout_header_ms(request.headers.get(TIMEOUT_HEADER.lower()))
        except InputError as exc:
            return 400, HttpError(400, str(exc)).body()
        ctx = RequestContext.arrived("http", client, 0, timeout_ms)
        return await asyncio.get_running_loop().run_in_executor(self.pool, route, request.body, ctx)

    def _http_authorized(self, request: HttpRequest) -> bool:
        """Every route is a POST call, so each needs the token when one is configured."""
        return self.auth is None or self.auth.accepts_headers(request.headers)


def _challenge(status: int) -> dict[str, str] | None:
    """A 401 names the scheme it wants (RFC 9110)."""
    return {"WWW-Authenticate": "Bearer"} if status == 401 else None


def _peer(writer: asyncio.StreamWriter) -> str:
    """The client's address, for the request's context."""
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""

