"""The protocol-neutral data plane: every front end turns its wire format into a PipelineRequest."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from serving import metrics
from serving.errors import ClosedError, InitError, OverloadedError, ServiceNotFoundError, error_of, http_status_of
from serving.logs import request_line

log = logging.getLogger("serving.dataplane")

PREDICTION_METHOD = "prediction"


@dataclass
class PipelineRequest:
    """Paddle Serving's pipeline Request, decoded once: key/value pairs, tensors and tracing fields."""

    keys: list[str]
    values: list[str]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""
    method: str = ""
    logid: int = 0
    clientip: str = ""
    timeout_ms: float = 0.0  # the caller's own deadline (gRPC deadline, X-Request-Timeout-Ms); 0: none


@dataclass
class PipelineResponse:
    """Paddle Serving's pipeline Response; `err_no` 0 means success."""

    err_no: int = 0
    err_msg: str = ""
    keys: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    http_status: int = 200

    @classmethod
    def from_result(cls, result: dict[str, str]) -> "PipelineResponse":
        """Success: the last op's result dict as parallel key/value lists."""
        return cls(keys=list(result), values=list(result.values()))

    @classmethod
    def from_error(cls, exc: BaseException) -> "PipelineResponse":
        """Failure: err_no and err_msg from the one error table."""
        err_no, err_msg = error_of(exc)
        return cls(err_no=err_no, err_msg=err_msg, http_status=http_status_of(exc))


class DataPlane:
    """Routes a request to the service's DAG and turns every outcome into a PipelineResponse.

    Front ends start before the models load (so /health answers); until `attach`, requests get
    err_no 3003 and /ready is 503.
    """

    def __init__(self, service_name: str, max_inflight: int = 1 << 30) -> None:
        self.service_name = service_name
        self.max_inflight = max_inflight
        self._run: Callable[[PipelineRequest], dict[str, str]] | None = None
        self.metadata: dict = {}
        self._inflight = 0
        self._closing = False
        self._idle = threading.Condition()
        self._listeners: list[Callable[[bool], None]] = []

    def close(self) -> None:
        """Stop taking requests: new ones get err_no 3001; those running finish."""
        with self._idle:
            self._closing = True
        self._announce()

    def on_serving(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(serving)` now and whenever that changes, so health services follow loading and stopping."""
        with self._idle:
            self._listeners.append(listener)
            serving = self._run is not None and not self._closing
        listener(serving)

    def _announce(self) -> None:
        with self._idle:
            serving, listeners = self._run is not None and not self._closing, list(self._listeners)
        for listener in listeners:
            listener(serving)

    def drain(self, timeout_s: float) -> bool:
        """Wait until no request is running (True) or the timeout passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout_s)

    @property
    def ready(self) -> bool:
        """True once the models are loaded and warmed up."""
        return self._run is not None

    def attach(self, run: Callable[[PipelineRequest], dict[str, str]], metadata: dict) -> None:
        """Start answering: the DAG is built and warmed up."""
        self.metadata = metadata
        with self._idle:
            self._run = run
        self._announce()

    def check_route(self, name: str, method: str) -> None:
        """Only `/{service_name}/prediction` exists (gRPC clients may leave both empty); say which path does."""
        if name not in ("", self.service_name) or method not in ("", PREDICTION_METHOD):
            raise ServiceNotFoundError(
                f"no service {name!r} with method {method!r}; this server answers POST "
                f"/{self.service_name}/{PREDICTION_METHOD} (gRPC: name={self.service_name!r})"
            )

    def infer(self, request: PipelineRequest, protocol: str) -> PipelineResponse:
        """Run one request; never raises. Counts it in the metrics by protocol and err_no."""
        started = time.perf_counter()
        metrics.INFLIGHT.inc(protocol=protocol)
        with self._idle:
            self._inflight += 1
            inflight = self._inflight
        try:
            if inflight > self.max_inflight:
                raise OverloadedError(f"{inflight - 1} requests in flight reach limits.max_inflight "
                                      f"({self.max_inflight}); retry later or on another instance")
            self.check_route(request.name, request.method)
            if self._closing:
                raise ClosedError("the service is stopping; retry on another instance")
            if self._run is None:
                raise InitError("the service is still loading its models; retry when GET /ready answers 200")
            response = PipelineResponse.from_result(self._run(request))
        except Exception as exc:  # every failure becomes err_no/err_msg; the server keeps serving
            response = PipelineResponse.from_error(exc)
            if response.err_no >= 10000:
                log.exception("logid %s: unexpected error", request.logid)
        finally:
            metrics.INFLIGHT.inc(-1, protocol=protocol)
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
        elapsed = time.perf_counter() - started
        metrics.REQUESTS.inc(protocol=protocol, err_no=response.err_no)
        metrics.LATENCY.observe(elapsed, protocol=protocol)
        request_line(log, request.logid, protocol, response.err_no, elapsed)
        return response
