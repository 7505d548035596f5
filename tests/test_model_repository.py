"""Model repository (Triton's layout): version policies; live reload under closed-loop load on OIP REST, OIP gRPC and
brpc with no failed request, answers from the new version afterwards and the server's RSS back to one version's
after the unload; broken versions refused while the old keeps serving; the repository API off unless enabled, and
behind the token; a pipeline op serving, and reloading, a repository model."""

import ast
import base64
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests

from pipelines.web_service import ImageService
from serving.errors import ConfigError
from serving.model_card import load_card
from serving.model_repository import ModelRepository, VersionPolicy, version_folders
from serving.model_server import ModelServer, build_service, parse_args
from serving.proto import grpc_predict_v2_pb2 as pb
from serving.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.protocols.brpc_model_client import Client
from tests.conftest import free_port, photo_bytes

ROOT = Path(__file__).resolve().parents[1]
SQUEEZENET = "SqueezeNet1_1"
TOKEN_ENV = "SERVING_TEST_REPOSITORY_TOKEN"


# ---- version policies and the reload logic, with a loader that records (no request path) --------------------------

@pytest.mark.parametrize(("text", "available", "selected"), [
    ("latest:1", {1, 2, 3}, {3}),
    ("latest", {1, 2, 3}, {3}),
    ("latest:2", {1, 5, 3}, {3, 5}),
    ("latest:4", {1, 2}, {1, 2}),
    ("all", {1, 2, 7}, {1, 2, 7}),
    ("specific:1,3", {1, 2, 3}, {1, 3}),
    ("specific:4", {1, 2, 3}, set()),
])
def test_version_policy_selects(text: str, available: set[int], selected: set[int]) -> None:
    assert VersionPolicy.parse(text, "--version_policy").select(available) == selected


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:1,2", "all:3", "specific:", "specific:a", "latest:-1"])
def test_a_bad_version_policy_names_the_key_and_the_forms(text: str) -> None:
    with pytest.raises(ConfigError, match=rf"config --version_policy = '{text}': latest:N .*, all, or specific:V"):
        VersionPolicy.parse(text, "--version_policy")


def test_only_numbered_folders_are_versions(tmp_path: Path) -> None:
    for name in ("1", "12", "0", "01", "v3", ".4.partial-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a folder")
    assert sorted(version_folders(tmp_path)) == [1, 12]


class Recorded:
    """A loaded version that notes its release."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.released = False

    def release(self) -> None:
        self.released = True


@pytest.fixture
def recording(tmp_path: Path) -> tuple[ModelRepository, list[Path]]:
    """A repository of model `m` whose loader refuses folders holding a file named `broken`."""
    loads: list[Path] = []

    def load(name: str, version: int, folder: Path) -> Recorded:
        loads.append(folder)
        if (folder / "broken").exists():
            raise ValueError("broken on purpose")
        return Recorded(folder)

    add_folder(tmp_path / "m", 1)
    return ModelRepository(lambda: {"m": version_folders(tmp_path / "m")}, VersionPolicy(), load, "test"), loads


def add_folder(model_dir: Path, version: int, *files: str) -> Path:
    folder = model_dir / str(version)
    folder.mkdir(parents=True)
    for name in ("weights", *files):
        (folder / name).write_text(name)
    return folder


def test_a_held_version_is_released_after_its_last_request(recording: tuple, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    repository, loads = recording
    repository.load_all()
    first = repository.find("m")
    with repository.hold("m") as held:
        add_folder(tmp_path / "m", 2)
        repository.poll()  # first seen: a copy may still be running, so not loaded yet
        assert repository.versions("m") == ["1"] and len(loads) == 1
        repository.poll()  # unchanged since: loaded, switched
        assert repository.versions("m") == ["2"] and repository.find("m").folder.name == "2"
        assert held is first and not first.released
        assert [row["state"] for row in repository.index()] == ["UNLOADING", "READY"]
    assert first.released and [row["state"] for row in repository.index()] == ["UNAVAILABLE", "READY"]
    broken = add_folder(tmp_path / "m", 3, "broken")
    with caplog.at_level(logging.ERROR, "serving.repository"):
        repository.poll()
        repository.poll()
    assert repository.versions("m") == ["2"]
    assert "model 'm' version 3" in caplog.text and "refused: ValueError: broken on purpose; still serving version 2" \
        in caplog.text
    repository.poll()  # the same files: not tried again
    assert [folder.name for folder in loads] == ["1", "2", "3"]
    reason = f"model 'm' version 3 ({broken}) refused: ValueError: broken on purpose"
    assert repository.index()[-1] == {"name": "m", "version": "3", "state": "UNAVAILABLE", "reason": reason}
    (broken / "broken").unlink()  # fixed: tried again once the files settle
    repository.poll()
    repository.poll()
    assert repository.versions("m") == ["3"] and [folder.name for folder in loads] == ["1", "2", "3", "3"]
    shutil.rmtree(broken)  # gone from disk: unloaded, the policy falls back to version 2
    repository.poll()
    assert repository.versions("m") == ["2"]
    repository.unload("m")
    with pytest.raises(Exception, match="model 'm' is not loaded; this server serves no model"):
        repository.find("m")
    repository.poll()  # an explicit unload sticks until an explicit load
    assert repository.names == []
    repository.load("m")
    assert repository.versions("m") == ["2"]


# ---- the model server from a repository, in process (SqueezeNet1_1) -----------------------------------------------

@pytest.fixture(scope="module")
def squeezenet_seed1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second SqueezeNet1_1 export, with other random weights, so its answers differ from squeezenet_root's."""
    from export.exporter import ExportRequest, export

    out = tmp_path_factory.mktemp("seed1") / SQUEEZENET
    export(ExportRequest(model=SQUEEZENET, out=out, random_init=1))
    return out


