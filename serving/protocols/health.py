"""gRPC `grpc.health.v1.Health` (Check and Watch) on the gRPC ports, from grpcio-health-checking.

The library's servicer answers Watch without holding a worker thread per stream: its handler is
`experimental_non_blocking`, returns at once, and each status change is sent by the thread that sets it.
"""

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

Status = health_pb2.HealthCheckResponse


class Health:
    """"The whole server (name "") and its services: NOT_SERVING until ready, SERVING, NOT_SERVING once stopping."""

    def __init__(self, server: grpc.Server, services: list[str]) -> None:
        self.servicer = health.HealthServicer()
        self.names = ["", *services]
        for name in self.names:
            self.servicer.set(name, Status.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    def follow(self, serving: bool) -> None:
        """Every name SERVING or NOT_SERVING; each open Watch stream is sent the change."""
        for name in self.names:
            self.servicer.set(name, Status.SERVING if serving else Status.NOT_SERVING)

