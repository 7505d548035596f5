"""Limits and deadlines on every server: refused at once with the protocol's code, expired work never computed."""

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from serving.model_server import ModelServer
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from tests.conftest import photo_bytes, running_model_server
from tests.test_model_server import Connection, image_request
from tests.test_web_service import b64, service_config
from tests.test_workers import SleepOp, SleepService


def start_sleep_service(**limits: int) -> SleepService:
    svc = SleepService(name="sleep")
    svc.prepare_pipeline_config(yml_dict={"http_port": 0, "rpc_port": 0, "worker_num": 8, "limits": limits,
                                          "op": {"sleep": {"concurrency": 1}}})
    return svc.start()


def post_sleep(port: int, seconds: float, tag: str = "", timeout_ms: float | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body), error statuses included."""
    body = json.dumps({"key": ["seconds", "tag"], "value": [str(seconds), tag]}).encode()
    headers = {"X-Request-Timeout-Ms": str(timeout_ms)} if timeout_ms is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sleep/prediction", data=body, method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def sleepy() -> Iterator[SleepService]:
    SleepOp.ran.clear()
    svc = start_sleep_service(max_inflight=3, max_queue=1, request_timeout_ms=10_000)
    yield svc
    svc.stop()


def test_in_flight_and_queue_limits_refuse_at_once_then_serve(sleepy: SleepService) -> None:
    port = sleepy.http_port
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post_sleep, port, 1.5, "running")
        time.sleep(0.3)
        queued = pool.submit(post_sleep, port, 0, "queued")
        time.sleep(0.3)
        started = time.monotonic()
        status, answer = post_sleep(port, 0, "refused")  # one op thread busy, max_queue 1 already waiting
        assert time.monotonic() - started < 0.5
        assert status == 503 and answer["err_no"] == 5000 and "limits.max_queue" in answer["err_msg"]
        assert running.result()[1]["err_no"] == 0 and queued.result()[1]["err_no"] == 0
    assert "refused" not in SleepOp.ran
    assert post_sleep(port, 0)[1]["err_no"] == 0


def test_max_inflight_refuses_http_with_503() -> None:
    svc = start_sleep_service(max_inflight=1, max_queue=8)
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(post_sleep, svc.http_port, 1.0)
            time.sleep(0.3)
            status, answer = post_sleep(svc.http_port, 0)
            assert status == 503 and answer["err_no"] == 5000 and "limits.max_inflight (1)" in answer["err_msg"]
            assert running.result()[1]["err_no"] == 0
        assert post_sleep(svc.http_port, 0)[1]["err_no"] == 0
    finally:
        svc.stop()


def test_grpc_beyond_max_inflight_is_resource_exhausted() -> None:
    svc = start_sleep_service(max_inflight=1, max_queue=8)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{svc.rpc_port}") as channel:
            stub = pb_grpc.PipelineServiceStub(channel)
            slow = stub.inference.future(pb.Request(key=["seconds"], value=["1.0"], name="sleep"), timeout=10)
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as refused:
                stub.inference(pb.Request(key=["seconds"], value=["0"], name="sleep"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert slow.result().err_no == 0
            assert stub.inference(pb.Request(key=["seconds"], value=["0"], name="sleep"), timeout=10).err_no == 0
    finally:
        svc.stop()


def test_grpc_port_bounds_connections_and_closes_silent_ones() -> None:
    svc = start_sleep_service(max_connections=2, client_timeout_ms=1500)
    silent = [socket.create_connection(("127.0.0.1", svc.rpc_port)) for _ in range(2)]
    try:
        time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{svc.rpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.PipelineServiceStub(channel).inference(pb.Request(key=["seconds"], value=["0"]), timeout=1)
            assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        for sock in silent:  # no HTTP/2 preface within client_timeout_ms: the server closes them
            sock.settimeout(5)
            while sock.recv(1024):  # the server's own SETTINGS frame, then the end of the stream
                pass
        with grpc.insecure_channel(f"127.0.0.1:{svc.rpc_port}") as channel:
            reply = pb_grpc.PipelineServiceStub(channel).inference(pb.Request(key=["seconds"], value=["0"]), timeout=5)
            assert reply.err_no == 0
    finally:
        for sock in silent:
            sock.close()
        svc.stop()


def test_http_deadline_header_answers_6000_and_drops_queued_work(sleepy: SleepService) -> None:
    port = sleepy.http_port
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post_sleep, port, 1.0, "running")
        time.sleep(0.2)
        started = time.monotonic()
        status, answer = post_sleep(port, 0, "expired", timeout_ms=200)  # waits behind `running`, then expires
        assert status == 200 and answer["err_no"] == 6000, answer
        assert time.monotonic() - started < 0.8
        assert running.result()[1]["err_no"] == 0
    time.sleep(0.2)
    assert SleepOp.ran == ["running"]  # the expired request was dropped from the queue, never run
    assert post_sleep(port, 0, timeout_ms=5000)[1]["err_no"] == 0
    status, answer = post_sleep(port, 0, timeout_ms="soon")  # type: ignore[arg-type]
    assert answer["err_no"] == 5000 and "X-Request-Timeout-Ms" in answer["err_msg"]


def test_grpc_deadline_travels_to_the_dag(sleepy: SleepService) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{sleepy.rpc_port}") as channel, ThreadPoolExecutor(1) as pool:
        stub = pb_grpc.PipelineServiceStub(channel)
        running = pool.submit(post_sleep, sleepy.http_port, 1.0, "running")
        time.sleep(0.2)
        started = time.monotonic()
        try:  # queued behind `running`; the server knows the deadline (its own limit is 10 s) and answers 6000
            outcome = stub.inference(pb.Request(key=["seconds", "tag"], value=["0", "expired"], name="sleep"),
                                     timeout=0.3).err_no
        except grpc.RpcError as exc:
            outcome = exc.code()
        assert outcome in (6000, grpc.StatusCode.DEADLINE_EXCEEDED) and time.monotonic() - started < 0.8
        assert running.result()[1]["err_no"] == 0
        time.sleep(0.2)
        assert SleepOp.ran == ["running"]  # dropped from the op's queue: only a known deadline does that
        reply = stub.inference(pb.Request(key=["seconds"], value=["0"], name="sleep"), timeout=10)
        assert reply.err_no == 0


def test_images_per_request_limit(squeezenet_root: Path) -> None:
    from pipelines.web_service import ImageService

    config = service_config(squeezenet_root / "serving_server")
    config["limits"]["max_images_per_request"] = 2
    svc = ImageService(name="imagenet")
    svc.prepare_pipeline_config(yml_dict=config)
    svc.start()
    try:
        def post(count: int) -> tuple[int, dict]:
            body = {"key": [f"image_{i}" for i in range(count)], "value": [b64(photo_bytes()[0])] * count}
            request = urllib.request.Request(f"http://127.0.0.1:{svc.http_port}/imagenet/prediction",
                                             data=json.dumps(body).encode(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status, json.loads(answer.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, refused = post(3)
        assert status == 200 and refused["err_no"] == 5000 and "3 images, above the limit of 2" in refused["err_msg"]
        assert post(2)[1]["err_no"] == 0
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def tight_model_server(squeezenet_root: Path) -> Iterator[ModelServer]:
    with running_model_server("--model", squeezenet_root / "serving_server", "--port", "0", "--grpc_port", "0",
                              "--thread", "1", "--max_inflight", "1", "--max_images_per_request", "2") as server:
        yield server


def test_model_server_baidu_std_beyond_max_inflight_is_elimit(tight_model_server: ModelServer) -> None:
    connection = Connection(tight_model_server.port)
    for correlation_id in range(1, 7):  # pipelined on one connection: all arrive while the first runs
        connection.send(image_request(photo_bytes()[:2]), correlation_id=correlation_id)
    metas = [connection.receive()[0] for _ in range(6)]
    codes = sorted(meta.response.error_code for meta in metas)
    assert codes[0] == 0 and 2004 in codes, codes
    assert "requests in flight" in next(m.response.error_text for m in metas if m.response.error_code == 2004)
    connection.send(image_request(photo_bytes()[:1]), correlation_id=9)
    assert connection.receive()[1].err_no == 0


def test_model_server_images_per_request(tight_model_server: ModelServer) -> None:
    connection = Connection(tight_model_server.port)
    connection.send(image_request(photo_bytes() * 2))
    response = connection.receive()[1]
    assert response.err_no == 5000 and "4 images, above the limit of 2" in response.err_msg


def test_model_server_grpc_beyond_max_inflight_is_resource_exhausted(tight_model_server: ModelServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{tight_model_server.grpc_port}") as channel:
        stub = gm_grpc.GeneralModelServiceStub(channel)
        calls = [stub.inference.future(image_request(photo_bytes()[:2]), timeout=30) for _ in range(6)]
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert stub.inference(image_request(photo_bytes()[:1]), timeout=30).err_no == 0


def test_model_server_http_beyond_max_inflight_is_503(tight_model_server: ModelServer) -> None:
    body = json.dumps({"tensor": [{"name": "x", "alias_name": "image", "elem_type": 20,
                                   "data": [base64.b64encode(photo_bytes()[0]).decode()] * 2}],
                       "fetch_var_names": ["prediction"]}).encode()

    def call() -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{tight_model_server.port}/GeneralModelService/inference",
                                         data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code

    barrier = threading.Barrier(6)

    def together() -> int:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: together(), range(6)))
    assert 200 in statuses and 503 in statuses, statuses
    assert call() == 200
