"""The container image: built offline from a wheelhouse made here, run with podman as `podman run` and as deploy/k8s.

deploy/image/build.py builds it on its local Debian 12 base (mmdebstrap; no container registry needed), twice: plain
(models mounted at run time) and with the exported model baked in (MODEL_DIR). The image holds the plain install
(no Paddle, no pip) and runs as uid 10001. The baked image, run as a plain `podman run` with the default config,
answers REST and gRPC with the label the model gives in process, reports healthy through its HEALTHCHECK, runs the
server as PID 1 and exits 0 after draining on SIGTERM; with build_dag_each_worker the server, still PID 1, supervises
two workers, leaves no zombie and exits 0 too. The plain image runs both tiers the way deploy/k8s/base's Deployments
do: each container's command, args, env, user, read-only root, dropped capabilities and volumes (model volume,
ConfigMap file, /tmp) taken from the manifests; the pipeline reaches the model-server tier by its Service name and
answers through it, the preStop hook runs, and both tiers exit 0 on SIGTERM.

Containers run on podman's default bridge network, each with its own address (as a pod has), so they use the
image's and the manifests' ports unchanged and the tests reach them at the container's address; their limits are no
higher than this process's own: podman's default nofile/nproc (1048576) need CAP_SYS_RESOURCE, which root lacks on
this project's VMs. Skipped, with the reason, where podman or mmdebstrap is missing or podman cannot run a container.
Measured on the 2-core dev machine (shared, load 3-5): 20 s with the Debian base, the wheelhouse
(~/.cache/serving-kit-image) and podman's layers cached, 30-60 s when the kit changed; the first run 1 min 40 s to
2 min 40 s (mmdebstrap 45-85 s, the first podman build 25-45 s).
"""

import json
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from clients.http_client import image_request, post
from clients.pipeline_client import PipelineClient
from deploy.image import build
from tests.conftest import IMAGES

ROOT = Path(__file__).resolve().parents[1]
K8S_BASE = ROOT / "deploy" / "k8s" / "base"
DAISY = IMAGES / "daisy.jpg"
TAG = "localhost/pipeline-serving-kit:test"
BAKED_TAG = "localhost/pipeline-serving-kit:test-baked"
START_TIMEOUT_S = 120
DRAIN_LINE = "stopping: draining in-flight requests"
HTTP_PORT, RPC_PORT = 18080, 9993  # config.yml's, which the image serves with
# What the plain install must not carry (Paddle, the exporter, the installers) and must (the runtime, the kit).
ABSENT, PRESENT = ("paddle", "paddle2onnx", "pip", "setuptools"), ("onnxruntime", "cv2", "grpc", "serving", "kit")
MAX_IMAGE_MB = 600  # measured 492; Paddle alone would add some 500


