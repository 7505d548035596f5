"""The model server's HTTP side on raw sockets: chunked bodies, 100-continue, JSON errors, connection and time caps."""

import base64
import json
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.model_repository import ModelRepository
from serving.model_server import ModelServer, build_service, limits_from_args, parse_args
from serving.protocols.http_common import DEEP_JSON
from tests.conftest import photo_bytes
from tests.test_model_server import Connection, image_request

PATH = "/GeneralModelService/inference"
MAX_BODY = 1 << 20
CLIENT_TIMEOUT_MS = 1000
KEEPALIVE_MS = 1500


def flags(model_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(model_dir), "--port", "0", "--thread", "2", "--max_body_bytes", str(MAX_BODY),
            "--client_timeout_ms", str(CLIENT_TIMEOUT_MS), "--keepalive_timeout_ms", str(KEEPALIVE_MS), *extra]


@pytest.fixture(scope="module")
def service(squeezenet_root: Path) -> ModelRepository:
    return build_service(parse_args(flags(squeezenet_root / "serving_server")))


@pytest.fixture(scope="module")
def server(squeezenet_root: Path, service: ModelRepository) -> Iterator[ModelServer]:
    running = ModelServer(service, parse_args(flags(squeezenet_root / "serving_server"))).start()
    yield running
    running.stop()


@pytest.fixture
def capped(squeezenet_root: Path, service: ModelRepository) -> Iterator[ModelServer]:
    extra = ("--max_connections", "3", "--keepalive_timeout_ms", "30000")  # the held ones stay open
    running = ModelServer(service, parse_args(flags(squeezenet_root / "serving_server", *extra)))
    running.start()
    yield running
    running.stop()


def body() -> bytes:
    tensor = {"name": "x", "alias_name": "image", "elem_type": 20, "shape": [1],
              "data": [base64.b64encode(photo_bytes()[0]).decode()]}
    return json.dumps({"tensor": [tensor], "fetch_var_names": ["prediction"]}).encode()


