"""The model server end to end: baidu_std, HTTP and gRPC on real sockets, against in-process prediction."""

import base64
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from export import inference_io
from serving.model_card import load_card
from serving.model_server import ModelServer, build_service, parse_args
from serving.proto import general_model_service_pb2 as gm
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.proto.brpc_meta_pb2 import RpcMeta
from serving.protocols.baidu_std import HEADER, CompressType, FrameDecoder, compress, decompress, encode_frame
from serving.tensors import to_array, to_tensor
from tests.conftest import photo_bytes, running_model_server

SERVICE = "baidu.paddle_serving.predictor.general_model.GeneralModelService"


@pytest.fixture(scope="module")
def model_dir(squeezenet_root: Path) -> Path:
    return squeezenet_root / "serving_server"


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ModelServer]:
    with running_model_server("--model", model_dir, "--port", "0", "--grpc_port", "0", "--thread", "2",
                              "--idle_timeout_s", "1.5", "--max_body_bytes", 8 * 2**20) as running:
        yield running


def preprocessed(model_dir: Path, images: list[bytes]) -> np.ndarray:
    card = load_card(model_dir)
    return np.stack([card.transforms(data) for data in images])


def expected(model_dir: Path, batch: np.ndarray) -> np.ndarray:
    return inference_io.run(inference_io.create_predictor(model_dir), batch)[0]


