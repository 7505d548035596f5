"""The one error table: err_no for every error, and the wire statuses of those a transport must see."""

from pathlib import Path

import grpc
import pytest

from serving.errors import (
    AuthError,
    BrpcCode,
    ClosedError,
    DeadlineExceededError,
    ErrorCode,
    InitError,
    InputError,
    OverloadedError,
    PayloadError,
    PayloadTooLargeError,
    ServiceNotFoundError,
    TypeCheckError,
    error_of,
    http_status_of,
    user_code_error,
    wire_status_of,
)


@pytest.mark.parametrize(("error", "err_no", "http", "grpc_code", "brpc_code", "oip"), [
    (AuthError("token"), 3004, 401, grpc.StatusCode.UNAUTHENTICATED, BrpcCode.ERPCAUTH,
     (401, grpc.StatusCode.UNAUTHENTICATED)),
    (OverloadedError("busy"), 5000, 503, grpc.StatusCode.RESOURCE_EXHAUSTED, BrpcCode.ELIMIT,
     (503, grpc.StatusCode.RESOURCE_EXHAUSTED)),
    (ClosedError("stopping"), 3001, 200, None, BrpcCode.ELOGOFF, (503, grpc.StatusCode.UNAVAILABLE)),
    (PayloadError("gzip"), 5000, 400, grpc.StatusCode.INVALID_ARGUMENT, BrpcCode.EREQUEST,
     (400, grpc.StatusCode.INVALID_ARGUMENT)),
    (PayloadTooLargeError("big"), 5000, 200, None, None, (413, grpc.StatusCode.INVALID_ARGUMENT)),
    (InputError("bad"), 5000, 200, None, None, (400, grpc.StatusCode.INVALID_ARGUMENT)),
    (ServiceNotFoundError("no model"), 3002, 200, None, None, (404, grpc.StatusCode.NOT_FOUND)),
    (InitError("loading"), 3003, 200, None, None, (503, grpc.StatusCode.UNAVAILABLE)),
    (DeadlineExceededError("late"), 6000, 200, None, None, (504, grpc.StatusCode.DEADLINE_EXCEEDED)),
    (TypeCheckError("not str"), 7000, 200, None, None, (500, grpc.StatusCode.INTERNAL)),
])
def test_each_error_has_its_err_no_and_wire_statuses(error: Exception, err_no: int, http: int,
                                                      grpc_code: grpc.StatusCode | None,
                                                      brpc_code: BrpcCode | None,
                                                      oip: tuple[int, grpc.StatusCode]) -> None:
    status = wire_status_of(error)
    assert error_of(error) == (err_no, str(error))
    assert (status.http_status, status.grpc_code, status.brpc_code) == (http, grpc_code, brpc_code)
    assert (status.oip_http, status.oip_grpc) == oip  # the Open Inference Protocol: every error is a status
    assert http_status_of(error) == http


def test_unexpected_exceptions_are_unknown_and_travel_in_the_body() -> None:
    assert error_of(KeyError("x")) == (ErrorCode.UNKNOWN, "internal error: KeyError: 'x'")
    assert wire_status_of(KeyError("x")) == wire_status_of(None)
    assert (wire_status_of(KeyError("x")).oip_http, wire_status_of(KeyError("x")).oip_grpc) == (
        500, grpc.StatusCode.INTERNAL)
    assert wire_status_of(None).http_status == 200


def test_a_user_hook_s_error_names_its_line_and_numpy_2_s_fix(tmp_path: Path) -> None:
    script = tmp_path / "my_service.py"
    script.write_text("import numpy as np\n\n\ndef decode(data):\n    return np.fromstring(data, np.uint8)\n")
    namespace: dict = {}
    exec(compile(script.read_text(), str(script), "exec"), namespace)
    with pytest.raises(ValueError) as raised:
        namespace["decode"](b"abc")
    error = user_code_error("imagenet", raised.value)
    assert error.message == ("op imagenet: ValueError: The binary mode of fromstring is removed, use frombuffer "
                             "instead at my_service.py:5; NumPy 2 removed binary np.fromstring; "
                             "`python -m serving.migrate my_service.py --write` rewrites it")
    assert user_code_error("imagenet", KeyError("label")).message == "op imagenet: KeyError: 'label'"
