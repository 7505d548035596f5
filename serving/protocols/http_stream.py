"""HTTP/1.1 requests read off an asyncio stream with httptools (llhttp, the parser uvicorn gives the pipeline's port).

`RequestReader` parses a connection's bytes as they arrive and holds each request to the port's bounds: the
head's size, the body's size (declared or chunked, refused as soon as it is over) and the time its head and
body take to arrive. Requests sent back to back are answered in order.
"""

import asyncio
from collections import deque
from dataclasses import dataclass

import httptools

from serving.protocols.http_common import MAX_HEAD_BYTES, error_body, response_head

READ_SIZE = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpError(Exception):
    """A request this port refuses with an error status; `headers` go with it (e.g. Allow)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}

    def body(self) -> bytes:
        """JSON error body in the service's Response shape."""
        return error_body(str(self))


@dataclass
class HttpRequest:
    """Method, target, body, whether the connection ends after it, headers (lower-case names) and its state."""

    method: str
    path: str
    body: bytes
    close: bool
    headers: dict[str, str]
    version: str = "1.1"
    complete: bool = False  # the whole body is in

    @property
    def expects_continue(self) -> bool:
        """An HTTP/1.1 client waiting for `100 Continue` before it sends the body (curl does, for large ones)."""
        return self.version == "1.1" and self.headers.get("expect", "").lower() == "100-continue"


class RequestReader:
    """One connection's requests, in order; `head` and `body` read more only when the next request needs it."""

    def __init__(self, stream: asyncio.StreamReader, first: bytes, max_body: int, client_timeout_s: float,
                 max_head: int = MAX_HEAD_BYTES) -> None:
        self.stream = stream
        self.max_body, self.max_head, self.client_timeout_s = max_body, max_head, client_timeout_s
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[HttpRequest] = deque()  # heads parsed, not yet answered; the last may lack body
        self.error: HttpError | None = None  # what the bytes after `requests` earned; nothing is parsed after it
        self.upgraded = False  # the client switched protocols after the last request: nothing is parsed after it
        self.deadline: float | None = None  # when the request now arriving must be in
        self._loop = asyncio.get_running_loop()
        self._in_message = self._in_head = False
        self._head_bytes, self._completed = 0, 0  # bytes of reads that lay within one head; requests parsed
        self._url, self._headers, self._head_size, self._chunks, self._size = b"", {}, 0, [], 0
        self._start_clock()
        self._feed(first)

    async def head(self, idle_timeout_s: float) -> HttpRequest | None:
        """The next request once its head is in; None when the client closed or stayed idle for idle_timeout_s.

        Its clock (client_timeout) starts at its first byte, or now if that came with an earlier request.
        """
        if self.requests or self._in_message:
            self._start_clock()
        while not self.requests:
            if self.error is not None:
                raise self.error
            if self.upgraded or not await self._read(idle_timeout_s):
                return None
        return self.requests[0]

    async def body(self, request: HttpRequest) -> None:
        """Read until `request`'s body is complete; a client that leaves first is a ConnectionResetError."""
        while not request.complete:
            if self.error is not None:
                raise self.error
            if not await self._read():
                raise ConnectionResetError("the client left in the middle of a request")

    def answered(self) -> None:
        """The first request is answered; the next one's clock starts when it is asked for."""
        self.requests.popleft()
        self.deadline = None

    def _start_clock(self) -> None:
        self.deadline = self._loop.time() + self.client_timeout_s

    async def _read(self, idle_timeout_s: float = 0.0) -> bool:
        """Feed one read to the parser; False at the end of the stream, or after idle_timeout_s with no request."""
        waiting = self.deadline if self.deadline is not None else self._loop.time() + idle_timeout_s
        try:
            async with asyncio.timeout_at(waiting):
                data = await self.stream.read(READ_SIZE)
        except TimeoutError:
            if self.deadline is not None and (self._in_message or self.requests):
                raise HttpError(408, f"the request did not arrive within --client_timeout_ms "
                                     f"({self.client_timeout_s * 1000:.0f} ms)") from None
            return False
        if not data:
            return False
        if self.deadline is None:
            self._start_clock()
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        """Parse `data`; count it against the head's bound when all of it lies within one head.

        The head's own bytes are counted too (`on_headers_complete`): this count bounds what httptools
        buffers of a header that spans reads.
        """
        in_head, completed = self._in_head or not self._in_message, self._completed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True
            self.requests[-1].close = True
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            self.error = refusal if isinstance(refusal, HttpError) else HttpError(
                400, f"not a valid HTTP/1.1 request: {exc}")
            return
        if in_head and completed == self._completed and (self._in_head or not self._in_message):
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head:
                self.error = HttpError(431, f"request line and headers exceed {self.max_head} bytes")

    def on_message_begin(self) -> None:
        """httptools: a request's first byte."""
        self._in_message = self._in_head = True
        self._url, self._headers, self._head_size, self._chunks, self._size = b"", {}, 0, [], 0

    def on_url(self, url: bytes) -> None:
        """httptools: (part of) the request target."""
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header, whole."""
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        """httptools: the head is in; one too large, or declaring a body over the limit, is refused here."""
        self._in_head, self._head_bytes = False, 0
        if self._head_size > self.max_head:
            raise HttpError(431, f"request line and headers exceed {self.max_head} bytes")
        declared = self._headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise HttpError(413, f"body of {declared} bytes exceeds the limit of {self.max_body}")
        version = self.parser.get_http_version()
        self.requests.append(HttpRequest(self.parser.get_method().decode("ascii"), self._url.decode("latin-1"), b"",
                                         version == "1.0" or not self.parser.should_keep_alive(), self._headers,
                                         version))

    def on_body(self, body: bytes) -> None:
        """httptools: body bytes (de-chunked); refused the moment they pass the limit."""
        self._size += len(body)
        if self._size > self.max_body:
            raise HttpError(413, f"body exceeds the limit of {self.max_body} bytes")
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        """httptools: the request's last byte."""
        request = self.requests[-1]
        request.body, request.complete, self._chunks = b"".join(self._chunks), True, []
        self._in_message, self._completed = False, self._completed + 1


async def write_response(writer: asyncio.StreamWriter, status: int, body: bytes, close: bool,
                         content_type: str = "application/json", headers: dict[str, str] | None = None,
                         head_only: bool = False) -> None:
    """A complete response with Content-Length (for HEAD, without the body)."""
    writer.write(response_head(status, content_type, len(body), close, headers) + (b"" if head_only else body))
    await writer.drain()
