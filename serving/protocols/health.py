"""gRPC `grpc.health.v1.Health/Check` for the gRPC ports (Watch is left UNIMPLEMENTED: it would pin a worker)."""

from collections.abc import Callable

import grpc

from serving.proto import health_pb2, health_pb2_grpc

Status = health_pb2.HealthCheckResponse


class HealthServicer(health_pb2_grpc.HealthServicer):
    """SERVING once `ready()` is true, NOT_SERVING before; "" names the whole server."""

    def __init__(self, ready: Callable[[], bool], services: list[str]) -> None:
        self.ready = ready
        self.services = {"", *services}

    def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 - the proto's method name
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        """The standard answer; an unknown service name is NOT_FOUND, as the protocol says."""
        if request.service not in self.services:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}; "
                                                     f"known: {sorted(self.services)}")
        return Status(status=Status.SERVING if self.ready() else Status.NOT_SERVING)


def add_health(server: grpc.Server, ready: Callable[[], bool], services: list[str]) -> None:
    """Register the health service beside the server's own."""
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(ready, services), server)
