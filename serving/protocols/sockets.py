"""Listening sockets bound before a server takes them: port 0 resolves once, worker processes can share a port."""

import socket


def bound_socket(port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to 0.0.0.0:`port` (0 = any free port), not yet listening; SO_REUSEPORT when sharing.

    The protocol is named (IPPROTO_TCP, not 0) because asyncio turns Nagle off (TCP_NODELAY) only on accepted
    sockets whose proto says TCP: with proto 0 a response written as head then body waited ~40 ms for the
    client's delayed ACK (measured: 64 ms vs 6 ms per keep-alive request on pipeline HTTP).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # worker processes share the port (build_dag_each_worker)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(("0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock
