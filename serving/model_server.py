"""The tensor-level model server, flags named like Paddle Serving's `paddle_serving_server.serve`.

    python -m serving.model_server --model DIR/serving_server --port 9292 [--thread 4] [--gpu_ids 0]
        [--use_trt --precision fp16] [--mem_optim | --mem_optim_off] [--ir_optim] [--use_mkldnn] [--grpc_port 9393]
        [--tls_cert FILE --tls_key FILE] [--auth_token_env VAR]
    python -m serving.model_server --model_repository REPO [--version_policy latest:1] [--default_model NAME]
        [--repository_poll_s 5] [--repository_api] ...

One port answers baidu_std (brpc) `GeneralModelService.inference`/`.debug` and HTTP
`POST /GeneralModelService/inference`; gRPC for the same service is on `--grpc_port`, because
Python's gRPC server cannot share a socket with another protocol. Both also speak the Open Inference
Protocol (HTTP /v2/..., gRPC inference.GRPCInferenceService), the model named like its model card, or the
models of a repository (`REPO/<model>/<version>/` each an export) by folder name and version.
"""

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc

from serving.config import LimitsConfig, LocalServiceConf
from serving.context import RequestContext
from serving.dataplane import DataPlane
from serving.errors import ConfigError, ServingError, require_config
from serving.files import raise_open_file_limit
from serving.logs import FORMATS, setup_logging
from serving.model_card import CARD_FILE, load_card
from serving.model_config import SERVER_CONF, read_config
from serving.model_repository import SERVER_DIR, ModelRepository, VersionPolicy, scan_repository
from serving.model_service import SERVICE_NAME, ModelService, failure_response
from serving.proto import general_model_service_pb2 as gm
from serving.proto import general_model_service_pb2_grpc as gm_grpc
from serving.protocols import openapi
from serving.protocols.brpc_server import BrpcServer, ServerLimits
from serving.protocols.general_model import ModelServicer, http_routes, rpc_service
from serving.protocols.grpc_server import grpc_options
from serving.protocols.health import HealthServicer, add_health
from serving.protocols.oip import SERVICE_NAME as OIP_SERVICE
from serving.protocols.oip import OipEndpoint, OipRest, OipService, add_oip_servicer
from serving.protocols.oip_models import ModelServiceModel
from serving.security import SecurityConfig, add_grpc_port, grpc_interceptors

