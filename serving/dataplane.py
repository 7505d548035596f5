"""The protocol-neutral data plane both servers run on: admission, deadline, metrics and one log line per request.

Front ends turn their wire format into a request and a RequestContext, call `DataPlane.infer`, and turn the
Answer back into their wire format; what is being served (the pipeline's DAG or one model) is an Endpoint.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from serving import metrics
from serving.context import RequestContext
from serving.errors import ClosedError, InitError, OverloadedError, ServiceNotFoundError, error_of
from serving.logs import request_line

log = logging.getLogger("serving.dataplane")

PREDICTION_METHOD = "prediction"
READY_TTL_S = 1.0  # readiness of dependencies is asked at most this often, however many probes come
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Endpoint(Protocol[Req, Resp]):
    """What the data plane serves: a request type in, a response type out, errors as that response."""

    @property
    def ready(self) -> bool:
        """True once it can answer (models loaded and warm)."""

    def metadata(self) -> dict:
        """What GET /metadata shows."""

    def check(self, request: Req) -> None:
        """Cheap checks before admission (e.g. the route); raises a ServingError."""

    def run(self, request: Req, ctx: RequestContext) -> Resp:
        """The answer; raises a ServingError (or anything else: err_no 10000) on failure."""

    def failure(self, exc: BaseException, request: Req, ctx: RequestContext) -> Resp:
        """`exc` as this endpoint's response (err_no and err_msg, or the protocol's error, from the error table)."""


@dataclass(frozen=True)
class Answer(Generic[Resp]):
    """The response, and the error it carries (None on success) so front ends can pick their wire status."""

    response: Resp
    error: BaseException | None = None


class DataPlane(Generic[Req, Resp]):
    """Runs requests on an endpoint within limits; never raises.

    Front ends start before the models load (so /health answers); until the endpoint is ready, requests
    get err_no 3003 and /ready is 503.
    """

    def __init__(self, endpoint: Endpoint[Req, Resp], max_inflight: int = 1 << 30, budget_ms: float = 0.0,
                 inflight_setting: str = "limits.max_inflight") -> None:
        self.endpoint = endpoint
        self.max_inflight = max_inflight
        self.inflight_setting = inflight_setting  # what an operator raises, named in the overload error
        self.budget_ms = budget_ms  # the server's own bound on a request's time (0: only the caller's)
        self._inflight = 0
        self._closing = False
        self._idle = threading.Condition()
        self._listeners: list[Callable[[bool], None]] = []
        self._dependencies: Callable[[], list[str]] = list
        self._checked = threading.Lock()
        self._checked_at = -READY_TTL_S
        self._waiting: list[str] = []

    @property
    def ready(self) -> bool:
        """True once the endpoint can answer and the server is not stopping."""
        return self.endpoint.ready and not self._closing

    @property
    def ready_for_traffic(self) -> bool:
        """What readiness probes report: ready, and every dependency answers (requests are not gated on those)."""
        return self.ready and not self.waiting_for()

    def depend_on(self, waiting_for: Callable[[], list[str]], watch: bool = False) -> None:
        """Readiness probes also need `waiting_for()` (what does not answer yet, with why) to be empty; with `watch`,
        a thread asks it every READY_TTL_S and announces each change, so gRPC health Watch streams follow it too."""
        self._dependencies = waiting_for
        if watch:
            threading.Thread(target=self._follow_dependencies, name="dependencies", daemon=True).start()

    def _follow_dependencies(self) -> None:
        """Announce whenever readiness for traffic changes, until the server stops."""
        last = self.ready_for_traffic
        while not self._closing:
            time.sleep(READY_TTL_S)
            now = self.ready_for_traffic
            if now != last and not self._closing:
                self.announce()
            last = now

    def waiting_for(self) -> list[str]:
        """The dependencies that do not answer, asked at most once per READY_TTL_S so a flood of probes costs the
        model servers one check a second; probes running meanwhile wait for that check and share its answer."""
        with self._checked:
            if time.monotonic() - self._checked_at >= READY_TTL_S:
                self._waiting = self._dependencies()
                self._checked_at = time.monotonic()
            return self._waiting

    @property
    def metadata(self) -> dict:
        """The endpoint's metadata (GET /metadata)."""
        return self.endpoint.metadata()

    def close(self) -> None:
        """Stop taking requests: new ones get err_no 3001; those running finish."""
        with self._idle:
            self._closing = True
        self.announce()

    def on_serving(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(serving)` now and on every announce, so health services follow loading, dependencies and
        stopping."""
        with self._idle:
            self._listeners.append(listener)
        listener(self.ready_for_traffic)

    def announce(self) -> None:
        """Tell the listeners whether traffic is served now (after the endpoint became ready, when its dependencies
        come or go, and on close)."""
        with self._idle:
            listeners = list(self._listeners)
        serving = self.ready_for_traffic
        for listener in listeners:
            listener(serving)

    def drain(self, timeout_s: float) -> bool:
        """Wait until no request is running (True) or the timeout passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout_s)

    def infer(self, request: Any, ctx: RequestContext, endpoint: Endpoint | None = None) -> Answer:
        """Run one request; counts it in the metrics by protocol and err_no and logs one line.

        `endpoint`: an adapter over this plane's endpoint that takes another protocol's request (the Open
        Inference Protocol's); it shares the admission limit, the closing state, the metrics and the log.
        """
        endpoint = endpoint or self.endpoint
        started = time.perf_counter()
        caller_ms = ctx.remaining_ms()
        if self.budget_ms > 0:
            ctx = ctx.within(self.budget_ms)
        metrics.INFLIGHT.labels(protocol=ctx.protocol).inc()
        with self._idle:
            self._inflight += 1
            inflight = self._inflight
        try:
            if inflight > self.max_inflight:
                raise OverloadedError(f"{inflight - 1} requests in flight reach {self.inflight_setting} "
                                      f"({self.max_inflight}); retry later or on another instance")
            endpoint.check(request)
            if self._closing:
                raise ClosedError("the service is stopping; retry on another instance")
            if not endpoint.ready:
                raise InitError("the service is still loading its models; retry when GET /ready answers 200")
            answer = Answer(endpoint.run(request, ctx))
        except Exception as exc:  # every failure becomes err_no/err_msg; the server keeps serving
            answer = Answer(endpoint.failure(exc, request, ctx), exc)
            if error_of(exc)[0] >= 10000:
                log.exception("logid %s: unexpected error", ctx.log_id)
        finally:
            metrics.INFLIGHT.labels(protocol=ctx.protocol).dec()
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
        elapsed = time.perf_counter() - started
        err_no = 0 if answer.error is None else error_of(answer.error)[0]
        metrics.REQUESTS.labels(err_no=err_no, protocol=ctx.protocol).inc()
        metrics.LATENCY.labels(protocol=ctx.protocol).observe(elapsed)
        request_line(log, ctx.log_id, ctx.protocol, err_no, elapsed, caller_ms)
        return answer


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


@dataclass
class PipelineResponse:
    """Paddle Serving's pipeline Response; `err_no` 0 means success."""

    err_no: int = 0
    err_msg: str = ""
    keys: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    @classmethod
    def from_result(cls, result: dict[str, str]) -> "PipelineResponse":
        """Success: the last op's result dict as parallel key/value lists."""
        return cls(keys=list(result), values=list(result.values()))

    @classmethod
    def from_error(cls, exc: BaseException) -> "PipelineResponse":
        """Failure: err_no and err_msg from the one error table."""
        err_no, err_msg = error_of(exc)
        return cls(err_no=err_no, err_msg=err_msg)


class PipelineEndpoint:
    """The pipeline service: `/{service_name}/prediction` onto the DAG once `attach` hands it over."""

    def __init__(self, service_name: str) -> None:
        self.service_name = service_name
        self._run: Any = None
        self._metadata: Callable[[], dict] = dict

    @property
    def ready(self) -> bool:
        """True once the DAG is built and warmed up."""
        return self._run is not None

    def metadata(self) -> dict:
        """The service's ops, feeds, fetches and model card facts, as they are now (a model may have reloaded)."""
        return self._metadata()

    def attach(self, run: Any, metadata: Callable[[], dict]) -> None:
        """Start answering with `run(request, ctx) -> result dict`: the DAG is built and warmed up."""
        self._metadata = metadata
        self._run = run

    def check(self, request: PipelineRequest) -> None:
        """Only `/{service_name}/prediction` exists (gRPC clients may leave both empty); say which path does."""
        if request.name not in ("", self.service_name) or request.method not in ("", PREDICTION_METHOD):
            raise ServiceNotFoundError(
                f"no service {request.name!r} with method {request.method!r}; this server answers POST "
                f"/{self.service_name}/{PREDICTION_METHOD} (gRPC: name={self.service_name!r})"
            )

    def run(self, request: PipelineRequest, ctx: RequestContext) -> PipelineResponse:
        """The last op's result dict as the Response."""
        return PipelineResponse.from_result(self._run(request, ctx))

    def failure(self, exc: BaseException, request: PipelineRequest, ctx: RequestContext) -> PipelineResponse:
        """err_no and err_msg from the error table."""
        return PipelineResponse.from_error(exc)
