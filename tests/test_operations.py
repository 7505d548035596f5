"""Operations endpoints on the pipeline's HTTP port: /health, /ready, /metadata, /metrics."""

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from pipelines.web_service import ImageService
from serving.pipeline import Op, WebService
from serving.proto import health_pb2, health_pb2_grpc
from tests.conftest import free_port, photo_bytes


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