def publish(export_root: Path, model_dir: Path, version: int, edit: Callable[[Path], None] = lambda folder: None,
            move: bool = False) -> Path:
    """Copy (or move) an export into the repository as `version`, atomically: staged under a hidden name first."""
    staging = model_dir / f".{version}.staging"
    model_dir.mkdir(parents=True, exist_ok=True)
    if move:
        export_root.rename(staging)
    else:
        shutil.copytree(export_root, staging)
    edit(staging)
    target = model_dir / str(version)
    staging.rename(target)
    return target


def truncate_params(folder: Path) -> None:
    """Bad files: the weights end early."""
    params = folder / "serving_server" / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[:100_000])


def four_channels(folder: Path) -> None:
    """A version that loads but fails its warm-up: its config feeds 4 channels to a 3-channel network."""
    config = folder / "serving_server" / "serving_server_conf.prototxt"
    config.write_text(config.read_text().replace("shape: 3\n", "shape: 4\n", 1))


@dataclass
class Running:
    server: ModelServer
    models: ModelRepository
    repo: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture
def serve(tmp_path: Path, squeezenet_root: Path) -> Iterator[Callable[..., Running]]:
    """Start an in-process model server on a fresh repository holding SqueezeNet1_1 version 1."""
    started: list[Running] = []

    def start(*flags: str) -> Running:
        repo = tmp_path / "repo"
        publish(squeezenet_root, repo / SQUEEZENET, 1)
        args = parse_args(["--model_repository", str(repo), "--port", "0", "--grpc_port", "0", "--thread", "1",
                           *flags])
        models = build_service(args)
        started.append(Running(ModelServer(models, args).start(), models, repo))
        return started[-1]

    yield start
    for running in started:
        running.server.stop()
        running.models.stop()


def preprocessed(export_root: Path) -> np.ndarray:
    """The daisy, preprocessed as the model card says: the FP32 batch every client sends."""
    return load_card(export_root / "serving_server").transforms(photo_bytes()[0])[None].astype(np.float32)


def oip_rest(url: str, model: str, batch: np.ndarray, version: str = "", session: requests.Session | None = None,
             headers: dict | None = None) -> tuple[str, np.ndarray]:
    """One OIP REST inference with binary tensors both ways: (model_version, prediction)."""
    raw = batch.tobytes()
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(batch.shape),
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "prediction", "parameters": {"binary_data": True}}]}).encode()
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    reply = (session or requests).post(url + path, data=header + raw, timeout=60, headers={
        "Inference-Header-Content-Length": str(len(header)), **(headers or {})})
    assert reply.status_code == 200, reply.text
    size = int(reply.headers["Inference-Header-Content-Length"])
    answer = json.loads(reply.content[:size])
    return answer["model_version"], np.frombuffer(reply.content[size:], "<f4").reshape(answer["outputs"][0]["shape"])


