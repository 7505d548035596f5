"""Every serving error is a typed exception with a Paddle Serving err_no; wire mappings live here only."""

import sysconfig
import traceback
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import grpc

# Text of NumPy 2's errors for what it removed that Paddle Serving-era scripts still call.
NUMPY2_REMOVALS = ("The binary mode of fromstring is removed",)
_LIBRARY_DIRS = tuple(str(Path(sysconfig.get_paths()[key]).resolve()) for key in ("stdlib", "purelib", "platlib"))
_SERVING_DIR = str(Path(__file__).resolve().parent)


class ErrorCode(IntEnum):
    """Paddle Serving's pipeline err_no values (protocols.md §3); 50-99 are the user's product codes."""

    OK = 0
    NOT_IMPLEMENTED = 3000
    CLOSED = 3001
    NO_SERVICE = 3002
    INIT_ERROR = 3003
    UNAUTHENTICATED = 3004  # this kit's: security.auth_token_env is set and the call lacks the token
    CONFIG = 4000
    INPUT = 5000
    TIMEOUT = 6000
    TYPE_CHECK = 7000
    RPC = 8000
    INFERENCE = 9000
    UNKNOWN = 10000


class BrpcCode(IntEnum):
    """brpc's RpcResponseMeta.error_code values this kit uses."""

    OK = 0
    ENOSERVICE = 1001
    ENOMETHOD = 1002
    EREQUEST = 1003
    ERPCAUTH = 1004
    ERPCTIMEDOUT = 1008
    EOVERCROWDED = 1011
    EINTERNAL = 2001
    ELOGOFF = 2003
    ELIMIT = 2004


class ServingError(Exception):
    """Base of all request-time and start-up errors; `code` is the err_no clients see."""

    code: int = ErrorCode.UNKNOWN

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The text clients see as err_msg."""
        return str(self)


class ConfigError(ServingError):
    """config.yml (or a command-line override) is invalid: raised at start, never at request time."""

    code = ErrorCode.CONFIG

    @classmethod
    def invalid(cls, path: str, value: object, allowed: str) -> "ConfigError":
        """The one wording of config errors: the key path, the value it holds, and what is allowed."""
        return cls(f"config {path} = {value!r}: {allowed}")


def require_config(condition: bool, path: str, value: object, allowed: str) -> None:
    """Raise ConfigError.invalid unless `condition` holds."""
    if not condition:
        raise ConfigError.invalid(path, value, allowed)


class InitError(ServingError):
    """An op or predictor failed to initialise."""

    code = ErrorCode.INIT_ERROR


class LoadError(InitError):
    """A model version that could not be loaded or warmed on a repository load; the versions serving keep serving."""


class RepositoryOffError(ServingError):
    """The model repository API was called where it is not enabled."""

    code = ErrorCode.NOT_IMPLEMENTED


class InputError(ServingError):
    """The request is malformed or its data unusable."""

    code = ErrorCode.INPUT


class AuthError(ServingError):
    """The call lacks the configured token (HTTP 401, gRPC UNAUTHENTICATED, baidu_std ERPCAUTH)."""

    code = ErrorCode.UNAUTHENTICATED


class PayloadTooLargeError(InputError):
    """A declared size (Content-Length, frame header, image header, image count) is over a limit."""


class OverloadedError(ServingError):
    """Too many requests in flight or queued: rejected at once instead of queued without bound."""

    code = ErrorCode.INPUT  # Paddle Serving has no overload code; every limit is err_no 5000


class ServiceNotFoundError(ServingError):
    """The request names a service this server does not run."""

    code = ErrorCode.NO_SERVICE


class DeadlineExceededError(ServingError):
    """An op or the whole request ran out of time."""

    code = ErrorCode.TIMEOUT


class TypeCheckError(ServingError):
    """An op returned values of the wrong type (e.g. a non-str result value)."""

    code = ErrorCode.TYPE_CHECK


class InferenceError(ServingError):
    """The predictor failed on well-formed input."""

    code = ErrorCode.INFERENCE


class ClosedError(ServingError):
    """The server is shutting down."""

    code = ErrorCode.CLOSED


class ProductError(ServingError):
    """An error an op's own code reported through its prod_errcode (50-99 by convention)."""


class PayloadError(InputError):
    """A baidu_std message cannot be used (compression, size, not the service's Request): the connection stays."""


