"""Ray Serve across two nodes: python -m deploy.rayserve on a head and a worker node (loopback, one CPU each).

Real proxies, real clients, real replicas: answers equal in-process prediction over HTTP and gRPC; closed-loop
load scales 1 -> 2 replicas, one on each node, without an error; a killed replica costs at most the requests it
held and is replaced while the other keeps answering; idle, it scales back to 1; SIGTERM shuts Serve down.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install '.[ray]'")

from ray.cluster_utils import Cluster

from bench.load import GrpcCaller, HttpCaller
from clients import PipelineClient
from deploy.rayserve.app import SERVICER, deployment_options, read, serve_options
from export.onnx_export import convert
from serving.errors import ConfigError
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from tests.conftest import free_port, photo_bytes
from tests.test_web_service import b64, expected, parsed

ROOT = Path(__file__).resolve().parent.parent
NAME = "imagenet"
MAX_ONGOING = 4  # per replica: a killed replica can fail at most this many requests
SCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "metrics_interval_s": 0.5,
           "look_back_period_s": 2, "upscale_delay_s": 1, "downscale_delay_s": 3}


@dataclass
class App:
    """The running CLI and where to reach it."""

    process: subprocess.Popen
    log: Path
    http_port: int
    grpc_port: int
    dashboard: str
    nodes: dict[str, str]  # node id -> "head" / "worker"
    model_dir: Path


@dataclass
class Load:
    """Closed-loop clients: every call's start, end and error (None on success); no retries."""

    calls: list[tuple[float, float, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, caller: Callable[[], object]) -> None:
        """One worker: call, record, repeat until stopped; the caller reconnects after a failure."""
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                caller()
                error = None
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                time.sleep(0.05)
            self.calls.append((start, time.monotonic(), error))

    def failures(self, since: float = 0.0) -> list[str]:
        """Errors of the calls that ended after `since`."""
        return [error for _, end, error in list(self.calls) if error is not None and end >= since]

    def failed_after_start(self, since: float) -> list[str]:
        """Errors of the calls that started after `since`."""
        return [error for start, _, error in list(self.calls) if error is not None and start >= since]

    def successes(self, since: float = 0.0) -> int:
        """Answered calls that started after `since`."""
        return sum(1 for start, _, error in list(self.calls) if error is None and start >= since)


def serve_details(app: App) -> dict:
    """Serve's state API (the dashboard's /api/serve/applications/): applications, deployments, replicas."""
    with urllib.request.urlopen(f"http://{app.dashboard}/api/serve/applications/", timeout=10) as answer:
        return json.loads(answer.read())


def running_replicas(app: App) -> list[dict]:
    """The deployment's RUNNING replicas with their pid and node."""
    applications = serve_details(app).get("applications") or {}
    if NAME not in applications:
        return []
    replicas = applications[NAME]["deployments"][NAME]["replicas"]
    return [replica for replica in replicas if replica["state"] == "RUNNING"]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, app: App) -> None:
    """Poll until `condition` holds; on timeout fail with the replicas Serve reports."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout_s:.0f} s; replicas: {running_replicas(app)}")


def cli_output(app: App) -> str:
    """The CLI's log so far (Ray forwards the replicas' and controller's lines into it)."""
    return app.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def onnx_model(squeezenet_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared SqueezeNet1_1 export plus its ONNX twin: replicas start in ~1 s on ONNX Runtime."""
    root = tmp_path_factory.mktemp("ray_model") / "SqueezeNet1_1"
    shutil.copytree(squeezenet_root, root)
    convert(root / "serving_server")
    return root / "serving_server"


@pytest.fixture(scope="module")
def app(onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """A head and a worker node on 127.0.0.1 with one CPU each, and the CLI serving config.yml on them."""
    folder = tmp_path_factory.mktemp("ray_app")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's switch for loopback-only nodes and drivers
           "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the nodes, their workers and the CLI inherit it
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": True, "dashboard_port": free_port()})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    http_port, grpc_port = free_port(), free_port()  # after the nodes took theirs (e.g. the agents' 52365)
    config = {"http_port": 18080, "op": {NAME: {"concurrency": 2, "local_service_conf": {
        "model_config": str(onnx_model), "engine": "onnxruntime", "thread_num": 1}}},
              "ray_serve": {"max_ongoing_requests": MAX_ONGOING, "autoscaling_config": SCALING,
                            "http_host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port}}
    (folder / "config.yml").write_text(yaml.safe_dump(config))
    log = folder / "cli.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "deploy.rayserve", str(folder / "config.yml"),
                                    "--address", cluster.address], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    running = App(process, log, http_port, grpc_port, cluster.webui_url,
                  {cluster.head_node.node_id: "head", worker.node_id: "worker"}, onnx_model)
    try:
        deadline = time.monotonic() + 150
        while "serving 'imagenet' on Ray Serve" not in cli_output(running):
            assert process.poll() is None and time.monotonic() < deadline, cli_output(running)[-3000:]
            time.sleep(0.5)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def post(port: int, body: dict) -> tuple[int, dict]:
    """POST /imagenet/prediction through Ray's HTTP proxy."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{NAME}/prediction", data=json.dumps(body).encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.status, json.loads(answer.read())


def test_http_and_grpc_proxies_answer_as_in_process_prediction(app: App) -> None:
    images = photo_bytes()
    labels, probs = expected(app.model_dir, images)
    keys = ["image_0", "image_1"]
    status, answer = post(app.http_port, {"key": keys, "value": [b64(data) for data in images], "logid": 7})
    assert status == 200 and answer["err_no"] == 0 and set(answer) >= {"err_msg", "key", "value"}, answer
    result = parsed(answer["key"], answer["value"])
    assert result["label"] == labels
    np.testing.assert_allclose(result["prob"], probs, atol=1e-5)

    client = PipelineClient()  # unchanged: no Ray metadata, Ray's gRPC proxy routes by its one application
    client.connect([f"127.0.0.1:{app.grpc_port}"])
    reply = client.predict(dict(zip(keys, [b64(data) for data in images], strict=True)), fetch=["label", "prob"],
                           log_id=9)
    client.close()
    assert reply.err_no == 0 and list(reply.key) == ["label", "prob"], reply
    result = parsed(list(reply.key), list(reply.value))
    assert result["label"] == labels
    np.testing.assert_allclose(result["prob"], probs, atol=1e-5)

    with grpc.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = pb_grpc.PipelineServiceStub(channel)
        raw = stub.inference(pb.Request(key=["image"], value=[b64(images[1])], name=NAME, method="prediction"))
        bad = stub.inference(pb.Request(key=["image"], value=["%%%"]))
    assert raw.err_no == 0 and parsed(list(raw.key), list(raw.value))["label"] == labels[1:]
    assert bad.err_no == 5000 and "not valid base64" in bad.err_msg

    status, wrong = post(app.http_port, {"key": ["image"], "value": ["%%%"]})
    assert status == 200 and wrong["err_no"] == 5000 and "not valid base64" in wrong["err_msg"]
    with urllib.request.urlopen(f"http://127.0.0.1:{app.http_port}/ready", timeout=10) as ready:
        assert ready.status == 200


def test_load_scales_to_both_nodes_survives_a_killed_replica_and_scales_back(app: App) -> None:
    body = json.dumps({"key": ["image"], "value": [b64(photo_bytes()[0])]}).encode()
    endpoints = (f"127.0.0.1:{app.http_port}", f"127.0.0.1:{app.grpc_port}")
    callers = [HttpCaller(endpoints[0], f"/{NAME}/prediction", body) for _ in range(3)]
    callers.append(GrpcCaller(endpoints[1], {"image": b64(photo_bytes()[0])}))
    load = Load()
    threads = [threading.Thread(target=load.run, args=(caller,), daemon=True) for caller in callers]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(running_replicas(app)) == 2, 90, "no second replica", app)
        scaled_up = time.monotonic()
        replicas = running_replicas(app)
        assert {app.nodes.get(replica["node_id"]) for replica in replicas} == {"head", "worker"}, replicas
        assert load.failures() == [] and load.successes() > 0

        victim = next(replica for replica in replicas if app.nodes[replica["node_id"]] == "worker")
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> bool:
            pids = [replica["pid"] for replica in running_replicas(app)]
            return len(pids) == 2 and victim["pid"] not in pids

        wait_for(replaced, 90, "the killed replica was not replaced", app)
        replaced_at = time.monotonic()
        while load.successes(replaced_at) < 20 and time.monotonic() < replaced_at + 30:
            time.sleep(0.2)
        lost = load.failures(killed_at)
        answered_meanwhile = load.successes(killed_at) - load.successes(replaced_at)
        assert len(lost) <= MAX_ONGOING, lost  # only requests the dead replica held ...
        assert load.failed_after_start(killed_at) == []  # ... when it died: Ray routes later ones to the live one
        assert answered_meanwhile > 0, "nothing was answered while the killed replica was being replaced"
        assert load.successes(replaced_at) >= 20
        assert load.failures(replaced_at + 1) == []
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(70)
        for caller in callers:
            caller.close()
    idle = time.monotonic()
    wait_for(lambda: len(running_replicas(app)) == 1, 60, "no scale-down to 1 replica when idle", app)
    print(f"\n1 -> 2 replicas in {scaled_up - started:.1f} s of load, killed replica replaced in "
          f"{replaced_at - killed_at:.1f} s, 2 -> 1 in {time.monotonic() - idle:.1f} s idle; {len(load.calls)} calls, "
          f"{len(lost)} failed after the kill: {lost}")
    status, answer = post(app.http_port, {"key": ["image"], "value": [b64(photo_bytes()[1])]})
    assert status == 200 and answer["err_no"] == 0


