"""gRPC PipelineService and GRPCInferenceService (OIP) on rpc_port: thin adapters, on the threaded grpc.server.

grpc.aio (handlers awaiting the blocking data plane on a bounded pool) was measured against it and
lost: same DAG, loopback, clients in other processes, ABBA order, a loaded 2-core machine. With
SqueezeNet1_1 it matched at one client (mean latency ratio 0.99-1.01) but served 3-10 % fewer
requests/s at four; with model-free ops it took 18-34 % longer per call and served 40-60 % fewer
requests/s (also without the pool hop, on uvloop, or via migration_thread_pool). Connections cost no thread
either way (gRPC's C core holds them), Watch streams hold none, and health has its own pool.
"""

import threading
from concurrent import futures

import grpc

from serving.config import LimitsConfig
from serving.context import RequestContext, client_timeout_ms
from serving.dataplane import DataPlane, PipelineResponse
from serving.errors import DeadlineExceededError, InputError
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from serving.protocols.health import HealthServicer, add_health
from serving.protocols.oip import SERVICE_NAME as OIP_SERVICE
from serving.protocols.oip import OipService, add_oip_servicer
from serving.protocols.pipeline_codec import request_from_proto, response_to_proto
from serving.security import SecurityConfig, add_grpc_port, grpc_interceptors


class PipelineServicer(pb_grpc.PipelineServiceServicer):
    """`inference(Request) returns (Response)`: decode, run, encode."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def inference(self, request: pb.Request, context: grpc.ServicerContext) -> pb.Response:
        """Errors travel in err_no/err_msg, as Paddle Serving's clients expect, never as gRPC status."""
        try:
            decoded = request_from_proto(request, context.peer())
            ctx = RequestContext.arrived("grpc", decoded.clientip, decoded.logid, client_timeout_ms(context))
        except (InputError, DeadlineExceededError) as exc:
            return response_to_proto(PipelineResponse.from_error(exc))
        return response_to_proto(self.dataplane.infer(decoded, ctx).response)


class GrpcServer:
    """The gRPC server and its health: a stop announces NOT_SERVING and ends Watch streams before the grace starts."""

    def __init__(self, server: grpc.Server, health: HealthServicer) -> None:
        self.server = server
        self.health = health

    def stop(self, grace: float | None) -> threading.Event:
        """grpc.Server.stop, after the health service's own stop."""
        self.health.stop()
        return self.server.stop(grace)


def grpc_options(limits: LimitsConfig, reuse_port: bool = False) -> list[tuple[str, int]]:
    """The server's bounds from `limits`, as the HTTP ports have them: message size, connections, timeouts."""
    return [("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", limits.max_body_bytes),
            ("grpc.max_allowed_incoming_connections", limits.max_connections),  # beyond: refused at accept
            ("grpc.server_handshake_timeout_ms", limits.client_timeout_ms),  # TLS and HTTP/2 preface must arrive
            ("grpc.max_connection_idle_ms", limits.keepalive_timeout_ms),  # idle connections get GOAWAY
            # Old connections get GOAWAY too, so clients resolve names again and reach new replicas behind them;
            # calls in flight get the request timeout to finish.
            ("grpc.max_connection_age_ms", limits.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", limits.request_timeout_ms),
            ("grpc.so_reuseport", int(reuse_port))]


def start_grpc_server(dataplane: DataPlane, oip: OipService, port: int, workers: int, limits: LimitsConfig,
                      reuse_port: bool = False, security: SecurityConfig | None = None) -> tuple[GrpcServer, int]:
    """PipelineService and the Open Inference Protocol's GRPCInferenceService on `port` (0 = any free port).

    SO_REUSEPORT only for worker processes, so a busy port is an error.
    """
    security = security or SecurityConfig()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=grpc_options(limits, reuse_port), interceptors=grpc_interceptors(security),
                         maximum_concurrent_rpcs=limits.max_inflight)  # beyond it: RESOURCE_EXHAUSTED at once
    pb_grpc.add_PipelineServiceServicer_to_server(PipelineServicer(dataplane), server)
    add_oip_servicer(server, oip)
    health = add_health(server, [pb.DESCRIPTOR.services_by_name["PipelineService"].full_name, OIP_SERVICE],
                        probe=lambda: not dataplane.waiting_for())
    bound = add_grpc_port(server, f"0.0.0.0:{port}", security)
    if bound == 0:
        raise OSError(f"cannot listen on rpc_port {port}")
    server.start()
    dataplane.on_serving(health.follow)
    return GrpcServer(server, health), bound
