"""Listening sockets bound before a server takes them: port 0 resolves once, worker processes can share a port."""

import socket


def bound_socket(port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to 0.0.0.0:`port` (0 = any free port), not yet listening; SO_REUSEPORT when sharing."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # worker processes share the port (build_dag_each_worker)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(("0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock
