"""build_dag_each_worker: worker processes sharing the ports, restarted when killed, stopped cleanly."""

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from clients import PipelineClient
from pipelines.web_service import ImageService
from serving.errors import ConfigError
from serving.pipeline import Op, WebService
from tests.conftest import photo_bytes
from tests.test_web_service import b64, expected, parsed, post, service_config


class SleepOp(Op):
    """No model: sleeps for the request's `seconds`, so a request can be caught in flight; answers with its pid.

    In-process services also record each request's `tag` as it starts, so a test can tell what really ran.
    """

    ran: ClassVar[list[str]] = []

    def preprocess(self, input_dicts: dict, data_id: int = 0, log_id: int = 0) -> tuple:
        ((_, request),) = input_dicts.items()
        SleepOp.ran.append(request.get("tag", ""))
        time.sleep(float(request["seconds"]))
        return {"pid": str(os.getpid())}, False, None, ""


class SleepService(WebService):
    def get_pipeline_response(self, read_op: Op) -> Op:
        return SleepOp(name="sleep", input_ops=[read_op])


def sleep_request(port: int, seconds: float, timeout: float = 30) -> dict:
    body = json.dumps({"key": ["seconds"], "value": [str(seconds)]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sleep/prediction", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def wait_for(condition, timeout_s: float) -> float:
    """Seconds until `condition()` held; fails the test after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"condition not met within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def sleep_service() -> Iterator[SleepService]:
    svc = SleepService(name="sleep")
    svc.prepare_pipeline_config(yml_dict={"http_port": 0, "rpc_port": 0, "worker_num": 2,
                                          "build_dag_each_worker": True, "op": {"sleep": {"concurrency": 4}}})
    svc.start()
    yield svc
    svc.stop()


def test_image_service_in_two_processes_matches_in_process_prediction(squeezenet_root: Path) -> None:
    model_dir = squeezenet_root / "serving_server"
    svc = ImageService(name="imagenet")
    svc.prepare_pipeline_config(yml_dict={**service_config(model_dir), "worker_num": 2, "build_dag_each_worker": True})
    svc.start()
    try:
        assert len(svc.worker_pids) == 2 and os.getpid() not in svc.worker_pids
        labels, probs = expected(model_dir, photo_bytes()[:1])
        for _ in range(6):  # each urllib request is a new connection: the kernel spreads them over both workers
            answer = post(svc.http_port, {"key": ["image"], "value": [b64(photo_bytes()[0])]})
            assert answer["err_no"] == 0, answer
            result = parsed(answer["key"], answer["value"])
            assert result["label"] == labels and abs(result["prob"][0] - probs[0]) < 1e-5
        client = PipelineClient()
        client.connect([f"127.0.0.1:{svc.rpc_port}"])
        reply = client.predict(feed_dict={"image": b64(photo_bytes()[0])}, fetch=["label"])
        assert reply.err_no == 0 and reply.value[0] == str(labels)
    finally:
        svc.stop()
    assert svc.worker_pids == []


def test_killed_worker_is_replaced_and_the_others_keep_answering(sleep_service: SleepService) -> None:
    port = sleep_service.http_port
    victim, survivor = sleep_service.worker_pids
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in sleep_service.worker_pids, 5)
    answers = [sleep_request(port, 0) for _ in range(5)]  # new connections go to the live worker at once
    assert {answer["err_no"] for answer in answers} == {0}
    assert {parsed(a["key"], a["value"])["pid"] for a in answers} == {survivor}
    recovered_s = wait_for(lambda: len(sleep_service.worker_pids) == 2, 30)
    replacement = (set(sleep_service.worker_pids) - {survivor}).pop()
    wait_for(lambda: replacement in {parsed(a["key"], a["value"])["pid"]
                                          for a in [sleep_request(port, 0) for _ in range(4)]}, 30)
    assert recovered_s < 30


def test_in_flight_requests_fail_at_once_when_their_worker_dies(sleep_service: SleepService) -> None:
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["answer"] = sleep_request(sleep_service.http_port, 20)
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            outcome["error"], outcome["at"] = exc, time.monotonic()

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    for pid in sleep_service.worker_pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=10)
    assert not thread.is_alive() and "error" in outcome, outcome
    assert outcome["at"] - killed_at < 2.0
    wait_for(lambda: len(sleep_service.worker_pids) == 2, 30)
    wait_for(lambda: _answers(sleep_service.http_port), 30)


def _answers(port: int) -> bool:
    try:
        return sleep_request(port, 0, timeout=5)["err_no"] == 0
    except OSError:
        return False


def test_stop_ends_every_worker_and_frees_the_ports(sleep_service: SleepService) -> None:
    pids, port = sleep_service.worker_pids, sleep_service.http_port
    sleep_service.stop()
    for pid in pids:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), 5)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


class BrokenService(WebService):
    def get_pipeline_response(self, read_op: Op) -> Op:
        raise TypeError("this service builds no ops")


def test_a_worker_that_cannot_start_fails_the_start_with_its_reason(tmp_path: Path) -> None:
    svc = BrokenService(name="sleep")
    svc.prepare_pipeline_config(yml_dict={"http_port": 0, "worker_num": 2, "build_dag_each_worker": True,
                                          "op": {"sleep": {"concurrency": 1}}})
    with pytest.raises(Exception, match="worker 0 failed to start: TypeError: this service builds no ops"):
        svc.start()
    assert svc.worker_pids == []


def test_single_process_grpc_port_in_use_is_an_error() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        svc = SleepService(name="sleep")
        svc.prepare_pipeline_config(yml_dict={"rpc_port": busy.getsockname()[1], "op": {}})
        with pytest.raises((OSError, RuntimeError, ConfigError)):
            svc.start()