@dataclass(frozen=True)
class WireStatus:
    """How an error travels where a wire has its own status; None: a normal answer that carries the err_no.

    Paddle Serving's clients read err_no from a normal answer, so on its protocols only what a proxy, load
    balancer or transport must see (authentication, overload, shutdown, unusable frames) gets a status of its
    own. The Open Inference Protocol has no err_no: there every error is an HTTP status and a gRPC code
    (`oip_http`, `oip_grpc`), as KServe maps them (bad input 400, unknown model 404, not ready 503).
    """

    http_status: int = 200
    grpc_code: grpc.StatusCode | None = None
    brpc_code: BrpcCode | None = None
    oip_http: int = 500
    oip_grpc: grpc.StatusCode = grpc.StatusCode.INTERNAL


# The one table from exception to wire; the first matching class wins, so subclasses come first.
WIRE_STATUS: dict[type[BaseException], WireStatus] = {
    AuthError: WireStatus(401, grpc.StatusCode.UNAUTHENTICATED, BrpcCode.ERPCAUTH, 401,
                          grpc.StatusCode.UNAUTHENTICATED),
    OverloadedError: WireStatus(503, grpc.StatusCode.RESOURCE_EXHAUSTED, BrpcCode.ELIMIT, 503,
                                grpc.StatusCode.RESOURCE_EXHAUSTED),
    ClosedError: WireStatus(200, None, BrpcCode.ELOGOFF, 503, grpc.StatusCode.UNAVAILABLE),
    PayloadError: WireStatus(400, grpc.StatusCode.INVALID_ARGUMENT, BrpcCode.EREQUEST, 400,
                             grpc.StatusCode.INVALID_ARGUMENT),
    PayloadTooLargeError: WireStatus(oip_http=413, oip_grpc=grpc.StatusCode.INVALID_ARGUMENT),
    InputError: WireStatus(oip_http=400, oip_grpc=grpc.StatusCode.INVALID_ARGUMENT),
    ServiceNotFoundError: WireStatus(oip_http=404, oip_grpc=grpc.StatusCode.NOT_FOUND),
    LoadError: WireStatus(oip_http=400, oip_grpc=grpc.StatusCode.FAILED_PRECONDITION),
    RepositoryOffError: WireStatus(oip_http=403, oip_grpc=grpc.StatusCode.UNIMPLEMENTED),
    InitError: WireStatus(oip_http=503, oip_grpc=grpc.StatusCode.UNAVAILABLE),
    DeadlineExceededError: WireStatus(oip_http=504, oip_grpc=grpc.StatusCode.DEADLINE_EXCEEDED),
}
IN_BODY = WireStatus()


def wire_status_of(exc: BaseException | None) -> WireStatus:
    """The wire statuses that carry `exc` (a normal answer with its err_no when the table has no entry)."""
    if exc is None:
        return IN_BODY
    return next((status for kind, status in WIRE_STATUS.items() if isinstance(exc, kind)), IN_BODY)


def http_status_of(exc: BaseException | None) -> int:
    """The HTTP status that carries `exc`'s err_no body."""
    return wire_status_of(exc).http_status


def error_of(exc: BaseException) -> tuple[int, str]:
    """(err_no, err_msg) for any exception; unexpected ones become UNKNOWN with their type named."""
    if isinstance(exc, ServingError):
        return int(exc.code), exc.message
    return int(ErrorCode.UNKNOWN), f"internal error: {type(exc).__name__}: {exc}"


def user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of `exc` in the user's own code (not the kit, the standard library or a package)."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if not str(Path(frame.filename).resolve()).startswith((_SERVING_DIR, *_LIBRARY_DIRS))]
    return frames[-1] if frames else None


def numpy2_hint(exc: BaseException, script: str) -> str:
    """What to run when `exc` is NumPy 2 refusing something it removed; "" otherwise."""
    if not any(text in str(exc) for text in NUMPY2_REMOVALS):
        return ""
    return f"NumPy 2 removed binary np.fromstring; `python -m serving.migrate {script} --write` rewrites it"


def user_code_error(op: str, exc: Exception) -> "ServingError":
    """A user hook's unexpected exception as err_msg: where in the user's file it arose, and any known fix."""
    frame = user_frame(exc)
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    hint = numpy2_hint(exc, Path(frame.filename).name if frame else "SCRIPT")
    return ServingError(f"op {op}: {type(exc).__name__}: {exc}{where}" + (f"; {hint}" if hint else ""))
