"""What a request carries through every stage, as one immutable value passed along instead of thread-locals."""

import dataclasses
import math
import time
from dataclasses import dataclass

import grpc

from serving.errors import DeadlineExceededError, InputError

TIMEOUT_HEADER = "X-Request-Timeout-Ms"  # an HTTP caller's own deadline, in milliseconds from sending


@dataclass(frozen=True)
class RequestContext:
    """Deadline (time.monotonic(); inf: none), the caller's log id, the protocol it came in on and the client."""

    deadline: float = math.inf
    log_id: int = 0
    protocol: str = ""
    client: str = ""

    @classmethod
    def arrived(cls, protocol: str, client: str = "", log_id: int = 0, timeout_ms: float = 0.0) -> "RequestContext":
        """A request that just arrived, with the caller's own timeout (0: the caller set none)."""
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms > 0 else math.inf
        return cls(deadline, log_id, protocol, client)

    def within(self, timeout_ms: float) -> "RequestContext":
        """The same request, due no later than `timeout_ms` from now (the server's own budget)."""
        return dataclasses.replace(self, deadline=min(self.deadline, time.monotonic() + timeout_ms / 1000))

    def remaining_s(self) -> float:
        """Seconds left until the deadline (inf when there is none; <= 0 once it has passed)."""
        return self.deadline - time.monotonic()

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self.remaining_s() <= 0

    def remaining_ms(self) -> float | None:
        """Milliseconds left, rounded for logs; None when the request has no deadline."""
        return None if math.isinf(self.deadline) else round(self.remaining_s() * 1000, 1)


def timeout_header_ms(value: str | None) -> float:
    """The caller's own deadline from the X-Request-Timeout-Ms header (0: none)."""
    if value is None:
        return 0.0
    try:
        timeout_ms = float(value)
    except ValueError:
        timeout_ms = -1.0
    if not 0 < timeout_ms < math.inf:
        raise InputError(f"header {TIMEOUT_HEADER}: {value!r} is not a positive number of milliseconds")
    return timeout_ms


def client_timeout_ms(context: grpc.ServicerContext) -> float:
    """What is left of the caller's gRPC deadline, in ms (0: none); a passed one is refused before any work."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e9:
        return 0.0
    if remaining <= 0:
        raise DeadlineExceededError("the call's gRPC deadline passed before it was started")
    return remaining * 1000
