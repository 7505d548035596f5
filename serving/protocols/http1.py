"""A minimal HTTP/1.1 request reader and response writer for the asyncio brpc port."""

import asyncio
import json
from dataclasses import dataclass

MAX_HEAD = 64 * 1024
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           411: "Length Required", 413: "Content Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


class HttpError(Exception):
    """A request this port answers with an error status and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def body(self) -> bytes:
        """JSON error body in the service's Response shape."""
        return json.dumps({"err_no": 5000, "err_msg": str(self)}).encode()


@dataclass
class HttpRequest:
    """Method, path, body, whether the client asked to close, and the headers (lower-case names)."""

    method: str
    path: str
    body: bytes
    close: bool
    headers: dict[str, str]


async def read_request(reader: asyncio.StreamReader, first: bytes, max_body: int) -> HttpRequest | None:
    """One request (None at a clean end of stream); size limits checked before the body is read."""
    try:
        head = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not (first + exc.partial).strip():
            return None
        raise HttpError(400, "connection closed inside the request head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    if len(head) > MAX_HEAD:
        raise HttpError(431, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    headers = {key.strip().lower(): value.strip() for key, _, value in (line.partition(":") for line in lines[1:])}
    close = headers.get("connection", "").lower() == "close" or parts[2] == "HTTP/1.0"
    if parts[0] == "GET":
        return HttpRequest("GET", parts[1], b"", close, headers)
    if parts[0] != "POST":
        raise HttpError(405, f"use POST (or GET for /health, /ready, /metrics), not {parts[0]}")
    length = headers.get("content-length", "")
    if not length.isdigit():
        raise HttpError(411, "a Content-Length header is required")
    if int(length) > max_body:
        raise HttpError(413, f"body of {length} bytes exceeds the limit of {max_body}")
    body = await reader.readexactly(int(length))
    return HttpRequest(parts[0], parts[1], body, close, headers)


async def write_response(writer: asyncio.StreamWriter, status: int, body: bytes, close: bool,
                         content_type: str = "application/json") -> None:
    """A complete response with Content-Length."""
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n" + ("WWW-Authenticate: Bearer\r\n" if status == 401 else "")
            + ("Connection: close\r\n" if close else "") + "\r\n")
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
