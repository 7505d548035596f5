"""The pipeline as a Ray Serve deployment, built from config.yml and its ray_serve section.

Each replica runs the service's data plane in its own process (the DAG, its ops and predictors) and answers
through the kit's own adapters, not a server: Ray's HTTP proxy reaches the kit's REST app (Paddle Serving's
`POST /{name}/prediction` JSON, plus /health, /ready, /metadata, /metrics), Ray's gRPC proxy reaches
`PipelineService.inference` through the kit's servicer. With one application on the cluster, Ray's gRPC proxy
routes calls without any metadata, so Paddle Serving's PipelineClient works unchanged.
"""

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from ray import serve
from ray.serve import Application
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from pipelines.web_service import ImageService
from serving.config import ServiceConfig, apply_overrides, parse_config, read_config_data
from serving.errors import ConfigError
from serving.pipeline import WebService
from serving.proto import pipeline_service_pb2 as pb
from serving.protocols.grpc_server import PipelineServicer
from serving.protocols.http_server import PipelineApp
from serving.security import GRPC_HINT, token_check

log = logging.getLogger("deploy.rayserve")
SERVICER = "serving.proto.pipeline_service_pb2_grpc.add_PipelineServiceServicer_to_server"


@dataclass(frozen=True)
class Source:
    """config.yml's data (overrides applied) and its folder: each replica validates it again on its own node."""

    data: dict
    base_dir: str

    def parse(self) -> ServiceConfig:
        """The typed config, checked where it runs: model folders, token variables and cert files are per node."""
        return parse_config(copy.deepcopy(self.data), Path(self.base_dir))


def read(config_path: str | Path, overrides: dict[str, object] | None = None) -> tuple[ServiceConfig, Source]:
    """Load and validate config.yml here, before Ray is touched; overrides: model_config, http_port, grpc_port."""
    path = Path(config_path).resolve()
    overrides = overrides or {}
    data = apply_overrides(read_config_data(path), {"model_config": overrides.get("model_config")})
    ports = {key: overrides[key] for key in ("http_port", "grpc_port") if overrides.get(key) is not None}
    if ports and isinstance(data.get("ray_serve") or {}, dict):
        data["ray_serve"] = {**(data.get("ray_serve") or {}), **ports}
    source = Source(data, str(path.parent))
    config = source.parse()
    if config.security.tls:
        raise ConfigError.invalid("security.tls_cert_file", config.security.tls_cert_file,
                                  "Ray Serve's gRPC proxy speaks no TLS: terminate TLS in front of Ray's proxies and "
                                  "leave security.tls_cert_file/tls_key_file unset for python -m deploy.rayserve")
    if config.build_dag_each_worker:
        log.warning("build_dag_each_worker is ignored on Ray Serve: each replica is one process; scale with "
                    "ray_serve.num_replicas or ray_serve.autoscaling_config")
    return config, source


class ProxiedCall:
    """What PipelineServicer reads of a grpc.ServicerContext, for a call relayed by Ray's gRPC proxy."""

    def __init__(self, context: RayServegRPCContext) -> None:
        self._context = context

    def peer(self) -> str:
        """The client's address as the proxy saw it, for the request's clientip."""
        return self._context.peer()

    def time_remaining(self) -> None:
        """Ray's proxy does not pass the caller's deadline on; limits.request_timeout_ms still bounds the call."""
        return None


@serve.ingress()
class PipelineReplica:
    """One replica: the service's data plane in this process, behind the kit's REST app and gRPC servicer."""

    def __init__(self, service_class: type[WebService], name: str, source: Source) -> None:
        self.service = service_class(name=name)
        self.service.config = source.parse()
        self.dataplane, self.oip = self.service.start_dataplane()
        self.servicer = PipelineServicer(self.dataplane)
        self.auth = token_check(self.service.config.security)
        self.http: PipelineApp | None = None

    def __serve_build_asgi_app__(self) -> Any:
        """Ray's HTTP proxy reaches the kit's own REST app, so paths, JSON, body bound and token stay the kit's."""
        config = self.service.config
        self.http = PipelineApp(self.dataplane, self.oip, config.limits.max_body_bytes, config.limits.max_inflight,
                                config.security)
        return self.http.app

    def inference(self, request: pb.Request, grpc_context: RayServegRPCContext) -> pb.Response:
        """PipelineService.inference via Ray's gRPC proxy: the kit's interceptor's token check, then its servicer."""
        if self.auth is not None and not self.auth.accepts_headers(dict(grpc_context.invocation_metadata())):
            grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
            grpc_context.set_details(GRPC_HINT)
            return pb.Response()
        return self.servicer.inference(request, ProxiedCall(grpc_context))

    def check_health(self) -> None:
        """Ray replaces a replica whose data plane no longer answers."""
        if not self.dataplane.ready:
            raise RuntimeError(f"service {self.service.name!r}: the data plane is not serving")

    def __del__(self) -> None:
        """Ray calls it once the replica has drained: release the predictors and the HTTP pool."""
        self.service.stop()
        if self.http is not None:
            self.http.pool.shutdown(wait=False)


def deployment_options(config: ServiceConfig) -> dict[str, Any]:
    """The deployment's options: replicas or the autoscaler, reservations, Ray's queue bound and drain time."""
    ray_conf = config.ray_serve
    options: dict[str, Any] = {
        "max_ongoing_requests": ray_conf.max_ongoing_requests,
        "max_queued_requests": config.limits.max_queue,  # per proxy; beyond it Ray's proxy answers 503
        "ray_actor_options": dataclasses.asdict(ray_conf.ray_actor_options),
        "graceful_shutdown_timeout_s": config.limits.drain_timeout_ms / 1000,
    }
    if ray_conf.autoscaling_config is not None:
        autoscaling = dataclasses.asdict(ray_conf.autoscaling_config)
        options["autoscaling_config"] = {key: value for key, value in autoscaling.items() if value is not None}
    else:
        options["num_replicas"] = ray_conf.num_replicas or 1
    return options


def serve_options(config: ServiceConfig) -> dict[str, Any]:
    """serve.start's cluster-wide options: where the proxies run, their ports, and the project's gRPC servicer."""
    ray_conf = config.ray_serve
    keep_alive_s = max(1, round(config.limits.keepalive_timeout_ms / 1000))
    return {"proxy_location": ray_conf.proxy_location,
            "http_options": {"host": ray_conf.http_host, "port": ray_conf.http_port,
                             "keep_alive_timeout_s": keep_alive_s},
            "grpc_options": {"port": ray_conf.grpc_port, "grpc_servicer_functions": [SERVICER]}}


def application(config: ServiceConfig, source: Source, service_class: type[WebService] = ImageService,
                name: str = "imagenet") -> Application:
    """The bound deployment, named after the service (its REST path is /{name}/prediction)."""
    deployment = serve.deployment(PipelineReplica, name=name, **deployment_options(config))
    return deployment.bind(service_class, name, source)


def build_app(config_path: str | Path, overrides: dict[str, object] | None = None,
              service_class: type[WebService] = ImageService, name: str = "imagenet") -> Application:
    """The Ray Serve application for config.yml, validated here first."""
    return application(*read(config_path, overrides), service_class, name)


def deploy(config: ServiceConfig, source: Source, service_class: type[WebService] = ImageService,
           name: str = "imagenet") -> DeploymentHandle:
    """Start Serve's proxies on the config's ports (once per cluster), run the application at /, wait until healthy."""
    serve.start(**serve_options(config))
    return serve.run(application(config, source, service_class, name), name=name, route_prefix="/")