def test_sigterm_shuts_serve_down_and_exits_0(app: App) -> None:
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(60) == 0, cli_output(app)[-3000:]
    assert "stopping: Serve drains its replicas" in cli_output(app)
    assert serve_details(app).get("applications") in (None, {})
    with pytest.raises(OSError):
        post(app.http_port, {"key": ["image"], "value": [b64(photo_bytes()[0])]})


def test_config_errors_stop_the_cli_before_ray_starts(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "serving_server_conf.prototxt").write_text("")
    config = {"http_port": 18080, "op": {NAME: {"local_service_conf": {"model_config": str(model)}}},
              "ray_serve": {"num_replicas": 2, "autoscaling_config": {"max_replicas": 2}}}
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "deploy.rayserve", str(tmp_path / "config.yml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "error: config ray_serve.num_replicas = 2: set num_replicas for a fixed count or autoscaling_config, not both"]
    tls = Path(__file__).parent / "data" / "tls"
    config["ray_serve"] = {"num_replicas": 2}
    config["security"] = {"tls_cert_file": str(tls / "localhost.crt"), "tls_key_file": str(tls / "localhost.key")}
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"security\.tls_cert_file = .*Ray Serve's gRPC proxy speaks no TLS"):
        read(tmp_path / "config.yml")
    config.pop("security")
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    options = deployment_options(read(tmp_path / "config.yml", {"grpc_port": 9100})[0])
    assert options["num_replicas"] == 2 and options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert serve_options(read(tmp_path / "config.yml", {"grpc_port": 9100})[0])["grpc_options"] == {
        "port": 9100, "grpc_servicer_functions": [SERVICER]}
