"""A real DNS server on loopback (dnslib) whose answers a test changes mid-run, and a resolver that asks it."""

import ipaddress
import socket
import threading

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


class LoopbackDNS(BaseResolver):
    """Answers A/AAAA for the names in `answers` (TTL 0), NXDOMAIN for others; counts queries per name."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}
        self.queries: dict[str, int] = {}
        self._server = DNSServer(self, address="127.0.0.1", port=0, logger=DNSLogger("-request,-reply,-truncated,"
                                                                                     "-error,-recv,-send,-data"))
        self.port = self._server.server.server_address[1]

    @property
    def address(self) -> str:
        """'127.0.0.1:port', for gRPC's dns://127.0.0.1:port/ authority."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve on a daemon thread, polling for shutdown often so stopping is quick."""
        self._thread = threading.Thread(target=self._server.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.server.shutdown()
        self._server.server.server_close()
        self._thread.join(5)

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        """dnslib's hook: the current answer for the question's name and type."""
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        self.queries[name] = self.queries.get(name, 0) + 1
        if name not in self.answers:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for address in self.answers[name]:
            version = ipaddress.ip_address(address).version
            if (request.q.qtype, version) in ((QTYPE.A, 4), (QTYPE.AAAA, 6)):
                record = A(address) if version == 4 else AAAA(address)
                reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=record, ttl=0))
        return reply

    def lookup(self, host: str, port: int) -> list[str]:
        """The brpc Client's resolver: asks this server over UDP for A and AAAA, as getaddrinfo would."""
        addresses = []
        for qtype in ("A", "AAAA"):
            answer = DNSRecord.parse(DNSRecord.question(host, qtype).send("127.0.0.1", self.port, timeout=2))
            if answer.header.rcode == RCODE.NXDOMAIN:
                raise socket.gaierror(socket.EAI_NONAME, f"{host}: no such name")
            addresses += [str(record.rdata) for record in answer.rr]
        return addresses