def connect(server: ModelServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


class Reply:
    """One HTTP response read off a raw socket: status, headers (lower-case names), body."""

    def __init__(self, sock: socket.socket, pending: bytearray, head_only: bool = False) -> None:
        while b"\r\n\r\n" not in pending:
            chunk = sock.recv(65536)
            assert chunk, f"closed before a whole head: {bytes(pending)!r}"
            pending += chunk
        head, _, rest = bytes(pending).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = 0 if head_only else int(self.headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed inside the body"
            rest += chunk
        self.body, pending[:] = rest[:length], rest[length:]

    def json(self) -> dict:
        return json.loads(self.body)


def exchange(sock: socket.socket, data: bytes) -> Reply:
    sock.sendall(data)
    return Reply(sock, bytearray())


def closed(sock: socket.socket) -> bool:
    """Whether the server closes the connection within 5 s (whatever it sends before)."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def post(body_: bytes) -> bytes:
    return f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body_)}\r\n\r\n".encode() + body_


def test_chunked_body_is_served(server: ModelServer) -> None:
    data = body()
    parts = [data[i:i + 7000] for i in range(0, len(data), 7000)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    with connect(server) as sock:
        reply = exchange(sock, f"POST {PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                         + chunks + b"0\r\n\r\n")
        assert reply.status == 200 and reply.json()["err_no"] == 0
        assert reply.json()["outputs"][0]["tensor"][0]["shape"] == [1, 1000]
        assert exchange(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status == 200  # still kept alive


def test_chunked_body_over_the_limit_is_413_at_once(server: ModelServer) -> None:
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"[" * 64 * 1024)
    with connect(server) as sock:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(MAX_BODY // (64 * 1024) + 1):  # one byte more than the limit, and the body never ends
            sock.sendall(chunk)
        reply = Reply(sock, bytearray())
        assert reply.status == 413 and reply.json()["err_no"] == 5000
        assert f"limit of {MAX_BODY} bytes" in reply.json()["err_msg"]
        assert reply.headers["connection"] == "close" and closed(sock)


def test_expect_100_continue_before_the_body(server: ModelServer) -> None:
    data = body()
    with connect(server) as sock:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        reply = exchange(sock, data)
        assert reply.status == 200 and reply.json()["err_no"] == 0


def test_expect_100_continue_over_the_limit_is_a_final_413(server: ModelServer) -> None:
    with connect(server) as sock:
        reply = exchange(sock, f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n"
                               "Expect: 100-continue\r\n\r\n".encode())
        assert reply.status == 413 and reply.json() == {
            "err_no": 5000, "err_msg": f"body of {MAX_BODY + 1} bytes exceeds the limit of {MAX_BODY}"}
        assert closed(sock)


@pytest.mark.parametrize(("request_line", "allow"), [
    (f"GET {PATH}", "POST"), (f"PUT {PATH}", "POST"), ("DELETE /health", "GET, HEAD"), ("POST /metrics", "GET, HEAD"),
])
def test_other_methods_are_405_with_allow(server: ModelServer, request_line: str, allow: str) -> None:
    with connect(server) as sock:
        reply = exchange(sock, f"{request_line} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert reply.status == 405 and reply.headers["allow"] == allow
        assert reply.json()["err_no"] == 5000 and request_line.split()[0] in reply.json()["err_msg"]
        assert exchange(sock, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").json() == {"status": "ok"}


def test_unknown_paths_are_404_json(server: ModelServer) -> None:
    with connect(server) as sock:
        for request in (b"GET /nope HTTP/1.1\r\n\r\n", b"DELETE /nope HTTP/1.1\r\n\r\n", post(b"{}").replace(
                PATH.encode(), b"/Nope/inference")):
            reply = exchange(sock, request)
            assert reply.status == 404 and reply.json()["err_no"] == 5000, reply.body


@pytest.mark.parametrize("request_", [
    b"GARBAGE\r\n\r\n", b"GET /health HTTP/2.0\r\n\r\n", b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_malformed_http_is_400_json_then_closed(server: ModelServer, request_: bytes) -> None:
    with connect(server) as sock:
        reply = exchange(sock, request_)
        assert reply.status == 400 and reply.json()["err_no"] == 5000, reply.body
        assert closed(sock)


def test_json_nested_too_deep_is_400(server: ModelServer) -> None:
    with connect(server) as sock:
        reply = exchange(sock, post(b"[" * 100_000))
        assert reply.status == 400 and (reply.json()["err_no"], reply.json()["err_msg"]) == (5000, DEEP_JSON)
        reply = exchange(sock, post(body()))  # the same connection goes on
        assert reply.status == 200 and reply.json()["err_no"] == 0


@pytest.mark.parametrize("head", [
    f"X-Big: {'a' * 70_000}\r\n\r\n",                                    # one header
    "".join(f"X-{i}: {'a' * 1000}\r\n" for i in range(70)) + "\r\n",     # many
    f"X-Endless: {'a' * 100_000}",                                         # one that never ends
])
def test_head_over_64_kib_is_431(server: ModelServer, head: str) -> None:
    with connect(server) as sock:
        reply = exchange(sock, f"GET /health HTTP/1.1\r\n{head}".encode())
        assert reply.status == 431 and reply.json()["err_no"] == 5000
        assert closed(sock)


@pytest.mark.parametrize("partial", [f"POST {PATH} HTTP/1.1\r\nContent-Length: 100\r\n\r\n{{".encode(),
                                     b"GET /health HTTP/1.1\r\nHo"])
def test_a_stalled_request_is_408_after_client_timeout(server: ModelServer, partial: bytes) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        reply = exchange(sock, partial)
        waited = time.monotonic() - started
        assert reply.status == 408 and reply.json()["err_no"] == 5000 and "client_timeout_ms" in reply.json()["err_msg"]
        assert CLIENT_TIMEOUT_MS / 1000 - 0.1 < waited < CLIENT_TIMEOUT_MS / 1000 + 2 and closed(sock)
    with connect(server) as sock:
        assert exchange(sock, post(body())).json()["err_no"] == 0


def test_idle_keep_alive_connection_is_closed(server: ModelServer) -> None:
    with connect(server) as sock:
        assert exchange(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
        time.sleep(KEEPALIVE_MS / 1000 / 2)
        assert exchange(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status == 200  # the wait starts anew
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed without a word
        assert KEEPALIVE_MS / 1000 - 0.1 < time.monotonic() - started < KEEPALIVE_MS / 1000 + 2


def test_keep_alive_pipelining_http_1_0_and_head(server: ModelServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n\r\nHEAD /ready HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
        pending = bytearray()
        first, head, metrics = Reply(sock, pending), Reply(sock, pending, head_only=True), Reply(sock, pending)
        assert first.json() == {"status": "ok"} and head.status == 200
        assert int(head.headers["content-length"]) == len(b'{"status": "ok"}')  # HEAD: the length, no body
        assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert exchange(sock, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").headers["connection"] == "close"
        assert closed(sock)
    with connect(server) as sock:
        reply = exchange(sock, post(body()).replace(b"HTTP/1.1", b"HTTP/1.0"))
        assert reply.json()["err_no"] == 0 and closed(sock)


def test_connection_cap_refuses_http_with_503_and_closes_baidu_std(capped: ModelServer) -> None:
    held = [connect(capped) for _ in range(3)]
    time.sleep(0.2)  # the server has taken them
    with connect(capped) as sock:
        reply = exchange(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.status == 503 and reply.json()["err_no"] == 5000 and "--max_connections" in reply.json()["err_msg"]
        assert closed(sock)
    refused = Connection(capped.port)
    refused.send(image_request(photo_bytes()[:1]))
    assert refused.sock.recv(65536) == b""  # baidu_std: closed, no HTTP bytes
    held.pop().close()
    time.sleep(0.2)
    with connect(capped) as sock:
        assert exchange(sock, post(body())).json()["err_no"] == 0
    for sock in held:
        sock.close()


def test_a_client_leaving_mid_body_logs_nothing(server: ModelServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for reset in (False, True) * 10:
        with connect(server) as sock:
            sock.sendall(post(body())[:5000])
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)
    assert not [record for record in caplog.records if record.name.startswith(("serving", "asyncio"))]
    with connect(server) as sock:
        assert exchange(sock, post(body())).json()["err_no"] == 0


def test_keepalive_flags() -> None:
    def keepalive(*extra: str) -> int:
        return limits_from_args(parse_args(["--model", "m", *extra])).keepalive_timeout_ms

    assert (keepalive(), keepalive("--idle_timeout_s", "2.5"), keepalive("--keepalive_timeout_ms", "700")) == (
        60_000, 2500, 700)
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--idle_timeout_s", "1", "--keepalive_timeout_ms", "700"])
