"""deploy/k8s: the base and every overlay render with a real kustomize, pass kubernetes-validate --strict for the
oldest and newest Kubernetes it ships, and agree with config.yml and the servers' own flags and paths."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml
from kubernetes_validate.utils import all_versions

from pipelines import web_service
from serving import model_server
from serving.config import LocalServiceConf, ServiceConfig, load_config
from serving.protocols.brpc_server import PROBES
from serving.protocols.http_server import OPERATIONS

ROOT = Path(__file__).parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = [K8S / "base", *OVERLAYS]
IMAGE_PLACEHOLDERS = {"pipeline-serving-kit", "pipeline-serving-kit-gpu"}
# config.yml keys each overlay changes from the base's (the rest must stay equal: overlays carry a whole copy)
CONFIG_CHANGES = {
    "gpu": {"op.imagenet.concurrency", "op.imagenet.batch_size", "op.imagenet.auto_batching_timeout",
            "limits.max_images_per_request"},
}
GPU = "nvidia.com/gpu"


def find_renderer() -> list[str] | None:
    """kubectl's built-in kustomize (on the project's machines), else a standalone kustomize."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


RENDERER = find_renderer()
if RENDERER is None:
    pytest.skip("no Kubernetes manifest renderer: install kubectl (it carries kustomize) or kustomize",
                allow_module_level=True)


def render(folder: Path) -> str:
    """The kustomization's manifests as the renderer prints them; its error text on failure."""
    result = subprocess.run([*RENDERER, str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(RENDERER)} {folder} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=[path.name for path in KUSTOMIZATIONS])
def rendered(request: pytest.FixtureRequest) -> str:
    return render(request.param)


