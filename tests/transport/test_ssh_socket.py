"""The Fabric transport's TCP socket: no Nagle, and (Linux) no delayed ACKs.

Both ends of an SSH session write small packets that need no answer; with either
delay on, the next packet waits up to 40 ms for an ACK. A socket left to the
kernel falls back to delayed ACKs once the exchange looks interactive, which
is what this test reproduces on a real loopback connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from provisioner.transport.ssh import _nodelay_socket

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")


@pytest.fixture
def echo_port() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def echo() -> None:
        client, _ = listener.accept()
        with client:
            while data := client.recv(100):
                client.sendall(data)

    server = threading.Thread(target=echo, daemon=True)
    server.start()
    yield listener.getsockname()[1]
    listener.close()
    server.join(timeout=5)


def _quickack_after_each_reply(sock: socket.socket) -> list[int]:
    modes = []
    for _ in range(5):
        sock.sendall(b"x" * 10)
        assert sock.recv(100) == b"x" * 10
        modes.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
    return modes


def test_the_kernel_alone_falls_back_to_delayed_acks(echo_port: int) -> None:
    with socket.create_connection(("127.0.0.1", echo_port)) as plain:
        if 0 not in _quickack_after_each_reply(plain):  # Linux's "pingpong" heuristic; kernels differ
            pytest.skip("this kernel keeps a plain socket in quick-ACK mode: nothing to show")


def test_the_transport_socket_acks_at_once_and_sends_at_once(echo_port: int) -> None:
    with _nodelay_socket("127.0.0.1", echo_port, 5.0) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert _quickack_after_each_reply(sock) == [1] * 5
        assert sock.gettimeout() == 5.0
