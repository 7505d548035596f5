"""The brpc client against a baidu_std stub server written here: real sockets on 127.0.0.1, no mocks."""

import asyncio
import base64
import functools
import gc
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from clients.brpc_client import Client, PredictError, main
from serving.errors import InputError
from serving.model_config import FLOAT32, STRING, VarSpec, build_config, write_config
from serving.proto.brpc_meta_pb2 import RpcMeta
from serving.proto.general_model_service_pb2 import Request, Response, Tensor
from serving.protocols.baidu_std import DEFAULT_MAX_BODY, BrpcCode, compress, decompress, encode_frame, read_frame
from serving.protocols.brpc_channel import SERVICE, BrpcError, ClientCode
from serving.tensors import to_array, to_tensor
from tests.conftest import free_port, has_ipv6_loopback
from tests.loopback_dns import LoopbackDNS

ROOT = Path(__file__).parent.parent
CLASSES = 4


class StubServer:
    """Echoes feeds as outputs (plus its port); feeds named error_code/err_no/close/stall/garbage steer it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hold: int = 1, host: str = "127.0.0.1", port: int = 0) -> None:
        self.loop = loop
        self.hold = hold
        self.host = host
        self.metas: list[RpcMeta] = []
        self.requests: list[Request] = []
        self.connections = 0
        self.port = port
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop_now(self) -> None:
        """Stop from the test's thread, as a server process that goes away."""
        asyncio.run_coroutine_threadsafe(self.stop(), self.loop).result(5)

    async def stop(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers are held until `hold` requests arrived, then sent in reverse order."""
        self.connections += 1
        self._writers.append(writer)
        held: list[bytes] = []
        while (frame := await read_frame(reader, DEFAULT_MAX_BODY)) is not None:
            self.metas.append(frame.meta)
            request = Request.FromString(decompress(frame.payload, frame.meta.compress_type, DEFAULT_MAX_BODY))
            self.requests.append(request)
            feeds = {tensor.alias_name: tensor for tensor in request.tensor}
            if "close" in feeds:
                break
            if "garbage" in feeds:
                writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            if not {"stall", "garbage"} & set(feeds):
                held.append(self._answer(frame.meta, request, feeds))
            if len(held) >= self.hold:
                writer.writelines(reversed(held))
                held.clear()
        writer.close()

    def _answer(self, meta: RpcMeta, request: Request, feeds: dict[str, Tensor]) -> bytes:
        answer = RpcMeta(correlation_id=meta.correlation_id, compress_type=meta.compress_type)
        if "error_code" in feeds:
            answer.response.error_code = int(to_array(feeds["error_code"])[0])
            answer.response.error_text = "stub refuses"
            return encode_frame(answer, b"")
        response = Response(log_id=request.log_id)
        if "err_no" in feeds:
            response.err_no, response.err_msg = int(to_array(feeds["err_no"])[0]), "stub model failed"
        output = response.outputs.add(engine_name="stub")
        output.tensor.extend(feeds.values())
        output.tensor.append(to_tensor("port", "port", np.array([self.port], dtype=np.int64)))
        output.tensor.append(to_tensor("host", "host", self.host))
        if "prediction" in request.fetch_var_names:
            count = next(iter(feeds.values())).shape[0]
            probs = np.full((count, CLASSES), 0.1 / (CLASSES - 1), dtype=np.float32)
            probs[np.arange(count), (np.arange(count) + 1) % CLASSES] = 0.9
            output.tensor.append(to_tensor("softmax_0.tmp_0", "prediction", probs))
        return encode_frame(answer, compress(response.SerializeToString(), meta.compress_type))


@pytest.fixture
def serve() -> Iterator[Callable[..., StubServer]]:
    """Start stub servers on their own event loop thread, as a real server would be a separate process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers: list[StubServer] = []

    def start(hold: int = 1, host: str = "127.0.0.1", port: int = 0) -> StubServer:
        server = StubServer(loop, hold, host, port)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        servers.append(server)
        return server

    yield start
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def connect() -> Iterator[Callable[..., Client]]:
    """Clients connected to the given stub servers, closed after the test."""
    clients: list[Client] = []

    def make(*servers: StubServer, **options: object) -> Client:
        client = Client(**options)
        client.connect([f"127.0.0.1:{server.port}" for server in servers])
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()



def client_config(root: Path, feed_type: int = FLOAT32) -> Path:
    """`root/serving_client/serving_client_conf.prototxt` with feed `x` (alias `image`) and fetch `prediction`."""
    path = root / "serving_client" / "serving_client_conf.prototxt"
    path.parent.mkdir(parents=True)
    write_config(build_config([VarSpec("x", "image", feed_type, (3, 2, 2))],
                              [VarSpec("softmax_0.tmp_0", "prediction", FLOAT32, (CLASSES,))]), path)
    return path


def test_predict_round_trip_with_config(serve: Callable, connect: Callable, tmp_path: Path) -> None:
    server = serve()
    client = connect(server, timeout_ms=3000)
    client.load_client_config(client_config(tmp_path).parent)
    image = np.arange(12, dtype=np.float64).reshape(3, 2, 2)
    answer = client.predict(feed={"image": image}, fetch=["prediction"], log_id=77)
    assert list(answer) == ["prediction"] and answer["prediction"].shape == (1, CLASSES)
    (meta,) = server.metas
    assert (meta.request.service_name, meta.request.method_name) == (SERVICE, "inference")
    assert (meta.request.log_id, meta.request.timeout_ms) == (77, 3000)
    (request,) = server.requests
    assert (request.log_id, list(request.fetch_var_names)) == (77, ["prediction"])
    assert [(tensor.name, tensor.alias_name) for tensor in request.tensor] == [("x", "image")]


def test_feeds_are_cast_and_batched_by_the_config(serve: Callable, connect: Callable, tmp_path: Path) -> None:
    client = connect(serve())
    client.load_client_config(client_config(tmp_path))
    image = np.arange(12, dtype=np.float64).reshape(3, 2, 2)
    echoed = client.predict(feed={"image": image})["image"]
    assert echoed.dtype == np.float32 and echoed.shape == (1, 3, 2, 2)
    np.testing.assert_array_equal(echoed[0], image)
    assert client.predict(feed={"image": image[np.newaxis]}, batch=True)["image"].shape == (1, 3, 2, 2)


def test_unknown_feed_or_fetch_is_refused_before_sending(serve: Callable, connect: Callable, tmp_path: Path) -> None:
    server = serve()
    client = connect(server)
    client.load_client_config(client_config(tmp_path))
    with pytest.raises(InputError, match="'nope' not in the client config"):
        client.predict(feed={"nope": np.zeros(3, np.float32)})
    with pytest.raises(InputError, match=r"fetch \['score'\] not in the client config"):
        client.predict(feed={"image": np.zeros((3, 2, 2), np.float32)}, fetch=["score"])
    assert server.metas == []


def test_bytes_feed_travels_as_base64_string(serve: Callable, connect: Callable) -> None:
    client = connect(serve())
    files = [b"\xff\xd8jpeg", b"\x89PNG"]
    answer = client.predict(feed={"image": files, "text": "hello"}, batch=True)
    assert answer["image"].tolist() == [base64.b64encode(data).decode("ascii") for data in files]
    assert answer["text"].tolist() == ["hello"]


def test_pipelined_requests_answered_out_of_order(serve: Callable, connect: Callable) -> None:
    server = serve(hold=4)
    client = connect(server, pool_size=1)

    async def four() -> list[dict]:
        calls = [client.predict_async(feed={"v": np.array([i], np.int64)}, batch=True, log_id=i) for i in range(4)]
        return await asyncio.gather(*calls)

    answers = asyncio.run(four())
    assert [int(answer["v"][0]) for answer in answers] == [0, 1, 2, 3]
    assert server.connections == 1
    assert len({meta.correlation_id for meta in server.metas}) == 4


def test_server_error_code_is_raised_and_connection_kept(serve: Callable, connect: Callable) -> None:
    server = serve()
    client = connect(server, pool_size=1)
    with pytest.raises(BrpcError) as caught:
        client.predict(feed={"error_code": np.array([BrpcCode.EOVERCROWDED], np.int64)}, batch=True)
    assert (caught.value.code, caught.value.text) == (BrpcCode.EOVERCROWDED, "stub refuses")
    assert client.predict(feed={"v": np.array([1], np.int64)}, batch=True)["v"].tolist() == [1]
    assert server.connections == 1


def test_err_no_raises_predict_error(serve: Callable, connect: Callable) -> None:
    client = connect(serve())
    with pytest.raises(PredictError) as caught:
        client.predict(feed={"err_no": np.array([5000], np.int64)}, batch=True)
    assert (caught.value.err_no, caught.value.err_msg) == (5000, "stub model failed")


def test_timeout_is_sent_and_enforced(serve: Callable, connect: Callable) -> None:
    server = serve()
    client = connect(server, timeout_ms=200, pool_size=1)
    started = time.perf_counter()
    with pytest.raises(BrpcError) as caught:
        client.predict(feed={"stall": np.array([1], np.int64)}, batch=True)
    assert caught.value.code == BrpcCode.ERPCTIMEDOUT and 0.15 < time.perf_counter() - started < 2
    assert server.metas[0].request.timeout_ms == 200
    assert client.predict(feed={"v": np.array([2], np.int64)}, batch=True)["v"].tolist() == [2]


def test_server_closing_mid_request_fails_then_reconnects(serve: Callable, connect: Callable) -> None:
    server = serve()
    client = connect(server, pool_size=1)
    with pytest.raises(BrpcError) as caught:
        client.predict(feed={"close": np.array([1], np.int64)}, batch=True)
    assert caught.value.code == ClientCode.EEOF
    assert client.predict(feed={"v": np.array([3], np.int64)}, batch=True)["v"].tolist() == [3]
    assert server.connections == 2


def test_non_baidu_std_answer_is_eresponse(serve: Callable, connect: Callable) -> None:
    client = connect(serve())
    with pytest.raises(BrpcError) as caught:
        client.predict(feed={"garbage": np.array([1], np.int64)}, batch=True)
    assert caught.value.code == ClientCode.ERESPONSE and "bad magic" in caught.value.text


def test_round_robin_across_two_endpoints(serve: Callable, connect: Callable) -> None:
    first, second = serve(), serve()
    client = connect(first, second)
    ports = [int(client.predict(feed={"v": np.array([i], np.int64)}, batch=True)["port"][0]) for i in range(6)]
    assert ports == [first.port, second.port] * 3
    assert (first.connections, second.connections) == (2, 2)


def test_dead_endpoint_is_skipped_and_all_dead_is_efailedsocket(serve: Callable) -> None:
    server = serve()
    with Client(timeout_ms=1000) as client:
        client.connect([f"127.0.0.1:{free_port()}", f"127.0.0.1:{server.port}"])
        for _ in range(3):
            assert client.predict(feed={"v": np.array([1], np.int64)}, batch=True)["port"].tolist() == [server.port]
        client.connect([f"127.0.0.1:{free_port()}"])
        with pytest.raises(BrpcError) as caught:
            client.predict(feed={"v": np.array([1], np.int64)}, batch=True)
        assert caught.value.code == ClientCode.EFAILEDSOCKET


@pytest.mark.parametrize(("name", "code"), [("gzip", 2), ("zlib", 3)])
def test_compressed_requests(serve: Callable, connect: Callable, name: str, code: int) -> None:
    server = serve()
    client = connect(server, compress=name)
    values = np.linspace(0, 1, 5000, dtype=np.float32)
    np.testing.assert_array_equal(client.predict(feed={"v": values}, batch=True)["v"], values)
    assert server.metas[0].compress_type == code


def test_sync_api_from_four_threads(serve: Callable, connect: Callable) -> None:
    client = connect(serve(), pool_size=2)
    results: dict[int, list[int]] = {}

    def work(thread: int) -> None:
        feeds = [np.array([thread * 100 + i], np.int64) for i in range(25)]
        results[thread] = [int(client.predict(feed={"v": feed}, batch=True)["v"][0]) for feed in feeds]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {n: [n * 100 + i for i in range(25)] for n in range(4)}


def test_predict_before_connect_and_bad_endpoint() -> None:
    client = Client()
    with pytest.raises(RuntimeError, match="connect"):
        client.predict(feed={"v": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match=r"endpoint 'localhost' is not .*: no ':port'"):
        client.connect(["localhost"])


def test_cli_prints_label_names(serve: Callable, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    server = serve()
    config = client_config(tmp_path, feed_type=STRING)
    (tmp_path / "labels.txt").write_text("0 zero\n1 tench, Tinca tinca\n2 two\n3 three\n")
    images = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for image in images:
        image.write_bytes(b"\xff\xd8 not decoded by the stub")
    assert main(["--config", str(config), "--endpoint", f"127.0.0.1:{server.port}", *map(str, images)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"image: {images[0]}", "label: ['tench Tinca tinca']", f"prob: {[float(np.float32(0.9))]}",
                   f"image: {images[1]}", "label: ['two']", f"prob: {[float(np.float32(0.9))]}"]
    assert server.metas[0].request.method_name == "inference"


def test_cli_script_bench_and_class_indices(serve: Callable, tmp_path: Path) -> None:
    server = serve()
    config = client_config(tmp_path, feed_type=STRING)
    image = tmp_path / "a.jpg"
    image.write_bytes(b"jpeg bytes")
    endpoint = ["--config", str(config), "--endpoint", f"127.0.0.1:{server.port}", str(image)]
    script = [sys.executable, "clients/brpc_client.py", *endpoint]
    run = functools.partial(subprocess.run, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=30, check=True)
    classified = run(script)
    assert classified.stdout.splitlines()[1] == "label: [1]"
    benched = run([*script, "--bench", "--concurrency", "4", "--seconds", "0.5"])
    assert "requests/s, p50 " in benched.stdout and benched.stdout.rstrip().endswith("ms, 0 errors")
    assert len(server.metas) > 10


def answered_by(client: Client, calls: int) -> list[str]:
    """The host of the stub server that answered each of `calls` calls."""
    return [str(client.predict(feed={"v": np.array([i], np.int64)}, batch=True)["host"][0]) for i in range(calls)]


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll `condition` until it holds; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition did not hold in time"
        time.sleep(0.05)


def test_localhost_and_ipv6_literal(serve: Callable) -> None:
    server = serve()
    with Client(timeout_ms=2000) as client:
        client.connect([f"localhost:{server.port}"])
        assert answered_by(client, 2) == ["127.0.0.1"] * 2
        assert client.addresses[f"localhost:{server.port}"][0] == "127.0.0.1"
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    server6 = serve(host="::1")
    with Client(timeout_ms=2000) as client:
        client.connect([f"[::1]:{server6.port}"])
        assert answered_by(client, 2) == ["::1"] * 2
        assert server6.metas[0].request.method_name == "inference"


def test_name_spreads_over_every_address_and_follows_dns(serve: Callable, loopback_dns: LoopbackDNS) -> None:
    first = serve(host="127.0.0.1")
    second = serve(host="127.0.0.2", port=first.port)
    name = f"model-server.test:{first.port}"
    loopback_dns.answers["model-server.test"] = ["127.0.0.1"]
    with Client(timeout_ms=2000, resolver=loopback_dns.lookup, refresh_s=0.2) as client:
        client.connect([name])
        assert answered_by(client, 4) == ["127.0.0.1"] * 4
        loopback_dns.answers["model-server.test"] = ["127.0.0.1", "127.0.0.2"]  # the timer picks up a new pod
        wait_for(lambda: client.addresses[name] == ["127.0.0.1", "127.0.0.2"])
        assert sorted(answered_by(client, 4)) == ["127.0.0.1"] * 2 + ["127.0.0.2"] * 2 and second.connections == 2
        loopback_dns.answers["model-server.test"] = ["127.0.0.2"]  # the first pod leaves the Service, then stops
        wait_for(lambda: client.addresses[name] == ["127.0.0.2"])
        first.stop_now()
        served = len(first.requests)
        assert answered_by(client, 4) == ["127.0.0.2"] * 4 and len(first.requests) == served


def test_failed_connection_resolves_again_without_the_timer(serve: Callable, loopback_dns: LoopbackDNS) -> None:
    first = serve(host="127.0.0.1")
    second = serve(host="127.0.0.2", port=first.port)
    loopback_dns.answers["model-server.test"] = ["127.0.0.1"]
    with Client(timeout_ms=2000, resolver=loopback_dns.lookup, refresh_s=0) as client:
        client.connect([f"model-server.test:{first.port}"])
        assert answered_by(client, 2) == ["127.0.0.1"] * 2
        loopback_dns.answers["model-server.test"] = ["127.0.0.2"]
        first.stop_now()
        failures: list[int] = []

        def reaches_second() -> bool:
            try:
                return answered_by(client, 1) == ["127.0.0.2"]
            except BrpcError as exc:
                failures.append(exc.code)
                return False

        wait_for(reaches_second)
        assert set(failures) <= {ClientCode.EEOF, ClientCode.EFAILEDSOCKET} and len(second.requests) == 1
        assert loopback_dns.queries["model-server.test"] >= 4  # A and AAAA, at connect and after the failure


def test_unresolvable_name_fails_calls_until_the_resolver_answers(serve: Callable) -> None:
    server = serve()
    known: dict[str, list[str]] = {}

    def resolver(host: str, port: int) -> list[str]:
        if host not in known:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return known[host]

    with Client(timeout_ms=2000, resolver=resolver, refresh_s=0.1) as client:
        client.connect([f"later.test:{server.port}"])
        with pytest.raises(BrpcError, match=r"no address to call: cannot resolve later\.test:") as caught:
            answered_by(client, 1)
        assert caught.value.code == ClientCode.EFAILEDSOCKET
        known["later.test"] = ["127.0.0.1"]
        wait_for(lambda: client.addresses == {f"later.test:{server.port}": ["127.0.0.1"]})
        assert answered_by(client, 1) == ["127.0.0.1"]


def test_client_threads_end_on_close_and_garbage_collection(serve: Callable) -> None:
    def loop_threads() -> int:
        return sum(thread.name == "brpc-client" for thread in threading.enumerate())

    before = loop_threads()
    client = Client()
    client.connect([f"127.0.0.1:{serve().port}"])
    assert answered_by(client, 1) == ["127.0.0.1"] and loop_threads() == before + 1
    del client
    gc.collect()
    assert loop_threads() == before


EXITS_WITHOUT_CLOSE = """
import sys
import numpy as np
from clients.brpc_client import Client
client = Client(timeout_ms=5000)
client.connect([sys.argv[1]])
print(client.predict(feed={"v": np.array([7], np.int64)}, batch=True)["v"].tolist())
"""


def test_script_that_never_closes_exits_quietly(serve: Callable) -> None:
    server = serve()
    done = subprocess.run([sys.executable, "-c", EXITS_WITHOUT_CLOSE, f"localhost:{server.port}"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[7]\n", "")