class Connection:
    """A raw baidu_std connection: frames out, frames in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.decoder = FrameDecoder()
        self.pending: list = []

    def send(self, request: gm.Request | bytes, correlation_id: int = 1, service: str = SERVICE,
             method: str = "inference", compress_type: int = 0, log_id: int = 0, timeout_ms: int = 0) -> None:
        meta = RpcMeta(correlation_id=correlation_id, compress_type=compress_type)
        meta.request.service_name, meta.request.method_name = service, method
        meta.request.log_id, meta.request.timeout_ms = log_id, timeout_ms
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        self.sock.sendall(encode_frame(meta, compress(payload, compress_type)))

    def receive(self) -> tuple[RpcMeta, gm.Response]:
        while not self.pending:
            data = self.sock.recv(1 << 20)
            assert data, "server closed the connection"
            self.pending.extend(self.decoder.feed(data))
        frame = self.pending.pop(0)
        response = gm.Response()
        response.ParseFromString(decompress(frame.payload, frame.meta.compress_type, 1 << 26))
        return frame.meta, response

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def image_request(images: list[bytes], log_id: int = 0) -> gm.Request:
    return gm.Request(tensor=[to_tensor("x", "image", images)], fetch_var_names=["prediction"], log_id=log_id)


def output(response: gm.Response) -> np.ndarray:
    assert response.err_no == 0, response.err_msg
    (tensor,) = response.outputs[0].tensor
    assert (tensor.alias_name, tensor.elem_type) == ("prediction", 1)
    return to_array(tensor)


def test_baidu_std_tensor_and_image_feeds_match_in_process(server: ModelServer, model_dir: Path) -> None:
    batch = preprocessed(model_dir, photo_bytes())
    reference = expected(model_dir, batch)
    connection = Connection(server.port)
    connection.send(gm.Request(tensor=[to_tensor("x", "x", batch)], log_id=11), correlation_id=5)
    meta, response = connection.receive()
    assert (meta.correlation_id, meta.response.error_code, response.log_id) == (5, 0, 11)
    np.testing.assert_allclose(output(response), reference, atol=1e-5)
    connection.send(image_request(photo_bytes()), correlation_id=6, service="GeneralModelService", log_id=12)
    meta, response = connection.receive()
    assert (meta.correlation_id, response.log_id) == (6, 12)
    np.testing.assert_allclose(output(response), reference, atol=1e-5)


def test_pipelined_requests_matched_by_correlation_id(server: ModelServer, model_dir: Path) -> None:
    photos = photo_bytes()
    connection = Connection(server.port)
    for correlation_id in range(6):
        connection.send(image_request([photos[correlation_id % 2]]), correlation_id=100 + correlation_id,
                        compress_type=[CompressType.NONE, CompressType.GZIP, CompressType.ZLIB][correlation_id % 3])
    answers = [connection.receive() for _ in range(6)]
    by_id = {meta.correlation_id: output(response) for meta, response in answers}
    reference = expected(model_dir, preprocessed(model_dir, photos))
    for correlation_id, probs in by_id.items():
        np.testing.assert_allclose(probs[0], reference[(correlation_id - 100) % 2], atol=1e-5)
    assert sorted(by_id) == list(range(100, 106))


def test_http_and_grpc_on_the_model_server(server: ModelServer, model_dir: Path) -> None:
    reference = expected(model_dir, preprocessed(model_dir, photo_bytes()[:1]))
    body = {"tensor": [{"name": "x", "alias_name": "image", "elem_type": 20, "shape": [1],
                        "data": [base64.b64encode(photo_bytes()[0]).decode()]}], "fetch_var_names": ["prediction"]}
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/GeneralModelService/inference",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        reply = json.loads(answer.read())
    assert reply["err_no"] == 0 and reply["outputs"][0]["tensor"][0]["shape"] == [1, 1000]
    np.testing.assert_allclose(reply["outputs"][0]["tensor"][0]["float_data"], reference[0], atol=1e-5)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = gm_grpc.GeneralModelServiceStub(channel).inference(image_request(photo_bytes()[:1]))
    np.testing.assert_allclose(output(response), reference, atol=1e-5)


def test_grpc_health_on_the_model_server(server: ModelServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="GeneralModelService"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND



def test_grpc_watch_on_the_model_server_ends_at_the_stop(model_dir: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    args = parse_args(["--model", str(model_dir), "--port", "0", "--grpc_port", "0", "--thread", "1"])
    server = ModelServer(build_service(args), args).start()
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 4  # the open stream does not hold the stop for its 5 s grace
        assert [reply.status for reply in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
        assert watch.code() == grpc.StatusCode.OK


def good_request_works(server: ModelServer) -> None:
    connection = Connection(server.port)
    connection.send(image_request(photo_bytes()[:1]))
    assert connection.receive()[1].err_no == 0


@pytest.mark.parametrize(("kwargs", "code", "text"), [
    ({"service": "EchoService"}, 1001, "no service 'EchoService'"),
    ({"method": "train"}, 1002, "GeneralModelService has no method 'train'"),
    ({"compress_type": CompressType.SNAPPY}, 1003, "compress_type snappy is not supported"),
])
def test_brpc_error_codes(server: ModelServer, kwargs: dict, code: int, text: str) -> None:
    connection = Connection(server.port)
    connection.send(image_request(photo_bytes()[:1]) if "compress_type" not in kwargs else b"\x00", **kwargs)
    meta, _ = connection.receive()
    assert meta.response.error_code == code and text in meta.response.error_text
    connection.send(image_request(photo_bytes()[:1]), correlation_id=2)
    assert connection.receive()[1].err_no == 0


def test_timeout_ms_is_honoured(server: ModelServer) -> None:
    connection = Connection(server.port)
    connection.send(image_request(photo_bytes() * 4), timeout_ms=1)
    meta, _ = connection.receive()
    assert meta.response.error_code == 1008 and "timeout_ms 1" in meta.response.error_text
    good_request_works(server)


def test_payload_that_does_not_parse(server: ModelServer) -> None:
    connection = Connection(server.port)
    connection.send(b"\xff\xff\xff garbage")
    meta, _ = connection.receive()
    assert meta.response.error_code == 1003 and "not a GeneralModelService Request" in meta.response.error_text


@pytest.mark.parametrize(("request_", "message"), [
    (gm.Request(tensor=[to_tensor("x", "x", np.zeros((1, 3, 100, 100), np.float32))]),
     "feed 'x'"),
    (gm.Request(tensor=[to_tensor("x", "x", np.zeros((1, 3, 224, 224), np.float64))]), "float64"),
    (gm.Request(tensor=[to_tensor("x", "x", np.zeros((1, 3, 224, 224), np.float32)),
                        to_tensor("y", "y", np.zeros((1, 3), np.float32))]), "'y'"),
    (gm.Request(tensor=[to_tensor("x", "x", np.zeros((1, 3, 224, 224), np.float32))], fetch_var_names=["logits"]),
     "logits"),
    (gm.Request(tensor=[to_tensor("x", "image", ["%%%"])]), "is not base64 text of an image file"),
    (gm.Request(), "request has no tensor"),
])
def test_feeds_that_do_not_match_the_model(server: ModelServer, request_: gm.Request, message: str) -> None:
    connection = Connection(server.port)
    connection.send(request_)
    meta, response = connection.receive()
    assert meta.response.error_code == 0
    assert response.err_no == 5000 and message in response.err_msg, response.err_msg
    good_request_works(server)


@pytest.mark.parametrize(("garbage", "answer"), [
    (b"JUNK" + bytes(8), b"HTTP/1.1 400 "),                  # wrong magic: not HTTP either
    (HEADER.pack(b"PRPC", 2**30, 10), b""),                  # body above the limit: nothing allocated
    (HEADER.pack(b"PRPC", 10, 20) + bytes(10), b""),         # meta larger than body
    (HEADER.pack(b"PRPC", 4, 4) + b"\xff\xff\xff\xff", b""),  # meta that does not parse
])
def test_framing_violations_close_the_connection(server: ModelServer, garbage: bytes, answer: bytes) -> None:
    connection = Connection(server.port)
    connection.sock.sendall(garbage)
    reply = b""
    while chunk := connection.sock.recv(65536):
        reply += chunk
    assert reply.startswith(answer) and (answer or not reply)
    good_request_works(server)


def test_half_a_frame_then_stall_times_out_alone(server: ModelServer) -> None:
    staller = Connection(server.port)
    frame = encode_frame(RpcMeta(correlation_id=1), image_request(photo_bytes()[:1]).SerializeToString())
    staller.sock.sendall(frame[: len(frame) // 2])
    started = time.monotonic()
    good_request_works(server)
    assert staller.closed_by_server()
    assert 1.0 < time.monotonic() - started < 10


def test_http_errors(server: ModelServer) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/GeneralModelService/inference",
                                     data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 400 and json.loads(error.value.read())["err_no"] == 5000
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/Nope/inference", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 404
    good_request_works(server)


def test_probes_and_metrics_on_the_brpc_port(server: ModelServer) -> None:
    good_request_works(server)
    base = f"http://127.0.0.1:{server.port}"
    for path in ("/health", "/ready"):
        with urllib.request.urlopen(base + path, timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read()) == {"status": "ok"}
    with urllib.request.urlopen(base + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert 'serving_requests_total{err_no="0",protocol="brpc"}' in text and "process_resident_memory_bytes" in text
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(base + "/nope", timeout=10)
    assert error.value.code == 404
    request = urllib.request.Request(base + "/health", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 405


def test_a_bad_model_folder_is_one_clear_error(tmp_path: Path) -> None:
    from serving.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no serving_server_conf\.prototxt there"):
        build_service(parse_args(["--model", str(tmp_path)]))
