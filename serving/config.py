"""config.yml -> typed, validated objects: Paddle Serving's keys and defaults, plus this kit's limits.

Every error names the key path, the value and what is allowed, and is raised at start.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from serving.endpoints import FORMS, EndpointError, parse_endpoint
from serving.errors import ConfigError, require_config
from serving.images import OPENCV_PIXELS_ENV, opencv_pixel_cap
from serving.model_config import CLIENT_CONF, SERVER_CONF
from serving.model_repository import SERVER_DIR, VersionPolicy, version_folders
from serving.security import SecurityConfig

CLIENT_TYPES = ("local_predictor", "brpc", "grpc")
SUPPORTED_DEVICE_TYPES = {-1: "from devices", 0: "CPU", 1: "GPU", 2: "TensorRT"}
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
ENGINES = ("auto", "paddle", "onnxruntime")
PROXY_LOCATIONS = ("EveryNode", "HeadOnly", "Disabled")


@dataclass
class LocalServiceConf:
    """op.<name>.local_service_conf: the in-process predictor (plus this kit's TensorRT knobs)."""

    model_config: str = ""
    client_type: str = "local_predictor"
    device_type: int = -1
    devices: str = ""
    thread_num: int = 2
    mem_optim: bool = True
    ir_optim: bool = False
    precision: str = "fp32"
    use_calib: bool = False
    use_mkldnn: bool = False
    mkldnn_cache_capacity: int = 0
    mkldnn_op_list: list[str] | None = None
    mkldnn_bf16_op_list: list[str] | None = None
    min_subgraph_size: int = 3
    fetch_list: list[str] | None = None
    max_batch_size: int = 32
    trt_workspace_mb: int = 1024
    trt_cache_dir: str = ""
    engine: str = "auto"
    cpu_spin_wait: bool = False  # this kit's, ONNX Runtime only: idle math threads spin (lone-request latency)
    trt_fallback: str = "none"  # this kit's: "gpu" runs plain GPU (loudly) when TensorRT cannot engage
    # this kit's, for a model_config that is a repository model folder (<version>/serving_server/...): the version
    # served, and seconds between looks for a new one (0: none after start)
    version_policy: str = "latest:1"
    repository_poll_s: float = 0.0

    def validate(self, path: str) -> None:
        """Value ranges and the contradictions Paddle Serving only found at first request."""
        require_config(self.engine in ENGINES, f"{path}.engine", self.engine, f"one of {', '.join(ENGINES)}")
        require_config(self.trt_fallback in ("none", "gpu"), f"{path}.trt_fallback", self.trt_fallback,
                       "none (start-up fails when TensorRT cannot engage) or gpu (run plain GPU, with a warning)")
        require_config(bool(self.model_config), f"{path}.model_config", self.model_config,
                       "set it to the exported serving_server folder")
        require_config(self.client_type in CLIENT_TYPES, f"{path}.client_type", self.client_type,
                       f"one of {', '.join(CLIENT_TYPES)}")
        require_config(self.device_type in SUPPORTED_DEVICE_TYPES, f"{path}.device_type", self.device_type,
                       "supported: " + ", ".join(f"{k} ({v})" for k, v in SUPPORTED_DEVICE_TYPES.items()))
        require_config(all(part.strip().isdigit() for part in self.devices.split(",")) or not self.devices.strip(),
                       f"{path}.devices", self.devices, 'use "" for CPU or GPU ids like "0" or "0,1"')
        require_config(self.device_type not in (1, 2) or bool(self.gpu_ids), f"{path}.devices", self.devices,
                       f"device_type {self.device_type} needs GPU ids, e.g. devices: \"0\"")
        require_config(self.precision in PRECISIONS, f"{path}.precision", self.precision,
                       f"one of {', '.join(PRECISIONS)}")
        on_gpu = self.device_type in (1, 2) or (self.device_type == -1 and bool(self.gpu_ids))
        cpu_int8 = self.precision == "int8" and self.engine != "paddle"
        require_config(on_gpu or cpu_int8 or self.precision in ("fp32", "bf16"), f"{path}.precision", self.precision,
                       "on CPU use fp32 or bf16 (fp16/int8 need device_type 1 or 2; int8 also runs on CPU with "
                       "engine onnxruntime, from an export with --int8)")
        require_config(not on_gpu or self.precision != "bf16", f"{path}.precision", self.precision,
                       "bf16 is a CPU (oneDNN) precision; on GPU use fp32, fp16 or int8")
        for key in ("thread_num", "min_subgraph_size", "max_batch_size", "trt_workspace_mb"):
            require_config(getattr(self, key) >= 1, f"{path}.{key}", getattr(self, key), "must be >= 1")
        require_config(self.mkldnn_cache_capacity >= 0, f"{path}.mkldnn_cache_capacity", self.mkldnn_cache_capacity,
                       "must be >= 0")
        policy = VersionPolicy.parse(self.version_policy, f"{path}.version_policy")
        require_config((policy.kind, policy.count) == ("latest", 1) or len(policy.versions) == 1,
                       f"{path}.version_policy", self.version_policy,
                       "an op serves one version: latest:1 (the highest) or specific:V")
        require_config(self.repository_poll_s >= 0, f"{path}.repository_poll_s", self.repository_poll_s,
                       "seconds between looks for a new version, or 0 for none")

    @property
    def repository_model(self) -> bool:
        """True when model_config (resolved) is a repository model folder rather than a serving_server folder."""
        return not (Path(self.model_config) / SERVER_CONF).is_file()

    @property
    def gpu_ids(self) -> list[int]:
        """The `devices` string as card ids; empty means CPU."""
        return [int(part) for part in self.devices.split(",") if part.strip()]


@dataclass
class OpConfig:
    """op.<name>: scheduling of one op and where its model runs."""

    concurrency: int = 1
    timeout: int = -1
    retry: int = 1
    batch_size: int = 1
    auto_batching_timeout: int = -1
    server_endpoints: list[str] | None = None
    fetch_list: list[str] | None = None
    client_config: str | None = None
    local_service_conf: LocalServiceConf | None = None
    topk: int = 1

    def remote_protocol(self, dag: "DagConfig") -> str:
        """brpc or grpc: local_service_conf.client_type when it names one, else dag.client_type."""
        conf = self.local_service_conf
        return conf.client_type if conf is not None and conf.client_type != "local_predictor" else dag.client_type

    def validate(self, path: str) -> None:
        """Ranges, and a local model or remote endpoints when a model is configured."""
        for key in ("concurrency", "retry", "batch_size", "topk"):
            require_config(getattr(self, key) >= 1, f"{path}.{key}", getattr(self, key), "must be >= 1")
        conf = self.local_service_conf
        if conf is not None and conf.max_batch_size < self.batch_size:
            raise ConfigError(f"config {path}.local_service_conf.max_batch_size: {conf.max_batch_size!r} is below "
                              f"{path}.batch_size {self.batch_size}; raise max_batch_size or lower batch_size")


@dataclass
class TracerConfig:
    """dag.tracer: periodic performance summaries."""

    interval_s: int = -1


@dataclass
class DagConfig:
    """dag: options shared by all ops."""

    retry: int = 1
    client_type: str = "brpc"
    use_profile: bool = False
    channel_size: int = 0
    is_thread_op: bool = True
    tracer: TracerConfig = field(default_factory=TracerConfig)
    enable_prometheus: bool = False
    prometheus_port: int | None = None

    def validate(self, path: str) -> None:
        """Ranges and allowed values."""
        require_config(self.retry >= 1, f"{path}.retry", self.retry, "must be >= 1")
        require_config(self.channel_size >= 0, f"{path}.channel_size", self.channel_size, "must be >= 0")
        require_config(self.client_type in ("brpc", "grpc"), f"{path}.client_type", self.client_type,
                       "one of brpc, grpc")


@dataclass
class LimitsConfig:
    """limits (this kit's): bounds that keep one bad request, or one bad client, from hurting the others."""

    max_body_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_request_pixels: int = 100_000_000
    max_images_per_request: int = 64
    max_inflight: int = 256
    max_queue: int = 128
    max_connections: int = 10_000
    request_timeout_ms: int = 30_000
    client_timeout_ms: int = 30_000
    keepalive_timeout_ms: int = 60_000
    max_connection_age_ms: int = 300_000
    drain_timeout_ms: int = 10_000

    def validate(self, path: str) -> None:
        """All limits are positive; OpenCV's process-wide cap must admit max_image_pixels."""
        for item in dataclasses.fields(self):
            require_config(getattr(self, item.name) >= 1, f"{path}.{item.name}", getattr(self, item.name),
                           "must be >= 1")
        cap = opencv_pixel_cap()
        require_config(self.max_image_pixels <= cap, f"{path}.max_image_pixels", self.max_image_pixels,
                       f"OpenCV refuses images above {cap} pixels in this process; start it with "
                       f"{OPENCV_PIXELS_ENV}={self.max_image_pixels} (or more) in the environment")


@dataclass
class AutoscalingConfig:
    """ray_serve.autoscaling_config: Ray Serve's replica autoscaler, with Ray's key names and defaults."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    metrics_interval_s: float = 10.0
    look_back_period_s: float = 30.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0

    def validate(self, path: str) -> None:
        """Ray's own ranges, checked at load so a bad value never reaches a running cluster."""
        require_config(self.min_replicas >= 0, f"{path}.min_replicas", self.min_replicas, "must be >= 0")
        require_config(self.max_replicas >= max(1, self.min_replicas), f"{path}.max_replicas", self.max_replicas,
                       f"must be >= 1 and >= min_replicas ({self.min_replicas})")
        require_config(self.initial_replicas is None or self.min_replicas <= self.initial_replicas <= self.max_replicas,
                       f"{path}.initial_replicas", self.initial_replicas,
                       f"must lie between min_replicas ({self.min_replicas}) and max_replicas ({self.max_replicas})")
        for key in ("target_ongoing_requests", "metrics_interval_s", "look_back_period_s"):
            require_config(getattr(self, key) > 0, f"{path}.{key}", getattr(self, key), "must be > 0")
        for key in ("upscale_delay_s", "downscale_delay_s"):
            require_config(getattr(self, key) >= 0, f"{path}.{key}", getattr(self, key), "must be >= 0")


@dataclass
class RayActorOptions:
    """ray_serve.ray_actor_options: what each replica reserves on its node."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def validate(self, path: str) -> None:
        """Reservations are non-negative."""
        for key in ("num_cpus", "num_gpus"):
            require_config(getattr(self, key) >= 0, f"{path}.{key}", getattr(self, key), "must be >= 0")


@dataclass
class RayServeConfig:
    """ray_serve (this kit's): the pipeline as a Ray Serve application (python -m deploy.rayserve config.yml)."""

    num_replicas: int | None = None  # a fixed count; leave it out with autoscaling_config (neither: 1)
    autoscaling_config: AutoscalingConfig | None = None
    max_ongoing_requests: int = 5
    ray_actor_options: RayActorOptions = field(default_factory=RayActorOptions)
    proxy_location: str = "EveryNode"
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 9000

    def validate(self, path: str) -> None:
        """A fixed count or an autoscaler, not both; ports as the kit's own; Ray's proxy locations."""
        require_config(self.num_replicas is None or self.autoscaling_config is None, f"{path}.num_replicas",
                       self.num_replicas, "set num_replicas for a fixed count or autoscaling_config, not both")
        require_config(self.num_replicas is None or self.num_replicas >= 1, f"{path}.num_replicas", self.num_replicas,
                       "must be >= 1")
        require_config(self.max_ongoing_requests >= 1, f"{path}.max_ongoing_requests", self.max_ongoing_requests,
                       "must be >= 1")
        target = self.autoscaling_config.target_ongoing_requests if self.autoscaling_config else 0
        require_config(self.max_ongoing_requests >= target, f"{path}.max_ongoing_requests", self.max_ongoing_requests,
                       f"must be >= autoscaling_config.target_ongoing_requests ({target}), or replicas never "
                       "hold enough requests to scale up")
        require_config(self.proxy_location in PROXY_LOCATIONS, f"{path}.proxy_location", self.proxy_location,
                       f"one of {', '.join(PROXY_LOCATIONS)}")
        for key in ("http_port", "grpc_port"):
            require_config(1024 <= getattr(self, key) <= 65535, f"{path}.{key}", getattr(self, key), "use 1024-65535")
        require_config(self.http_port != self.grpc_port, f"{path}.grpc_port", self.grpc_port,
                       "http_port and grpc_port must differ")


@dataclass
class ServiceConfig:
    """The whole config.yml."""

    rpc_port: int | None = None
    http_port: int | None = None
    worker_num: int = 1
    build_dag_each_worker: bool = False
    dag: DagConfig = field(default_factory=DagConfig)
    op: dict[str, OpConfig] = field(default_factory=dict)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    ray_serve: RayServeConfig = field(default_factory=RayServeConfig)

    def validate(self, path: str) -> None:
        """Ports: at least one, each 1024-65535 (0 = pick a free port, for tests)."""
        require_config(self.rpc_port is not None or self.http_port is not None, f"{path}rpc_port/http_port", None,
                       "set at least one of rpc_port and http_port")
        for key in ("rpc_port", "http_port"):
            port = getattr(self, key)
            require_config(port is None or port == 0 or 1024 <= port <= 65535, f"{path}{key}", port,
                           "use 1024-65535 (or 0 for any free port)")
        require_config(self.rpc_port is None or self.rpc_port == 0 or self.rpc_port != self.http_port,
                       f"{path}http_port",
                       self.http_port, "rpc_port and http_port must differ")
        require_config(self.worker_num >= 1, f"{path}worker_num", self.worker_num, "must be >= 1")


def _type_name(kind: object) -> str:
    return getattr(kind, "__name__", str(kind)).replace("NoneType", "null")


def _coerce(kind: object, value: object, path: str) -> object:
    """Check `value` against the annotated type, building nested dataclasses; YAML null means the default."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = next(arg for arg in args if arg is not type(None))
        return None if value is None else _coerce(inner, value, path)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, path)
    if origin is dict:
        require_config(isinstance(value, dict), path, value, "expected a mapping of op name -> settings")
        return {str(name): _coerce(args[1], item, f"{path}.{name}") for name, item in value.items()}
    if origin is list:
        require_config(isinstance(value, list) and all(isinstance(item, str) for item in value), path, value,
                       "expected a list of strings")
        return list(value)
    if kind is int:
        require_config(isinstance(value, int) and not isinstance(value, bool), path, value, "expected an integer")
    elif kind is float:
        require_config(isinstance(value, int | float) and not isinstance(value, bool), path, value,
                       "expected a number")
        return float(value)
    elif kind is bool:
        require_config(isinstance(value, bool), path, value, "expected true or false")
    elif kind is str:
        require_config(isinstance(value, (str, int)) and not isinstance(value, bool), path, value, "expected a string")
        return str(value)
    return value


def _build(cls: type, data: object, path: str) -> object:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys by name."""
    require_config(isinstance(data, dict), path or "(top level)", data, f"expected a mapping for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    names = [item.name for item in dataclasses.fields(cls)]
    prefix = f"{path}." if path else ""
    kwargs = {}
    for key, value in data.items():
        require_config(key in hints, f"{prefix}{key}", value, f"unknown key; allowed keys here: {', '.join(names)}")
        if value is not None:
            kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    instance = cls(**kwargs)
    if hasattr(instance, "validate"):
        instance.validate(path if isinstance(instance, ServiceConfig) else path or cls.__name__)
    return instance


def parse_config(data: object, base_dir: Path) -> ServiceConfig:
    """Build and validate a ServiceConfig; relative model, cache and TLS paths are resolved against `base_dir`."""
    config = _build(ServiceConfig, {} if data is None else data, "")
    config.security.resolve(base_dir, "security")
    for name, op in config.op.items():
        if op.server_endpoints or (op.local_service_conf and op.local_service_conf.client_type != "local_predictor"):
            _resolve_remote(op, f"op.{name}", base_dir)
        elif op.local_service_conf is not None:
            _resolve_local(op.local_service_conf, f"op.{name}.local_service_conf", base_dir)
    return config


def _resolve(path: str, base_dir: Path) -> Path:
    folder = Path(path)
    return (folder if folder.is_absolute() else base_dir / folder).resolve()


def _resolve_local(conf: LocalServiceConf, path: str, base_dir: Path) -> None:
    """The model folder must hold the server config, or be a repository model folder whose version policy selects
    a version; relative folders are made absolute."""
    folder = _resolve(conf.model_config, base_dir)
    versions = version_folders(folder)
    require_config((folder / SERVER_CONF).is_file() or bool(versions), f"{path}.model_config", conf.model_config,
                   f"the folder must exist and hold {SERVER_CONF}, or be a model repository's model folder "
                   f"(<version>/{SERVER_DIR}/{SERVER_CONF}) (looked in {folder}); export one with python -m export")
    conf.model_config = str(folder)
    if conf.repository_model:
        selected = VersionPolicy.parse(conf.version_policy, f"{path}.version_policy").select(set(versions))
        require_config(bool(selected), f"{path}.version_policy", conf.version_policy,
                       f"it selects none of the versions in {folder} ({', '.join(map(str, sorted(versions)))})")
    else:
        for key in ("version_policy", "repository_poll_s"):
            require_config(getattr(conf, key) == getattr(LocalServiceConf, key), f"{path}.{key}", getattr(conf, key),
                           f"applies to a model repository's model folder; {folder} is an export's {SERVER_DIR}")
    if conf.trt_cache_dir:
        conf.trt_cache_dir = str(_resolve(conf.trt_cache_dir, base_dir))


def _resolve_remote(op: OpConfig, path: str, base_dir: Path) -> None:
    """Remote ops need endpoints and the model's client config."""
    require_config(bool(op.server_endpoints), f"{path}.server_endpoints", op.server_endpoints,
                   f"a brpc/grpc client_type needs the model servers' list, each {FORMS}")
    for index, endpoint in enumerate(op.server_endpoints):
        try:
            parse_endpoint(endpoint)
        except EndpointError as exc:
            raise ConfigError.invalid(f"{path}.server_endpoints[{index}]", endpoint,
                                      f"an endpoint is {FORMS} ({exc.reason})") from None
    require_config(op.client_config is not None, f"{path}.client_config", op.client_config,
                   f"remote ops need the model's serving_client/{CLIENT_CONF}")
    client_config = _resolve(op.client_config, base_dir)
    require_config(client_config.is_file(), f"{path}.client_config", op.client_config,
                   f"no such file (looked in {client_config})")
    op.client_config = str(client_config)


def apply_overrides(data: dict, overrides: dict[str, object]) -> dict:
    """Command-line overrides: `http_port`, `rpc_port`, and `model_config` for every local-predictor op."""
    data = dict(data or {})
    for key in ("http_port", "rpc_port"):
        if overrides.get(key) is not None:
            data[key] = overrides[key]
    if overrides.get("model_config") is not None:
        for op in (data.get("op") or {}).values():
            if isinstance(op, dict) and isinstance(op.get("local_service_conf"), dict):
                op["local_service_conf"] = {**op["local_service_conf"], "model_config": overrides["model_config"]}
    return data


def read_config_data(path: Path) -> object:
    """config.yml as YAML data, before any check: hosts that validate it again elsewhere (Ray replicas) ship this."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None


def load_config(path: Path, overrides: dict[str, object] | None = None) -> ServiceConfig:
    """Read config.yml, apply command-line overrides (already absolute paths), validate."""
    path = Path(path)
    return parse_config(apply_overrides(read_config_data(path), overrides or {}), path.parent)