@pytest.fixture(scope="module")
def docs(rendered: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def validate(text: str, tmp_path: Path) -> tuple[int, str]:
    """kubernetes-validate --strict against the oldest and the newest Kubernetes version it has schemas for."""
    versions = all_versions()
    path = tmp_path / "rendered.yaml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", versions[0],
                             "-k", versions[-1], str(path)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def container(deployment: dict, name: str) -> dict:
    return next(item for item in deployment["spec"]["template"]["spec"]["containers"] if item["name"] == name)


def ports(item: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in item["ports"]}


def volume_of(deployment: dict, mount: dict) -> dict:
    return next(volume for volume in deployment["spec"]["template"]["spec"]["volumes"]
                if volume["name"] == mount["name"])


def mount_at(item: dict, path: str) -> dict:
    """The volume mount a file path lies in (the deepest one)."""
    found = [mount for mount in item["volumeMounts"] if PurePosixPath(path).is_relative_to(mount["mountPath"])]
    assert found, f"{path} is on no volume of container {item['name']}"
    return max(found, key=lambda mount: len(mount["mountPath"]))


def selects(selector: dict, deployment: dict) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def prestop_s(item: dict) -> float:
    """The preStop sleep: the hook's last argument is its delay in seconds."""
    return float(item["lifecycle"]["preStop"]["exec"]["command"][-1])


def pipeline_config(docs: list[dict], tmp_path: Path) -> tuple[ServiceConfig, PurePosixPath]:
    """config.yml from the ConfigMap the pipeline mounts, loaded by the project's loader on a copy of the pod's files.

    Returns the config and the pod path of the remote op's client config (which must lie on the model volume).
    """
    deployment = find(docs, "Deployment", "pipeline")
    item = container(deployment, "pipeline")
    args = web_service.parse_args(item["args"])
    mount = mount_at(item, args.config)
    assert mount["mountPath"] == args.config and "subPath" in mount, "--config is the ConfigMap's file"
    config_map = find(docs, "ConfigMap", volume_of(deployment, mount)["configMap"]["name"])
    text = config_map["data"][mount["subPath"]]
    pod_root = tmp_path / "pod"
    local_config = pod_root / args.config.lstrip("/")
    local_config.parent.mkdir(parents=True)
    local_config.write_text(text)
    op = yaml.safe_load(text)["op"]["imagenet"]
    client_config = PurePosixPath(args.config).parent / op["client_config"]
    model_mount = mount_at(item, str(client_config))
    assert "persistentVolumeClaim" in volume_of(deployment, model_mount), "the client config is on the model volume"
    local_client = pod_root / str(client_config).lstrip("/")
    local_client.parent.mkdir(parents=True)
    local_client.write_text("")
    config = load_config(local_config, {"http_port": args.http_port, "rpc_port": args.rpc_port})
    assert config.op["imagenet"].client_config == str(local_client.resolve())
    return config, client_config


def test_every_document_passes_strict_validation(rendered: str, docs: list[dict], tmp_path: Path) -> None:
    code, output = validate(rendered, tmp_path)
    assert code == 0, output
    # a kind or apiVersion without a schema is only a WARN with exit code 0: every document must have passed
    assert "WARN" not in output and "ERROR" not in output, output
    assert output.count(" passed for resource ") == 2 * len(docs), output


def test_strict_validation_rejects_a_misspelt_field(docs: list[dict], tmp_path: Path) -> None:
    deployment = copy.deepcopy(find(docs, "Deployment", "pipeline"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    code, output = validate(yaml.safe_dump(deployment), tmp_path)
    assert code != 0 and "readinesProbe" in output, output


def test_pipeline_probes_ports_and_scraping_follow_config_yml(docs: list[dict], tmp_path: Path) -> None:
    config, _ = pipeline_config(docs, tmp_path)
    deployment = find(docs, "Deployment", "pipeline")
    item = container(deployment, "pipeline")
    assert ports(item) == {"http": config.http_port, "grpc": config.rpc_port}
    # /ready waits for the model servers too: a startup probe on it would restart pipelines that wait for them
    for probe, path in (("startupProbe", "/health"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        assert item[probe]["httpGet"] == {"path": path, "port": "http"}, probe
        assert path in OPERATIONS
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.http_port)
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in OPERATIONS
    grace_ms = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] * 1000
    assert grace_ms > prestop_s(item) * 1000 + config.limits.drain_timeout_ms


def test_pipeline_service_autoscaler_and_disruption_budget(docs: list[dict]) -> None:
    deployment = find(docs, "Deployment", "pipeline")
    item = container(deployment, "pipeline")
    service = find(docs, "Service", "pipeline")
    assert selects(service["spec"]["selector"], deployment)
    assert not selects(service["spec"]["selector"], find(docs, "Deployment", "model-server"))
    assert {port["name"]: ports(item)[port["targetPort"]] for port in service["spec"]["ports"]} == ports(item)
    hpa = find(docs, "HorizontalPodAutoscaler", "pipeline")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pipeline"}
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and "cpu" in item["resources"]["requests"]  # utilization needs both
    pdb = find(docs, "PodDisruptionBudget", "pipeline")
    assert selects(pdb["spec"]["selector"]["matchLabels"], deployment)
    assert not selects(pdb["spec"]["selector"]["matchLabels"], find(docs, "Deployment", "model-server"))


def test_model_server_args_ports_and_endpoint_agree(docs: list[dict], tmp_path: Path) -> None:
    config, client_config = pipeline_config(docs, tmp_path)
    deployment = find(docs, "Deployment", "model-server")
    item = container(deployment, "model-server")
    assert item["command"][-2:] == ["-m", "serving.model_server"]
    args = model_server.parse_args(item["args"])
    model_server.limits_from_args(args)  # the limit flags validate as at start
    assert ports(item) == {"brpc": args.port, "grpc": args.grpc_port}
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        assert item[probe]["httpGet"] == {"path": path, "port": "brpc"}, probe
        assert path in PROBES
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(args.port), "/metrics")
    assert "/metrics" in PROBES
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > prestop_s(item)

    # the pipeline's client config belongs to the model the server serves, on the same claim
    pipeline = find(docs, "Deployment", "pipeline")
    pipeline_mount = mount_at(container(pipeline, "pipeline"), str(client_config))
    server_mount = mount_at(item, args.model)
    assert volume_of(pipeline, pipeline_mount)["persistentVolumeClaim"]["claimName"] == \
        volume_of(deployment, server_mount)["persistentVolumeClaim"]["claimName"]
    assert client_config.relative_to(pipeline_mount["mountPath"]).parent.parent == \
        PurePosixPath(args.model).relative_to(server_mount["mountPath"]).parent

    # each endpoint is the headless Service's name and a Service port that reaches the protocol's container port
    service = find(docs, "Service", "model-server")
    assert service["spec"]["clusterIP"] == "None"
    assert selects(service["spec"]["selector"], deployment) and not selects(service["spec"]["selector"], pipeline)
    op = config.op["imagenet"]
    listening = args.port if op.remote_protocol(config.dag) == "brpc" else args.grpc_port
    for endpoint in op.server_endpoints:
        host, port = endpoint.rsplit(":", 1)
        assert host == service["metadata"]["name"]
        (service_port,) = [entry for entry in service["spec"]["ports"] if entry["port"] == int(port)]
        assert ports(item)[service_port["targetPort"]] == listening
    # a merged call must fit the model server's predictor, which keeps LocalServiceConf's max_batch_size (no flag)
    assert op.batch_size * config.limits.max_images_per_request <= LocalServiceConf.max_batch_size


def test_model_server_gpu_flags_follow_its_gpu_resources(docs: list[dict]) -> None:
    pod = find(docs, "Deployment", "model-server")["spec"]["template"]["spec"]
    item = container(find(docs, "Deployment", "model-server"), "model-server")
    args = model_server.parse_args(item["args"])
    gpus = int(item["resources"]["limits"].get(GPU, 0))
    assert int(item["resources"]["requests"].get(GPU, 0)) == gpus
    if gpus:
        ids = [int(part) for part in args.gpu_ids.split(",")]
        assert ids == list(range(len(ids))) and len(ids) <= gpus, "the device plugin numbers a pod's cards from 0"
        assert any(toleration["key"] == GPU for toleration in pod["tolerations"])
        assert pod["nodeSelector"]
    else:
        assert args.gpu_ids == "" and "tolerations" not in pod


def test_pods_run_non_root_on_a_read_only_root(docs: list[dict]) -> None:
    deployments = [doc for doc in docs if doc["kind"] == "Deployment"]
    assert {doc["metadata"]["name"] for doc in deployments} == {"pipeline", "model-server"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        for item in pod["containers"]:
            context = item["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert item["image"].split(":")[0] in IMAGE_PLACEHOLDERS
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(item["resources"][kind]), (item["name"], kind)
            writable = [mount for mount in item["volumeMounts"] if not mount.get("readOnly")]
            assert [mount["mountPath"] for mount in writable] == ["/tmp"]
            assert "emptyDir" in volume_of(deployment, writable[0])
    pid_file = web_service.parse_args(container(find(docs, "Deployment", "pipeline"), "pipeline")["args"]).pid_file
    assert pid_file.parent == Path("/tmp"), "the pid file is written on the writable volume"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[path.name for path in OVERLAYS])
def test_overlay_config_differs_from_the_base_only_where_intended(overlay: Path) -> None:
    def config_yml(folder: Path) -> dict:
        (config_map,) = [doc for doc in yaml.safe_load_all(render(folder)) if doc and doc["kind"] == "ConfigMap"]
        return yaml.safe_load(config_map["data"]["config.yml"])

    def flat(data: object, path: str) -> dict[str, object]:
        if not isinstance(data, dict):
            return {path: data}
        return {key: value for name, item in data.items() for key, value in flat(item, f"{path}.{name}").items()}

    base, changed = flat(config_yml(K8S / "base"), "config"), flat(config_yml(overlay), "config")
    differing = {key for key in base.keys() | changed.keys() if base.get(key) != changed.get(key)}
    assert differing == {f"config.{key}" for key in CONFIG_CHANGES[overlay.name]}