def oip_grpc(stub: pb_grpc.GRPCInferenceServiceStub, model: str, batch: np.ndarray) -> tuple[str, np.ndarray]:
    """One OIP gRPC ModelInfer with raw contents (no version: the highest serving)."""
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[batch.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=batch.shape)
    response = stub.ModelInfer(request, timeout=60)
    return response.model_version, np.frombuffer(response.raw_output_contents[0], "<f4").reshape(
        response.outputs[0].shape)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def served_versions(url: str, model: str) -> list[str]:
    reply = requests.get(f"{url}/v2/models/{model}", timeout=10)
    return reply.json()["versions"] if reply.status_code == 200 else []


def test_polling_serves_new_versions_refuses_broken_ones_and_unloads_removed_ones(
        serve: Callable[..., Running], squeezenet_root: Path, squeezenet_seed1: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    running = serve("--repository_poll_s", "0.1")
    batch = preprocessed(squeezenet_root)
    version, first = oip_rest(running.url, SQUEEZENET, batch)
    assert version == "1"
    publish(squeezenet_seed1, running.repo / SQUEEZENET, 2)
    wait_for(lambda: served_versions(running.url, SQUEEZENET) == ["2"], 60, "version 2")
    version, second = oip_rest(running.url, SQUEEZENET, batch)
    assert version == "2" and np.abs(second - first).max() > 1e-3  # other weights: the new version answers
    with Client() as client:  # GeneralModelService names no model: the only model's highest version answers
        client.load_client_config(squeezenet_root / "serving_client")
        client.connect([f"127.0.0.1:{running.server.port}"])
        np.testing.assert_allclose(client.predict({"x": batch[0]}, ["prediction"])["prediction"], second, atol=1e-6)
        with caplog.at_level(logging.ERROR, "serving.repository"):
            broken = publish(squeezenet_seed1, running.repo / SQUEEZENET, 3, truncate_params)
            wait_for(lambda: "version 3" in caplog.text, 60, "version 3 to be refused")
        assert re.search(r"model 'SqueezeNet1_1' version 3 \(.*\) refused: cannot create the Paddle Inference "
                         r"predictor .*; still serving version 2", caplog.text), caplog.text
        time.sleep(0.5)  # later polls leave the refused version alone and the old one serving
        assert oip_rest(running.url, SQUEEZENET, batch)[0] == "2"
        np.testing.assert_allclose(client.predict({"x": batch[0]}, ["prediction"])["prediction"], second, atol=1e-6)
        shutil.rmtree(broken / "serving_server")  # repaired: its files changed
        shutil.copytree(squeezenet_root / "serving_server", broken / "serving_server")
        wait_for(lambda: served_versions(running.url, SQUEEZENET) == ["3"], 60, "the repaired version 3")
        version, third = oip_rest(running.url, SQUEEZENET, batch)
        assert version == "3"
        np.testing.assert_allclose(third, first, atol=1e-6)  # version 3 has version 1's weights
        shutil.rmtree(broken)
        wait_for(lambda: served_versions(running.url, SQUEEZENET) == ["2"], 60, "version 2 again")
        np.testing.assert_allclose(client.predict({"x": batch[0]}, ["prediction"])["prediction"], second, atol=1e-6)


def test_the_repository_api_is_refused_unless_enabled(serve: Callable[..., Running]) -> None:
    running = serve()
    for path in ("/v2/repository/index", f"/v2/repository/models/{SQUEEZENET}/load",
                 f"/v2/repository/models/{SQUEEZENET}/unload"):
        reply = requests.post(running.url + path, timeout=10)
        assert reply.status_code == 403 and "--repository_api" in reply.json()["error"], (path, reply.text)
    assert "model_repository" not in requests.get(f"{running.url}/v2", timeout=10).json()["extensions"]
    with grpc.insecure_channel(f"127.0.0.1:{running.server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call in (stub.RepositoryModelLoad, stub.RepositoryModelUnload):
            with pytest.raises(grpc.RpcError) as refused:
                call(pb.RepositoryModelLoadRequest(model_name=SQUEEZENET), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED and "--repository_api" in \
                refused.value.details()
    assert served_versions(running.url, SQUEEZENET) == ["1"]


def test_the_repository_api_behind_the_token_loads_unloads_and_refuses_broken_versions(
        serve: Callable[..., Running], squeezenet_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    running = serve("--repository_api", "--auth_token_env", TOKEN_ENV)
    auth = {"Authorization": "Bearer s3cret"}
    index = f"{running.url}/v2/repository/index"
    load = f"{running.url}/v2/repository/models/{SQUEEZENET}/load"
    assert requests.post(index, timeout=10).status_code == 401
    assert requests.post(load, timeout=10).status_code == 401
    assert requests.post(index, headers=auth, timeout=10).json() == [
        {"name": SQUEEZENET, "version": "1", "state": "READY", "reason": ""}]
    assert "model_repository" in requests.get(f"{running.url}/v2", headers=auth, timeout=10).json()["extensions"]
    publish(squeezenet_root, running.repo / SQUEEZENET, 2, four_channels)
    refused = requests.post(load, headers=auth, timeout=60)
    assert refused.status_code == 400 and re.search(r"version 2 .* refused: inference failed .* channels .*; "
                                                    r"serving version 1$", refused.json()["error"]), refused.text
    batch = preprocessed(squeezenet_root)
    assert oip_rest(running.url, SQUEEZENET, batch, headers=auth)[0] == "1"
    rows = requests.post(index, headers=auth, timeout=10).json()
    assert [(row["version"], row["state"]) for row in rows] == [("1", "READY"), ("2", "UNAVAILABLE")]
    assert "refused" in rows[1]["reason"]
    assert requests.post(index, json={"ready": True}, headers=auth, timeout=10).json() == rows[:1]
    unload = requests.post(f"{running.url}/v2/repository/models/{SQUEEZENET}/unload", headers=auth, timeout=30)
    assert unload.status_code == 200
    gone = requests.get(f"{running.url}/v2/models/{SQUEEZENET}", headers=auth, timeout=10)
    assert gone.status_code == 404 and "is not loaded" in gone.json()["error"]
    unknown = requests.post(f"{running.url}/v2/repository/models/ResNet50/load", headers=auth, timeout=10)
    assert unknown.status_code == 404 and "no model folder 'ResNet50'" in unknown.json()["error"]
    with grpc.insecure_channel(f"127.0.0.1:{running.server.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as denied:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=SQUEEZENET), timeout=10)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        shutil.rmtree(running.repo / SQUEEZENET / "2")
        loaded = stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=SQUEEZENET), timeout=60,
                                          metadata=[("authorization", "Bearer s3cret")])
        assert loaded.isLoaded
    assert oip_rest(running.url, SQUEEZENET, batch, headers=auth)[0] == "1"


# ---- reload under load on every protocol, and memory, in a server process of its own (AlexNet) ---------------------

@pytest.fixture(scope="module")
def alexnets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two AlexNet exports (~234 MB of weights each, so one version dominates the server's memory noise)."""
    from export.exporter import ExportRequest, export

    folder = tmp_path_factory.mktemp("alexnet")
    for seed in (1, 2):
        export(ExportRequest(model="AlexNet", out=folder / f"seed{seed}", random_init=seed))
    return folder / "seed1", folder / "seed2"


def rss_mib(pid: int) -> float:
    """The process's resident set (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@dataclass
class Call:
    protocol: str
    started: float
    ended: float
    version: str = ""  # OIP answers say; brpc's GeneralModelService does not
    prediction: np.ndarray | None = None
    error: str = ""


def closed_loop(protocol: str, call: Callable[[], tuple[str, np.ndarray]], stop: threading.Event,
                calls: list[Call]) -> None:
    """One client: the next request as soon as the last is answered, every outcome recorded."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            version, prediction = call()
            calls.append(Call(protocol, started, time.monotonic(), version, prediction))
        except Exception as exc:  # a failed request: the test counts them
            calls.append(Call(protocol, started, time.monotonic(), error=f"{type(exc).__name__}: {exc}"))


def test_reload_under_load_fails_no_request_and_frees_the_old_version(alexnets: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish(alexnets[0], repo / "AlexNet", 1, move=True)
    port, grpc_port = free_port(), free_port()
    log_file = tmp_path / "server.log"
    with log_file.open("wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "serving.model_server", "--model_repository", str(repo),
                                   "--port", str(port), "--grpc_port", str(grpc_port), "--thread", "2",
                                   "--repository_api"], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is not None or _ready(url), 120, "the model server")
        assert server.poll() is None, log_file.read_text()
        run_reload_under_load(server.pid, url, grpc_port, repo, alexnets)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print("\n".join(line for line in log_file.read_text().splitlines()
                    if "serving.dataplane" not in line and "arn" not in line))  # the repository's story


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def run_reload_under_load(pid: int, url: str, grpc_port: int, repo: Path, alexnets: tuple[Path, Path]) -> None:
    batch = preprocessed(repo / "AlexNet" / "1")
    reference = {"1": oip_rest(url, "AlexNet", batch, version="1")[1]}
    weights_mib = (repo / "AlexNet" / "1" / "serving_server" / "inference.pdiparams").stat().st_size / 2**20
    samples: list[tuple[float, float]] = []
    stop, sampled = threading.Event(), threading.Event()

    def sample() -> None:
        while not sampled.is_set():
            samples.append((time.monotonic(), rss_mib(pid)))
            time.sleep(0.05)

    calls: list[Call] = []
    session = requests.Session()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    client = Client(timeout_ms=60_000)
    client.load_client_config(repo / "AlexNet" / "1" / "serving_client")
    client.connect([url.removeprefix("http://")])
    clients = {"oip_http": lambda: oip_rest(url, "AlexNet", batch, session=session),
               "oip_grpc": lambda: oip_grpc(stub, "AlexNet", batch),
               "brpc": lambda: ("", client.predict({"x": batch[0]}, ["prediction"])["prediction"])}
    threads = [threading.Thread(target=closed_loop, args=(protocol, call, stop, calls))
               for protocol, call in clients.items()] + [threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(4)  # steady state on version 1
        one = statistics.median(rss for at, rss in samples if at > time.monotonic() - 2)
        publish(alexnets[1], repo / "AlexNet", 2, move=True)
        load_started = time.monotonic()
        loaded = requests.post(f"{url}/v2/repository/models/AlexNet/load", timeout=300)
        load_ended = time.monotonic()
        assert loaded.status_code == 200, loaded.text
        wait_for(lambda: requests.post(f"{url}/v2/repository/index", timeout=10).json()[0]["state"] == "UNAVAILABLE",
                 60, "version 1 to be unloaded")
        time.sleep(4)  # steady state on version 2
        after = statistics.median(rss for at, rss in samples if at > time.monotonic() - 2)
    finally:
        stop.set()
        sampled.set()
        for thread in threads:
            thread.join()
        client.close()
        channel.close()
    peak = max(rss for _, rss in samples)
    print(f"\nserver RSS: one AlexNet version {one:.0f} MiB, peak while loading the second {peak:.0f} MiB, after the "
          f"unload {after:.0f} MiB ({after / one - 1:+.1%}); weights file {weights_mib:.0f} MiB; "
          f"{len(calls)} requests, load took {load_ended - load_started:.1f} s")
    reference["2"] = oip_rest(url, "AlexNet", batch, version="2")[1]
    assert np.abs(reference["2"] - reference["1"]).max() > 1e-4  # other weights: the answers tell versions apart
    assert [call for call in calls if call.error] == []
    for protocol in clients:
        during = [call for call in calls if call.protocol == protocol and call.ended > load_started
                  and call.started < load_ended]
        assert during, f"{protocol}: no request while the new version loaded"
        assert any(call.started > load_ended for call in calls if call.protocol == protocol)
    for call in calls:
        matches = [version for version, expected in reference.items()
                   if np.allclose(call.prediction, expected, atol=1e-6)]
        assert len(matches) == 1, call  # one version's answer, whole
        answered = matches[0]
        assert call.version in ("", answered), call
        if call.started > load_ended:
            assert answered == "2", call
        if call.ended < load_started:
            assert answered == "1", call
    assert served_versions(url, "AlexNet") == ["2"]
    assert peak > one + weights_mib / 2  # both versions were resident at once: the measurement sees a version
    assert after < one * 1.10, f"RSS after the unload {after:.0f} MiB vs one version {one:.0f} MiB"


# ---- a pipeline op on a repository model --------------------------------------------------------------------------

def pipeline_answer(service: ImageService) -> tuple[int, list[float]]:
    """The op's serving version (GET /metadata) and its prob for the daisy."""
    base = f"http://127.0.0.1:{service.http_port}"
    version = requests.get(f"{base}/metadata", timeout=10).json()["ops"]["imagenet"]["version"]
    body = {"key": ["image"], "value": [base64.b64encode(photo_bytes()[0]).decode()]}
    answer = requests.post(f"{base}/imagenet/prediction", json=body, timeout=30).json()
    assert answer["err_no"] == 0, answer
    return version, ast.literal_eval(dict(zip(answer["key"], answer["value"], strict=True))["prob"])


def test_a_pipeline_op_serves_the_latest_version_and_reloads_it(tmp_path: Path, squeezenet_root: Path,
                                                                 squeezenet_seed1: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    model_dir = tmp_path / "repo" / SQUEEZENET
    publish(squeezenet_root, model_dir, 1)
    publish(squeezenet_seed1, model_dir, 2)
    service = ImageService(name="imagenet")
    service.prepare_pipeline_config(yml_dict={"http_port": 0, "op": {"imagenet": {"local_service_conf": {
        "model_config": str(model_dir), "repository_poll_s": 0.1}}}})
    service.start()
    try:
        version, second = pipeline_answer(service)
        assert version == 2
        with caplog.at_level(logging.ERROR, "serving.repository"):
            publish(squeezenet_root, model_dir, 4, lambda folder: (folder / "labels.txt").write_text("other\n"))
            wait_for(lambda: "version 4" in caplog.text, 60, "version 4 to be refused")
        assert "labels differ from those the op started with; restart the service" in caplog.text
        calls: list[Call] = []
        stop = threading.Event()
        client = threading.Thread(target=closed_loop, args=("http", lambda: ("", np.asarray(pipeline_answer(
            service)[1])), stop, calls))
        client.start()
        try:
            publish(squeezenet_root, model_dir, 3)  # version 1's weights
            wait_for(lambda: pipeline_answer(service)[0] == 3, 60, "version 3")
            time.sleep(0.5)  # and on the new version a while
        finally:
            stop.set()
            client.join()
        third = pipeline_answer(service)[1]
        assert np.abs(np.subtract(third, second)).max() > 1e-3
        assert calls and [call.error for call in calls if call.error] == []  # requests ran through the switch
        assert {tuple(call.prediction) for call in calls} == {tuple(second), tuple(third)}
    finally:
        service.stop()


@pytest.mark.parametrize(("conf", "message"), [
    ({"version_policy": "latest:2"}, r"version_policy = 'latest:2': an op serves one version"),
    ({"version_policy": "specific:9"}, r"version_policy = 'specific:9': it selects none of the versions in .* \(1\)"),
    ({"repository_poll_s": -1}, r"repository_poll_s = -1.0: seconds between looks"),
])
def test_pipeline_repository_keys_are_checked_at_load(tmp_path: Path, squeezenet_root: Path, conf: dict,
                                                      message: str) -> None:
    model_dir = tmp_path / SQUEEZENET
    (model_dir / "1").mkdir(parents=True)
    service = ImageService(name="imagenet")
    with pytest.raises(ConfigError, match=rf"config op\.imagenet\.local_service_conf\.{message}"):
        service.prepare_pipeline_config(yml_dict={"http_port": 0, "op": {"imagenet": {"local_service_conf": {
            "model_config": str(model_dir), **conf}}}})
    with pytest.raises(ConfigError, match=r"version_policy = 'specific:2': applies to a model repository's model "
                                          r"folder; .* is an export's serving_server"):
        service.prepare_pipeline_config(yml_dict={"http_port": 0, "op": {"imagenet": {"local_service_conf": {
            "model_config": str(squeezenet_root / "serving_server"), "version_policy": "specific:2"}}}})
