"""Remote ops: a pipeline whose predict op calls model servers over brpc or gRPC answers like a local one."""

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipelines.web_service import ImageService
from serving.errors import ConfigError
from serving.model_server import ModelServer
from tests.conftest import free_port, photo_bytes, running_model_server


@pytest.fixture(scope="module")
def model_root(squeezenet_root: Path) -> Path:
    return squeezenet_root


@pytest.fixture(scope="module")
def model_server(model_root: Path) -> Iterator[ModelServer]:
    with running_model_server("--model", model_root / "serving_server", "--port", "0", "--grpc_port", "0",
                              "--thread", "2", "--use_mkldnn", "--ir_optim") as server:
        yield server


def classify(config: dict) -> dict:
    service = ImageService(name="imagenet")
    service.prepare_pipeline_config(yml_dict=config)
    service.start()
    try:
        body = {"key": ["image_0", "image_1"], "value": [base64.b64encode(data).decode() for data in photo_bytes()]}
        request = urllib.request.Request(f"http://127.0.0.1:{service.http_port}/imagenet/prediction",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    finally:
        service.stop()


def local_config(model_root: Path) -> dict:
    return {"http_port": 0, "op": {"imagenet": {"local_service_conf": {
        "model_config": str(model_root / "serving_server"), "use_mkldnn": True, "ir_optim": True}}}}


def remote_config(model_root: Path, endpoint: str, **dag: object) -> dict:
    return {"http_port": 0, "dag": dag, "op": {"imagenet": {
        "server_endpoints": [endpoint], "client_config": str(model_root / "serving_client" /
                                                             "serving_client_conf.prototxt")}}}


@pytest.mark.parametrize("protocol", ["brpc", "grpc"])
def test_remote_op_answers_like_the_local_predictor(model_root: Path, model_server: ModelServer,
                                                    protocol: str) -> None:
    port = model_server.port if protocol == "brpc" else model_server.grpc_port
    remote = classify(remote_config(model_root, f"127.0.0.1:{port}", client_type=protocol))
    local = classify(local_config(model_root))
    assert remote["err_no"] == 0, remote
    assert remote == local


@pytest.mark.parametrize("protocol", ["brpc", "grpc"])
def test_remote_errors_come_back_with_their_code(model_root: Path, model_server: ModelServer, protocol: str) -> None:
    port = model_server.port if protocol == "brpc" else model_server.grpc_port
    config = remote_config(model_root, f"127.0.0.1:{port}", client_type=protocol)
    config["op"]["imagenet"]["fetch_list"] = ["logits"]
    answer = classify(config)
    assert answer["err_no"] == 5000 and "logits" in answer["err_msg"], answer


def test_unreachable_model_server_is_an_rpc_error(model_root: Path) -> None:
    answer = classify(remote_config(model_root, "127.0.0.1:1", client_type="grpc"))
    assert answer["err_no"] == 8000 and "unreachable" in answer["err_msg"]


def test_remote_config_errors(model_root: Path) -> None:
    config = remote_config(model_root, "127.0.0.1:9292")
    del config["op"]["imagenet"]["client_config"]
    with pytest.raises(ConfigError, match=r"op\.imagenet\.client_config = None: remote ops need"):
        ImageService().prepare_pipeline_config(yml_dict=config)
    config = remote_config(model_root, "localhost")
    with pytest.raises(ConfigError, match=r"server_endpoints\[0\] = 'localhost': an endpoint is \"host:port\""):
        ImageService().prepare_pipeline_config(yml_dict=config)


@pytest.mark.parametrize("protocol", ["brpc", "grpc"])
def test_remote_op_reaches_model_servers_by_name(model_root: Path, model_server: ModelServer, protocol: str) -> None:
    port = model_server.port if protocol == "brpc" else model_server.grpc_port
    answer = classify(remote_config(model_root, f"localhost:{port}", client_type=protocol))
    assert answer["err_no"] == 0, answer
    assert len(json.loads(answer["value"][answer["key"].index("label")].replace("'", '"'))) == 2


@pytest.mark.parametrize("protocol", ["brpc", "grpc"])
def test_batched_remote_op_passes_the_callers_log_id_and_deadline(model_root: Path, model_server: ModelServer,
                                                                  protocol: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    port = model_server.port if protocol == "brpc" else model_server.grpc_port
    config = remote_config(model_root, f"127.0.0.1:{port}", client_type=protocol)
    config["op"]["imagenet"].update(batch_size=4, auto_batching_timeout=20)
    service = ImageService(name="imagenet")
    service.prepare_pipeline_config(yml_dict=config)
    service.start()
    try:
        body = {"key": ["image_0"], "value": [base64.b64encode(photo_bytes()[0]).decode()], "logid": 4242}
        request = urllib.request.Request(f"http://127.0.0.1:{service.http_port}/imagenet/prediction",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"X-Request-Timeout-Ms": "7000"})
        with caplog.at_level("INFO", logger="serving.dataplane"), urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.loads(reply.read())
    finally:
        service.stop()
    assert answer["err_no"] == 0, answer
    assert service.dag.ops[0].batching
    seen = [record for record in caplog.records if getattr(record, "protocol", "") == protocol]
    assert [record.log_id for record in seen] == [4242]
    assert 6000 < seen[0].timeout_ms < 7000, seen[0].timeout_ms


def probe(port: int, path: str) -> tuple[int, dict | None]:
    """GET a probe path of the pipeline: (status, JSON body or None when empty), 503 included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            status, body = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    return status, json.loads(body) if body else None


class HealthWatch:
    """A gRPC health Watch stream on the pipeline's rpc port, its statuses collected as they come."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.statuses: list[int] = []
        self.stream = health_pb2_grpc.HealthStub(self.channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for answer in self.stream:
                self.statuses.append(answer.status)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def grpc_health(port: int) -> int:
    """The pipeline's gRPC health status for the whole server."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


@pytest.mark.parametrize("protocol", ["brpc", "grpc"])
def test_a_pipeline_is_ready_once_a_model_server_of_its_remote_op_answers(model_root: Path, protocol: str) -> None:
    """A fresh deploy: the pipeline is up before its model server, so /ready must say 503 (and why) until it is."""
    port, grpc_port = free_port(), free_port()
    endpoint = f"127.0.0.1:{port if protocol == 'brpc' else grpc_port}"
    service = ImageService(name="imagenet")
    service.prepare_pipeline_config(yml_dict={**remote_config(model_root, endpoint, client_type=protocol),
                                              "rpc_port": 0})
    service.start()
    try:
        status, body = probe(service.http_port, "/ready")
        assert status == 503 and body["status"] == "waiting", body
        assert len(body["not_ready"]) == 1 and f"op imagenet: no model server is ready: {endpoint}" in \
            body["not_ready"][0], body
        assert probe(service.http_port, "/health") == (200, {"status": "ok"})  # liveness ignores the model servers
        assert grpc_health(service.rpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert probe(service.http_port, "/v2/health/ready")[0] == 400 and \
            probe(service.http_port, "/v2/health/live")[0] == 200
        watch = HealthWatch(service.rpc_port)
        with running_model_server("--model", model_root / "serving_server", "--port", port, "--grpc_port", grpc_port,
                                  "--thread", "1"):
            deadline = time.monotonic() + 15
            while probe(service.http_port, "/ready")[0] != 200:
                assert time.monotonic() < deadline, probe(service.http_port, "/ready")
                time.sleep(0.2)
            assert probe(service.http_port, "/ready") == (200, {"status": "ok"})
            assert grpc_health(service.rpc_port) == health_pb2.HealthCheckResponse.SERVING
            assert probe(service.http_port, "/v2/health/ready")[0] == 200
            while health_pb2.HealthCheckResponse.SERVING not in watch.statuses:  # pushed within about a second
                assert time.monotonic() < deadline + 5, watch.statuses
                time.sleep(0.1)
            assert watch.statuses[0] == health_pb2.HealthCheckResponse.NOT_SERVING
        deadline = time.monotonic() + 15  # the model server stopped: the stream hears it, /ready says why
        while watch.statuses[-1] != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, watch.statuses
            time.sleep(0.1)
        assert probe(service.http_port, "/ready")[0] == 503
        watch.close()
    finally:
        service.stop()
