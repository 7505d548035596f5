"""Endpoints by name: the one parser of every endpoint list, and the system resolver the brpc client asks.

Accepted: "host:port" where host is a DNS name (a Kubernetes Service such as model-server:9292) or an IPv4
address, and "[IPv6]:port". Clients resolve names themselves, so one name can stand for many servers.
"""

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

FORMS = '"host:port" (host a DNS name or an IPv4 address) or "[IPv6]:port", port 1-65535'
RESOLVE_GAP_S = 1.0  # shortest time between two resolutions of a name that failing connections ask for
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

# (host, port) -> every IP address of host; raises OSError when the name does not resolve.
Resolver = Callable[[str, int], Sequence[str]]


class EndpointError(ValueError):
    """An endpoint is not one of the accepted forms; the message names the value and the forms."""

    def __init__(self, endpoint: object, reason: str) -> None:
        super().__init__(f"endpoint {endpoint!r} is not {FORMS}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint: `host` without brackets, and 4 or 6 for IP literals (None for a DNS name)."""

    host: str
    port: int
    version: int | None = None

    @property
    def is_name(self) -> bool:
        """True when the host must be resolved (it is not an IP literal)."""
        return self.version is None

    def __str__(self) -> str:
        """The endpoint as written: IPv6 in brackets."""
        return join_host_port(self.host, self.port)


def join_host_port(host: str, port: int) -> str:
    """'host:port', with an IPv6 address in brackets so the port stays unambiguous."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(endpoint: str, text: str) -> int:
    """The port part: digits, 1-65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise EndpointError(endpoint, f"port {text!r} is not a number in 1-65535")
    return int(text)


def _is_dns_name(host: str) -> bool:
    """RFC 1123 host name (trailing dot allowed); an all-digit last label would be read as a short IPv4 form."""
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def parse_endpoint(endpoint: str) -> Endpoint:
    """'name:port', 'a.b.c.d:port' or '[v6]:port' -> Endpoint; anything else raises EndpointError."""
    if not isinstance(endpoint, str):
        raise EndpointError(endpoint, "not a string")
    if endpoint.startswith("["):
        host, bracket, port = endpoint[1:].partition("]:")
        if not bracket:
            raise EndpointError(endpoint, "an IPv6 address in brackets must be followed by ':port'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise EndpointError(endpoint, f"{host!r} is not an IPv6 address") from None
        return Endpoint(host, _port(endpoint, port), 6)
    host, colon, port = endpoint.rpartition(":")
    if not colon or not host:
        raise EndpointError(endpoint, "no ':port'")
    if ":" in host:
        raise EndpointError(endpoint, "an IPv6 address needs brackets, as in [::1]:9292")
    try:
        return Endpoint(str(ipaddress.IPv4Address(host)), _port(endpoint, port), 4)
    except ipaddress.AddressValueError:
        if not _is_dns_name(host):
            raise EndpointError(endpoint, f"{host!r} is neither a DNS name nor an IPv4 address") from None
    return Endpoint(host, _port(endpoint, port))


def parse_endpoints(endpoints: Iterable[str]) -> list[Endpoint]:
    """Parse a whole list; an empty one is refused, since a client needs somewhere to send requests."""
    parsed = [parse_endpoint(endpoint) for endpoint in endpoints]
    if not parsed:
        raise ValueError(f"no endpoint given: pass at least one {FORMS}")
    return parsed


def system_resolver(host: str, port: int) -> list[str]:
    """Every A and AAAA address of `host` (getaddrinfo, in the system's order), each once."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in answers))
