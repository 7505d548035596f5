"""baidu_std client transport: one TCP connection, many requests in flight, answers matched by correlation_id."""

import asyncio
import contextlib
import itertools
import ssl
from enum import IntEnum

from serving.endpoints import join_host_port
from serving.proto import general_model_service_pb2 as gm
from serving.proto.brpc_meta_pb2 import RpcMeta
from serving.protocols.baidu_std import (
    DEFAULT_MAX_BODY,
    BrpcCode,
    CompressType,
    FrameError,
    PayloadError,
    compress,
    decompress,
    encode_frame,
    read_frame,
)

SERVICE = gm.DESCRIPTOR.services_by_name["GeneralModelService"].full_name  # from the .proto


class ClientCode(IntEnum):
    """brpc's error codes for failures the client detects itself (brpc/errno.proto)."""

    EFAILEDSOCKET = 1009
    EEOF = 1014
    ERESPONSE = 2002
    ECLOSE = 2005


class BrpcError(Exception):
    """The call failed at the RPC level: the server's error_code, or a transport failure, with brpc's code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"brpc error {code}: {text}")
        self.code = code
        self.text = text


class Connection:
    """One TCP connection carrying many requests in flight, answers matched by correlation_id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, max_body: int,
                 token: bytes = b"") -> None:
        self.peer = peer
        self.max_body = max_body
        self.token = token
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._drain_lock = asyncio.Lock()
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float, max_body: int = DEFAULT_MAX_BODY,
                   ssl_context: ssl.SSLContext | None = None, token: bytes = b"",
                   server_hostname: str | None = None) -> "Connection":
        """Connect within `timeout_s`, over TLS with `ssl_context`; refusal, bad handshake, timeout: EFAILEDSOCKET.

        `server_hostname` is the name the certificate must carry when `host` is one of the name's addresses.
        """
        address = join_host_port(host, port)
        peer = address if server_hostname in (None, host) else f"{server_hostname} ({address})"
        try:
            connecting = asyncio.open_connection(host, port, ssl=ssl_context,
                                                 server_hostname=(server_hostname or host) if ssl_context else None)
            reader, writer = await asyncio.wait_for(connecting, timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or "timed out"
            raise BrpcError(ClientCode.EFAILEDSOCKET, f"cannot connect to {peer}: {reason}") from None
        return cls(reader, writer, peer, max_body, token)

    @property
    def closed(self) -> bool:
        """True once either side closed the connection: the pool then opens a new one."""
        return self._closed

    async def call(self, method: str, payload: bytes, timeout_s: float, log_id: int = 0,
                   compress_type: int = CompressType.NONE) -> bytes:
        """Send one request and wait for its answer's payload; every failure is a BrpcError."""
        if self._closed:
            raise BrpcError(ClientCode.EFAILEDSOCKET, f"connection to {self.peer} is closed")
        correlation_id = next(self._ids)
        meta = RpcMeta(correlation_id=correlation_id, compress_type=compress_type)
        meta.request.service_name = SERVICE
        meta.request.method_name = method
        meta.request.log_id = log_id
        meta.request.timeout_ms = max(1, round(timeout_s * 1000))
        if self.token:  # sent every time, so whichever request a (re)opened connection sends first carries it
            meta.authentication_data = self.token
        future = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        self._idle.clear()
        try:
            self._writer.write(encode_frame(meta, compress(payload, compress_type)))
            return await asyncio.wait_for(self._answer(future), timeout_s)
        except asyncio.TimeoutError:
            raise BrpcError(BrpcCode.ERPCTIMEDOUT, f"{self.peer} did not answer {method} within "
                                                   f"{meta.request.timeout_ms} ms") from None
        except OSError as exc:
            raise BrpcError(ClientCode.EFAILEDSOCKET, f"cannot send to {self.peer}: {exc}") from None
        finally:
            self._pending.pop(correlation_id, None)
            if not self._pending:
                self._idle.set()

    async def _answer(self, future: asyncio.Future) -> bytes:
        """Flush the request, then wait for the reader task to deliver its frame."""
        async with self._drain_lock:
            await self._writer.drain()
        frame = await future
        status = frame.meta.response
        if status.error_code:
            raise BrpcError(status.error_code, status.error_text or "(no error text)")
        try:
            return decompress(frame.payload, frame.meta.compress_type, self.max_body)
        except PayloadError as exc:
            raise BrpcError(ClientCode.ERESPONSE, f"{self.peer}: {exc}") from None

    async def _read_loop(self) -> None:
        """Resolve pending futures by correlation_id; answers for timed-out calls are dropped."""
        try:
            while (frame := await read_frame(self._reader, self.max_body)) is not None:
                future = self._pending.get(frame.meta.correlation_id)
                if future is not None and not future.done():
                    future.set_result(frame)
            error = BrpcError(ClientCode.EEOF, f"{self.peer} closed the connection")
        except FrameError as exc:
            error = BrpcError(ClientCode.ERESPONSE, f"{self.peer} sent a bad frame: {exc}")
        except OSError as exc:
            error = BrpcError(ClientCode.EEOF, f"connection to {self.peer} lost: {exc}")
        self._shut(error)

    def _shut(self, error: BrpcError) -> None:
        """Mark closed, close the socket and fail every call still in flight."""
        self._closed = True
        self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def close_when_idle(self, grace_s: float) -> None:
        """Close once the calls in flight are answered, or after `grace_s`: a server dropped from DNS finishes them."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        await self.close()

    async def close(self) -> None:
        """Close from the client side; calls in flight fail with ECLOSE."""
        self._reader_task.cancel()
        self._shut(BrpcError(ClientCode.ECLOSE, f"client closed the connection to {self.peer}"))
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
