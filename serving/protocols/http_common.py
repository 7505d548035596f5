"""What both HTTP ports say outside any handler: the head's bound, JSON error responses, the deep-JSON refusal."""

import json

from serving.errors import InputError

MAX_HEAD_BYTES = 64 * 1024  # request line + headers
DEEP_JSON = "JSON nests deeper than the parser's limit (about 1000 levels)"
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


def error_body(message: str) -> bytes:
    """The Response shape's JSON for a request refused by the protocol layer: err_no 5000 and the reason."""
    return json.dumps({"err_no": int(InputError.code), "err_msg": message}).encode()


def response_head(status: int, content_type: str, length: int, close: bool,
                  headers: dict[str, str] | None = None) -> bytes:
    """Status line and headers of a response with a Content-Length."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"content-type: {content_type}",
             f"content-length: {length}", *(f"{name}: {value}" for name, value in (headers or {}).items())]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_response(status: int, message: str) -> bytes:
    """A complete JSON error response after which the connection closes."""
    body = error_body(message)
    return response_head(status, "application/json", len(body), close=True) + body
