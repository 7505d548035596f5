"""Operations endpoints on the pipeline's HTTP port: /health, /ready, /metadata, /metrics."""

import base64
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipelines.web_service import ImageService
from serving.pipeline import Op, WebService
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from tests.conftest import free_port, photo_bytes

Status = health_pb2.HealthCheckResponse


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(port: int, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/slow/prediction", data=json.dumps(body).encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


class SlowToLoad(Op):
    def init_op(self) -> None:
        time.sleep(1.0)


class SlowService(WebService):
    def get_pipeline_response(self, read_op: Op) -> Op:
        return SlowToLoad(name="slow", input_ops=[read_op])



def health(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=10).status


def test_live_before_ready_then_ready() -> None:
    port, rpc_port = free_port(), free_port()
    service = SlowService(name="slow")
    service.prepare_pipeline_config(yml_dict={"http_port": port, "rpc_port": rpc_port})
    starter = threading.Thread(target=service.start)
    starter.start()
    try:
        deadline = time.monotonic() + 10
        while service.http_port is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert get(port, "/health") == (200, b'{"status": "ok"}')
        assert get(port, "/ready") == (503, b'{"status": "loading"}')
        assert health(rpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING
        early = post(port, {"key": ["a"], "value": ["b"]})
        assert early["err_no"] == 3003 and "GET /ready" in early["err_msg"]
        starter.join(timeout=10)
        assert get(port, "/ready") == (200, b'{"status": "ok"}')
        assert post(port, {"key": ["a"], "value": ["b"]})["value"] == ["b"]
        full_name = "baidu.paddle_serving.pipeline_serving.PipelineService"
        assert health(rpc_port) == health(rpc_port, full_name) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            health(rpc_port, "Nope")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        starter.join(timeout=10)
        service.stop()



class GatedLoad(Op):
    """Loads until the test opens the gate, so a Watch stream is surely open while the service loads."""

    gate = threading.Event()

    def init_op(self) -> None:
        assert self.gate.wait(30)


class GatedService(WebService):
    def get_pipeline_response(self, read_op: Op) -> Op:
        return GatedLoad(name="gated", input_ops=[read_op])


def watch(channel: grpc.Channel, service: str) -> "queue.Queue[object]":
    """Each status a Watch stream sends, then None when it ends (or its error code)."""
    statuses: queue.Queue[object] = queue.Queue()

    def read() -> None:
        try:
            for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service),
                                                                    timeout=60):
                statuses.put(reply.status)
            statuses.put(None)
        except grpc.RpcError as exc:
            statuses.put(exc.code())

    threading.Thread(target=read, daemon=True).start()
    return statuses


def test_watch_sees_loading_then_serving_then_stopping() -> None:
    GatedLoad.gate.clear()
    service = GatedService(name="gated")
    service.prepare_pipeline_config(yml_dict={"rpc_port": 0})
    starter = threading.Thread(target=service.start)
    starter.start()
    try:
        deadline = time.monotonic() + 10
        while service.rpc_port in (None, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        with grpc.insecure_channel(f"127.0.0.1:{service.rpc_port}") as channel:
            streams = [watch(channel, name) for name in ("", "baidu.paddle_serving.pipeline_serving.PipelineService")]
            assert [stream.get(timeout=10) for stream in streams] == [Status.NOT_SERVING] * 2
            GatedLoad.gate.set()
            starter.join(timeout=10)
            assert [stream.get(timeout=10) for stream in streams] == [Status.SERVING] * 2
            service.stop()
            assert [stream.get(timeout=10) for stream in streams] == [Status.NOT_SERVING] * 2
    finally:
        GatedLoad.gate.set()
        starter.join(timeout=10)
        service.stop()


def test_watch_streams_hold_no_worker_thread() -> None:
    service = SlowService(name="slow")
    service.prepare_pipeline_config(yml_dict={"rpc_port": 0, "worker_num": 1})
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.rpc_port}") as channel:
            streams = [watch(channel, "") for _ in range(8)]
            assert [stream.get(timeout=10) for stream in streams] == [Status.SERVING] * 8
            reply = pb_grpc.PipelineServiceStub(channel).inference(pb.Request(key=["a"], value=["b"]), timeout=5)
            assert reply.err_no == 0 and list(reply.value) == ["b"]
            assert health(service.rpc_port) == Status.SERVING
    finally:
        service.stop()


@pytest.fixture(scope="module")
def classifier(squeezenet_root: Path):
    service = ImageService(name="imagenet")
    service.prepare_pipeline_config(yml_dict={"http_port": 0, "op": {"imagenet": {"local_service_conf": {
        "model_config": str(squeezenet_root / "serving_server")}}}})
    service.start()
    yield service
    service.stop()


def test_metadata_describes_the_model(classifier: ImageService) -> None:
    status, body = get(classifier.http_port, "/metadata")
    op = json.loads(body)["ops"]["imagenet"]
    assert status == 200 and json.loads(body)["service"] == "imagenet"
    assert (op["feeds"], op["fetches"], op["model"], op["num_classes"]) == (["x"], ["prediction"], "SqueezeNet1_1",
                                                                            1000)
    assert op["weights"]["source"] == "random-init" and op["preprocessing"]["center_crop"]["size"] == 224


def test_metrics_count_requests_stages_and_memory(classifier: ImageService) -> None:
    image = base64.b64encode(photo_bytes()[0]).decode()
    for value in ("%%%", image):
        body = json.dumps({"key": ["image"], "value": [value]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{classifier.http_port}/imagenet/prediction", data=body,
                                         method="POST")
        urllib.request.urlopen(request, timeout=10).read()
    status, body = get(classifier.http_port, "/metrics")
    text = body.decode()
    assert status == 200
    assert 'serving_requests_total{err_no="5000",protocol="http"}' in text
    assert 'serving_requests_total{err_no="0",protocol="http"}' in text
    assert 'serving_stage_seconds_count{op="imagenet",stage="process"}' in text
    assert 'serving_batch_size_count{op="imagenet"}' in text
    assert "# TYPE serving_request_seconds histogram" in text
    assert 'serving_request_seconds_bucket{le="+Inf",protocol="http"}' in text
    rss = [line for line in text.splitlines() if line.startswith("process_resident_memory_bytes ")]
    assert rss and float(rss[0].split()[1]) > 10e6
    assert get(classifier.http_port, "/nope")[0] == 404
