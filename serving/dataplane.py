"""The protocol-neutral data plane: every front end turns its wire format into a PipelineRequest."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from serving.errors import ServiceNotFoundError, error_of

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


class DataPlane:
    """Routes a request to the service's DAG and turns every outcome into a PipelineResponse."""

    def __init__(self, service_name: str, run: Callable[[PipelineRequest], dict[str, str]]) -> None:
        self.service_name = service_name
        self._run = run

    def check_route(self, name: str, method: str) -> None:
        """Only `/{service_name}/prediction` exists (gRPC clients may leave both empty); say which path does."""
        if name not in ("", self.service_name) or method not in ("", PREDICTION_METHOD):
            raise ServiceNotFoundError(
                f"no service {name!r} with method {method!r}; this server answers POST "
                f"/{self.service_name}/{PREDICTION_METHOD} (gRPC: name={self.service_name!r})"
            )

    def infer(self, request: PipelineRequest) -> PipelineResponse:
        """Run one request; never raises."""
        started = time.perf_counter()
        try:
            self.check_route(request.name, request.method)
            response = PipelineResponse.from_result(self._run(request))
        except Exception as exc:  # every failure becomes err_no/err_msg; the server keeps serving
            response = PipelineResponse.from_error(exc)
            if response.err_no >= 10000:
                log.exception("logid %s: unexpected error", request.logid)
        log.debug("logid %s: err_no %s in %.1f ms", request.logid, response.err_no,
                  (time.perf_counter() - started) * 1e3)
        return response