log = logging.getLogger("serving.model_server")
# The flags of --model_repository, with their defaults (which --model must leave as they are).
REPOSITORY_FLAGS = {"version_policy": "latest:1", "default_model": "", "repository_poll_s": 0.0,
                    "repository_api": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Paddle Serving's serve flags (the ones that apply to a local Paddle Inference model)."""
    parser = argparse.ArgumentParser(prog="python -m serving.model_server", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="the exported serving_server folder")
    source.add_argument("--model_repository",
                        help="a model repository: <model>/<version>/ folders, each an export (Triton's layout)")
    parser.add_argument("--version_policy", default=REPOSITORY_FLAGS["version_policy"],
                        help="with --model_repository, the versions served: latest:N, all, or specific:V[,V...]")
    parser.add_argument("--default_model", default=REPOSITORY_FLAGS["default_model"],
                        help="with --model_repository, the model GeneralModelService answers (its requests name "
                             "none); default: the first model by name")
    parser.add_argument("--repository_poll_s", type=float, default=REPOSITORY_FLAGS["repository_poll_s"],
                        help="with --model_repository, look for new and removed versions and models every S seconds "
                             "(0: only at start and on an API load)")
    parser.add_argument("--repository_api", action="store_true",
                        help="with --model_repository, serve POST /v2/repository/index and "
                             "/v2/repository/models/{name}/load|unload (gRPC RepositoryModelLoad/Unload), behind "
                             "the token when one is set")
    parser.add_argument("--port", type=int, default=9292, help="baidu_std + HTTP port (0 = any free port)")
    parser.add_argument("--grpc_port", type=int, help="also serve gRPC GeneralModelService on this port")
    parser.add_argument("--thread", type=int, default=4, help="concurrent predictions (predictor pool size)")
    parser.add_argument("--gpu_ids", default="", help='GPU cards, e.g. "0" or "0,1"; empty = CPU')
    parser.add_argument("--use_trt", action="store_true", help="TensorRT (needs --gpu_ids)")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16, int8 (GPU/TRT) or bf16 (CPU oneDNN)")
    parser.add_argument("--use_mkldnn", action="store_true", help="oneDNN on CPU")
    parser.add_argument("--engine", default="auto", choices=("auto", "paddle", "onnxruntime"),
                        help="auto: ONNX Runtime on CPU when the export has inference.onnx, else Paddle Inference")
    parser.add_argument("--cpu_threads", type=int, default=2, help="math threads per CPU predictor")
    parser.add_argument("--cpu_spin_wait", action="store_true",
                        help="ONNX Runtime: idle math threads spin (lower lone-request latency, more CPU under load)")
    parser.add_argument("--ir_optim", action="store_true", help="graph optimisation passes")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument("--mem_optim", dest="mem_optim", action="store_true", default=True, help="(default)")
    memory.add_argument("--mem_optim_off", dest="mem_optim", action="store_false", help="no memory optimisation")
    parser.add_argument("--max_body_bytes", type=int, default=64 * 2**20, help="largest accepted message")
    parser.add_argument("--max_image_pixels", type=int, default=40_000_000, help="largest accepted image")
    parser.add_argument("--max_request_pixels", type=int, default=100_000_000,
                        help="most decoded pixels of all images of one request together")
    parser.add_argument("--max_images_per_request", type=int, default=64, help="most image files in one request")
    parser.add_argument("--max_inflight", type=int, default=256,
                        help="requests answered at once; beyond it: ELIMIT / RESOURCE_EXHAUSTED / HTTP 503")
    parser.add_argument("--log_format", choices=FORMATS, help="text (default) or json lines; or $SERVING_LOG_FORMAT")
    parser.add_argument("--max_connections", type=int, default=LimitsConfig.max_connections,
                        help="open connections on --port, baidu_std and HTTP together; beyond: HTTP 503, or closed")
    parser.add_argument("--client_timeout_ms", type=int, default=LimitsConfig.client_timeout_ms,
                        help="for an HTTP request's head and body to arrive, from its first byte; beyond: HTTP 408")
    idle = parser.add_mutually_exclusive_group()
    idle.add_argument("--keepalive_timeout_ms", type=int, default=LimitsConfig.keepalive_timeout_ms,
                      help="close a connection with no request (or frame) arriving this long")
    idle.add_argument("--idle_timeout_s", type=float, help="the same in seconds (the earlier flag)")
    parser.add_argument("--max_connection_age_ms", type=int, default=LimitsConfig.max_connection_age_ms,
                        help="gRPC: close a connection this old (calls in flight finish), so clients re-resolve")
    parser.add_argument("--tls_cert", default="", help="PEM certificate: every port speaks TLS (with --tls_key)")
    parser.add_argument("--tls_key", default="", help="PEM private key of --tls_cert (unencrypted)")
    parser.add_argument("--auth_token_env", default="",
                        help="name of the environment variable holding the token every call must carry")
    return parser.parse_args(argv)


def security_from_args(args: argparse.Namespace) -> SecurityConfig:
    """The TLS and token flags, checked like config.yml's `security` (relative paths against the cwd)."""
    security = SecurityConfig(args.tls_cert, args.tls_key, args.auth_token_env)
    security.validate("--flags")
    security.resolve(Path.cwd(), "--flags")
    return security


def build_service(args: argparse.Namespace) -> ModelRepository[ModelServiceModel]:
    """Validate flags the way config.yml is validated, then load and warm the model, or the repository's models (and
    poll the repository when asked); the caller stops it."""
    limits = limits_from_args(args)
    conf = LocalServiceConf(model_config=args.model or args.model_repository,
                            device_type=2 if args.use_trt else (1 if args.gpu_ids else 0), devices=args.gpu_ids,
                            thread_num=args.cpu_threads, mem_optim=args.mem_optim, ir_optim=args.ir_optim,
                            precision=args.precision, use_mkldnn=args.use_mkldnn, engine=args.engine,
                            cpu_spin_wait=args.cpu_spin_wait)
    conf.validate("--flags")
    if args.model_repository is None:
        for flag, default in REPOSITORY_FLAGS.items():
            require_config(getattr(args, flag) == default, f"--{flag}", getattr(args, flag),
                           "applies to --model_repository only")
        folder = Path(args.model).resolve()
        if not (folder / SERVER_CONF).is_file():
            raise ConfigError(f"--model {args.model}: no {SERVER_CONF} there; export one with python -m export")
        name = load_card(folder).model if (folder.parent / CARD_FILE).is_file() else folder.parent.name
        models = ModelRepository(lambda: {name: {1: folder}}, VersionPolicy(), _loader(args, conf, limits, False),
                                 f"--model {args.model}")
        models.load_all()
        return models
    root = Path(args.model_repository).resolve()
    require_config(root.is_dir(), "--model_repository", args.model_repository, f"no such folder (looked in {root})")
    require_config(args.repository_poll_s >= 0, "--repository_poll_s", args.repository_poll_s,
                   "seconds between looks at the repository, or 0 for none")
    models = ModelRepository(lambda: scan_repository(root), VersionPolicy.parse(args.version_policy,
                                                                                 "--version_policy"),
                             _loader(args, conf, limits, True), f"--model_repository {root}")
    models.load_all()
    require_config(not args.default_model or args.default_model in models.names, "--default_model",
                   args.default_model, f"one of the repository's models: {', '.join(models.names)}")
    if args.repository_poll_s > 0:
        models.start_polling(args.repository_poll_s)
    return models


def _loader(args: argparse.Namespace, conf: LocalServiceConf, limits: LimitsConfig,
            repository: bool) -> Callable[[str, int, Path], ModelServiceModel]:
    """Loads one version: the predictor pool from its serving_server folder (a repository version's subfolder),
    warmed up, and its model card when it has one."""
    from serving.predictor import LocalPredictor, settings_from_conf

    def load(name: str, version: int, folder: Path) -> ModelServiceModel:
        server_dir = folder / SERVER_DIR if repository else folder
        if not (server_dir / SERVER_CONF).is_file():
            raise ConfigError(f"no {SERVER_CONF} in {server_dir}: a version folder holds an export "
                              f"({SERVER_DIR}/, serving_client/, {CARD_FILE}); export one with python -m export")
        model_config = read_config(server_dir / SERVER_CONF)
        settings = settings_from_conf(dataclasses.replace(conf, model_config=str(server_dir)), model_config,
                                      path="--flags")
        predictor = LocalPredictor(settings, model_config, pool_size=args.thread)
        predictor.warm_up()
        card = load_card(server_dir) if (server_dir.parent / CARD_FILE).is_file() else None
        return ModelServiceModel(ModelService(predictor, model_config, card, limits), name, str(version))

    return load


class DefaultModelEndpoint:
    """GeneralModelService's requests name no model: they run on the default model's highest serving version, held
    for the call so that a reload never frees it underneath."""

    def __init__(self, models: ModelRepository[ModelServiceModel], name: str) -> None:
        self.models = models
        self.name = name

    @property
    def ready(self) -> bool:
        """True once the models are loaded (before any port opens)."""
        return self.models.ready

    def metadata(self) -> dict:
        """The default model's name, version, feeds and fetches, engine and precision (GET /metadata)."""
        model = self.models.find(self.name)
        return {"model": self.name, "version": model.version, **model.service.metadata()}

    def check(self, request: gm.Request) -> None:
        """Every route of this server is the model's: nothing to check before admission."""

    def run(self, request: gm.Request, ctx: RequestContext) -> gm.Response:
        """The default model's serving version answers."""
        with self.models.hold(self.name) as model:
            return model.service.run(request, ctx)

    def failure(self, exc: BaseException, request: gm.Request, ctx: RequestContext) -> gm.Response:
        """err_no and err_msg from the error table, with the caller's log_id."""
        return failure_response(exc, request)


def limits_from_args(args: argparse.Namespace) -> LimitsConfig:
    """The limit flags, checked like config.yml's `limits`."""
    keepalive_ms = args.keepalive_timeout_ms if args.idle_timeout_s is None else round(args.idle_timeout_s * 1000)
    limits = LimitsConfig(max_body_bytes=args.max_body_bytes, max_image_pixels=args.max_image_pixels,
                          max_request_pixels=args.max_request_pixels,
                          max_images_per_request=args.max_images_per_request, max_inflight=args.max_inflight,
                          max_connections=args.max_connections, client_timeout_ms=args.client_timeout_ms,
                          keepalive_timeout_ms=keepalive_ms, max_connection_age_ms=args.max_connection_age_ms)
    limits.validate("--flags")
    return limits


class ModelServer:
    """The servers of the models: the asyncio brpc/HTTP port in its own thread, and optional gRPC."""

    def __init__(self, models: ModelRepository[ModelServiceModel], args: argparse.Namespace) -> None:
        self.args = args
        self.security = security_from_args(args)
        self.limits = limits_from_args(args)  # the port's own flags: a service may be shared by several servers
        limits = ServerLimits(max_body_bytes=self.limits.max_body_bytes,
                              idle_timeout_s=self.limits.keepalive_timeout_ms / 1000,
                              max_connections=self.limits.max_connections,
                              client_timeout_s=self.limits.client_timeout_ms / 1000)
        self.models = models
        self.default_model = args.default_model or models.names[0]
        self.dataplane = DataPlane(DefaultModelEndpoint(models, self.default_model), args.max_inflight,
                                   inflight_setting="--max_inflight")
        self.oip = OipService(self.dataplane, OipEndpoint(models), models if args.repository_api else None,
                              "start the model server with --model_repository and --repository_api")
        # one thread more than admitted, to refuse at once
        self.brpc = BrpcServer([rpc_service(self.dataplane)], http_routes(self.dataplane), args.max_inflight + 1,
                               limits, security=self.security, rest=OipRest(self.oip), describe=self.describe,
                               metadata=lambda: self.dataplane.metadata)
        self.grpc: grpc.Server | None = None
        self.health: HealthServicer | None = None
        self.servicer = ModelServicer(self.dataplane)
        self.loop = asyncio.new_event_loop()
        self.port = self.grpc_port = 0

    def describe(self) -> dict:
        """The port's OpenAPI document, as it runs now."""
        return openapi.document(openapi.MODEL_SERVER, self.oip, bool(self.security.auth_token_env))

    def start(self) -> "ModelServer":
        """Bind and serve in the background; ports are known on return."""
        threading.Thread(target=self.loop.run_forever, name="brpc-loop", daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self.brpc.start("0.0.0.0", self.args.port), self.loop).result()
        if self.args.grpc_port is not None:
            # threaded, as the pipeline's (serving/protocols/grpc_server.py): grpc.aio measured no faster here, and
            # slower per call (0.2 ms more, 30 % fewer requests/s at four clients when no model runs)
            self.grpc = grpc.server(futures.ThreadPoolExecutor(self.args.thread), options=grpc_options(self.limits),
                                    interceptors=grpc_interceptors(self.security),
                                    maximum_concurrent_rpcs=self.args.max_inflight)  # beyond: RESOURCE_EXHAUSTED
            gm_grpc.add_GeneralModelServiceServicer_to_server(self.servicer, self.grpc)
            add_oip_servicer(self.grpc, self.oip)
            self.health = add_health(self.grpc, [SERVICE_NAME, OIP_SERVICE])
            self.grpc_port = add_grpc_port(self.grpc, f"0.0.0.0:{self.args.grpc_port}", self.security)
            self.grpc.start()
            self.dataplane.on_serving(self.health.follow)  # SERVING now (the model is loaded)
        return self

    def stop(self) -> None:
        """gRPC health NOT_SERVING (Watch streams told and ended), stop listening, finish what is running."""
        if self.health is not None:
            self.health.stop()
        self.dataplane.close()
        asyncio.run_coroutine_threadsafe(self.brpc.stop(), self.loop).result()
        if self.grpc is not None:
            self.grpc.stop(grace=5).wait()
        self.loop.call_soon_threadsafe(self.loop.stop)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; bad flags or model are one line and exit code 2."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", message="No ccache found")
    args = parse_args(argv)
    setup_logging(args.log_format)
    raise_open_file_limit()
    try:
        models = build_service(args)
        server = ModelServer(models, args).start()
    except (ServingError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    default = models.find(server.default_model)
    log.info("GeneralModelService (model %r version %s) and OIP models %s ready: baidu_std + HTTP on port %d%s; %s",
             server.default_model, default.version, ", ".join(repr(name) for name in models.names), server.port,
             f", gRPC on port {server.grpc_port}" if server.grpc else "",
             ", ".join(f"{key} {value}" for key, value in default.service.predictor.engine_info.items()))
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    models.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
