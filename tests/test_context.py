"""RequestContext: the caller's deadline, narrowed by the server's budget, never widened."""

import dataclasses
import math
import time

import pytest

from serving.context import RequestContext, timeout_header_ms
from serving.errors import InputError


def test_arrived_without_timeout_has_no_deadline() -> None:
    ctx = RequestContext.arrived("http", "127.0.0.1", 7)
    assert math.isinf(ctx.deadline) and ctx.remaining_ms() is None and not ctx.expired
    assert (ctx.protocol, ctx.client, ctx.log_id) == ("http", "127.0.0.1", 7)


def test_within_narrows_but_never_widens() -> None:
    ctx = RequestContext.arrived("grpc", timeout_ms=500)
    assert 0 < ctx.within(100).remaining_s() <= 0.1
    assert ctx.within(60_000).deadline == ctx.deadline
    assert ctx.within(100).log_id == ctx.log_id


def test_context_is_immutable_and_expires() -> None:
    ctx = RequestContext(time.monotonic() - 0.001, 3, "brpc")
    assert ctx.expired
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.log_id = 4  # type: ignore[misc]


@pytest.mark.parametrize("value", ["0", "-5", "abc", "inf", "nan"])
def test_timeout_header_must_be_a_positive_number(value: str) -> None:
    with pytest.raises(InputError, match="X-Request-Timeout-Ms"):
        timeout_header_ms(value)


def test_timeout_header_absent_or_valid() -> None:
    assert timeout_header_ms(None) == 0.0 and timeout_header_ms("250.5") == 250.5