def run_limits() -> list[str]:
    """--ulimit flags at this process's hard limits (nproc also at most kernel.pid_max: the VM refuses more)."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


@pytest.fixture(scope="module")
def podman() -> list[str]:
    """The podman command line, once the local base exists and a container runs on it; else the skip's reason."""
    missing = [tool for tool in ("podman", "mmdebstrap") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (.ci/run installs podman, runc and mmdebstrap with apt)")
    command = build.podman_command()
    build.CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = build.debian_base(command)
    print(f"local Debian base {base}: {time.monotonic() - started:.1f} s")
    probe = subprocess.run([*command, "run", "--rm", *run_limits(), base, "python3", "-c", "print('ok')"],
                           capture_output=True, text=True, timeout=120)
    if probe.stdout.strip() != "ok":
        pytest.skip(f"podman cannot run a container here: {probe.stderr.strip()[-500:]}")
    return command


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SqueezeNet1_1 with its ONNX twin (random weights, seed 0), exported by the dev venv, alone in its folder."""
    from export.exporter import ExportRequest, export

    out = tmp_path_factory.mktemp("image_models") / "SqueezeNet1_1"
    export(ExportRequest(model="SqueezeNet1_1", out=out, random_init=0, onnx=True))
    out.parent.chmod(0o755)  # mounted as the model volume: uid 10001 must enter it (pytest makes folders 0700)
    return out


def build_image(tag: str, *args: str) -> None:
    """deploy/image/build.py, as `make image` runs it; fails the test with its output."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "deploy" / "image" / "build.py"), "--tag", tag, *args],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    print(f"{tag}: {time.monotonic() - started:.1f} s", *done.stdout.splitlines()[-2:], sep="\n  ")


@pytest.fixture(scope="module")
def images(podman: list[str], onnx_model: Path) -> dict:
    """Both images built; the plain one's `podman image inspect`."""
    build_image(TAG)
    build_image(BAKED_TAG, "--model-dir", str(onnx_model))
    inspect = subprocess.run([*podman, "image", "inspect", TAG], capture_output=True, text=True, check=True)
    return json.loads(inspect.stdout)[0]


def expected_answer(model: Path) -> tuple[str, float]:
    """The model's top-1 label and probability for the daisy, in this process."""
    from serving.classify import local_predictor

    labels, probs = local_predictor(model)(DAISY.read_bytes())
    return str(labels[:1]), probs[0]


def answers(host: str, http_port: int = HTTP_PORT, rpc_port: int = RPC_PORT) -> dict[str, tuple[str, float]]:
    """The daisy's (label, prob) over REST and over gRPC (PipelineClient)."""
    body = image_request([DAISY])
    rest = post(f"http://{host}:{http_port}/imagenet/prediction", body)
    assert rest["err_no"] == 0, rest
    with PipelineClient() as client:
        client.connect([f"{host}:{rpc_port}"])
        grpc = client.predict(feed_dict=dict(zip(body["key"], body["value"], strict=True)), fetch=["label", "prob"])
    assert grpc.err_no == 0, grpc.err_msg
    grpc_values = dict(zip(grpc.key, grpc.value, strict=True))
    rest_values = dict(zip(rest["key"], rest["value"], strict=True))
    return {name: (values["label"], float(values["prob"].strip("[]")))
            for name, values in {"rest": rest_values, "grpc": grpc_values}.items()}


@contextmanager
def container(podman: list[str], *args: str) -> Iterator[str]:
    """`podman run -d`; yields the container's name and removes it on the way out."""
    name = f"kit-test-{uuid.uuid4().hex[:8]}"
    started = subprocess.run([*podman, "run", "--detach", "--name", name, *run_limits(), *args],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        subprocess.run([*podman, "rm", "--force", name], capture_output=True, timeout=120)


def logs(podman: list[str], name: str) -> str:
    """Everything the container wrote."""
    done = subprocess.run([*podman, "logs", name], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def address(podman: list[str], name: str) -> str:
    """The container's IP address on podman's bridge network."""
    return subprocess.run([*podman, "inspect", "--format", "{{.NetworkSettings.IPAddress}}", name],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def wait_ready(podman: list[str], name: str, url: str) -> float:
    """Poll `url` until 200; seconds it took. Fails with the logs when the container exits or takes too long."""
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        state = subprocess.run([*podman, "inspect", "--format", "{{.State.Running}}", name], capture_output=True,
                               text=True, timeout=60).stdout.strip()
        assert state == "true", f"{name} exited:\n{logs(podman, name)}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - started
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready in {START_TIMEOUT_S} s:\n{logs(podman, name)}")


def stop(podman: list[str], name: str) -> int:
    """SIGTERM (what `podman stop` and the kubelet send) and the exit code."""
    subprocess.run([*podman, "kill", "--signal", "TERM", name], check=True, capture_output=True, timeout=60)
    waited = subprocess.run([*podman, "wait", name], capture_output=True, text=True, timeout=60)
    return int(waited.stdout.strip())


def test_image_is_the_plain_install_as_uid_10001(podman: list[str], images: dict) -> None:
    size_mb = images["Size"] / 1e6
    print(f"image size {size_mb:.0f} MB (uncompressed)")
    assert size_mb < MAX_IMAGE_MB
    config = images["Config"]
    assert config["User"] == "10001:10001" and config["WorkingDir"] == "/srv/serving"
    assert config["Entrypoint"] == ["serving-kit", "serve"] and not config.get("Cmd")
    assert config["StopSignal"] == "SIGTERM" and set(config["ExposedPorts"]) == {"18080/tcp", "9993/tcp"}
    assert images["Healthcheck"]["Test"][:3] == ["CMD", "python", "-c"]
    assert "SERVING_HEALTH_URL" in images["Healthcheck"]["Test"][-1]
    assert "SERVING_HEALTH_URL=http://127.0.0.1:18080/health" in config["Env"]
    found = subprocess.run([*podman, "run", "--rm", *run_limits(), "--entrypoint", "python", TAG, "-c",
                            "import importlib.util as u, os, sys; print(sys.version_info[:2], os.getuid(), "
                            f"[name for name in {ABSENT + PRESENT} if u.find_spec(name)])"],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == f"(3, 11) 10001 {list(PRESENT)}"


def test_baked_image_serves_reports_healthy_and_drains_on_sigterm(podman: list[str], images: dict,
                                                                  onnx_model: Path) -> None:
    with container(podman, BAKED_TAG) as name:  # no mounts, no arguments
        host = address(podman, name)
        print(f"baked image ready in {wait_ready(podman, name, f'http://{host}:{HTTP_PORT}/ready'):.1f} s")
        label, prob = expected_answer(onnx_model)
        for protocol, (served_label, served_prob) in answers(host).items():
            assert served_label == label and abs(served_prob - prob) <= 1e-5, (protocol, served_label, label)
        health = subprocess.run([*podman, "healthcheck", "run", name], capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        status = subprocess.run([*podman, "inspect", "--format", "{{.State.Health.Status}}", name],
                                capture_output=True, text=True, timeout=60)
        assert status.stdout.strip() == "healthy", status.stdout + status.stderr
        check = images["Healthcheck"]["Test"][1:]  # the same command against a port nothing listens on fails
        dead = subprocess.run([*podman, "exec", "--env", f"SERVING_HEALTH_URL=http://127.0.0.1:{HTTP_PORT + 1}/health",
                               name, *check], capture_output=True, text=True, timeout=60)
        assert dead.returncode != 0 and "Connection refused" in dead.stderr, dead.stderr
        init = subprocess.run([*podman, "exec", name, "cat", "/proc/1/cmdline"], capture_output=True, text=True,
                              timeout=60)
        assert init.stdout.split("\0")[1:3] == ["/opt/serving-kit/bin/serving-kit", "serve"], init.stdout
        assert stop(podman, name) == 0, logs(podman, name)
        output = logs(podman, name)
    assert DRAIN_LINE in output and "Traceback" not in output, output


def test_worker_processes_under_pid_1_drain_and_exit_0(podman: list[str], images: dict, onnx_model: Path,
                                                       tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "config.yml").read_text())
    config.update(build_dag_each_worker=True, worker_num=2)  # the server as PID 1 supervises two workers
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    with container(podman, "--read-only", "--tmpfs", "/tmp", "--volume", f"{onnx_model.parent}:/srv/serving/models:ro",
                   "--volume", f"{tmp_path / 'config.yml'}:/srv/serving/config.yml:ro", TAG, "--config",
                   "/srv/serving/config.yml", "--pid_file", "/tmp/web_service.pid") as name:
        host = address(podman, name)
        print(f"2 workers ready in {wait_ready(podman, name, f'http://{host}:{HTTP_PORT}/ready'):.1f} s")
        label, _ = expected_answer(onnx_model)
        assert {answer[0] for answer in answers(host).values()} == {label}
        table = subprocess.run([*podman, "exec", name, "sh", "-c", "cat /proc/[0-9]*/stat"], capture_output=True,
                               text=True, timeout=60).stdout
        processes = {int(line.split()[0]): line.rsplit(")", 1)[1].split()[:2] for line in table.splitlines()}
        workers = re.search(r"ready in 2 worker processes \[(\d+), (\d+)\]", logs(podman, name))
        assert workers, logs(podman, name)
        assert [processes[int(pid)][1] for pid in workers.groups()] == ["1", "1"]  # children of the server, PID 1
        assert "Z" not in {state for state, _ in processes.values()}  # no zombie left unreaped
        assert stop(podman, name) == 0, logs(podman, name)
        output = logs(podman, name)
    assert DRAIN_LINE in output and output.count("Finished server process") == 2, output


def deployment(name: str) -> dict:
    """The one container of a deploy/k8s/base Deployment, with its pod's security context."""
    doc = yaml.safe_load((K8S_BASE / f"{name}-deployment.yaml").read_text())
    pod = doc["spec"]["template"]["spec"]
    (item,) = pod["containers"]
    return {**item, "pod": pod}


def ports(item: dict) -> dict[str, int]:
    """A manifest container's ports by name."""
    return {port["name"]: port["containerPort"] for port in item["ports"]}


def pod_flags(item: dict, volumes: dict[str, str]) -> list[str]:
    """podman run flags for what the manifest asks of the container: user, read-only root, capabilities, env,
    volumes (`volumes`: host path of each persistentVolumeClaim and configMap volume by name; emptyDir: a tmpfs)."""
    pod, context = item["pod"], item["securityContext"]
    flags = ["--user", f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}",
             "--cap-drop", ",".join(context["capabilities"]["drop"])]
    flags += ["--read-only"] if context["readOnlyRootFilesystem"] else []
    flags += ["--security-opt", "no-new-privileges"] if not context["allowPrivilegeEscalation"] else []
    flags += [arg for env in item.get("env", []) for arg in ("--env", f"{env['name']}={env['value']}")]
    kinds = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in item["volumeMounts"]:
        volume = kinds[mount["name"]]
        if "emptyDir" in volume:
            flags += ["--tmpfs", mount["mountPath"]]
        else:
            source = Path(volumes[mount["name"]]) / mount.get("subPath", "")
            flags += ["--volume", f"{source}:{mount['mountPath']}:ro" if mount.get("readOnly") or "configMap" in volume
                      else f"{source}:{mount['mountPath']}"]
    return flags


def test_k8s_tiers_run_from_the_image_as_the_manifests_say(podman: list[str], images: dict, onnx_model: Path) -> None:
    model_server, pipeline = deployment("model-server"), deployment("pipeline")
    # the ConfigMap is generated from base/config.yml, mounted as is; the model volume holds the export
    volumes = {"models": str(onnx_model.parent), "config": str(K8S_BASE)}
    (endpoint,) = yaml.safe_load((K8S_BASE / "config.yml").read_text())["op"]["imagenet"]["server_endpoints"]
    service = endpoint.split(":")[0]
    with container(podman, *pod_flags(model_server, volumes), "--entrypoint", json.dumps(model_server["command"]),
                   TAG, *model_server["args"]) as server_name:
        server = address(podman, server_name)
        url = f"http://{server}:{ports(model_server)['brpc']}/ready"
        print(f"model server ready in {wait_ready(podman, server_name, url):.1f} s")
        # the Service's name resolves to the model-server pod, as the headless Service's DNS does
        with container(podman, *pod_flags(pipeline, volumes), "--add-host", f"{service}:{server}", TAG,
                       *pipeline["args"]) as name:
            host, http_port, rpc_port = address(podman, name), ports(pipeline)["http"], ports(pipeline)["grpc"]
            print(f"pipeline ready in {wait_ready(podman, name, f'http://{host}:{http_port}/ready'):.1f} s")
            label, prob = expected_answer(onnx_model)
            for protocol, (served_label, served_prob) in answers(host, http_port, rpc_port).items():
                assert served_label == label and abs(served_prob - prob) <= 1e-5, (protocol, served_label, label)
            pre_stop = pipeline["lifecycle"]["preStop"]["exec"]["command"]
            hook = subprocess.run([*podman, "exec", name, *pre_stop[:-1], "0"], capture_output=True, timeout=60)
            assert hook.returncode == 0, hook.stderr
            assert stop(podman, name) == 0, logs(podman, name)
            pipeline_logs = logs(podman, name)
        assert stop(podman, server_name) == 0, logs(podman, server_name)
    records = [json.loads(line) for line in pipeline_logs.splitlines()]  # --log_format json: every line a record
    assert DRAIN_LINE in [record["message"] for record in records], pipeline_logs
