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
from serving.dataplane import READY_TTL_S, DataPlane, PipelineEndpoint
from serving.pipeline import Op, WebService
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from tests.conftest import free_port, photo_bytes
from tests.test_workers import SleepService

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


class Watch:
    """One Watch stream over a real channel: each status it sends, then None when it ends (or its error code)."""

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        self.call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=60)
        self.statuses: queue.Queue[object] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.statuses.put(reply.status)
            self.statuses.put(None)
        except grpc.RpcError as exc:
            self.statuses.put(exc.code())

    def next(self) -> object:
        return self.statuses.get(timeout=10)


def start_gated() -> tuple[GatedService, threading.Thread]:
    """A pipeline whose rpc_port is open while its op still loads, until GatedLoad.gate is set."""
    GatedLoad.gate.clear()
    service = GatedService(name="gated")
    service.prepare_pipeline_config(yml_dict={"rpc_port": 0})
    starter = threading.Thread(target=service.start)
    starter.start()
    deadline = time.monotonic() + 10
    while service.rpc_port in (None, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    return service, starter


def test_watch_sees_loading_then_serving_then_stopping() -> None:
    service, starter = start_gated()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.rpc_port}") as channel:
            streams = [Watch(channel, name) for name in ("", "baidu.paddle_serving.pipeline_serving.PipelineService")]
            assert [stream.next() for stream in streams] == [Status.NOT_SERVING] * 2
            GatedLoad.gate.set()
            starter.join(timeout=10)
            assert [stream.next() for stream in streams] == [Status.SERVING] * 2
            started = time.monotonic()
            service.stop()
            assert time.monotonic() - started < 5  # open Watch streams do not hold the stop for its 10 s grace
            assert [stream.next() for stream in streams] == [Status.NOT_SERVING] * 2
            assert [stream.next() for stream in streams] == [None] * 2  # then each stream ends
    finally:
        GatedLoad.gate.set()
        starter.join(timeout=10)
        service.stop()


def test_a_watch_stream_ending_leaves_the_others_of_its_service_informed() -> None:
    service, starter = start_gated()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.rpc_port}") as channel:
            leaving, staying = Watch(channel, ""), Watch(channel, "")
            assert [leaving.next(), staying.next()] == [Status.NOT_SERVING] * 2
            leaving.call.cancel()
            assert leaving.next() == grpc.StatusCode.CANCELLED
            time.sleep(0.2)  # the server sees the cancel and forgets that stream
            GatedLoad.gate.set()
            starter.join(timeout=10)
            assert staying.next() == Status.SERVING
            unknown = Watch(channel, "Nope")
            assert unknown.next() == Status.SERVICE_UNKNOWN
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
            streams = [Watch(channel, "") for _ in range(8)]
            assert [stream.next() for stream in streams] == [Status.SERVING] * 8
            reply = pb_grpc.PipelineServiceStub(channel).inference(pb.Request(key=["a"], value=["b"]), timeout=5)
            assert reply.err_no == 0 and list(reply.value) == ["b"]
            assert health(service.rpc_port) == Status.SERVING
    finally:
        service.stop()


def test_health_answers_while_every_worker_is_busy() -> None:
    service = SleepService(name="sleep")
    service.prepare_pipeline_config(yml_dict={"rpc_port": 0, "worker_num": 1})
    service.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.rpc_port}") as channel:
            busy = pb_grpc.PipelineServiceStub(channel).inference.future(
                pb.Request(key=["seconds"], value=["1.5"], name="sleep"), timeout=10)
            time.sleep(0.3)  # the only gRPC worker is now inside the op
            started = time.monotonic()
            assert health(service.rpc_port) == Status.SERVING
            assert Watch(channel, "").next() == Status.SERVING
            assert time.monotonic() - started < 1.0 and not busy.done()  # the worker is busy for 1.2 s more
            assert busy.result().err_no == 0
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
    assert (op["device"], op["precision"]) == ("cpu", "fp32") and op["engine"] in ("paddle", "onnxruntime")


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


def test_a_flood_of_readiness_probes_asks_the_dependencies_once_a_second() -> None:
    plane = DataPlane(PipelineEndpoint("svc"))
    asked = []
    plane.depend_on(lambda: asked.append(time.monotonic()) or ["op a: no model server is ready: 127.0.0.1:1"])
    assert all(plane.waiting_for() == ["op a: no model server is ready: 127.0.0.1:1"] for _ in range(200))
    assert len(asked) == 1
    time.sleep(READY_TTL_S)
    plane.waiting_for()
    assert len(asked) == 2
