"""The tensor-level model server, flags named like Paddle Serving's `paddle_serving_server.serve`.

    python -m serving.model_server --model DIR/serving_server --port 9292 [--thread 4] [--gpu_ids 0]
        [--use_trt --precision fp16] [--mem_optim | --mem_optim_off] [--ir_optim] [--use_mkldnn] [--grpc_port 9393]
        [--tls_cert FILE --tls_key FILE] [--auth_token_env VAR]

One port answers baidu_std (brpc) `GeneralModelService.inference`/`.debug` and HTTP
`POST /GeneralModelService/inference`; gRPC for the same service is on `--grpc_port`, because
Python's gRPC server cannot share a socket with another protocol. Both also speak the Open Inference
Protocol (HTTP /v2/..., gRPC inference.GRPCInferenceService), the model named like its model card.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import warnings
from concurrent import futures
from pathlib import Path

import grpc

from serving.config import LimitsConfig, LocalServiceConf
from serving.dataplane import DataPlane
from serving.errors import ConfigError, ServingError
from serving.files import raise_open_file_limit
from serving.logs import FORMATS, setup_logging
from serving.model_card import load_card
from serving.model_config import SERVER_CONF, read_config
from serving.model_service import SERVICE_NAME, ModelService
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Paddle Serving's serve flags (the ones that apply to a local Paddle Inference model)."""
    parser = argparse.ArgumentParser(prog="python -m serving.model_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the exported serving_server folder")
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


def build_service(args: argparse.Namespace) -> ModelService:
    """Validate flags the way config.yml is validated, then create the predictor pool."""
    from serving.predictor import LocalPredictor, settings_from_conf

    limits = limits_from_args(args)
    folder = Path(args.model).resolve()
    if not (folder / SERVER_CONF).is_file():
        raise ConfigError(f"--model {args.model}: no {SERVER_CONF} there; export one with python -m export")
    conf = LocalServiceConf(model_config=str(folder), device_type=2 if args.use_trt else (1 if args.gpu_ids else 0),
                            devices=args.gpu_ids, thread_num=args.cpu_threads, mem_optim=args.mem_optim,
                            ir_optim=args.ir_optim, precision=args.precision, use_mkldnn=args.use_mkldnn,
                            engine=args.engine, cpu_spin_wait=args.cpu_spin_wait)
    conf.validate("--flags")
    model_config = read_config(folder / SERVER_CONF)
    predictor = LocalPredictor(settings_from_conf(conf, model_config, path="--flags"), model_config,
                               pool_size=args.thread)
    card = load_card(folder) if (folder.parent / "model_card.yaml").is_file() else None
    return ModelService(predictor, model_config, card, limits)


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
    """The servers of one model: the asyncio brpc/HTTP port in its own thread, and optional gRPC."""

    def __init__(self, service: ModelService, args: argparse.Namespace) -> None:
        self.args = args
        self.security = security_from_args(args)
        self.limits = limits_from_args(args)  # the port's own flags: a service may be shared by several servers
        limits = ServerLimits(max_body_bytes=self.limits.max_body_bytes,
                              idle_timeout_s=self.limits.keepalive_timeout_ms / 1000,
                              max_connections=self.limits.max_connections,
                              client_timeout_s=self.limits.client_timeout_ms / 1000)
        self.dataplane = DataPlane(service, args.max_inflight, inflight_setting="--max_inflight")
        name = service.card.model if service.card is not None else Path(args.model).resolve().parent.name
        self.oip = OipService(self.dataplane, OipEndpoint(service, ModelServiceModel(service, name)))
        # one thread more than admitted, to refuse at once
        self.brpc = BrpcServer([rpc_service(self.dataplane)], http_routes(self.dataplane), args.max_inflight + 1,
                               limits, security=self.security, rest=OipRest(self.oip), describe=self.describe)
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
        server = ModelServer(build_service(args), args).start()
    except (ServingError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("GeneralModelService and OIP model %r ready: baidu_std + HTTP on port %d%s; %s",
             server.oip.endpoint.model.name, server.port,
             f", gRPC on port {server.grpc_port}" if server.grpc else "",
             ", ".join(f"{key} {value}" for key, value in server.dataplane.endpoint.predictor.engine_info.items()))
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
