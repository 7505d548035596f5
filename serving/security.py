"""Optional TLS and token auth for every server of the kit: the `security` config, TLS contexts, the token check."""

import hmac
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from serving.errors import ConfigError

HANDSHAKE_TIMEOUT_S = 10.0  # a client that has not finished the TLS handshake by then is dropped
OPEN_GRPC_PREFIX = "/grpc.health.v1.Health/"  # probes need no token
HTTP_HINT = "missing or wrong token: send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'"
GRPC_HINT = "missing or wrong token: send metadata 'authorization: Bearer <token>' or 'x-api-key: <token>'"
BRPC_HINT = "missing or wrong token: send it in RpcMeta.authentication_data (the token, or 'Bearer <token>')"


@dataclass
class SecurityConfig:
    """security (this kit's): TLS on every port when cert and key are set; a token on every call when named."""

    tls_cert_file: str = ""
    tls_key_file: str = ""
    auth_token_env: str = ""
    remote_ca_file: str = ""  # remote ops reach their model servers over TLS, trusting this CA
    remote_token_env: str = ""  # ... and send the token in this environment variable

    @property
    def tls(self) -> bool:
        """True when the ports speak TLS."""
        return bool(self.tls_cert_file)

    def validate(self, path: str) -> None:
        """Cert and key come as a pair; the token lives in the environment, so the secret stays out of config.yml."""
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise ConfigError.invalid(f"{path}.{missing}", "",
                                      "tls_cert_file and tls_key_file go together: set both for TLS, or neither")
        for key in ("auth_token_env", "remote_token_env"):
            name = getattr(self, key)
            if name and not os.environ.get(name, "").strip():
                raise ConfigError.invalid(f"{path}.{key}", name,
                                          f"environment variable {name} is unset or empty; export the token in it")

    @property
    def remote_token(self) -> str | None:
        """The token remote ops send to their model servers, if any."""
        return os.environ[self.remote_token_env].strip() if self.remote_token_env else None

    def resolve(self, base_dir: Path, path: str) -> None:
        """Relative cert/key/CA paths are made absolute against `base_dir`; the pair must load, or start fails."""
        if self.remote_ca_file:
            self.remote_ca_file = _existing(base_dir, self.remote_ca_file, f"{path}.remote_ca_file")
        if not self.tls:
            return
        for key in ("tls_cert_file", "tls_key_file"):
            setattr(self, key, _existing(base_dir, getattr(self, key), f"{path}.{key}"))
        try:
            server_ssl_context(self)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError.invalid(f"{path}.tls_cert_file", self.tls_cert_file,
                                      f"it and {path}.tls_key_file must be a PEM certificate and its unencrypted key "
                                      f"({exc})") from None


def _existing(base_dir: Path, name: str, path: str) -> str:
    """`name` resolved against `base_dir`; it must be a file."""
    file = (base_dir / name).resolve()
    if not file.is_file():
        raise ConfigError.invalid(path, name, f"no such file (looked in {file})")
    return str(file)


def server_ssl_context(conf: SecurityConfig) -> ssl.SSLContext | None:
    """TLS 1.2 or newer with the configured pair; None for plaintext."""
    if not conf.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(conf.tls_cert_file, conf.tls_key_file)
    return context


def grpc_server_credentials(conf: SecurityConfig) -> grpc.ServerCredentials | None:
    """gRPC's TLS credentials (TLS 1.2+ by default) from the same pair; None for plaintext."""
    if not conf.tls:
        return None
    return grpc.ssl_server_credentials([(Path(conf.tls_key_file).read_bytes(), Path(conf.tls_cert_file).read_bytes())])


def add_grpc_port(server: grpc.Server, address: str, conf: SecurityConfig) -> int:
    """Bind a TLS port when configured, a plaintext one otherwise; returns the port (0 if binding failed)."""
    credentials = grpc_server_credentials(conf)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


class Headers(Protocol):
    """HTTP headers (case-insensitive `get`) or gRPC metadata as a dict of lower-case keys."""

    def get(self, name: str) -> str | bytes | None:
        """The value of one header, or None."""


class TokenCheck:
    """Compares presented credentials with the token in constant time, so response timing reveals nothing."""

    def __init__(self, token: str) -> None:
        self._token = token.strip().encode()

    def accepts(self, credential: str | bytes | None) -> bool:
        """A bare token or `Bearer <token>` (the scheme name is case-insensitive, RFC 6750)."""
        if not credential:
            return False
        value = (credential.encode() if isinstance(credential, str) else credential).strip()
        scheme, _, rest = value.partition(b" ")
        if scheme.lower() == b"bearer":
            value = rest.strip()
        return hmac.compare_digest(value, self._token)

    def accepts_headers(self, headers: Headers) -> bool:
        """`Authorization: Bearer <token>` or `X-API-Key: <token>` (HTTP headers or gRPC metadata)."""
        return any(self.accepts(headers.get(name)) for name in ("authorization", "x-api-key"))


def token_check(conf: SecurityConfig) -> TokenCheck | None:
    """The check for the token in the named environment variable; None when no token is configured."""
    return TokenCheck(os.environ[conf.auth_token_env]) if conf.auth_token_env else None


class TokenInterceptor(grpc.ServerInterceptor):
    """Ends calls without the token with UNAUTHENTICATED before they reach a servicer; health stays open."""

    def __init__(self, check: TokenCheck) -> None:
        self.check = check
        self._deny = grpc.unary_unary_rpc_method_handler(self._abort)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """Pass authorised and health calls on; answer the rest with the deny handler."""
        metadata = dict(handler_call_details.invocation_metadata or ())
        if handler_call_details.method.startswith(OPEN_GRPC_PREFIX) or self.check.accepts_headers(metadata):
            return continuation(handler_call_details)
        return self._deny

    @staticmethod
    def _abort(request: bytes, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, GRPC_HINT)


def grpc_interceptors(conf: SecurityConfig) -> list[grpc.ServerInterceptor]:
    """The interceptors a gRPC server needs for `conf`: the token check, or none."""
    check = token_check(conf)
    return [] if check is None else [TokenInterceptor(check)]
