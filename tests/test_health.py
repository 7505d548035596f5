"""The gRPC health servicer on a real grpc.server: races between status changes and Watch streams coming and going."""

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.protocols.health import add_health

Status = health_pb2.HealthCheckResponse


def test_status_changes_racing_closing_watch_streams_never_stall_the_server() -> None:
    """grpcio-health-checking's own sync servicer deadlocks here: it sends under the lock its close callback needs."""
    server = grpc.server(ThreadPoolExecutor(2))
    health = add_health(server, ["svc"])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(10)]
        for channel in channels:
            stub = health_pb2_grpc.HealthStub(channel)
            for call in [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(10)]:
                assert next(call).status == Status.NOT_SERVING
        flipped = threading.Event()

        def flip() -> None:
            for index in range(400):
                health.follow(index % 2 == 0)
            flipped.set()

        threading.Thread(target=flip, daemon=True).start()
        for channel in channels:
            channel.close()
        assert flipped.wait(10)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert stub.Check(health_pb2.HealthCheckRequest(service="svc"), timeout=10).status == Status.NOT_SERVING
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=10)
            assert next(watch).status == Status.NOT_SERVING
            health.stop()
            assert [reply.status for reply in watch] == [] and watch.code() == grpc.StatusCode.OK
    finally:
        server.stop(0)


def test_unknown_names_check_not_found_and_watch_service_unknown() -> None:
    server = grpc.server(ThreadPoolExecutor(1))
    health = add_health(server, ["svc"])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        health.follow(True)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as unknown:
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "'svc'" in unknown.value.details()
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
            assert next(watch).status == Status.SERVICE_UNKNOWN
            health.stop()  # a stream of an unknown name ends at the stop too
            assert list(watch) == [] and watch.code() == grpc.StatusCode.OK
    finally:
        server.stop(0)
