"""gRPC `grpc.health.v1.Health` (Check and Watch) on the gRPC ports, on grpcio-health-checking's proto and stubs.

The servicer is this module's: the package's sync servicer sends Watch updates while holding the lock
that its stream-close callback takes on grpc.server's single event thread, so a status change racing a
closing stream deadlocks the whole server (seen here when a stop met streams being cancelled). Here
no servicer lock is held while a message is sent. Watch is non-blocking, as in the package: the handler
registers the stream and returns, so a stream holds no thread; Check and Watch run on a small pool of
their own, so a probe never waits behind inference for a worker.
"""

import collections
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = health_pb2.HealthCheckResponse
Send = Callable[[health_pb2.HealthCheckResponse | None], None]  # grpc.server's send_response_callback; None ends
# One for every server of the process: calls are instant, but for a pipeline's check of its remote model
# servers (at most one a second, PROBE_TIMEOUT_S per endpoint), which the HTTP /ready probe runs here too
PROBES = ThreadPoolExecutor(2, thread_name_prefix="health")


class _Stream:
    """One Watch stream: sends are serialised and always carry the status current at sending, never a stale one."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.lock = threading.Lock()
        self.sent: int | None = None
        self.ended = False

    def update(self, current: Callable[[], int]) -> None:
        """Send the current status unless the stream already has it (or has ended)."""
        with self.lock:
            status = current()
            if status != self.sent and not self.ended:
                self.send(Status(status=status))
                self.sent = status

    def end(self) -> None:
        """Finish the stream with OK (once)."""
        with self.lock:
            if not self.ended:
                self.ended = True
                self.send(None)


class HealthServicer(health_pb2_grpc.HealthServicer):
    """NOT_SERVING until ready, SERVING, NOT_SERVING once stopping: after `stop` nothing changes, streams end.

    `probe`: what SERVING also needs when Check asks (a pipeline's remote model servers answering); Watch
    follows the pushed status only.
    """

    def __init__(self, names: list[str], probe: Callable[[], bool] = lambda: True) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._status = dict.fromkeys(names, Status.NOT_SERVING)
        self._streams: dict[str, set[_Stream]] = collections.defaultdict(set)
        self._stopped = False

    def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 - the proto's method name
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        """The status now (SERVING only while the probe agrees); an unknown name is NOT_FOUND, as the protocol says."""
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}; "
                                                     f"known: {sorted(self._status)}")
        if status == Status.SERVING and not self._probe():
            status = Status.NOT_SERVING
        return Status(status=status)

    Check.experimental_thread_pool = PROBES  # type: ignore[attr-defined]  # grpc.server reads these per handler

    def Watch(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 - the proto's method name
              context: grpc.ServicerContext, send_response_callback: Send) -> None:
        """The status now, then each change (SERVICE_UNKNOWN for an unknown name, as the protocol says)."""
        service, stream = request.service, _Stream(send_response_callback)
        with self._lock:
            self._streams[service].add(stream)
            stopped = self._stopped
        if not context.add_callback(lambda: self._forget(service, stream)):
            self._forget(service, stream)
        stream.update(lambda: self._current(service))
        if stopped:
            stream.end()

    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]
    Watch.experimental_thread_pool = PROBES  # type: ignore[attr-defined]

    def follow(self, serving: bool) -> None:
        """SERVING or NOT_SERVING, as the service is ready or not (ignored once stopped); Watch streams are told."""
        with self._lock:
            if self._stopped:
                return
            self._status = dict.fromkeys(self._status, Status.SERVING if serving else Status.NOT_SERVING)
        self._broadcast()

    def stop(self) -> None:
        """NOT_SERVING for good, sent to every Watch stream, which then ends: open streams would hold the grace."""
        with self._lock:
            self._stopped = True
            self._status = dict.fromkeys(self._status, Status.NOT_SERVING)
        for stream in self._broadcast():
            stream.end()

    def _broadcast(self) -> list[_Stream]:
        with self._lock:
            streams = [(service, stream) for service, group in self._streams.items() for stream in group]
        for service, stream in streams:
            stream.update(lambda service=service: self._current(service))
        return [stream for _, stream in streams]

    def _current(self, service: str) -> int:
        with self._lock:
            return self._status.get(service, Status.SERVICE_UNKNOWN)

    def _forget(self, service: str, stream: _Stream) -> None:
        with self._lock:
            self._streams[service].discard(stream)
            if not self._streams[service]:
                del self._streams[service]


def add_health(server: grpc.Server, services: list[str], probe: Callable[[], bool] = lambda: True) -> HealthServicer:
    """Register health for "" (the whole server) and `services` beside the server's own, all NOT_SERVING."""
    servicer = HealthServicer(["", *services], probe)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
