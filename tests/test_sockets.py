"""Listening sockets: accepted connections have Nagle off, or a head-then-body response waits for a delayed ACK."""

import asyncio
import socket

from serving.protocols.sockets import bound_socket


def test_connections_accepted_on_a_bound_socket_have_nodelay() -> None:
    async def accept_one() -> int:
        sock = bound_socket(0)
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        nodelay = await asyncio.wait_for(accepted, 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return nodelay

    assert asyncio.run(accept_one()) != 0
