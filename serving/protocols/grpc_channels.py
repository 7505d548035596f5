"""gRPC channels for an endpoint list, balanced round-robin, names resolved by gRPC's own `dns:` resolver.

gRPC takes one name per channel target, so a list becomes several channels: all IPv4 literals share one
`ipv4:` channel and all IPv6 literals one `ipv6:` channel (gRPC balances across the addresses, as before),
and each DNS name gets a `dns:` channel whose round_robin policy spreads calls over every A/AAAA address of
the name. Calls take the channels in turn, each as often as it has endpoints, so every endpoint written gets
an equal share. gRPC resolves a name again when a connection to one of its addresses fails or closes (at most
once per RESOLVE_GAP_S); it has no timer, so new addresses of a name are picked up when a connection ends.
"""

import itertools
import json
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import grpc

from serving.endpoints import RESOLVE_GAP_S, Endpoint, parse_endpoints

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})

Stub = TypeVar("Stub")
Answer = TypeVar("Answer")


def grpc_targets(endpoints: Sequence[Endpoint], dns_server: str | None = None) -> list[tuple[str, int]]:
    """(target, endpoints it holds): one ipv4: and one ipv6: list for the literals, one dns: target per name.

    `dns_server` ("host:port") asks that server for names instead of the system's resolver configuration.
    """
    targets = []
    for version in (4, 6):
        literals = [str(endpoint) for endpoint in endpoints if endpoint.version == version]
        if literals:
            targets.append((f"ipv{version}:" + ",".join(literals), len(literals)))
    targets += [(f"dns://{dns_server or ''}/{endpoint}", 1) for endpoint in endpoints if endpoint.is_name]
    return targets


class BalancedChannels(Generic[Stub]):
    """One stub per channel target; each call takes the next channel, and the next ones when it is unavailable."""

    def __init__(self, endpoints: Sequence[str], stub: Callable[[grpc.Channel], Stub],
                 options: Sequence[tuple[str, object]] = (), credentials: grpc.ChannelCredentials | None = None,
                 dns_server: str | None = None) -> None:
        targets = grpc_targets(parse_endpoints(endpoints), dns_server)
        options = [("grpc.service_config", ROUND_ROBIN),
                   ("grpc.dns_min_time_between_resolutions_ms", int(RESOLVE_GAP_S * 1000)), *options]
        self.channels = [grpc.secure_channel(target, credentials, options=options) if credentials is not None
                         else grpc.insecure_channel(target, options=options) for target, _ in targets]
        self.stubs = [stub(channel) for channel in self.channels]
        self._turns = [index for index, (_, share) in enumerate(targets) for _ in range(share)]
        self._count = itertools.count()

    def call(self, invoke: Callable[[Stub, float], Answer], timeout_s: float) -> Answer:
        """`invoke(stub, seconds left)` on the next channel; on UNAVAILABLE the other channels are tried in turn.

        Inference is idempotent, so a call that found its channel unavailable may go to the next one.
        """
        deadline = time.monotonic() + timeout_s
        start = next(self._count)
        order = list(dict.fromkeys(self._turns[(start + step) % len(self._turns)] for step in range(len(self._turns))))
        for index in order[:-1]:
            try:
                return invoke(self.stubs[index], max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                    raise
        return invoke(self.stubs[order[-1]], max(deadline - time.monotonic(), 0.001))

    def close(self) -> None:
        """Close every channel; calls in flight are cancelled."""
        for channel in self.channels:
            channel.close()
